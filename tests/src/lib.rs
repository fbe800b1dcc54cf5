//! `cplane-e2e`: cplane's end-to-end tests (`tests/*.rs`, each driving the `cplane` and
//! `cplane-agent` binaries or their servers) and the code they share:
//!
//! - [`cargo_bin`]: the workspace's binaries, built fresh.
//! - [`template_repo`], [`commit_all`], [`copy_dir`], [`root`]: real git repositories in
//!   temporary directories.
//! - [`http`]: the HTTP client (one request over a fresh connection, blocking).
//! - [`serve`]: driving `cplane serve` (HTTP, signed push webhooks, git pushes, waiting).
//! - [`pg`]: a fresh PostgreSQL database per test, or a SQLite URL.
//! - [`rollout`]: a state repo of many workspaces, `cplane serve` on it, and an agent per
//!   cluster against its own test Kubernetes API server (the rollout tests).
//! - [`pki`]: certificates and CRLs for TLS tests (rcgen).
//! - Fakes of outside systems: [`kube_apiserver`] (a Kubernetes API server in memory, also served
//!   by the `kube-fake` example; [`kube_rbac`] its optional RBAC), [`moto`] (AWS, moto's server in a venv of its own),
//!   [`fault_proxy`] (faults injected in front of moto), [`fake_cloud`] (an in-memory `Cloud`),
//!   [`keycloak`] (Keycloak's admin API), [`cloudflare_kv`] (Workers KV's REST API, recording),
//!   [`faults`] (their injected throttling), [`forge`] (GitHub's, GitLab's and Gitea's REST
//!   API for pull requests, recording), [`fake_global`] (in-memory ports of steps 8, 9),
//!   [`oidc`] (a local OIDC issuer), [`venv`] (Python tools in venvs under `~/.cache`).
//!
//! Library-level tests, which need none of this, live next to their crates
//! (`reconciler/tests/`, `agent/tests/`, …). This crate is never published.
#![forbid(unsafe_code)]

mod cargo_bin;
pub mod cloudflare_kv;
pub mod fake_cloud;
pub mod fake_global;
pub mod fault_proxy;
pub mod faults;
pub mod forge;
pub mod http;
pub mod keycloak;
pub mod kube_apiserver;
pub mod kube_rbac;
pub mod moto;
pub mod oidc;
pub mod pg;
pub mod pki;
pub mod receiver;
mod repo;
pub mod rollout;
pub mod serve;
pub mod venv;

pub use cargo_bin::cargo_bin;
pub use repo::{commit_all, copy_dir, git, root, template_repo};
