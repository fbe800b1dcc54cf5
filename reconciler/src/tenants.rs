//! The `tenants` port: where a control plane reads and writes the `tenants` rows (reference
//! doc 001, step 7, and "Database Strategy").
//!
//! The platform's primary region (`primaryRegion` in `cplane.yaml`) owns the `tenants` table:
//! provisioning metadata of every region lives in its database alone. So:
//! - the primary region's control plane (no `PRIMARY_CPLANE_API_URL`) reads and writes its own
//!   table: [`crate::db::LocalTenants`];
//! - every other region's control plane reads and writes the primary's rows through the
//!   primary's internal API (`GET|PUT /internal/tenants`, bearer `INTER_REGION_SERVICE_TOKEN`):
//!   [`crate::adapters::primary::RemoteTenants`]. Its own `tenants` table stays empty.
//!
//! The database adapter holds the store its region uses ([`crate::db::Db::with_tenant_store`]),
//! so observation ([`crate::db::Db::observe`]) and apply (`WriteTenant` steps) both go through
//! the same one.
//!
//! # Guarantees
//! - [`TenantStore::put`] is an idempotent upsert keyed by `workspace_id` (`w-{id}`): repeating
//!   it after a lost answer changes nothing.
//! - An error says whether a later attempt may succeed ([`Error::is_retryable`]): an unreachable
//!   or overloaded primary is retryable (the step waits and the run is converging), a refused
//!   service token or a malformed answer is not (someone must fix the configuration).
//! - Nothing here logs or displays the service token.

use std::future::Future;
use std::pin::Pin;

use crate::plan::TenantRow;

/// A boxed future of a tenant store call.
pub type TenantFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// Which rows to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The rows of these regions (every region when empty).
    Regions(Vec<String>),
    /// The rows of these workspaces, by `w-{id}`.
    Workspaces(Vec<String>),
}

/// Where a region's `tenants` rows live: its own database (the primary region) or the
/// primary's internal API (every other region). See the module docs.
pub trait TenantStore: Send + Sync {
    /// The rows matching `filter`, in `workspace_id` order.
    fn list<'a>(&'a self, filter: &'a Filter) -> TenantFuture<'a, Vec<TenantRow>>;

    /// Upserts `row` (keyed by its `workspace_id`).
    fn put<'a>(&'a self, row: &'a TenantRow) -> TenantFuture<'a, ()>;

    /// Where the rows live, for messages: `this region's database` or the primary's URL.
    fn location(&self) -> String;
}

/// Errors of tenant store calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This region's database failed (the primary region's own store).
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The primary region could not be reached, or did not answer in time.
    #[error("the primary region ({base}) is unreachable: {source}")]
    Unreachable {
        /// The primary's API URL.
        base: String,
        /// Why.
        #[source]
        source: crate::auth::jwks::FetchError,
    },
    /// The primary region answered with an error status.
    #[error("the primary region ({base}) answered {status}: {message}")]
    Refused {
        /// The primary's API URL.
        base: String,
        /// The HTTP status.
        status: u16,
        /// The primary's `error` message (or the status' reason).
        message: String,
    },
    /// The primary region's answer is not what its internal API returns.
    #[error("the primary region ({base}) answered something unexpected: {reason}")]
    Invalid {
        /// The primary's API URL.
        base: String,
        /// What is wrong.
        reason: String,
    },
    /// The primary's URL is not usable (configuration).
    #[error("PRIMARY_CPLANE_API_URL: {0}")]
    Config(#[source] crate::auth::jwks::FetchError),
}

impl Error {
    /// Whether a later attempt may succeed without anyone changing anything: the primary
    /// unreachable, overloaded or failing (5xx, 429), or this database unreachable. A refused
    /// token (401), a misdirected call (421) or a bad answer needs a person first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Db(e) => e.is_retryable(),
            Error::Unreachable { .. } => true,
            Error::Refused { status, .. } => *status == 429 || *status >= 500,
            Error::Invalid { .. } | Error::Config(_) => false,
        }
    }
}

/// Checks a row another region sends (`PUT /internal/tenants/{id}`): every problem, as
/// `(field, message)`.
pub fn check_row(path_id: &str, row: &TenantRow) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    if !row.workspace_id.starts_with("w-") || !label(&row.workspace_id) {
        problems.push((
            "workspace_id",
            format!("`{}` is not a workspace name `w-{{id}}`", row.workspace_id),
        ));
    } else if row.workspace_id != path_id {
        problems.push((
            "workspace_id",
            format!("`{}` differs from the path's `{path_id}`", row.workspace_id),
        ));
    }
    if !label(&row.region) {
        problems.push(("region", format!("`{}` is not a region id", row.region)));
    }
    if !label(&row.delegated_zone) {
        problems.push((
            "delegated_zone",
            format!("`{}` is not a zone name", row.delegated_zone),
        ));
    }
    if !matches!(row.status.as_str(), "active" | "retained" | "deleted") {
        problems.push((
            "status",
            format!(
                "`{}`: must be `active`, `retained` or `deleted`",
                row.status
            ),
        ));
    }
    if !row.bff_url.starts_with("https://") || row.bff_url.len() > 2048 {
        problems.push(("bff_url", "must be an https:// URL".to_owned()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> TenantRow {
        TenantRow {
            workspace_id: "w-hans".into(),
            region: "fra-1".into(),
            delegated_zone: "w-hans.fra-1.cogrion.com".into(),
            status: "active".into(),
            bff_url: "https://bff.w-hans.fra-1.cogrion.com".into(),
        }
    }

    #[test]
    fn rows_from_other_regions_are_checked_field_by_field() {
        assert_eq!(check_row("w-hans", &row()), vec![]);
        let bad = TenantRow {
            workspace_id: "w-other".into(),
            region: "FRA 1".into(),
            delegated_zone: String::new(),
            status: "gone".into(),
            bff_url: "http://bff".into(),
        };
        let fields: Vec<&str> = check_row("w-hans", &bad).iter().map(|p| p.0).collect();
        assert_eq!(
            fields,
            [
                "workspace_id",
                "region",
                "delegated_zone",
                "status",
                "bff_url"
            ]
        );
        assert_eq!(
            check_row("w-hans", &bad)[0].1,
            "`w-other` differs from the path's `w-hans`"
        );
    }

    #[test]
    fn only_a_primary_that_may_recover_is_retried() {
        let refused = |status| Error::Refused {
            base: "https://cplane.sgp-1.cogrion.com".into(),
            status,
            message: "x".into(),
        };
        assert!(refused(503).is_retryable());
        assert!(refused(429).is_retryable());
        assert!(!refused(401).is_retryable());
        assert!(!refused(421).is_retryable());
        assert!(!Error::Invalid {
            base: "b".into(),
            reason: "r".into()
        }
        .is_retryable());
    }
}
