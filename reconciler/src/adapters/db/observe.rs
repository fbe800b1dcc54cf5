//! What the planner needs from the database: the workspaces, tenants, lookup entries and
//! journal of a scope (`observe`), and the workspaces row it writes.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::journal::journal_row;
use super::*;
use crate::events::{EventType, NewEvent};
use crate::tenants::Filter;

impl Db {
    /// What the planner needs about just these workspaces (incremental re-plans), leaving out
    /// rows of workspaces provisioned outside `scope` (another control plane's).
    pub async fn observe_only(
        &self,
        ids: &[String],
        scope: &crate::plan::Scope,
    ) -> Result<Observed, Error> {
        let mut observed = Observed::default();
        if ids.is_empty() {
            return Ok(observed);
        }
        let list = (1..=ids.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let names: Vec<String> = ids.iter().map(|id| format!("w-{id}")).collect();
        let fetch = |sql: String, binds: &[String]| {
            let binds = binds.to_vec();
            async move {
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = q.bind(b);
                }
                q.fetch_all(&self.pool).await
            }
        };
        for row in fetch(format!("SELECT id, region, environment, account, aws_account_id, aws_region, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status FROM workspaces WHERE id IN ({list})"), ids).await? {
            let w = workspace_row(&row)?;
            observed.workspaces.insert(w.applied.id.clone(), w);
        }
        self.observe_tenants(&Filter::Workspaces(names.clone()), &mut observed, |_| true)
            .await?;
        for row in fetch(format!("SELECT workspace_name, region, bff_url FROM tenant_lookup WHERE workspace_name IN ({list})"), &names).await? {
            let name: String = row.try_get("workspace_name")?;
            observed.lookup.insert(name.trim_start_matches("w-").to_owned(), LookupRow { region: row.try_get("region")?, bff_url: row.try_get("bff_url")? });
        }
        for row in fetch(format!("SELECT workspace_id, step, state, result FROM journal WHERE workspace_id IN ({list})"), ids).await? {
            let (key, entry) = journal_row(&row)?;
            observed.journal.insert(key, entry);
        }
        restrict(&mut observed, scope);
        Ok(observed)
    }

    /// Everything the planner needs from the database about workspaces in `scope`.
    pub async fn observe(&self, scope: &crate::plan::Scope) -> Result<Observed, Error> {
        let in_scope = |r: &str| scope.regions.is_empty() || scope.regions.iter().any(|x| x == r);
        let mut observed = Observed::default();
        let rows = sqlx::query(
            "SELECT id, region, environment, account, aws_account_id, aws_region, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status FROM workspaces",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let w = workspace_row(&row)?;
            if in_scope(&w.applied.region) {
                observed.workspaces.insert(w.applied.id.clone(), w);
            }
        }
        self.observe_tenants(
            &Filter::Regions(scope.regions.clone()),
            &mut observed,
            |t| in_scope(&t.region),
        )
        .await?;
        for row in sqlx::query("SELECT workspace_name, region, bff_url FROM tenant_lookup")
            .fetch_all(&self.pool)
            .await?
        {
            let name: String = row.try_get("workspace_name")?;
            let l = LookupRow {
                region: row.try_get("region")?,
                bff_url: row.try_get("bff_url")?,
            };
            if in_scope(&l.region) {
                observed
                    .lookup
                    .insert(name.trim_start_matches("w-").to_owned(), l);
            }
        }
        for row in sqlx::query("SELECT workspace_id, step, state, result FROM journal")
            .fetch_all(&self.pool)
            .await?
        {
            let id: String = row.try_get("workspace_id")?;
            if !observed.workspaces.contains_key(&id) {
                continue;
            }
            let (key, entry) = journal_row(&row)?;
            observed.journal.insert(key, entry);
        }
        restrict(&mut observed, scope);
        Ok(observed)
    }

