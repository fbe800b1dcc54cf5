//! One plan of a revision: the workspaces' steps and every cluster's objects added, changed
//! (with a unified diff) and removed, locally (`cplane plan`) and from a running control plane
//! (`POST /v1/plan`, `cplane plan --server`). Real git repositories, SQLite, the real binary.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cplane_e2e::http::Request;
use cplane_e2e::serve::Serve;

fn cplane_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .current_dir(dir)
        .env_remove("PRIMARY_CPLANE_API_URL")
        .env_remove("INTER_REGION_SERVICE_TOKEN")
        .env_remove("CPLANE_TOKEN")
        .output()
        .expect("run cplane")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The change of the issue's "done when": enable a stack on one workspace (trino on globex)
/// and bump a stack's version (bff, which every workspace with it renders into its image).
fn enable_trino_and_bump_bff(state: &Path) -> String {
    let bff = state.join("stacks/bff/stack.yaml");
    let doc = fs::read_to_string(&bff).expect("read");
    assert!(doc.contains("version: \"1.8.0\""), "{doc}");
    fs::write(
        &bff,
        doc.replace("version: \"1.8.0\"", "version: \"1.9.0\""),
    )
    .expect("write");
    let globex = state.join("workspaces/globex.yaml");
    let mut doc = fs::read_to_string(&globex).expect("read");
    doc.push_str("    - name: trino\n      values:\n        workers: 2\n");
    fs::write(&globex, doc).expect("write");
    cplane_e2e::commit_all(state, "globex: enable trino; bff 1.9.0")
}

