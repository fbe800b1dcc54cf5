//! Apply: execute a [`Plan`] through the journal against the database and (optionally) the
//! cloud ([`Cloud`]: AWS, or an in-memory fake in tests).
//!
//! Guarantees:
//! - Before every mutating AWS call the journal holds the step's deterministic key (Route53
//!   CallerReference, ACM IdempotencyToken + ownership tags); after it, the result. A step found
//!   `started` from an earlier attempt has an unknown outcome: it is resolved by looking up
//!   (zone by CallerReference, certificate by tag), never by creating again.
//! - Waits (certificate validation) are requeues: the step reports [`Outcome::Waiting`] and the
//!   workspace's remaining steps wait for the next run. No thread blocks.
//! - Steps of one workspace run in order; workspaces run concurrently (bounded).
//! - With no cloud (`--cloud none`), cloud steps are skipped and say so; their journal entries
//!   stay open, so a later run with AWS does them.
//!
//! Assumptions: one applier at a time per region (the serve issue adds a lease).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::cloud::{Cloud, RecordSet, Target};
use crate::db::Db;
use crate::global::{Identity, LookupSink};
use crate::plan::{Action, DesiredWorkspace, Observed, Plan, Status, Step, StepKind, StepResult};

pub use cplane_core::status::{Outcome, Report};

mod global;

/// Called after every step, from worker tasks (progress output, metrics).
pub type Progress = Arc<dyn Fn(&Step, &Outcome) + Send + Sync>;

/// What apply works with.
#[derive(Clone)]
pub struct Context {
    /// Database.
    pub db: Db,
    /// The cloud (AWS, or a fake in tests), or `None` for `--cloud none`.
    pub cloud: Option<Arc<dyn Cloud>>,
    /// Commit being applied.
    pub commit: String,
    /// Desired workspaces (for rows of new and changed workspaces).
    pub desired: Arc<BTreeMap<String, DesiredWorkspace>>,
    /// What was observed before planning (rows of removed workspaces, generations).
    pub observed: Arc<Observed>,
    /// How many workspaces are worked on at once.
    pub concurrency: usize,
    /// Step 9's identity provider (Keycloak), when configured.
    pub identity: Option<Arc<dyn Identity>>,
    /// Step 8's global lookup sink, when configured.
    pub lookup_sink: Option<Arc<dyn LookupSink>>,
    parent_zones: Arc<Mutex<HashMap<String, String>>>,
    journal_cleared: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Context {
    /// A context for one run.
    pub fn new(
        db: Db,
        cloud: Option<Arc<dyn Cloud>>,
        commit: String,
        desired: BTreeMap<String, DesiredWorkspace>,
        observed: Observed,
    ) -> Self {
        Self {
            db,
            cloud,
            commit,
            desired: Arc::new(desired),
            observed: Arc::new(observed),
            concurrency: 8,
            identity: None,
            lookup_sink: None,
            parent_zones: Arc::default(),
            journal_cleared: Arc::default(),
        }
    }

    /// Where workspace `id` is provisioned: (region, environment), desired or as recorded.
    pub fn workspace_place(&self, id: &str) -> Option<(&str, &str)> {
        self.desired
            .get(id)
            .or_else(|| self.observed.workspaces.get(id).map(|w| &w.applied))
            .map(|w| (w.region.as_str(), w.environment.as_str()))
    }

    fn workspace(&self, id: &str) -> Option<DesiredWorkspace> {
        self.desired
            .get(id)
            .cloned()
            .or_else(|| self.observed.workspaces.get(id).map(|w| w.applied.clone()))
    }
}

/// Runs the plan. `progress` is called after every step (from worker tasks).
pub async fn apply(ctx: &Context, plan: &Plan, progress: Progress) -> Report {
    let mut by_workspace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in plan.steps.iter().enumerate() {
        by_workspace.entry(&s.workspace).or_default().push(i);
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(ctx.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (_, indexes) in by_workspace {
        let steps: Vec<(usize, Step)> = indexes
            .iter()
            .map(|i| (*i, plan.steps[*i].clone()))
            .collect();
        let ctx = ctx.clone();
        let limit = limit.clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore never closed");
            let mut out = Vec::new();
            let mut blocked: Option<String> = None;
            let mut cloud_skipped = false;
            for (i, step) in steps {
                let outcome = match &blocked {
                    Some(why) => Outcome::Skipped(format!("after {why}")),
                    None if cloud_skipped
                        && matches!(
                            step.action,
                            Action::WriteWorkspace {
                                status: Status::Active | Status::Deleted,
                                ..
                            }
                        ) =>
                    {
                        Outcome::Skipped(
                            "cloud steps were skipped (--cloud none); status unchanged".into(),
                        )
                    }
                    None => run_step(&ctx, &step).await,
                };
                match &outcome {
                    Outcome::Done(_) => {}
                    Outcome::Skipped(_) if step.action.is_cloud() => cloud_skipped = true,
                    Outcome::Skipped(_) => {}
                    Outcome::Waiting(_) | Outcome::Failed(_) => {
                        blocked.get_or_insert_with(|| {
                            format!("{} ({})", step.action, outcome.label())
                        });
                    }
                }
                progress(&step, &outcome);
                out.push((i, outcome));
            }
            out
        });
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.steps.len()];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(list) => {
                for (i, o) in list {
                    outcomes[i] = Some(o);
                }
            }
            Err(e) => tracing::error!("apply task failed: {e}"),
        }
    }
    Report {
        outcomes: outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Failed("worker task panicked".into())))
            .collect(),
    }
}

