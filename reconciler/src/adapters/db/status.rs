//! Status: conditions per entity, reconcile runs (kept bounded) and the applied revision.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;

use super::*;

pub use crate::status::WorkspaceReadiness;

/// One status condition (Kubernetes style) of an entity, as stored.
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

pub(super) const UPSERT_CONDITION: &str = "INSERT INTO entity_status (kind, id, condition, status, reason, message, commit_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (kind, id, condition) DO UPDATE SET status = excluded.status, reason = excluded.reason, message = excluded.message,
       commit_id = excluded.commit_id, updated_at = excluded.updated_at";

impl Db {
    /// Sets one status condition of an entity.
    pub async fn set_condition(&self, c: &Condition<'_>) -> Result<(), Error> {
        sqlx::query(UPSERT_CONDITION)
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

    /// Writes the conditions a run decided ([`crate::status`]), in one transaction, for the
    /// run of `scope` at `commit` (a platform condition's entity is `scope`).
    pub async fn set_conditions(
        &self,
        scope: &str,
        commit: &str,
        conditions: &[crate::status::Condition],
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for c in conditions {
            let id = match c.entity {
                crate::status::Entity::Platform => scope,
                _ => &c.id,
            };
            sqlx::query(UPSERT_CONDITION)
                .bind(c.entity.label())
                .bind(id)
                .bind(c.kind.label())
                .bind(if c.status { "True" } else { "False" })
                .bind(&c.reason)
                .bind(&c.message)
                .bind(commit)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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

    /// The account of every workspace this control plane records (by id), for deciding who
    /// may read a cluster or a plan step ([`crate::auth::authz`]).
    pub async fn workspace_accounts(&self) -> Result<BTreeMap<String, String>, Error> {
        let rows = sqlx::query("SELECT id, account FROM workspaces")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("account")?)))
            .collect()
    }

    /// Conditions of every entity of `kind`: id → condition → (status, reason, message).
    pub async fn conditions_of_kind(
        &self,
        kind: &str,
    ) -> Result<BTreeMap<String, BTreeMap<String, (bool, String, String)>>, Error> {
        let rows = sqlx::query(
            "SELECT id, condition, status, reason, message FROM entity_status WHERE kind = $1",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<String, BTreeMap<String, (bool, String, String)>> = BTreeMap::new();
        for r in &rows {
            let status: String = r.try_get("status")?;
            out.entry(r.try_get("id")?).or_default().insert(
                r.try_get("condition")?,
                (
                    status == "True",
                    r.try_get("reason")?,
                    r.try_get("message")?,
                ),
            );
        }
        Ok(out)
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

    /// Records a reconcile run. A run refusing a commit writes `io.cplane.commit.refused`
    /// (with every error) in the same transaction, once per commit and scope (while that
    /// refusal's run is retained: see [`Retention`]).
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
        let mut tx = self.pool.begin().await?;
        let refused_before = outcome == "refused"
            && sqlx::query(
                "SELECT id FROM reconcile_runs WHERE scope = $1 AND commit_id = $2 AND outcome = 'refused' LIMIT 1",
            )
            .bind(scope)
            .bind(commit)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
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
        .execute(&mut *tx)
        .await?;
        if outcome == "refused" && !refused_before {
            let event = crate::events::NewEvent::new(
                crate::events::EventType::CommitRefused,
                format!("commit/{commit}"),
                serde_json::json!({ "commit": commit, "scope": scope, "run": id, "errors": errors }),
            );
            super::events::append(&mut tx, &self.event_stream, &event).await?;
        }
        tx.commit().await?;
        self.events_committed();
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

    /// When the last drift check of tenant zones in `scope` read up to (unix millis).
    pub async fn drift_checked_until(&self, scope: &str) -> Result<Option<i64>, Error> {
        let row = sqlx::query("SELECT checked_until FROM drift_checks WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("checked_until")).transpose()?)
    }

    /// Records that the drift check of `scope` read up to `until` (unix millis).
    pub async fn set_drift_checked_until(&self, scope: &str, until: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO drift_checks (scope, checked_until) VALUES ($1, $2)
             ON CONFLICT (scope) DO UPDATE SET checked_until = excluded.checked_until",
        )
        .bind(scope)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// Records `commit` as applied for `scope`; when it replaces another (or is the first),
    /// writes `io.cplane.commit.applied` in the same transaction.
    pub async fn set_applied_revision(&self, scope: &str, commit: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let previous: Option<String> =
            sqlx::query("SELECT commit_id FROM applied_revisions WHERE scope = $1")
                .bind(scope)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("commit_id"))
                .transpose()?;
        sqlx::query(
            "INSERT INTO applied_revisions (scope, commit_id, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (scope) DO UPDATE SET commit_id = excluded.commit_id, updated_at = excluded.updated_at",
        )
        .bind(scope)
        .bind(commit)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if previous.as_deref() != Some(commit) {
            let event = crate::events::NewEvent::new(
                crate::events::EventType::CommitApplied,
                format!("commit/{commit}"),
                serde_json::json!({ "commit": commit, "scope": scope, "previous": previous }),
            );
            super::events::append(&mut tx, &self.event_stream, &event).await?;
        }
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }
}
