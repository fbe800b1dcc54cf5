//! Rollouts end to end (`tests/rollout_*.rs`): a state repo of `t00`, `t01`, … workspaces
//! running the `app` stack, `cplane serve` (the binary) on it, and one `cplane-agent` run loop
//! per cluster in the test's process (`cplane_agent::run_with`), each against its own
//! in-memory test Kubernetes API server ([`ApiServer::client`]): the agents' code is the real
//! one, only their processes are shared.
//!
//! ```no_run
//! # let dir = std::path::Path::new("/tmp/x");
//! use cplane_e2e::rollout::{Agents, Plane, StateRepo};
//! let repo = StateRepo::create(&dir.join("state"), 5, 1, "{waves: [{name: all}]}");
//! let server = Plane::sqlite(&repo, dir).start();
//! let agents = Agents::all(&server, dir, 5);
//! cplane_e2e::rollout::wait_for("app 1 everywhere", || {
//!     (0..5).all(|i| agents.version_on(i).as_deref() == Some("1"))
//! });
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;

use crate::kube_apiserver::ApiServer;

/// Polls `f` every 100 ms for up to 120 s (rollouts wait on agents and driver ticks).
pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    crate::serve::wait_up_to(what, Duration::from_secs(120), f);
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// The cluster id of workspace `i` (`w-t07`).
pub fn cluster(i: usize) -> String {
    format!("w-t{i:02}")
}

/// A state repo (a plain git work tree, which `cplane serve --repo-url` follows): one region
/// `sgp-1`, the `app` stack on every workspace (a Namespace and a ConfigMap whose data holds the
/// version: healthy as soon as applied, since the test API server runs no controllers), and
/// workspaces `t00`… of which the first `canaries` are labelled `tier: canary`.
#[derive(Debug)]
pub struct StateRepo {
    /// Its directory.
    pub dir: PathBuf,
    clusters: usize,
    canaries: usize,
    platform_extra: String,
    workspace_extra: Vec<String>,
}

impl StateRepo {
    /// Writes and commits the repo in `dir` (created): `clusters` workspaces, the app stack at
    /// version `1` with the rollout policy `policy` (YAML of `spec.rollout`, one line in flow
    /// style or several lines indented by four spaces).
    pub fn create(dir: &Path, clusters: usize, canaries: usize, policy: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .current_dir(dir)
            .status()
            .expect("git")
            .success();
        assert!(ok, "git init");
        let repo = Self {
            dir: dir.to_owned(),
            clusters,
            canaries,
            platform_extra: String::new(),
            workspace_extra: vec![String::new(); clusters],
        };
        write(
            dir,
            "regions/sgp-1.yaml",
            "apiVersion: cplane/v1\nkind: Region\nmetadata:\n  name: sgp-1\nspec:\n  displayName: Singapore 1\n  awsRegion: ap-southeast-1\n  status: live\n  parentZone: sgp-1.cogrion.com\n  environments: [prod]\n",
        );
        write(
            dir,
            "stacks/app/templates/app.yaml.j2",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: app\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: app\n  labels:\n    version: {{ stack.version | tojson }}\ndata:\n  version: {{ stack.version | tojson }}\n  workspace: {{ workspace.name | tojson }}\n",
        );
        repo.write_platform();
        for i in 0..clusters {
            repo.write_workspace(i);
        }
        repo.app("1", policy);
        repo.commit(&format!("{clusters} workspaces on app 1"));
        repo
    }

    fn write_platform(&self) {
        write(
            &self.dir,
            "cplane.yaml",
            &format!("apiVersion: cplane/v1\nkind: Platform\nmetadata:\n  name: cogrion\nspec:\n  baseDomain: cogrion.com\n  primaryRegion: sgp-1\n  bucketPrefix: cogrion\n  environments: [prod]\n{}", self.platform_extra),
        );
    }

    fn write_workspace(&self, i: usize) {
        let labels = if i < self.canaries {
            "  labels:\n    tier: canary\n"
        } else {
            ""
        };
        let account = 100_000_000_000u64 + i as u64;
        write(
            &self.dir,
            &format!("workspaces/t{i:02}.yaml"),
            &format!("apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: t{i:02}\n{labels}spec:\n  region: sgp-1\n  environment: prod\n  account: acct-{i:02}\n  aws:\n    accountId: \"{account:012}\"\n    roleArn: arn:aws:iam::{account:012}:role/provisioner\n    externalId: ext-{i:02}-abc\n{}", self.workspace_extra[i]),
        );
    }

    /// Writes `stacks/app/stack.yaml` at `version` with the rollout policy `policy` (see
    /// [`StateRepo::create`]; empty: none), uncommitted.
    pub fn app(&self, version: &str, policy: &str) {
        let rollout = if policy.is_empty() {
            String::new()
        } else if policy.contains('\n') {
            format!("  rollout:\n{policy}")
        } else {
            format!("  rollout: {policy}\n")
        };
        write(
            &self.dir,
            "stacks/app/stack.yaml",
            &format!("apiVersion: cplane/v1\nkind: Stack\nmetadata:\n  name: app\nspec:\n  version: \"{version}\"\n  target: tenant\n  required: true\n{rollout}"),
        );
    }

