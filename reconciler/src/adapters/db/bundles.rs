//! Published bundles by digest, each cluster's head (digest, generation) and agents'
//! reports.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::*;

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

/// Points a cluster at a digest, bumping its generation when the digest changed.
const POINT_CLUSTER: &str = "INSERT INTO clusters (id, kind, region, environment, digest, generation, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6)
     ON CONFLICT (id) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at,
       generation = CASE WHEN clusters.digest = excluded.digest THEN clusters.generation ELSE clusters.generation + 1 END";

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
    pub async fn point_cluster(
        &self,
        id: &str,
        kind: &str,
        region: &str,
        environment: &str,
        digest: &str,
    ) -> Result<i64, Error> {
        sqlx::query(POINT_CLUSTER)
            .bind(id)
            .bind(kind)
            .bind(region)
            .bind(environment)
            .bind(digest)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT generation FROM clusters WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let generation = row.try_get("generation")?;
        self.notify(BUNDLES_CHANNEL, id).await?;
        Ok(generation)
    }

    /// Points each of `clusters` — (id, kind, region, environment, digest) — at its stored
    /// bundle as [`Db::point_cluster`] does, all in one transaction, then tells every replica
    /// of each (`NOTIFY`). A rollout publishes a wave of thousands of clusters at once: one
    /// statement each on one connection, instead of a transaction and a query each, takes the
    /// wave's publish from seconds to a fraction of one (`benches/rollouts.rs`).
    pub async fn point_clusters(
        &self,
        clusters: &[(&str, &str, &str, &str, &str)],
    ) -> Result<(), Error> {
        if clusters.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (id, kind, region, environment, digest) in clusters {
            sqlx::query(POINT_CLUSTER)
                .bind(*id)
                .bind(*kind)
                .bind(*region)
                .bind(*environment)
                .bind(*digest)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