async fn run_step(ctx: &Context, step: &Step) -> Outcome {
    let result = if step.action.is_global() {
        global::step(ctx, step).await
    } else if step.action.is_cloud() {
        match &ctx.cloud {
            None => return Outcome::Skipped("--cloud none: AWS not called".into()),
            Some(cloud) => cloud_step(ctx, cloud.as_ref(), step).await,
        }
    } else {
        db_step(ctx, step).await
    };
    result.unwrap_or_else(|e| {
        tracing::debug!(workspace = %step.workspace, retryable = e.is_retryable(), "{}: {}", step.action, chain(&e));
        Outcome::Failed(e.to_string())
    })
}

/// An error with its causes, `outer: cause: root`, for logs (the step's outcome shows only
/// the outer message).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}

/// Why a step failed (it is retried on the next run either way; the journal makes that safe).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A cloud call failed.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::Error),
    /// A call to the lookup sink or Keycloak failed (steps 8 and 9).
    #[error(transparent)]
    Global(#[from] crate::global::Error),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The `tenants` rows' store (the primary region's, outside it) refused.
    #[error(transparent)]
    Tenants(#[from] crate::tenants::Error),
    /// The step's workspace is neither desired nor recorded (the plan is not this run's).
    #[error("workspace {0} is neither desired nor recorded")]
    UnknownWorkspace(String),
    /// An earlier step whose result this one needs is not done: `create_zone` or
    /// `request_certificate`.
    #[error("{}", match .0 {
        StepKind::CreateZone => "zone not created yet",
        StepKind::RequestCertificate => "certificate not requested yet",
        other => other.as_str(),
    })]
    NotDoneYet(StepKind),
    /// The region's parent zone is not in the operator account.
    #[error("parent zone {0} not found in the operator account")]
    ParentZoneMissing(String),
    /// Several hosted zones of the operator account have the parent zone's name.
    #[error("parent zone {name} is ambiguous: {found} hosted zones have that name in the operator account")]
    ParentZoneAmbiguous {
        /// The parent zone's name.
        name: String,
        /// How many hosted zones have it.
        found: usize,
    },
    /// A journal row holds another step's result. The journal checks the tag when it loads a
    /// row, so this takes a bug, not bad data; it fails the step rather than the worker.
    #[error("journal row {} holds a {} result", .row.as_str(), .found.as_str())]
    Misfiled {
        /// The row's step.
        row: StepKind,
        /// The step of the result found in it.
        found: StepKind,
    },
    /// A step given to the wrong executor (a bug): `kind` is `cloud` or `database`.
    #[error("not a {kind} step: {action}")]
    WrongExecutor {
        /// The executor: `cloud` or `database`.
        kind: &'static str,
        /// The action, as displayed.
        action: String,
    },
}

