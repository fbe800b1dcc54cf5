//! The adapters: where cplane meets the outside world. Each turns I/O into the plain values
//! of `cplane-core` and steps into calls; the crate root re-exports them at their old paths.
//!
//! - [`aws`]: STS, Route53 and ACM through the AWS SDK, behind the [`crate::cloud::Cloud`]
//!   port.
//! - [`db`]: the database (sqlx; SQLite embedded, PostgreSQL in production), split by table
//!   family.
//! - [`git`]: reading revisions, remote credentials.
//! - [`primary`]: the primary region's internal API (the `tenants` rows of other regions),
//!   behind the [`crate::tenants::TenantStore`] port.
//! - [`keycloak`] (step 9) and [`lookup`] (step 8: Workers KV, DynamoDB), behind the
//!   [`crate::global`] ports; [`http`]: the HTTP client of the REST adapters.
//! - [`forge`]: GitHub, GitLab or Gitea's REST API (commit statuses, the plan comment on pull
//!   requests, opening pull requests).

pub mod aws;
pub mod db;
pub mod forge;
pub mod git;
pub mod http;
pub mod keycloak;
pub mod lookup;
pub mod primary;
