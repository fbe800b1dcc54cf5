//! The write API over HTTP, on the real `cplane serve` binary with a bare remote: routes,
//! authentication, `/v1/plan`, `/openapi.json`, metrics.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request over a fresh connection: (status, headers, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_owned(), body.to_owned())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    _server: Server,
    port: u16,
    remote: PathBuf,
    branch: String,
    db: String,
}

fn start() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = support::template_repo();
    let remote = tmp.path().join("remote.git");
    git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&format!("file://{}", seed.path().display()), &remote)
        .expect("bare remote");
    let branch = git2::Repository::open_bare(&remote)
        .expect("bare")
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned();
    let port = support::moto::free_port();
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let child = Command::new(env!("CARGO_BIN_EXE_cplane"))
        .args(["serve", "--repo-url", &format!("file://{}", remote.display())])
        .args(["--branch", &branch, "--database", &db, "--poll", "1h"])
        .args([
            "--mirror",
            tmp.path().join("mirror.git").to_str().expect("utf-8"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    let server = Server(child);
    wait_for("/readyz", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    Setup {
        _tmp: tmp,
        _server: server,
        port,
        remote,
        branch,
        db,
    }
}

fn head(remote: &Path, branch: &str) -> String {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let r = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .expect("branch");
    let id = r.peel_to_commit().expect("commit").id();
    id.to_string()
}

#[test]
fn writes_need_a_bearer_token_and_plan_and_openapi_are_served() {
    let s = start();
    let before = head(&s.remote, &s.branch);
    for (method, path, body) in [
        ("PUT", "/v1/workspaces/acme", &br#"{"apiVersion":"cplane/v1"}"#[..]),
        ("DELETE", "/v1/workspaces/acme", &b""[..]),
        ("PUT", "/v1/workspaces/acme/stacks/airflow", &br#"{"values":{}}"#[..]),
        ("DELETE", "/v1/workspaces/acme/stacks/trino", &b""[..]),
    ] {
        let (status, head, body) = http(
            s.port,
            method,
            path,
            &[("Content-Type", "application/json".into())],
            body,
        );
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(v["error"].is_string(), "{v}");
    }
    assert_eq!(http(s.port, "POST", "/v1/reconcile", &[], b"").0, 401);
    assert_eq!(head(&s.remote, &s.branch), before, "nothing was written");
    let (_, _, metrics) = http(s.port, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("cplane_api_commits_total{outcome=\"unauthorized\"} 4"),
        "{metrics}"
    );

    // The plan of the head against what is applied is what `cplane plan --format json` says
    // (with --cloud none, the cloud steps stay open).
    let (status, _, body) = http(s.port, "GET", "/v1/plan", &[], b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["commit"], before.as_str());
    let out = Command::new(env!("CARGO_BIN_EXE_cplane"))
        .args(["plan", "--format", "json", "--repo"])
        .arg(&s.remote)
        .args(["--rev", &s.branch, "--database", &s.db])
        .output()
        .expect("cplane plan");
    assert!(out.status.success(), "{out:?}");
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["plan"], cli["plan"]);
    assert!(
        v["plan"]["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|step| step["action"] == "write_workspace")),
        "{v}"
    );

    let (status, head, body) = http(s.port, "GET", "/openapi.json", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/workspaces/{id}"]["put"].is_object());
}

/// Every `.route("<path>"` in the server's code (reconciler and webhook crates).
fn routes_in_code() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![
        support::root().join("reconciler/src"),
        support::root().join("webhook/src"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut routes = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let trimmed = rest.trim_start();
            if let Some(literal) = trimmed.strip_prefix('"') {
                if let Some(end) = literal.find('"') {
                    routes.push(literal[..end].to_owned());
                }
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

#[test]
fn openapi_describes_every_route_of_the_server() {
    let doc: serde_json::Value =
        serde_json::from_str(cplane_reconciler::api::OPENAPI).expect("openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let routes = routes_in_code();
    assert!(routes.len() >= 19, "{routes:?}");
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !paths.contains_key(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from reconciler/src/openapi.json: {missing:?}"
    );
    for (path, item) in paths {
        assert!(
            routes.contains(path),
            "{path} is described but not served"
        );
        for (method, op) in item.as_object().expect("path item") {
            if method != "parameters" {
                assert!(
                    op["responses"].is_object() && op["summary"].is_string(),
                    "{method} {path}"
                );
            }
        }
    }
}
