//! The dashboard in a real browser (issue 18): `cplane up` (and `cplane serve` with a forge),
//! then headless Chromium (Debian's `chromium`, which `.ci/run` installs) driven by
//! `playwright-core` from npm (installed under `~/.cache/cplane-playwright` on first use)
//! through `tests/browser/dashboard.cjs`:
//! - the tour: sign in with the development issuer (authorization code + PKCE), the overview,
//!   a workspace with its agent's status, steps and git history, a validation error with
//!   file:line, a stack value committed as the signed-in user and reconciled, the clusters'
//!   search and state filter;
//! - operating: a rollout paused, resumed and aborted with the buttons (each recorded with the
//!   user), the plan of a branch with its diff, the events that arrived live;
//! - a member of one account sees only that account's workspace and cluster, and no rollouts;
//! - pull-request mode, where a forge is configured (the test forge of `cplane_e2e::forge`).
//!
//! Screenshots are saved; `CPLANE_BLESS=1` copies them to `docs/screenshots/` for the README.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cplane_e2e::git;
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

/// Runs the browser script's `scenario` against the server on `port`, with `env`; returns
/// what it saw (its last line), after checking it succeeded with no console error.
fn browser(scenario: &str, port: u16, shots: &Path, env: &[(&str, &str)]) -> serde_json::Value {
    let mut node = Command::new("node");
    node.arg(cplane_e2e::root().join("tests/browser/dashboard.cjs"))
        .env("CPLANE_URL", format!("http://127.0.0.1:{port}"))
        .env("SHOTS", shots)
        .env("PLAYWRIGHT_CORE", playwright_core())
        .env("CHROMIUM", CHROMIUM)
        .env("SCENARIO", scenario);
    for (k, v) in env {
        node.env(k, v);
    }
    let out = node.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "the browser script ({scenario}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && seen["ok"] == true,
        "{scenario}: {seen:#}"
    );
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    seen
}

/// Copies the screenshots `names` from `shots` to `docs/screenshots/` when `CPLANE_BLESS` is
/// set, after checking each is a real picture.
fn keep_screenshots(shots: &Path, names: &[&str]) {
    for shot in names {
        let size = std::fs::metadata(shots.join(shot)).expect(shot).len();
        assert!(size > 10_000, "{shot}: {size} bytes");
        if std::env::var_os("CPLANE_BLESS").is_some() {
            let to = cplane_e2e::root().join("docs/screenshots");
            std::fs::create_dir_all(&to).expect("docs/screenshots");
            std::fs::copy(shots.join(shot), to.join(shot)).expect("copy");
        }
    }
}

/// An `authorization` header with `token`.
fn auth(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", token.trim()))
}

