//! The planner: `plan(desired, observed, options) → Plan`, a pure function.
//!
//! Desired state comes from a validated model (one commit of the state repo); observed state
//! from the database (workspace rows, the journal, tenants and lookup rows, cluster digests)
//! and, when a drift check ran, from batched cloud reads. The plan is an ordered list of explicit
//! steps, each naming the steps it must follow. Apply executes them; nothing here does I/O
//! (no tokio, sqlx, aws-sdk or git2), so every case below is a plain unit test.
//!
//! Guarantees:
//! - Planning what is already true yields an empty plan (idempotence).
//! - Provisioning steps already `done` in the journal are never planned again; a step left
//!   `started` (outcome unknown) is planned again, and apply resolves it by lookup.
//! - A workspace whose region or environment changed is refused, never re-created elsewhere.
//! - A commit removing more than `max_deletions` workspaces is held (no deletion planned) until
//!   confirmed.

use std::collections::BTreeMap;
use std::fmt;

use cplane_schema::domain::workspace_name;
use cplane_schema::model::DeletionPolicy;
use cplane_schema::validate::names_for;
use cplane_schema::Model;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod global;
mod step_result;
pub use global::{IdentityClient, Providers, Realm};
pub use step_result::{RecordSet, StepResult, StepResultError};

/// What one workspace should be, derived from the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredWorkspace {
    /// Workspace id (no `w-`).
    pub id: String,
    /// Region id.
    pub region: String,
    /// Environment.
    pub environment: String,
    /// Customer account.
    pub account: String,
    /// Tenant AWS account id.
    pub aws_account_id: String,
    /// The AWS region of the tenant's regional resources (the ACM certificate): the Region
    /// document's `spec.awsRegion`. Empty in rows written before it was recorded.
    pub aws_region: String,
    /// Role cplane assumes in the tenant account.
    pub role_arn: String,
    /// ExternalId for that role.
    pub external_id: String,
    /// Delegated zone `w-{id}.{env?}.{region}.{base}`.
    pub zone_name: String,
    /// Operator-account zone holding the NS delegation.
    pub parent_zone: String,
    /// `https://bff.w-{id}...`.
    pub bff_url: String,
    /// What removal does.
    pub deletion_policy: Policy,
}

/// Deletion policy, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    /// Keep cloud resources on removal.
    Retain,
    /// Remove them.
    Delete,
}

impl Policy {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Retain => "Retain",
            Policy::Delete => "Delete",
        }
    }

    /// From the stored name (anything unknown is the safe `Retain`).
    pub fn parse(s: &str) -> Self {
        if s == "Delete" {
            Policy::Delete
        } else {
            Policy::Retain
        }
    }
}

/// What one control plane reconciles: its regions and environments (reference doc 001 runs one
/// per region × environment). Empty lists mean every live region, every environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Region ids; empty: every live region.
    pub regions: Vec<String>,
    /// Environment names; empty: every environment.
    pub environments: Vec<String>,
}

impl Scope {
    /// Every live region and environment.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether a workspace or cluster of `region` (live or not) and `environment` is in scope.
    /// Named regions are in scope whatever their status (so a retired region's workspaces are
    /// still deprovisioned by its own control plane).
    pub fn includes(&self, region: &str, live: bool, environment: &str) -> bool {
        let region_ok = if self.regions.is_empty() {
            live
        } else {
            self.regions.iter().any(|r| r == region)
        };
        region_ok
            && (self.environments.is_empty() || self.environments.iter().any(|e| e == environment))
    }

    /// Like [`Scope::includes`] for rows already provisioned (their region was live).
    pub fn includes_row(&self, region: &str, environment: &str) -> bool {
        self.includes(region, true, environment)
    }

    /// A stable name of the scope, for the lease and the applied-revision record: `*`, `sgp-1`,
    /// `sgp-1,fra-1`, `sgp-1/prod`, `*/dev`.
    pub fn label(&self) -> String {
        let regions = if self.regions.is_empty() {
            "*".to_owned()
        } else {
            self.regions.join(",")
        };
        if self.environments.is_empty() {
            regions
        } else {
            format!("{regions}/{}", self.environments.join(","))
        }
    }
}

/// Desired workspaces in `scope`.
pub fn desired_workspaces(model: &Model, scope: &Scope) -> BTreeMap<String, DesiredWorkspace> {
    model
        .workspaces
        .keys()
        .filter_map(|id| desired_workspace(model, id, scope))
        .map(|w| (w.id.clone(), w))
        .collect()
}

/// Adds to `desired` every workspace this control plane provisioned (`observed`) that the model
/// still has but now places outside `scope` — it moved region or environment. Planned as desired,
/// the move is refused (see the module docs); left out, it would look removed and be
/// deprovisioned.
pub fn add_moved_out(
    model: &Model,
    scope: &Scope,
    observed: &Observed,
    desired: &mut BTreeMap<String, DesiredWorkspace>,
) {
    for id in observed.workspaces.keys() {
        if desired.contains_key(id) {
            continue;
        }
        let Some(ws) = model.workspaces.get(id) else {
            continue; // really removed
        };
        let anywhere = Scope {
            regions: vec![ws.doc.spec.region.clone()],
            environments: Vec::new(),
        };
        debug_assert!(desired_workspace(model, id, scope).is_none());
        if let Some(d) = desired_workspace(model, id, &anywhere) {
            desired.insert(id.clone(), d);
        }
    }
}

