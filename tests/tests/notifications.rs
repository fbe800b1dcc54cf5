//! Notifications end to end (issue 21): sinks declared in `cplane.yaml` (a signed webhook, a
//! Slack incoming webhook, one that cannot be reached), HTTP receivers on 127.0.0.1 recording
//! what arrives. A burst of events with the webhook's receiver killed in the middle: after
//! de-duplication by id, every event arrives exactly once; on PostgreSQL with two replicas,
//! each event is delivered once, not once per replica.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};

use cplane_e2e::receiver::Receiver;
use cplane_e2e::serve::{get_json, hmac_hex, http, push, wait_for, webhook, Serve, SECRET};
use serde_json::Value;

const HOOK_KEY: &str = "hook-signing-key-for-tests";

/// Declares the sinks in the work tree's `cplane.yaml` and commits.
fn declare_sinks(work: &Path, hook: u16, slack: u16, dead: u16) {
    let file = work.join("cplane.yaml");
    let mut text = std::fs::read_to_string(&file).expect("read cplane.yaml");
    assert!(!text.contains("notifications:"));
    text.push_str(&format!(
        "  notifications:
    sinks:
      - name: ops
        webhook:
          url: http://127.0.0.1:{hook}/cplane
          signingSecret: {{env: CPLANE_TEST_HOOK_KEY}}
      - name: team-slack
        slack:
          url: {{env: CPLANE_TEST_SLACK_URL}}
          dashboardUrl: https://cplane.example.com
      - name: nowhere
        maxAttempts: 2
        webhook:
          url: http://127.0.0.1:{dead}/hook
          signingSecret: {{env: CPLANE_TEST_HOOK_KEY}}
    routes:
      - sink: ops
        types: [\"*\"]
      - sink: team-slack
        types: [commit.*, bundle.published]
      - sink: nowhere
        types: [commit.applied]
"
    ));
    std::fs::write(&file, text).expect("write cplane.yaml");
    let _ = slack;
    cplane_e2e::commit_all(work, "notify ops and the team");
}

/// Writes `n` workspaces copied from acme (not committed).
fn write_workspaces(work: &Path, prefix: &str, n: usize) {
    let acme = std::fs::read_to_string(work.join("workspaces/acme.yaml")).expect("read");
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let text = acme
            .replace("name: acme\n", &format!("name: {id}\n"))
            .replace("account: acme-corp", &format!("account: {id}"));
        std::fs::write(work.join(format!("workspaces/{id}.yaml")), text).expect("write");
    }
}

/// Adds `n` workspaces copied from acme: a burst of events (a bundle for each).
fn add_workspaces(work: &Path, prefix: &str, n: usize) -> String {
    write_workspaces(work, prefix, n);
    cplane_e2e::commit_all(work, &format!("add {n} workspaces"))
}

