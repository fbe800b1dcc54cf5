//! `cplane-reconciler`: the control plane behind the `cplane` binary.
//!
//! - [`source`]: the git adapter (read a revision from the object database, tree diffs);
//!   [`remote`]: fetch/push credentials from the environment.
//! - [`check`], [`render`], [`plan`], [`status`]: the pure core, crate `cplane-core`
//!   (`reconciler/core/`), re-exported here: validate and render a revision, plan the steps,
//!   decide a run's outcome.
//! - [`apply`]: executes plans through the journal; [`reconcile`]: one run (validate →
//!   observe → plan → apply → status).
//! - [`cloud`]: the port apply calls the cloud through; [`db`], [`aws`]: adapters; [`bundle_store`]: published bundles as agents poll them;
//!   [`connections`]: the HTTP/1.1 connections of `cplane serve` ([`tls`]: HTTPS, mTLS).
//! - [`auth`]: OIDC bearer JWTs, principals, account memberships, the development issuer.
//! - [`init`]: `cplane init`; [`lease`]: one reconciling replica per scope.
//! - [`api`]: the write API (commits on a user's behalf), `GET /v1/plan`, `/openapi.json`.
//! - [`synthetic`]: a generated state repo of any size, for benchmarks.
//! - [`write`]: API writes committed to the state repo on a user's behalf.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The pure core, re-exported where the rest of this crate (and its users) find it.
pub use cplane_core::{check, plan, render, status};

pub mod api;
pub mod apply;
pub mod auth;
pub mod aws;
pub mod bundle_store;
pub mod cloud;
pub mod connections;
pub mod db;
pub mod incremental;
pub mod init;
pub mod lease;
pub mod reconcile;
pub mod remote;
pub mod serve;
pub mod source;
pub mod synthetic;
pub mod tls;
pub mod write;
