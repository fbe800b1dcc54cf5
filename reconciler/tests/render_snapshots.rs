//! Snapshots (insta) of the template repo's rendered bundles: any change to a template, the
//! render context or the canonical form shows up as a reviewable diff. Update with
//! `cargo insta review` or `INSTA_UPDATE=always cargo test --test render_snapshots`.

mod support;

use cplane_reconciler::check::{check, check_keeping};
use cplane_reconciler::source;

#[test]
fn template_bundles() {
    let repo = support::template_repo();
    let git = source::open(repo.path()).expect("open");
    let checked = check_keeping(source::read(&git, "HEAD").expect("read").files, |_, _| true);
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    for r in &checked.clusters {
        let bundle = r.bundle.as_ref().expect("kept");
        insta::assert_snapshot!(
            r.cluster.id.as_str(),
            format!("# {}\n{}", bundle.digest, bundle.to_yaml())
        );
    }
}

#[test]
fn rendering_is_deterministic() {
    let repo = support::template_repo();
    let git = source::open(repo.path()).expect("open");
    let first = check(source::read(&git, "HEAD").expect("read").files);
    let mut files = source::read(&git, "HEAD").expect("read").files;
    files.reverse(); // input order must not matter
    let second = check(files);
    let digests = |c: &cplane_reconciler::check::Checked| {
        c.clusters
            .iter()
            .map(|r| (r.cluster.id.clone(), r.digest.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&first), digests(&second));
}
