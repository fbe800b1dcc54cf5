//! The database adapter (sqlx, `Any` driver): SQLite embedded by default, PostgreSQL in
//! production, one schema (`reconciler/migrations/`) for both.
//!
//! SQL here is portable: `$N` placeholders numbered in order of first use (SQLite accepts them
//! as named parameters, PostgreSQL natively), TEXT and BIGINT only, upserts with
//! `ON CONFLICT … DO UPDATE`, which both engines support.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::plan::{
    DesiredWorkspace, JournalEntry, JournalState, LookupRow, Observed, ObservedWorkspace, Policy,
    Status, StepKind, TenantRow,
};

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

/// An agent's report (`POST /v1/clusters/{cluster}/status`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterReport {
    /// Digest of the bundle applied.
    pub digest: String,
    /// Its generation.
    pub generation: i64,
    /// Whether every object applied and is healthy.
    pub healthy: bool,
    /// Summary.
    #[serde(default)]
    pub message: String,
    /// Per-object results (kind, namespace, name, result, health), as the agent reports them.
    #[serde(default = "empty_list")]
    pub objects: serde_json::Value,
}

fn empty_list() -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}

/// One status condition (Kubernetes style) of an entity.
#[derive(Debug, Clone, Copy)]
pub struct Condition<'a> {
    /// `workspace`, `region`, `platform`.
    pub kind: &'a str,
    /// Entity id.
    pub id: &'a str,
    /// `Ready`, `Reconciling`, `Stalled`.
    pub condition: &'a str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human message.
    pub message: &'a str,
    /// Commit the condition refers to.
    pub commit: &'a str,
}

/// One workspace's readiness, for its region's `Ready` condition ([`Db::workspace_readiness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceReadiness {
    /// Workspace id.
    pub id: String,
    /// Region it is provisioned in.
    pub region: String,
    /// Its environment.
    pub environment: String,
    /// `Ready` True and not `Stalled`.
    pub ready: bool,
}

/// PostgreSQL channel announcing a cluster whose bundle was published (payload: cluster id).
pub const BUNDLES_CHANNEL: &str = "cplane_bundles";
/// PostgreSQL channel announcing revoked cluster tokens (payload: cluster id).
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
}

/// How many reconcile runs are kept per scope, and for how long: older runs are deleted as
/// new ones are recorded, so the runs table stays bounded however long a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs kept per scope (the newest).
    pub keep: u32,
    /// Runs older than this are deleted (whatever `keep` says).
    pub max_age: std::time::Duration,
}

impl Default for Retention {
    /// The newest 1,000 runs per scope, at most 30 days old.
    fn default() -> Self {
        Self {
            keep: 1000,
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
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
            pool,
            url: url.into(),
            retention: Retention::default(),
        })
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

    /// What the planner needs about just these workspaces (incremental re-plans), leaving out
    /// rows of workspaces provisioned outside `scope` (another control plane's).
    pub async fn observe_only(
        &self,
        ids: &[String],
        scope: &crate::plan::Scope,
    ) -> Result<Observed, Error> {
        let mut observed = Observed::default();
        if ids.is_empty() {
            return Ok(observed);
        }
        let list = (1..=ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let names: Vec<String> = ids.iter().map(|id| format!("w-{id}")).collect();
        let fetch = |sql: String, binds: &[String]| {
            let binds = binds.to_vec();
            async move {
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = q.bind(b);
                }
                q.fetch_all(&self.pool).await
            }
        };
        for row in fetch(format!("SELECT id, region, environment, account, aws_account_id, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status FROM workspaces WHERE id IN ({list})"), ids).await? {
            let w = workspace_row(&row)?;
            observed.workspaces.insert(w.applied.id.clone(), w);
        }
        for row in fetch(format!("SELECT workspace_id, region, delegated_zone, status, bff_url FROM tenants WHERE workspace_id IN ({list})"), &names).await? {
            let t = tenant_row(&row)?;
            observed.tenants.insert(t.workspace_id.trim_start_matches("w-").to_owned(), t);
        }
        for row in fetch(format!("SELECT workspace_name, region, bff_url FROM tenant_lookup WHERE workspace_name IN ({list})"), &names).await? {
            let name: String = row.try_get("workspace_name")?;
            observed.lookup.insert(name.trim_start_matches("w-").to_owned(), LookupRow { region: row.try_get("region")?, bff_url: row.try_get("bff_url")? });
        }
        for row in fetch(format!("SELECT workspace_id, step, state, result FROM journal WHERE workspace_id IN ({list})"), ids).await? {
            let (key, entry) = journal_row(&row)?;
            observed.journal.insert(key, entry);
        }
        restrict(&mut observed, scope);
        Ok(observed)
    }