/// `cplane.yaml` with one webhook sink `ops` to 127.0.0.1:`hook` (routes: every type) and
/// `extra` lines of its own, or without notifications (`hook` `None`).
fn set_ops_sink(work: &Path, hook: Option<u16>, extra: &str) {
    let file = work.join("cplane.yaml");
    let text = std::fs::read_to_string(&file).expect("read cplane.yaml");
    let mut text = match text.find("  notifications:\n") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    if let Some(hook) = hook {
        text.push_str(&format!(
            "  notifications:
    sinks:
      - name: ops
{extra}        webhook:
          url: http://127.0.0.1:{hook}/cplane
          signingSecret: {{env: CPLANE_TEST_HOOK_KEY}}
    routes:
      - sink: ops
        types: [\"*\"]
"
        ));
    }
    std::fs::write(&file, text).expect("write cplane.yaml");
}

/// The position in `stored` of `commit`'s `commit.applied` event.
fn applied_at(stored: &[Value], commit: &str) -> usize {
    stored
        .iter()
        .position(|e| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == commit)
        .unwrap_or_else(|| panic!("no commit.applied of {commit} among {stored:#?}"))
}

/// Whether `r` got `commit`'s `commit.applied` event.
fn got_applied(r: &Receiver, commit: &str) -> bool {
    webhook_events(r)
        .values()
        .any(|(e, _)| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == commit)
}

/// Every retained event on the server at `port`, oldest first.
fn all_events(port: u16) -> Vec<Value> {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["events", "--format", "json", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("cplane events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

/// The webhook requests' CloudEvents, each checked for its signature, by id → copies.
fn webhook_events(r: &Receiver) -> BTreeMap<String, (Value, usize)> {
    let mut out: BTreeMap<String, (Value, usize)> = BTreeMap::new();
    for req in r.received() {
        let sig = req
            .headers
            .get("x-cplane-signature-256")
            .and_then(|v| v.to_str().ok())
            .expect("signed");
        assert_eq!(
            sig,
            format!("sha256={}", hmac_hex(HOOK_KEY.as_bytes(), &req.body)),
            "HMAC-SHA256 of the body"
        );
        assert_eq!(
            req.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/cloudevents+json")
        );
        let e = req.json();
        let id = e["id"].as_str().expect("id").to_owned();
        out.entry(id).or_insert((e, 0)).1 += 1;
    }
    out
}

fn head(work: &Path) -> String {
    let repo = git2::Repository::open(work).expect("open");
    let id = repo.head().expect("head").target().expect("target");
    id.to_string()
}

#[test]
fn every_event_reaches_each_sink_once_after_dedup_when_a_receiver_dies_mid_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A slow receiver (50 ms an event), so that the burst takes a while to deliver.
    let mut hook = Receiver::slow(std::time::Duration::from_millis(50));
    let slack = Receiver::start();
    let dead_port = cplane_e2e::moto::free_port();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).expect("dir");
    let (remote, work, branch) = cplane_e2e::serve::remote_and_work(&seed);
    declare_sinks(&work, hook.port, slack.port, dead_port);
    push(&work, &branch);

    let dir = tmp.path().join("server");
    std::fs::create_dir_all(&dir).expect("dir");
    let server = Serve::new(&dir)
        .state_repo(&remote)
        .env("CPLANE_TEST_HOOK_KEY", HOOK_KEY)
        .env(
            "CPLANE_TEST_SLACK_URL",
            &format!("http://127.0.0.1:{}/services/T0/B0/x", slack.port),
        )
        .args(["--insecure-open-read", "--webhook-secret", SECRET])
        .start();
    let port = server.port;
    wait_for("the sinks to be configured", || {
        get_json(port, "/v1/status")["notifications"]["sinks"]
            .as_array()
            .is_some_and(|s| s.len() == 3)
    });

    // A first change, to know the sinks are following the outbox.
    let first = add_workspaces(&work, "warm", 1);
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "d-1").0, 202);
    wait_for("the first change at the webhook", || {
        webhook_events(&hook)
            .values()
            .any(|(e, _)| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == first)
    });

    // The burst; the webhook's receiver dies after a few of its events, and comes back.
    let burst = add_workspaces(&work, "burst", 25);
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "d-2").0, 202);
    let before = hook.received().len();
    wait_for("the burst to start arriving", || {
        hook.received().len() >= before + 3
    });
    hook.kill();
    let at_kill = webhook_events(&hook);
    assert!(
        !at_kill
            .values()
            .any(|(e, _)| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == burst),
        "the receiver died mid-burst, before the burst's last event"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    hook.resume();
    wait_for("the burst's commit at the webhook", || {
        webhook_events(&hook)
            .values()
            .any(|(e, _)| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == burst)
    });

    // Every event from the first one delivered on is there once after dedup, none other.
    let stored = all_events(port);
    let got = webhook_events(&hook);
    let first_got = stored
        .iter()
        .position(|e| got.contains_key(e["id"].as_str().expect("id")))
        .expect("a delivered event is stored");
    wait_for("every event at the webhook", || {
        let got = webhook_events(&hook);
        stored[first_got..]
            .iter()
            .all(|e| got.contains_key(e["id"].as_str().expect("id")))
    });
    let got = webhook_events(&hook);
    let want: BTreeSet<&str> = stored[first_got..]
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    let have: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(have, want, "exactly the stored events, each at least once");
    for (id, (e, _)) in &got {
        let stored_e = stored
            .iter()
            .find(|s| s["id"] == id.as_str())
            .expect("stored");
        assert_eq!(e, stored_e, "the CloudEvent as stored");
    }
    let bundles = stored[first_got..]
        .iter()
        .filter(|e| e["type"] == "io.cplane.bundle.published")
        .count();
    assert!(bundles >= 25, "{bundles} bundles in the burst");

    // Slack: readable text, only the routed types, the burst's commit among them.
    let short: String = head(&work).chars().take(12).collect();
    wait_for("the burst's commit at Slack", || {
        slack.received().iter().any(|r| {
            r.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("Commit `{short}` applied")))
        })
    });
    for r in slack.received() {
        let v = r.json();
        let text = v["text"].as_str().expect("text");
        assert!(
            text.starts_with("Commit `")
                || text.starts_with("Cluster <https://cplane.example.com/v1/clusters/"),
            "{text}"
        );
    }

    // The unreachable sink gives up after two attempts: a dead letter in /v1/status.
    wait_for("a dead letter", || {
        get_json(port, "/v1/status")["notifications"]["sinks"]
            .as_array()
            .is_some_and(|sinks| {
                sinks
                    .iter()
                    .any(|s| s["name"] == "nowhere" && s["dead"].as_i64() >= Some(1))
            })
    });
    let status = get_json(port, "/v1/status");
    let ops = status["notifications"]["sinks"]
        .as_array()
        .expect("sinks")
        .iter()
        .find(|s| s["name"] == "ops")
        .expect("ops")
        .clone();
    assert_eq!(ops["dead"], 0, "{status}");
    drop(server);
}

