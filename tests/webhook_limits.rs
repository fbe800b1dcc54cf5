//! The webhook's front door through `cplane serve` on 127.0.0.1 (issue 13, item 6): a
//! per-source rate limit, and deliveries de-duplicated across replicas by the database.
//!
//! The rate limit is keyed by the peer address. Linux routes all of 127.0.0.0/8 to loopback, so
//! a client socket bound to 127.0.0.2 is a second source next to 127.0.0.1.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::serve::{http, remote_and_work, wait_for, SECRET};

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
    let port = support::moto::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_cplane"))
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
    let (_dir, db) = support::pg::sqlite_url();
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
    let signed = support::serve::webhook(port, &branch, "limited-1");
    assert_eq!(signed.0, 429, "a signed delivery from the same source too");
    // Another source has its own bucket.
    assert_eq!(post_from("127.0.0.2", port).0, 401);
    // Everything else on the server is not limited.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
}
