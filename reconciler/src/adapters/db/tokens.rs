//! Cluster tokens: only their SHA-256 is stored.
//!
//! A token is bound to one cluster and one [`TokenScope`]: an `agent` token reads its cluster's
//! bundle and posts its status; a `bff` token reads its workspace's config and registers its
//! BFF. A token may expire ([`TokenGrant::expires_at`]); rotation replaces a cluster's tokens of
//! one scope by a new one, letting the old ones work until the end of an overlap.

use std::collections::HashMap;

use sqlx::Row;

use super::*;

/// What a cluster token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// The cluster's agent: `GET /v1/clusters/{c}/bundle`, `POST /v1/clusters/{c}/status`.
    Agent,
    /// The workspace's BFF: `GET /api/workspaces/{id}/config`,
    /// `POST /api/workspaces/{id}/register`.
    Bff,
}

impl TokenScope {
    /// The stored (and shown) name: `agent` or `bff`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Agent => "agent",
            TokenScope::Bff => "bff",
        }
    }

    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "agent" => Ok(TokenScope::Agent),
            "bff" => Ok(TokenScope::Bff),
            other => Err(Error::Corrupt(format!("token scope `{other}`"))),
        }
    }
}

impl std::fmt::Display for TokenScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an unrevoked token grants: whose it is, for what, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The cluster it is bound to.
    pub cluster: String,
    /// What it may do.
    pub scope: TokenScope,
    /// Unix millis from which it is refused (`None`: never).
    pub expires_at: Option<i64>,
}

impl TokenGrant {
    /// Whether the token is expired at `now` (Unix millis).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A token as operators see it (`cplane cluster token list`): never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's SHA-256: tells tokens apart, reveals nothing.
    pub id: String,
    /// What it may do.
    pub scope: TokenScope,
    /// Unix millis.
    pub created_at: i64,
    /// Unix millis from which it is refused (`None`: never).
    pub expires_at: Option<i64>,
    /// Unix millis when it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl TokenInfo {
    /// `active`, `expired` or `revoked` at `now` (Unix millis).
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A fresh token: `cpt_` and 64 hex digits (256 random bits).
fn new_token() -> String {
    format!("cpt_{}", hex::encode(rand::random::<[u8; 32]>()))
}

const INSERT: &str = "INSERT INTO cluster_tokens (token_hash, cluster_id, created_at, scope, expires_at, changed_at) VALUES ($1, $2, $3, $4, $5, $3)";

impl Db {
    /// Creates an `agent` token for `cluster` that does not expire; returns it (only its
    /// SHA-256 is stored).
    pub async fn create_cluster_token(&self, cluster: &str) -> Result<String, Error> {
        self.issue_cluster_token(cluster, TokenScope::Agent, None)
            .await
    }

    /// Creates a token of `scope` for `cluster`, refused from `expires_at` (Unix millis) on
    /// when given; returns it (only its SHA-256 is stored).
    pub async fn issue_cluster_token(
        &self,
        cluster: &str,
        scope: TokenScope,
        expires_at: Option<i64>,
    ) -> Result<String, Error> {
        let token = new_token();
        sqlx::query(INSERT)
            .bind(token_hash(&token))
            .bind(cluster)
            .bind(now_ms())
            .bind(scope.as_str())
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Rotates the `scope` tokens of `cluster`: creates a new one (refused from `expires_at`
    /// on, when given) and makes every unrevoked old one expire at the end of `overlap` from
    /// now (one that expires sooner keeps its expiry). Both in one transaction. Returns the new
    /// token and how many old ones now end with the overlap.
    pub async fn rotate_cluster_tokens(
        &self,
        cluster: &str,
        scope: TokenScope,
        overlap: std::time::Duration,
        expires_at: Option<i64>,
    ) -> Result<(String, u64), Error> {
        let now = now_ms();
        let cut = now.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
        let token = new_token();
        let mut tx = self.pool.begin().await?;
        let ended = sqlx::query(
            "UPDATE cluster_tokens SET expires_at = $1, changed_at = $2 \
             WHERE cluster_id = $3 AND scope = $4 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(cut)
        .bind(now)
        .bind(cluster)
        .bind(scope.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(INSERT)
            .bind(token_hash(&token))
            .bind(cluster)
            .bind(now)
            .bind(scope.as_str())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.notify(TOKENS_CHANNEL, cluster).await?;
        Ok((token, ended))
    }

    /// Revokes every token of `cluster`; returns how many.
    pub async fn revoke_cluster_tokens(&self, cluster: &str) -> Result<u64, Error> {
        self.revoke_cluster_tokens_of(cluster, None).await
    }

    /// Revokes the tokens of `cluster` of `scope` (every scope for `None`); returns how many.
    pub async fn revoke_cluster_tokens_of(
        &self,
        cluster: &str,
        scope: Option<TokenScope>,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE cluster_tokens SET revoked_at = $1, changed_at = $1 \
             WHERE cluster_id = $2 AND revoked_at IS NULL AND ($3 = '' OR scope = $3)",
        )
        .bind(now_ms())
        .bind(cluster)
        .bind(scope.map_or("", TokenScope::as_str))
        .execute(&self.pool)
        .await?;
        self.notify(TOKENS_CHANNEL, cluster).await?;
        Ok(done.rows_affected())
    }

    /// Every token of `cluster` (revoked and expired ones too), oldest first.
    pub async fn cluster_tokens(&self, cluster: &str) -> Result<Vec<TokenInfo>, Error> {
        let rows = sqlx::query(
            "SELECT token_hash, scope, created_at, expires_at, revoked_at FROM cluster_tokens \
             WHERE cluster_id = $1 ORDER BY created_at, token_hash",
        )
        .bind(cluster)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let hash: String = r.try_get("token_hash")?;
                Ok(TokenInfo {
                    id: hash.get(..12).unwrap_or(&hash).to_owned(),
                    scope: TokenScope::parse(&r.try_get::<String, _>("scope")?)?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// When a cluster token last changed (created, revoked, or its expiry moved), Unix millis.
    /// Servers on SQLite poll it to drop their cached verifications.
    pub async fn last_token_change(&self) -> Result<Option<i64>, Error> {
        let row = sqlx::query("SELECT MAX(changed_at) AS last FROM cluster_tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("last")?)
    }

    /// What these token hashes grant (unrevoked ones only; expired ones included, so that the
    /// answer can say so), by hash.
    pub async fn token_grants(
        &self,
        hashes: &[String],
    ) -> Result<HashMap<String, TokenGrant>, Error> {
        let mut out = HashMap::new();
        if hashes.is_empty() {
            return Ok(out);
        }
        let list = (1..=hashes.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT token_hash, cluster_id, scope, expires_at FROM cluster_tokens WHERE revoked_at IS NULL AND token_hash IN ({list})");
        let mut q = sqlx::query(&sql);
        for h in hashes {
            q = q.bind(h);
        }
        for r in q.fetch_all(&self.pool).await? {
            out.insert(
                r.try_get("token_hash")?,
                TokenGrant {
                    cluster: r.try_get("cluster_id")?,
                    scope: TokenScope::parse(&r.try_get::<String, _>("scope")?)?,
                    expires_at: r.try_get("expires_at")?,
                },
            );
        }
        Ok(out)
    }
}
