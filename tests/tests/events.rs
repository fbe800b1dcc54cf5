//! Lifecycle events end to end (issue 21): `cplane serve` writes them to its outbox as it
//! reconciles, `GET /v1/events` streams them, and `cplane events --follow` prints them,
//! resuming after the last one it printed across a server restart (SQLite) and across a
//! switch from a dead replica to the other (PostgreSQL) — nothing lost, nothing twice.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use cplane_e2e::serve::{get_json, http, push, wait_for, webhook, Serve, SECRET};
use serde_json::Value;

/// A `cplane events --follow --format json` process and every line it printed.
struct Follower {
    child: Child,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    fn start(servers: &[u16], extra: &[&str]) -> Self {
        let list: Vec<String> = servers
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut child = Command::new(cplane_e2e::cargo_bin("cplane"))
            .args(["events", "--follow", "--format", "json", "--server"])
            .arg(list.join(","))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cplane events");
        let out = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a CloudEvent ({e}): {line}"));
                lines.lock().expect("lines").push(v);
            }
        });
        Self { child, seen }
    }

    fn events(&self) -> Vec<Value> {
        self.seen.lock().expect("lines").clone()
    }

    /// Waits until an event of `kind` whose data's `key` is `value` has been printed.
    fn wait_for(&self, kind: &str, key: &str, value: &str) {
        wait_for(&format!("{kind} with {key} {value}"), || {
            self.events()
                .iter()
                .any(|e| e["type"] == kind && e["data"][key] == value)
        });
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cplane events --format json` (everything retained, then exit) against `port`.
fn all_events(port: u16, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["events", "--format", "json", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args(extra)
        .output()
        .expect("cplane events");
    assert!(
        out.status.success(),
        "cplane events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a CloudEvent per line"))
        .collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every stream's sequence numbers are 1, 2, 3, … in the order printed: none lost, none twice.
fn assert_dense(events: &[Value]) {
    let mut next: std::collections::BTreeMap<String, u64> = Default::default();
    for e in events {
        let source = e["source"].as_str().expect("source").to_owned();
        let seq: u64 = e["sequence"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("sequence");
        let want = next.entry(source.clone()).or_insert(1);
        assert_eq!(seq, *want, "{source}: {e}");
        *want += 1;
    }
}

fn head(work: &Path) -> String {
    let repo = git2::Repository::open(work).expect("open");
    let id = repo.head().expect("head").target().expect("target");
    id.to_string()
}

/// Changes acme's BFF replicas to `n`: a valid commit, which changes its bundle.
fn set_replicas(work: &Path, n: u32) -> String {
    let file = work.join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = lines
        .iter_mut()
        .find(|l| l.trim_start().starts_with("replicas:"))
        .expect("acme sets its replicas");
    let indent = line.len() - line.trim_start().len();
    *line = format!("{}replicas: {n}", " ".repeat(indent));
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    cplane_e2e::commit_all(work, &format!("acme: {n} replicas"));
    head(work)
}

#[test]
fn events_resume_across_a_server_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = tmp.path().join("first");
    std::fs::create_dir_all(&first).expect("dir");
    let server = Serve::new(&first)
        .args(["--insecure-open-read", "--webhook-secret", SECRET])
        .start();
    let port = server.port;

    // The first run's facts are in the outbox: the commit applied, every cluster's bundle.
    let initial = all_events(port, &[]);
    let kinds: Vec<&str> = initial.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.contains(&"io.cplane.commit.applied"), "{kinds:?}");
    let acme = initial
        .iter()
        .find(|e| e["type"] == "io.cplane.bundle.published" && e["subject"] == "cluster/w-acme")
        .unwrap_or_else(|| panic!("w-acme's bundle.published in {initial:#?}"));
    assert_eq!(acme["specversion"], "1.0");
    assert_eq!(acme["datacontenttype"], "application/json");
    assert!(acme["data"]["digest"]
        .as_str()
        .is_some_and(|d| d.starts_with("sha256:")));
    assert_dense(&initial);

    // Filters: by type (a short name and a wildcard), by workspace; a typo is refused.
    let commits = all_events(port, &["--type", "commit.*"]);
    assert!(!commits.is_empty());
    assert!(commits.iter().all(|e| e["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("io.cplane.commit."))));
    let of_acme = all_events(port, &["--workspace", "acme"]);
    assert!(!of_acme.is_empty());
    assert!(of_acme
        .iter()
        .all(|e| e["data"]["workspace"] == "acme" || e["data"]["cluster"] == "w-acme"));
    let (status, body) = http(port, "GET", "/v1/events?type=rollout.pasued", &[], b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("rollout.pasued"), "{body}");
    let (status, body) = http(
        port,
        "GET",
        "/v1/events?follow=false",
        &[("Last-Event-ID", "x".into())],
        b"",
    );
    assert_eq!(status, 400, "{body}");

    // A follower from the start; a refused commit reaches it with its errors.
    let follower = Follower::start(&[port], &["--after", "0"]);
    wait_for("the follower to print the backlog", || {
        follower.events().len() >= initial.len()
    });
    let work = server.work.clone();
    let branch = server.branch.clone();
    let file = work.join("workspaces/acme.yaml");
    let good = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        good.replace("name: acme\n", "name: acme\n  colour: red\n"),
    )
    .expect("write");
    cplane_e2e::commit_all(&work, "a field cplane does not know");
    let broken = head(&work);
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "d-1").0, 202);
    follower.wait_for("io.cplane.commit.refused", "commit", &broken);
    let refused = follower
        .events()
        .into_iter()
        .find(|e| e["type"] == "io.cplane.commit.refused")
        .expect("refused");
    let errors = refused["data"]["errors"].to_string();
    assert!(
        errors.contains("workspaces/acme.yaml") && errors.contains("colour"),
        "{errors}"
    );

    // The server restarts (same database, same port); the follower resumes after the last
    // event it printed and gets what the new process writes.
    let database = server.database.clone();
    let remote = server.remote.clone();
    drop(server);
    let second = tmp.path().join("second");
    std::fs::create_dir_all(&second).expect("dir");
    std::fs::write(&file, &good).expect("write");
    let fixed = set_replicas(&work, 4);
    push(&work, &branch);
    let server = Serve::new(&second)
        .state_repo(&remote)
        .database(&database)
        .port(port)
        .args(["--insecure-open-read", "--webhook-secret", SECRET])
        .start();
    follower.wait_for("io.cplane.commit.applied", "commit", &fixed);
    wait_for("the follower to catch up", || {
        follower.events().len() == all_events(port, &[]).len()
    });
    let followed = follower.events();
    let stored = all_events(server.port, &[]);
    assert_eq!(
        ids(&followed),
        ids(&stored),
        "the follower saw every event once, in order"
    );
    assert_dense(&followed);
    // The broken head was refused once, not again by the new process.
    assert_eq!(
        followed
            .iter()
            .filter(|e| e["type"] == "io.cplane.commit.refused")
            .count(),
        1
    );
}

fn replica(dir: &Path, name: &str, remote: &Path, branch: &str, db: &str) -> (Child, u16) {
    let (mut cmd, port) = cplane_e2e::serve::replica_command(dir, name, remote, branch, db);
    let child = cmd.spawn().expect("start cplane serve");
    wait_for(&format!("replica {name} ready"), || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    (child, port)
}

#[test]
fn events_resume_on_another_replica_when_one_dies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let (remote, work, branch) = cplane_e2e::serve::remote_and_work(tmp.path());
    let (mut a, a_port) = replica(tmp.path(), "a", &remote, &branch, &pg.url);
    let (mut b, b_port) = replica(tmp.path(), "b", &remote, &branch, &pg.url);
    assert_eq!(get_json(a_port, "/v1/status")["leader"], true);

    // Both replicas serve the same outbox.
    let from_a = all_events(a_port, &[]);
    assert!(!from_a.is_empty());
    assert_eq!(ids(&from_a), ids(&all_events(b_port, &[])));

    // A follower on a (then b): the leader's writes reach it.
    let follower = Follower::start(&[a_port, b_port], &["--after", "0"]);
    let one = set_replicas(&work, 4);
    push(&work, &branch);
    assert_eq!(webhook(a_port, &branch, "d-1").0, 202);
    follower.wait_for("io.cplane.commit.applied", "commit", &one);

    // a dies without a goodbye; b takes the lease and applies the next commit; the follower
    // resumes on b after the last event it printed.
    a.kill().expect("SIGKILL a");
    a.wait().expect("reap a");
    let two = set_replicas(&work, 5);
    push(&work, &branch);
    wait_for("b to take the lease", || {
        get_json(b_port, "/v1/status")["leader"] == true
    });
    follower.wait_for("io.cplane.commit.applied", "commit", &two);
    wait_for("the follower to catch up", || {
        follower.events().len() == all_events(b_port, &[]).len()
    });
    let followed = follower.events();
    assert_eq!(ids(&followed), ids(&all_events(b_port, &[])));
    assert_dense(&followed);
    let _ = b.kill();
    let _ = b.wait();
}
