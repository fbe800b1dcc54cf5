//! The reconcile lease: of several `cplane serve` replicas sharing one PostgreSQL database, only
//! the holder of the lease reconciles; every replica serves HTTP.
//!
//! # Guarantees
//! - The lease is a PostgreSQL session-level advisory lock (`pg_try_advisory_lock`) keyed by the
//!   reconcile scope, held on a connection of its own. At most one session holds it at a time.
//! - When the holder dies (crash, SIGKILL, lost network), its session ends and PostgreSQL releases
//!   the lock; a standby, trying every [`RETRY`] (jittered), takes it over.
//! - The holder checks its session before every run and while it waits ([`Lease::check`]); when
//!   the session is gone it stops reconciling and becomes a standby.
//!
//! # Assumptions
//! - SQLite is one process on one machine: there is nothing to share, the lease is always held.
//! - A run cut short when the holder's session drops may overlap the new holder's first run for
//!   the length of one AWS call; the journal's deterministic keys (CallerReference,
//!   IdempotencyToken) make the overlap create nothing twice.
//!
//! # Errors
//! Connection errors while acquiring are logged and retried; they never end the process.

use std::time::Duration;

use sha2::Digest;
use sqlx::Connection;

/// How often a standby tries to take the lease (±20 % jitter).
pub const RETRY: Duration = Duration::from_secs(1);

/// How long a liveness check of the holder's session may take before the lease counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A held lease. Dropping it releases it (the session closes).
pub struct Lease {
    session: Option<sqlx::postgres::PgConnection>,
}

/// The advisory lock key of a reconcile scope: the first 8 bytes of SHA-256("cplane:" + scope).
pub fn key(scope: &str) -> i64 {
    let digest = sha2::Sha256::digest(format!("cplane:{scope}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

impl Lease {
    /// Tries once to take the lease of `scope`; `Ok(None)` when another session holds it.
    pub async fn try_acquire(database_url: &str, scope: &str) -> Result<Option<Self>, sqlx::Error> {
        if !is_postgres(database_url) {
            return Ok(Some(Self { session: None }));
        }
        let mut session = sqlx::postgres::PgConnection::connect(database_url).await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key(scope))
            .fetch_one(&mut session)
            .await?;
        Ok(held.then_some(Self {
            session: Some(session),
        }))
    }

    /// Waits until the lease of `scope` is ours, trying every [`RETRY`].
    pub async fn acquire(database_url: &str, scope: &str) -> Self {
        let mut logged = false;
        loop {
            match Self::try_acquire(database_url, scope).await {
                Ok(Some(lease)) => return lease,
                Ok(None) if !logged => {
                    tracing::info!(
                        scope,
                        "another replica holds the reconcile lease; standing by"
                    );
                    logged = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reconcile lease: database unreachable"),
            }
            tokio::time::sleep(RETRY.mul_f64(rand::random_range(0.8..1.2))).await;
        }
    }

    /// Whether the lease is still held (the holding session answers).
    pub async fn check(&mut self) -> bool {
        let Some(session) = self.session.as_mut() else {
            return true;
        };
        matches!(
            tokio::time::timeout(CHECK_TIMEOUT, session.ping()).await,
            Ok(Ok(()))
        )
    }
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}