#[test]
fn the_dashboard_tour_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`.ci/run` does)"
    );
    playwright_core();
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
    let seen = browser("tour", port, &shots, &[]);
    let error = seen["error"].as_str().expect("error text");
    assert!(
        error.contains("workspaces/acme.yaml:") && error.contains("workers"),
        "the validation error names file, line and field: {error}"
    );

    // The commit was made as the signed-in user, in the state repo.
    let commit = seen["commit"].as_str().expect("commit");
    let state = dir.path().join(".cplane/state");
    let repo = git2::Repository::open(&state).expect("state repo");
    let edit = repo
        .revparse_single(commit)
        .expect("the edit's commit")
        .peel_to_commit()
        .expect("commit");
    assert_eq!(edit.author().email().ok(), Some("admin@cplane.localhost"));
    // Only the field the user changed: `workers: 4` became `workers: 5`, nothing else.
    let parent = edit.parent(0).expect("parent").tree().expect("tree");
    let diff = repo
        .diff_tree_to_tree(Some(&parent), Some(&edit.tree().expect("tree")), None)
        .expect("diff");
    let stats = diff.stats().expect("stats");
    assert_eq!(
        (stats.files_changed(), stats.insertions(), stats.deletions()),
        (1, 1, 1)
    );
    // The history grew by exactly that commit, shown first with its author.
    let before = seen["historyBefore"].as_array().expect("history").len();
    let history = seen["history"].as_array().expect("history");
    assert_eq!(history.len(), before + 1, "{seen:#}");
    let newest = history[0].as_str().expect("row");
    assert!(
        newest.starts_with(commit) && newest.contains("admin@cplane.localhost"),
        "{newest}"
    );
    // A stack enabled, then disabled, from the page: two commits by the user.
    let head = repo.head().expect("HEAD").peel_to_commit().expect("commit");
    let enabled = head.parent(0).expect("parent");
    for (c, id, what) in [
        (&enabled, &seen["enabled"], "enable stack jupyterhub"),
        (&head, &seen["disabled"], "disable stack jupyterhub"),
    ] {
        assert!(
            c.id().to_string().starts_with(id.as_str().expect("commit")),
            "{seen:#}"
        );
        let message = String::from_utf8_lossy(c.message_bytes()).into_owned();
        assert!(message.contains(what), "{message}");
        assert_eq!(c.author().email().ok(), Some("admin@cplane.localhost"));
    }
    assert_eq!(
        enabled.parent_id(0).expect("parent"),
        edit.id(),
        "right after the edit"
    );
    // w-acme's agent reported the bundle before the edit: behind by one, the only such cluster.
    let behind = seen["behind"].as_array().expect("rows");
    assert_eq!(behind.len(), 1, "{seen:#}");
    assert!(
        behind[0].as_str().expect("row").starts_with("w-acme"),
        "{seen:#}"
    );

    // Operating: an engineer's commit rolls a new Trino image out in two waves; the canary's
    // agent never reports, so the rollout waits in its first wave. And a branch to plan.
    let stack = state.join("stacks/trino/stack.yaml");
    let text = std::fs::read_to_string(&stack).expect("stack");
    let text = text.replace("trinodb/trino:435", "trinodb/trino:436").replace(
        "  values:\n",
        "  rollout:\n    waves:\n      - name: canary\n        count: 1\n      - name: rest\n    healthTimeout: 1h\n  values:\n",
    );
    std::fs::write(&stack, text).expect("write stack");
    git(&state, &["commit", "-qam", "Trino 436, canary first"]);
    wait_up_to("the rollout to start", Duration::from_secs(60), || {
        let (_, body) = http(port, "GET", "/v1/rollouts", &[auth(&admin)], b"");
        body.contains("progressing")
    });
    git(&state, &["checkout", "-qb", "feature"]);
    let acme = state.join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&acme).expect("acme");
    std::fs::write(&acme, text.replace("workers: 5", "workers: 6")).expect("write acme");
    git(&state, &["commit", "-qam", "More Trino workers for acme"]);
    git(&state, &["checkout", "-q", "-"]);
    let seen = browser("operate", port, &shots, &[("FEATURE", "feature")]);
    let events = seen["rolloutEvents"].to_string();
    for action in ["pause", "resume", "abort"] {
        assert!(
            events.contains(action) && events.contains("admin@cplane.localhost"),
            "{action} recorded with the user: {events}"
        );
    }
    let diff = seen["diff"].as_str().expect("diff");
    assert!(
        diff.contains("replicas: 5") && diff.contains("replicas: 6"),
        "the plan of the branch shows the workers' diff: {diff}"
    );
    // `cplane up` has no cloud: no drift to find (drift events are tested in events.rs).
    assert!(
        seen["drift"]
            .as_str()
            .expect("drift")
            .starts_with("No drift found"),
        "{seen:#}"
    );
    let live = seen["live"].to_string();
    for event in ["rollout.paused", "rollout.resumed", "rollout.aborted"] {
        assert!(live.contains(event), "{event} arrived live: {live}");
    }
    keep_screenshots(
        &shots,
        &["overview.png", "workspace.png", "rollout.png", "plan.png"],
    );

    // A member of acme's account, signed in with a token of the same issuer.
    let db = format!(
        "sqlite://{}",
        dir.path().join(".cplane/cplane.db").display()
    );
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "membership",
            "add",
            "mia@example.com",
            "acme-corp",
            "--role",
            "member",
            "--database",
            &db,
        ])
        .output()
        .expect("membership");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issuer = cplane_reconciler::auth::dev::DevIssuer::load_or_create(
        &dir.path().join(".cplane/dev-issuer.p8"),
        &format!(
            "http://127.0.0.1:{port}{}",
            cplane_reconciler::auth::dev::PATH
        ),
    )
    .expect("the dev issuer's key");
    let mia = issuer
        .token(
            "cplane",
            "mia",
            "mia@example.com",
            "Mia",
            Duration::from_secs(600),
        )
        .expect("token");
    let seen = browser("member", port, &shots, &[("TOKEN", &mia)]);
    let workspaces = seen["workspaces"].as_array().expect("rows");
    assert_eq!(workspaces.len(), 1, "{seen:#}");
    assert!(workspaces[0].as_str().expect("row").starts_with("acme"));
    let clusters = seen["clusters"].as_array().expect("rows");
    assert_eq!(clusters.len(), 1, "{seen:#}");
    assert!(clusters[0].as_str().expect("row").starts_with("w-acme"));
    assert!(
        seen["rollouts"]
            .as_str()
            .expect("text")
            .contains("operators"),
        "{seen:#}"
    );
    assert!(
        seen["globex"]
            .as_str()
            .expect("text")
            .contains("no workspace globex"),
        "{seen:#}"
    );
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

