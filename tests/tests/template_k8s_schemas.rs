//! Every manifest the state repo template renders, for every cluster, validated against the
//! real Kubernetes OpenAPI schemas (PyPI `kubernetes-validate`, strict: unknown fields are
//! errors). The validator is installed into a venv under `~/.cache` on first use.

use std::path::PathBuf;
use std::process::Command;

use cplane_reconciler::check::check_keeping;
use cplane_reconciler::source;

/// The Kubernetes version validated against (the agent's k8s-openapi feature is v1_33).
const KUBERNETES_VERSION: &str = "1.33.0";

/// Installs `kubernetes-validate` once.
fn validator() -> PathBuf {
    cplane_e2e::venv::ensure(
        "cplane-kubeval-venv",
        "kubernetes-validate",
        "kubernetes-validate",
    )
}

/// Runs the validator on `files`: (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn every_rendered_template_manifest_matches_the_kubernetes_schemas() {
    let repo = cplane_e2e::template_repo();
    let git = source::open(repo.path()).expect("open");
    let checked = check_keeping(source::read(&git, "HEAD").expect("read").files, |_, _| true);
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    let out = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    let mut objects = 0;
    for r in &checked.clusters {
        let bundle = r.bundle.as_ref().expect("kept");
        objects += bundle.objects.len();
        let file = out.path().join(format!("{}.yaml", r.cluster.id));
        std::fs::write(&file, bundle.to_yaml()).expect("write");
        files.push(file);
    }
    assert!(
        files.len() >= 5 && objects > 100,
        "{} clusters, {objects} objects",
        files.len()
    );
    let (ok, report) = validate(&files);
    assert!(
        ok,
        "rendered manifests fail the Kubernetes {KUBERNETES_VERSION} schemas:\n{report}"
    );
}

#[test]
fn the_validator_rejects_what_kubernetes_rejects() {
    // A control: a misspelt field and a wrong type must fail, or the test above proves nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = |spec_extra: &str, port: &str| {
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{spec_extra}  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n        ports:\n        - containerPort: {port}\n")
    };
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, deployment("  replicas: 3\n", "80")).expect("write");
    let (ok, report) = validate(std::slice::from_ref(&good));
    assert!(ok, "rejected a valid Deployment:\n{report}");
    for (name, text, culprit) in [
        ("typo.yaml", deployment("  replica: 3\n", "80"), "replica"),
        (
            "type.yaml",
            deployment("  replicas: 3\n", "\"80\""),
            "containerPort",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).expect("write");
        let (ok, report) = validate(&[file]);
        assert!(!ok, "accepted an invalid Deployment ({name}):\n{report}");
        assert!(report.contains(culprit), "{report}");
    }
}
