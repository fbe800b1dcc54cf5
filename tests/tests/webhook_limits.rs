//! The webhook's front door through `cplane serve` on 127.0.0.1 (issue 13, item 6): a
//! per-source rate limit, and deliveries de-duplicated across replicas by the database.
//!
//! The rate limit is keyed by the peer address. Linux routes all of 127.0.0.0/8 to loopback, so
//! a client socket bound to 127.0.0.2 is a second source next to 127.0.0.1.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use cplane_e2e::serve::{http, remote_and_work, wait_for, SECRET};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cplane serve` on a free port with the webhook on: (server, port).
fn serve(
    dir: &Path,
    name: &str,
    remote: &Path,
    branch: &str,
    db: &str,
    extra: &[&str],
) -> (Server, u16) {
    let port = cplane_e2e::moto::free_port();
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["serve", "--insecure-open-read", "--repo-url"])
        .arg(format!("file://{}", remote.display()))
        .args(["--branch", branch, "--database", db, "--poll", "1h"])
        .args(["--webhook-secret", SECRET])
        .args(extra)
        .arg("--mirror")
        .arg(dir.join(format!("{name}.git")))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    let server = Server(child);
    wait_for("/readyz", || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    (server, port)
}

/// An unsigned `POST /v1/webhooks/git` from the local address `source`: (status, raw head).
fn post_from(source: &str, port: u16) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("address"))
            .expect("bind the source address");
        let mut s = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        s.write_all(
            b"POST /v1/webhooks/git HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    })
}

#[test]
fn a_burst_from_one_source_is_limited_and_another_source_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (remote, _work, branch) = remote_and_work(tmp.path());
    let (_dir, db) = cplane_e2e::pg::sqlite_url();
    let (_server, port) = serve(
        tmp.path(),
        "a",
        &remote,
        &branch,
        &db,
        &["--webhook-burst", "3", "--webhook-rate", "2"],
    );
    // Three deliveries at once pass the limit (unsigned: refused by the signature check).
    for _ in 0..3 {
        assert_eq!(post_from("127.0.0.1", port).0, 401);
    }
    // The fourth is turned away before its signature is looked at.
    let (status, head) = post_from("127.0.0.1", port);
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 30\r\n"),
        "one delivery per 30 s: {head}"
    );
    let signed = cplane_e2e::serve::webhook(port, &branch, "limited-1");
    assert_eq!(signed.0, 429, "a signed delivery from the same source too");
    // Another source has its own bucket.
    assert_eq!(post_from("127.0.0.2", port).0, 401);
    // Everything else on the server is not limited.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
}

/// `cplane_webhook_deliveries_total` of the server on `port`: deliveries acted on.
fn acted_on(port: u16) -> u64 {
    cplane_e2e::serve::metric(port, "cplane_webhook_deliveries_total") as u64
}

#[test]
fn a_replayed_delivery_is_acted_on_once_across_replicas() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let (remote, _work, branch) = remote_and_work(tmp.path());
    let (_a, a) = serve(tmp.path(), "a", &remote, &branch, &pg.url, &[]);
    let (_b, b) = serve(tmp.path(), "b", &remote, &branch, &pg.url, &[]);

    // One after the other: the second replica finds the id recorded by the first.
    let (status, body) = cplane_e2e::serve::webhook(a, &branch, "r-1");
    assert_eq!(status, 202, "{body}");
    let (status, body) = cplane_e2e::serve::webhook(b, &branch, "r-1");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("duplicate delivery r-1"), "{body}");
    assert_eq!(cplane_e2e::serve::webhook(a, &branch, "r-1").0, 200);

    // At the same moment, to both: exactly one acts on it.
    for round in 0..5 {
        let id = format!("r-race-{round}");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let sends: Vec<_> = [a, b]
            .into_iter()
            .map(|port| {
                let (barrier, branch, id) = (barrier.clone(), branch.clone(), id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cplane_e2e::serve::webhook(port, &branch, &id).0
                })
            })
            .collect();
        let mut statuses: Vec<u16> = sends.into_iter().map(|t| t.join().expect("send")).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 202], "{id}");
    }
    assert_eq!(
        acted_on(a) + acted_on(b),
        6,
        "r-1 and five races, once each"
    );
}

/// The delivery table itself: a unique insert, and pruning by age.
async fn deliveries_are_recorded_once_and_pruned(url: &str) {
    let db = cplane_reconciler::db::Db::connect(url).await.expect("db");
    assert!(db.record_delivery("github:d-1").await.expect("record"));
    assert!(!db.record_delivery("github:d-1").await.expect("record"));
    assert!(
        db.record_delivery("gitea:d-1").await.expect("record"),
        "per sender"
    );
    let recorded = cplane_reconciler::db::now_ms();
    assert_eq!(
        db.prune_deliveries(recorded - 60_000).await.expect("prune"),
        0
    );
    assert_eq!(db.prune_deliveries(recorded + 1).await.expect("prune"), 2);
    assert!(
        db.record_delivery("github:d-1").await.expect("record"),
        "forgotten"
    );
}

#[tokio::test]
async fn deliveries_are_recorded_once_and_pruned_sqlite() {
    let (_dir, url) = cplane_e2e::pg::sqlite_url();
    deliveries_are_recorded_once_and_pruned(&url).await;
}

#[tokio::test]
async fn deliveries_are_recorded_once_and_pruned_postgres() {
    let pg = cplane_e2e::pg::PgDatabase::create().await;
    deliveries_are_recorded_once_and_pruned(&pg.url).await;
}
