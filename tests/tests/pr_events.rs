//! Pull requests as the way to change state: the webhook's pull/merge-request events are
//! planned and the plan posted on the forge (a commit status and one comment, edited in place
//! on later pushes), and `?mode=pr` opens the request. Against the test forge
//! ([`cplane_e2e::forge`]) playing GitHub, GitLab and Gitea, the real `cplane serve`, real git
//! remotes (bare repositories) and SQLite; the "done when" scenario also against moto.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cplane_e2e::forge::{ForgeKind, ForgeServer};
use cplane_e2e::git;
use cplane_e2e::http::Request;
use cplane_e2e::serve::{http, wait_up_to, Serve, Server, SECRET};
use cplane_reconciler::aws::{Aws, Target};

/// The forge's API token the servers are given (by reference).
const TOKEN: &str = "forge-token-for-tests";
/// The environment variable holding it.
const TOKEN_ENV: &str = "CPLANE_TEST_FORGE_TOKEN";
/// What the statuses link to.
const PUBLIC_URL: &str = "http://cplane.example.test";
/// The project on the forge.
const REPO: &str = "platform/state";
/// cplane's comment marker.
const MARKER: &str = "<!-- cplane-plan -->";

/// A development issuer serving its JWKS on 127.0.0.1 (see [`cplane_e2e::oidc::dev_issuer`]).
async fn issuer() -> cplane_reconciler::auth::dev::DevIssuer {
    cplane_e2e::oidc::dev_issuer().await
}

