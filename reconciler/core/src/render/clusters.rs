//! Which clusters a model has: a platform cluster per live region × environment, a tenant
//! cluster per workspace of a live region.

use super::*;

/// Platform clusters run the platform stacks; tenant clusters (one per workspace) the tenant ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    /// `{env}-{region}`, one per live region × environment.
    Platform,
    /// `w-{id}`, one per workspace.
    Tenant,
}

/// A cluster cplane renders a bundle for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// `prod-sgp-1`, `w-acme`.
    pub id: String,
    /// Platform or tenant.
    pub kind: ClusterKind,
    /// Region id.
    pub region: String,
    /// Environment name.
    pub environment: String,
    /// Workspace id (tenant clusters).
    #[serde(skip)]
    pub workspace: Option<String>,
}

/// Every cluster of the model: platform clusters of live regions first, then workspaces of live
/// regions, each group sorted by id.
pub fn clusters(model: &Model) -> Vec<Cluster> {
    let mut out = Vec::with_capacity(model.workspaces.len() + 2 * model.regions.len());
    for (id, region) in &model.regions {
        if region.doc.spec.status != RegionStatus::Live {
            continue;
        }
        for env in &region.doc.spec.environments {
            out.push(Cluster {
                id: format!("{env}-{id}"),
                kind: ClusterKind::Platform,
                region: id.clone(),
                environment: env.clone(),
                workspace: None,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    for (id, ws) in &model.workspaces {
        let live = model
            .regions
            .get(&ws.doc.spec.region)
            .is_some_and(|r| r.doc.spec.status == RegionStatus::Live);
        if live {
            out.push(Cluster {
                id: workspace_name(id),
                kind: ClusterKind::Tenant,
                region: ws.doc.spec.region.clone(),
                environment: ws.doc.spec.environment.clone(),
                workspace: Some(id.clone()),
            });
        }
    }
    out
}
