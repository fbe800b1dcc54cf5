//! Snapshots (insta) of the template repo's rendered bundles: any change to a template, the
//! render context or the canonical form shows up as a reviewable diff. Update with
//! `cargo insta review` or `INSTA_UPDATE=always cargo test --test render_snapshots`.

mod support;

use cplane_reconciler::check::check;
use cplane_reconciler::source;

#[test]
fn template_bundles() {
    let repo = support::template_repo();
    let git = source::open(repo.path()).expect("open");
    let checked = check(source::read(&git, "HEAD").expect("read").files);
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);
    for (cluster, bundle) in &checked.bundles {
        insta::assert_snapshot!(
            cluster.id.as_str(),
            format!("# {}\n{}", bundle.digest, bundle.yaml)
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
        c.bundles
            .iter()
            .map(|(c, b)| (c.id.clone(), b.digest.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&first), digests(&second));
}