/// One desired workspace, if it exists and is in `scope`.
pub fn desired_workspace(model: &Model, id: &str, scope: &Scope) -> Option<DesiredWorkspace> {
    let ws = model.workspaces.get(id)?;
    let spec = &ws.doc.spec;
    let region = model.regions.get(&spec.region)?;
    let live = region.doc.spec.status == cplane_schema::model::RegionStatus::Live;
    if !scope.includes(&spec.region, live, &spec.environment) {
        return None;
    }
    let names = names_for(model, &spec.region, &spec.environment);
    Some(DesiredWorkspace {
        id: id.to_owned(),
        region: spec.region.clone(),
        environment: spec.environment.clone(),
        account: spec.account.clone(),
        aws_account_id: spec.aws.account_id.clone(),
        aws_region: region.doc.spec.aws_region.clone(),
        role_arn: spec.aws.role_arn.clone(),
        external_id: spec.aws.external_id.clone(),
        zone_name: names.workspace_zone(id),
        parent_zone: region.doc.spec.parent_zone.clone(),
        bff_url: format!("https://{}", names.workspace_host(id, "bff")),
        deletion_policy: match spec.deletion_policy {
            DeletionPolicy::Retain => Policy::Retain,
            DeletionPolicy::Delete => Policy::Delete,
        },
    })
}

/// Lifecycle of a workspace row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being provisioned.
    Provisioning,
    /// Everything in place.
    Active,
    /// Being removed.
    Deprovisioning,
    /// Removed from the repo with `Retain`: cloud resources kept.
    Retained,
    /// Removed, cloud resources deleted.
    Deleted,
}

impl Status {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioning => "provisioning",
            Status::Active => "active",
            Status::Deprovisioning => "deprovisioning",
            Status::Retained => "retained",
            Status::Deleted => "deleted",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => Status::Provisioning,
            "active" => Status::Active,
            "deprovisioning" => Status::Deprovisioning,
            "retained" => Status::Retained,
            "deleted" => Status::Deleted,
            _ => return None,
        })
    }

    /// Whether the workspace is gone (its id may be reused).
    pub fn is_gone(self) -> bool {
        matches!(self, Status::Retained | Status::Deleted)
    }
}

/// A `workspaces` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedWorkspace {
    /// The fields as last applied.
    pub applied: DesiredWorkspace,
    /// Bumped when the id is re-created after deletion (keys differ per generation).
    pub generation: i64,
    /// Lifecycle.
    pub status: Status,
}

/// A `tenants` row (reference doc 001, step 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRow {
    /// `w-{id}`.
    pub workspace_id: String,
    /// Region id.
    pub region: String,
    /// Delegated zone name.
    pub delegated_zone: String,
    /// `active`, `retained`, `deleted`.
    pub status: String,
    /// BFF URL.
    pub bff_url: String,
}

/// A tenant → region lookup entry (step 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRow {
    /// Region id.
    pub region: String,
    /// BFF URL.
    pub bff_url: String,
}

/// Journaled cloud steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Hosted zone in the tenant account.
    CreateZone,
    /// NS delegation in the operator's parent zone.
    DelegateZone,
    /// Wildcard certificate in the tenant account.
    RequestCertificate,
    /// Validation CNAMEs in the tenant zone.
    ValidationRecords,
    /// Wait for ISSUED.
    AwaitCertificate,
    /// Remove the NS delegation.
    RemoveDelegation,
    /// Delete the certificate.
    DeleteCertificate,
    /// Delete the validation CNAMEs.
    DeleteValidationRecords,
    /// Delete the zone.
    DeleteZone,
    /// Write the global tenant → region entry (step 8).
    PublishLookup,
    /// Remove the global tenant → region entry.
    UnpublishLookup,
    /// Create or restore the workspace's Keycloak client (step 9).
    IdentityClient,
    /// Disable the Keycloak client (removed with `Retain`).
    DisableIdentityClient,
    /// Delete the Keycloak client (removed with `Delete`).
    DeleteIdentityClient,
}

impl StepKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::CreateZone => "create_zone",
            StepKind::DelegateZone => "delegate_zone",
            StepKind::RequestCertificate => "request_certificate",
            StepKind::ValidationRecords => "validation_records",
            StepKind::AwaitCertificate => "await_certificate",
            StepKind::RemoveDelegation => "remove_delegation",
            StepKind::DeleteCertificate => "delete_certificate",
            StepKind::DeleteValidationRecords => "delete_validation_records",
            StepKind::DeleteZone => "delete_zone",
            StepKind::PublishLookup => "publish_lookup",
            StepKind::UnpublishLookup => "unpublish_lookup",
            StepKind::IdentityClient => "identity_client",
            StepKind::DisableIdentityClient => "disable_identity_client",
            StepKind::DeleteIdentityClient => "delete_identity_client",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            StepKind::CreateZone,
            StepKind::DelegateZone,
            StepKind::RequestCertificate,
            StepKind::ValidationRecords,
            StepKind::AwaitCertificate,
            StepKind::RemoveDelegation,
            StepKind::DeleteCertificate,
            StepKind::DeleteValidationRecords,
            StepKind::DeleteZone,
            StepKind::PublishLookup,
            StepKind::UnpublishLookup,
            StepKind::IdentityClient,
            StepKind::DisableIdentityClient,
            StepKind::DeleteIdentityClient,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// State of a journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalState {
    /// Key written, call made or about to be: outcome unknown until `done`.
    Started,
    /// Result recorded.
    Done,
    /// Last attempt failed (retried on the next run).
    Failed,
}