impl StepError {
    /// Whether a later attempt may succeed without anyone changing anything (throttling, a
    /// lost answer, the database unreachable). A missing earlier step or parent zone needs
    /// another step or a person first.
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Cloud(e) => e.is_retryable(),
            StepError::Global(e) => e.is_retryable(),
            StepError::Db(e) => e.is_retryable(),
            StepError::Tenants(e) => e.is_retryable(),
            StepError::UnknownWorkspace(_)
            | StepError::NotDoneYet(_)
            | StepError::ParentZoneMissing(_)
            | StepError::ParentZoneAmbiguous { .. }
            | StepError::Misfiled { .. }
            | StepError::WrongExecutor { .. } => false,
        }
    }
}

async fn db_step(ctx: &Context, step: &Step) -> Result<Outcome, StepError> {
    let id = &step.workspace;
    match &step.action {
        Action::WriteWorkspace { status, generation } => {
            let w = ctx
                .workspace(id)
                .ok_or_else(|| StepError::UnknownWorkspace(id.clone()))?;
            // A new generation starts with an empty journal: clear the old one once, at the
            // first row write of this run (the last one, marking it active, must not clear what
            // this run journaled).
            let old = ctx.observed.workspaces.get(id).map(|o| o.generation);
            let first = ctx.journal_cleared.lock().expect("lock").insert(id.clone());
            if first && old.is_some_and(|g| g != *generation) {
                ctx.db.clear_journal(id).await?;
            }
            ctx.db
                .write_workspace(&w, *generation, *status, &ctx.commit)
                .await?;
            Ok(Outcome::Done(format!("status {}", status.as_str())))
        }
        Action::WriteTenant { row } => match ctx.db.tenant_store().put(row).await {
            Ok(()) => Ok(Outcome::Done(format!("status {}", row.status))),
            // The primary region away (or this database): the step waits for the next run,
            // which writes the row again (an upsert), so it is never lost.
            Err(e) if e.is_retryable() => Ok(Outcome::Waiting(format!(
                "tenants row not written: {e}; retried on the next run"
            ))),
            Err(e) => Err(e.into()),
        },
        Action::WriteLookup { row } => {
            ctx.db.write_lookup(id, row).await?;
            Ok(Outcome::Done(format!("w-{id} -> {}", row.region)))
        }
        Action::DeleteLookup => {
            ctx.db.delete_lookup(id).await?;
            Ok(Outcome::Done("removed".into()))
        }
        other => Err(StepError::WrongExecutor {
            kind: "database",
            action: other.to_string(),
        }),
    }
}

/// Ownership tag on certificates: `cplane:workspace` = `w-{id}/g{generation}`.
pub const OWNER_TAG: &str = "cplane:workspace";

/// The IdempotencyToken a certificate was requested with, as a tag: a retry whose answer was
/// lost finds exactly that request's certificate (a replacement shares the owner tag with the
/// certificate it replaces).
pub const TOKEN_TAG: &str = "cplane:token";

