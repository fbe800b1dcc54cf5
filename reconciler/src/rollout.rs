//! Rollouts (issue 16): a revision whose stack change alters many clusters' bundles publishes
//! them wave by wave, each wave behind a health gate, instead of all at once.
//!
//! - [`publish`] (called by every run after apply): bundles of new clusters, and changes no
//!   policy covers, are published at once (sync windows and `spec.suspend` permitting); a
//!   stack change with a policy becomes a rollout in the database, its first wave published
//!   at once by [`advance`].
//! - [`advance`] (the lease holder's driver, every [`TICK`] and on every agent report; also
//!   once at the end of `cplane apply`): publishes the current wave (at most `maxUnavailable`
//!   clusters not yet healthy at once), judges the gate from agents' reports, bakes, and moves
//!   on, or pauses (aborts) on a failed gate. It judges a gate from each report's digest and
//!   health, reading only the reports that can change the verdict ([`Db::wave_gate`]); the
//!   per-object results only for a report of the target digest that is not healthy, and then
//!   once per report ([`Judged`]).
//! - [`control`]: pause, resume, promote, abort, recorded with who did it.
//!
//! # Guarantees
//! - Crash-safe: every decision is a row; a restarted (or another) control plane resumes from
//!   the rows. Moves of a rollout are conditional updates, so two replicas cannot both move it.
//! - Sync windows and `spec.suspend` are those of the newest revision applied, also for the
//!   clusters of a rollout a former revision started.
//! - A cluster not yet reached keeps its bundle; a newer revision supersedes an active rollout:
//!   its clusters not yet reached are skipped there and wait for the new rollout, so no cluster
//!   is ever pointed back at an older bundle than it has.
//! - An aborted rollout's clusters stay as they are until a later revision changes them again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use cplane_core::rollout::{self as core, ClusterState, Report, RolloutState};
use cplane_schema::model::{RolloutPolicy, SyncWindow};
use cplane_schema::Model;

use crate::db::{Db, Error, RolloutCluster, RolloutRow};
use crate::reconcile::Publishable;

/// How often the driver looks at rollouts that are progressing or baking (agents' reports,
/// operators' controls and reconcile runs also wake it).
pub const TICK: Duration = Duration::from_millis(250);

/// How often it looks when none is (a control from `cplane rollout`, which cannot wake a
/// server; a replica that became the leader; a sync window that opened): two small queries, so
/// an idle server does next to nothing.
pub const IDLE_TICK: Duration = Duration::from_secs(2);

/// What a run needs of the model to publish: taken from it once, so the run can drop the model.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Each stack's fingerprint.
    pub fingerprints: BTreeMap<String, String>,
    /// Rollout policies by stack, and the platform's default (key `""`).
    pub policies: BTreeMap<String, RolloutPolicy>,
    /// Workspaces by cluster id: labels, suspended, sync windows.
    pub workspaces: HashMap<String, WorkspaceInput>,
    /// The platform's sync windows.
    pub windows: Vec<SyncWindow>,
}

