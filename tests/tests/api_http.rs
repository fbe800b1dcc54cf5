//! The write API over HTTP, on the real `cplane serve` binary with a bare remote: routes,
//! authentication, `/v1/plan`, `/openapi.json`, metrics.

use cplane_e2e::http::Request;
use cplane_e2e::serve::wait_for;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One request over a fresh connection: (status, head, body); the head is the status line and
/// the headers as text. Status 0 when nothing answers (the body then says why).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, String) {
    match Request::new(port, method, path)
        .headers(headers)
        .body(body)
        .send()
    {
        Ok(r) => (r.status, r.head(), r.text()),
        Err(e) => (0, String::new(), e.to_string()),
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
    start_with(None)
}

/// `cplane serve` on a bare copy of the template; with `issuer`, users authenticate with its
/// tokens (audience `cplane`).
fn start_with(issuer: Option<&str>) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = cplane_e2e::template_repo();
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
    let port = cplane_e2e::moto::free_port();
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args([
        "serve",
        "--insecure-open-read",
        "--repo-url",
        &format!("file://{}", remote.display()),
    ])
    .args(["--branch", &branch, "--database", &db, "--poll", "1h"])
    .args([
        "--mirror",
        tmp.path().join("mirror.git").to_str().expect("utf-8"),
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .env_remove("PRIMARY_CPLANE_API_URL")
    .env_remove("INTER_REGION_SERVICE_TOKEN")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(issuer) = issuer {
        cmd.args(["--oidc-issuer", issuer, "--oidc-audience", "cplane"]);
    }
    let child = cmd.spawn().expect("start cplane serve");
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
        (
            "PUT",
            "/v1/workspaces/acme",
            &br#"{"apiVersion":"cplane/v1"}"#[..],
        ),
        ("DELETE", "/v1/workspaces/acme", &b""[..]),
        (
            "PUT",
            "/v1/workspaces/acme/stacks/airflow",
            &br#"{"values":{}}"#[..],
        ),
        ("DELETE", "/v1/workspaces/acme/stacks/trino", &b""[..]),
        (
            "PATCH",
            "/v1/workspaces/acme",
            &br#"{"spec":{"deletionPolicy":"Delete"}}"#[..],
        ),
        (
            "PATCH",
            "/v1/workspaces/acme/stacks/trino",
            &br#"{"values":{"workers":9}}"#[..],
        ),
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
        metrics.contains("cplane_api_commits_total{outcome=\"unauthorized\"} 6"),
        "{metrics}"
    );

    // The plan of the head against what is applied is what `cplane plan --format json` says
    // (with --cloud none, the cloud steps stay open).
    let (status, _, body) = http(s.port, "GET", "/v1/plan", &[], b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["commit"], before.as_str());
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
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
    assert!(doc["paths"]["/v1/workspaces/{id}/stacks/{name}"]["patch"].is_object());
}

