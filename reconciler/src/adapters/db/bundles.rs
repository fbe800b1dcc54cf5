//! Published bundles by digest, each cluster's head (digest, generation) and agents'
//! reports.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::*;
use crate::events::{EventType, NewEvent};

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
    /// The agent's version (`0.1.0 (commit …)`), from its `User-Agent`; empty when unknown.
    #[serde(default)]
    pub agent_version: String,
}

fn empty_list() -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}

/// Points a cluster at a digest, bumping its generation when the digest changed.
const POINT_CLUSTER: &str = "INSERT INTO clusters (id, kind, region, environment, digest, generation, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6)
     ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at,
       generation = CASE WHEN clusters.digest = excluded.digest THEN clusters.generation ELSE clusters.generation + 1 END";

/// [`POINT_CLUSTER`] for many rows: `{POINT_CLUSTERS} (…), (…) {POINT_CLUSTERS_ON_CONFLICT}`.
const POINT_CLUSTERS: &str =
    "INSERT INTO clusters (id, kind, region, environment, digest, generation, updated_at) VALUES";
const POINT_CLUSTERS_ON_CONFLICT: &str = "ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at,
       generation = CASE WHEN clusters.digest = excluded.digest THEN clusters.generation ELSE clusters.generation + 1 END";

/// Clusters per statement of [`Db::point_clusters`] (6 parameters each). Not more: sqlx binds
/// SQLite's `$N` parameters by name, and SQLite finds each name by a linear search, so a
/// statement's binding costs the square of its parameters (3,000 took a visible share of the
/// SQLite thread in `perf`).
const POINT_CHUNK: usize = 100;

/// The `bundle.published` event of cluster `id` pointed from `previous` to `digest`.
fn published_event(
    (id, kind, region, environment, digest): (&str, &str, &str, &str, &str),
    previous: Option<&str>,
    generation: i64,
) -> NewEvent {
    let event = NewEvent::new(
        EventType::BundlePublished,
        format!("cluster/{id}"),
        serde_json::json!({
            "cluster": id,
            "kind": kind,
            "digest": digest,
            "previous": previous,
            "generation": generation,
        }),
    )
    .in_stream(region, environment);
    match id.strip_prefix("w-").filter(|_| kind == "tenant") {
        Some(ws) => event.of_workspace(ws),
        None => event,
    }
}