/// A workspace as rollouts see it.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceInput {
    /// Its id.
    pub id: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.suspend`.
    pub suspended: bool,
    /// `spec.syncWindows`.
    pub windows: Vec<SyncWindow>,
}

impl Input {
    /// From a validated model.
    pub fn from_model(model: &Model) -> Self {
        let mut policies: BTreeMap<String, RolloutPolicy> = model
            .stacks
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.entity.doc.spec.rollout.clone()?)))
            .collect();
        if let Some(p) = &model.platform.doc.spec.rollout {
            policies.insert(String::new(), (**p).clone());
        }
        Self {
            fingerprints: core::stack_fingerprints(model),
            policies,
            workspaces: model
                .workspaces
                .iter()
                .map(|(id, w)| {
                    (
                        format!("w-{id}"),
                        WorkspaceInput {
                            id: id.clone(),
                            labels: w.doc.metadata.labels.clone(),
                            suspended: w.doc.spec.suspend,
                            windows: w.doc.spec.sync_windows.clone(),
                        },
                    )
                })
                .collect(),
            windows: model.platform.doc.spec.sync_windows.clone(),
        }
    }

    fn policy(&self, changed: &[String]) -> Option<&RolloutPolicy> {
        if changed.is_empty() {
            return None;
        }
        changed
            .iter()
            .find_map(|s| self.policies.get(s))
            .or_else(|| self.policies.get(""))
    }

    fn windows_of(&self, cluster: &str) -> Vec<SyncWindow> {
        let mut w = self.windows.clone();
        if let Some(ws) = self.workspaces.get(cluster) {
            w.extend(ws.windows.iter().cloned());
        }
        w
    }

    fn suspended(&self, cluster: &str) -> bool {
        self.workspaces.get(cluster).is_some_and(|w| w.suspended)
    }
}

/// The digests a run should compare rendered bundles with: the published ones, overlaid by
/// those rollouts have bound clusters to (so a cluster waiting in a rollout is not a change).
pub async fn decided_digests(db: &Db) -> Result<BTreeMap<String, String>, Error> {
    let mut digests = db.cluster_digests().await?;
    digests.extend(db.rollout_targets().await?);
    Ok(digests)
}

fn kind_label(c: &crate::render::Cluster) -> &'static str {
    match c.kind {
        crate::render::ClusterKind::Platform => "platform",
        crate::render::ClusterKind::Tenant => "tenant",
    }
}

/// Publishes a run's changed bundles (see the module docs). Returns what was published at
/// once: (cluster, digest, generation).
pub async fn publish(
    db: &Db,
    commit: &str,
    input: Option<&Input>,
    bundles: &[Publishable],
    now: i64,
) -> Result<Vec<(String, String, i64)>, Error> {
    let current = db.cluster_digests().await?;
    let decided = db.rollout_targets().await?;
    let empty = Input::default();
    let given = input.is_some();
    let input = input.unwrap_or(&empty);
    let before = db.stack_fingerprints().await?;
    let changed = core::changed_stacks(&before, &input.fingerprints);
    let policy = input.policy(&changed);
    let mut published = Vec::new();
    let mut gated = Vec::new();
    for (cluster, digest, gz) in bundles {
        if current.get(&cluster.id) == Some(digest) || decided.get(&cluster.id) == Some(digest) {
            continue;
        }
        db.store_bundle_gz(digest, gz).await?;
        // A new cluster has nothing to protect; a change no policy covers goes at once.
        let gate = policy.is_some() && current.contains_key(&cluster.id);
        let allowed = !input.suspended(&cluster.id)
            && cplane_schema::rollout::windows_allow(&input.windows_of(&cluster.id), now);
        if !gate && allowed {
            let generation = db
                .point_cluster(
                    &cluster.id,
                    kind_label(cluster),
                    &cluster.region,
                    &cluster.environment,
                    digest,
                )
                .await?;
            published.push((cluster.id.clone(), digest.clone(), generation));
        } else if !gate && input.suspended(&cluster.id) {
            tracing::info!(cluster = %cluster.id, "workspace suspended: bundle held");
        } else {
            gated.push((cluster, digest));
        }
    }
    let suspended: Vec<String> = input
        .workspaces
        .iter()
        .filter(|(_, w)| w.suspended)
        .map(|(c, _)| c.clone())
        .collect();
    db.set_rollout_suspended(&suspended, commit).await?;
    // Windows as this revision gives them (an operator adding a deny window mid-rollout means
    // it now), for the clusters of active rollouts whose windows changed.
    let windows: Vec<_> = if given {
        db.rollout_windows().await?
    } else {
        Vec::new()
    }
    .into_iter()
    .filter_map(|(rollout, cluster, old)| {
        let new = input.windows_of(&cluster);
        (new != old).then_some((rollout, cluster, new))
    })
    .collect();
    if !windows.is_empty() {
        tracing::info!(
            clusters = windows.len(),
            "sync windows of active rollouts changed"
        );
        db.set_rollout_windows(&windows).await?;
    }
    if !gated.is_empty() {
        // Changes held by a window alone (no policy) are a one-wave rollout without a gate
        // worth waiting for: the driver publishes them when their window opens.
        let policy = policy.cloned().unwrap_or_else(|| RolloutPolicy {
            waves: vec![cplane_schema::rollout::Wave {
                name: "all".into(),
                ids: Vec::new(),
                labels: BTreeMap::new(),
                count: None,
                percent: None,
            }],
            max_unavailable: None,
            health_timeout: "1000d".into(),
            bake_time: "0s".into(),
            on_failure: Default::default(),
        });
        let ids: BTreeSet<String> = gated.iter().map(|(c, _)| c.id.clone()).collect();
        let members: Vec<core::Member> = ids
            .iter()
            .map(|c| core::Member {
                cluster: c.clone(),
                workspace: input.workspaces.get(c).map(|w| w.id.clone()),
                labels: input
                    .workspaces
                    .get(c)
                    .map(|w| w.labels.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let waves = core::assign(&policy, &members);
        let wave_of: HashMap<&str, usize> = members
            .iter()
            .zip(&waves)
            .map(|(m, w)| (m.cluster.as_str(), *w))
            .collect();
        let clusters: Vec<RolloutCluster> = gated
            .iter()
            .map(|(c, digest)| RolloutCluster {
                cluster: c.id.clone(),
                kind: kind_label(c).to_owned(),
                region: c.region.clone(),
                environment: c.environment.clone(),
                wave: i64::try_from(wave_of[c.id.as_str()]).unwrap_or(0),
                digest: (*digest).clone(),
                state: ClusterState::Pending.label().to_owned(),
                windows: input.windows_of(&c.id),
                suspended: input.suspended(&c.id),
                published_at: None,
                message: String::new(),
            })
            .collect();
        let rollout = RolloutRow {
            id: format!("r-{now}-{}", &commit[..12.min(commit.len())]),
            commit: commit.to_owned(),
            stacks: changed.clone(),
            policy,
            state: RolloutState::Progressing.label().to_owned(),
            wave: 0,
            wave_started_at: now,
            gate_passed_at: None,
            reason: String::new(),
            created_at: now,
            updated_at: now,
        };
        tracing::info!(rollout = %rollout.id, clusters = clusters.len(), stacks = ?changed, "rollout created");
        db.create_rollout(&rollout, &clusters).await?;
        // Rows grow with rollouts only: bound them when one is created.
        let pruned = db.prune_rollouts(db.rollouts_kept()).await?;
        if pruned > 0 {
            tracing::info!(rollouts = pruned, "old finished rollouts deleted");
        }
    }
    db.set_stack_fingerprints(&input.fingerprints).await?;
    Ok(published)
}

/// What one [`advance`] did.
#[derive(Debug, Default)]
pub struct Advanced {
    /// Clusters pointed at a new bundle.
    pub published: Vec<String>,
    /// Gates that passed (rollout id, wave index).
    pub gates_passed: Vec<(String, i64)>,
}

fn ms(d: &str) -> i64 {
    cplane_schema::rollout::duration(d)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The failing objects of a report, in words: `Kind/ns/name: message; …`.
fn failing_objects(report: &crate::db::ClusterReport) -> String {
    let mut out: Vec<String> = report
        .objects
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o.get("result").and_then(|r| r.as_str()) == Some("failed")
                || o.get("health")
                    .and_then(|h| h.as_str())
                    .is_some_and(|h| h != "Healthy")
        })
        .map(|o| {
            let s = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            format!(
                "{}/{}{}{}: {}",
                s("kind"),
                s("namespace"),
                if s("namespace").is_empty() { "" } else { "/" },
                s("name"),
                s("message")
            )
        })
        .collect();
    if out.is_empty() {
        out.push(report.message.clone());
    }
    out.join("; ")
}

fn apply_failed(report: &crate::db::ClusterReport) -> bool {
    report
        .objects
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o.get("result").and_then(|r| r.as_str()) == Some("failed"))
        || (!report.healthy
            && report.objects.as_array().is_some_and(Vec::is_empty)
            && !report.message.is_empty())
}

/// What the driver remembers between [`advance_remembering`]s: for the wave each active
/// rollout is in, the clusters whose report of the target digest it judged and found neither
/// healthy nor failed, with that report's time. Such a report is not read again until it
/// changes (or its cluster times out).
///
/// # Guarantees
/// Only a cache: every verdict comes from the database's rows at the time. Empty (a restart, a
/// replica that just took the lease) or stale (a lease held before), it costs a re-read of
/// those reports' per-object results, never a wrong verdict, as it is keyed by the report's
/// time: a new report is always read.
#[derive(Debug, Default)]
pub struct Judged {
    waves: HashMap<String, (i64, HashMap<String, i64>)>,
}

impl Judged {
    /// The reports judged open in wave `wave` of `rollout` (forgetting an earlier wave's).
    fn wave(&mut self, rollout: &str, wave: i64) -> &mut HashMap<String, i64> {
        let entry = self
            .waves
            .entry(rollout.to_owned())
            .or_insert_with(|| (wave, HashMap::new()));
        if entry.0 != wave {
            *entry = (wave, HashMap::new());
        }
        &mut entry.1
    }
}

/// Moves every active rollout as far as it can go at `now` (see the module docs).
pub async fn advance(db: &Db, now: i64) -> Result<Advanced, Error> {
    advance_remembering(db, now, &mut Judged::default()).await
}

/// [`advance`], remembering between calls what it judged ([`Judged`]): the driver's.
pub async fn advance_remembering(
    db: &Db,
    now: i64,
    judged: &mut Judged,
) -> Result<Advanced, Error> {
    let mut done = Advanced::default();
    let active = db.rollouts(true, 0).await?;
    judged
        .waves
        .retain(|id, _| active.iter().any(|r| r.id == *id));
    for r in active {
        advance_one(db, r, now, judged, &mut done).await?;
    }
    Ok(done)
}

async fn advance_one(
    db: &Db,
    mut r: RolloutRow,
    now: i64,
    judged: &mut Judged,
    done: &mut Advanced,
) -> Result<(), Error> {
    let waves = i64::try_from(r.policy.waves.len()).unwrap_or(1);
    loop {
        let Some(state) = RolloutState::parse(&r.state) else {
            return Ok(());
        };
        match state {
            RolloutState::Baking => {
                if now < r.gate_passed_at.unwrap_or(now) + ms(&r.policy.bake_time) {
                    return Ok(());
                }
                if !next_wave(db, &mut r, "baked", "cplane").await? {
                    return Ok(());
                }
            }
            RolloutState::Progressing => {
                let timeout = ms(&r.policy.health_timeout);
                let timed_out = |published_at: Option<i64>| {
                    published_at.is_some_and(|p| now.saturating_sub(p) >= timeout)
                };
                // Only the published clusters whose agent reported the target digest, or
                // which timed out, can change the gate's verdict: the others are counted, not
                // read.
                let gate = db
                    .wave_gate(&r.id, r.wave, now.saturating_sub(timeout))
                    .await?;
                let seen = judged.wave(&r.id, r.wave);
                // Per-object results decide only a report of the target digest that is not
                // healthy (did an object fail to apply?) and word a failure: read them for
                // those alone, and only when the report is new since it was last judged open
                // or the cluster timed out.
                let full: Vec<String> = gate
                    .candidates
                    .iter()
                    .filter(|c| match &c.report {
                        Some((digest, false, at)) if *digest == c.digest => {
                            seen.get(&c.cluster) != Some(at) || timed_out(c.published_at)
                        }
                        _ => false,
                    })
                    .map(|c| c.cluster.clone())
                    .collect();
                let full = db.cluster_reports(&full).await?;
                let mut changes = Vec::new();
                let mut failed: Vec<(String, String)> = gate
                    .failed
                    .iter()
                    .map(|(c, why)| (c.clone(), why.clone()))
                    .collect();
                let mut resolved = 0usize;
                for c in &gate.candidates {
                    let report = match full.get(&c.cluster) {
                        Some((rep, at)) => Some(Report {
                            digest: rep.digest.clone(),
                            healthy: rep.healthy,
                            apply_failed: apply_failed(rep),
                            at: *at,
                        }),
                        // Judged open at this very report before: no object had failed.
                        None => c.report.as_ref().map(|(digest, healthy, at)| Report {
                            digest: digest.clone(),
                            healthy: *healthy,
                            apply_failed: false,
                            at: *at,
                        }),
                    };
                    match core::gate(
                        &c.digest,
                        c.published_at.unwrap_or(now),
                        timeout,
                        report.as_ref(),
                        now,
                    ) {
                        ClusterState::Done => {
                            resolved += 1;
                            seen.remove(&c.cluster);
                            changes.push((c.cluster.clone(), "done", None, String::new()));
                        }
                        ClusterState::Failed => {
                            resolved += 1;
                            seen.remove(&c.cluster);
                            let why = match (full.get(&c.cluster), &report) {
                                (Some((rep, _)), _) if rep.digest == c.digest => {
                                    failing_objects(rep)
                                }
                                (_, Some(rep)) => format!(
                                    "not applied within {}: still reports {}",
                                    r.policy.health_timeout, rep.digest
                                ),
                                (_, None) => {
                                    format!("no report within {}", r.policy.health_timeout)
                                }
                            };
                            failed.push((c.cluster.clone(), why.clone()));
                            changes.push((c.cluster.clone(), "failed", None, why));
                        }
                        _ => {
                            if let Some(rep) = &report {
                                seen.insert(c.cluster.clone(), rep.at);
                            }
                        }
                    }
                }
                failed.sort();
                let failed: Vec<String> = failed
                    .into_iter()
                    .map(|(c, why)| format!("{c}: {why}"))
                    .collect();
                // Clusters the gate still waits for: published and not judged, and those not
                // reached yet (but for suspended workspaces', below).
                let mut in_flight = gate.published.saturating_sub(resolved);
                let mut open = in_flight + gate.waiting.len();
                let max = r
                    .policy
                    .max_unavailable
                    .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
                let mut publish = Vec::new();
                if failed.is_empty() {
                    for c in &gate.waiting {
                        if c.suspended {
                            open -= 1;
                            if c.state != "held" {
                                changes.push((
                                    c.cluster.clone(),
                                    "held",
                                    None,
                                    "workspace suspended".into(),
                                ));
                            }
                            continue;
                        }
                        if !cplane_schema::rollout::windows_allow(&c.windows, now) {
                            if c.state != "held" {
                                changes.push((
                                    c.cluster.clone(),
                                    "held",
                                    None,
                                    "sync window closed".into(),
                                ));
                            }
                            continue;
                        }
                        if in_flight >= max {
                            continue;
                        }
                        publish.push((
                            c.cluster.as_str(),
                            c.kind.as_str(),
                            c.region.as_str(),
                            c.environment.as_str(),
                            c.digest.as_str(),
                        ));
                        done.published.push(c.cluster.clone());
                        in_flight += 1;
                        changes.push((c.cluster.clone(), "published", Some(now), String::new()));
                    }
                }
                // A wave is thousands of clusters: published in one transaction.
                db.point_clusters(&publish).await?;
                db.set_rollout_clusters(&r.id, &changes).await?;
                if !failed.is_empty() {
                    let to = core::on_failure(&r.policy);
                    let reason = format!(
                        "gate of wave {} failed: {}",
                        r.policy.waves[usize::try_from(r.wave).unwrap_or(0)].name,
                        failed.join("; ")
                    );
                    tracing::warn!(rollout = %r.id, %reason, "rollout stopped");
                    let moved = db
                        .move_rollout(
                            &r.id,
                            ("progressing", r.wave),
                            (to.label(), r.wave),
                            None,
                            &reason,
                            "cplane",
                            ("gate-failed", &reason),
                        )
                        .await?;
                    if moved && to == RolloutState::Aborted {
                        // As an operator's abort: the clusters not reached keep their bundle.
                        skip_unreached(db, &r.id, "aborted: the gate failed").await?;
                    }
                    return Ok(());
                }
                if open > 0 {
                    return Ok(());
                }
                done.gates_passed.push((r.id.clone(), r.wave));
                if ms(&r.policy.bake_time) > 0 && r.wave + 1 < waves {
                    if db
                        .move_rollout(
                            &r.id,
                            ("progressing", r.wave),
                            ("baking", r.wave),
                            Some(now),
                            "",
                            "cplane",
                            ("gate-passed", &format!("wave {}", r.wave)),
                        )
                        .await?
                    {
                        r.state = "baking".into();
                        r.gate_passed_at = Some(now);
                        continue;
                    }
                    return Ok(());
                }
                if !next_wave(db, &mut r, "gate-passed", "cplane").await? {
                    return Ok(());
                }
            }
            _ => return Ok(()),
        }
    }
}

/// Moves `r` from its wave to the next (or to `completed` after the last); `false` when
/// someone else moved it first.
async fn next_wave(db: &Db, r: &mut RolloutRow, why: &str, actor: &str) -> Result<bool, Error> {
    let waves = i64::try_from(r.policy.waves.len()).unwrap_or(1);
    let (to, wave) = if r.wave + 1 >= waves {
        ("completed", r.wave)
    } else {
        ("progressing", r.wave + 1)
    };
    let moved = db
        .move_rollout(
            &r.id,
            (&r.state, r.wave),
            (to, wave),
            None,
            "",
            actor,
            (why, &format!("wave {} → {to} {wave}", r.wave)),
        )
        .await?;
    if moved {
        r.state = to.to_owned();
        r.wave = wave;
        r.gate_passed_at = None;
    }
    Ok(moved && to != "completed")
}

/// Marks the clusters of rollout `id` not reached yet (`pending`, `held`) `skipped` with
/// `why`; returns how many.
async fn skip_unreached(db: &Db, id: &str, why: &str) -> Result<usize, Error> {
    let skip: Vec<_> = db
        .rollout_clusters(id, None)
        .await?
        .into_iter()
        .filter(|c| c.state == "pending" || c.state == "held")
        .map(|c| (c.cluster, "skipped", None, why.to_owned()))
        .collect();
    db.set_rollout_clusters(id, &skip).await?;
    Ok(skip.len())
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    /// Stop publishing (the current wave's published clusters keep their bundle).
    Pause,
    /// Go on after a pause; failed clusters of the current wave get a fresh gate.
    Resume,
    /// Pass the current wave's gate by hand and start the next wave.
    Promote,
    /// Stop for good: clusters not yet reached keep their bundle.
    Abort,
}

impl Control {
    /// From `pause`, `resume`, `promote`, `abort`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "promote" => Self::Promote,
            "abort" => Self::Abort,
            _ => return None,
        })
    }

    /// The word.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

/// Why a control was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such rollout.
    #[error("no rollout {0}")]
    NotFound(String),
    /// Not possible in the rollout's state.
    #[error("cannot {action} rollout {id}: it is {state}")]
    Conflict {
        /// The rollout.
        id: String,
        /// What was asked.
        action: &'static str,
        /// Its state.
        state: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] Error),
}

/// Applies `action` to rollout `id` on behalf of `actor`; returns the rollout afterwards.
pub async fn control(
    db: &Db,
    id: &str,
    action: Control,
    actor: &str,
) -> Result<RolloutRow, ControlError> {
    let r = db
        .rollout(id)
        .await?
        .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
    let conflict = || ControlError::Conflict {
        id: id.to_owned(),
        action: action.label(),
        state: r.state.clone(),
    };
    let state = RolloutState::parse(&r.state).ok_or_else(conflict)?;
    let moved = match (action, state) {
        (Control::Pause, RolloutState::Progressing | RolloutState::Baking) => {
            db.move_rollout(
                id,
                (&r.state, r.wave),
                ("paused", r.wave),
                None,
                &format!("paused by {actor}"),
                actor,
                ("pause", ""),
            )
            .await?
        }
        (Control::Resume, RolloutState::Paused) => {
            let retry: Vec<_> = db
                .rollout_clusters(id, Some(r.wave))
                .await?
                .into_iter()
                .filter(|c| c.state == "failed")
                .map(|c| {
                    (
                        c.cluster,
                        "published",
                        Some(crate::db::now_ms()),
                        String::new(),
                    )
                })
                .collect();
            db.set_rollout_clusters(id, &retry).await?;
            db.move_rollout(
                id,
                ("paused", r.wave),
                ("progressing", r.wave),
                None,
                "",
                actor,
                (
                    "resume",
                    &format!("{} failed clusters get a fresh gate", retry.len()),
                ),
            )
            .await?
        }
        (
            Control::Promote,
            RolloutState::Progressing | RolloutState::Baking | RolloutState::Paused,
        ) => {
            let mut r2 = r.clone();
            next_wave(db, &mut r2, "promote", actor).await? || r2.state == "completed"
        }
        (Control::Abort, s) if s.is_active() => {
            let skipped = skip_unreached(db, id, &format!("aborted by {actor}")).await?;
            db.move_rollout(
                id,
                (&r.state, r.wave),
                ("aborted", r.wave),
                None,
                &format!("aborted by {actor}"),
                actor,
                ("abort", &format!("{skipped} clusters keep their bundle")),
            )
            .await?
        }
        _ => return Err(conflict()),
    };
    if !moved {
        return Err(conflict());
    }
    db.rollout(id)
        .await?
        .ok_or_else(|| ControlError::NotFound(id.to_owned()))
}

/// How long without a report before a cluster's agent counts as offline, by default
/// (`cplane serve --agent-offline-after`).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(600);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The status of one rollout: its waves, each with clusters done / pending / failed (with the
/// failing objects' messages), time in the current wave, and the events; an agent without a
/// report for `offline_after` counts as offline.
pub async fn status(
    db: &Db,
    r: &RolloutRow,
    now: i64,
    offline_after: Duration,
) -> Result<serde_json::Value, Error> {
    let clusters = db.rollout_clusters(&r.id, None).await?;
    let ids: Vec<String> = clusters.iter().map(|c| c.cluster.clone()).collect();
    let reports = db.cluster_reports(&ids).await?;
    let heads: HashMap<String, (String, i64)> = db
        .cluster_heads(None)
        .await?
        .into_iter()
        .map(|(id, d, g)| (id, (d, g)))
        .collect();
    let offline_after = millis(offline_after);
    let mut waves = Vec::new();
    for (i, w) in r.policy.waves.iter().enumerate() {
        let of_wave: Vec<&RolloutCluster> = clusters
            .iter()
            .filter(|c| c.wave == i64::try_from(i).unwrap_or(-1))
            .collect();
        let count = |s: &str| of_wave.iter().filter(|c| c.state == s).count();
        let list: Vec<serde_json::Value> = of_wave
            .iter()
            .map(|c| {
                cluster_json(
                    c,
                    reports.get(&c.cluster),
                    heads.get(&c.cluster),
                    now,
                    offline_after,
                )
            })
            .collect();
        waves.push(serde_json::json!({
            "name": w.name,
            "current": i64::try_from(i).unwrap_or(-1) == r.wave && RolloutState::parse(&r.state).is_some_and(RolloutState::is_active),
            "clusters": of_wave.len(),
            "done": count("done"),
            "pending": count("pending") + count("held"),
            "published": count("published"),
            "failed": count("failed"),
            "skipped": count("skipped"),
            "members": list,
        }));
    }
    Ok(serde_json::json!({
        "id": r.id,
        "commit": r.commit,
        "stacks": r.stacks,
        "state": r.state,
        "reason": r.reason,
        "wave": r.wave,
        "wave_name": r.policy.waves.get(usize::try_from(r.wave).unwrap_or(0)).map(|w| w.name.clone()),
        "seconds_in_wave": (now - r.wave_started_at).max(0) / 1000,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "policy": r.policy,
        "waves": waves,
        "events": db.rollout_events(&r.id).await?,
    }))
}

fn cluster_json(
    c: &RolloutCluster,
    report: Option<&(crate::db::ClusterReport, i64)>,
    head: Option<&(String, i64)>,
    now: i64,
    offline_after: i64,
) -> serde_json::Value {
    let seen = report.map(|(r, at)| core::Seen {
        generation: r.generation,
        healthy: r.healthy,
        at: *at,
    });
    // Not reached yet while the cluster is not pointed at this rollout's bundle.
    let waiting = head.map(|(d, _)| d.as_str()) != Some(c.digest.as_str())
        && (c.state == "pending" || c.state == "held");
    let (agent, behind_by) = core::standing(
        head.map(|(_, g)| *g),
        seen,
        waiting,
        c.suspended,
        now,
        offline_after,
    );
    serde_json::json!({
        "cluster": c.cluster,
        "state": c.state,
        "digest": c.digest,
        "message": c.message,
        "behind_by": behind_by,
        "last_seen": seen.map(|s| s.at),
        "agent": agent.label(),
    })
}

/// One cluster's standing (`GET /v1/clusters/{id}/status`): `state` ([`core::Standing`]),
/// `behind_by` generations, `last_seen` (unix millis of its agent's last report), the failing
/// objects when failed, and the active rollout that has not reached it yet, if any.
pub async fn cluster_standing(
    db: &Db,
    cluster: &str,
    head_generation: Option<i64>,
    report: Option<&(crate::db::ClusterReport, i64)>,
    now: i64,
    offline_after: Duration,
) -> Result<serde_json::Value, Error> {
    let waiting = db.rollout_waiting(Some(cluster)).await?;
    let suspended = db.suspended_clusters().await?.contains(cluster);
    let seen = report.map(|(r, at)| core::Seen {
        generation: r.generation,
        healthy: r.healthy,
        at: *at,
    });
    let rollout = waiting.get(cluster);
    let (state, behind_by) = core::standing(
        head_generation,
        seen,
        rollout.is_some(),
        suspended,
        now,
        millis(offline_after),
    );
    let message = match (state, report) {
        (core::Standing::Failed, Some((r, _))) => failing_objects(r),
        (core::Standing::Offline, Some((_, at))) => {
            format!("no report for {} s", (now - at).max(0) / 1000)
        }
        _ => String::new(),
    };
    Ok(serde_json::json!({
        "state": state.label(),
        "behind_by": behind_by,
        "last_seen": seen.map(|s| s.at),
        "message": message,
        "rollout": rollout.map(|(id, rstate, cstate, wave, why)| serde_json::json!({
            "id": id, "state": rstate, "cluster_state": cstate, "wave": wave, "message": why,
        })),
    }))
}

/// Where each cluster stands at `now`: the clusters published and those of suspended
/// workspaces, each with its [`core::Standing`], how many generations it is behind and when
/// its agent last reported (unix millis). Reads four tables once, whatever the fleet's size.
pub async fn standings(
    db: &Db,
    now: i64,
    offline_after: Duration,
) -> Result<BTreeMap<String, ClusterStanding>, Error> {
    let heads = db.cluster_heads(None).await?;
    let reports = db.report_heads().await?;
    let waiting = db.rollout_waiting(None).await?;
    let mut suspended = db.suspended_clusters().await?;
    let offline_after = millis(offline_after);
    let mut out = BTreeMap::new();
    let mut judge = |cluster: &str, head: Option<i64>, suspended: bool| {
        let seen = reports.get(cluster).map(|(g, h, at)| core::Seen {
            generation: *g,
            healthy: *h,
            at: *at,
        });
        let (state, behind_by) = core::standing(
            head,
            seen,
            waiting.contains_key(cluster),
            suspended,
            now,
            offline_after,
        );
        out.insert(
            cluster.to_owned(),
            ClusterStanding {
                state,
                behind_by,
                last_seen: seen.map(|s| s.at),
            },
        );
    };
    for (id, _, generation) in &heads {
        let s = suspended.remove(id);
        judge(id, Some(*generation), s);
    }
    for id in &suspended {
        judge(id, None, true);
    }
    Ok(out)
}

/// One cluster's entry in [`standings`].
#[derive(Debug, Clone, Copy)]
pub struct ClusterStanding {
    /// Where it stands.
    pub state: core::Standing,
    /// Generations behind the bundle it is pointed at (or a rollout holds for it).
    pub behind_by: i64,
    /// When its agent last reported (unix millis), if ever.
    pub last_seen: Option<i64>,
}

/// How many clusters stand in each [`core::Standing`] at `now` (every standing, zeros too),
/// from [`standings`].
pub async fn standing_counts(
    db: &Db,
    now: i64,
    offline_after: Duration,
) -> Result<Vec<(&'static str, i64)>, Error> {
    let mut counts: BTreeMap<core::Standing, i64> =
        core::Standing::ALL.iter().map(|s| (*s, 0)).collect();
    for s in standings(db, now, offline_after).await?.values() {
        *counts.entry(s.state).or_default() += 1;
    }
    Ok(counts.into_iter().map(|(s, n)| (s.label(), n)).collect())
}

#[cfg(test)]
mod tests;