    /// Everything the planner needs from the database about workspaces in `scope`.
    pub async fn observe(&self, scope: &crate::plan::Scope) -> Result<Observed, Error> {
        let in_scope = |r: &str| scope.regions.is_empty() || scope.regions.iter().any(|x| x == r);
        let mut observed = Observed::default();
        let rows = sqlx::query(
            "SELECT id, region, environment, account, aws_account_id, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status FROM workspaces",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let w = workspace_row(&row)?;
            if in_scope(&w.applied.region) {
                observed.workspaces.insert(w.applied.id.clone(), w);
            }
        }
        for row in
            sqlx::query("SELECT workspace_id, region, delegated_zone, status, bff_url FROM tenants")
                .fetch_all(&self.pool)
                .await?
        {
            let t = tenant_row(&row)?;
            if in_scope(&t.region) {
                let id = t.workspace_id.trim_start_matches("w-").to_owned();
                observed.tenants.insert(id, t);
            }
        }
        for row in sqlx::query("SELECT workspace_name, region, bff_url FROM tenant_lookup")
            .fetch_all(&self.pool)
            .await?
        {
            let name: String = row.try_get("workspace_name")?;
            let l = LookupRow {
                region: row.try_get("region")?,
                bff_url: row.try_get("bff_url")?,
            };
            if in_scope(&l.region) {
                observed
                    .lookup
                    .insert(name.trim_start_matches("w-").to_owned(), l);
            }
        }
        for row in sqlx::query("SELECT workspace_id, step, state, result FROM journal")
            .fetch_all(&self.pool)
            .await?
        {
            let id: String = row.try_get("workspace_id")?;
            if !observed.workspaces.contains_key(&id) {
                continue;
            }
            let (key, entry) = journal_row(&row)?;
            observed.journal.insert(key, entry);
        }
        restrict(&mut observed, scope);
        Ok(observed)
    }

