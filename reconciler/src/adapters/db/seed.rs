//! The seed's tables (reference doc 001): the tenant → region lookup, BFF registrations
//! (`tenants`: [`super::tenants`]).

use sqlx::Row;

use super::status::UPSERT_CONDITION;
use super::*;

/// The workspace condition a BFF's registrations keep `True`.
pub const BFF_HEALTHY: &str = "BffHealthy";

/// Unix millis as RFC 3339 (UTC, seconds).
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or_default());
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Db {
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

    /// Records a BFF's registration of `workspace` (its id, no `w-`) and marks the BFF
    /// healthy: the workspace's `BffHealthy` condition turns `True` (reason `Registered`),
    /// with the time in its message, in one transaction. Returns the registration's time
    /// (unix millis).
    pub async fn register_bff(
        &self,
        workspace: &str,
        url: &str,
        public_ip: &str,
        ttl: std::time::Duration,
    ) -> Result<i64, Error> {
        let now = now_ms();
        let message = format!(
            "registered {url} from {public_ip} at {}; unhealthy after {} without a new registration",
            rfc3339(now),
            humantime::format_duration(ttl)
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO bff_registrations (workspace_id, url, public_ip, registered_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_id) DO UPDATE SET url = excluded.url, public_ip = excluded.public_ip, registered_at = excluded.registered_at",
        )
        .bind(format!("w-{workspace}"))
        .bind(url)
        .bind(public_ip)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(UPSERT_CONDITION)
            .bind("workspace")
            .bind(workspace)
            .bind(BFF_HEALTHY)
            .bind("True")
            .bind("Registered")
            .bind(&message)
            .bind("")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(now)
    }

    /// Turns `BffHealthy` `False` (reason `RegistrationExpired`) for every BFF whose last
    /// registration is older than `ttl`; returns their workspaces. A BFF that registers
    /// meanwhile keeps its `True`: a condition is changed only while the registration it saw
    /// is still the last one.
    pub async fn expire_bff_registrations(
        &self,
        ttl: std::time::Duration,
    ) -> Result<Vec<String>, Error> {
        let now = now_ms();
        let cutoff = now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT s.id, b.workspace_id, b.registered_at FROM bff_registrations b
             JOIN entity_status s ON s.kind = 'workspace' AND s.condition = $1 AND s.status = 'True'
               AND 'w-' || s.id = b.workspace_id
             WHERE b.registered_at < $2",
        )
        .bind(BFF_HEALTHY)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let name: String = row.try_get("workspace_id")?;
            let at: i64 = row.try_get("registered_at")?;
            let message = format!(
                "no registration since {} (one is due at least every {})",
                rfc3339(at),
                humantime::format_duration(ttl)
            );
            let done = sqlx::query(
                "UPDATE entity_status SET status = 'False', reason = 'RegistrationExpired', message = $1, updated_at = $2
                 WHERE kind = 'workspace' AND id = $3 AND condition = $4 AND status = 'True'
                   AND EXISTS (SELECT 1 FROM bff_registrations WHERE workspace_id = $5 AND registered_at = $6)",
            )
            .bind(&message)
            .bind(now)
            .bind(&id)
            .bind(BFF_HEALTHY)
            .bind(&name)
            .bind(at)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() > 0 {
                expired.push(id);
            }
        }
        Ok(expired)
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
}
