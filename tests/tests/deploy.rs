//! Deploying cplane (issue 17): `cplane agent install` for a template cluster, validated
//! against the real Kubernetes 1.33 schemas (PyPI `kubernetes-validate`, strict); the agent's
//! RBAC is enforced by the test Kubernetes API server while the agent applies and prunes the
//! cluster's bundle, so a verb or resource missing from the computed rules fails here. And
//! `--version` names the commit; the server records agents' versions and warns about old ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cplane_agent::apply::{self, Action, Options, Target};
use cplane_e2e::kube_apiserver::ApiServer;
use cplane_e2e::kube_rbac::{self, Rule};
use cplane_reconciler::check::check_keeping;
use cplane_reconciler::source;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery};
use serde_json::Value;

/// The Kubernetes version validated against (the agent's k8s-openapi feature is v1_33).
const KUBERNETES_VERSION: &str = "1.33.0";

fn cplane(args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .env_remove("CPLANE_REPO")
        .env_remove("CPLANE_REV")
        .env_remove("CPLANE_SERVER")
        .output()
        .expect("run cplane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The documents of a multi-document YAML text.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Validates `objects` with `kubernetes-validate --strict`: (success, report).
fn kubernetes_validate(objects: &[Value]) -> (bool, String) {
    let validator = cplane_e2e::venv::ensure(
        "cplane-kubeval-venv",
        "kubernetes-validate",
        "kubernetes-validate",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<PathBuf> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let f = dir.path().join(format!("{i:03}.yaml"));
            std::fs::write(&f, serde_yaml::to_string(o).expect("yaml")).expect("write");
            f
        })
        .collect();
    let out = Command::new(validator)
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.success() && !report.contains("ERROR"), report)
}

