//! The outcome of a reconcile run, decided in one place.
//!
//! Apply reports an [`Outcome`] per step of the plan (a [`Report`]);
//! [`summarize`] turns a plan and the report of applying it into a [`RunOutcome`] and the
//! status [`Condition`]s of the workspaces and the platform; [`refused`] does the same for an
//! invalid revision, [`unstalled`] and [`regions`] for what the database holds beyond one run.
//! The run record, the conditions, `/v1/status`, the metrics and the exit code of
//! `cplane apply` all read these values, so a held or refused plan is reported the same way
//! everywhere; the adapters only write them.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::Plan;

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or already true).
    Done(String),
    /// Not done on purpose (no cloud, or an earlier step of the workspace did not finish).
    Skipped(String),
    /// Waiting on something outside (certificate validation): requeue.
    Waiting(String),
    /// Failed; retried on the next run.
    Failed(String),
}

impl Outcome {
    /// Short label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Skipped(_) => "skipped",
            Outcome::Waiting(_) => "waiting",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The outcome of every step, by index in the plan.
#[derive(Debug, Default)]
pub struct Report {
    /// Outcomes in plan order.
    pub outcomes: Vec<Outcome>,
}

/// How a reconcile run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Everything in the plan is done: the world matches the revision.
    Converged,
    /// Work is under way outside cplane (e.g. certificate validation): requeue soon.
    Converging,
    /// A step failed, or a workspace's change was refused by the planner (e.g. a move to
    /// another region): retried on the next run.
    Failed,
    /// The revision is invalid: nothing of it was applied; waits for a new commit.
    Refused,
    /// The plan removes more workspaces than allowed and waits for a confirmation.
    Held,
    /// The run could not be carried out (git, database or cloud unreachable).
    #[default]
    Error,
}

impl RunOutcome {
    /// The lowercase name used in run records, `/v1/status` and metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            RunOutcome::Converged => "converged",
            RunOutcome::Converging => "converging",
            RunOutcome::Failed => "failed",
            RunOutcome::Refused => "refused",
            RunOutcome::Held => "held",
            RunOutcome::Error => "error",
        }
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The outcome of applying `plan` with the step outcomes in `report`, and the status
/// conditions that follow from it.
///
/// The outcome: a held plan is [`RunOutcome::Held`] whatever else ran (a held plan applies
/// nothing); a planner refusal or a failed step is [`RunOutcome::Failed`]; a step waiting on
/// the outside is [`RunOutcome::Converging`]; otherwise [`RunOutcome::Converged`]. Skipped
/// steps (no cloud configured) do not keep a run from converging.
///
/// The conditions, in the order they are to be written:
/// - per workspace with steps: `Ready` and `Reconciling` (its first failed step, else its
///   first waiting step, else reconciled);
/// - per refused workspace: `Stalled=True` with the refusal;
/// - the platform (the run's scope): `Stalled=False` (the revision is valid) and `Ready`, True
///   only when converged.
///
/// A workspace refused by an earlier run and not by this one is cleared by [`unstalled`];
/// regions by [`regions`]: both need what the database holds beyond this run.
pub fn summarize(plan: &Plan, report: &Report) -> (RunOutcome, Vec<Condition>) {
    let outcome = outcome(plan, report);
    let mut conditions = Vec::new();
    let mut per_ws: BTreeMap<&str, (Option<String>, Option<String>)> = BTreeMap::new();
    for (step, o) in plan.steps.iter().zip(&report.outcomes) {
        let (failed, waiting) = per_ws.entry(&step.workspace).or_default();
        match o {
            Outcome::Failed(e) if failed.is_none() => {
                *failed = Some(format!("{}: {e}", step.action))
            }
            Outcome::Waiting(e) if waiting.is_none() => {
                *waiting = Some(format!("{}: {e}", step.action))
            }
            _ => {}
        }
    }
    for (ws, (failed, waiting)) in per_ws {
        let (ready, reason, message) = match (failed, waiting) {
            (Some(m), _) => (false, "StepFailed", m),
            (None, Some(m)) => (false, "Waiting", m),
            (None, None) => (true, "Reconciled", "every step is done".to_owned()),
        };
        conditions.push(Condition::new(
            Entity::Workspace,
            ws,
            Kind::Ready,
            ready,
            reason,
            &message,
        ));
        conditions.push(Condition::new(
            Entity::Workspace,
            ws,
            Kind::Reconciling,
            !ready,
            reason,
            &message,
        ));
    }
    for r in &plan.refused {
        conditions.push(Condition::new(
            Entity::Workspace,
            &r.workspace,
            Kind::Stalled,
            true,
            "Refused",
            &r.message,
        ));
    }
    conditions.push(Condition::new(
        Entity::Platform,
        "",
        Kind::Stalled,
        false,
        "ValidRevision",
        "the revision is valid and applied",
    ));
    let message = match outcome {
        RunOutcome::Held => format!("held: {}", plan.held.as_deref().unwrap_or_default()),
        o => format!("the last run {}", o.label()),
    };
    conditions.push(Condition::new(
        Entity::Platform,
        "",
        Kind::Ready,
        outcome == RunOutcome::Converged,
        outcome.label(),
        &message,
    ));
    (outcome, conditions)
}

