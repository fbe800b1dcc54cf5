//! Driving `cplane serve` from tests: HTTP on 127.0.0.1, signed push webhooks, git pushes to a
//! bare remote, waiting for a condition.

use std::path::Path;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::Request;

/// The webhook secret the tests configure.
pub const SECRET: &str = "hook-secret-for-tests";

/// One request over a fresh connection ([`crate::http`]): (status, body). Status 0 when nothing
/// answers (the body then says why).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    match Request::new(port, method, path)
        .headers(headers)
        .body(body)
        .send()
    {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// `GET path` parsed as JSON (`Null` when it is not JSON).
pub fn get_json(port: u16, path: &str) -> serde_json::Value {
    serde_json::from_str(&http(port, "GET", path, &[], b"").1).unwrap_or_default()
}

/// Polls `f` every 100 ms for up to 30 s.
pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_up_to(what, Duration::from_secs(30), f);
}

/// Polls `f` every 100 ms for up to `limit`.
pub fn wait_up_to(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes `branch` of the work tree at `work` to its `origin`.
pub fn push(work: &Path, branch: &str) {
    let repo = git2::Repository::open(work).expect("open");
    let mut remote = repo.find_remote("origin").expect("origin");
    remote
        .push(&[format!("refs/heads/{branch}:refs/heads/{branch}")], None)
        .expect("push");
}

/// Sends a generic-HMAC signed push webhook for `branch`: (status, body).
pub fn webhook(port: u16, branch: &str, delivery: &str) -> (u16, String) {
    let body = format!(r#"{{"ref":"refs/heads/{branch}","after":"x"}}"#);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    http(
        port,
        "POST",
        "/v1/webhooks/git",
        &[
            ("X-Cplane-Signature-256", sig),
            ("X-Cplane-Delivery", delivery.into()),
            ("Content-Type", "application/json".into()),
        ],
        body.as_bytes(),
    )
}

/// A bare remote seeded with the state repo template and a work tree cloned from it:
/// (remote path, work tree path, branch).
pub fn remote_and_work(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let seed = super::template_repo();
    let remote = dir.join("remote.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&format!("file://{}", seed.path().display()), &remote)
        .expect("bare remote");
    let work = dir.join("work");
    let repo =
        git2::Repository::clone(&format!("file://{}", remote.display()), &work).expect("clone");
    let branch = repo
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned();
    (remote, work, branch)
}

/// A `cplane serve` child process on 127.0.0.1, killed when dropped.
pub struct Served {
    /// The port it listens on.
    pub port: u16,
    /// The work tree cloned from its remote (commit and [`push`] here).
    pub work: std::path::PathBuf,
    /// The branch it follows.
    pub branch: String,
    /// Its database URL (SQLite in the test's directory).
    pub db: String,
    child: std::process::Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cplane serve` in `dir` on a bare remote seeded with the template
/// ([`remote_and_work`]), SQLite at `dir/cplane.db`, open reads, a poll of an hour, the test
/// webhook [`SECRET`], plus `extra` flags; `configure` may set the environment or stderr
/// (stdout and stderr are discarded unless it says otherwise). Returns once the port accepts
/// connections: [`Served::ready`] waits for `/readyz` over plain HTTP.
pub fn start(
    dir: &Path,
    extra: &[&std::ffi::OsStr],
    configure: impl FnOnce(&mut std::process::Command),
) -> Served {
    let (remote, work, branch) = remote_and_work(dir);
    let db = format!("sqlite://{}", dir.join("cplane.db").display());
    let port = crate::moto::free_port();
    let mut command = std::process::Command::new(crate::cargo_bin("cplane"));
    command
        .args(["serve", "--insecure-open-read", "--branch", &branch])
        .arg("--repo-url")
        .arg(format!("file://{}", remote.display()))
        .arg("--mirror")
        .arg(dir.join("mirror.git"))
        .args(["--database", &db])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--poll", "1h"])
        .args(["--webhook-secret", SECRET])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    configure(&mut command);
    let child = command.spawn().expect("start cplane serve");
    let served = Served {
        port,
        work,
        branch,
        db,
        child,
    };
    wait_for("cplane serve's port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    served
}

impl Served {
    /// Waits until `/readyz` answers `200` over plain HTTP (a good revision is loaded).
    pub fn ready(self) -> Self {
        wait_for("/readyz", || {
            http(self.port, "GET", "/readyz", &[], b"").0 == 200
        });
        self
    }
}