/// The install manifests of the template's cluster `cluster`, as `cplane agent install`
/// prints them.
fn install(repo: &Path, cluster: &str) -> Vec<Value> {
    let out = cplane(&[
        "agent",
        "install",
        "--cluster",
        cluster,
        "--server",
        "https://cplane.sgp-1.cogrion.com",
        "--repo",
        repo.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("create secret generic cplane-agent-token --from-file=token="),
        "the header says how to create the token Secret"
    );
    documents(&stdout)
}

/// Applies `objects` to `server` as an administrator would (`kubectl apply --server-side`).
async fn admin_apply(server: &ApiServer, objects: &[Value]) {
    let client = server.client();
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    for o in objects {
        let (group, version) = o["apiVersion"]
            .as_str()
            .and_then(|a| a.rsplit_once('/').or(Some(("", a))))
            .expect("apiVersion");
        let kind = o["kind"].as_str().expect("kind");
        let (ar, caps) = discovery
            .resolve_gvk(&kube::core::GroupVersionKind::gvk(group, version, kind))
            .unwrap_or_else(|| panic!("{kind} not served"));
        let ar: ApiResource = ar;
        let name = o["metadata"]["name"].as_str().expect("name");
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &ar)
            }
            _ => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            name,
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(o),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

/// The template cluster's bundle, as the agent receives it.
fn agent_bundle(repo: &Path, cluster: &str, drop: usize) -> cplane_agent::bundle::Bundle {
    let git = source::open(repo).expect("open");
    let checked = check_keeping(source::read(&git, "HEAD").expect("read").files, |c, _| {
        c.id == cluster
    });
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    let bundle = checked
        .clusters
        .iter()
        .find_map(|r| r.bundle.clone())
        .expect("the cluster's bundle");
    let body: String = bundle
        .objects
        .iter()
        .skip(drop)
        .map(|o| format!("{}\n", serde_json::to_string(&o.value).expect("json")))
        .collect();
    cplane_agent::bundle::Bundle::verify(
        &cplane_agent::bundle::digest_of(body.as_bytes()),
        1,
        body.into_bytes(),
    )
    .expect("bundle")
}

/// A cluster of the template whose bundle has objects of several kinds.
const CLUSTER: &str = "w-acme";

async fn apply_as_agent(
    server: &ApiServer,
    bundle: &cplane_agent::bundle::Bundle,
) -> apply::Report {
    let target = Target {
        client: server.client(),
        cluster: CLUSTER.into(),
        namespace: "cplane-system".into(),
        crd_timeout: Duration::from_secs(10),
    };
    apply::apply(&target, bundle, Options { confirmed: true })
        .await
        .expect("the agent's run")
}

fn failures(report: &apply::Report) -> Vec<String> {
    report
        .objects
        .iter()
        .filter(|o| o.action == Action::Failed)
        .map(|o| format!("{}: {}", o.object, o.message))
        .collect()
}

#[tokio::test]
async fn agent_install_manifests_validate_and_grant_exactly_what_the_agent_needs() {
    cplane_agent::install_crypto();
    let repo = cplane_e2e::template_repo();
    let manifests = install(repo.path(), CLUSTER);
    let (ok, report) = kubernetes_validate(&manifests);
    assert!(ok, "rejected by Kubernetes {KUBERNETES_VERSION}:\n{report}");
    assert!(
        !serde_json::to_string(&manifests)
            .expect("json")
            .contains("\"Secret\""),
        "the token Secret is never printed"
    );
    let rules = kube_rbac::rules_for_service_account(&manifests, "cplane-system", "cplane-agent");
    assert!(!rules.is_empty());
    let user = "system:serviceaccount:cplane-system:cplane-agent";

    // The agent, held to exactly those rules, applies the whole bundle, then prunes.
    let full = agent_bundle(repo.path(), CLUSTER, 0);
    let server = ApiServer::new();
    admin_apply(&server, &manifests).await;
    let server = server.with_rbac(user, rules.clone());
    let report = apply_as_agent(&server, &full).await;
    assert!(failures(&report).is_empty(), "{:#?}", failures(&report));
    assert!(report.count(Action::Created) > 10, "{report:#?}");
    let smaller = agent_bundle(repo.path(), CLUSTER, 3);
    let report = apply_as_agent(&server, &smaller).await;
    assert!(failures(&report).is_empty(), "{:#?}", failures(&report));
    assert!(report.count(Action::Pruned) >= 1, "{report:#?}");

    // Controls: without `create` on the bundle's kinds (the ClusterRole) nothing new can be
    // made, without `delete` nothing pruned — the test server enforces each verb, so the
    // rules above are proven sufficient, not merely allowed.
    let without = |verb: &str| -> Vec<Rule> {
        rules
            .iter()
            .cloned()
            .map(|mut r| {
                if r.namespace.is_none() {
                    r.verbs.retain(|v| v != verb);
                }
                r
            })
            .collect()
    };
    let server = ApiServer::new();
    admin_apply(&server, &manifests).await;
    let server = server.with_rbac(user, without("create"));
    let report = apply_as_agent(&server, &full).await;
    let failed = failures(&report);
    assert!(
        !failed.is_empty()
            && failed
                .iter()
                .all(|f| f.contains("forbidden") || f.contains("Forbidden")),
        "{failed:#?}"
    );

    let server = ApiServer::new();
    admin_apply(&server, &manifests).await;
    let server = server.with_rbac(user, rules.clone());
    let report = apply_as_agent(&server, &full).await;
    assert!(failures(&report).is_empty());
    let server = server.with_rbac(user, without("delete"));
    let report = apply_as_agent(&server, &smaller).await;
    assert_eq!(report.count(Action::Pruned), 0, "{report:#?}");
    assert!(
        failures(&report)
            .iter()
            .any(|f| f.to_lowercase().contains("forbidden")),
        "{report:#?}"
    );
}

#[test]
fn version_names_the_commit() {
    let head = git2::Repository::discover(cplane_e2e::root())
        .expect("the checkout")
        .head()
        .expect("HEAD")
        .peel_to_commit()
        .expect("commit")
        .id()
        .to_string();
    for bin in ["cplane", "cplane-agent"] {
        let out = Command::new(cplane_e2e::cargo_bin(bin))
            .arg("--version")
            .output()
            .expect("run");
        let line = text(&out.stdout);
        let commit = line
            .split("(commit ")
            .nth(1)
            .and_then(|r| r.split([')', '-']).next())
            .unwrap_or_else(|| panic!("{bin}: {line}"));
        assert!(
            commit.len() >= 7 && head.starts_with(commit),
            "{bin} --version says {line:?}; HEAD is {head}"
        );
        assert!(
            line.starts_with(&format!("{bin} {}", env!("CARGO_PKG_VERSION"))),
            "{line}"
        );
    }
}

#[test]
fn the_server_records_agents_versions_and_warns_about_old_ones() {
    use cplane_e2e::serve::{http, wait_for, Serve};
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let server = Serve::new(dir.path())
        .args(["--insecure-open-read"])
        .stderr_to(&log)
        .start();
    let token = server.cplane(&["cluster", "token", "create", "w-acme"]);
    let auth = format!("Bearer {}", token.trim());
    let report =
        serde_json::json!({"digest": format!("sha256:{}", "0".repeat(64)), "generation": 1,
        "healthy": true, "message": "", "objects": []})
        .to_string();
    let current = format!("cplane-agent/{} (commit abc)", env!("CARGO_PKG_VERSION"));
    for (agent, warned) in [
        (current.as_str(), false),
        ("cplane-agent/0.0.1 (commit old)", true),
    ] {
        let (code, body) = http(
            server.port,
            "POST",
            "/v1/clusters/w-acme/status",
            &[
                ("authorization", auth.clone()),
                ("user-agent", agent.to_owned()),
                ("content-type", "application/json".to_owned()),
            ],
            report.as_bytes(),
        );
        assert_eq!(code, 204, "{body}");
        let status = cplane_e2e::serve::get_json(server.port, "/v1/clusters/w-acme/status");
        assert_eq!(
            status["reported"]["report"]["agent_version"],
            agent.trim_start_matches("cplane-agent/"),
            "{status}"
        );
        if warned {
            wait_for("the warning about the old agent", || {
                std::fs::read_to_string(&log).is_ok_and(|l| {
                    l.contains("older than the control plane") && l.contains("0.0.1 (commit old)")
                })
            });
        } else {
            assert!(!std::fs::read_to_string(&log)
                .expect("log")
                .contains("older than the control plane"));
        }
    }
}
