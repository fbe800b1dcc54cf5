//! `cplane-reconciler`: the control plane behind the `cplane` binary.
//!
//! - [`source`]: the git adapter (read a revision from the object database, tree diffs);
//!   [`remote`]: fetch/push credentials from the environment.
//! - [`check`]: load + validate + render one revision; what `cplane validate` runs.
//! - [`render`]: stack templates → per-cluster bundles with `sha256:` digests.
//! - [`plan`]: the pure planner; [`apply`]: executes plans through the journal;
//!   [`reconcile`]: one run (validate → observe → plan → apply → status);
//!   [`status`]: the run's outcome, decided once.
//! - [`db`], [`aws`]: adapters; [`bundle_store`]: published bundles as agents poll them;
//!   [`connections`]: the HTTP/1.1 connections of `cplane serve` ([`tls`]: HTTPS, mTLS).
//! - [`auth`]: OIDC bearer JWTs, principals, account memberships, the development issuer.
//! - [`init`]: `cplane init`; [`lease`]: one reconciling replica per scope.
//! - [`api`]: the write API (commits on a user's behalf), `GET /v1/plan`, `/openapi.json`.
//! - [`synthetic`]: a generated state repo of any size, for benchmarks.
//! - [`write`]: API writes committed to the state repo on a user's behalf.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod apply;
pub mod auth;
pub mod aws;
pub mod bundle_store;
pub mod check;
pub mod connections;
pub mod db;
pub mod incremental;
pub mod init;
pub mod lease;
pub mod plan;
pub mod reconcile;
pub mod remote;
pub mod render;
pub mod serve;
pub mod source;
pub mod status;
pub mod synthetic;
pub mod tls;
pub mod write;
