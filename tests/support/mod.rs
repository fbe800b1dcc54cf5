//! Helpers shared by the end-to-end tests: real git repositories in temporary directories.
#![allow(dead_code)] // each test binary uses a different subset

pub mod fake_cloud;
pub mod fault_proxy;
pub mod moto;
pub mod oidc;
pub mod pg;
pub mod serve;
pub mod venv;

mod repo;
#[allow(unused_imports)] // each test binary uses a different subset
pub use repo::{commit_all, copy_dir, root, template_repo};
