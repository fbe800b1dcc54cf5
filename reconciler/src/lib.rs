//! `cplane-reconciler`: the control plane behind the `cplane` binary.
//!
//! - [`check`], [`render`], [`plan`], [`status`]: the pure core, crate `cplane-core`
//!   (`reconciler/core/`), re-exported here: validate and render a revision, plan the steps,
//!   decide a run's outcome.
//! - [`adapters`]: [`source`] and [`remote`] (git), [`db`] (by table family), [`aws`]
//!   (behind the [`cloud`] port), re-exported at these paths.
//! - [`apply`]: executes plans through the journal; [`reconcile`]: one run (validate →
//!   observe → plan → apply → status); [`incremental`]: runs of a commit that only touches
//!   `workspaces/`.
//! - [`serve`]: `cplane serve` (the loop and a router per surface); [`bundle_store`]:
//!   published bundles as agents poll them; [`connections`]: its HTTP/1.1 connections
//!   ([`tls`]: HTTPS, mTLS); [`lease`]: one reconciling replica per scope.
//! - [`auth`]: OIDC bearer JWTs, principals, account memberships, the development issuer;
//!   [`tenants`]: where the `tenants` rows live (the primary region owns them).
//! - [`preview`]: one plan of a revision (steps and every cluster's object changes), as
//!   `cplane plan` prints it and the API answers it.
//! - [`api`] and [`write`]: the write API, committing to the state repo on a user's behalf.
//! - [`init`]: `cplane init`; [`synthetic`]: generated state repos for benchmarks.
//! - [`deploy`]: manifests that deploy cplane (per region × environment) and install a
//!   cluster's agent with the least privilege its bundle needs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The pure core, re-exported where the rest of this crate (and its users) find it.
pub use cplane_core::{check, manifests, plan, render, status};
// The adapters, at the paths their callers have always used.
pub use adapters::git::{remote, source};
pub use adapters::{aws, db};

pub mod adapters;
pub mod api;
pub mod apply;
pub mod auth;
pub mod bundle_store;
pub mod cloud;
pub mod connections;
pub mod deploy;
pub mod event_stream;
pub mod events;
pub mod global;
pub mod incremental;
pub mod init;
pub mod lease;
pub mod notify;
pub mod preview;
pub mod reconcile;
pub mod rollout;
pub mod serve;
pub mod synthetic;
pub mod tenants;
pub mod tls;
pub mod write;

/// The git commit this build was made from (`git describe --always --dirty`), or `unknown`
/// when it was built outside a git checkout.
pub const GIT_COMMIT: &str = git_version::git_version!(
    args = ["--always", "--abbrev=12", "--dirty=-modified"],
    fallback = "unknown"
);

/// What `cplane --version` prints after the name: the package version and the git commit.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| format!("{} (commit {GIT_COMMIT})", env!("CARGO_PKG_VERSION")))
}
