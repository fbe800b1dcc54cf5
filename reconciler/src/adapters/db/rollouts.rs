//! Rollouts (migration 0011): rollouts, their clusters with wave and target digest, who did
//! what to them, and each stack's fingerprint as last applied. State changes are conditional
//! updates (`WHERE state = … AND wave = …`), so two replicas acting on one rollout at once
//! cannot both move it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::Row;

use super::*;
use crate::events::{EventType, NewEvent};

/// A rollout row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutRow {
    /// Id, `r-{millis}-{commit[..12]}`.
    pub id: String,
    /// The revision.
    pub commit: String,
    /// The stacks the revision changed.
    pub stacks: Vec<String>,
    /// The policy followed.
    pub policy: cplane_schema::model::RolloutPolicy,
    /// `progressing`, `baking`, `paused`, `completed`, `aborted`, `superseded`.
    pub state: String,
    /// Index of the current wave.
    pub wave: i64,
    /// When the current wave started, unix millis.
    pub wave_started_at: i64,
    /// When the current wave's gate passed (while baking).
    pub gate_passed_at: Option<i64>,
    /// Why it is paused, aborted or superseded.
    pub reason: String,
    /// When it was created.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// One cluster of a rollout.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutCluster {
    /// Cluster id.
    pub cluster: String,
    /// `platform` or `tenant`.
    pub kind: String,
    /// Region.
    pub region: String,
    /// Environment.
    pub environment: String,
    /// Wave index.
    pub wave: i64,
    /// The digest this rollout brings it.
    pub digest: String,
    /// `pending`, `held`, `published`, `done`, `failed`, `skipped`.
    pub state: String,
    /// Sync windows that apply to it.
    #[serde(skip)]
    pub windows: Vec<cplane_schema::model::SyncWindow>,
    /// Its workspace is suspended.
    pub suspended: bool,
    /// When it was published.
    pub published_at: Option<i64>,
    /// Why it failed or is held.
    pub message: String,
}

/// A published cluster of a wave whose gate may decide now: its agent reported the target
/// digest, or the health timeout passed since it was published ([`Db::wave_gate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GateCandidate {
    /// Cluster id.
    pub cluster: String,
    /// The digest the rollout brings it.
    pub digest: String,
    /// When it was published.
    pub published_at: Option<i64>,
    /// Its agent's last report in brief: (digest, healthy, reported_at), without the
    /// per-object results (read those with [`Db::cluster_reports`] only when they matter).
    pub report: Option<(String, bool, i64)>,
}

/// What the gate of a rollout's wave is judged from, read in one snapshot
/// ([`Db::wave_gate`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaveGate {
    /// How many of the wave's clusters are `published` (not yet judged done or failed).
    pub published: usize,
    /// Those of them whose gate may decide now.
    pub candidates: Vec<GateCandidate>,
    /// The wave's clusters not reached yet (`pending`, `held`), whole.
    pub waiting: Vec<RolloutCluster>,
    /// The wave's clusters judged failed: (cluster, message).
    pub failed: Vec<(String, String)>,
}

/// Something done to a rollout.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RolloutEvent {
    /// When, unix millis.
    pub at: i64,
    /// `cplane` or who (a user's email, `cli:<user>`).
    pub actor: String,
    /// What: `created`, `wave`, `gate-failed`, `pause`, `resume`, `promote`, `abort`, ...
    pub action: String,
    /// More words.
    pub detail: String,
}

