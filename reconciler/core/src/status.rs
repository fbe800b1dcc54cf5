//! The outcome of a reconcile run, decided in one place.
//!
//! Apply reports an [`Outcome`] per step of the plan (a [`Report`]);
//! [`summarize`] turns a plan and the report of applying it into a [`RunOutcome`]; the run
//! record, the `Ready` condition, `/v1/status`, the metrics and the exit code of `cplane apply`
//! all read that one value, so a held or refused plan is reported the same way everywhere.

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

/// The outcome of applying `plan` with the step outcomes in `report`.
///
/// A held plan is [`RunOutcome::Held`] whatever else ran (a held plan applies nothing); a
/// planner refusal or a failed step is [`RunOutcome::Failed`]; a step waiting on the outside
/// is [`RunOutcome::Converging`]; otherwise [`RunOutcome::Converged`]. Skipped steps (no cloud
/// configured) do not keep a run from converging.
pub fn summarize(plan: &Plan, report: &Report) -> RunOutcome {
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
        assert_eq!(summarize(&plan, &report(vec![])), RunOutcome::Converged);
        assert_eq!(
            summarize(&plan, &report(vec![Outcome::Skipped("no cloud".into())])),
            RunOutcome::Converged
        );
        assert_eq!(
            summarize(
                &plan,
                &report(vec![
                    Outcome::Done(String::new()),
                    Outcome::Waiting("ISSUED?".into())
                ])
            ),
            RunOutcome::Converging
        );
        assert_eq!(
            summarize(
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
            summarize(&held, &report(vec![Outcome::Failed("x".into())])),
            RunOutcome::Held
        );
        assert_eq!(
            errors(&held, &report(vec![Outcome::Failed("x".into())])),
            ["removes 9 workspaces", "x"]
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