    /// Upserts the `workspaces` row.
    pub async fn write_workspace(
        &self,
        w: &DesiredWorkspace,
        generation: i64,
        status: Status,
        commit: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO workspaces (id, region, environment, account, aws_account_id, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status, commit_id, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, environment = excluded.environment, account = excluded.account,
               aws_account_id = excluded.aws_account_id, role_arn = excluded.role_arn, external_id = excluded.external_id,
               zone_name = excluded.zone_name, parent_zone = excluded.parent_zone, bff_url = excluded.bff_url, deletion_policy = excluded.deletion_policy,
               generation = excluded.generation, status = excluded.status, commit_id = excluded.commit_id, updated_at = excluded.updated_at",
        )
        .bind(&w.id)
        .bind(&w.region)
        .bind(&w.environment)
        .bind(&w.account)
        .bind(&w.aws_account_id)
        .bind(&w.role_arn)
        .bind(&w.external_id)
        .bind(&w.zone_name)
        .bind(&w.parent_zone)
        .bind(&w.bff_url)
        .bind(w.deletion_policy.as_str())
        .bind(generation)
        .bind(status.as_str())
        .bind(commit)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes every journal entry of a workspace (a new generation starts clean).
    pub async fn clear_journal(&self, workspace: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM journal WHERE workspace_id = $1")
            .bind(workspace)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Upserts the `tenants` row.
    pub async fn write_tenant(&self, t: &TenantRow) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tenants (workspace_id, region, delegated_zone, status, bff_url, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (workspace_id) DO UPDATE SET region = excluded.region, delegated_zone = excluded.delegated_zone,
               status = excluded.status, bff_url = excluded.bff_url, updated_at = excluded.updated_at",
        )
        .bind(&t.workspace_id)
        .bind(&t.region)
        .bind(&t.delegated_zone)
        .bind(&t.status)
        .bind(&t.bff_url)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Upserts the lookup entry of `w-{workspace}`.
    pub async fn write_lookup(&self, workspace: &str, l: &LookupRow) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tenant_lookup (workspace_name, region, bff_url, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_name) DO UPDATE SET region = excluded.region, bff_url = excluded.bff_url, updated_at = excluded.updated_at",
        )
        .bind(format!("w-{workspace}"))
        .bind(&l.region)
        .bind(&l.bff_url)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The lookup entry of `w-{id}` (tenant → region), if any.
    pub async fn lookup_entry(&self, workspace_name: &str) -> Result<Option<LookupRow>, Error> {
        let row =
            sqlx::query("SELECT region, bff_url FROM tenant_lookup WHERE workspace_name = $1")
                .bind(workspace_name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(LookupRow {
                region: r.try_get("region")?,
                bff_url: r.try_get("bff_url")?,
            }),
            None => None,
        })
    }

