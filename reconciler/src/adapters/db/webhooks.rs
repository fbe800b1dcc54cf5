//! Webhook deliveries acted on: de-duplication shared by every replica of the database.

use super::*;

impl Db {
    /// Records delivery `key` (`<sender>:<id>`): `true` the first time, `false` when it was
    /// recorded before. A unique insert: of replicas recording the same key at once, exactly
    /// one gets `true`.
    pub async fn record_delivery(&self, key: &str) -> Result<bool, Error> {
        let done = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_key, received_at) VALUES ($1, $2) \
             ON CONFLICT (delivery_key) DO NOTHING",
        )
        .bind(key)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets deliveries recorded before `before` (Unix millis); returns how many.
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE received_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