/// One journal entry, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// State.
    pub state: JournalState,
    /// Result of the step, e.g. the zone's name servers (absent until first done).
    pub result: Option<StepResult>,
}

/// Everything observed before planning.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `workspaces` rows by id.
    pub workspaces: BTreeMap<String, ObservedWorkspace>,
    /// `tenants` rows by workspace id (no `w-`).
    pub tenants: BTreeMap<String, TenantRow>,
    /// Why the `tenants` rows could not be read (the primary region unreachable), when they
    /// could not: then every workspace's row is written again (an idempotent upsert), so none
    /// is lost while the primary is away.
    pub tenants_unobserved: Option<String>,
    /// Lookup entries by workspace id (no `w-`).
    pub lookup: BTreeMap<String, LookupRow>,
    /// Journal by (workspace id, step).
    pub journal: BTreeMap<(String, StepKind), JournalEntry>,
    /// Drift check: NS values found in the parent zones per delegated zone name (absent =
    /// no delegation). `None` when no drift check ran.
    pub delegations: Option<BTreeMap<String, Vec<String>>>,
    /// Drift check: validation CNAMEs found in the tenant zones of the workspaces checked this
    /// time (a rotating sample: each check reads only a slice of tenant zones), as
    /// workspace → record name → values. Workspaces absent from the map were not checked.
    pub validation: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Drift check: what else was wrong in the tenant accounts of the workspaces checked this
    /// time (only workspaces with something wrong are present).
    pub tenant_drift: BTreeMap<String, TenantDrift>,
    /// Drift check of step 8: the global sink's entries of the workspaces read, by workspace
    /// id (absent: no entry). `None` when the sink was not read.
    pub lookup_sink: Option<BTreeMap<String, LookupRow>>,
    /// Drift check of step 9: the workspaces' Keycloak clients found in their realms, by
    /// workspace id (absent: no client). `None` when the realms were not read.
    pub identity_clients: Option<BTreeMap<String, IdentityClient>>,
}

/// What a drift check found wrong in a workspace's tenant account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantDrift {
    /// The journaled hosted zone is gone.
    pub zone: Option<ZoneDrift>,
    /// The journaled certificate can no longer serve.
    pub certificate: Option<CertificateDrift>,
}

/// A tenant zone found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneDrift {
    /// Deleted, and no zone of that name is in the account: created again.
    Deleted {
        /// The deleted zone's id.
        zone_id: String,
    },
    /// Deleted, and other zones of that name are in the account (not cplane's): reported,
    /// never guessed at.
    Replaced {
        /// The deleted zone's id.
        zone_id: String,
        /// The zones of that name found instead.
        found: Vec<String>,
    },
}

/// A certificate found unable to serve: it is replaced by a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateDrift {
    /// Deleted.
    Deleted {
        /// Its ARN.
        arn: String,
    },
    /// `FAILED`, `EXPIRED`, `REVOKED`, `VALIDATION_TIMED_OUT` or `INACTIVE`.
    Unusable {
        /// Its ARN.
        arn: String,
        /// Its status.
        status: String,
    },
    /// `ISSUED`, but expiring within the renewal window and not renewed by ACM.
    Expiring {
        /// Its ARN.
        arn: String,
        /// When it expires (RFC 3339, UTC).
        not_after: String,
    },
}

impl CertificateDrift {
    /// The ARN of the certificate being replaced.
    pub fn arn(&self) -> &str {
        match self {
            CertificateDrift::Deleted { arn }
            | CertificateDrift::Unusable { arn, .. }
            | CertificateDrift::Expiring { arn, .. } => arn,
        }
    }

    /// Why it is replaced (a plan step's reason).
    pub fn reason(&self) -> String {
        match self {
            CertificateDrift::Deleted { .. } => "drift: certificate deleted".into(),
            CertificateDrift::Unusable { status, .. } => format!("drift: certificate {status}"),
            CertificateDrift::Expiring { not_after, .. } => {
                format!("drift: certificate expires {not_after}, not renewed")
            }
        }
    }
}