/// `git daemon` serving the bare repositories under a directory on 127.0.0.1, fetch and push:
/// the state repo's remote at a network URL, as a forge serves it. Killed on drop.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn start(dir: &Path) -> Self {
        let port = cplane_e2e::moto::free_port();
        let child = Command::new("git")
            .arg("daemon")
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack"])
            .args(["--listen=127.0.0.1", &format!("--port={port}")])
            .arg(format!("--base-path={}", dir.display()))
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon");
        cplane_e2e::serve::wait_for("git daemon's port", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self { child, port }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the server reaches the state repo and reads the forge's token.
#[derive(Clone, Copy)]
struct Access {
    /// The token from a file (else from an environment variable).
    token_file: bool,
    /// The remote over `git://` (else `file://`): fetches of request heads go over the network.
    network: bool,
}

/// A server configured for the forge `kind` served by a test forge, with a development
/// issuer, under `dir`: (server, forge, the git daemon when `access.network`).
fn serve_with_forge(
    dir: &Path,
    kind: ForgeKind,
    dev: &cplane_reconciler::auth::dev::DevIssuer,
    access: Access,
    extra: Vec<(String, String)>,
    extra_args: &[&str],
) -> (Serve, ForgeServer, Option<GitDaemon>) {
    // `Serve` makes the bare remote at `dir/remote.git`: the forge's repository.
    let forge = ForgeServer::start(kind, REPO, TOKEN, &dir.join("remote.git"));
    let mut serve = Serve::new(dir)
        .args([
            "--webhook-secret",
            SECRET,
            "--forge",
            kind.flag(),
            "--forge-api-url",
            &forge.api_url,
            "--forge-repo",
            REPO,
            "--public-url",
            PUBLIC_URL,
            "--oidc-issuer",
            dev.issuer(),
            "--oidc-audience",
            "cplane",
        ])
        .args(extra_args);
    let daemon = access.network.then(|| GitDaemon::start(dir));
    if let Some(daemon) = &daemon {
        serve = serve.remote_url(&format!("git://127.0.0.1:{}/remote.git", daemon.port));
    }
    if access.token_file {
        let file = dir.join("forge-token");
        fs::write(&file, format!("{TOKEN}\n")).expect("token file");
        serve = serve.args(["--forge-token-file", file.to_str().expect("utf-8")]);
    } else {
        serve = serve
            .args(["--forge-token-env", TOKEN_ENV])
            .env(TOKEN_ENV, TOKEN);
    }
    for (k, v) in extra {
        serve = serve.env(&k, &v);
    }
    (serve, forge, daemon)
}

/// An admin's bearer token.
fn admin(server: &Server, dev: &cplane_reconciler::auth::dev::DevIssuer) -> String {
    server.cplane(&["principal", "grant-admin", "maria@example.com"]);
    dev.token(
        "cplane",
        "maria",
        "maria@example.com",
        "Maria Lopez",
        Duration::from_secs(3600),
    )
    .expect("token")
}

/// Sends a forge's delivery to the server's webhook: (status, body).
fn deliver(
    server: &Server,
    (headers, body): (Vec<(&'static str, String)>, Vec<u8>),
) -> (u16, String) {
    http(server.port, "POST", "/v1/webhooks/git", &headers, &body)
}

/// Waits until `sha` has a final (not pending) status from cplane, and returns it.
fn final_status(forge: &ForgeServer, sha: &str) -> cplane_e2e::forge::CommitStatus {
    let mut last = None;
    wait_up_to(
        &format!("a final status on {sha}"),
        Duration::from_secs(60),
        || {
            last = forge
                .status(sha, "cplane/plan")
                .filter(|s| s.state != "pending");
            last.is_some()
        },
    );
    last.expect("status")
}

/// The change of the issue's "done when": enable a stack on one workspace (trino on globex)
/// and bump a stack's version (bff, which every workspace with it renders into its image).
fn enable_trino_and_bump_bff(state: &Path) -> String {
    let bff = state.join("stacks/bff/stack.yaml");
    let doc = fs::read_to_string(&bff).expect("read");
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

/// The done-when scenario, on GitHub, with a cloud (moto): a pull request enabling trino on
/// globex and bumping bff gets one comment with every affected cluster's objects; a second
/// push (a new workspace) edits that comment, which then shows the workspace's cloud steps;
/// merging it reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_gets_one_plan_comment_updated_on_every_push_and_merging_it_reconciles() {
    let moto = cplane_e2e::moto::Moto::start();
    // The platform's precondition: the region's parent zone in the operator account.
    let aws = Aws::from_sdk_config(cplane_e2e::moto::Moto::sdk_config(&moto.endpoint).await);
    aws.create_zone(Target::Operator, "sgp-1.cogrion.com", "operator-parent")
        .await
        .expect("parent zone");
    let dev = issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let env: Vec<(String, String)> = cplane_e2e::moto::Moto::env(&moto.endpoint)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let (serve, forge, _daemon) = serve_with_forge(
        tmp.path(),
        ForgeKind::GitHub,
        &dev,
        Access {
            token_file: false,
            network: false,
        },
        env,
        &["--cloud", "aws"],
    );
    let server = serve.spawn();
    let port = server.port;
    let token = admin(&server, &dev);
    // The template's workspaces are provisioned (their certificates issued over a few
    // requeues) and their bundles published: the plan's baseline has nothing to do.
    wait_up_to("the template converged", Duration::from_secs(120), || {
        nothing_to_do(port, &token, None)
    });
    provisioning_steps_are_shown(&server, &dev, &token);

    let work = &server.work;
    git(work, &["checkout", "-q", "-b", "globex-trino"]);
    let first = enable_trino_and_bump_bff(work);
    git(work, &["push", "-q", "origin", "globex-trino"]);
    let number = forge.open_request("globex-trino", &server.branch, "globex: trino, bff 1.9.0");
    let (status, body) = deliver(&server, forge.event(number, true, SECRET));
    assert_eq!(status, 202, "{body}");

    let status = final_status(&forge, &first);
    assert_eq!(status.state, "success", "{status:?}");
    assert_eq!(
        status.description,
        "Plan: 0 to add, 0 to change, 0 to destroy; objects: 8 to add, 3 to change, 0 to remove in 3 cluster(s)."
    );
    assert_eq!(
        status.target_url,
        format!("{PUBLIC_URL}/v1/plan?rev={first}")
    );
    let comments = forge.comments(number);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    let comment = &comments[0].body;
    for part in [
        MARKER,
        "**cluster `w-globex`** (tenant, sgp-1/prod): 8 to add, 1 to change, 0 to remove",
        "**cluster `w-acme`** (tenant, sgp-1/prod): 0 to add, 1 to change, 0 to remove",
        "**cluster `w-initech`** (tenant, sgp-1/dev): 0 to add, 1 to change, 0 to remove",
        "- `+` apps/v1 Deployment trino/trino-worker",
        "<summary><code>~</code> apps/v1 Deployment bff/bff</summary>",
        "```diff",
    ] {
        assert!(comment.contains(part), "{part:?} not in\n{comment}");
    }
    assert!(
        comment
            .lines()
            .any(|l| l.starts_with('+') && l.contains(":1.9.0")),
        "{comment}"
    );
    // No workspace has steps: the change is all in the clusters.
    assert!(!comment.contains("**workspace `"), "{comment}");

    // A second push: a new workspace with trino. The same comment is edited, and now shows
    // the workspace's cloud steps too.
    let globex = fs::read_to_string(work.join("workspaces/globex.yaml")).expect("read");
    let hooli = globex
        .replace("name: globex", "name: hooli")
        .replace("account: globex", "account: hooli")
        .replace("222222222222", "444444444444")
        .replace("globex-41b9d06c", "hooli-7c2e11aa");
    fs::write(work.join("workspaces/hooli.yaml"), hooli).expect("write");
    let second = cplane_e2e::commit_all(work, "hooli: a new workspace with trino");
    git(work, &["push", "-q", "origin", "globex-trino"]);
    let (status, body) = deliver(&server, forge.event(number, false, SECRET));
    assert_eq!(status, 202, "{body}");
    let status = final_status(&forge, &second);
    assert_eq!(status.state, "success", "{status:?}");
    let comments = forge.comments(number);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0].edits, 1);
    let comment = &comments[0].body;
    for part in [
        "### cplane plan of `",
        "**workspace `hooli`** (new workspace)",
        "- `+` route53 hosted zone w-hooli.sgp-1.cogrion.com (tenant account)",
        "- `+` route53 NS w-hooli.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account)",
        "- `+` acm certificate *.w-hooli.sgp-1.cogrion.com + w-hooli.sgp-1.cogrion.com (tenant account)",
        "**cluster `w-hooli`**",
        "**cluster `w-globex`**",
        "**cluster `w-acme`**",
        "**cluster `w-initech`**",
    ] {
        assert!(comment.contains(part), "{part:?} not in\n{comment}");
    }
    assert!(comment.contains(&second[..12]), "{comment}");
    // Only the new workspace has steps: the others are provisioned already.
    assert_eq!(comment.matches("**workspace `").count(), 1, "{comment}");
    // The status' link answers the same plan.
    let r = Request::get(port, &format!("/v1/plan?rev={second}"))
        .bearer(&token)
        .send()
        .expect("GET /v1/plan");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["commit"], second.as_str());

    // Merging reconciles: the followed branch moves, the push webhook triggers a run.
    git(work, &["checkout", "-q", &server.branch]);
    git(work, &["merge", "-q", "--ff-only", "globex-trino"]);
    git(work, &["push", "-q", "origin", &server.branch]);
    let (status, body) = cplane_e2e::serve::webhook(port, &server.branch, "merge-1");
    assert_eq!(status, 202, "{body}");
    wait_up_to("the merge reconciled", Duration::from_secs(120), || {
        nothing_to_do(port, &token, Some(&second))
    });
    assert_eq!(
        http(port, "GET", "/lookup/w-hooli", &[], b"").0,
        200,
        "hooli is served"
    );
}

