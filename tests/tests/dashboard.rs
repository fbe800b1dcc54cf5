//! The dashboard in a real browser (issue 18): `cplane up`, then headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs) driven by `playwright-core` from npm (installed under
//! `~/.cache/cplane-playwright` on first use) through `tests/browser/dashboard.cjs`: sign in
//! with the development issuer (authorization code + PKCE), see the overview, open a
//! workspace and its agent's status, get a validation error with file:line, commit a stack
//! value as the signed-in user and see it reconciled, filter the clusters. Screenshots are
//! saved; `CPLANE_BLESS=1` copies them to `docs/screenshots/` for the README.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cplane_e2e::serve::{http, wait_up_to};

/// The playwright-core version installed for the test (its API is what the script uses).
const PLAYWRIGHT: &str = "1.64.1";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `playwright-core`, installed once into `~/.cache/cplane-playwright`.
fn playwright_core() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    let prefix = Path::new(&home).join(".cache/cplane-playwright");
    let package = prefix.join("node_modules/playwright-core");
    if !package.join("package.json").exists() {
        std::fs::create_dir_all(&prefix).expect("cache dir");
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(format!("playwright-core@{PLAYWRIGHT}"))
            .output()
            .expect("run npm (Node.js is needed for the browser tests)");
        assert!(
            out.status.success(),
            "npm install playwright-core: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    package
}

struct Up(Child);

/// Starts `cplane up` in `dir` on a free port of 127.0.0.1, without AWS credentials.
fn up(dir: &Path, stdout: Stdio) -> (Up, u16) {
    let port = cplane_e2e::moto::free_port();
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "up",
            "--dir",
            ".cplane",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(dir)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("cplane up");
    (Up(child), port)
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dashboard_tour_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`.ci/run` does)"
    );
    let playwright = playwright_core();
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, port) = up(dir.path(), Stdio::piped());
    wait_up_to(
        "cplane up to publish w-acme",
        Duration::from_secs(60),
        || http(port, "GET", "/lookup/w-acme", &[], b"").0 == 200,
    );
    let (code, page) = http(port, "GET", "/ui/", &[], b"");
    assert_eq!(code, 200);
    assert!(page.contains("/ui/app.js"), "{page}");

    // An agent's report for w-acme (through the agent protocol, with the cluster's token).
    let db = format!(
        "sqlite://{}",
        dir.path().join(".cplane/cplane.db").display()
    );
    let token = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", "w-acme", "--database", &db])
        .output()
        .expect("token");
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).expect("utf-8");
    let admin =
        std::fs::read_to_string(dir.path().join(".cplane/admin.token")).expect("admin token");
    let (_, body) = http(
        port,
        "GET",
        "/v1/clusters/w-acme/status",
        &[("authorization", format!("Bearer {}", admin.trim()))],
        b"",
    );
    let status: serde_json::Value = serde_json::from_str(&body).expect("status");
    let digest = status["current"]["digest"]
        .as_str()
        .expect("published")
        .to_owned();
    let report = serde_json::json!({"digest": digest, "generation": 1, "healthy": true,
        "message": "1 created; 0 not healthy", "objects": [{"apiVersion": "apps/v1", "kind": "Deployment",
        "namespace": "trino", "name": "trino-coordinator", "result": "created", "message": "", "health": "Healthy"}]});
    let (code, body) = http(
        port,
        "POST",
        "/v1/clusters/w-acme/status",
        &[
            ("authorization", format!("Bearer {}", token.trim())),
            (
                "user-agent",
                "cplane-agent/0.1.0 (commit browser-test)".to_owned(),
            ),
            ("content-type", "application/json".to_owned()),
        ],
        report.to_string().as_bytes(),
    );
    assert_eq!(code, 204, "{body}");

    // The tour.
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots");
    let out = Command::new("node")
        .arg(cplane_e2e::root().join("tests/browser/dashboard.cjs"))
        .env("CPLANE_URL", format!("http://127.0.0.1:{port}"))
        .env("SHOTS", &shots)
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the browser script: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success() && seen["ok"] == true, "{seen}");
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    let error = seen["error"].as_str().expect("error text");
    assert!(
        error.contains("workspaces/acme.yaml:") && error.contains("workers"),
        "the validation error names file, line and field: {error}"
    );

    // The commit was made as the signed-in user, in the state repo.
    let commit = seen["commit"].as_str().expect("commit");
    let repo = git2::Repository::open(dir.path().join(".cplane/state")).expect("state repo");
    let head = repo.head().expect("HEAD").peel_to_commit().expect("commit");
    assert!(
        head.id().to_string().starts_with(commit),
        "{commit} is not HEAD"
    );
    assert_eq!(head.author().email().ok(), Some("admin@cplane.localhost"));
    // Only the field the user changed: `workers: 4` became `workers: 5`, nothing else.
    let parent = head.parent(0).expect("parent").tree().expect("tree");
    let diff = repo
        .diff_tree_to_tree(Some(&parent), Some(&head.tree().expect("tree")), None)
        .expect("diff");
    let stats = diff.stats().expect("stats");
    assert_eq!(
        (stats.files_changed(), stats.insertions(), stats.deletions()),
        (1, 1, 1)
    );
    for shot in ["overview.png", "workspace.png"] {
        let size = std::fs::metadata(shots.join(shot)).expect(shot).len();
        assert!(size > 10_000, "{shot}: {size} bytes");
        if std::env::var_os("CPLANE_BLESS").is_some() {
            let to = cplane_e2e::root().join("docs/screenshots");
            std::fs::create_dir_all(&to).expect("docs/screenshots");
            std::fs::copy(shots.join(shot), to.join(shot)).expect("copy");
        }
    }
    drop(up);
}

