//! The seed's tables (reference doc 001): the tenant → region lookup, BFF registrations
//! (`tenants`: [`super::tenants`]).

use sqlx::Row;

use super::*;

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
}