/// A provisioned workspace shows its steps (`GET /v1/workspaces/{id}`, `status.steps`), each
/// done with the cloud resource it made; a viewer, who may not see the tenant's AWS
/// identifiers, sees the steps without their resources. (Here because this test has the
/// template provisioned against moto.)
fn provisioning_steps_are_shown(
    server: &Server,
    dev: &cplane_reconciler::auth::dev::DevIssuer,
    admin: &str,
) {
    let steps = |token: &str| {
        let r = Request::get(server.port, "/v1/workspaces/acme")
            .bearer(token)
            .send()
            .expect("GET /v1/workspaces/acme");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["status"]["steps"].clone()
    };
    let all = steps(admin);
    let step = |name: &str| -> serde_json::Value {
        all.as_array()
            .expect("steps")
            .iter()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {all:#}"))
    };
    for name in [
        "create_zone",
        "delegate_zone",
        "request_certificate",
        "await_certificate",
    ] {
        assert_eq!(step(name)["state"], "done", "{all:#}");
    }
    let arn = step("request_certificate")["resource"].clone();
    assert!(
        arn.as_str().is_some_and(|a| a.starts_with("arn:aws:acm:")),
        "{all:#}"
    );
    server.cplane(&[
        "membership",
        "add",
        "vic@example.com",
        "acme-corp",
        "--role",
        "viewer",
    ]);
    let vic = dev
        .token(
            "cplane",
            "vic",
            "vic@example.com",
            "Vic",
            Duration::from_secs(600),
        )
        .expect("token");
    let seen = steps(&vic);
    let seen = seen.as_array().expect("steps");
    assert_eq!(seen.len(), all.as_array().expect("steps").len());
    assert!(seen.iter().all(|s| s["resource"].is_null()), "{seen:#?}");
}

/// Whether the server's plan of `rev` (default: the branch head) has nothing to do: no step,
/// no cluster's object.
fn nothing_to_do(port: u16, token: &str, rev: Option<&str>) -> bool {
    let path = match rev {
        Some(rev) => format!("/v1/plan?rev={rev}"),
        None => "/v1/plan".to_owned(),
    };
    Request::get(port, &path)
        .bearer(token)
        .send()
        .is_ok_and(|r| r.status == 200 && r.json()["changes"] == false)
}

/// For one forge: `?mode=pr` opens the request once (the same change again answers the same
/// request), its events get a status and one comment, and a push that breaks validation turns
/// the status to failure and the comment to the errors with file:line.
async fn pull_request_round_trip(kind: ForgeKind, access: Access) {
    let dev = issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (serve, forge, _daemon) = serve_with_forge(tmp.path(), kind, &dev, access, Vec::new(), &[]);
    let server = serve.start();
    let port = server.port;
    let token = admin(&server, &dev);

    // PR mode opens the request: title and body from the change, the user named.
    let put = || {
        Request::new(port, "PUT", "/v1/workspaces/acme/stacks/jupyterhub?mode=pr")
            .bearer(&token)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .expect("PUT ?mode=pr")
    };
    let r = put();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let branch = v["branch"].as_str().expect("branch").to_owned();
    assert_eq!(branch, "cplane/maria/acme-enable-stack-jupyterhub");
    assert_eq!(v["pull_request"]["created"], true, "{v}");
    let url = v["pull_request"]["url"].as_str().expect("url").to_owned();
    let number = v["pull_request"]["number"].as_u64().expect("number");
    let requests = forge.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].head, branch);
    assert_eq!(requests[0].base, server.branch);
    assert_eq!(
        requests[0].title,
        "workspaces/acme: enable stack jupyterhub"
    );
    assert!(
        requests[0].body.contains("Maria Lopez <maria@example.com>"),
        "{}",
        requests[0].body
    );
    // The same change again: the branch moves, the request is the same one.
    let r = put();
    assert_eq!(r.status, 201, "{}", r.text());
    let again = r.json();
    assert_eq!(again["pull_request"]["url"], url.as_str(), "{again}");
    assert_eq!(again["pull_request"]["created"], false, "{again}");
    assert_eq!(forge.requests().len(), 1);

    // Somebody comments; the forge's event asks for a plan.
    forge.comment_as_user(number, "LGTM once the plan is in");
    let (status, body) = deliver(&server, forge.event(number, true, SECRET));
    assert_eq!(status, 202, "{body}");
    let head = again["commit"].as_str().expect("commit").to_owned();
    let status = final_status(&forge, &head);
    assert_eq!(status.state, "success", "{status:?}");
    assert_eq!(
        status.target_url,
        format!("{PUBLIC_URL}/v1/plan?rev={head}")
    );
    let comments = forge.comments(number);
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert_eq!(comments[0].body, "LGTM once the plan is in");
    let plan = &comments[1].body;
    assert!(plan.starts_with(MARKER), "{plan}");
    assert!(
        plan.contains("**cluster `w-acme`** (tenant, sgp-1/prod): "),
        "{plan}"
    );
    assert!(plan.contains("`+` v1 Namespace jupyterhub"), "{plan}");

    // A push that breaks validation: failure, and the same comment lists the errors.
    let work = &server.work;
    git(work, &["fetch", "-q", "origin", &branch]);
    git(work, &["checkout", "-q", "-b", "pr", "FETCH_HEAD"]);
    let acme = work.join("workspaces/acme.yaml");
    let doc = fs::read_to_string(&acme).expect("read");
    assert!(doc.contains("region: sgp-1"), "{doc}");
    fs::write(&acme, doc.replace("region: sgp-1", "region: sgp-9")).expect("write");
    let broken = cplane_e2e::commit_all(work, "acme: a region that does not exist");
    git(
        work,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
    );
    let (status, body) = deliver(&server, forge.event(number, false, SECRET));
    assert_eq!(status, 202, "{body}");
    let status = final_status(&forge, &broken);
    if access.network {
        // The server did not have the pushed head: it fetched it from the remote, by the
        // request's ref, into the mirror's private namespace.
        let mirror = git2::Repository::open_bare(tmp.path().join("mirror.git")).expect("mirror");
        let fetched = match kind {
            ForgeKind::GitLab => format!("refs/cplane/plan/merge-requests/{number}/head"),
            _ => format!("refs/cplane/plan/pull/{number}/head"),
        };
        assert_eq!(
            mirror.refname_to_id(&fetched).map(|id| id.to_string()).ok(),
            Some(broken.clone()),
            "{fetched} in the mirror"
        );
    }
    let failed = if kind == ForgeKind::GitLab {
        "failed"
    } else {
        "failure"
    };
    assert_eq!(status.state, failed, "{status:?}");
    assert!(
        status.description.contains("workspaces/acme.yaml:"),
        "{status:?}"
    );
    let comments = forge.comments(number);
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert_eq!(comments[0].body, "LGTM once the plan is in");
    assert_eq!(comments[1].edits, 1);
    let errors = &comments[1].body;
    assert!(errors.contains("**Invalid: "), "{errors}");
    let line = errors
        .lines()
        .find(|l| l.starts_with("- `workspaces/acme.yaml:") && l.contains("sgp-9"))
        .unwrap_or_else(|| panic!("no error with file:line in\n{errors}"));
    let at = line
        .trim_start_matches("- `workspaces/acme.yaml:")
        .split(':')
        .next()
        .expect("line");
    assert!(at.parse::<u32>().is_ok_and(|n| n > 0), "{line}");

    // Every call carried the forge's token header (the forge refuses others) and stayed in
    // the project; statuses went to the commits planned.
    assert!(
        forge.count("POST", "/statuses/") >= 4,
        "{:#?}",
        forge.calls()
    );
    assert_eq!(
        forge.count(
            "POST",
            if kind == ForgeKind::GitLab {
                "/notes"
            } else {
                "/comments"
            }
        ),
        1,
        "one comment created: {:#?}",
        forge.calls()
    );
    // The token is in no log line of the server: it is only read from its reference.
    let calls = format!("{:?}", forge.calls());
    assert!(!calls.contains(TOKEN), "{calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_pull_requests_are_opened_planned_and_commented_once() {
    pull_request_round_trip(
        ForgeKind::GitHub,
        Access {
            token_file: false,
            network: false,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_merge_requests_are_opened_planned_and_noted_once() {
    pull_request_round_trip(
        ForgeKind::GitLab,
        Access {
            token_file: false,
            network: true,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_pull_requests_are_opened_planned_and_commented_once() {
    pull_request_round_trip(
        ForgeKind::Gitea,
        Access {
            token_file: true,
            network: true,
        },
    )
    .await;
}

/// A forge that refuses the token: `?mode=pr` still pushes the branch and says the request
/// could not be opened (`502`), naming the forge's answer but not the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_refusing_the_token_is_reported_not_hidden() {
    let dev = issuer().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (serve, forge, _daemon) = serve_with_forge(
        tmp.path(),
        ForgeKind::GitHub,
        &dev,
        Access {
            token_file: false,
            network: false,
        },
        Vec::new(),
        &[],
    );
    let server = serve.env(TOKEN_ENV, "not-the-token").start();
    let port = server.port;
    let token = admin(&server, &dev);
    let r = Request::new(port, "PUT", "/v1/workspaces/acme/stacks/jupyterhub?mode=pr")
        .bearer(&token)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .expect("PUT ?mode=pr");
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["branch"], "cplane/maria/acme-enable-stack-jupyterhub");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("401 Bad credentials"), "{error}");
    assert!(!error.contains("not-the-token"), "{error}");
    assert!(forge.requests().is_empty());
}
