//! End to end: a stack change rolled out across 50 clusters, wave by wave, behind health
//! gates. `cplane serve` (the binary) on a local state repo with 50 workspaces, and 50
//! `cplane-agent` run loops in this process (`cplane_agent::run_with`), each against its own
//! in-memory test Kubernetes API server ([`ApiServer::client`]): the agents' code is the real
//! one, only their processes are shared (50 agent processes with 50 served API servers would
//! add nothing the protocol sees).
//!
//! 1. The first revision reaches every cluster at once (nothing to protect yet).
//! 2. A bad version (an invalid label value the API server refuses with `422`) fails the
//!    canary wave's gate: the rollout pauses with the failing object's message, and the other
//!    48 clusters keep their bundle. An operator aborts it (`cplane rollout abort`).
//! 3. A good version rolls through the waves; paused while baking, it stays put, survives a
//!    restart of the control plane, and completes after `cplane rollout resume`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;
use cplane_e2e::kube_apiserver::ApiServer;

const CLUSTERS: usize = 50;

fn get(port: u16, path: &str) -> (u16, String) {
    cplane_e2e::serve::http(port, "GET", path, &[], b"")
}

fn get_json(port: u16, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(port, path).1).unwrap_or_default()
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    cplane_e2e::serve::wait_up_to(what, Duration::from_secs(120), f);
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(repo: &Path, dir: &Path, db: &str, port: u16) -> Server {
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["serve", "--insecure-open-read", "--repo-url"])
        .arg(repo)
        .args(["--branch", "main", "--mirror"])
        .arg(dir.join("mirror.git"))
        .args(["--database", db, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--poll", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    let server = Server(child);
    wait_for("/readyz", || get(port, "/readyz").0 == 200);
    server
}

fn cplane(args: &[&str]) -> String {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .output()
        .expect("run cplane");
    assert!(
        out.status.success(),
        "cplane {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A state repo: one region, the `app` stack on every workspace (a Namespace and a
/// ConfigMap: healthy as soon as applied, since the test API server runs no controllers),
/// 50 workspaces of which `t00` and `t01` are labelled canaries.
fn state_repo(dir: &Path) {
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git")
            .status
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    write(
        dir,
        "cplane.yaml",
        "apiVersion: cplane/v1\nkind: Platform\nmetadata:\n  name: cogrion\nspec:\n  baseDomain: cogrion.com\n  primaryRegion: sgp-1\n  bucketPrefix: cogrion\n  environments: [prod]\n",
    );
    write(
        dir,
        "regions/sgp-1.yaml",
        "apiVersion: cplane/v1\nkind: Region\nmetadata:\n  name: sgp-1\nspec:\n  displayName: Singapore 1\n  awsRegion: ap-southeast-1\n  status: live\n  parentZone: sgp-1.cogrion.com\n  environments: [prod]\n",
    );
    app_version(dir, "1");
    write(
        dir,
        "stacks/app/templates/app.yaml.j2",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: app\n  labels:\n    version: {{ stack.version | tojson }}\ndata:\n  version: {{ stack.version | tojson }}\n  workspace: {{ workspace.name | tojson }}\n",
    );
    for i in 0..CLUSTERS {
        let labels = if i < 2 {
            "  labels:\n    tier: canary\n"
        } else {
            ""
        };
        write(
            dir,
            &format!("workspaces/t{i:02}.yaml"),
            &format!("apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: t{i:02}\n{labels}spec:\n  region: sgp-1\n  environment: prod\n  account: acct-{i:02}\n  aws:\n    accountId: \"{:012}\"\n    roleArn: arn:aws:iam::{:012}:role/provisioner\n    externalId: ext-{i:02}-abc\n", 100_000_000_000u64 + i as u64, 100_000_000_000u64 + i as u64),
        );
    }
    cplane_e2e::commit_all(dir, "50 workspaces on app 1");
}

/// `stacks/app/stack.yaml` at `version`, with its rollout policy: the canaries, half of
/// the rest, then everyone; a 5 s bake after each gate; 30 s for a wave to be healthy.
fn app_version(dir: &Path, version: &str) {
    write(
        dir,
        "stacks/app/stack.yaml",
        &format!("apiVersion: cplane/v1\nkind: Stack\nmetadata:\n  name: app\nspec:\n  version: \"{version}\"\n  target: tenant\n  required: true\n  rollout:\n    waves:\n      - name: canary\n        labels: {{tier: canary}}\n      - name: half\n        percent: 50\n      - name: rest\n    healthTimeout: 30s\n    bakeTime: 5s\n"),
    );
}

/// The digest each cluster's agent last reported (`None` before the first report).
fn reported(port: u16, cluster: &str) -> Option<String> {
    get_json(port, &format!("/v1/clusters/{cluster}/status"))["reported"]["report"]["digest"]
        .as_str()
        .map(str::to_owned)
}

fn current(port: u16, cluster: &str) -> Option<String> {
    get_json(port, &format!("/v1/clusters/{cluster}/status"))["current"]["digest"]
        .as_str()
        .map(str::to_owned)
}

fn newest_rollout(port: u16) -> serde_json::Value {
    let list = get_json(port, "/v1/rollouts");
    let id = list["rollouts"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if id.is_empty() {
        return serde_json::Value::Null;
    }
    get_json(port, &format!("/v1/rollouts/{id}"))
}

#[test]
fn a_stack_change_rolls_out_in_waves_behind_health_gates() {
    cplane_agent::install_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("state");
    std::fs::create_dir_all(&repo).expect("mkdir");
    state_repo(&repo);
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let port = cplane_e2e::moto::free_port();
    let mut server = Some(serve(&repo, tmp.path(), &db, port));
    let ids: Vec<String> = (0..CLUSTERS).map(|i| format!("w-t{i:02}")).collect();
    wait_for("every cluster published", || {
        ids.iter().all(|c| current(port, c).is_some())
    });

    // 50 agents, each with its own cluster (a kube client spawns its buffer on the runtime).
    let _runtime = rt.enter();
    let mut agents = Vec::new();
    let mut kubes = Vec::new();
    for id in &ids {
        let token_file = tmp.path().join(format!("{id}.token"));
        std::fs::write(
            &token_file,
            cplane(&["cluster", "token", "create", id, "--database", &db]).trim(),
        )
        .expect("token");
        let kube = ApiServer::new();
        let client = kube.client();
        let args = cplane_agent::Args::parse_from([
            "cplane-agent",
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--cluster",
            id,
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--state-dir",
            tmp.path()
                .join(format!("{id}-state"))
                .to_str()
                .expect("utf-8"),
            "--wait",
            "20s",
            "--max-backoff",
            "1s",
        ]);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        agents.push((
            stop,
            rt.spawn(cplane_agent::run_with(args, client, shutdown)),
        ));
        kubes.push(kube);
    }
    let version_on = |i: usize| -> Option<String> {
        kubes[i]
            .object("v1", "ConfigMap", Some("app"), "app")
            .and_then(|o| o["data"]["version"].as_str().map(str::to_owned))
    };

    // 1. The first revision: every cluster at once.
    wait_for("app 1 everywhere", || {
        (0..CLUSTERS).all(|i| version_on(i).as_deref() == Some("1"))
    });
    wait_for("every agent reported", || {
        ids.iter().all(|c| reported(port, c) == current(port, c))
    });
    let v1: Vec<Option<String>> = ids.iter().map(|c| current(port, c)).collect();
    assert!(
        newest_rollout(port).is_null(),
        "the first revision is no rollout"
    );

    // 2. A bad version: the canaries fail their gate; the rollout pauses; nobody else moves.
    app_version(&repo, "2 bad!");
    cplane_e2e::commit_all(&repo, "app 2 (broken)");
    wait_for("the bad rollout pauses", || {
        newest_rollout(port)["state"] == "paused"
    });
    let bad = newest_rollout(port);
    let reason = bad["reason"].as_str().expect("reason");
    assert!(reason.starts_with("gate of wave canary failed"), "{bad:#}");
    assert!(reason.contains("ConfigMap/app/app"), "{bad:#}");
    let canary = &bad["waves"][0];
    // The first failure stops the gate: the other canary may not have reported yet.
    let failed = canary["failed"].as_u64().expect("count");
    assert!(failed >= 1, "{bad:#}");
    assert_eq!(
        failed + canary["published"].as_u64().expect("count"),
        2,
        "{bad:#}"
    );
    assert!(
        canary["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["state"] == "failed"
                && m["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ConfigMap/app/app"))),
        "{bad:#}"
    );
    assert_eq!(bad["waves"][1]["pending"], 25, "{bad:#}"); // 50 % of the 50 clusters
    for (i, c) in ids.iter().enumerate().skip(2) {
        assert_eq!(current(port, c), v1[i], "{c} untouched");
        assert_eq!(version_on(i).as_deref(), Some("1"), "{c} untouched");
    }
    let bad_id = bad["id"].as_str().expect("id").to_owned();
    let aborted = cplane(&[
        "rollout",
        "abort",
        &bad_id,
        "--database",
        &db,
        "--actor",
        "ops@example.com",
    ]);
    assert!(aborted.contains("aborted"), "{aborted}");
    let bad = get_json(port, &format!("/v1/rollouts/{bad_id}"));
    assert_eq!(bad["state"], "aborted");
    assert!(
        bad["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["action"] == "abort" && e["actor"] == "ops@example.com"),
        "{bad:#}"
    );

    // 3. A good version: canaries first, then (paused while baking) nothing, across a restart.
    app_version(&repo, "3");
    cplane_e2e::commit_all(&repo, "app 3");
    wait_for("the canaries run app 3", || {
        version_on(0).as_deref() == Some("3") && version_on(1).as_deref() == Some("3")
    });
    let good = newest_rollout(port);
    let good_id = good["id"].as_str().expect("id").to_owned();
    assert_ne!(good_id, bad_id);
    let paused = cplane(&[
        "rollout",
        "pause",
        &good_id,
        "--database",
        &db,
        "--actor",
        "ops@example.com",
    ]);
    assert!(paused.contains("paused"), "{paused}");
    let wave_when_paused = get_json(port, &format!("/v1/rollouts/{good_id}"))["wave"].clone();
    std::thread::sleep(Duration::from_secs(6)); // longer than the bake time
    let during = get_json(port, &format!("/v1/rollouts/{good_id}"));
    assert_eq!(during["state"], "paused", "{during:#}");
    assert_eq!(during["wave"], wave_when_paused, "{during:#}");
    let moved: Vec<usize> = (2..CLUSTERS)
        .filter(|i| version_on(*i).as_deref() == Some("3"))
        .collect();
    let in_canary_or_half = moved.len();
    assert!(
        in_canary_or_half <= 25,
        "a paused rollout publishes nothing more: {moved:?}"
    );

    // The control plane restarts; the rollout is where it was.
    drop(server.take());
    server = Some(serve(&repo, tmp.path(), &db, port));
    let after = get_json(port, &format!("/v1/rollouts/{good_id}"));
    assert_eq!(after["state"], "paused", "{after:#}");
    assert_eq!(after["wave"], wave_when_paused, "{after:#}");

    let resumed = cplane(&[
        "rollout",
        "resume",
        &good_id,
        "--database",
        &db,
        "--actor",
        "ops@example.com",
    ]);
    assert!(resumed.contains("progressing"), "{resumed}");
    wait_for("the good rollout completes", || {
        get_json(port, &format!("/v1/rollouts/{good_id}"))["state"] == "completed"
    });
    wait_for("app 3 everywhere", || {
        (0..CLUSTERS).all(|i| version_on(i).as_deref() == Some("3"))
    });
    let done = get_json(port, &format!("/v1/rollouts/{good_id}"));
    for w in done["waves"].as_array().expect("waves") {
        assert_eq!(w["done"], w["clusters"], "{done:#}");
    }
    let actions: Vec<&str> = done["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.starts_with(&["created"]), "{actions:?}");
    for a in ["pause", "resume"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    let metrics = get(port, "/metrics").1;
    assert!(
        metrics.contains("cplane_rollout_wave_wake_seconds"),
        "{metrics}"
    );

    for (stop, task) in agents {
        let _ = stop.send(true);
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
    }
    drop(server);
}
