//! Helpers of the reconciler's library-level tests: the git repository helpers of the
//! end-to-end tests (`cplane-e2e`), included by path so that there is one copy of them without a
//! dependency cycle (`cplane-e2e` depends on this crate).

#[path = "../../../tests/src/repo.rs"]
#[allow(dead_code)] // each test binary uses a different subset
mod repo;
#[allow(unused_imports)] // each test binary uses a different subset
pub use repo::{commit_all, copy_dir, root, template_repo};