/// Where a forge is configured, the stack forms offer a pull request instead of a commit: the
/// change is pushed on a branch and the request opened on the forge, as the signed-in user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_form_opens_a_pull_request_where_a_forge_is_configured() {
    use cplane_e2e::forge::{ForgeKind, ForgeServer};
    let dev = cplane_e2e::oidc::dev_issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    // `Serve` makes the bare remote at `dir/remote.git`: the forge's repository.
    let forge = ForgeServer::start(
        ForgeKind::GitHub,
        "platform/state",
        "forge-token",
        &tmp.path().join("remote.git"),
    );
    let server = cplane_e2e::serve::Serve::new(tmp.path())
        .args([
            "--forge",
            "github",
            "--forge-api-url",
            &forge.api_url,
            "--forge-repo",
            "platform/state",
            "--forge-token-env",
            "CPLANE_TEST_FORGE_TOKEN",
            "--oidc-issuer",
            dev.issuer(),
            "--oidc-audience",
            "cplane",
        ])
        .env("CPLANE_TEST_FORGE_TOKEN", "forge-token")
        .start();
    server.cplane(&["principal", "grant-admin", "maria@example.com"]);
    let token = dev
        .token(
            "cplane",
            "maria",
            "maria@example.com",
            "Maria Lopez",
            Duration::from_secs(600),
        )
        .expect("token");
    let (code, config) = http(server.port, "GET", "/ui/config.json", &[], b"");
    assert_eq!(code, 200);
    assert!(config.contains("\"pull_requests\":true"), "{config}");

    let shots = tmp.path().join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshots");
    let seen = tokio::task::spawn_blocking(move || {
        browser("pr", server.port, &shots, &[("TOKEN", &token)])
    })
    .await
    .expect("browser");
    let requests = forge.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let pr = &requests[0];
    assert!(pr.head.starts_with("cplane/maria/"), "{pr:?}");
    assert!(
        pr.body.contains("Maria Lopez <maria@example.com>"),
        "{pr:?}"
    );
    let href = seen["pullRequest"].as_str().expect("link");
    assert!(href.ends_with(&format!("/{}", pr.number)), "{href} {pr:?}");
    assert!(
        seen["result"].as_str().expect("result").contains(&pr.head),
        "{seen:#}"
    );
}