/// Knobs of one planning run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most workspaces one commit may remove without confirmation.
    pub max_deletions: usize,
    /// Deletions above the threshold were confirmed (flag or commit trailer).
    pub confirmed: bool,
    /// Deleting a removed workspace's zone also deletes the records cplane did not create
    /// (e.g. external-dns's); without it, the deletion waits and lists them.
    pub delete_foreign_records: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_deletions: 5,
            confirmed: false,
            delete_foreign_records: false,
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Upsert the `workspaces` row with the desired fields and this status.
    WriteWorkspace {
        /// New status.
        status: Status,
        /// Generation (keys of cloud steps derive from it).
        generation: i64,
    },
    /// Create the delegated zone in the tenant account.
    CreateZone {
        /// Zone name.
        zone: String,
        /// Deterministic Route53 CallerReference.
        caller_reference: String,
    },
    /// UPSERT the NS delegation in the parent zone (operator account).
    DelegateZone {
        /// Parent zone.
        parent_zone: String,
        /// Delegated zone.
        zone: String,
    },
    /// Request the wildcard certificate (tenant account).
    RequestCertificate {
        /// `*.zone`.
        domain: String,
        /// The zone apex.
        san: String,
        /// Deterministic ACM IdempotencyToken.
        token: String,
    },
    /// UPSERT the validation CNAMEs into the tenant zone.
    ValidationRecords {
        /// Zone.
        zone: String,
    },
    /// Wait for the certificate to be ISSUED (requeue, never block).
    AwaitCertificate {
        /// Certificate domain.
        domain: String,
    },
    /// Upsert the `tenants` row.
    WriteTenant {
        /// The row.
        row: TenantRow,
    },
    /// Upsert the lookup entry.
    WriteLookup {
        /// The entry.
        row: LookupRow,
    },
    /// Remove the lookup entry.
    DeleteLookup,
    /// Remove the NS delegation (first, so no dangling delegation can be hijacked).
    RemoveDelegation {
        /// Parent zone.
        parent_zone: String,
        /// Delegated zone.
        zone: String,
    },
    /// Delete the certificate.
    DeleteCertificate {
        /// Certificate domain.
        domain: String,
    },
    /// Delete the validation CNAMEs.
    DeleteValidationRecords {
        /// Zone.
        zone: String,
    },
    /// Delete the delegated zone. Records in it that cplane did not create (e.g. external-dns's)
    /// make the step wait and list them, unless `delete_foreign_records`.
    DeleteZone {
        /// Zone.
        zone: String,
        /// Also delete the records cplane did not create ([`Options::delete_foreign_records`]).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        delete_foreign_records: bool,
    },
    /// Restore a deleted or altered NS delegation (drift).
    RepairDelegation {
        /// Parent zone.
        parent_zone: String,
        /// Delegated zone.
        zone: String,
    },
    /// Restore deleted or altered validation CNAMEs in the tenant zone (drift).
    RepairValidationRecords {
        /// Zone.
        zone: String,
    },
    /// Write the workspace's entry `w-{id} → {region, bff_url}` in the global map (step 8).
    PublishLookup {
        /// The sink: `cloudflare-kv` or `dynamodb`.
        sink: String,
        /// The entry.
        row: LookupRow,
        /// A drift repair.
        drift: bool,
    },
    /// Remove the workspace's entry from the global map.
    UnpublishLookup {
        /// The sink.
        sink: String,
    },
    /// Create the workspace's Keycloak client, or restore its fields (step 9).
    EnsureIdentityClient {
        /// The realm.
        realm: Realm,
        /// The fields cplane owns.
        client: IdentityClient,
        /// A drift repair.
        drift: bool,
    },
    /// Disable the workspace's Keycloak client (removed with `Retain`).
    DisableIdentityClient {
        /// The realm.
        realm: Realm,
    },
    /// Delete the workspace's Keycloak client (removed with `Delete`).
    DeleteIdentityClient {
        /// The realm.
        realm: Realm,
    },
}

impl Action {
    /// The journaled cloud step this action is, if any.
    pub fn step_kind(&self) -> Option<StepKind> {
        Some(match self {
            Action::CreateZone { .. } => StepKind::CreateZone,
            Action::DelegateZone { .. } | Action::RepairDelegation { .. } => StepKind::DelegateZone,
            Action::RequestCertificate { .. } => StepKind::RequestCertificate,
            Action::ValidationRecords { .. } | Action::RepairValidationRecords { .. } => {
                StepKind::ValidationRecords
            }
            Action::AwaitCertificate { .. } => StepKind::AwaitCertificate,
            Action::RemoveDelegation { .. } => StepKind::RemoveDelegation,
            Action::DeleteCertificate { .. } => StepKind::DeleteCertificate,
            Action::DeleteValidationRecords { .. } => StepKind::DeleteValidationRecords,
            Action::DeleteZone { .. } => StepKind::DeleteZone,
            Action::PublishLookup { .. } => StepKind::PublishLookup,
            Action::UnpublishLookup { .. } => StepKind::UnpublishLookup,
            Action::EnsureIdentityClient { .. } => StepKind::IdentityClient,
            Action::DisableIdentityClient { .. } => StepKind::DisableIdentityClient,
            Action::DeleteIdentityClient { .. } => StepKind::DeleteIdentityClient,
            Action::WriteWorkspace { .. }
            | Action::WriteTenant { .. }
            | Action::WriteLookup { .. }
            | Action::DeleteLookup => return None,
        })
    }

    /// Whether the action calls an outside system (AWS, the global lookup sink, Keycloak):
    /// a journaled step.
    pub fn is_cloud(&self) -> bool {
        self.step_kind().is_some()
    }

    /// Whether the action calls the global lookup sink or Keycloak (steps 8 and 9) rather
    /// than AWS.
    pub fn is_global(&self) -> bool {
        matches!(
            self,
            Action::PublishLookup { .. }
                | Action::UnpublishLookup { .. }
                | Action::EnsureIdentityClient { .. }
                | Action::DisableIdentityClient { .. }
                | Action::DeleteIdentityClient { .. }
        )
    }

