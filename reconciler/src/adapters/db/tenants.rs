//! The `tenants` table of this database: the primary region's [`TenantStore`], and the pages
//! its internal API (`GET /internal/tenants`) serves to the other regions.

use std::sync::Arc;

use crate::tenants::{Filter, TenantFuture, TenantStore};

use super::observe::tenant_row;
use super::*;

/// The `tenants` table of this region's own database: the store of the primary region (and of
/// a control plane that serves every region).
#[derive(Clone)]
pub struct LocalTenants {
    pool: AnyPool,
}

impl LocalTenants {
    pub(super) fn new(pool: AnyPool) -> Self {
        Self { pool }
    }
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows of `filter` after `after` (exclusive, by `workspace_id`), at most `limit` (all when
/// `None`), in `workspace_id` order.
async fn select(
    pool: &AnyPool,
    filter: &Filter,
    after: &str,
    limit: Option<u32>,
) -> Result<Vec<TenantRow>, Error> {
    let (column, values) = match filter {
        Filter::Regions(r) => ("region", r.as_slice()),
        Filter::Workspaces(w) => ("workspace_id", w.as_slice()),
    };
    let mut sql = String::from(
        "SELECT workspace_id, region, delegated_zone, status, bff_url FROM tenants WHERE workspace_id > $1",
    );
    match filter {
        Filter::Workspaces(w) if w.is_empty() => return Ok(Vec::new()),
        Filter::Regions(r) if r.is_empty() => {}
        _ => sql.push_str(&format!(
            " AND {column} IN ({})",
            placeholders(2, values.len())
        )),
    }
    sql.push_str(" ORDER BY workspace_id");
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    let mut q = sqlx::query(&sql).bind(after);
    for v in values {
        q = q.bind(v);
    }
    q.fetch_all(pool).await?.iter().map(tenant_row).collect()
}

/// Upserts `t` by its `workspace_id`.
async fn upsert(pool: &AnyPool, t: &TenantRow) -> Result<(), Error> {
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
    .execute(pool)
    .await?;
    Ok(())
}

impl TenantStore for LocalTenants {
    fn list<'a>(&'a self, filter: &'a Filter) -> TenantFuture<'a, Vec<TenantRow>> {
        Box::pin(async move { Ok(select(&self.pool, filter, "", None).await?) })
    }

    fn put<'a>(&'a self, t: &'a TenantRow) -> TenantFuture<'a, ()> {
        Box::pin(async move { Ok(upsert(&self.pool, t).await?) })
    }

    fn location(&self) -> String {
        "this region's database".into()
    }
}

impl Db {
    /// The store of this region's `tenants` rows: its own table (the primary region), or the
    /// primary's internal API once [`Db::with_tenant_store`] set it.
    pub fn tenant_store(&self) -> &dyn TenantStore {
        self.tenants.as_ref()
    }

    /// The same database, with the `tenants` rows read and written through `store` (the
    /// primary region's, in every other region).
    pub fn with_tenant_store(mut self, store: Arc<dyn TenantStore>) -> Self {
        self.tenants = store;
        self
    }

    /// Upserts a row in this database's own `tenants` table, whatever the store (what the
    /// primary's internal API writes; tests that edit rows by hand).
    pub async fn write_tenant(&self, t: &TenantRow) -> Result<(), Error> {
        upsert(&self.pool, t).await
    }

    /// One page of this database's own `tenants` rows matching `filter`, after `after`
    /// (exclusive), at most `limit`, in `workspace_id` order.
    pub async fn tenants_page(
        &self,
        filter: &Filter,
        after: &str,
        limit: u32,
    ) -> Result<Vec<TenantRow>, Error> {
        select(&self.pool, filter, after, Some(limit)).await
    }
}
