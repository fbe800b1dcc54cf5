//! Replicas: two `cplane serve` processes against one PostgreSQL database. Only the holder of
//! the reconcile lease reconciles, both serve the read API, and when the holder is killed
//! (SIGKILL: no goodbye) the standby takes over and reconciles what was pushed meanwhile.

use std::path::Path;
use std::process::{Child, Command};

use cplane_e2e::http::Request;
use cplane_e2e::serve::{get_json, http, push, remote_and_work, wait_for, webhook};

struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(dir: &Path, name: &str, remote: &Path, branch: &str, db: &str) -> Replica {
    let (mut cmd, port) = cplane_e2e::serve::replica_command(dir, name, remote, branch, db);
    let child = cmd.spawn().expect("start cplane serve");
    Replica { child, port }
}

/// The ETag of the cluster's current bundle, as the replica on `port` serves it.
fn get_etag(port: u16, bearer: &(&str, String)) -> String {
    let r = Request::new(port, "HEAD", "/v1/clusters/w-acme/bundle")
        .header(bearer.0, bearer.1.clone())
        .send()
        .expect("HEAD bundle");
    r.header("etag")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no ETag in {r:?}"))
}

fn leader(port: u16) -> bool {
    get_json(port, "/v1/status")["leader"] == true
}

fn add_workspace(work: &Path, id: &str) {
    let acme = std::fs::read_to_string(work.join("workspaces/acme.yaml")).expect("read");
    let text = acme
        .replace("name: acme\n", &format!("name: {id}\n"))
        .replace("account: acme-corp", &format!("account: {id}"));
    std::fs::write(work.join(format!("workspaces/{id}.yaml")), text).expect("write");
    cplane_e2e::commit_all(work, &format!("add {id}"));
}

#[test]
fn one_replica_reconciles_and_a_standby_takes_over_when_it_dies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let (remote, work, branch) = remote_and_work(tmp.path());

    let a = replica(tmp.path(), "a", &remote, &branch, &pg.url);
    wait_for("replica a ready", || {
        http(a.port, "GET", "/readyz", &[], b"").0 == 200
    });
    let b = replica(tmp.path(), "b", &remote, &branch, &pg.url);
    wait_for("replica b ready (as a standby)", || {
        http(b.port, "GET", "/readyz", &[], b"").0 == 200
    });
    assert!(leader(a.port), "the first replica holds the lease");
    assert!(!leader(b.port), "the second stands by");

    // A push with webhooks to both: only the holder reconciles; the standby's read API follows.
    add_workspace(&work, "umbrella");
    push(&work, &branch);
    assert_eq!(webhook(a.port, &branch, "d-1").0, 202);
    // The same delivery again, to the other replica: recorded in the database, acted on once.
    assert_eq!(webhook(b.port, &branch, "d-1").0, 200);
    wait_for("umbrella on the holder", || {
        http(a.port, "GET", "/lookup/w-umbrella", &[], b"").0 == 200
    });
    wait_for("umbrella in the standby's read API", || {
        http(b.port, "GET", "/v1/workspaces/umbrella", &[], b"").0 == 200
    });

    // An agent long-polling the standby is woken when the holder publishes its cluster's new
    // bundle (PostgreSQL NOTIFY), and revoking its token (another process) takes effect there.
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "cluster",
            "token",
            "create",
            "w-acme",
            "--database",
            &pg.url,
        ])
        .output()
        .expect("token");
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let bearer = ("Authorization", format!("Bearer {token}"));
    let etag = get_etag(b.port, &bearer);
    let port = b.port;
    let (poll_bearer, poll_etag) = (bearer.clone(), etag.clone());
    let poll = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let status = http(
            port,
            "GET",
            "/v1/clusters/w-acme/bundle?wait=60",
            &[poll_bearer, ("If-None-Match", poll_etag)],
            b"",
        )
        .0;
        (status, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let file = work.join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("replicas: 3", "replicas: 5")).expect("write");
    cplane_e2e::commit_all(&work, "acme: 5 bff replicas");
    push(&work, &branch);
    assert_eq!(webhook(a.port, &branch, "d-2").0, 202);
    let (status, waited) = poll.join().expect("poll");
    assert_eq!(status, 200, "the standby answered with the new bundle");
    assert!(waited < std::time::Duration::from_secs(30), "{waited:?}");
    assert_ne!(get_etag(b.port, &bearer), etag);
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "cluster",
            "token",
            "revoke",
            "w-acme",
            "--database",
            &pg.url,
        ])
        .output()
        .expect("revoke");
    assert!(out.status.success());
    wait_for("the revoked token refused by the standby", || {
        http(
            b.port,
            "GET",
            "/v1/clusters/w-acme/bundle",
            std::slice::from_ref(&bearer),
            b"",
        )
        .0 == 401
    });

    let metrics = http(b.port, "GET", "/metrics", &[], b"").1;
    assert!(
        !metrics.contains("cplane_reconcile_runs_total{"),
        "the standby never reconciled: {metrics}"
    );
    assert!(metrics.contains("cplane_reconcile_leader 0"), "{metrics}");

    // The holder dies without a goodbye; a commit lands meanwhile; the standby takes over.
    let mut a = a;
    a.child.kill().expect("SIGKILL the holder");
    a.child.wait().expect("reap");
    add_workspace(&work, "hooli");
    push(&work, &branch);
    wait_for("the standby to take the lease", || leader(b.port));
    wait_for("hooli reconciled by the new holder", || {
        http(b.port, "GET", "/lookup/w-hooli", &[], b"").0 == 200
    });
    wait_for("the new holder's run recorded as converged", || {
        get_json(b.port, "/v1/status")["last_run"]["outcome"] == "converged"
    });
    drop(b);
}