/// After a replacement: a certificate that can no longer serve (failed, expired, revoked,
/// timed out, inactive) is deleted; an `ISSUED` one (expiring, perhaps still attached to a
/// load balancer) is left for ACM to expire. Returns what the step's output adds.
async fn retire_certificate(
    aws: &dyn Cloud,
    tenant: Target<'_>,
    old: &str,
) -> Result<String, StepError> {
    let status = match aws.describe_certificate(tenant, old).await {
        Ok(c) => c.status,
        Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    if matches!(status.as_str(), "ISSUED" | "PENDING_VALIDATION") {
        return Ok(format!(", replacing {old} ({status}, left to expire)"));
    }
    aws.delete_certificate(tenant, old).await?;
    Ok(format!(", replacing {old} ({status}, deleted)"))
}

fn owner(ctx: &Context, id: &str) -> String {
    format!("w-{id}/g{}", generation(ctx, id))
}

fn generation(ctx: &Context, id: &str) -> i64 {
    crate::plan::generation_of(
        ctx.observed.workspaces.get(id),
        ctx.desired.contains_key(id),
    )
}

async fn parent_zone_id(ctx: &Context, aws: &dyn Cloud, name: &str) -> Result<String, StepError> {
    if let Some(id) = ctx.parent_zones.lock().expect("lock").get(name) {
        return Ok(id.clone());
    }
    let zones = aws.zones_by_name(Target::Operator, name).await?;
    let id = match zones.as_slice() {
        [one] => one.id.clone(),
        [] => return Err(StepError::ParentZoneMissing(name.to_owned())),
        many => {
            return Err(StepError::ParentZoneAmbiguous {
                name: name.to_owned(),
                found: many.len(),
            })
        }
    };
    ctx.parent_zones
        .lock()
        .expect("lock")
        .insert(name.to_owned(), id.clone());
    Ok(id)
}

/// The zone a workspace's `create_zone` step recorded: (zone id, name servers).
async fn created_zone(db: &Db, id: &str) -> Result<Option<(String, Vec<String>)>, StepError> {
    match db.journal_result(id, StepKind::CreateZone).await? {
        Some(StepResult::CreateZone {
            zone_id,
            name_servers,
        }) => Ok(Some((zone_id, name_servers))),
        other => other.map_or(Ok(None), |r| Err(misfiled(StepKind::CreateZone, &r))),
    }
}

/// The certificate ARN a workspace's `request_certificate` step recorded.
async fn requested_certificate(db: &Db, id: &str) -> Result<Option<String>, StepError> {
    match db.journal_result(id, StepKind::RequestCertificate).await? {
        Some(StepResult::RequestCertificate { arn }) => Ok(Some(arn)),
        other => other.map_or(Ok(None), |r| {
            Err(misfiled(StepKind::RequestCertificate, &r))
        }),
    }
}

/// The validation records a workspace's `validation_records` step wrote.
async fn written_validation_records(
    db: &Db,
    id: &str,
) -> Result<Option<Vec<RecordSet>>, StepError> {
    match db.journal_result(id, StepKind::ValidationRecords).await? {
        Some(StepResult::ValidationRecords { records }) => Ok(Some(records)),
        other => other.map_or(Ok(None), |r| Err(misfiled(StepKind::ValidationRecords, &r))),
    }
}

/// Why a zone deletion waits: the records in it that cplane did not create, listed (up to ten).
fn foreign_records_message(foreign: &[RecordSet]) -> String {
    const SHOWN: usize = 10;
    let mut list: Vec<String> = foreign
        .iter()
        .take(SHOWN)
        .map(|r| format!("{} {}", r.name, r.rtype))
        .collect();
    if foreign.len() > SHOWN {
        list.push(format!("and {} more", foreign.len() - SHOWN));
    }
    format!(
        "zone holds {} record set(s) cplane did not create: {}; delete them, or run with --delete-foreign-records to delete them with the zone",
        foreign.len(),
        list.join(", ")
    )
}

fn misfiled(row: StepKind, result: &StepResult) -> StepError {
    StepError::Misfiled {
        row,
        found: result.kind(),
    }
}

async fn cloud_step(ctx: &Context, aws: &dyn Cloud, step: &Step) -> Result<Outcome, StepError> {
    let id = step.workspace.as_str();
    let w = ctx
        .workspace(id)
        .ok_or_else(|| StepError::UnknownWorkspace(id.to_owned()))?;
    let tenant = Target::Tenant {
        role_arn: &w.role_arn,
        external_id: &w.external_id,
        aws_region: &w.aws_region,
    };
    let db = &ctx.db;
    let kind = step
        .action
        .step_kind()
        .expect("cloud steps have a journal kind");

    let outcome = match &step.action {
        Action::CreateZone {
            zone,
            caller_reference,
        } => {
            // A zone created again after a deletion (drift) has a CallerReference of its own;
            // a create begun and not done is resumed with the one it was begun with.
            let caller_reference = match db.journal_pending(id, kind).await? {
                Some((begun, _)) => begun,
                None => caller_reference.clone(),
            };
            let caller_reference = &caller_reference;
            let attempt = db.journal_begin(id, kind, caller_reference).await?;
            // A second attempt may follow a create whose answer was lost: look up first.
            let found = if attempt > 1 {
                aws.zone_by_caller_reference(tenant, zone, caller_reference)
                    .await?
            } else {
                None
            };
            let z = match found {
                Some(z) => z,
                None => aws.create_zone(tenant, zone, caller_reference).await?,
            };
            db.journal_done(
                id,
                &StepResult::CreateZone {
                    zone_id: z.id.clone(),
                    name_servers: z.name_servers,
                },
            )
            .await?;
            Outcome::Done(format!(
                "zone {} ({})",
                z.id,
                if attempt > 1 { "recovered" } else { "created" }
            ))
        }
        Action::DelegateZone { parent_zone, zone }
        | Action::RepairDelegation { parent_zone, zone } => {
            let (_, ns) = created_zone(db, id)
                .await?
                .ok_or(StepError::NotDoneYet(StepKind::CreateZone))?;
            let parent = parent_zone_id(ctx, aws, parent_zone).await?;
            db.journal_begin(id, kind, zone).await?;
            let record = RecordSet {
                name: zone.clone(),
                rtype: "NS".into(),
                ttl: 300,
                values: ns,
            };
            aws.upsert_records(Target::Operator, &parent, std::slice::from_ref(&record))
                .await?;
            db.journal_done(
                id,
                &StepResult::DelegateZone {
                    parent_zone_id: parent,
                    record,
                },
            )
            .await?;
            // Delegated again after a `Retain` removal: the removal no longer holds.
            db.journal_forget(id, StepKind::RemoveDelegation).await?;
            Outcome::Done(format!("NS in {parent_zone}"))
        }
        Action::RequestCertificate { domain, san, token } => {
            let tag = owner(ctx, id);
            // A replacement (drift: the recorded certificate was deleted, failed or expires)
            // has a token of its own and replaces the recorded certificate. A request begun
            // and not done is resumed with the token it was begun with, whatever was planned.
            let (token, replaced) = match db.journal_pending(id, kind).await? {
                Some((begun, previous)) => (begun, previous),
                None => (token.clone(), requested_certificate(db, id).await?),
            };
            let token = &token;
            let attempt = db.journal_begin(id, kind, token).await?;
            let found = if attempt > 1 {
                // By the request's own token tag; certificates requested before that tag
                // existed are found by the owner tag (only the generation's first request).
                let mut found = aws
                    .find_certificate(tenant, domain, (TOKEN_TAG, token))
                    .await?;
                if found.is_none()
                    && *token == crate::plan::certificate_token(&w, generation(ctx, id))
                {
                    found = aws
                        .find_certificate(tenant, domain, (OWNER_TAG, &tag))
                        .await?;
                }
                found.map(|c| c.arn)
            } else {
                None
            };
            let arn = match found {
                Some(arn) => arn,
                None => {
                    aws.request_certificate(
                        tenant,
                        domain,
                        &[san.as_str()],
                        token,
                        &[
                            (OWNER_TAG, tag.as_str()),
                            (TOKEN_TAG, token.as_str()),
                            ("cplane:region", w.region.as_str()),
                        ],
                    )
                    .await?
                }
            };
            let mut done = format!("certificate {arn}");
            db.journal_done(id, &StepResult::RequestCertificate { arn: arn.clone() })
                .await?;
            if let Some(old) = replaced.filter(|old| *old != arn) {
                // The new certificate needs its validation records and its wait again.
                db.journal_forget(id, StepKind::ValidationRecords).await?;
                db.journal_forget(id, StepKind::AwaitCertificate).await?;
                done.push_str(&retire_certificate(aws, tenant, &old).await?);
            }
            Outcome::Done(done)
        }
        Action::ValidationRecords { zone } | Action::RepairValidationRecords { zone } => {
            let (zone_id, _) = created_zone(db, id)
                .await?
                .ok_or(StepError::NotDoneYet(StepKind::CreateZone))?;
            let arn = requested_certificate(db, id)
                .await?
                .ok_or(StepError::NotDoneYet(StepKind::RequestCertificate))?;
            let c = aws.describe_certificate(tenant, &arn).await?;
            if c.validation_records.is_empty() {
                return Ok(Outcome::Waiting(
                    "ACM has not published the validation records yet".into(),
                ));
            }
            db.journal_begin(id, kind, zone).await?;
            aws.upsert_records(tenant, &zone_id, &c.validation_records)
                .await?;
            let done = format!("{} validation record(s)", c.validation_records.len());
            db.journal_done(
                id,
                &StepResult::ValidationRecords {
                    records: c.validation_records,
                },
            )
            .await?;
            Outcome::Done(done)
        }
        Action::AwaitCertificate { .. } => {
            let arn = requested_certificate(db, id)
                .await?
                .ok_or(StepError::NotDoneYet(StepKind::RequestCertificate))?;
            let c = aws.describe_certificate(tenant, &arn).await?;
            match c.status.as_str() {
                "ISSUED" => {
                    db.journal_begin(id, kind, &arn).await?;
                    db.journal_done(
                        id,
                        &StepResult::AwaitCertificate {
                            arn: Some(arn),
                            status: c.status,
                        },
                    )
                    .await?;
                    Outcome::Done("ISSUED".into())
                }
                "PENDING_VALIDATION" => {
                    Outcome::Waiting("certificate pending DNS validation".into())
                }
                other => Outcome::Failed(format!("certificate {arn} is {other}")),
            }
        }
        Action::RemoveDelegation { parent_zone, zone } => {
            let parent = parent_zone_id(ctx, aws, parent_zone).await?;
            db.journal_begin(id, kind, zone).await?;
            let current: Vec<RecordSet> = aws
                .list_records(Target::Operator, &parent)
                .await?
                .into_iter()
                .filter(|r| r.rtype == "NS" && r.name == *zone)
                .collect();
            aws.delete_records(Target::Operator, &parent, &current)
                .await?;
            db.journal_done(
                id,
                &StepResult::RemoveDelegation {
                    removed: current.len(),
                },
            )
            .await?;
            Outcome::Done(format!("NS removed from {parent_zone}"))
        }
        Action::DeleteCertificate { domain } => {
            let tag = owner(ctx, id);
            db.journal_begin(id, kind, domain).await?;
            let arn = match requested_certificate(db, id).await? {
                Some(arn) => Some(arn),
                None => aws
                    .find_certificate(tenant, domain, (OWNER_TAG, &tag))
                    .await?
                    .map(|c| c.arn),
            };
            if let Some(arn) = &arn {
                match aws.delete_certificate(tenant, arn).await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() => {
                        return Ok(Outcome::Waiting(format!("certificate still in use: {e}")))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            db.journal_done(id, &StepResult::DeleteCertificate { arn })
                .await?;
            Outcome::Done("certificate deleted".into())
        }
        Action::DeleteValidationRecords { zone } => {
            let Some((zone_id, _)) = created_zone(db, id).await? else {
                return Ok(Outcome::Done("no zone, no records".into()));
            };
            let records = written_validation_records(db, id)
                .await?
                .unwrap_or_default();
            db.journal_begin(id, kind, zone).await?;
            aws.delete_records(tenant, &zone_id, &records).await?;
            db.journal_done(
                id,
                &StepResult::DeleteValidationRecords {
                    removed: records.len(),
                },
            )
            .await?;
            Outcome::Done(format!("{} record(s) deleted", records.len()))
        }
        Action::DeleteZone {
            zone,
            delete_foreign_records,
        } => {
            let caller_reference = crate::plan::caller_reference(&w, generation(ctx, id));
            db.journal_begin(id, kind, &caller_reference).await?;
            let zone_id = match created_zone(db, id).await? {
                Some((zone_id, _)) => Some(zone_id),
                None => aws
                    .zone_by_caller_reference(tenant, zone, &caller_reference)
                    .await?
                    .map(|z| z.id),
            };
            if let Some(zone_id) = &zone_id {
                // Route53 refuses to delete a zone holding more than its apex records. What is
                // left after cplane deleted its own records was written by someone else
                // (external-dns, a person): never deleted silently.
                match aws.list_records(tenant, zone_id).await {
                    Ok(records) => {
                        let foreign: Vec<RecordSet> = records
                            .into_iter()
                            .filter(|r| !(r.name == *zone && (r.rtype == "SOA" || r.rtype == "NS")))
                            .collect();
                        if !foreign.is_empty() {
                            if !delete_foreign_records {
                                return Ok(Outcome::Waiting(foreign_records_message(&foreign)));
                            }
                            aws.delete_records(tenant, zone_id, &foreign).await?;
                        }
                        aws.delete_zone(tenant, zone_id).await?;
                    }
                    // Deleted already (an earlier attempt whose answer was lost).
                    Err(e) if e.code() == Some("NoSuchHostedZone") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            db.journal_done(id, &StepResult::DeleteZone { zone_id })
                .await?;
            Outcome::Done("zone deleted".into())
        }
        other => {
            return Err(StepError::WrongExecutor {
                kind: "cloud",
                action: other.to_string(),
            })
        }
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Transport;

    #[test]
    fn step_errors_keep_their_messages_and_causes() {
        let cloud = StepError::from(crate::cloud::Error::Call {
            op: "route53:CreateHostedZone",
            code: "transport".into(),
            message: "connection reset".into(),
            retryable: true,
            source: Some(Box::new(Transport)),
        });
        assert!(cloud.is_retryable());
        assert_eq!(
            cloud.to_string(),
            "route53:CreateHostedZone: transport: connection reset"
        );
        assert_eq!(
            chain(&cloud),
            "route53:CreateHostedZone: transport: connection reset: dispatch failure"
        );
        let quota = StepError::from(crate::cloud::Error::Quota {
            op: "acm:RequestCertificate",
            message: "too many".into(),
        });
        assert!(!quota.is_retryable());

        // The messages of the string errors they replace, unchanged.
        for (e, text) in [
            (
                StepError::NotDoneYet(StepKind::CreateZone),
                "zone not created yet",
            ),
            (
                StepError::NotDoneYet(StepKind::RequestCertificate),
                "certificate not requested yet",
            ),
            (
                StepError::ParentZoneMissing("sgp-1.cogrion.com".into()),
                "parent zone sgp-1.cogrion.com not found in the operator account",
            ),
            (
                StepError::ParentZoneAmbiguous {
                    name: "sgp-1.cogrion.com".into(),
                    found: 2,
                },
                "parent zone sgp-1.cogrion.com is ambiguous: 2 hosted zones have that name in the operator account",
            ),
            (
                StepError::UnknownWorkspace("acme".into()),
                "workspace acme is neither desired nor recorded",
            ),
            (
                StepError::Misfiled {
                    row: StepKind::CreateZone,
                    found: StepKind::DeleteZone,
                },
                "journal row create_zone holds a delete_zone result",
            ),
        ] {
            assert_eq!(e.to_string(), text);
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
