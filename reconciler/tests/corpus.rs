//! The broken-repo corpus: each `tests/corpus/<case>/` is the template with `repo/` laid over it
//! and the paths in `remove` deleted, committed to a real git repository. `expected` lists the
//! exact diagnostics (`file:line:col: message`) that `cplane validate` must report — all of them,
//! in order. `CPLANE_BLESS=1` rewrites the expectations (review the diff before committing).

mod support;

use std::fs;
use std::path::Path;

use cplane_reconciler::{check::check, source};

fn run_case(case: &Path) -> Vec<String> {
    let repo = support::template_repo();
    let overlay = case.join("repo");
    if overlay.exists() {
        support::copy_dir(&overlay, repo.path());
    }
    if let Ok(list) = fs::read_to_string(case.join("remove")) {
        for path in list.lines().filter(|l| !l.is_empty()) {
            fs::remove_file(repo.path().join(path)).expect("remove listed file");
        }
    }
    support::commit_all(repo.path(), "broken");
    let git = source::open(repo.path()).expect("open");
    let snapshot = source::read(&git, "HEAD").expect("read");
    let checked = check(snapshot.files);
    assert!(!checked.is_valid(), "{} should be invalid", case.display());
    assert!(
        checked.clusters.is_empty(),
        "an invalid revision yields no bundles"
    );
    checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_broken_repo_reports_exact_errors() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let bless = std::env::var_os("CPLANE_BLESS").is_some();
    let mut cases: Vec<_> = fs::read_dir(&corpus)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the corpus is missing");
    let mut failures = Vec::new();
    for case in &cases {
        let got = run_case(case).join("\n") + "\n";
        let expected_path = case.join("expected");
        if bless {
            fs::write(&expected_path, &got).expect("write expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!(
                "--- {}\nexpected:\n{expected}got:\n{got}",
                case.file_name().expect("name").to_string_lossy()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_template_itself_is_valid() {
    let repo = support::template_repo();
    let git = source::open(repo.path()).expect("open");
    let checked = check(source::read(&git, "HEAD").expect("read").files);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(checked.is_valid(), "{errors:#?}");
    let ids: Vec<&str> = checked
        .clusters
        .iter()
        .map(|r| r.cluster.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["dev-sgp-1", "prod-sgp-1", "w-acme", "w-globex", "w-initech"]
    );
}