    /// `+` create, `~` change, `-` destroy.
    pub fn symbol(&self) -> char {
        match self {
            Action::CreateZone { .. }
            | Action::DelegateZone { .. }
            | Action::RequestCertificate { .. }
            | Action::ValidationRecords { .. } => '+',
            Action::RemoveDelegation { .. }
            | Action::DeleteCertificate { .. }
            | Action::DeleteValidationRecords { .. }
            | Action::DeleteZone { .. }
            | Action::DeleteLookup
            | Action::UnpublishLookup { .. }
            | Action::DeleteIdentityClient { .. } => '-',
            Action::PublishLookup { drift: false, .. }
            | Action::EnsureIdentityClient { drift: false, .. } => '+',
            _ => '~',
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::WriteWorkspace { status, .. } => {
                write!(f, "db workspaces row (status {})", status.as_str())
            }
            Action::CreateZone { zone, .. } => {
                write!(f, "route53 hosted zone {zone} (tenant account)")
            }
            Action::DelegateZone { parent_zone, zone } => {
                write!(f, "route53 NS {zone} in {parent_zone} (operator account)")
            }
            Action::RequestCertificate { domain, san, .. } => {
                write!(f, "acm certificate {domain} + {san} (tenant account)")
            }
            Action::ValidationRecords { zone } => write!(f, "route53 validation CNAMEs in {zone}"),
            Action::AwaitCertificate { domain } => {
                write!(f, "wait for acm certificate {domain} to be ISSUED")
            }
            Action::WriteTenant { row } => write!(
                f,
                "db tenants row {} (status {})",
                row.workspace_id, row.status
            ),
            Action::WriteLookup { row } => {
                write!(f, "db lookup entry -> {} {}", row.region, row.bff_url)
            }
            Action::DeleteLookup => write!(f, "db lookup entry"),
            Action::RemoveDelegation { parent_zone, zone } => {
                write!(f, "route53 NS {zone} in {parent_zone} (operator account)")
            }
            Action::DeleteCertificate { domain } => {
                write!(f, "acm certificate {domain} (tenant account)")
            }
            Action::DeleteValidationRecords { zone } => {
                write!(f, "route53 validation CNAMEs in {zone}")
            }
            Action::DeleteZone {
                zone,
                delete_foreign_records,
            } => {
                write!(f, "route53 hosted zone {zone} (tenant account)")?;
                if *delete_foreign_records {
                    f.write_str(" with the records cplane did not create")?;
                }
                Ok(())
            }
            Action::RepairDelegation { parent_zone, zone } => {
                write!(f, "route53 NS {zone} in {parent_zone} (drift: restore)")
            }
            Action::RepairValidationRecords { zone } => {
                write!(f, "route53 validation CNAMEs in {zone} (drift: restore)")
            }
            Action::PublishLookup { sink, row, drift } => {
                write!(f, "{sink} lookup entry -> {} {}", row.region, row.bff_url)?;
                if *drift {
                    write!(f, " (drift: restore)")?;
                }
                Ok(())
            }
            Action::UnpublishLookup { sink } => write!(f, "{sink} lookup entry"),
            Action::EnsureIdentityClient {
                realm,
                client,
                drift,
            } => {
                write!(
                    f,
                    "keycloak client {} in realm {}",
                    client.client_id, realm.name
                )?;
                if *drift {
                    write!(f, " (drift: restore)")?;
                }
                Ok(())
            }
            Action::DisableIdentityClient { realm } => {
                write!(f, "keycloak client in realm {} (disable)", realm.name)
            }
            Action::DeleteIdentityClient { realm } => {
                write!(f, "keycloak client in realm {}", realm.name)
            }
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Workspace id.
    pub workspace: String,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Indexes (in [`Plan::steps`]) of the steps that must be done first.
    pub after: Vec<usize>,
    /// Why (shown in plans and status).
    pub reason: String,
}

/// A workspace change that cplane will not make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Workspace id.
    pub workspace: String,
    /// Why.
    pub message: String,
}

/// The plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Ordered steps (every step comes after the ones it names).
    pub steps: Vec<Step>,
    /// Changes refused.
    pub refused: Vec<Refusal>,
    /// Deletions held back, with the reason.
    pub held: Option<String>,
}

impl Plan {
    /// Nothing to do and nothing refused or held.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.refused.is_empty() && self.held.is_none()
    }

    /// Counts of (+, ~, -) steps.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |c| self.steps.iter().filter(|s| s.action.symbol() == c).count();
        (count('+'), count('~'), count('-'))
    }
}

/// The generation a workspace's cloud steps use: 1 for a new id, one more than before for an
/// id re-created after deletion, otherwise the recorded one. (The same rule as [`plan`].)
pub fn generation_of(observed: Option<&ObservedWorkspace>, desired: bool) -> i64 {
    match observed {
        None => 1,
        Some(w) if desired && w.status == Status::Deleted => w.generation + 1,
        Some(w) => w.generation,
    }
}

/// Deterministic Route53 CallerReference of a workspace's zone (max 128 characters).
pub fn caller_reference(w: &DesiredWorkspace, generation: i64) -> String {
    format!(
        "cplane/{}/{}/g{generation}",
        w.region,
        workspace_name(&w.id)
    )
}

/// Deterministic ACM IdempotencyToken (32 word characters) of a workspace's certificate.
pub fn certificate_token(w: &DesiredWorkspace, generation: i64) -> String {
    let digest = Sha256::digest(caller_reference(w, generation).as_bytes());
    hex::encode(digest)[..32].to_owned()
}

/// The CallerReference of a zone created again after `deleted_zone_id` was deleted by hand:
/// deterministic (a retry finds it), and new (a CallerReference is used once, forever).
pub fn recreate_caller_reference(
    w: &DesiredWorkspace,
    generation: i64,
    deleted_zone_id: &str,
) -> String {
    format!("{}/z{deleted_zone_id}", caller_reference(w, generation))
}

/// The IdempotencyToken of the certificate replacing `replaced_arn`.
pub fn replacement_token(w: &DesiredWorkspace, generation: i64, replaced_arn: &str) -> String {
    let key = format!(
        "{}/replaces/{replaced_arn}",
        caller_reference(w, generation)
    );
    hex::encode(Sha256::digest(key.as_bytes()))[..32].to_owned()
}

struct Builder<'a> {
    plan: Plan,
    workspace: &'a str,
    observed: &'a Observed,
    options: Options,
    providers: &'a Providers,
}