/// The outcome alone (see [`summarize`]).
pub fn outcome(plan: &Plan, report: &Report) -> RunOutcome {
    let any = |f: fn(&Outcome) -> bool| report.outcomes.iter().any(f);
    if plan.held.is_some() {
        RunOutcome::Held
    } else if !plan.refused.is_empty() || any(|o| matches!(o, Outcome::Failed(_))) {
        RunOutcome::Failed
    } else if any(|o| matches!(o, Outcome::Waiting(_))) {
        RunOutcome::Converging
    } else {
        RunOutcome::Converged
    }
}

/// The conditions of a refused (invalid) revision: the platform is `Stalled` with every error
/// while `last_applied` (the last good revision, if any) stays in force, and not `Ready`.
pub fn refused(
    errors: &[String],
    commit: &str,
    last_applied: Option<&str>,
) -> (RunOutcome, Vec<Condition>) {
    let message = format!(
        "{} error(s) in {commit}; still applying {}: {}",
        errors.len(),
        last_applied.unwrap_or("none"),
        errors.join("; ")
    );
    (
        RunOutcome::Refused,
        vec![
            Condition::new(
                Entity::Platform,
                "",
                Kind::Stalled,
                true,
                "InvalidRevision",
                &message,
            ),
            Condition::new(
                Entity::Platform,
                "",
                Kind::Ready,
                false,
                "InvalidRevision",
                "the latest revision is invalid",
            ),
        ],
    )
}

/// `Stalled=False` for every workspace that was stalled (`stalled`), that this run decided
/// about (`decided`: desired or with steps) and that `plan` (of `commit`) no longer refuses.
pub fn unstalled<'a>(
    plan: &Plan,
    commit: &str,
    stalled: impl IntoIterator<Item = &'a str>,
    decided: impl Fn(&str) -> bool,
) -> Vec<Condition> {
    let refused: BTreeSet<&str> = plan.refused.iter().map(|r| r.workspace.as_str()).collect();
    stalled
        .into_iter()
        .filter(|ws| decided(ws) && !refused.contains(ws))
        .map(|ws| {
            Condition::new(
                Entity::Workspace,
                ws,
                Kind::Stalled,
                false,
                "Accepted",
                &format!("{commit} is planned without refusal"),
            )
        })
        .collect()
}

/// One workspace's readiness, for its region's `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceReadiness {
    /// Workspace id.
    pub id: String,
    /// Region it is provisioned in.
    pub region: String,
    /// Its environment.
    pub environment: String,
    /// `Ready` True and not `Stalled`.
    pub ready: bool,
}

/// How many not-ready workspaces a region's `Ready` message names.
const NOT_READY_NAMED: usize = 10;