    /// Removes the lookup entry of `w-{workspace}`.
    pub async fn delete_lookup(&self, workspace: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM tenant_lookup WHERE workspace_name = $1")
            .bind(format!("w-{workspace}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Journal: records the deterministic key *before* the call it guards. Returns the attempt
    /// number (1 on the first try; more means an earlier attempt's outcome is unknown).
    pub async fn journal_begin(
        &self,
        workspace: &str,
        step: StepKind,
        key: &str,
    ) -> Result<i64, Error> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO journal (workspace_id, step, idempotency_key, state, attempts, created_at, updated_at) VALUES ($1, $2, $3, 'started', 1, $4, $4)
             ON CONFLICT (workspace_id, step) DO UPDATE SET idempotency_key = excluded.idempotency_key, state = 'started',
               attempts = journal.attempts + 1, updated_at = excluded.updated_at",
        )
        .bind(workspace)
        .bind(step.as_str())
        .bind(key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT attempts FROM journal WHERE workspace_id = $1 AND step = $2")
            .bind(workspace)
            .bind(step.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("attempts")?)
    }

    /// Journal: records the result after the call.
    pub async fn journal_done(
        &self,
        workspace: &str,
        step: StepKind,
        external_id: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE journal SET state = 'done', external_id = $1, result = $2, last_error = NULL, updated_at = $3 WHERE workspace_id = $4 AND step = $5")
            .bind(external_id)
            .bind(result.to_string())
            .bind(now_ms())
            .bind(workspace)
            .bind(step.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Journal: records a failed attempt (the step is retried on a later run).
    pub async fn journal_failed(
        &self,
        workspace: &str,
        step: StepKind,
        error: &str,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE journal SET state = 'failed', last_error = $1, updated_at = $2 WHERE workspace_id = $3 AND step = $4")
            .bind(error)
            .bind(now_ms())
            .bind(workspace)
            .bind(step.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored result of a step (`None` unless done).
    pub async fn journal_result(
        &self,
        workspace: &str,
        step: StepKind,
    ) -> Result<Option<serde_json::Value>, Error> {
        let row = sqlx::query(
            "SELECT result FROM journal WHERE workspace_id = $1 AND step = $2 AND state = 'done'",
        )
        .bind(workspace)
        .bind(step.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text: Option<String> = row.try_get("result")?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Sets one status condition of an entity.
    pub async fn set_condition(&self, c: &Condition<'_>) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO entity_status (kind, id, condition, status, reason, message, commit_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (kind, id, condition) DO UPDATE SET status = excluded.status, reason = excluded.reason, message = excluded.message,
               commit_id = excluded.commit_id, updated_at = excluded.updated_at",
        )
        .bind(c.kind)
        .bind(c.id)
        .bind(c.condition)
        .bind(if c.status { "True" } else { "False" })
        .bind(c.reason)
        .bind(c.message)
        .bind(c.commit)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ids of the entities of `kind` whose `condition` is True (e.g. the stalled workspaces).
    pub async fn entities_with(
        &self,
        kind: &str,
        condition: &str,
    ) -> Result<BTreeSet<String>, Error> {
        let rows = sqlx::query(
            "SELECT id FROM entity_status WHERE kind = $1 AND condition = $2 AND status = 'True'",
        )
        .bind(kind)
        .bind(condition)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Every workspace this control plane keeps (neither deleted nor retained), where it is
    /// provisioned, and whether it is ready: its `Ready` condition True and its `Stalled`
    /// condition not.
    pub async fn workspace_readiness(&self) -> Result<Vec<WorkspaceReadiness>, Error> {
        let rows = sqlx::query(
            "SELECT w.id, w.region, w.environment,
                    CAST(CASE WHEN r.status = 'True' AND (s.status IS NULL OR s.status <> 'True') THEN 1 ELSE 0 END AS BIGINT) AS ready
             FROM workspaces w
             LEFT JOIN entity_status r ON r.kind = 'workspace' AND r.id = w.id AND r.condition = 'Ready'
             LEFT JOIN entity_status s ON s.kind = 'workspace' AND s.id = w.id AND s.condition = 'Stalled'
             WHERE w.status NOT IN ('deleted', 'retained')
             ORDER BY w.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkspaceReadiness {
                    id: r.try_get("id")?,
                    region: r.try_get("region")?,
                    environment: r.try_get("environment")?,
                    ready: r.try_get::<i64, _>("ready")? == 1,
                })
            })
            .collect()
    }

    /// Conditions of an entity: condition → (status, reason, message).
    pub async fn conditions(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<BTreeMap<String, (bool, String, String)>, Error> {
        let rows = sqlx::query("SELECT condition, status, reason, message FROM entity_status WHERE kind = $1 AND id = $2")
            .bind(kind)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok((
                    r.try_get("condition")?,
                    (
                        status == "True",
                        r.try_get("reason")?,
                        r.try_get("message")?,
                    ),
                ))
            })
            .collect()
    }

    /// Records a reconcile run.
    #[allow(clippy::too_many_arguments)] // a row of the runs table
    pub async fn record_run(
        &self,
        id: &str,
        commit: &str,
        scope: &str,
        plan: &serde_json::Value,
        outcome: &str,
        errors: &[String],
        started_at: i64,
        duration_ms: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO reconcile_runs (id, commit_id, scope, plan, outcome, errors, started_at, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(commit)
        .bind(scope)
        .bind(plan.to_string())
        .bind(outcome)
        .bind(serde_json::to_string(errors).expect("strings serialize"))
        .bind(started_at)
        .bind(duration_ms)
        .execute(&self.pool)
        .await?;
        let oldest = now_ms()
            .saturating_sub(i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "DELETE FROM reconcile_runs WHERE scope = $1 AND (started_at < $2 OR id NOT IN
               (SELECT id FROM reconcile_runs WHERE scope = $1 ORDER BY started_at DESC, id DESC LIMIT $3))",
        )
        .bind(scope)
        .bind(oldest)
        .bind(i64::from(self.retention.keep))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The recorded runs of `scope`, newest first: (run id, commit, outcome, errors).
    pub async fn runs(
        &self,
        scope: &str,
        limit: u32,
    ) -> Result<Vec<(String, String, String, Vec<String>)>, Error> {
        sqlx::query(
            "SELECT id, commit_id, outcome, errors FROM reconcile_runs WHERE scope = $1
             ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(scope)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            let errors: String = r.try_get("errors")?;
            Ok((
                r.try_get("id")?,
                r.try_get("commit_id")?,
                r.try_get("outcome")?,
                serde_json::from_str(&errors).unwrap_or_default(),
            ))
        })
        .collect()
    }

    /// The last revision applied for `scope` (a refused revision never replaces it).
    pub async fn applied_revision(&self, scope: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT commit_id FROM applied_revisions WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("commit_id")?),
            None => None,
        })
    }

    /// Records `commit` as applied for `scope`.
    pub async fn set_applied_revision(&self, scope: &str, commit: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO applied_revisions (scope, commit_id, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (scope) DO UPDATE SET commit_id = excluded.commit_id, updated_at = excluded.updated_at",
        )
        .bind(scope)
        .bind(commit)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a bundle body by digest, gzip-compressed (idempotent), and points the cluster at
    /// it, bumping its generation when the digest changed. Returns the cluster's generation.
    /// On PostgreSQL every replica hears of it (`NOTIFY` on [`BUNDLES_CHANNEL`]).
    pub async fn publish_bundle(
        &self,
        cluster: &crate::render::Cluster,
        digest: &str,
        body: &str,
    ) -> Result<i64, Error> {
        self.publish_bundle_gz(cluster, digest, &gzip(body.as_bytes()))
            .await
    }

    /// [`Db::publish_bundle`] with the body already gzip-compressed.
    pub async fn publish_bundle_gz(
        &self,
        cluster: &crate::render::Cluster,
        digest: &str,
        gz: &[u8],
    ) -> Result<i64, Error> {
        let now = now_ms();
        sqlx::query("INSERT INTO bundles (digest, body, body_gz, created_at) VALUES ($1, '', $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest)
            .bind(gz)
            .bind(now)
            .execute(&self.pool)
            .await?;
        let kind = match cluster.kind {
            crate::render::ClusterKind::Platform => "platform",
            crate::render::ClusterKind::Tenant => "tenant",
        };
        sqlx::query(
            "INSERT INTO clusters (id, kind, region, environment, digest, generation, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6)
             ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at,
               generation = CASE WHEN clusters.digest = excluded.digest THEN clusters.generation ELSE clusters.generation + 1 END",
        )
        .bind(&cluster.id)
        .bind(kind)
        .bind(&cluster.region)
        .bind(&cluster.environment)
        .bind(digest)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT generation FROM clusters WHERE id = $1")
            .bind(&cluster.id)
            .fetch_one(&self.pool)
            .await?;
        let generation = row.try_get("generation")?;
        self.notify(BUNDLES_CHANNEL, &cluster.id).await?;
        Ok(generation)
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

    /// Creates a token for `cluster`; returns it (only its SHA-256 is stored).
    pub async fn create_cluster_token(&self, cluster: &str) -> Result<String, Error> {
        let token = format!("cpt_{}", hex::encode(rand::random::<[u8; 32]>()));
        sqlx::query(
            "INSERT INTO cluster_tokens (token_hash, cluster_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash(&token))
        .bind(cluster)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Revokes every token of `cluster`; returns how many.
    pub async fn revoke_cluster_tokens(&self, cluster: &str) -> Result<u64, Error> {
        let done = sqlx::query("UPDATE cluster_tokens SET revoked_at = $1 WHERE cluster_id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(cluster)
            .execute(&self.pool)
            .await?;
        self.notify(TOKENS_CHANNEL, cluster).await?;
        Ok(done.rows_affected())
    }

    /// When a cluster token was last revoked (Unix millis), if ever.
    pub async fn last_revocation(&self) -> Result<Option<i64>, Error> {
        let row = sqlx::query("SELECT MAX(revoked_at) AS last FROM cluster_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("last")?)
    }

    /// The clusters of these token hashes (unrevoked ones only), by hash.
    pub async fn token_clusters(
        &self,
        hashes: &[String],
    ) -> Result<HashMap<String, String>, Error> {
        let mut out = HashMap::new();
        if hashes.is_empty() {
            return Ok(out);
        }
        let list = (1..=hashes.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT token_hash, cluster_id FROM cluster_tokens WHERE revoked_at IS NULL AND token_hash IN ({list})");
        let mut q = sqlx::query(&sql);
        for h in hashes {
            q = q.bind(h);
        }
        for r in q.fetch_all(&self.pool).await? {
            out.insert(r.try_get("token_hash")?, r.try_get("cluster_id")?);
        }
        Ok(out)
    }

    /// The gzip-compressed bodies of these bundles, by digest (unknown digests are absent).
    pub async fn bundle_bodies(
        &self,
        digests: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, Error> {
        let mut out = HashMap::new();
        if digests.is_empty() {
            return Ok(out);
        }
        let list = (1..=digests.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT digest, body, body_gz FROM bundles WHERE digest IN ({list})");
        let mut q = sqlx::query(&sql);
        for d in digests {
            q = q.bind(d);
        }
        for r in q.fetch_all(&self.pool).await? {
            let gz: Option<Vec<u8>> = r.try_get("body_gz")?;
            let body = match gz {
                Some(gz) => gz,
                // Written before bundles were compressed (migration 0005).
                None => gzip(r.try_get::<String, _>("body")?.as_bytes()),
            };
            out.insert(r.try_get("digest")?, body);
        }
        Ok(out)
    }

    /// Every cluster's current (digest, generation), or just those of `only`.
    pub async fn cluster_heads(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, Error> {
        let rows = match only {
            Some(id) => {
                sqlx::query("SELECT id, digest, generation FROM clusters WHERE id = $1")
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT id, digest, generation FROM clusters")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("digest")?,
                    r.try_get("generation")?,
                ))
            })
            .collect()
    }

    /// Stores an agent's report for `cluster`.
    pub async fn report_cluster_status(
        &self,
        cluster: &str,
        r: &ClusterReport,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO cluster_status (cluster_id, digest, generation, healthy, message, objects, reported_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (cluster_id) DO UPDATE SET digest = excluded.digest, generation = excluded.generation, healthy = excluded.healthy,
               message = excluded.message, objects = excluded.objects, reported_at = excluded.reported_at",
        )
        .bind(cluster)
        .bind(&r.digest)
        .bind(r.generation)
        .bind(if r.healthy { "True" } else { "False" })
        .bind(&r.message)
        .bind(r.objects.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last report of `cluster`, with when it came (unix millis).
    pub async fn cluster_status(
        &self,
        cluster: &str,
    ) -> Result<Option<(ClusterReport, i64)>, Error> {
        let row = sqlx::query("SELECT digest, generation, healthy, message, objects, reported_at FROM cluster_status WHERE cluster_id = $1")
            .bind(cluster)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let healthy: String = r.try_get("healthy")?;
        let objects: String = r.try_get("objects")?;
        Ok(Some((
            ClusterReport {
                digest: r.try_get("digest")?,
                generation: r.try_get("generation")?,
                healthy: healthy == "True",
                message: r.try_get("message")?,
                objects: serde_json::from_str(&objects)
                    .map_err(|e| Error::Corrupt(e.to_string()))?,
            },
            r.try_get("reported_at")?,
        )))
    }

    /// Records a BFF's registration.
    pub async fn register_bff(&self, workspace_name: &str, url: &str) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO bff_registrations (workspace_id, url, registered_at) VALUES ($1, $2, $3)
             ON CONFLICT (workspace_id) DO UPDATE SET url = excluded.url, registered_at = excluded.registered_at",
        )
        .bind(workspace_name)
        .bind(url)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A BFF's registered URL.
    pub async fn bff_registration(&self, workspace_name: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT url FROM bff_registrations WHERE workspace_id = $1")
            .bind(workspace_name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("url")?),
            None => None,
        })
    }

    /// Every cluster with its current bundle: (id, kind, region, environment, digest, generation).
    pub async fn clusters(
        &self,
    ) -> Result<Vec<(String, String, String, String, String, i64)>, Error> {
        let rows = sqlx::query("SELECT id, kind, region, environment, digest, generation FROM clusters ORDER BY kind, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("kind")?,
                    r.try_get("region")?,
                    r.try_get("environment")?,
                    r.try_get("digest")?,
                    r.try_get("generation")?,
                ))
            })
            .collect()
    }

    /// Current digest of every cluster.
    pub async fn cluster_digests(&self) -> Result<BTreeMap<String, String>, Error> {
        let rows = sqlx::query("SELECT id, digest FROM clusters")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("digest")?)))
            .collect()
    }
}

/// Leaves out what belongs to workspaces provisioned outside `scope`'s environments (their
/// `workspaces` row names another environment): another control plane owns them, so they must
/// not look like removed workspaces to this one's planner.
fn restrict(observed: &mut Observed, scope: &crate::plan::Scope) {
    let foreign: Vec<String> = observed
        .workspaces
        .iter()
        .filter(|(_, w)| !scope.includes_row(&w.applied.region, &w.applied.environment))
        .map(|(id, _)| id.clone())
        .collect();
    for id in foreign {
        observed.workspaces.remove(&id);
        observed.tenants.remove(&id);
        observed.lookup.remove(&id);
        observed.journal.retain(|(ws, _), _| *ws != id);
    }
}

fn tenant_row(row: &AnyRow) -> Result<TenantRow, Error> {
    Ok(TenantRow {
        workspace_id: row.try_get("workspace_id")?,
        region: row.try_get("region")?,
        delegated_zone: row.try_get("delegated_zone")?,
        status: row.try_get("status")?,
        bff_url: row.try_get("bff_url")?,
    })
}

fn journal_row(row: &AnyRow) -> Result<((String, StepKind), JournalEntry), Error> {
    let id: String = row.try_get("workspace_id")?;
    let step: String = row.try_get("step")?;
    let kind =
        StepKind::parse(&step).ok_or_else(|| Error::Corrupt(format!("journal step `{step}`")))?;
    let state: String = row.try_get("state")?;
    let state = match state.as_str() {
        "started" => JournalState::Started,
        "done" => JournalState::Done,
        "failed" => JournalState::Failed,
        other => return Err(Error::Corrupt(format!("journal state `{other}`"))),
    };
    Ok((
        (id, kind),
        JournalEntry {
            state,
            result: row.try_get("result")?,
        },
    ))
}

fn workspace_row(row: &AnyRow) -> Result<ObservedWorkspace, Error> {
    let status: String = row.try_get("status")?;
    let policy: String = row.try_get("deletion_policy")?;
    Ok(ObservedWorkspace {
        applied: DesiredWorkspace {
            id: row.try_get("id")?,
            region: row.try_get("region")?,
            environment: row.try_get("environment")?,
            account: row.try_get("account")?,
            aws_account_id: row.try_get("aws_account_id")?,
            role_arn: row.try_get("role_arn")?,
            external_id: row.try_get("external_id")?,
            zone_name: row.try_get("zone_name")?,
            parent_zone: row.try_get("parent_zone")?,
            bff_url: row.try_get("bff_url")?,
            deletion_policy: Policy::parse(&policy),
        },
        generation: row.try_get("generation")?,
        status: Status::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("workspace status `{status}`")))?,
    })
}
