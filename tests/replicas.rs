//! Replicas: two `cplane serve` processes against one PostgreSQL database. Only the holder of
//! the reconcile lease reconciles, both serve the read API, and when the holder is killed
//! (SIGKILL: no goodbye) the standby takes over and reconciles what was pushed meanwhile.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::serve::{get_json, http, push, remote_and_work, wait_for, webhook, SECRET};

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
    let port = support::moto::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_cplane"))
        .args([
            "serve",
            "--repo-url",
            &format!("file://{}", remote.display()),
        ])
        .args(["--branch", branch, "--database", db, "--poll", "1h"])
        .args(["--webhook-secret", SECRET])
        .arg("--mirror")
        .arg(dir.join(format!("{name}.git")))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    Replica { child, port }
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
    support::commit_all(work, &format!("add {id}"));
}

#[test]
fn one_replica_reconciles_and_a_standby_takes_over_when_it_dies() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(support::pg::PgDatabase::create());
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
    assert_eq!(webhook(b.port, &branch, "d-1").0, 202);
    wait_for("umbrella on the holder", || {
        http(a.port, "GET", "/lookup/w-umbrella", &[], b"").0 == 200
    });
    wait_for("umbrella in the standby's read API", || {
        http(b.port, "GET", "/v1/workspaces/umbrella", &[], b"").0 == 200
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
