//! Slow and silent clients (slowloris) are disconnected: `cplane serve --header-read-timeout`
//! bounds how long a client may take to send a request's head, and, over TLS, to finish its
//! handshake. Driven with raw sockets against the real binary.
//!
//! Raw `TcpStream`s on purpose: these tests are about the bytes on the wire (half a request
//! line, nothing at all, half a TLS record header), which no HTTP client sends. Ordinary
//! requests go through `cplane_e2e::http`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cplane_e2e::http::Request;
use cplane_e2e::serve::{http, remote_and_work, wait_for};
use rcgen::{CertificateParams, KeyPair, SanType};

/// The timeout the tests configure.
const TIMEOUT: Duration = Duration::from_secs(1);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cplane serve` with a 1 s header-read timeout (over TLS with `tls`: cert and key
/// paths); returns it and its port.
fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> (Server, u16) {
    let (remote, _work, branch) = remote_and_work(dir);
    let port = cplane_e2e::moto::free_port();
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args([
        "serve",
        "--insecure-open-read",
        "--repo-url",
        &format!("file://{}", remote.display()),
    ])
    .args([
        "--branch",
        &branch,
        "--poll",
        "1h",
        "--header-read-timeout",
        "1s",
    ])
    .arg("--database")
    .arg(format!("sqlite://{}", dir.join("cplane.db").display()))
    .arg("--mirror")
    .arg(dir.join("mirror.git"))
    .args(["--listen", &format!("127.0.0.1:{port}")]);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let server = Server(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cplane serve"),
    );
    (server, port)
}

/// Reads until the server closes the connection (or `limit` passes): how long that took, or
/// `None` if the connection was still open at `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed())
            }
            Err(_) => return None,
        }
        if start.elapsed() >= limit {
            return None;
        }
    }
}

#[test]
fn a_client_that_sends_half_a_request_line_is_disconnected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, port) = start(tmp.path(), None);
    wait_for("/readyz", || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });

    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /healthz HT").expect("write");
    let took = closed_within(&mut slow, TIMEOUT * 10)
        .expect("the server kept a half-sent request open for 10 timeouts");
    assert!(
        took >= TIMEOUT / 2,
        "closed after {took:?}, before the timeout"
    );

    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    assert!(closed_within(&mut silent, TIMEOUT * 10).is_some());

    // A client that sends its head in time is served, and a parked long-poll outlives the
    // timeout: the timeout bounds the head, not the wait for the answer.
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    let token = token(tmp.path(), "w-acme");
    let (status, head) = get(port, "/v1/clusters/w-acme/bundle", &token, None);
    assert_eq!(status, 200, "{head}");
    let etag = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_owned())
        })
        .expect("ETag");
    let started = Instant::now();
    let (status, head) = get(
        port,
        "/v1/clusters/w-acme/bundle?wait=3",
        &token,
        Some(&etag),
    );
    assert_eq!(status, 304, "{head}");
    assert!(started.elapsed() >= TIMEOUT * 2, "{:?}", started.elapsed());
}

/// A cluster token for `cluster`, from the server's database.
fn token(dir: &Path, cluster: &str) -> String {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", cluster, "--database"])
        .arg(format!("sqlite://{}", dir.join("cplane.db").display()))
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// `GET path` with a bearer token (and `If-None-Match`): (status, response head).
fn get(port: u16, path: &str, token: &str, if_none_match: Option<&str>) -> (u16, String) {
    let mut request = Request::get(port, path).bearer(token);
    if let Some(etag) = if_none_match {
        request = request.header("If-None-Match", etag);
    }
    let r = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status, r.head())
}

#[test]
fn a_tls_client_that_never_sends_its_client_hello_is_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    let (_server, port) = start(
        dir,
        Some((&dir.join("server.pem"), &dir.join("server.key"))),
    );
    wait_for("the TLS listener", || {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    });

    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let took = closed_within(&mut silent, TIMEOUT * 10)
        .expect("the server waited for a ClientHello for 10 timeouts");
    assert!(
        took >= TIMEOUT / 2,
        "closed after {took:?}, before the timeout"
    );

    // Half a ClientHello record header and nothing else is dropped as well.
    let mut half = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    half.write_all(&[0x16, 0x03, 0x01]).expect("write");
    assert!(closed_within(&mut half, TIMEOUT * 10).is_some());
}