/// The `Ready` condition of every region in `scope` (a scope label: `regions/environments`,
/// `*` for every region): True when each workspace provisioned there (in the scope's
/// environments) is ready, with a message counting ready of total and naming the first
/// workspaces that are not. Regions named by the scope get a condition even without
/// workspaces; with every region in scope, the regions that have workspaces do.
pub fn regions(scope: &str, workspaces: &[WorkspaceReadiness]) -> Vec<Condition> {
    let (regions, environments) = scope.split_once('/').unwrap_or((scope, ""));
    let named: Vec<&str> = regions
        .split(',')
        .filter(|r| !r.is_empty() && *r != "*")
        .collect();
    let environments: Vec<&str> = environments.split(',').filter(|e| !e.is_empty()).collect();
    // region → (ready, not ready ids)
    let mut by_region: BTreeMap<&str, (usize, Vec<&str>)> =
        named.iter().map(|r| (*r, (0, Vec::new()))).collect();
    for w in workspaces {
        let in_scope = (named.is_empty() || named.contains(&w.region.as_str()))
            && (environments.is_empty() || environments.contains(&w.environment.as_str()));
        if !in_scope {
            continue;
        }
        let entry = by_region.entry(&w.region).or_default();
        if w.ready {
            entry.0 += 1;
        } else {
            entry.1.push(&w.id);
        }
    }
    by_region
        .into_iter()
        .map(|(region, (ready, not_ready))| {
            let total = ready + not_ready.len();
            let mut message = format!("{ready} of {total} workspaces ready");
            if !not_ready.is_empty() {
                message.push_str("; not ready: ");
                message.push_str(&not_ready[..not_ready.len().min(NOT_READY_NAMED)].join(", "));
                if not_ready.len() > NOT_READY_NAMED {
                    message.push_str(&format!(" and {} more", not_ready.len() - NOT_READY_NAMED));
                }
            }
            let reason = if not_ready.is_empty() {
                "WorkspacesReady"
            } else {
                "WorkspacesNotReady"
            };
            Condition::new(
                Entity::Region,
                region,
                Kind::Ready,
                not_ready.is_empty(),
                reason,
                &message,
            )
        })
        .collect()
}

/// What a condition is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    /// The control plane of a scope (its id is the scope label; empty in [`summarize`] and
    /// [`refused`]: the caller knows the scope).
    Platform,
    /// A region.
    Region,
    /// A workspace.
    Workspace,
}

impl Entity {
    /// The lowercase name stored and shown (`platform`, `region`, `workspace`).
    pub fn label(self) -> &'static str {
        match self {
            Entity::Platform => "platform",
            Entity::Region => "region",
            Entity::Workspace => "workspace",
        }
    }
}

/// Which condition (the Kubernetes trio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Everything desired is true.
    Ready,
    /// Work is under way.
    Reconciling,
    /// Progress is blocked until something changes (a refusal, an invalid revision).
    Stalled,
}

impl Kind {
    /// The name stored and shown (`Ready`, `Reconciling`, `Stalled`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ready => "Ready",
            Kind::Reconciling => "Reconciling",
            Kind::Stalled => "Stalled",
        }
    }
}