impl Builder<'_> {
    fn done(&self, kind: StepKind) -> bool {
        self.observed
            .journal
            .get(&(self.workspace.to_owned(), kind))
            .is_some_and(|j| j.state == JournalState::Done)
    }

    fn touched(&self, kind: StepKind) -> bool {
        self.observed
            .journal
            .contains_key(&(self.workspace.to_owned(), kind))
    }

    fn push(&mut self, action: Action, after: &[Option<usize>], reason: &str) -> Option<usize> {
        self.plan.steps.push(Step {
            workspace: self.workspace.to_owned(),
            action,
            after: after.iter().flatten().copied().collect(),
            reason: reason.to_owned(),
        });
        Some(self.plan.steps.len() - 1)
    }

    /// Plans the cloud step `kind` unless the journal has it done.
    fn cloud(
        &mut self,
        kind: StepKind,
        action: Action,
        after: &[Option<usize>],
        reason: &str,
    ) -> Option<usize> {
        if self.done(kind) {
            None
        } else {
            self.push(action, after, reason)
        }
    }
}

/// Computes the plan without steps 8 and 9 (no lookup sink, no Keycloak configured); see
/// [`plan_with`].
pub fn plan(
    desired: &BTreeMap<String, DesiredWorkspace>,
    observed: &Observed,
    options: Options,
) -> Plan {
    plan_with(desired, observed, options, &Providers::default())
}

/// Computes the plan, with steps 8 and 9 for the `providers` configured; see the module docs.
pub fn plan_with(
    desired: &BTreeMap<String, DesiredWorkspace>,
    observed: &Observed,
    options: Options,
    providers: &Providers,
) -> Plan {
    let mut plan = Plan::default();

    // Removals first decide whether deletions are held.
    let removed: Vec<&ObservedWorkspace> = observed
        .workspaces
        .iter()
        .filter(|(id, w)| !desired.contains_key(*id) && !w.status.is_gone())
        .map(|(_, w)| w)
        .collect();
    let hold = removed.len() > options.max_deletions && !options.confirmed;
    if hold {
        plan.held = Some(format!(
            "this revision removes {} workspaces ({}), more than the limit of {}: nothing is removed until confirmed (--confirm-deletions, or a commit with the trailer `Cplane-Confirm-Deletions: {}`)",
            removed.len(),
            removed.iter().map(|w| w.applied.id.as_str()).collect::<Vec<_>>().join(", "),
            options.max_deletions,
            removed.len()
        ));
    }

    let ids: std::collections::BTreeSet<&String> =
        desired.keys().chain(observed.workspaces.keys()).collect();
    for id in ids {
        let mut b = Builder {
            plan,
            workspace: id,
            observed,
            options,
            providers,
        };
        match (desired.get(id), observed.workspaces.get(id)) {
            (Some(want), Some(have))
                if !have.status.is_gone() || have.status == Status::Retained =>
            {
                if have.applied.region != want.region
                    || have.applied.environment != want.environment
                {
                    b.plan.refused.push(Refusal {
                        workspace: id.clone(),
                        message: format!(
                            "workspace {id} moved from {}/{} to {}/{}: its zone, certificate and records belong to the old region; remove it and add it under a new id",
                            have.applied.region, have.applied.environment, want.region, want.environment
                        ),
                    });
                } else if !have.applied.aws_region.is_empty()
                    && have.applied.aws_region != want.aws_region
                {
                    b.plan.refused.push(Refusal {
                        workspace: id.clone(),
                        message: format!(
                            "workspace {id} moved from AWS region {} to {} (its Region's spec.awsRegion changed): its certificate lives in {}; remove it and add it under a new id, or restore spec.awsRegion",
                            have.applied.aws_region, want.aws_region, have.applied.aws_region
                        ),
                    });
                } else {
                    provision(&mut b, want, have.generation, Some(have));
                }
            }
            (Some(_), Some(have))
                if have.status == Status::Deleted
                    && b.touched(StepKind::CreateZone)
                    && !b.done(StepKind::DeleteZone) =>
            {
                // A row says deleted while the journal says its zone never was: a hand edit.
                // A new generation would make a second zone and certificate; report it.
                b.plan.refused.push(Refusal {
                    workspace: id.clone(),
                    message: format!(
                        "drift: the workspaces row of {id} says `deleted`, but its journal never deleted its zone (generation {}): the row was edited by hand; set its status back (e.g. `active`) and cplane converges it",
                        have.generation
                    ),
                });
            }
            (Some(want), Some(have)) => provision(&mut b, want, have.generation + 1, None),
            (Some(want), None) => provision(&mut b, want, 1, None),
            (None, Some(have)) if !have.status.is_gone() && !hold => deprovision(&mut b, have),
            (None, _) => {}
        }
        plan = b.plan;
    }
    plan
}