    /// Adds `lines` (indented by two spaces, each ending in a newline) to `cplane.yaml`'s
    /// `spec` in place of what an earlier call added, uncommitted.
    pub fn platform_spec(&mut self, lines: &str) {
        lines.clone_into(&mut self.platform_extra);
        self.write_platform();
    }

    /// Adds `lines` (indented by two spaces, each ending in a newline) to workspace `i`'s
    /// `spec` in place of what an earlier call added, uncommitted.
    pub fn workspace_spec(&mut self, i: usize, lines: &str) {
        lines.clone_into(&mut self.workspace_extra[i]);
        self.write_workspace(i);
    }

    /// Commits every change; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        crate::commit_all(&self.dir, message)
    }

    /// The number of workspaces.
    pub fn clusters(&self) -> usize {
        self.clusters
    }
}

/// How to start a `cplane serve` on a [`StateRepo`] (`--poll 1h`: the server sees commits
/// through its watch of the local repo).
#[derive(Debug)]
pub struct Plane {
    repo: PathBuf,
    dir: PathBuf,
    name: String,
    database: String,
    port: Option<u16>,
    args: Vec<String>,
    bearer: Option<String>,
}

impl Plane {
    /// A server on `repo` with a SQLite database and its mirror under `dir`, reads open
    /// (`--insecure-open-read`).
    pub fn sqlite(repo: &StateRepo, dir: &Path) -> Self {
        Self::on(
            repo,
            dir,
            "cplane",
            &format!("sqlite://{}", dir.join("cplane.db").display()),
        )
    }

    /// A server named `name` (its mirror is `dir/{name}.git`) on `repo` and `database`, reads
    /// open (`--insecure-open-read`).
    pub fn on(repo: &StateRepo, dir: &Path, name: &str, database: &str) -> Self {
        Self {
            repo: repo.dir.clone(),
            dir: dir.to_owned(),
            name: name.to_owned(),
            database: database.to_owned(),
            port: None,
            args: vec!["--insecure-open-read".into()],
            bearer: None,
        }
    }

    /// Users authenticate with JWTs of `issuer` (audience `cplane`) instead of open reads;
    /// the server's reads are made with `bearer` (`Bearer …`, an operator's).
    pub fn oidc(mut self, issuer: &str, bearer: &str) -> Self {
        self.args = vec![
            "--oidc-issuer".into(),
            issuer.into(),
            "--oidc-audience".into(),
            "cplane".into(),
        ];
        self.bearer = Some(bearer.to_owned());
        self
    }

    /// Adds flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Listens on `port` (a server started again) instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts the server and waits until `/readyz` answers 200 (a standby replica is ready
    /// too).
    ///
    /// # Panics
    /// When the server exits or is not ready within 120 s.
    pub fn start(self) -> Server {
        let port = self.port.unwrap_or_else(crate::moto::free_port);
        let child = Command::new(crate::cargo_bin("cplane"))
            .args(["serve", "--repo-url"])
            .arg(&self.repo)
            .args(["--branch", "main", "--mirror"])
            .arg(self.dir.join(format!("{}.git", self.name)))
            .args([
                "--database",
                &self.database,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["--poll", "1h"])
            .args(&self.args)
            .env_remove("PRIMARY_CPLANE_API_URL")
            .env_remove("INTER_REGION_SERVICE_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cplane serve");
        let mut server = Server {
            child,
            port,
            database: self.database,
            bearer: self.bearer,
        };
        wait_for("/readyz", || {
            assert!(
                server.child.try_wait().expect("wait").is_none(),
                "cplane serve exited"
            );
            crate::serve::http(port, "GET", "/readyz", &[], b"").0 == 200
        });
        server
    }
}

/// A running `cplane serve` ([`Plane::start`]), killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its database URL.
    pub database: String,
    bearer: Option<String>,
}