    /// Reads the `tenants` rows of `filter` that `keep` accepts into `observed`, from this
    /// region's [`crate::tenants::TenantStore`]. When the primary region cannot be asked, the
    /// rows are left unobserved ([`Observed::tenants_unobserved`] says why) instead of failing
    /// the run: the planner then writes them again, and those steps wait for the primary.
    async fn observe_tenants(
        &self,
        filter: &Filter,
        observed: &mut Observed,
        keep: impl Fn(&TenantRow) -> bool,
    ) -> Result<(), Error> {
        match self.tenant_store().list(filter).await {
            Ok(rows) => {
                for t in rows.into_iter().filter(|t| keep(t)) {
                    let id = t.workspace_id.trim_start_matches("w-").to_owned();
                    observed.tenants.insert(id, t);
                }
                Ok(())
            }
            Err(crate::tenants::Error::Db(e)) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "tenants rows not observed");
                observed.tenants_unobserved = Some(e.to_string());
                Ok(())
            }
        }
    }

    /// Upserts the `workspaces` row. A row turning `active` writes
    /// `io.cplane.workspace.provisioned`, one turning `deleted` or `retained`
    /// `io.cplane.workspace.deprovisioned`, in the same transaction.
    pub async fn write_workspace(
        &self,
        w: &DesiredWorkspace,
        generation: i64,
        status: Status,
        commit: &str,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let before: Option<String> = sqlx::query("SELECT status FROM workspaces WHERE id = $1")
            .bind(&w.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("status"))
            .transpose()?;
        sqlx::query(
            "INSERT INTO workspaces (id, region, environment, account, aws_account_id, aws_region, role_arn, external_id, zone_name, parent_zone, bff_url, deletion_policy, generation, status, commit_id, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, environment = excluded.environment, account = excluded.account,
               aws_account_id = excluded.aws_account_id, aws_region = excluded.aws_region, role_arn = excluded.role_arn, external_id = excluded.external_id,
               zone_name = excluded.zone_name, parent_zone = excluded.parent_zone, bff_url = excluded.bff_url, deletion_policy = excluded.deletion_policy,
               generation = excluded.generation, status = excluded.status, commit_id = excluded.commit_id, updated_at = excluded.updated_at",
        )
        .bind(&w.id)
        .bind(&w.region)
        .bind(&w.environment)
        .bind(&w.account)
        .bind(&w.aws_account_id)
        .bind(&w.aws_region)
        .bind(&w.role_arn)
        .bind(&w.external_id)
        .bind(&w.zone_name)
        .bind(&w.parent_zone)
        .bind(&w.bff_url)
        .bind(w.deletion_policy.as_str())
        .bind(generation)
        .bind(status.as_str())
        .bind(commit)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let kind = match status {
            _ if before.as_deref() == Some(status.as_str()) => None,
            Status::Active => Some(EventType::WorkspaceProvisioned),
            Status::Deleted | Status::Retained => Some(EventType::WorkspaceDeprovisioned),
            Status::Provisioning | Status::Deprovisioning => None,
        };
        if let Some(kind) = kind {
            let event = NewEvent::new(
                kind,
                format!("workspace/{}", w.id),
                serde_json::json!({
                    "workspace": w.id,
                    "account": w.account,
                    "region": w.region,
                    "environment": w.environment,
                    "status": status.as_str(),
                    "generation": generation,
                    "commit": commit,
                    "zone": w.zone_name,
                }),
            )
            .in_stream(&w.region, &w.environment)
            .of_workspace(&w.id);
            super::events::append(&mut tx, &self.event_stream, &event).await?;
        }
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }
}

/// Leaves out what belongs to workspaces provisioned outside `scope`'s environments (their
/// `workspaces` row names another environment): another control plane owns them, so they must
/// not look like removed workspaces to this one's planner.
pub(super) fn restrict(observed: &mut Observed, scope: &crate::plan::Scope) {
    let foreign: Vec<String> = observed
        .workspaces
        .iter()
        .filter(|(_, w)| !scope.includes_row(&w.applied.region, &w.applied.environment))
        .map(|(id, _)| id.clone())
        .collect();
    for id in foreign {
        observed.workspaces.remove(&id);
        observed.tenants.remove(&id);
        observed.lookup.remove(&id);
        observed.journal.retain(|(ws, _), _| *ws != id);
    }
}

pub(super) fn tenant_row(row: &AnyRow) -> Result<TenantRow, Error> {
    Ok(TenantRow {
        workspace_id: row.try_get("workspace_id")?,
        region: row.try_get("region")?,
        delegated_zone: row.try_get("delegated_zone")?,
        status: row.try_get("status")?,
        bff_url: row.try_get("bff_url")?,
    })
}

pub(super) fn workspace_row(row: &AnyRow) -> Result<ObservedWorkspace, Error> {
    let status: String = row.try_get("status")?;
    let policy: String = row.try_get("deletion_policy")?;
    Ok(ObservedWorkspace {
        applied: DesiredWorkspace {
            id: row.try_get("id")?,
            region: row.try_get("region")?,
            environment: row.try_get("environment")?,
            account: row.try_get("account")?,
            aws_account_id: row.try_get("aws_account_id")?,
            aws_region: row.try_get("aws_region")?,
            role_arn: row.try_get("role_arn")?,
            external_id: row.try_get("external_id")?,
            zone_name: row.try_get("zone_name")?,
            parent_zone: row.try_get("parent_zone")?,
            bff_url: row.try_get("bff_url")?,
            deletion_policy: Policy::parse(&policy),
        },
        generation: row.try_get("generation")?,
        status: Status::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("workspace status `{status}`")))?,
    })
}