fn provision(
    b: &mut Builder<'_>,
    want: &DesiredWorkspace,
    generation: i64,
    have: Option<&ObservedWorkspace>,
) {
    let fresh = have.is_none();
    let reason = if fresh { "new workspace" } else { "converge" };
    let o = b.observed;
    // A fresh generation starts with an empty journal (apply clears the old one first).
    let done = |b: &Builder<'_>, k| !fresh && b.done(k);
    let drift = if fresh {
        None
    } else {
        o.tenant_drift.get(&want.id)
    };
    if let Some(ZoneDrift::Replaced { zone_id, found }) = drift.and_then(|d| d.zone.as_ref()) {
        b.plan.refused.push(Refusal {
            workspace: want.id.clone(),
            message: format!(
                "drift: hosted zone {zone_id} ({}) was deleted from the tenant account, which now holds other zones of that name ({}) that cplane did not create: delete them, and cplane creates the zone again",
                want.zone_name,
                found.join(", ")
            ),
        });
        return;
    }
    // A zone deleted by hand is created again (a new CallerReference), then delegated and
    // given its validation records again.
    let recreate = match drift.and_then(|d| d.zone.as_ref()) {
        Some(ZoneDrift::Deleted { zone_id }) => Some(zone_id.as_str()),
        _ => None,
    };
    // A deleted, failed or expiring certificate is replaced by a new request.
    let replace = drift.and_then(|d| d.certificate.as_ref());

    let mut row = None;
    let row_differs = have.is_none_or(|h| h.applied != *want || h.status == Status::Retained);
    if row_differs {
        let status = have.map_or(Status::Provisioning, |h| {
            if h.status == Status::Retained {
                Status::Provisioning
            } else {
                h.status
            }
        });
        row = b.push(
            Action::WriteWorkspace { status, generation },
            &[],
            if fresh {
                "new workspace"
            } else {
                "workspace changed"
            },
        );
    }
    let zone = want.zone_name.clone();
    let create = if let Some(deleted) = recreate {
        b.push(
            Action::CreateZone {
                zone: zone.clone(),
                caller_reference: recreate_caller_reference(want, generation, deleted),
            },
            &[row],
            "drift: tenant zone deleted",
        )
    } else if done(b, StepKind::CreateZone) {
        None
    } else {
        b.push(
            Action::CreateZone {
                zone: zone.clone(),
                caller_reference: caller_reference(want, generation),
            },
            &[row],
            reason,
        )
    };
    // A workspace re-added after a `Retain` removal had its delegation removed: delegate again.
    let undelegated = done(b, StepKind::RemoveDelegation);
    let delegate = if recreate.is_some() && done(b, StepKind::DelegateZone) {
        b.push(
            Action::RepairDelegation {
                parent_zone: want.parent_zone.clone(),
                zone: zone.clone(),
            },
            &[create],
            "drift: tenant zone created again",
        )
    } else if done(b, StepKind::DelegateZone) && !undelegated {
        // Drift: the delegation was observed missing or altered.
        let expected = o
            .journal
            .get(&(want.id.clone(), StepKind::CreateZone))
            .and_then(|j| match &j.result {
                Some(StepResult::CreateZone { name_servers, .. }) => Some(name_servers.clone()),
                _ => None,
            });
        match (&o.delegations, expected) {
            (Some(found), Some(mut ns)) => {
                ns.sort();
                let mut got = found.get(&zone).cloned().unwrap_or_default();
                got.sort();
                if got != ns {
                    let why = if got.is_empty() {
                        "drift: NS delegation missing"
                    } else {
                        "drift: NS delegation altered"
                    };
                    b.push(
                        Action::RepairDelegation {
                            parent_zone: want.parent_zone.clone(),
                            zone: zone.clone(),
                        },
                        &[],
                        why,
                    )
                } else {
                    None
                }
            }
            _ => None,
        }
    } else {
        b.push(
            Action::DelegateZone {
                parent_zone: want.parent_zone.clone(),
                zone: zone.clone(),
            },
            &[create],
            if undelegated {
                "re-added: its delegation was removed"
            } else {
                reason
            },
        )
    };
    let domain = format!("*.{zone}");
    let replacement_reason = replace.map(CertificateDrift::reason);
    let request = if let Some(old) = replace {
        b.push(
            Action::RequestCertificate {
                domain: domain.clone(),
                san: zone.clone(),
                token: replacement_token(want, generation, old.arn()),
            },
            &[row],
            replacement_reason.as_deref().unwrap_or(reason),
        )
    } else if done(b, StepKind::RequestCertificate) {
        None
    } else {
        b.push(
            Action::RequestCertificate {
                domain: domain.clone(),
                san: zone.clone(),
                token: certificate_token(want, generation),
            },
            &[row],
            reason,
        )
    };
    // A certificate (being) requested again needs its records and its wait again, whatever
    // the journal says of the one before (apply forgets them once the new request is done).
    let records =
        if recreate.is_some() || (request.is_some() && done(b, StepKind::ValidationRecords)) {
            let why = if recreate.is_some() {
                "drift: tenant zone created again"
            } else if replace.is_some() {
                "drift: certificate replaced"
            } else {
                reason
            };
            b.push(
                Action::RepairValidationRecords { zone: zone.clone() },
                &[create, request],
                why,
            )
        } else if done(b, StepKind::ValidationRecords) {
            // Drift: compare the recorded validation CNAMEs with what a sampled check found.
            let expected: Vec<(String, Vec<String>)> = o
                .journal
                .get(&(want.id.clone(), StepKind::ValidationRecords))
                .and_then(|j| match &j.result {
                    Some(StepResult::ValidationRecords { records }) => Some(records),
                    _ => None,
                })
                .into_iter()
                .flatten()
                .map(|r| (r.name.clone(), r.values.clone()))
                .collect();
            match o.validation.get(&want.id) {
                Some(found)
                    if expected
                        .iter()
                        .any(|(name, values)| found.get(name) != Some(values)) =>
                {
                    b.push(
                        Action::RepairValidationRecords { zone: zone.clone() },
                        &[],
                        "drift: validation record missing or altered",
                    )
                }
                _ => None,
            }
        } else {
            b.push(
                Action::ValidationRecords { zone: zone.clone() },
                &[create, request],
                reason,
            )
        };
    let issued = if request.is_some() && done(b, StepKind::AwaitCertificate) {
        let why = if replace.is_some() {
            "drift: certificate replaced"
        } else {
            reason
        };
        b.push(Action::AwaitCertificate { domain }, &[records], why)
    } else if done(b, StepKind::AwaitCertificate) {
        None
    } else {
        b.push(Action::AwaitCertificate { domain }, &[records], reason)
    };

    let tenant = TenantRow {
        workspace_id: workspace_name(&want.id),
        region: want.region.clone(),
        delegated_zone: zone,
        status: "active".into(),
        bff_url: want.bff_url.clone(),
    };
    let tenant_step = match o.tenants.get(&want.id) {
        Some(row) if *row == tenant => None,
        found => {
            let re_added = have.is_some_and(|h| h.status == Status::Retained);
            let why = match (found, fresh || re_added || issued.is_some()) {
                (Some(_), false) => "drift: tenants row differs",
                (None, false) if o.tenants_unobserved.is_some() => {
                    "tenants rows not observed (primary region unreachable)"
                }
                _ => reason,
            };
            b.push(
                Action::WriteTenant { row: tenant },
                &[issued, delegate],
                why,
            )
        }
    };
    let lookup = LookupRow {
        region: want.region.clone(),
        bff_url: want.bff_url.clone(),
    };
    let lookup_step = match o.lookup.get(&want.id) {
        Some(row) if *row == lookup => None,
        found => {
            let why = if found.is_some() && !fresh {
                "drift: lookup entry differs"
            } else {
                reason
            };
            b.push(Action::WriteLookup { row: lookup }, &[tenant_step], why)
        }
    };
    let _ = (tenant_step, lookup_step);
    global::provision(b, want, have, lookup_step.or(tenant_step));
    if !have.is_some_and(|h| h.status == Status::Active) {
        // Mark active once everything above is in place.
        let last = b.plan.steps.len().checked_sub(1);
        b.push(
            Action::WriteWorkspace {
                status: Status::Active,
                generation,
            },
            &[last],
            "provisioned",
        );
    }
}