/// One status condition of an entity, as a run decides it (the commit it refers to is the
/// run's, added where it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What it is about.
    pub entity: Entity,
    /// The entity's id.
    pub id: String,
    /// Which condition.
    pub kind: Kind,
    /// True or False.
    pub status: bool,
    /// CamelCase (or outcome label) reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl Condition {
    fn new(
        entity: Entity,
        id: &str,
        kind: Kind,
        status: bool,
        reason: &str,
        message: &str,
    ) -> Self {
        Condition {
            entity,
            id: id.to_owned(),
            kind,
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// Every error of a run: planner refusals, the hold, failed steps, in that order.
pub fn errors(plan: &Plan, report: &Report) -> Vec<String> {
    plan.refused
        .iter()
        .map(|r| r.message.clone())
        .chain(plan.held.clone())
        .chain(report.outcomes.iter().filter_map(|o| match o {
            Outcome::Failed(e) => Some(e.clone()),
            _ => None,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcomes: Vec<Outcome>) -> Report {
        Report { outcomes }
    }

    #[test]
    fn outcomes_in_order_of_precedence() {
        let plan = Plan::default();
        assert_eq!(outcome(&plan, &report(vec![])), RunOutcome::Converged);
        assert_eq!(
            outcome(&plan, &report(vec![Outcome::Skipped("no cloud".into())])),
            RunOutcome::Converged
        );
        assert_eq!(
            outcome(
                &plan,
                &report(vec![
                    Outcome::Done(String::new()),
                    Outcome::Waiting("ISSUED?".into())
                ])
            ),
            RunOutcome::Converging
        );
        assert_eq!(
            outcome(
                &plan,
                &report(vec![
                    Outcome::Waiting(String::new()),
                    Outcome::Failed("boom".into())
                ])
            ),
            RunOutcome::Failed
        );
        let held = Plan {
            held: Some("removes 9 workspaces".into()),
            ..Plan::default()
        };
        assert_eq!(
            outcome(&held, &report(vec![Outcome::Failed("x".into())])),
            RunOutcome::Held
        );
        assert_eq!(
            errors(&held, &report(vec![Outcome::Failed("x".into())])),
            ["removes 9 workspaces", "x"]
        );
    }

    fn step(ws: &str) -> crate::plan::Step {
        crate::plan::Step {
            workspace: ws.into(),
            action: crate::plan::Action::AwaitCertificate {
                domain: "*.x".into(),
            },
            after: vec![],
            reason: String::new(),
        }
    }

    fn find<'a>(cs: &'a [Condition], e: Entity, id: &str, k: Kind) -> &'a Condition {
        cs.iter()
            .find(|c| c.entity == e && c.id == id && c.kind == k)
            .unwrap_or_else(|| panic!("no {k:?} of {e:?} {id} in {cs:#?}"))
    }

    #[test]
    fn conditions_per_workspace_refusal_and_platform() {
        let plan = Plan {
            steps: vec![step("w-a"), step("w-a"), step("w-b"), step("w-c")],
            refused: vec![crate::plan::Refusal {
                workspace: "w-d".into(),
                message: "moves region".into(),
            }],
            held: None,
        };
        let report = report(vec![
            Outcome::Waiting("pending validation".into()),
            Outcome::Failed("throttled".into()),
            Outcome::Done(String::new()),
            Outcome::Waiting("pending validation".into()),
        ]);
        let (outcome, cs) = summarize(&plan, &report);
        assert_eq!(outcome, RunOutcome::Failed);
        // A failure wins over an earlier wait.
        let a = find(&cs, Entity::Workspace, "w-a", Kind::Ready);
        assert_eq!((a.status, a.reason.as_str()), (false, "StepFailed"));
        assert!(a.message.ends_with("throttled"), "{}", a.message);
        assert!(find(&cs, Entity::Workspace, "w-a", Kind::Reconciling).status);
        assert!(find(&cs, Entity::Workspace, "w-b", Kind::Ready).status);
        assert!(!find(&cs, Entity::Workspace, "w-b", Kind::Reconciling).status);
        assert_eq!(
            find(&cs, Entity::Workspace, "w-c", Kind::Ready).reason,
            "Waiting"
        );
        let d = find(&cs, Entity::Workspace, "w-d", Kind::Stalled);
        assert_eq!((d.status, d.message.as_str()), (true, "moves region"));
        assert!(!find(&cs, Entity::Platform, "", Kind::Stalled).status);
        let ready = find(&cs, Entity::Platform, "", Kind::Ready);
        assert_eq!((ready.status, ready.reason.as_str()), (false, "failed"));

        let (outcome, cs) = summarize(&Plan::default(), &Report::default());
        assert_eq!(outcome, RunOutcome::Converged);
        assert!(find(&cs, Entity::Platform, "", Kind::Ready).status);
    }

    #[test]
    fn a_held_plan_says_why_in_its_ready_condition() {
        let held = Plan {
            held: Some("removes 9 workspaces".into()),
            ..Plan::default()
        };
        let (outcome, cs) = summarize(&held, &Report::default());
        assert_eq!(outcome, RunOutcome::Held);
        let ready = find(&cs, Entity::Platform, "", Kind::Ready);
        assert_eq!(ready.reason, "held");
        assert!(
            ready.message.contains("removes 9 workspaces"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_refused_revision_stalls_the_platform_and_names_the_last_good_one() {
        let (outcome, cs) = refused(
            &["a.yaml:3: bad".into(), "b.yaml:1: worse".into()],
            "c2",
            Some("c1"),
        );
        assert_eq!(outcome, RunOutcome::Refused);
        let stalled = find(&cs, Entity::Platform, "", Kind::Stalled);
        assert!(stalled.status);
        assert_eq!(
            stalled.message,
            "2 error(s) in c2; still applying c1: a.yaml:3: bad; b.yaml:1: worse"
        );
        assert!(!find(&cs, Entity::Platform, "", Kind::Ready).status);
        let (_, cs) = refused(&["x".into()], "c1", None);
        assert!(find(&cs, Entity::Platform, "", Kind::Stalled)
            .message
            .contains("still applying none"));
    }

    #[test]
    fn stalled_workspaces_clear_only_when_decided_and_not_refused() {
        let plan = Plan {
            refused: vec![crate::plan::Refusal {
                workspace: "w-still".into(),
                message: String::new(),
            }],
            ..Plan::default()
        };
        let cs = unstalled(&plan, "c9", ["w-fixed", "w-still", "w-elsewhere"], |ws| {
            ws != "w-elsewhere"
        });
        assert_eq!(cs.len(), 1, "{cs:#?}");
        assert_eq!((cs[0].id.as_str(), cs[0].status), ("w-fixed", false));
        assert_eq!(cs[0].message, "c9 is planned without refusal");
    }

    #[test]
    fn regions_count_ready_workspaces_in_scope() {
        let ws = |id: &str, region: &str, env: &str, ready: bool| WorkspaceReadiness {
            id: id.into(),
            region: region.into(),
            environment: env.into(),
            ready,
        };
        let mut all = vec![
            ws("w-a", "sgp-1", "prod", true),
            ws("w-b", "sgp-1", "prod", false),
            ws("w-c", "fra-1", "prod", true),
            ws("w-d", "sgp-1", "dev", false),
        ];
        let cs = regions("sgp-1,iad-1/prod", &all);
        assert_eq!(cs.len(), 2, "{cs:#?}");
        let sgp = find(&cs, Entity::Region, "sgp-1", Kind::Ready);
        assert_eq!(
            (sgp.status, sgp.message.as_str()),
            (false, "1 of 2 workspaces ready; not ready: w-b")
        );
        // Named by the scope, without workspaces: ready, 0 of 0.
        let iad = find(&cs, Entity::Region, "iad-1", Kind::Ready);
        assert_eq!(
            (iad.status, iad.message.as_str()),
            (true, "0 of 0 workspaces ready")
        );
        let cs = regions("*", &all);
        assert_eq!(cs.len(), 2);
        assert!(find(&cs, Entity::Region, "fra-1", Kind::Ready).status);
        all = (0..12)
            .map(|i| ws(&format!("w-{i:02}"), "sgp-1", "prod", false))
            .collect();
        let cs = regions("*", &all);
        assert!(
            cs[0].message.ends_with("w-09 and 2 more"),
            "{}",
            cs[0].message
        );
    }

    #[test]
    fn labels_are_the_serialized_names() {
        for o in [
            RunOutcome::Converged,
            RunOutcome::Converging,
            RunOutcome::Failed,
            RunOutcome::Refused,
            RunOutcome::Held,
            RunOutcome::Error,
        ] {
            assert_eq!(
                serde_json::to_value(o).expect("serializes"),
                serde_json::json!(o.label())
            );
        }
    }
}
