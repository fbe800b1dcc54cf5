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

/// `hex(HMAC-SHA256(secret, body))`: how forges sign webhook bodies.
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The value of the Prometheus counter or gauge `name` (no labels) on the server at `port`'s
/// `/metrics`, 0 when it is not there.
pub fn metric(port: u16, name: &str) -> f64 {
    http(port, "GET", "/metrics", &[], b"")
        .1
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sends a generic-HMAC signed push webhook for `branch`: (status, body).
pub fn webhook(port: u16, branch: &str, delivery: &str) -> (u16, String) {
    let body = format!(r#"{{"ref":"refs/heads/{branch}","after":"x"}}"#);
    let sig = format!("sha256={}", hmac_hex(SECRET.as_bytes(), body.as_bytes()));
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
    let (work, branch) = work_of(dir, &remote);
    (remote, work, branch)
}

/// A work tree at `dir/work` cloned from the bare `remote`: (work tree path, branch).
fn work_of(dir: &Path, remote: &Path) -> (std::path::PathBuf, String) {
    let work = dir.join("work");
    let repo =
        git2::Repository::clone(&format!("file://{}", remote.display()), &work).expect("clone");
    let branch = repo
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned();
    (work, branch)
}

/// How to start a `cplane serve` for a test: its own state repo (a bare remote seeded with the
/// template, see [`remote_and_work`]), SQLite database and mirror under `dir`, a free port on
/// 127.0.0.1, `--poll 1h`, and the flags added with [`Serve::args`].
///
/// ```no_run
/// # let dir = std::path::Path::new("/tmp/x");
/// use cplane_e2e::serve::Serve;
/// let server = Serve::new(dir).args(["--webhook-secret", cplane_e2e::serve::SECRET]).start();
/// let agent = server.cplane(&["cluster", "token", "create", "w-acme"]);
/// ```
#[derive(Debug)]
pub struct Serve {
    dir: std::path::PathBuf,
    remote: Option<std::path::PathBuf>,
    remote_url: Option<String>,
    port: Option<u16>,
    database: Option<String>,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    stderr: Option<std::path::PathBuf>,
}

impl Serve {
    /// A server whose files live under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            remote: None,
            remote_url: None,
            port: None,
            database: None,
            args: Vec::new(),
            env: Vec::new(),
            stderr: None,
        }
    }

    /// Sets an environment variable of the server.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes the server's standard error (its logs) to `path` instead of discarding it.
    pub fn stderr_to(mut self, path: &Path) -> Self {
        self.stderr = Some(path.to_owned());
        self
    }

    /// Follows the bare state repo `remote` (another server's [`Server::remote`]: two regions'
    /// control planes of one platform) instead of a new one seeded with the template.
    pub fn state_repo(mut self, remote: &Path) -> Self {
        self.remote = Some(remote.to_owned());
        self
    }

    /// Follows the state repo at `url` (e.g. a `git://` URL of a daemon serving
    /// `dir/remote.git`) instead of `file://` and the bare remote's path: the server then
    /// fetches and pushes over the network, as in production.
    pub fn remote_url(mut self, url: &str) -> Self {
        self.remote_url = Some(url.to_owned());
        self
    }

    /// Listens on `port` (a server started again where an earlier one listened) instead of a
    /// free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Another database (a PostgreSQL URL) instead of SQLite under the directory.
    pub fn database(mut self, url: &str) -> Self {
        self.database = Some(url.to_owned());
        self
    }

    /// Adds flags.
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Starts the server in `dir/cwd` (an empty working directory) and waits until it is ready
    /// and its first run has published `w-acme`.
    ///
    /// # Panics
    /// When the server does not start, or is not ready within 60 s.
    pub fn start(self) -> Server {
        let mut server = self.spawn();
        let port = server.port;
        wait_up_to(
            "the first run to publish w-acme",
            Duration::from_secs(60),
            || {
                assert!(
                    server.child.try_wait().expect("wait").is_none(),
                    "cplane serve exited"
                );
                http(port, "GET", "/readyz", &[], b"").0 == 200
                    && http(port, "GET", "/lookup/w-acme", &[], b"").0 == 200
            },
        );
        server
    }

    /// Starts the server and returns once its port accepts connections, without waiting for
    /// it to be ready over plain HTTP (a server with `--tls-cert` answers only TLS).
    ///
    /// # Panics
    /// When the server does not start.
    pub fn spawn(self) -> Server {
        let Self {
            dir,
            remote,
            remote_url,
            port,
            database,
            args,
            env,
            stderr,
        } = self;
        let (remote, work, branch) = match remote {
            Some(remote) => {
                let (work, branch) = work_of(&dir, &remote);
                (remote, work, branch)
            }
            None => remote_and_work(&dir),
        };
        let database =
            database.unwrap_or_else(|| format!("sqlite://{}", dir.join("cplane.db").display()));
        let cwd = dir.join("cwd");
        std::fs::create_dir_all(&cwd).expect("the server's working directory");
        let port = port.unwrap_or_else(crate::moto::free_port);
        let stderr = match stderr {
            Some(path) => std::fs::File::create(path)
                .expect("the server's log")
                .into(),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(crate::cargo_bin("cplane"))
            .arg("serve")
            .arg("--repo-url")
            .arg(remote_url.unwrap_or_else(|| format!("file://{}", remote.display())))
            .args(["--branch", &branch, "--poll", "1h", "--database", &database])
            .arg("--mirror")
            .arg(dir.join("mirror.git"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(&args)
            .current_dir(&cwd)
            .env_remove("PRIMARY_CPLANE_API_URL")
            .env_remove("INTER_REGION_SERVICE_TOKEN")
            .envs(env)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start cplane serve");
        let mut server = Server {
            child,
            port,
            database,
            remote,
            work,
            branch,
            cwd,
        };
        wait_for("cplane serve's port", || {
            assert!(
                server.child.try_wait().expect("wait").is_none(),
                "cplane serve exited"
            );
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

/// A running `cplane serve` ([`Serve::start`]), killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its database URL.
    pub database: String,
    /// The state repo's bare remote.
    pub remote: std::path::PathBuf,
    /// A clone of the remote.
    pub work: std::path::PathBuf,
    /// The branch followed.
    pub branch: String,
    /// Its working directory (empty when it starts).
    pub cwd: std::path::PathBuf,
}

impl Server {
    /// Runs `cplane ARGS --database <its database>` and returns the standard output.
    ///
    /// # Panics
    /// When the command fails.
    pub fn cplane(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::cargo_bin("cplane"))
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

    /// Every ref of the state repo's remote with the commit it names: what a write moves.
    pub fn remote_refs(&self) -> Vec<(String, String)> {
        let repo = git2::Repository::open_bare(&self.remote).expect("open the remote");
        let mut refs: Vec<(String, String)> = repo
            .references()
            .expect("refs")
            .filter_map(Result::ok)
            .filter_map(|r| Some((r.name().ok()?.to_owned(), r.target()?.to_string())))
            .collect();
        refs.sort();
        refs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cplane serve` as one replica of several sharing the database `db`: following `branch`
/// of the bare repository `remote`, its own mirror `dir/{name}.git`, open reads, the tests'
/// webhook secret, on a free port of 127.0.0.1, output discarded. Returns the command (to
/// add environment and spawn) and its port.
pub fn replica_command(
    dir: &Path,
    name: &str,
    remote: &Path,
    branch: &str,
    db: &str,
) -> (std::process::Command, u16) {
    let port = crate::moto::free_port();
    let mut cmd = std::process::Command::new(crate::cargo_bin("cplane"));
    cmd.args([
        "serve",
        "--insecure-open-read",
        "--repo-url",
        &format!("file://{}", remote.display()),
    ])
    .args(["--branch", branch, "--database", db, "--poll", "1h"])
    .args(["--webhook-secret", SECRET])
    .arg("--mirror")
    .arg(dir.join(format!("{name}.git")))
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    (cmd, port)
}