#[test]
fn the_dev_issuer_signs_in_only_with_a_matching_pkce_verifier() {
    // The authorization endpoint never redirects off its own origin, and a code is single
    // use and bound to its verifier.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_up, port) = up(dir.path(), Stdio::null());
    wait_up_to("cplane up", Duration::from_secs(60), || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    // A verifier and its S256 challenge (computed independently, by Python's hashlib and
    // base64; the browser test computes its own with WebCrypto).
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_XW1gFWFOEjXk";
    let challenge = "QilX_TplyS9MaZ2X2ly0lHSl2CK1bBL-tPz2ADMJbnI";
    let auth = |redirect: &str| {
        let q = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", "cplane-dashboard"),
            ("redirect_uri", redirect),
            ("state", "s1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .expect("query");
        cplane_e2e::http::Request::new(
            port,
            "GET",
            &format!("/dev-issuer/protocol/openid-connect/auth?{q}"),
        )
        .send()
        .expect("authorize")
    };
    let evil = auth("https://evil.example/ui/");
    assert_eq!(evil.status, 400, "no redirect off the issuer's origin");
    let redirect = format!("http://127.0.0.1:{port}/ui/");
    let r = auth(&redirect);
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").expect("location").to_owned();
    assert!(
        location.starts_with(&redirect) && location.contains("state=s1"),
        "{location}"
    );
    let code = location
        .split("code=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .expect("code")
        .to_owned();
    let token = |verifier: &str| {
        let form = serde_urlencoded::to_string([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("client_id", "cplane-dashboard"),
            ("code_verifier", verifier),
        ])
        .expect("form");
        http(
            port,
            "POST",
            "/dev-issuer/protocol/openid-connect/token",
            &[(
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            )],
            form.as_bytes(),
        )
    };
    let (status, body) = token("not-the-verifier-not-the-verifier-not-the-verifier");
    assert_eq!(status, 400, "{body}");
    // The failed attempt used the code up: the right verifier is too late now.
    let (status, _) = token(verifier);
    assert_eq!(status, 400);
    // A fresh code with the right verifier gives a token the API accepts.
    let r = auth(&redirect);
    let location = r.header("location").expect("location").to_owned();
    let fresh = location
        .split("code=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .expect("code")
        .to_owned();
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", fresh.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("client_id", "cplane-dashboard"),
        ("code_verifier", verifier),
    ])
    .expect("form");
    let (status, body) = http(
        port,
        "POST",
        "/dev-issuer/protocol/openid-connect/token",
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )],
        form.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).expect("json");
    let access = t["access_token"].as_str().expect("access_token");
    let (status, me) = http(
        port,
        "GET",
        "/v1/me",
        &[("authorization", format!("Bearer {access}"))],
        b"",
    );
    assert_eq!(status, 200, "{me}");
    assert!(me.contains("admin@cplane.localhost"), "{me}");
}
