//! `cplane-core`: what cplane decides, without doing any of it.
//!
//! - [`check`]: load + validate + render one revision's files (what `cplane validate` runs).
//! - [`render`]: stack templates → per-cluster bundles with `sha256:` digests.
//! - [`manifests`]: what a revision changes in a cluster's bundle (objects and diffs).
//! - [`plan`]: the planner, `(desired model, observed state) → ordered steps`.
//! - [`rollout`]: rollout waves, gates and states.
//! - [`status`]: the outcome of applying a plan, decided once.
//!
//! Everything here takes data and returns data. The crate depends on no tokio, sqlx, AWS
//! SDK or git library (its `Cargo.toml` says so, and the compiler holds it to that): the
//! adapters in `cplane-reconciler` turn I/O into the plain values these modules work on.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod manifests;
pub mod plan;
pub mod render;
pub mod rollout;
pub mod status;

#[cfg(test)]
pub(crate) mod testdata;