/// A sink added by a commit hears of that commit — its `commit.applied` and the other events
/// of the run that applied it — and of nothing before. Across a restart and a change of its
/// configuration it keeps its place (nothing lost, nothing twice); removed and added again, it
/// starts afresh at the commit that adds it back.
#[test]
fn a_sink_added_by_a_commit_hears_that_commit_and_nothing_before() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hook = Receiver::start();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(&seed).expect("dir");
    let (remote, work, branch) = cplane_e2e::serve::remote_and_work(&seed);
    let start = |name: &str, database: Option<&str>| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut serve = Serve::new(&dir)
            .state_repo(&remote)
            .env("CPLANE_TEST_HOOK_KEY", HOOK_KEY)
            .args(["--insecure-open-read", "--webhook-secret", SECRET]);
        if let Some(db) = database {
            serve = serve.database(db);
        }
        serve.start()
    };
    let server = start("a", None);
    let port = server.port;
    let apply = |commit: &str, delivery: &str, port: u16| {
        push(&work, &branch);
        assert_eq!(webhook(port, &branch, delivery).0, 202);
        wait_for(&format!("{commit} applied"), || {
            all_events(port)
                .iter()
                .any(|e| e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == commit)
        });
    };

    // Events before any sink: a commit adding a workspace.
    let before = add_workspaces(&work, "early", 1);
    apply(&before, "d-1", port);

    // One commit adds the sink and a workspace.
    write_workspaces(&work, "added", 1);
    set_ops_sink(&work, Some(hook.port), "");
    let added = cplane_e2e::commit_all(&work, "notify ops, and add a workspace");
    apply(&added, "d-2", port);
    wait_for("the adding commit at the webhook", || {
        got_applied(&hook, &added)
    });
    let stored = all_events(port);
    let (from, to) = (
        applied_at(&stored, &before) + 1,
        applied_at(&stored, &added),
    );
    let run: BTreeSet<&str> = stored[from..=to]
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert!(
        stored[from..=to].iter().any(
            |e| e["type"] == "io.cplane.bundle.published" && e["data"]["cluster"] == "w-added0"
        ),
        "the adding commit's run published the new workspace's bundle: {stored:#?}"
    );
    let got = webhook_events(&hook);
    let have: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        have, run,
        "exactly the events of the run that applied the adding commit"
    );
    assert!(got.values().all(|(_, n)| *n == 1), "{got:#?}");

    // Stopped once every delivery is done; a change of the sink's configuration (and a
    // workspace) while it is down; started again on the same database.
    wait_for("no delivery pending", || {
        get_json(port, "/v1/status")["notifications"]["sinks"][0]["pending"] == 0
    });
    let database = server.database.clone();
    drop(server);
    write_workspaces(&work, "later", 1);
    set_ops_sink(&work, Some(hook.port), "        maxAttempts: 5\n");
    let changed = cplane_e2e::commit_all(&work, "retry ops less, and add a workspace");
    push(&work, &branch);
    let server = start("b", Some(&database));
    let port = server.port;
    wait_for("the changed commit at the webhook", || {
        got_applied(&hook, &changed)
    });
    let stored = all_events(port);
    let to = applied_at(&stored, &changed);
    let want: BTreeSet<&str> = stored[from..=to]
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    wait_for("every event since the adding commit's run", || {
        webhook_events(&hook).len() == want.len()
    });
    let got = webhook_events(&hook);
    let have: BTreeSet<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(have, want, "nothing lost across the restart and the change");
    assert!(
        got.values().all(|(_, n)| *n == 1),
        "nothing twice: {got:#?}"
    );

    // Removed; a commit while it is gone; added back: only the re-adding commit's run.
    set_ops_sink(&work, None, "");
    let removed = cplane_e2e::commit_all(&work, "no more notifications");
    apply(&removed, "d-3", port);
    wait_for("the sink removed", || {
        get_json(port, "/v1/status")["notifications"]["sinks"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let gone = add_workspaces(&work, "unheard", 1);
    apply(&gone, "d-4", port);
    let heard_before = hook.received().len();
    write_workspaces(&work, "back", 1);
    set_ops_sink(&work, Some(hook.port), "");
    let back = cplane_e2e::commit_all(&work, "notify ops again");
    apply(&back, "d-5", port);
    wait_for("the re-adding commit at the webhook", || {
        got_applied(&hook, &back)
    });
    let stored = all_events(port);
    let (from, to) = (applied_at(&stored, &gone) + 1, applied_at(&stored, &back));
    let run: BTreeSet<&str> = stored[from..=to]
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    let got = webhook_events(&hook);
    let unheard: Vec<&Value> = stored[applied_at(&stored, &removed) + 1..from]
        .iter()
        .filter(|e| got.contains_key(e["id"].as_str().expect("id")))
        .collect();
    assert!(
        unheard.is_empty(),
        "events while the sink was gone reached it: {unheard:#?}"
    );
    let since: Vec<String> = hook.received()[heard_before..]
        .iter()
        .map(|r| r.json()["id"].as_str().expect("id").to_owned())
        .collect();
    let new: BTreeSet<&str> = since.iter().map(String::as_str).collect();
    assert_eq!(new.len(), since.len(), "nothing twice: {since:#?}");
    assert_eq!(new, run, "exactly the re-adding commit's run");
    drop(server);
}

fn replica(
    dir: &Path,
    name: &str,
    remote: &Path,
    branch: &str,
    db: &str,
    hook: u16,
) -> (Child, u16) {
    let (mut cmd, port) = cplane_e2e::serve::replica_command(dir, name, remote, branch, db);
    let child = cmd
        .env("CPLANE_TEST_HOOK_KEY", HOOK_KEY)
        .env(
            "CPLANE_TEST_SLACK_URL",
            format!("http://127.0.0.1:{hook}/slack"),
        )
        .spawn()
        .expect("start cplane serve");
    wait_for(&format!("replica {name} ready"), || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    (child, port)
}

#[test]
fn two_replicas_deliver_each_event_once() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hook = Receiver::start();
    let (remote, work, branch) = cplane_e2e::serve::remote_and_work(tmp.path());
    let initial = head(&work);
    let (mut a, a_port) = replica(tmp.path(), "a", &remote, &branch, &pg.url, hook.port);
    let (mut b, b_port) = replica(tmp.path(), "b", &remote, &branch, &pg.url, hook.port);
    // The sinks come with a later push (two commits: the sinks, then a workspace): both
    // replicas start them where the run applying that push began.
    declare_sinks(&work, hook.port, hook.port, cplane_e2e::moto::free_port());
    let first = add_workspaces(&work, "warm", 1);
    push(&work, &branch);
    assert_eq!(webhook(a_port, &branch, "d-1").0, 202);
    for port in [a_port, b_port] {
        wait_for("the sinks configured on both replicas", || {
            get_json(port, "/v1/status")["notifications"]["sinks"]
                .as_array()
                .is_some_and(|s| s.len() == 3)
        });
    }
    let cloud_events = |hook: &Receiver| {
        hook.received()
            .into_iter()
            .filter(|r| r.headers.contains_key("x-cplane-signature-256"))
            .collect::<Vec<_>>()
    };
    wait_for("the first change at the webhook", || {
        cloud_events(&hook).iter().any(|r| {
            let e = r.json();
            e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == first
        })
    });
    let burst = add_workspaces(&work, "burst", 20);
    push(&work, &branch);
    assert_eq!(webhook(a_port, &branch, "d-2").0, 202);
    let stored = all_events(b_port);
    let _ = stored;
    wait_for("the burst's commit at the webhook", || {
        cloud_events(&hook).iter().any(|r| {
            let e = r.json();
            e["type"] == "io.cplane.commit.applied" && e["data"]["commit"] == burst
        })
    });
    let stored = all_events(b_port);
    let received = cloud_events(&hook);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &received {
        *counts
            .entry(r.json()["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    // Nothing from before the push that added the sinks; from its run on, everything.
    let first_got = applied_at(&stored, &initial) + 1;
    let early: Vec<&Value> = stored[..first_got]
        .iter()
        .filter(|e| counts.contains_key(e["id"].as_str().expect("id")))
        .collect();
    assert!(early.is_empty(), "events from before the sinks: {early:#?}");
    wait_for("every event at the webhook", || {
        let ids: BTreeSet<String> = cloud_events(&hook)
            .iter()
            .map(|r| r.json()["id"].as_str().expect("id").to_owned())
            .collect();
        stored[first_got..]
            .iter()
            .all(|e| ids.contains(e["id"].as_str().expect("id")))
    });
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in cloud_events(&hook) {
        *counts
            .entry(r.json()["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(counts.len() >= 21, "{} events", counts.len());
    let _ = a.kill();
    let _ = a.wait();
    let _ = b.kill();
    let _ = b.wait();
}

#[test]
fn bad_sinks_and_routes_are_refused_with_file_and_line() {
    let repo = cplane_e2e::template_repo();
    let file = repo.path().join("cplane.yaml");
    let mut text = std::fs::read_to_string(&file).expect("read");
    let first_line = text.lines().count() + 1;
    text.push_str(
        "  notifications:
    sinks:
      - name: Ops
        webhook:
          url: http://hooks.example.com/x
          signingSecret: {env: CPLANE_HOOK_KEY, file: /k}
      - name: team
        slack: {url: {env: lower_case}}
        webhook: {url: https://hooks.example.com/y, signingSecret: {file: relative}}
    routes:
      - sink: teem
        types: [commit.refussed, agent.*]
",
    );
    std::fs::write(&file, text).expect("write");
    cplane_e2e::commit_all(repo.path(), "bad notifications");
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["validate", "--format", "json", "--repo"])
        .arg(repo.path())
        .output()
        .expect("validate");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let errors: Vec<(u64, String)> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            assert_eq!(e["file"], "cplane.yaml", "{e}");
            (
                e["line"].as_u64().expect("line"),
                e["message"].as_str().expect("message").to_owned(),
            )
        })
        .collect();
    let at = |offset: usize, needle: &str| {
        let line = u64::try_from(first_line + offset).expect("line");
        assert!(
            errors.iter().any(|(l, m)| *l == line && m.contains(needle)),
            "no `{needle}` at line {line} in {errors:#?}"
        );
    };
    at(2, "`Ops` is not a sink name");
    at(4, "http://hooks.example.com/x");
    at(5, "give exactly one of `env`");
    at(6, "give exactly one of `webhook` and `slack`");
    at(7, "`lower_case` is not an environment variable name");
    at(8, "`relative` is not an absolute path");
    at(10, "no sink `teem`; did you mean `team`?");
    at(
        11,
        "`commit.refussed` names no event type; did you mean `commit.refused`?",
    );
    assert_eq!(errors.len(), 8, "{errors:#?}");
}

/// A sink that records what it is given and, when `hang_at` is reached, never answers (a
/// receiver that stalls mid-batch), reporting that it hung.
struct Recording {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    hang_at: Option<usize>,
    hung: tokio::sync::mpsc::UnboundedSender<()>,
}

impl cplane_reconciler::notify::Sink for Recording {
    fn deliver<'a>(
        &'a self,
        event: &'a cplane_reconciler::events::CloudEvent,
    ) -> cplane_reconciler::notify::Delivery<'a> {
        Box::pin(async move {
            let n = {
                let mut seen = self.seen.lock().expect("seen");
                seen.push(event.id.clone());
                seen.len()
            };
            if Some(n) == self.hang_at {
                let _ = self.hung.send(());
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// A sink's task stopped in the middle of a claimed batch (as `cplane serve` stops them when a
/// new revision is applied) and started again on the same replica: the new task delivers the
/// rest of the batch at once, not after the 30 s lease the old one took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_task_delivers_what_the_stopped_one_had_claimed() {
    use cplane_reconciler::events::EventType;
    use cplane_reconciler::notify::{run_sink, SinkConfig};
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", tmp.path().join("db.sqlite").display());
    let db = cplane_reconciler::db::Db::connect(&url)
        .await
        .expect("connect");
    db.start_sink("ops", 0).await.expect("start the cursor");
    for i in 1..=6 {
        db.set_applied_revision("main", &format!("c{i}"))
            .await
            .expect("an event");
    }
    let (hung, mut hangs) = tokio::sync::mpsc::unbounded_channel();
    let config = |hang_at, seen| SinkConfig {
        name: "ops".into(),
        sink: std::sync::Arc::new(Recording {
            seen,
            hang_at,
            hung: hung.clone(),
        }),
        types: EventType::ALL.to_vec(),
        max_attempts: 3,
    };
    let replica = "r1".to_owned();

    let first_seen = Default::default();
    let first = tokio::spawn(run_sink(
        db.clone(),
        replica.clone(),
        config(Some(2), std::sync::Arc::clone(&first_seen)),
    ));
    tokio::time::timeout(std::time::Duration::from_secs(10), hangs.recv())
        .await
        .expect("the first task reaches the second event");
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());

    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let second = tokio::spawn(run_sink(
        db.clone(),
        replica,
        config(None, std::sync::Arc::clone(&seen)),
    ));
    let all = cplane_reconciler::db::EventFilter::default();
    let stored: Vec<String> = db
        .events_after(0, &all, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.event.id)
        .collect();
    assert_eq!(stored.len(), 6);
    // Well inside the lease: the claims were taken back, not waited out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let got = seen.lock().expect("seen").clone();
        // Every event: the one in flight when the first task stopped, and the one it had
        // delivered but not yet recorded (a batch is recorded at its end), go out again.
        if got == stored {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 5 s the new task delivered {got:?} of {stored:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(*first_seen.lock().expect("seen"), stored[..2]);
    second.abort();
}
