//! Deploying cplane (issue 17): `cplane deploy render` for every values file in `deploy/values/`
//! and `cplane agent install` for a template cluster, each validated against the real
//! Kubernetes 1.33 schemas (PyPI `kubernetes-validate`, strict); the agent's RBAC is enforced
//! by the test Kubernetes API server while the agent applies and prunes the cluster's bundle,
//! so a verb or resource missing from the computed rules fails here.

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

fn values_files() -> Vec<PathBuf> {
    let dir = cplane_e2e::root().join("deploy/values");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/values")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn env_value<'a>(deployment: &'a Value, name: &str) -> Option<&'a str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn every_values_file_renders_manifests_kubernetes_accepts() {
    let files = values_files();
    assert!(files.len() >= 3, "{files:?}");
    let mut regions = std::collections::BTreeSet::new();
    for file in &files {
        let out = cplane(&[
            "deploy",
            "render",
            "--values",
            file.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        let docs = documents(&text(&out.stdout));
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "NetworkPolicy",
        ] {
            assert!(
                kinds.contains(&kind),
                "{}: no {kind} in {kinds:?}",
                file.display()
            );
        }
        // The ServiceMonitor is a CRD's kind, unknown to the validator: check it selects the
        // Service and names its port; validate everything else against the schemas.
        let (monitors, rest): (Vec<Value>, Vec<Value>) = docs
            .into_iter()
            .partition(|d| d["kind"] == "ServiceMonitor");
        let service = rest
            .iter()
            .find(|d| d["kind"] == "Service")
            .expect("service");
        let sm = &monitors[0];
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        for (k, v) in sm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(
                &service["metadata"]["labels"][k], v,
                "ServiceMonitor selector {k}"
            );
        }
        assert_eq!(
            sm["spec"]["endpoints"][0]["port"],
            service["spec"]["ports"][0]["name"]
        );
        let (ok, report) = kubernetes_validate(&rest);
        assert!(
            ok,
            "{}: rejected by Kubernetes {KUBERNETES_VERSION}:\n{report}",
            file.display()
        );

        // Values reach the pods as the reference docs' variables; secrets only by reference.
        let deployment = rest
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("deployment");
        let values: Value =
            serde_yaml::from_str(&std::fs::read_to_string(file).expect("read")).expect("values");
        assert_eq!(env_value(deployment, "REGION"), values["region"].as_str());
        assert_eq!(
            env_value(deployment, "ENVIRONMENT"),
            values["environment"].as_str()
        );
        assert_eq!(
            env_value(deployment, "BASE_DOMAIN"),
            values["baseDomain"].as_str()
        );
        assert_eq!(
            env_value(deployment, "PRIMARY_CPLANE_API_URL"),
            values["primaryCplaneApiUrl"].as_str()
        );
        let probes = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(probes["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(probes["livenessProbe"]["httpGet"]["path"], "/healthz");
        let env = &probes["env"];
        let db = env
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "CPLANE_DATABASE_URL")
            .expect("db");
        assert!(db["value"].is_null() && db["valueFrom"]["secretKeyRef"]["key"] == "url");
        regions.insert((
            values["region"].as_str().expect("region").to_owned(),
            values["environment"]
                .as_str()
                .expect("environment")
                .to_owned(),
        ));
    }
    assert_eq!(
        regions.len(),
        files.len(),
        "one values file per region × environment"
    );
}

#[test]
fn a_bad_values_file_names_file_line_and_field_and_renders_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(cplane_e2e::root().join("deploy/values/prod-sgp-1.yaml"))
        .expect("read");
    for (name, edit, line, field) in [
        (
            "typo.yaml",
            good.replace("replicas:", "replica:"),
            "replica",
            "unknown field",
        ),
        (
            "domain.yaml",
            good.replace("authDomain: auth.sgp-1", "authDomain: auth.fra-1"),
            "authDomain",
            "does not hold the region",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, &edit).expect("write");
        let out = cplane(&[
            "deploy",
            "render",
            "--values",
            file.to_str().expect("utf-8"),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "rendered despite errors");
        let err = text(&out.stderr);
        let at = edit
            .lines()
            .position(|l| l.starts_with(line))
            .expect("line")
            + 1;
        assert!(
            err.contains(&format!("{}:{at}:", file.display())) && err.contains(field),
            "{name}: {err}"
        );
    }
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

/// The images cannot be built on the test machines (no container runtime), so this checks
/// what can be checked without one: each Dockerfile builds a binary that exists, from the
/// locked dependency tree, and its final stage has no shell and runs as a non-root user.
#[test]
fn dockerfiles_build_real_binaries_into_shell_less_non_root_images() {
    let root = cplane_e2e::root();
    for (file, package, bin) in [
        ("deploy/docker/cplane.Dockerfile", "reconciler", "cplane"),
        ("deploy/docker/agent.Dockerfile", "agent", "cplane-agent"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        let manifest =
            std::fs::read_to_string(root.join(package).join("Cargo.toml")).expect("Cargo.toml");
        let package_name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("package name");
        assert!(
            manifest.contains(&format!("[[bin]]\nname = \"{bin}\"")),
            "{package} has no binary {bin}"
        );
        assert!(
            text.contains(&format!(
                "cargo build --release --locked -p {package_name} --bin {bin}"
            )),
            "{file}: builds {bin} of {package_name}, locked"
        );
        let last_stage = text.rsplit("\nFROM ").next().expect("stages");
        assert!(
            last_stage.starts_with("gcr.io/distroless/"),
            "{file}: a distroless final stage"
        );
        let user = last_stage
            .lines()
            .find_map(|l| l.strip_prefix("USER "))
            .expect("USER in the final stage");
        let uid: u32 = user
            .split(':')
            .next()
            .expect("uid")
            .parse()
            .expect("a numeric uid");
        assert_ne!(uid, 0, "{file}: not root");
        assert!(
            last_stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "{file}: exec-form entrypoint (no shell)"
        );
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        assert!(
            readme.contains(&format!("docker build -f {file} ")),
            "the README builds {file}"
        );
    }
}