#[test]
fn a_plan_lists_every_clusters_objects_with_diffs_and_its_exit_code_says_whether_anything_changes()
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane_in(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = tmp.path().join("state");
    let out = cplane_in(&state, &["apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Nothing changes: exit 0 even with --detailed-exitcode, and it says so.
    let out = cplane_in(&state, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(
            "No changes. The database matches the revision. So does every cluster's bundle."
        ),
        "{}",
        text(&out)
    );

    enable_trino_and_bump_bff(&state);
    let out = cplane_in(&state, &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "  cluster w-globex (tenant, sgp-1/prod): 8 to add, 1 to change, 0 to remove",
        "    + apps/v1 Deployment trino/trino-worker",
        "    ~ apps/v1 Deployment bff/bff",
        "  cluster w-acme (tenant, sgp-1/prod): 0 to add, 1 to change, 0 to remove",
        "  cluster w-initech (tenant, sgp-1/dev): 0 to add, 1 to change, 0 to remove",
        "        --- published: apps/v1 Deployment bff/bff",
        "        +++ new: apps/v1 Deployment bff/bff",
        "Plan: 0 to add, 0 to change, 0 to destroy; objects: 8 to add, 3 to change, 0 to remove in 3 cluster(s).",
    ] {
        assert!(plan.lines().any(|l| l == line), "{line:?} not in\n{plan}");
    }
    assert!(
        plan.lines()
            .any(|l| l.starts_with("        +") && l.contains(":1.9.0")),
        "{plan}"
    );
    assert!(
        plan.lines()
            .any(|l| l.starts_with("        -") && l.contains(":1.8.0")),
        "{plan}"
    );
    // Without the flag the exit code stays 0, as before.
    let out = cplane_in(&state, &["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // JSON: the same, as data.
    let out = cplane_in(&state, &["plan", "--format", "json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["changes"], true);
    let clusters = v["clusters"].as_array().expect("clusters");
    let ids: Vec<&str> = clusters
        .iter()
        .map(|c| c["cluster"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["w-acme", "w-globex", "w-initech"]);
    let globex = &clusters[1];
    assert_eq!(globex["added"].as_array().expect("added").len(), 8);
    assert_eq!(globex["added"][0]["kind"], "Namespace");
    assert_eq!(globex["added"][0]["name"], "trino");
    assert_eq!(globex["changed"][0]["kind"], "Deployment");
    assert!(globex["changed"][0]["diff"]
        .as_str()
        .expect("diff")
        .contains("@@ "));
    assert_ne!(globex["from"], globex["to"]);

    // Applied, nothing is left to change.
    let out = cplane_in(&state, &["apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cplane_in(&state, &["plan", "--detailed-exitcode", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["changes"], false);
    assert_eq!(v["clusters"], serde_json::json!([]));
}

/// A development issuer serving its JWKS on 127.0.0.1 (see [`cplane_e2e::oidc::dev_issuer`]).
async fn issuer() -> cplane_reconciler::auth::dev::DevIssuer {
    cplane_e2e::oidc::dev_issuer().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_plans_a_branch_on_the_server_with_only_a_token() {
    let dev = issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Serve::new(tmp.path())
        .args(["--oidc-issuer", dev.issuer(), "--oidc-audience", "cplane"])
        .start();
    server.cplane(&["principal", "grant-admin", "ci@example.com"]);
    let token = dev
        .token(
            "cplane",
            "ci@example.com",
            "ci@example.com",
            "CI",
            Duration::from_secs(600),
        )
        .expect("token");
    let token_file = tmp.path().join("token");
    fs::write(&token_file, format!("{token}\n")).expect("token file");
    let port = server.port;
    let url = format!("http://127.0.0.1:{port}");

    // A pull request's branch, pushed but not merged.
    let work = &server.work;
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(work)
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    git(&["checkout", "-q", "-b", "pr-1"]);
    let commit = enable_trino_and_bump_bff(work);
    git(&["push", "-q", "origin", "pr-1"]);

    // What the server plans is what a local plan against its database says.
    let remote = cplane_in(
        work,
        &[
            "plan",
            "--server",
            &url,
            "--token-file",
            token_file.to_str().expect("utf-8"),
            "--format",
            "json",
            "--detailed-exitcode",
        ],
    );
    assert_eq!(remote.status.code(), Some(4), "{}", text(&remote));
    let remote: serde_json::Value = serde_json::from_slice(&remote.stdout).expect("JSON");
    assert_eq!(remote["commit"], commit.as_str());
    let local = cplane_in(
        work,
        &["plan", "--format", "json", "--database", &server.database],
    );
    assert!(local.status.success(), "{}", text(&local));
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).expect("JSON");
    assert_eq!(remote["clusters"], local["clusters"]);
    assert_eq!(remote["plan"], local["plan"]);
    assert_eq!(remote["clusters"].as_array().expect("clusters").len(), 3);

    // Text, as a local plan prints it.
    let out = cplane_in(
        work,
        &[
            "plan",
            "--server",
            &url,
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(
            "  cluster w-globex (tenant, sgp-1/prod): 8 to add, 1 to change, 0 to remove"
        ),
        "{}",
        text(&out)
    );

    // The API directly: POST with a revision, GET with ?rev=; the token is required.
    let body = serde_json::json!({ "rev": commit }).to_string();
    let r = Request::new(port, "POST", "/v1/plan")
        .bearer(&token)
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .expect("POST /v1/plan");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["clusters"], local["clusters"]);
    let r = Request::new(port, "POST", "/v1/plan")
        .body(body)
        .send()
        .expect("POST /v1/plan");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = Request::get(port, "/v1/plan?rev=pr-1")
        .bearer(&token)
        .send()
        .expect("GET /v1/plan");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["commit"], commit.as_str());
    let r = Request::new(port, "POST", "/v1/plan")
        .bearer(&token)
        .body(r#"{"rev": "0123456789012345678901234567890123456789"}"#)
        .send()
        .expect("POST /v1/plan");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no such commit"), "{}", r.text());

    // An invalid revision: every error with file:line, exit 2, nothing planned.
    let acme = work.join("workspaces/acme.yaml");
    let doc = fs::read_to_string(&acme).expect("read");
    fs::write(&acme, doc.replace("region: sgp-1", "region: sgp-9")).expect("write");
    cplane_e2e::commit_all(work, "break");
    git(&["push", "-q", "origin", "pr-1"]);
    let out = cplane_in(
        work,
        &[
            "plan",
            "--server",
            &url,
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.lines()
            .any(|l| l.starts_with("workspaces/acme.yaml:") && l.contains("sgp-9")),
        "{err}"
    );

    // Without a token it is a usage error, before any request.
    let out = cplane_in(work, &["plan", "--server", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--token-file"), "{}", text(&out));
}

/// A server with a cloud plans steps 8 and 9 where `cplane.yaml` configures them (by the
/// journal: the API's plan calls no outside system).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_plan_has_steps_8_and_9_when_it_has_a_cloud() {
    let moto = cplane_e2e::moto::Moto::start();
    let dev = issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::new(tmp.path()).args([
        "--oidc-issuer",
        dev.issuer(),
        "--oidc-audience",
        "cplane",
        "--cloud",
        "aws",
    ]);
    for (k, v) in cplane_e2e::moto::Moto::env(&moto.endpoint) {
        serve = serve.env(k, &v);
    }
    let server = serve.spawn();
    let port = server.port;
    cplane_e2e::serve::wait_for("the first run", || {
        cplane_e2e::serve::http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    server.cplane(&["principal", "grant-admin", "ci@example.com"]);
    let token = dev
        .token(
            "cplane",
            "ci@example.com",
            "ci@example.com",
            "CI",
            Duration::from_secs(600),
        )
        .expect("token");
    let work = &server.work;
    let cplane_yaml = work.join("cplane.yaml");
    let mut text_yaml = fs::read_to_string(&cplane_yaml).expect("cplane.yaml");
    text_yaml.push_str("  keycloak:\n    url: http://127.0.0.1:9\n    adminClientId: cplane\n    adminClientSecret:\n      env: CPLANE_TEST_KEYCLOAK_SECRET\n");
    fs::write(&cplane_yaml, text_yaml).expect("write");
    let commit = cplane_e2e::commit_all(work, "configure keycloak");
    let out = Command::new("git")
        .args(["push", "-q", "origin", "HEAD:refs/heads/keycloak"])
        .current_dir(work)
        .output()
        .expect("git push");
    assert!(out.status.success(), "{}", text(&out));
    let r = Request::new(port, "POST", "/v1/plan")
        .bearer(&token)
        .header("Content-Type", "application/json")
        .body(serde_json::json!({ "rev": commit, "ref": "keycloak" }).to_string())
        .send()
        .expect("POST /v1/plan");
    assert_eq!(r.status, 200, "{}", r.text());
    let plan = r.json();
    assert_eq!(plan["commit"], commit.as_str());
    let steps = plan["plan"]["steps"].as_array().expect("steps").clone();
    let actions: Vec<String> = steps
        .iter()
        .map(|s| format!("{} {}", s["workspace"], s["action"]))
        .collect();
    for id in ["acme", "globex", "initech"] {
        assert!(
            steps
                .iter()
                .any(|s| s["workspace"] == id && s["action"] == "ensure_identity_client"),
            "step 9 planned for {id}: {actions:#?}"
        );
    }
}