/// Every `.route("<path>"` in the server's code (reconciler and webhook crates).
fn routes_in_code() -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![
        cplane_e2e::root().join("reconciler/src"),
        cplane_e2e::root().join("webhook/src"),
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
        assert!(routes.contains(path), "{path} is described but not served");
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

fn cplane(args: &[&str]) -> String {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .env_remove("PRIMARY_CPLANE_API_URL")
        .env_remove("INTER_REGION_SERVICE_TOKEN")
        .output()
        .expect("run cplane");
    assert!(out.status.success(), "cplane {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A development issuer serving its JWKS on 127.0.0.1 (see [`cplane_e2e::oidc::dev_issuer`]).
async fn issuer() -> cplane_reconciler::auth::dev::DevIssuer {
    cplane_e2e::oidc::dev_issuer().await
}

fn bearer(dev: &cplane_reconciler::auth::dev::DevIssuer, email: &str, name: &str) -> String {
    let token = dev
        .token("cplane", email, email, name, Duration::from_secs(600))
        .expect("token");
    format!("Bearer {token}")
}

fn json_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn commit_of(remote: &Path, id: &str) -> (String, String, String, String) {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let c = repo
        .find_commit(git2::Oid::from_str(id).expect("oid"))
        .expect("commit");
    let author = c.author();
    let committer = c.committer();
    (
        author.name().unwrap_or("").to_owned(),
        author.email().unwrap_or("").to_owned(),
        committer.name().unwrap_or("").to_owned(),
        c.summary().ok().flatten().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_write_their_accounts_workspaces_with_real_tokens() {
    let dev = issuer().await;
    let s = start_with(Some(dev.issuer()));
    let port = s.port;
    let maria = bearer(&dev, "maria@example.com", "Maria Member");
    let root = bearer(&dev, "root@example.com", "Root Admin");
    let json_ct = ("Content-Type", "application/json".to_owned());

    // Identity: root is an admin; Maria signs in once and becomes a member of acme-corp.
    cplane(&[
        "principal",
        "grant-admin",
        "root@example.com",
        "--database",
        &s.db,
    ]);
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/me",
        &[("Authorization", maria.clone())],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    cplane(&[
        "membership",
        "add",
        "maria@example.com",
        "acme-corp",
        "--database",
        &s.db,
    ]);
    let before = head(&s.remote, &s.branch);
    let auth = |t: &String| ("Authorization", t.clone());

    // Enable a stack on her account's workspace: 201, committed as her, by cplane.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/airflow",
        &[auth(&maria), json_ct.clone()],
        br#"{"values":{"dagsRepo":"https://git.example.com/acme/dags.git"}}"#,
    );
    assert_eq!(status, 201, "{body}");
    let v = json_of(&body);
    let commit = v["commit"].as_str().expect("commit").to_owned();
    assert_eq!(v["changed"], true);
    assert_eq!(head(&s.remote, &s.branch), commit);
    assert_eq!(
        commit_of(&s.remote, &commit),
        (
            "Maria Member".to_owned(),
            "maria@example.com".to_owned(),
            "cplane".to_owned(),
            "workspaces/acme: enable stack airflow".to_owned()
        )
    );
    // The write triggered a reconcile: the read API shows the applied change.
    wait_for("the API commit reconciled", || {
        let (_, _, body) = http(port, "GET", "/v1/workspaces/acme", &[auth(&maria)], b"");
        body.contains("\"airflow\"")
    });

    // Re-value: 200. Another account's workspace: 403. Moving acme to another account: 403.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/airflow",
        &[auth(&maria), json_ct.clone()],
        br#"{"values":{"dagsRepo":"https://git.example.com/acme/dags2.git"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(
        port,
        "DELETE",
        "/v1/workspaces/globex/stacks/airflow",
        &[auth(&maria)],
        b"",
    );
    assert_eq!(status, 403, "{body}");
    assert!(json_of(&body)["error"]
        .as_str()
        .is_some_and(|e| e.contains("account globex")));
    let acme: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            cplane_e2e::root().join("state-repo-template/workspaces/acme.yaml"),
        )
        .expect("acme"),
    )
    .expect("yaml");
    let mut moved = acme.clone();
    moved["spec"]["account"] = serde_json::json!("globex");
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme",
        &[auth(&maria), json_ct.clone()],
        moved.to_string().as_bytes(),
    );
    assert_eq!(status, 403, "{body}");

    // Invalid: 422 with the validate shape and file:line.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/superset",
        &[auth(&maria), json_ct.clone()],
        br#"{"values":{"replicas":"many"}}"#,
    );
    assert_eq!(status, 422, "{body}");
    let v = json_of(&body);
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["file"], "workspaces/acme.yaml");
    assert_eq!(v["errors"][0]["line"], 40);
    assert_eq!(v["errors"][0]["column"], 19);
    assert_eq!(
        v["errors"][0]["message"],
        "spec.stacks[2].values.replicas: expected integer, found string"
    );

    // If-Match naming a commit before the file changed: 412; naming the current head: 200.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/superset",
        &[
            auth(&maria),
            json_ct.clone(),
            ("If-Match", format!("\"{before}\"")),
        ],
        br#"{"values":{"replicas":3}}"#,
    );
    assert_eq!(status, 412, "{body}");
    let now = head(&s.remote, &s.branch);
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/superset",
        &[auth(&maria), json_ct.clone(), ("If-Match", now.clone())],
        br#"{"values":{"replicas":3}}"#,
    );
    assert_eq!(status, 200, "{body}");

    // Pull-request mode: a branch, the followed branch untouched.
    let now = head(&s.remote, &s.branch);
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/jupyterhub?mode=pr",
        &[auth(&maria), json_ct.clone()],
        br#"{}"#,
    );
    assert_eq!(status, 201, "{body}");
    let v = json_of(&body);
    assert_eq!(v["branch"], "cplane/maria/acme-enable-stack-jupyterhub");
    assert_eq!(head(&s.remote, &s.branch), now);
    assert_eq!(
        head(&s.remote, "cplane/maria/acme-enable-stack-jupyterhub"),
        v["commit"].as_str().expect("commit")
    );

    // An admin creates and deletes a workspace of any account.
    let mut umbrella = acme.clone();
    umbrella["metadata"]["name"] = serde_json::json!("umbrella");
    umbrella["spec"]["account"] = serde_json::json!("umbrella");
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/umbrella",
        &[auth(&maria), json_ct.clone()],
        umbrella.to_string().as_bytes(),
    );
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/umbrella",
        &[auth(&root), json_ct.clone()],
        umbrella.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("umbrella reconciled", || {
        http(port, "GET", "/lookup/w-umbrella", &[], b"").0 == 200
    });
    let (status, _, body) = http(
        port,
        "DELETE",
        "/v1/workspaces/umbrella",
        &[auth(&root)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http(
        port,
        "DELETE",
        "/v1/workspaces/umbrella",
        &[auth(&root)],
        b"",
    );
    assert_eq!(status, 404);

    // Admin-only reconcile; the plan needs a user token too (an issuer is configured).
    assert_eq!(
        http(port, "POST", "/v1/reconcile", &[auth(&maria)], b"").0,
        403
    );
    assert_eq!(
        http(port, "POST", "/v1/reconcile", &[auth(&root)], b"").0,
        202
    );
    assert_eq!(http(port, "GET", "/v1/plan", &[], b"").0, 401);
    assert_eq!(http(port, "GET", "/v1/plan", &[auth(&maria)], b"").0, 200);
    assert_eq!(
        http(
            port,
            "PUT",
            "/v1/workspaces/acme/stacks/trino",
            std::slice::from_ref(&json_ct),
            b"{}"
        )
        .0,
        401
    );

    let (_, _, metrics) = http(port, "GET", "/metrics", &[], b"");
    for line in [
        "cplane_api_commits_total{outcome=\"committed\"} 6",
        "cplane_api_commits_total{outcome=\"forbidden\"} 3",
        "cplane_api_commits_total{outcome=\"invalid\"} 1",
        "cplane_api_commits_total{outcome=\"precondition_failed\"} 1",
        "cplane_api_commits_total{outcome=\"not_found\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

/// A header's value in a raw response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_names_its_commit_in_an_etag_that_a_write_sends_back_as_if_match() {
    let dev = issuer().await;
    let s = start_with(Some(dev.issuer()));
    let port = s.port;
    cplane(&[
        "principal",
        "grant-admin",
        "root@example.com",
        "--database",
        &s.db,
    ]);
    let root = (
        "Authorization",
        bearer(&dev, "root@example.com", "Root Admin"),
    );
    let json_ct = ("Content-Type", "application/json".to_owned());
    let start = head(&s.remote, &s.branch);

    // A read names the applied revision: `ETag: "<commit>"` and `"commit"` in the body.
    let (status, h, body) = http(
        port,
        "GET",
        "/v1/workspaces/acme",
        std::slice::from_ref(&root),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let etag = header(&h, "etag").expect("ETag").to_owned();
    assert_eq!(etag, format!("\"{start}\""));
    assert_eq!(json_of(&body)["commit"], start.as_str());
    let (status, h, body) = http(
        port,
        "GET",
        "/v1/workspaces",
        std::slice::from_ref(&root),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "etag"), Some(etag.as_str()));
    assert!(json_of(&body)
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|w| w["commit"] == start.as_str())));

    // Sent back as If-Match, exactly as received: accepted while the file is unchanged.
    let write = |path: &str, if_match: &str, body: &[u8]| {
        http(
            port,
            "PUT",
            path,
            &[
                root.clone(),
                json_ct.clone(),
                ("If-Match", if_match.to_owned()),
            ],
            body,
        )
    };
    let (status, _, body) = write(
        "/v1/workspaces/acme/stacks/superset",
        &etag,
        br#"{"values":{"replicas":3}}"#,
    );
    assert_eq!(status, 200, "{body}");
    // Now stale for acme (412, nothing committed), still good for globex whose file did not
    // change although the head moved.
    let after = head(&s.remote, &s.branch);
    let (status, _, body) = write(
        "/v1/workspaces/acme/stacks/superset",
        &etag,
        br#"{"values":{"replicas":4}}"#,
    );
    assert_eq!(status, 412, "{body}");
    assert_eq!(head(&s.remote, &s.branch), after);
    let (status, _, body) = write(
        "/v1/workspaces/globex/stacks/airflow",
        &etag,
        br#"{"values":{"dagsRepo":"https://github.com/globex/data-pipelines.git"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let latest = json_of(&body)["commit"]
        .as_str()
        .expect("commit")
        .to_owned();

    // Once applied, a read gives the new ETag; the bare commit id is accepted too.
    wait_for("the writes applied", || {
        let (_, h, _) = http(
            port,
            "GET",
            "/v1/workspaces/acme",
            std::slice::from_ref(&root),
            b"",
        );
        header(&h, "etag") == Some(format!("\"{latest}\"").as_str())
    });
    let (status, _, body) = write(
        "/v1/workspaces/acme/stacks/superset",
        &latest,
        br#"{"values":{"replicas":4}}"#,
    );
    assert_eq!(status, 200, "{body}");
}

fn file_at(remote: &Path, rev: &str, path: &str) -> String {
    let repo = git2::Repository::open_bare(remote).expect("bare");
    let tree = repo
        .revparse_single(rev)
        .expect("rev")
        .peel_to_tree()
        .expect("tree");
    let entry = tree.get_path(Path::new(path)).expect("path");
    let blob = repo.find_blob(entry.id()).expect("blob");
    String::from_utf8(blob.content().to_vec()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merges_put_replaces_and_the_read_etag_is_the_if_match_of_a_write() {
    let dev = issuer().await;
    let s = start_with(Some(dev.issuer()));
    let port = s.port;
    cplane(&[
        "principal",
        "grant-admin",
        "root@example.com",
        "--database",
        &s.db,
    ]);
    let root = (
        "Authorization",
        bearer(&dev, "root@example.com", "Root Admin"),
    );
    let merge = ("Content-Type", "application/merge-patch+json".to_owned());
    let acme = |rev: &str| file_at(&s.remote, rev, "workspaces/acme.yaml");
    let start = head(&s.remote, &s.branch);
    let original = acme(&start);

    let (status, h, body) = http(
        port,
        "GET",
        "/v1/workspaces/acme",
        std::slice::from_ref(&root),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let etag = header(&h, "etag").expect("ETag").to_owned();

    // A patch making the file invalid: 422 at the value's line, nothing committed.
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme/stacks/superset",
        &[root.clone(), merge.clone()],
        br#"{"values":{"replicas":"many"}}"#,
    );
    assert_eq!(status, 422, "{body}");
    let v = json_of(&body);
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["file"], "workspaces/acme.yaml");
    assert_eq!(v["errors"][0]["line"], 40);
    assert_eq!(v["errors"][0]["column"], 19);
    assert_eq!(
        v["errors"][0]["message"],
        "spec.stacks[2].values.replicas: expected integer, found string"
    );
    // Not a merge patch, or not the stack's shape: 415 (with Accept-Patch) and 400.
    let (status, h, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme/stacks/trino",
        &[root.clone(), ("Content-Type", "text/plain".into())],
        br#"{"values":{"workers":9}}"#,
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(
        header(&h, "accept-patch"),
        Some("application/merge-patch+json")
    );
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme/stacks/trino",
        &[root.clone(), merge.clone()],
        br#"{"vals":{"workers":9}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(head(&s.remote, &s.branch), start, "nothing was committed");

    // PATCH with the read's ETag as If-Match: merged, the other values and comments kept.
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme/stacks/trino",
        &[root.clone(), merge.clone(), ("If-Match", etag.clone())],
        br#"{"values":{"workers":6,"serviceAccountRole":null,"workerResources":{"limits":{"memory":"32Gi"}}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let patched = json_of(&body)["commit"]
        .as_str()
        .expect("commit")
        .to_owned();
    let after_patch = original
        .replace("        workers: 4\n", "        workers: 6\n")
        .replace("        serviceAccountRole: acme-trino-glue\n", "")
        .replace(
            "          limits:\n            memory: 16Gi\n",
            "          limits:\n            memory: 32Gi\n",
        );
    assert_eq!(acme(&patched), after_patch);
    assert_eq!(
        commit_of(&s.remote, &patched),
        (
            "Root Admin".to_owned(),
            "root@example.com".to_owned(),
            "cplane".to_owned(),
            "workspaces/acme: patch values of stack trino".to_owned()
        )
    );

    // The same ETag is now stale for acme (its file changed): 412, whatever the method. For
    // globex, whose file did not change since, it still holds although the head moved.
    for (method, path, body) in [
        (
            "PATCH",
            "/v1/workspaces/acme/stacks/trino",
            &br#"{"values":{"workers":7}}"#[..],
        ),
        (
            "PUT",
            "/v1/workspaces/acme/stacks/trino",
            &br#"{"values":{"workers":7}}"#[..],
        ),
        (
            "PATCH",
            "/v1/workspaces/acme",
            &br#"{"spec":{"deletionPolicy":"Delete"}}"#[..],
        ),
    ] {
        let (status, _, body) = http(
            port,
            method,
            path,
            &[root.clone(), merge.clone(), ("If-Match", etag.clone())],
            body,
        );
        assert_eq!(status, 412, "{method} {path}: {body}");
    }
    assert_eq!(head(&s.remote, &s.branch), patched);
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/globex/stacks/airflow",
        &[root.clone(), merge.clone(), ("If-Match", etag.clone())],
        br#"{"values":{"schedulerReplicas":3}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let globex = json_of(&body)["commit"]
        .as_str()
        .expect("commit")
        .to_owned();

    // Once applied, a read gives the new ETag, which a write then accepts (bare, too).
    wait_for("the patches applied", || {
        let (_, h, _) = http(
            port,
            "GET",
            "/v1/workspaces/acme",
            std::slice::from_ref(&root),
            b"",
        );
        header(&h, "etag") == Some(format!("\"{globex}\"").as_str())
    });
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme",
        &[
            root.clone(),
            ("Content-Type", "application/json".into()),
            ("If-Match", globex.clone()),
        ],
        br#"{"spec":{"deletionPolicy":"Delete"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let policy = json_of(&body)["commit"]
        .as_str()
        .expect("commit")
        .to_owned();
    let after_policy = after_patch.replace("deletionPolicy: Retain", "deletionPolicy: Delete");
    assert_eq!(acme(&policy), after_policy);

    // PUT replaces the values: the keys it leaves out (bff's resources) are gone.
    let (status, _, body) = http(
        port,
        "PUT",
        "/v1/workspaces/acme/stacks/bff",
        &[root.clone(), ("Content-Type", "application/json".into())],
        br#"{"values":{"replicas":4}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let put = json_of(&body)["commit"]
        .as_str()
        .expect("commit")
        .to_owned();
    assert_eq!(
        acme(&put),
        after_policy.replace(
            "        replicas: 3\n        resources:\n          limits:\n            memory: 1Gi\n",
            "        replicas: 4\n",
        )
    );

    // A patch enabling a stack: 201; in pull-request mode, on a branch only.
    let (status, _, body) = http(
        port,
        "PATCH",
        "/v1/workspaces/acme/stacks/jupyterhub?mode=pr",
        &[root.clone(), merge.clone()],
        br#"{"values":{"cpuLimit":2}}"#,
    );
    assert_eq!(status, 201, "{body}");
    let v = json_of(&body);
    assert_eq!(v["branch"], "cplane/root/acme-enable-stack-jupyterhub");
    assert_eq!(head(&s.remote, &s.branch), put);
    assert!(acme("cplane/root/acme-enable-stack-jupyterhub")
        .ends_with("    - name: jupyterhub\n      values:\n        cpuLimit: 2\n"));
}
