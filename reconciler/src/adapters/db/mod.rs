//! The database adapter (sqlx, `Any` driver): SQLite embedded by default, PostgreSQL in
//! production, one schema (`reconciler/migrations/`) for both.
//!
//! SQL here is portable: `$N` placeholders numbered in order of first use (SQLite accepts them
//! as named parameters, PostgreSQL natively), TEXT and BIGINT only, upserts with
//! `ON CONFLICT … DO UPDATE`, which both engines support.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::plan::{
    DesiredWorkspace, JournalEntry, JournalState, LookupRow, Observed, ObservedWorkspace, Policy,
    Status, StepKind, StepResult, TenantRow,
};

mod bundles;
mod deliveries;
mod events;
mod journal;
mod observe;
mod rollouts;
mod seed;
mod status;
mod tenants;
mod tokens;
mod webhooks;

pub use bundles::ClusterReport;
pub use deliveries::SinkBacklog;
pub use events::{EventFilter, EventRetention};
pub use journal::StepRow;
pub use rollouts::{GateCandidate, RolloutCluster, RolloutEvent, RolloutRow, WaveGate};
pub use seed::BFF_HEALTHY;
pub use status::{Condition, WorkspaceReadiness};
pub use tenants::LocalTenants;
pub use tokens::{TokenGrant, TokenInfo, TokenScope};

/// Errors of the database adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting failed.
    #[error("connecting to {url}: {source}")]
    Connect {
        /// The URL, without credentials.
        url: String,
        /// The driver's reason.
        #[source]
        source: sqlx::Error,
    },
    /// Running the migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value is not one cplane writes.
    #[error("database holds an unexpected value: {0}")]
    Corrupt(String),
    /// A journal row's result is not one cplane writes.
    #[error("journal of workspace {workspace}, step {step}: unreadable result: {source}")]
    JournalResult {
        /// The workspace.
        workspace: String,
        /// The row's step.
        step: &'static str,
        /// Why it does not load.
        #[source]
        source: crate::plan::StepResultError,
    },
}

impl Error {
    /// Whether retrying later may succeed (connection trouble, not bad data).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Query(
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                )
        )
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `sqlite://PATH` (created when missing) or `postgres://…`; credentials are removed for messages.
/// Hex SHA-256 of a token: what is stored and looked up.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The URL without credentials (`postgres://…@host/db`), for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// PostgreSQL channel announcing a cluster whose bundle was published (payload: cluster id).
pub const BUNDLES_CHANNEL: &str = "cplane_bundles";
/// PostgreSQL channel announcing revoked or rotated cluster tokens (payload: cluster id).
pub const TOKENS_CHANNEL: &str = "cplane_tokens";

/// The file of a `sqlite:` URL (`None` for other databases and in-memory SQLite).
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

pub use cplane_core::check::gzip;

/// A connection pool with the schema migrated.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    url: std::sync::Arc<str>,
    retention: Retention,
    /// Where the `tenants` rows live ([`crate::tenants`]): this pool's table unless
    /// [`Db::with_tenant_store`] says otherwise.
    tenants: std::sync::Arc<dyn crate::tenants::TenantStore>,
    /// The stream of fleet-wide events ([`Db::with_event_stream`]).
    event_stream: std::sync::Arc<str>,
    /// Counts commits of events by this process ([`Db::watch_events`]).
    events_committed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// How many reconcile runs are kept per scope, and for how long: older runs are deleted as
/// new ones are recorded, so the runs table stays bounded however long a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs kept per scope (the newest).
    pub keep: u32,
    /// Runs older than this are deleted (whatever `keep` says).
    pub max_age: std::time::Duration,
    /// Finished rollouts kept per stack (the newest; at least 1): see [`Db::prune_rollouts`].
    pub rollouts: u32,
}

impl Default for Retention {
    /// The newest 1,000 runs per scope, at most 30 days old; the newest 20 rollouts per stack.
    fn default() -> Self {
        Self {
            keep: 1000,
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            rollouts: 20,
        }
    }
}

impl Db {
    /// Connects and runs the embedded migrations. SQLite files are created when missing.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let url_full = if url.starts_with("sqlite:") && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let max = if url.starts_with("sqlite:") { 1 } else { 8 };
        let sqlite = url.starts_with("sqlite:");
        if let Some(path) = sqlite_path(url) {
            // `sqlite://.cplane/cplane.db` on a fresh checkout: make the folder too.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| Error::Connect {
                    url: redact(url),
                    source: sqlx::Error::Io(source),
                })?;
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL with synchronous=NORMAL: durable at checkpoints, no fsync per
                        // statement (thousands of row writes per run otherwise crawl), and
                        // readers never block the writer.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            // Fail fast on a wrong URL or a server that is down, instead of sqlx's 30 s.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url_full)
            .await
            .map_err(|source| Error::Connect {
                url: redact(url),
                source,
            })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            tenants: std::sync::Arc::new(LocalTenants::new(pool.clone())),
            pool,
            url: url.into(),
            retention: Retention::default(),
            event_stream: "*".into(),
            events_committed: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Finished rollouts kept per stack ([`Retention::rollouts`], at least 1).
    pub fn rollouts_kept(&self) -> u32 {
        self.retention.rollouts.max(1)
    }

    /// The same pool, keeping runs by `retention` from now on.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The URL this pool was opened with (it may hold a password: never log it, see [`redact`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is PostgreSQL (leases and cross-replica notifications need it).
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres:") || self.url.starts_with("postgresql:")
    }

    /// The pool, for adapters that need their own queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// `NOTIFY channel, payload` on PostgreSQL; nothing on SQLite (one process only).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), Error> {
        if self.is_postgres() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Databases for the adapter's tests: SQLite in a temporary file, PostgreSQL in a fresh
    //! database on the server of `CPLANE_TEST_PG` (default: the local one at 127.0.0.1:5432).

    use super::*;

    /// The workspace `acme` of the template, as the planner hands it to the database.
    pub(crate) fn acme() -> crate::plan::DesiredWorkspace {
        crate::plan::DesiredWorkspace {
            id: "acme".into(),
            region: "sgp-1".into(),
            environment: "prod".into(),
            account: "acme-corp".into(),
            aws_account_id: "111111111111".into(),
            aws_region: "ap-southeast-1".into(),
            role_arn: "arn:aws:iam::111111111111:role/p".into(),
            external_id: "ext-1".into(),
            zone_name: "w-acme.sgp-1.cogrion.com".into(),
            parent_zone: "sgp-1.cogrion.com".into(),
            bff_url: "https://bff.w-acme.sgp-1.cogrion.com".into(),
            deletion_policy: crate::plan::Policy::Delete,
        }
    }

    pub(crate) async fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("cplane.db").display());
        let db = Db::connect(&url).await.expect("sqlite");
        (dir, db)
    }

    /// A fresh PostgreSQL database, dropped at the end of `f`.
    pub(crate) async fn with_postgres<F, Fut>(f: F)
    where
        F: FnOnce(Db) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        use sqlx::Connection;
        let admin = std::env::var("CPLANE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "cplane_unit_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {} (set CPLANE_TEST_PG): {e}", redact(&admin))
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let db = Db::connect(&format!("{base}/{name}"))
            .await
            .expect("postgres");
        f(db.clone()).await;
        db.pool().close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .expect("drop database");
    }
}