fn rollout_row(r: &sqlx::any::AnyRow) -> Result<RolloutRow, Error> {
    let stacks: String = r.try_get("stacks")?;
    let policy: String = r.try_get("policy")?;
    Ok(RolloutRow {
        id: r.try_get("id")?,
        commit: r.try_get("commit_id")?,
        stacks: serde_json::from_str(&stacks).map_err(|e| Error::Corrupt(e.to_string()))?,
        policy: serde_json::from_str(&policy).map_err(|e| Error::Corrupt(e.to_string()))?,
        state: r.try_get("state")?,
        wave: r.try_get("wave")?,
        wave_started_at: r.try_get("wave_started_at")?,
        gate_passed_at: r.try_get("gate_passed_at")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn cluster_row(r: &sqlx::any::AnyRow) -> Result<RolloutCluster, Error> {
    let windows: String = r.try_get("windows")?;
    Ok(RolloutCluster {
        cluster: r.try_get("cluster_id")?,
        kind: r.try_get("kind")?,
        region: r.try_get("region")?,
        environment: r.try_get("environment")?,
        wave: r.try_get("wave")?,
        digest: r.try_get("digest")?,
        state: r.try_get("state")?,
        windows: serde_json::from_str(&windows).map_err(|e| Error::Corrupt(e.to_string()))?,
        suspended: r.try_get::<i64, _>("suspended")? != 0,
        published_at: r.try_get("published_at")?,
        message: r.try_get("message")?,
    })
}

const ROLLOUT_COLUMNS: &str = "id, commit_id, stacks, policy, state, wave, wave_started_at, gate_passed_at, reason, created_at, updated_at";
const CLUSTER_COLUMNS: &str = "cluster_id, kind, region, environment, wave, digest, state, windows, suspended, published_at, message";

/// States of rollouts that may still publish.
const ACTIVE: &str = "('progressing', 'baking', 'paused')";

impl Db {
    /// Each stack's fingerprint as last applied (empty before the first run).
    pub async fn stack_fingerprints(&self) -> Result<BTreeMap<String, String>, Error> {
        let rows = sqlx::query("SELECT stack, fingerprint FROM stack_fingerprints")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("stack")?, r.try_get("fingerprint")?)))
            .collect()
    }

    /// Replaces the stacks' fingerprints.
    pub async fn set_stack_fingerprints(
        &self,
        fingerprints: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM stack_fingerprints")
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        for (stack, fp) in fingerprints {
            sqlx::query("INSERT INTO stack_fingerprints (stack, fingerprint, updated_at) VALUES ($1, $2, $3)")
                .bind(stack)
                .bind(fp)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The digest each cluster is bound to by a rollout that still decides it (active or
    /// aborted, not superseded), from the newest such rollout; clusters held only because
    /// their workspace is suspended are left out (they are decided afresh each run).
    pub async fn rollout_targets(&self) -> Result<HashMap<String, String>, Error> {
        let rows = sqlx::query(
            "SELECT c.cluster_id, c.digest FROM rollout_clusters c JOIN rollouts r ON r.id = c.rollout_id
             WHERE r.state IN ('progressing', 'baking', 'paused', 'aborted') AND c.suspended = 0
             ORDER BY r.created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            out.insert(r.try_get("cluster_id")?, r.try_get("digest")?);
        }
        Ok(out)
    }

    /// Creates a rollout with its clusters (each `pending`), superseding every active rollout
    /// (their clusters not yet reached are `skipped`: they keep their bundle until the new
    /// rollout reaches them), in one transaction.
    pub async fn create_rollout(
        &self,
        rollout: &RolloutRow,
        clusters: &[RolloutCluster],
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let superseded = sqlx::query(&format!("SELECT id FROM rollouts WHERE state IN {ACTIVE}"))
            .fetch_all(&mut *tx)
            .await?;
        for r in &superseded {
            let id: String = r.try_get("id")?;
            sqlx::query("UPDATE rollouts SET state = 'superseded', reason = $1, updated_at = $2 WHERE id = $3")
                .bind(format!("superseded by {}", rollout.id))
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE rollout_clusters SET state = 'skipped', message = $1 WHERE rollout_id = $2 AND state IN ('pending', 'held')")
                .bind(format!("superseded by {}", rollout.id))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            insert_event(&mut tx, &id, "cplane", "superseded", &rollout.id).await?;
            let event = NewEvent::new(
                EventType::RolloutSuperseded,
                format!("rollout/{id}"),
                serde_json::json!({ "rollout": id, "by": rollout.id }),
            );
            super::events::append(&mut tx, &self.event_stream, &event).await?;
        }
        sqlx::query(&format!("INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
            .bind(&rollout.id)
            .bind(&rollout.commit)
            .bind(serde_json::to_string(&rollout.stacks).expect("names serialize"))
            .bind(serde_json::to_string(&rollout.policy).expect("policies serialize"))
            .bind(&rollout.state)
            .bind(rollout.wave)
            .bind(rollout.wave_started_at)
            .bind(rollout.gate_passed_at)
            .bind(&rollout.reason)
            .bind(rollout.created_at)
            .bind(rollout.updated_at)
            .execute(&mut *tx)
            .await?;
        for c in clusters {
            sqlx::query(&format!("INSERT INTO rollout_clusters (rollout_id, {CLUSTER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
                .bind(&rollout.id)
                .bind(&c.cluster)
                .bind(&c.kind)
                .bind(&c.region)
                .bind(&c.environment)
                .bind(c.wave)
                .bind(&c.digest)
                .bind(&c.state)
                .bind(serde_json::to_string(&c.windows).expect("windows serialize"))
                .bind(i64::from(c.suspended))
                .bind(c.published_at)
                .bind(&c.message)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(
            &mut tx,
            &rollout.id,
            "cplane",
            "created",
            &format!(
                "{} clusters in {} waves for {}",
                clusters.len(),
                rollout.policy.waves.len(),
                rollout.stacks.join(", ")
            ),
        )
        .await?;
        let event = NewEvent::new(
            EventType::RolloutStarted,
            format!("rollout/{}", rollout.id),
            serde_json::json!({
                "rollout": rollout.id,
                "commit": rollout.commit,
                "stacks": rollout.stacks,
                "clusters": clusters.len(),
                "waves": rollout.policy.waves.iter().map(|w| &w.name).collect::<Vec<_>>(),
            }),
        );
        super::events::append(&mut tx, &self.event_stream, &event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    /// Records which clusters belong to suspended workspaces now: marks them in active
    /// rollouts, and gives their workspaces the condition `Suspended` (True; the others' turns
    /// False), which status reads ([`Db::suspended_clusters`]).
    pub async fn set_rollout_suspended(
        &self,
        suspended: &[String],
        commit: &str,
    ) -> Result<(), Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE entity_status SET status = 'False', reason = 'NotSuspended', message = '', commit_id = $1, updated_at = $2 WHERE kind = 'workspace' AND condition = 'Suspended' AND status = 'True'")
            .bind(commit)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for c in suspended {
            let Some(workspace) = c.strip_prefix("w-") else {
                continue;
            };
            sqlx::query(super::status::UPSERT_CONDITION)
                .bind("workspace")
                .bind(workspace)
                .bind("Suspended")
                .bind("True")
                .bind("Suspended")
                .bind(
                    "spec.suspend: true: no cloud steps and no new bundle until it is unsuspended",
                )
                .bind(commit)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!("UPDATE rollout_clusters SET suspended = 0 WHERE suspended = 1 AND rollout_id IN (SELECT id FROM rollouts WHERE state IN {ACTIVE})"))
            .execute(&mut *tx)
            .await?;
        for c in suspended {
            sqlx::query(&format!("UPDATE rollout_clusters SET suspended = 1 WHERE cluster_id = $1 AND rollout_id IN (SELECT id FROM rollouts WHERE state IN {ACTIVE})"))
                .bind(c)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The sync windows each cluster of an active rollout is held by: (rollout id, cluster,
    /// windows).
    pub async fn rollout_windows(
        &self,
    ) -> Result<Vec<(String, String, Vec<cplane_schema::model::SyncWindow>)>, Error> {
        let rows = sqlx::query(&format!("SELECT c.rollout_id, c.cluster_id, c.windows FROM rollout_clusters c JOIN rollouts r ON r.id = c.rollout_id WHERE r.state IN {ACTIVE}"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let windows: String = r.try_get("windows")?;
                Ok((
                    r.try_get("rollout_id")?,
                    r.try_get("cluster_id")?,
                    serde_json::from_str(&windows).map_err(|e| Error::Corrupt(e.to_string()))?,
                ))
            })
            .collect()
    }

    /// Sets the sync windows of some clusters of rollouts: (rollout id, cluster, windows), in
    /// one transaction.
    pub async fn set_rollout_windows(
        &self,
        changes: &[(String, String, Vec<cplane_schema::model::SyncWindow>)],
    ) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (rollout, cluster, windows) in changes {
            sqlx::query(
                "UPDATE rollout_clusters SET windows = $1 WHERE rollout_id = $2 AND cluster_id = $3",
            )
            .bind(serde_json::to_string(windows).expect("windows serialize"))
            .bind(rollout)
            .bind(cluster)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rollouts, newest first: the active ones only, or the newest `limit` of all.
    pub async fn rollouts(&self, active_only: bool, limit: i64) -> Result<Vec<RolloutRow>, Error> {
        let sql = if active_only {
            format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state IN {ACTIVE} ORDER BY created_at DESC")
        } else {
            format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC LIMIT {limit}")
        };
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(rollout_row).collect()
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, Error> {
        let row = sqlx::query(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rollout_row).transpose()
    }

    /// A rollout's clusters (of one wave, or all), by wave and id.
    pub async fn rollout_clusters(
        &self,
        id: &str,
        wave: Option<i64>,
    ) -> Result<Vec<RolloutCluster>, Error> {
        let rows = match wave {
            Some(w) => sqlx::query(&format!("SELECT {CLUSTER_COLUMNS} FROM rollout_clusters WHERE rollout_id = $1 AND wave = $2 ORDER BY cluster_id"))
                .bind(id)
                .bind(w)
                .fetch_all(&self.pool)
                .await?,
            None => sqlx::query(&format!("SELECT {CLUSTER_COLUMNS} FROM rollout_clusters WHERE rollout_id = $1 ORDER BY wave, cluster_id"))
                .bind(id)
                .fetch_all(&self.pool)
                .await?,
        };
        rows.iter().map(cluster_row).collect()
    }

    /// What the gate of wave `wave` of rollout `id` is judged from at a moment whose health
    /// timeout ended at `timed_out_at` (clusters published then or before count as timed
    /// out). Reads only what can change a verdict: the count of the wave's published clusters,
    /// and of those only the ones whose agent reported the target digest or which timed out,
    /// each with its report's digest and health (no per-object results); the clusters not
    /// reached yet and the failed ones only when there are any. One snapshot (one transaction,
    /// repeatable read on PostgreSQL), so the count and the candidates agree.
    pub async fn wave_gate(
        &self,
        id: &str,
        wave: i64,
        timed_out_at: i64,
    ) -> Result<WaveGate, Error> {
        let mut tx = self.pool.begin().await?;
        if self.is_postgres() {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let counts = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM rollout_clusters WHERE rollout_id = $1 AND wave = $2 GROUP BY state",
        )
        .bind(id)
        .bind(wave)
        .fetch_all(&mut *tx)
        .await?;
        let mut gate = WaveGate::default();
        let (mut waiting, mut failed) = (0i64, 0i64);
        for r in &counts {
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            match state.as_str() {
                "published" => gate.published = usize::try_from(n).unwrap_or(0),
                "pending" | "held" => waiting += n,
                "failed" => failed += n,
                _ => {}
            }
        }
        if gate.published > 0 {
            let rows = sqlx::query(
                "SELECT c.cluster_id, c.digest, c.published_at, s.digest AS reported, s.healthy, s.reported_at
                 FROM rollout_clusters c LEFT JOIN cluster_status s ON s.cluster_id = c.cluster_id
                 WHERE c.rollout_id = $1 AND c.wave = $2 AND c.state = 'published'
                   AND (s.digest = c.digest OR c.published_at <= $3)
                 ORDER BY c.cluster_id",
            )
            .bind(id)
            .bind(wave)
            .bind(timed_out_at)
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                let reported: Option<String> = r.try_get("reported")?;
                let healthy: Option<String> = r.try_get("healthy")?;
                let at: Option<i64> = r.try_get("reported_at")?;
                gate.candidates.push(GateCandidate {
                    cluster: r.try_get("cluster_id")?,
                    digest: r.try_get("digest")?,
                    published_at: r.try_get("published_at")?,
                    report: reported.map(|d| {
                        (
                            d,
                            healthy.as_deref() == Some("True"),
                            at.unwrap_or_default(),
                        )
                    }),
                });
            }
        }
        if waiting > 0 {
            let rows = sqlx::query(&format!("SELECT {CLUSTER_COLUMNS} FROM rollout_clusters WHERE rollout_id = $1 AND wave = $2 AND state IN ('pending', 'held') ORDER BY cluster_id"))
                .bind(id)
                .bind(wave)
                .fetch_all(&mut *tx)
                .await?;
            gate.waiting = rows.iter().map(cluster_row).collect::<Result<_, _>>()?;
        }
        if failed > 0 {
            let rows = sqlx::query("SELECT cluster_id, message FROM rollout_clusters WHERE rollout_id = $1 AND wave = $2 AND state = 'failed' ORDER BY cluster_id")
                .bind(id)
                .bind(wave)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                gate.failed
                    .push((r.try_get("cluster_id")?, r.try_get("message")?));
            }
        }
        tx.commit().await?;
        Ok(gate)
    }

    /// Sets the state of some clusters of a rollout (with `published_at` when given, and a
    /// message; each cluster at most once), in one transaction.
    pub async fn set_rollout_clusters(
        &self,
        id: &str,
        changes: &[(String, &'static str, Option<i64>, String)],
    ) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        // A wave's publish (or gate) changes thousands of clusters the same way: one statement
        // per 500 of them, not one each (on SQLite every statement holds the one connection
        // that agents' reports and long-polls also wait for).
        let mut same: BTreeMap<(&str, Option<i64>, &str), Vec<&str>> = BTreeMap::new();
        for (cluster, state, published_at, message) in changes {
            same.entry((*state, *published_at, message.as_str()))
                .or_default()
                .push(cluster.as_str());
        }
        let mut tx = self.pool.begin().await?;
        for ((state, published_at, message), clusters) in &same {
            for chunk in clusters.chunks(500) {
                let list = (5..5 + chunk.len())
                    .map(|i| format!("${i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("UPDATE rollout_clusters SET state = $1, published_at = COALESCE($2, published_at), message = $3 WHERE rollout_id = $4 AND cluster_id IN ({list})");
                let mut q = sqlx::query(&sql)
                    .bind(*state)
                    .bind(*published_at)
                    .bind(*message)
                    .bind(id);
                for c in chunk {
                    q = q.bind(*c);
                }
                q.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a rollout from (`state`, `wave`) to (`to`, `to_wave`), recording `event` by
    /// `actor`. `false` when it was not in (`state`, `wave`) any more (another replica or
    /// operator moved it first): nothing is written then.
    #[allow(clippy::too_many_arguments)] // one conditional update's columns, each used once
    pub async fn move_rollout(
        &self,
        id: &str,
        (state, wave): (&str, i64),
        (to, to_wave): (&str, i64),
        gate_passed_at: Option<i64>,
        reason: &str,
        actor: &str,
        event: (&str, &str),
    ) -> Result<bool, Error> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE rollouts SET state = $1, wave = $2, gate_passed_at = $3, reason = $4, updated_at = $5,
               wave_started_at = CASE WHEN wave = $2 THEN wave_started_at ELSE $5 END
             WHERE id = $6 AND state = $7 AND wave = $8",
        )
        .bind(to)
        .bind(to_wave)
        .bind(gate_passed_at)
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(state)
        .bind(wave)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if moved {
            insert_event(&mut tx, id, actor, event.0, event.1).await?;
            if let Some(kind) = lifecycle(state, to, event.0) {
                let data = serde_json::json!({
                    "rollout": id,
                    "state": to,
                    "wave": wave,
                    "to_wave": to_wave,
                    "actor": actor,
                    "action": event.0,
                    "reason": reason,
                    "detail": event.1,
                });
                let new = NewEvent::new(kind, format!("rollout/{id}"), data);
                super::events::append(&mut tx, &self.event_stream, &new).await?;
            }
        }
        tx.commit().await?;
        self.events_committed();
        Ok(moved)
    }

    /// What was done to a rollout, oldest first.
    pub async fn rollout_events(&self, id: &str) -> Result<Vec<RolloutEvent>, Error> {
        let rows = sqlx::query("SELECT at, actor, action, detail FROM rollout_events WHERE rollout_id = $1 ORDER BY at")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RolloutEvent {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// The last reports of these clusters (unknown ones are absent).
    pub async fn cluster_reports(
        &self,
        clusters: &[String],
    ) -> Result<HashMap<String, (ClusterReport, i64)>, Error> {
        let mut out = HashMap::new();
        for chunk in clusters.chunks(500) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT cluster_id, digest, generation, healthy, message, objects, reported_at FROM cluster_status WHERE cluster_id IN ({list})");
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q.bind(c);
            }
            for r in q.fetch_all(&self.pool).await? {
                let healthy: String = r.try_get("healthy")?;
                let objects: String = r.try_get("objects")?;
                out.insert(
                    r.try_get("cluster_id")?,
                    (
                        ClusterReport {
                            digest: r.try_get("digest")?,
                            generation: r.try_get("generation")?,
                            healthy: healthy == "True",
                            message: r.try_get("message")?,
                            objects: serde_json::from_str(&objects)
                                .map_err(|e| Error::Corrupt(e.to_string()))?,
                            agent_version: String::new(),
                        },
                        r.try_get("reported_at")?,
                    ),
                );
            }
        }
        Ok(out)
    }

    /// The clusters of suspended workspaces (as the last run recorded them).
    pub async fn suspended_clusters(&self) -> Result<BTreeSet<String>, Error> {
        Ok(self
            .entities_with("workspace", "Suspended")
            .await?
            .into_iter()
            .map(|w| format!("w-{w}"))
            .collect())
    }

    /// The clusters an active rollout has not reached yet (`pending` or `held`), or just
    /// `only`: cluster → (rollout id, rollout state, cluster state, wave index, message), from
    /// the newest such rollout.
    pub async fn rollout_waiting(
        &self,
        only: Option<&str>,
    ) -> Result<HashMap<String, (String, String, String, i64, String)>, Error> {
        let sql = format!(
            "SELECT c.cluster_id, r.id, r.state AS rstate, c.state AS cstate, c.wave, c.message
             FROM rollout_clusters c JOIN rollouts r ON r.id = c.rollout_id
             WHERE r.state IN {ACTIVE} AND c.state IN ('pending', 'held'){} ORDER BY r.created_at",
            if only.is_some() {
                " AND c.cluster_id = $1"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&sql);
        if let Some(c) = only {
            q = q.bind(c);
        }
        let mut out = HashMap::new();
        for r in q.fetch_all(&self.pool).await? {
            out.insert(
                r.try_get("cluster_id")?,
                (
                    r.try_get("id")?,
                    r.try_get("rstate")?,
                    r.try_get("cstate")?,
                    r.try_get("wave")?,
                    r.try_get("message")?,
                ),
            );
        }
        Ok(out)
    }

    /// Every cluster's last report in brief: cluster → (generation, healthy, reported_at).
    pub async fn report_heads(&self) -> Result<HashMap<String, (i64, bool, i64)>, Error> {
        let rows =
            sqlx::query("SELECT cluster_id, generation, healthy, reported_at FROM cluster_status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let healthy: String = r.try_get("healthy")?;
                Ok((
                    r.try_get("cluster_id")?,
                    (
                        r.try_get("generation")?,
                        healthy == "True",
                        r.try_get("reported_at")?,
                    ),
                ))
            })
            .collect()
    }

    /// Deletes finished rollouts (completed, aborted, superseded) with their clusters and
    /// events, keeping the newest `keep` rollouts of each stack (a rollout of several stacks
    /// stays while it is among the newest `keep` of any of them; one of no stack, a change held
    /// by a sync window alone, counts under the stack `""`). An aborted rollout stays, whatever
    /// its age, while some cluster it never reached is in no newer rollout: it still decides
    /// that cluster's bundle ([`Db::rollout_targets`]). Returns how many were deleted.
    pub async fn prune_rollouts(&self, keep: u32) -> Result<usize, Error> {
        let rows = sqlx::query(
            "SELECT id, stacks, state, created_at FROM rollouts ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut doomed = Vec::new();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let state: String = r.try_get("state")?;
            let created_at: i64 = r.try_get("created_at")?;
            let stacks: String = r.try_get("stacks")?;
            let mut stacks: Vec<String> =
                serde_json::from_str(&stacks).map_err(|e| Error::Corrupt(e.to_string()))?;
            if stacks.is_empty() {
                stacks.push(String::new());
            }
            let mut kept = false;
            for stack in stacks {
                let n = seen.entry(stack).or_default();
                kept |= *n < keep;
                *n += 1;
            }
            if kept || !matches!(state.as_str(), "completed" | "aborted" | "superseded") {
                continue;
            }
            if state == "aborted" {
                let pins = sqlx::query(
                    "SELECT 1 AS pin FROM rollout_clusters c WHERE c.rollout_id = $1 AND c.suspended = 0 AND c.published_at IS NULL
                     AND NOT EXISTS (SELECT 1 FROM rollout_clusters n JOIN rollouts r ON r.id = n.rollout_id
                                     WHERE n.cluster_id = c.cluster_id AND r.created_at > $2)
                     LIMIT 1",
                )
                .bind(&id)
                .bind(created_at)
                .fetch_optional(&self.pool)
                .await?;
                if pins.is_some() {
                    continue;
                }
            }
            doomed.push(id);
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for id in &doomed {
            for table in ["rollout_events", "rollout_clusters"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE rollout_id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM rollouts WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(doomed.len())
    }

    /// Counts of clusters by rollout state and cluster state, over active rollouts.
    pub async fn rollout_counts(&self) -> Result<Vec<(String, String, i64)>, Error> {
        let rows = sqlx::query(&format!("SELECT r.state AS rstate, c.state AS cstate, COUNT(*) AS n FROM rollout_clusters c JOIN rollouts r ON r.id = c.rollout_id WHERE r.state IN {ACTIVE} GROUP BY r.state, c.state"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("rstate")?, r.try_get("cstate")?, r.try_get("n")?)))
            .collect()
    }
}

/// The lifecycle event of a rollout moving from `from` to `to` by `action` (`None`: a move
/// nobody needs to hear about).
fn lifecycle(from: &str, to: &str, action: &str) -> Option<EventType> {
    Some(match (to, action) {
        ("completed", _) => EventType::RolloutFinished,
        ("paused", _) => EventType::RolloutPaused,
        ("aborted", _) => EventType::RolloutAborted,
        ("progressing", "resume") if from == "paused" => EventType::RolloutResumed,
        ("progressing" | "baking", "gate-passed" | "promote") => EventType::RolloutWavePassed,
        _ => return None,
    })
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO rollout_events (rollout_id, at, actor, action, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_moves_map_to_lifecycle_events() {
        let cases = [
            (
                "progressing",
                "completed",
                "gate-passed",
                Some(EventType::RolloutFinished),
            ),
            (
                "progressing",
                "paused",
                "gate-failed",
                Some(EventType::RolloutPaused),
            ),
            ("baking", "paused", "pause", Some(EventType::RolloutPaused)),
            (
                "progressing",
                "aborted",
                "abort",
                Some(EventType::RolloutAborted),
            ),
            (
                "paused",
                "progressing",
                "resume",
                Some(EventType::RolloutResumed),
            ),
            (
                "progressing",
                "baking",
                "gate-passed",
                Some(EventType::RolloutWavePassed),
            ),
            (
                "progressing",
                "progressing",
                "gate-passed",
                Some(EventType::RolloutWavePassed),
            ),
            (
                "paused",
                "progressing",
                "promote",
                Some(EventType::RolloutWavePassed),
            ),
            ("baking", "progressing", "baked", None),
        ];
        for (from, to, action, want) in cases {
            assert_eq!(
                lifecycle(from, to, action),
                want,
                "{from} -> {to} by {action}"
            );
        }
    }
}