impl Db {
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
        self.store_bundle_gz(digest, gz).await?;
        let kind = match cluster.kind {
            crate::render::ClusterKind::Platform => "platform",
            crate::render::ClusterKind::Tenant => "tenant",
        };
        self.point_cluster(
            &cluster.id,
            kind,
            &cluster.region,
            &cluster.environment,
            digest,
        )
        .await
    }

    /// Stores a bundle body by digest, gzip-compressed (idempotent), without pointing any
    /// cluster at it (a rollout does that wave by wave: [`Db::point_cluster`]).
    pub async fn store_bundle_gz(&self, digest: &str, gz: &[u8]) -> Result<(), Error> {
        sqlx::query("INSERT INTO bundles (digest, body, body_gz, created_at) VALUES ($1, '', $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(digest)
            .bind(gz)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Points cluster `id` at the stored bundle `digest`, bumping its generation when the
    /// digest changed, and tells every replica (`NOTIFY`). Returns the cluster's generation.
    /// A changed digest writes `io.cplane.bundle.published` in the same transaction.
    pub async fn point_cluster(
        &self,
        id: &str,
        kind: &str,
        region: &str,
        environment: &str,
        digest: &str,
    ) -> Result<i64, Error> {
        let mut tx = self.pool.begin().await?;
        let generation = self
            .point_in(&mut tx, (id, kind, region, environment, digest), now_ms())
            .await?;
        tx.commit().await?;
        self.events_committed();
        self.notify(BUNDLES_CHANNEL, id).await?;
        Ok(generation)
    }

    /// Points one cluster at `digest` inside `tx`, with its `bundle.published` event when the
    /// digest changed (in the same transaction). Returns the cluster's generation.
    async fn point_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        (id, kind, region, environment, digest): (&str, &str, &str, &str, &str),
        now: i64,
    ) -> Result<i64, Error> {
        // Write first (see `report_cluster_status`): the lock before the read.
        sqlx::query("UPDATE clusters SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        let before: Option<String> = sqlx::query("SELECT digest FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.try_get("digest"))
            .transpose()?;
        sqlx::query(POINT_CLUSTER)
            .bind(id)
            .bind(kind)
            .bind(region)
            .bind(environment)
            .bind(digest)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query("SELECT generation FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
        let generation: i64 = row.try_get("generation")?;
        if before.as_deref() != Some(digest) {
            let event = published_event(
                (id, kind, region, environment, digest),
                before.as_deref(),
                generation,
            );
            super::events::append(tx, &self.event_stream, &event).await?;
        }
        Ok(generation)
    }

    /// Points each of `clusters` — (id, kind, region, environment, digest), each id once — at
    /// its stored bundle as [`Db::point_cluster`] does (with its `bundle.published` event), all
    /// in one transaction, then tells every replica of each (`NOTIFY`). A rollout publishes a
    /// wave of thousands of clusters at once, and on SQLite every statement holds the one
    /// connection agents' reports and long-polls wait for: the clusters are locked, read and
    /// pointed a few hundred per statement (only the events take statements of their own),
    /// which takes a wave's publish from seconds to a fraction of one (`benches/rollouts.rs`).
    pub async fn point_clusters(
        &self,
        clusters: &[(&str, &str, &str, &str, &str)],
    ) -> Result<(), Error> {
        if clusters.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for chunk in clusters.chunks(POINT_CHUNK) {
            let ids = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            // Write first (see `report_cluster_status`): the lock before the read.
            let lock = format!("UPDATE clusters SET id = id WHERE id IN ({ids})");
            let mut q = sqlx::query(&lock);
            for (id, ..) in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let read = format!("SELECT id, digest FROM clusters WHERE id IN ({ids})");
            let mut q = sqlx::query(&read);
            for (id, ..) in chunk {
                q = q.bind(*id);
            }
            let mut before: HashMap<String, String> = HashMap::new();
            for r in q.fetch_all(&mut *tx).await? {
                before.insert(r.try_get("id")?, r.try_get("digest")?);
            }
            let rows = (0..chunk.len())
                .map(|i| {
                    let b = i * 6;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, 1, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let upsert = format!(
                "{POINT_CLUSTERS} {rows} {POINT_CLUSTERS_ON_CONFLICT} RETURNING id, generation"
            );
            let mut q = sqlx::query(&upsert);
            for (id, kind, region, environment, digest) in chunk {
                q = q
                    .bind(*id)
                    .bind(*kind)
                    .bind(*region)
                    .bind(*environment)
                    .bind(*digest)
                    .bind(now);
            }
            let mut generations: HashMap<String, i64> = HashMap::new();
            for r in q.fetch_all(&mut *tx).await? {
                generations.insert(r.try_get("id")?, r.try_get("generation")?);
            }
            for (id, kind, region, environment, digest) in chunk {
                let before = before.get(*id);
                if before.map(String::as_str) == Some(*digest) {
                    continue;
                }
                let generation = *generations.get(*id).ok_or_else(|| {
                    Error::Corrupt(format!("cluster {id}: no generation after pointing it"))
                })?;
                let event = published_event(
                    (id, kind, region, environment, digest),
                    before.map(String::as_str),
                    generation,
                );
                super::events::append(&mut tx, &self.event_stream, &event).await?;
            }
        }
        tx.commit().await?;
        self.events_committed();
        for (id, ..) in clusters {
            self.notify(BUNDLES_CHANNEL, id).await?;
        }
        Ok(())
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

    /// Stores an agent's report for `cluster`. In the same transaction: an agent that was
    /// offline writes `io.cplane.agent.back`; a report turning unhealthy (or the first one,
    /// unhealthy) `io.cplane.agent.failing`; one turning healthy again
    /// `io.cplane.agent.recovered`.
    pub async fn report_cluster_status(
        &self,
        cluster: &str,
        r: &ClusterReport,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        // Write first, read second: on SQLite a transaction that reads and then writes fails
        // at once (SQLITE_BUSY) when another writer committed in between, whatever the busy
        // timeout; one that starts with a write waits for the lock instead. Agents report
        // concurrently, so this matters here. (On PostgreSQL it locks the row.)
        sqlx::query("UPDATE cluster_status SET cluster_id = cluster_id WHERE cluster_id = $1")
            .bind(cluster)
            .execute(&mut *tx)
            .await?;
        let before =
            sqlx::query("SELECT healthy, offline_since FROM cluster_status WHERE cluster_id = $1")
                .bind(cluster)
                .fetch_optional(&mut *tx)
                .await?;
        let (was_healthy, offline_since) = match &before {
            Some(row) => (
                Some(row.try_get::<String, _>("healthy")? == "True"),
                row.try_get::<Option<i64>, _>("offline_since")?,
            ),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO cluster_status (cluster_id, digest, generation, healthy, message, objects, reported_at, agent_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (cluster_id) DO UPDATE SET digest = excluded.digest, generation = excluded.generation, healthy = excluded.healthy,
               message = excluded.message, objects = excluded.objects, reported_at = excluded.reported_at, agent_version = excluded.agent_version, offline_since = NULL",
        )
        .bind(cluster)
        .bind(&r.digest)
        .bind(r.generation)
        .bind(if r.healthy { "True" } else { "False" })
        .bind(&r.message)
        .bind(r.objects.to_string())
        .bind(now_ms())
        .bind(&r.agent_version)
        .execute(&mut *tx)
        .await?;
        let mut kinds = Vec::new();
        if let Some(since) = offline_since {
            kinds.push((EventType::AgentBack, Some(since)));
        }
        match (was_healthy, r.healthy) {
            (Some(true) | None, false) => kinds.push((EventType::AgentFailing, None)),
            (Some(false), true) => kinds.push((EventType::AgentRecovered, None)),
            _ => {}
        }
        for (kind, since) in kinds {
            let mut data = serde_json::json!({
                "cluster": cluster,
                "digest": r.digest,
                "generation": r.generation,
                "healthy": r.healthy,
                "message": r.message,
            });
            if let Some(since) = since {
                data["offline_since"] = since.into();
            }
            let event = self.cluster_event(&mut tx, kind, cluster, data).await?;
            super::events::append(&mut tx, &self.event_stream, &event).await?;
        }
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    /// Marks the agents that have not reported for `silent_for` offline, writing
    /// `io.cplane.agent.offline` for each in the same transaction. Safe on every replica at
    /// once: a cluster is marked (and its event written) by one. Returns the clusters marked.
    pub async fn mark_agents_offline(
        &self,
        silent_for: std::time::Duration,
    ) -> Result<Vec<String>, Error> {
        let now = now_ms();
        let cutoff = now.saturating_sub(i64::try_from(silent_for.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.pool.begin().await?;
        let quiet = sqlx::query(
            "SELECT cluster_id, reported_at FROM cluster_status WHERE offline_since IS NULL AND reported_at < $1 ORDER BY cluster_id",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let mut marked = Vec::new();
        for row in quiet {
            let cluster: String = row.try_get("cluster_id")?;
            let reported_at: i64 = row.try_get("reported_at")?;
            let done = sqlx::query(
                "UPDATE cluster_status SET offline_since = $1 WHERE cluster_id = $2 AND offline_since IS NULL AND reported_at < $3",
            )
            .bind(now)
            .bind(&cluster)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                let data = serde_json::json!({
                    "cluster": cluster,
                    "last_report": reported_at,
                    "silent_for_seconds": silent_for.as_secs(),
                });
                let event = self
                    .cluster_event(&mut tx, EventType::AgentOffline, &cluster, data)
                    .await?;
                super::events::append(&mut tx, &self.event_stream, &event).await?;
                marked.push(cluster);
            }
        }
        tx.commit().await?;
        self.events_committed();
        Ok(marked)
    }

    /// An event about cluster `id`, in its region's stream when it has a bundle, concerning
    /// its workspace when it is a tenant cluster.
    async fn cluster_event(
        &self,
        conn: &mut sqlx::AnyConnection,
        kind: EventType,
        id: &str,
        data: serde_json::Value,
    ) -> Result<NewEvent, Error> {
        let row = sqlx::query("SELECT kind, region, environment FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let mut event = NewEvent::new(kind, format!("cluster/{id}"), data);
        if let Some(row) = row {
            let ckind: String = row.try_get("kind")?;
            let region: String = row.try_get("region")?;
            let environment: String = row.try_get("environment")?;
            event = event.in_stream(&region, &environment);
            if let Some(ws) = id.strip_prefix("w-").filter(|_| ckind == "tenant") {
                event = event.of_workspace(ws);
            }
        }
        Ok(event)
    }

    /// The last report of `cluster`, with when it came (unix millis).
    pub async fn cluster_status(
        &self,
        cluster: &str,
    ) -> Result<Option<(ClusterReport, i64)>, Error> {
        let row = sqlx::query("SELECT digest, generation, healthy, message, objects, reported_at, agent_version FROM cluster_status WHERE cluster_id = $1")
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
                agent_version: r.try_get("agent_version")?,
            },
            r.try_get("reported_at")?,
        )))
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
