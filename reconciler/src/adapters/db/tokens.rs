//! Cluster tokens: only their SHA-256 is stored.

use std::collections::HashMap;

use sqlx::Row;

use super::*;

impl Db {
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
}