fn deprovision(b: &mut Builder<'_>, have: &ObservedWorkspace) {
    let w = &have.applied;
    let g = have.generation;
    let mark = if have.status == Status::Deprovisioning {
        None
    } else {
        b.push(
            Action::WriteWorkspace {
                status: Status::Deprovisioning,
                generation: g,
            },
            &[],
            "removed from the state repo",
        )
    };
    let lookup = if b.observed.lookup.contains_key(&w.id) {
        b.push(Action::DeleteLookup, &[mark], "removed from the state repo")
    } else {
        None
    };
    let mut last = lookup.or(mark);
    last = global::deprovision(b, have, last).or(last);
    let zone = w.zone_name.clone();
    // The delegation lives in the operator's parent zone: it goes whatever the policy, first,
    // since a delegation to a zone nobody watches is a subdomain-takeover risk.
    if b.touched(StepKind::DelegateZone) {
        last = b
            .cloud(
                StepKind::RemoveDelegation,
                Action::RemoveDelegation {
                    parent_zone: w.parent_zone.clone(),
                    zone: zone.clone(),
                },
                &[last],
                "removed, any deletionPolicy",
            )
            .or(last);
    }
    // `Retain` keeps what lives in the tenant's account: certificate, records, zone.
    if w.deletion_policy == Policy::Delete {
        let domain = format!("*.{zone}");
        let reason = "removed, deletionPolicy: Delete";
        if b.touched(StepKind::RequestCertificate) {
            last = b
                .cloud(
                    StepKind::DeleteCertificate,
                    Action::DeleteCertificate { domain },
                    &[last],
                    reason,
                )
                .or(last);
        }
        if b.touched(StepKind::ValidationRecords) {
            last = b
                .cloud(
                    StepKind::DeleteValidationRecords,
                    Action::DeleteValidationRecords { zone: zone.clone() },
                    &[last],
                    reason,
                )
                .or(last);
        }
        if b.touched(StepKind::CreateZone) {
            last = b
                .cloud(
                    StepKind::DeleteZone,
                    Action::DeleteZone {
                        zone,
                        delete_foreign_records: b.options.delete_foreign_records,
                    },
                    &[last],
                    reason,
                )
                .or(last);
        }
    }
    let (status, tenant_status) = match w.deletion_policy {
        Policy::Delete => (Status::Deleted, "deleted"),
        Policy::Retain => (Status::Retained, "retained"),
    };
    // The row as observed; unobserved (the primary region unreachable), the one this control
    // plane wrote, so the removal is still recorded once the primary answers.
    let row = b.observed.tenants.get(&w.id).cloned().or_else(|| {
        b.observed.tenants_unobserved.as_ref().map(|_| TenantRow {
            workspace_id: workspace_name(&w.id),
            region: w.region.clone(),
            delegated_zone: w.zone_name.clone(),
            status: String::new(),
            bff_url: w.bff_url.clone(),
        })
    });
    if let Some(mut row) = row {
        if row.status != tenant_status {
            row.status = tenant_status.into();
            last = b
                .push(
                    Action::WriteTenant { row },
                    &[last],
                    "removed from the state repo",
                )
                .or(last);
        }
    }
    b.push(
        Action::WriteWorkspace {
            status,
            generation: g,
        },
        &[last],
        "removed from the state repo",
    );
}

#[cfg(test)]
mod tests;
