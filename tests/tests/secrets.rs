//! Secrets never reach git-derived output (issue 13 item 2): a secret passed as a `secretRef`
//! is rendered as a reference, and a commit that carries a literal secret (in a stack value, or
//! in a rendered `Secret`) is refused without the value appearing in `cplane serve`'s logs
//! (at debug level), its database, its API answers or the bundle an agent pulls.

use std::fs;
use std::path::Path;
use std::process::Command;

use cplane_e2e::serve::{get_json, http, push, wait_for, webhook, Serve, SECRET};

/// Marks every literal secret of this test, to look for afterwards.
const MARK: &str = "hunter2-never-in-output";

fn commit_and_wait(port: u16, work: &Path, branch: &str, message: &str, outcome: &str) {
    let commit = cplane_e2e::commit_all(work, message);
    push(work, branch);
    assert_eq!(webhook(port, branch, &format!("d-{commit}")).0, 202);
    wait_for(&format!("{message}: {outcome}"), || {
        let status = get_json(port, "/v1/status");
        status["last_run"]["commit"] == commit.as_str() && status["last_run"]["outcome"] == outcome
    });
}

/// The database's files (`cplane.db` and its journal files) in `dir`, as bytes.
fn database_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_file() && name.starts_with("cplane.db") {
            out.push((path.display().to_string(), fs::read(&path).expect("read")));
        }
    }
    assert!(!out.is_empty(), "no database in {}", dir.display());
    out
}

#[test]
fn secret_values_reach_no_log_database_answer_or_bundle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("serve.log");
    let cplane = Serve::new(tmp.path())
        .args(["--insecure-open-read", "--webhook-secret", SECRET])
        .env("CPLANE_LOG", "debug")
        .stderr_to(&log)
        .start();
    let (port, work, branch, db) = (cplane.port, &cplane.work, &cplane.branch, &cplane.database);

    // A reference: accepted, and rendered as one.
    let acme = work.join("workspaces/acme.yaml");
    let original = fs::read_to_string(&acme).expect("read acme");
    let with_ref = original.replace(
        "    - name: superset\n      values:\n",
        "    - name: superset\n      values:\n        secretKey: {secretRef: {name: acme-flask, key: k1}}\n",
    );
    assert_ne!(with_ref, original, "acme enables superset with values");
    fs::write(&acme, &with_ref).expect("write");
    commit_and_wait(
        port,
        work,
        branch,
        "acme: superset key from a Secret",
        "converged",
    );
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", "w-acme", "--database", db])
        .output()
        .expect("token create");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let bearer = [("Authorization", format!("Bearer {token}"))];
    let (status, bundle) = http(port, "GET", "/v1/clusters/w-acme/bundle", &bearer, b"");
    assert_eq!(status, 200);
    assert!(
        bundle.contains(r#""secretKeyRef":{"key":"k1","name":"acme-flask"}"#),
        "the reference is rendered"
    );

    // A literal secret in a value, then one in a rendered Secret: both refused.
    let with_literal = with_ref.replace(
        "        secretKey: {secretRef: {name: acme-flask, key: k1}}\n",
        &format!("        secretKey: {{secretRef: {{name: acme-flask, key: k1}}}}\n        oidcClientSecret: {MARK}-1\n"),
    );
    fs::write(&acme, with_literal).expect("write");
    commit_and_wait(port, work, branch, "acme: a literal secret", "refused");
    fs::write(&acme, &with_ref).expect("write");
    fs::write(
        work.join("stacks/bff/templates/credentials.yaml.j2"),
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: bff-db\n  namespace: bff\nstringData:\n  password: {MARK}-2\n"),
    )
    .expect("write template");
    commit_and_wait(port, work, branch, "bff: a Secret with data", "refused");
    let (_, refusal) = http(port, "GET", "/v1/status", &[], b"");
    assert!(refusal.contains("a Secret with `stringData`"), "{refusal}");

    // Nowhere: not in the API's answers, the bundle, the logs, the database.
    for path in ["/v1/status", "/v1/workspaces/acme", "/v1/plan"] {
        let (_, body) = http(port, "GET", path, &[], b"");
        assert!(!body.contains(MARK), "{path} shows a secret: {body}");
    }
    let (_, bundle_now) = http(port, "GET", "/v1/clusters/w-acme/bundle", &bearer, b"");
    assert_eq!(bundle_now, bundle, "a refused commit changed the bundle");
    let logged = fs::read_to_string(&log).expect("log");
    assert!(logged.contains("refused"), "the refusals are logged");
    assert!(!logged.contains(MARK), "the log holds a secret:\n{logged}");
    for (file, bytes) in database_files(tmp.path()) {
        let found = bytes.windows(MARK.len()).any(|w| w == MARK.as_bytes());
        assert!(!found, "{file} holds a secret");
    }
    // `cplane validate` of the same commit names the field, never the value.
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["validate", "--repo"])
        .arg(work)
        .output()
        .expect("validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("credentials.yaml.j2"), "{said}");
    assert!(!said.contains(MARK), "{said}");
}