impl Server {
    /// `method path` with the server's reading credential (if any) and `headers`: (status,
    /// body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let mut all: Vec<(&str, String)> = headers.to_vec();
        if let Some(b) = &self.bearer {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                all.push(("Authorization", b.clone()));
            }
        }
        crate::serve::http(self.port, method, path, &all, body)
    }

    /// `GET path` as JSON (`Null` when it is not JSON).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.call("GET", path, &[], b"").1).unwrap_or_default()
    }

    /// `/v1/clusters/{cluster}/status`.
    pub fn cluster_status(&self, cluster: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/clusters/{cluster}/status"))
    }

    /// The digest the cluster is pointed at (`None` before its first bundle).
    pub fn current(&self, cluster: &str) -> Option<String> {
        self.cluster_status(cluster)["current"]["digest"]
            .as_str()
            .map(str::to_owned)
    }

    /// The cluster's generation (0 before its first bundle).
    pub fn generation(&self, cluster: &str) -> i64 {
        self.cluster_status(cluster)["current"]["generation"]
            .as_i64()
            .unwrap_or(0)
    }

    /// The digest the cluster's agent last reported (`None` before its first report).
    pub fn reported(&self, cluster: &str) -> Option<String> {
        self.cluster_status(cluster)["reported"]["report"]["digest"]
            .as_str()
            .map(str::to_owned)
    }

    /// Rollout `id`'s status (`Null` when there is none).
    pub fn rollout(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/v1/rollouts/{id}"))
    }

    /// The newest rollout's status (`Null` when there is none).
    pub fn newest_rollout(&self) -> serde_json::Value {
        let list = self.get_json("/v1/rollouts");
        match list["rollouts"][0]["id"].as_str() {
            Some(id) => self.rollout(id),
            None => serde_json::Value::Null,
        }
    }

    /// Whether this replica holds the reconcile lease.
    pub fn leader(&self) -> bool {
        self.get_json("/v1/status")["leader"] == true
    }

    /// Runs `cplane ARGS --database <its database>` and returns the standard output.
    ///
    /// # Panics
    /// When the command fails.
    pub fn cplane(&self, args: &[&str]) -> String {
        let out = Command::new(crate::cargo_bin("cplane"))
            .args(args)
            .args(["--database", &self.database])
            .env_remove("PRIMARY_CPLANE_API_URL")
            .env_remove("INTER_REGION_SERVICE_TOKEN")
            .output()
            .expect("run cplane");
        assert!(
            out.status.success(),
            "cplane {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server (SIGKILL: no goodbye) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One agent per cluster (`w-t00`…), each with its own test Kubernetes API server, on a
/// runtime of their own; started with [`Agents::start`] (or all at once, [`Agents::all`]),
/// stopped when dropped.
pub struct Agents {
    rt: tokio::runtime::Runtime,
    server: String,
    database: String,
    dir: PathBuf,
    kubes: Vec<ApiServer>,
    running: Vec<
        Option<(
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

impl Agents {
    /// `n` clusters' agents for `server`, none running yet: each cluster has an empty API
    /// server, and gets an agent token (`cplane cluster token create`) when its agent first
    /// starts.
    pub fn new(server: &Server, dir: &Path, n: usize) -> Self {
        cplane_agent::install_crypto();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            rt,
            server: format!("http://127.0.0.1:{}", server.port),
            database: server.database.clone(),
            dir: dir.to_owned(),
            kubes: (0..n).map(|_| ApiServer::new()).collect(),
            running: (0..n).map(|_| None).collect(),
        }
    }

    /// [`Agents::new`] with every agent started.
    pub fn all(server: &Server, dir: &Path, n: usize) -> Self {
        let mut agents = Self::new(server, dir, n);
        for i in 0..n {
            agents.start(i);
        }
        agents
    }

    /// Starts cluster `i`'s agent (long-polls of 20 s, retries within 1 s).
    pub fn start(&mut self, i: usize) {
        if self.running[i].is_some() {
            return;
        }
        let token = self.dir.join(format!("{}.token", cluster(i)));
        if !token.exists() {
            let out = Command::new(crate::cargo_bin("cplane"))
                .args(["cluster", "token", "create", &cluster(i), "--database"])
                .arg(&self.database)
                .output()
                .expect("run cplane");
            assert!(
                out.status.success(),
                "cluster token create {}: {}",
                cluster(i),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&token, String::from_utf8_lossy(&out.stdout).trim()).expect("token");
        }
        let _runtime = self.rt.enter(); // a kube client spawns its buffer on the runtime
        let client = self.kubes[i].client();
        let args = cplane_agent::Args::parse_from([
            "cplane-agent",
            "--server",
            &self.server,
            "--cluster",
            &cluster(i),
            "--token-file",
            token.to_str().expect("utf-8"),
            "--state-dir",
            self.dir
                .join(format!("{}-state", cluster(i)))
                .to_str()
                .expect("utf-8"),
            "--wait",
            "20s",
            "--max-backoff",
            "1s",
        ]);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = self.rt.spawn(async move {
            let _ = cplane_agent::run_with(args, client, shutdown).await;
        });
        self.running[i] = Some((stop, task));
    }

    /// Stops cluster `i`'s agent and waits for it to end.
    pub fn stop(&mut self, i: usize) {
        if let Some((stop, task)) = self.running[i].take() {
            let _ = stop.send(true);
            task.abort();
            let _ = self.rt.block_on(task);
        }
    }

    /// Whether cluster `i`'s agent runs.
    pub fn running(&self, i: usize) -> bool {
        self.running[i].is_some()
    }

    /// The app version applied in cluster `i` (`None` before the first apply).
    pub fn version_on(&self, i: usize) -> Option<String> {
        self.kubes[i]
            .object("v1", "ConfigMap", Some("app"), "app")
            .and_then(|o| o["data"]["version"].as_str().map(str::to_owned))
    }

    /// The number of clusters.
    pub fn len(&self) -> usize {
        self.kubes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.kubes.is_empty()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for i in 0..self.running.len() {
            if let Some((stop, _)) = &self.running[i] {
                let _ = stop.send(true);
            }
        }
        for i in 0..self.running.len() {
            if let Some((_, task)) = self.running[i].take() {
                let _ = self
                    .rt
                    .block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await });
            }
        }
    }
}
