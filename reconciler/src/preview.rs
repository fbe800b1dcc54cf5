//! One plan of a revision, as `cplane plan` prints it and `GET|POST /v1/plan` answers it: the
//! cloud and database steps of every workspace, and what changes in every cluster's bundle
//! (objects added, changed with a diff, removed).
//!
//! [`Preview`] is the JSON contract (`cplane plan --format json`, the API, and what `cplane
//! plan --server` reads back); [`Preview::text`] the terminal form and [`Preview::markdown`]
//! the pull-request comment. All three say the same.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::manifests::ClusterChanges;
use crate::plan::Plan;

/// One plan of a revision against what is applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preview {
    /// The revision planned (a commit id).
    pub commit: String,
    /// Cloud and database steps.
    pub plan: Plan,
    /// Indexes of the steps a run without a cloud skips (they stay open).
    #[serde(default)]
    pub skipped: Vec<usize>,
    /// What changes in each cluster whose bundle changes.
    #[serde(default)]
    pub clusters: Vec<ClusterChanges>,
    /// Notes (no cloud, drift not read, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Whether applying the revision changes anything: a step that is not skipped, a refusal,
    /// a hold, or a cluster's objects.
    pub changes: bool,
}

/// Which steps of `plan` a run without a cloud (`--cloud none`) skips: every cloud step, and
/// every step after a skipped one. They stay in the journal for a run with a cloud.
pub fn skipped_steps(plan: &Plan, cloud: bool) -> Vec<bool> {
    let mut skipped = vec![false; plan.steps.len()];
    if !cloud {
        for (i, step) in plan.steps.iter().enumerate() {
            skipped[i] = step.action.is_cloud() || step.after.iter().any(|a| skipped[*a]);
        }
    }
    skipped
}

impl Preview {
    /// The preview of `plan` and `clusters`; `cloud` says whether the cloud steps would run.
    pub fn new(
        commit: String,
        plan: Plan,
        cloud: bool,
        clusters: Vec<ClusterChanges>,
        notes: Vec<String>,
    ) -> Self {
        let skipped_flags = skipped_steps(&plan, cloud);
        let skipped: Vec<usize> = (0..plan.steps.len())
            .filter(|i| skipped_flags[*i])
            .collect();
        let changes = skipped.len() < plan.steps.len()
            || !plan.refused.is_empty()
            || plan.held.is_some()
            || !clusters.is_empty();
        Self {
            commit,
            plan,
            skipped,
            clusters,
            notes,
            changes,
        }
    }

    fn is_skipped(&self, i: usize) -> bool {
        self.skipped.binary_search(&i).is_ok()
    }

    /// Objects (added, changed, removed) over every cluster.
    pub fn object_counts(&self) -> (usize, usize, usize) {
        self.clusters.iter().fold((0, 0, 0), |(a, c, r), x| {
            (a + x.added.len(), c + x.changed.len(), r + x.removed.len())
        })
    }

    fn step_counts(&self) -> (usize, usize, usize) {
        let count = |c| {
            self.plan
                .steps
                .iter()
                .enumerate()
                .filter(|(i, s)| !self.is_skipped(*i) && s.action.symbol() == c)
                .count()
        };
        (count('+'), count('~'), count('-'))
    }

    /// The one-line summary: steps, then objects.
    pub fn summary(&self) -> String {
        if !self.changes {
            return "No changes.".into();
        }
        let (add, change, destroy) = self.step_counts();
        let (oa, oc, or) = self.object_counts();
        format!(
            "Plan: {add} to add, {change} to change, {destroy} to destroy; objects: {oa} to add, {oc} to change, {or} to remove in {} cluster(s).",
            self.clusters.len()
        )
    }

    /// Terraform-like text: `+` create, `~` change, `-` destroy, grouped by workspace; then each
    /// cluster's objects, a changed object with its diff. Without a cloud the steps it would
    /// skip are listed apart and not counted as changes.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let commit = &self.commit[..12.min(self.commit.len())];
        let _ = writeln!(out, "cplane plan: commit {commit}");
        let mut current = "";
        for (i, step) in self.plan.steps.iter().enumerate() {
            if self.is_skipped(i) {
                continue;
            }
            if step.workspace != current {
                current = &step.workspace;
                let _ = writeln!(out, "\n  workspace {current} ({})", step.reason);
            }
            let _ = writeln!(out, "    {} {}", step.action.symbol(), step.action);
        }
        for r in &self.plan.refused {
            let _ = writeln!(
                out,
                "\n  ! workspace {}: refused: {}",
                r.workspace, r.message
            );
        }
        if let Some(h) = &self.plan.held {
            let _ = writeln!(out, "\n  ! held: {h}");
        }
        for c in &self.clusters {
            let _ = writeln!(
                out,
                "\n  cluster {} ({}, {}/{}): {} to add, {} to change, {} to remove",
                c.cluster,
                c.kind,
                c.region,
                c.environment,
                c.added.len(),
                c.changed.len(),
                c.removed.len()
            );
            for o in &c.added {
                let _ = writeln!(out, "    + {o}");
            }
            for o in &c.changed {
                let _ = writeln!(out, "    ~ {}", o.object);
                for line in o.diff.lines() {
                    let _ = writeln!(out, "        {line}");
                }
            }
            for o in &c.removed {
                let _ = writeln!(out, "    - {o}");
            }
        }
        if !self.skipped.is_empty() {
            let workspaces: BTreeSet<&str> = self
                .skipped
                .iter()
                .map(|i| self.plan.steps[*i].workspace.as_str())
                .collect();
            let _ = writeln!(
                out,
                "\n  {} cloud step(s) of {} workspace(s) skipped: --cloud none (run with --cloud aws to apply them)",
                self.skipped.len(),
                workspaces.len()
            );
        }
        if !self.changes {
            let _ = writeln!(
                out,
                "\nNo changes. The database{} matches the revision. So does every cluster's bundle.",
                if self.skipped.is_empty() {
                    " and cloud"
                } else {
                    ""
                }
            );
            return out;
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }

    /// The plan as a pull-request comment (GitHub-, GitLab- and Gitea-flavoured Markdown):
    /// the summary, the steps per workspace, and each changed cluster's objects with the diffs
    /// in collapsed `diff` blocks.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let commit = &self.commit[..12.min(self.commit.len())];
        let _ = writeln!(
            out,
            "### cplane plan of `{commit}`\n\n**{}**\n",
            self.summary()
        );
        let mut current = "";
        for (i, step) in self.plan.steps.iter().enumerate() {
            if self.is_skipped(i) {
                continue;
            }
            if step.workspace != current {
                current = &step.workspace;
                let _ = writeln!(out, "\n**workspace `{current}`** ({})\n", step.reason);
            }
            let _ = writeln!(out, "- `{}` {}", step.action.symbol(), step.action);
        }
        for r in &self.plan.refused {
            let _ = writeln!(
                out,
                "\n:no_entry: workspace `{}` refused: {}",
                r.workspace, r.message
            );
        }
        if let Some(h) = &self.plan.held {
            let _ = writeln!(out, "\n:warning: held: {h}");
        }
        for c in &self.clusters {
            let _ = writeln!(
                out,
                "\n**cluster `{}`** ({}, {}/{}): {} to add, {} to change, {} to remove\n",
                c.cluster,
                c.kind,
                c.region,
                c.environment,
                c.added.len(),
                c.changed.len(),
                c.removed.len()
            );
            for o in &c.added {
                let _ = writeln!(out, "- `+` {o}");
            }
            for o in &c.removed {
                let _ = writeln!(out, "- `-` {o}");
            }
            for o in &c.changed {
                let _ = writeln!(
                    out,
                    "\n<details><summary><code>~</code> {}</summary>\n\n```diff\n{}```\n</details>",
                    o.object,
                    o.diff.replace("```", "` ` `")
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(
                out,
                "\n_{} cloud step(s) not counted: this control plane runs without a cloud._",
                self.skipped.len()
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n_note: {n}_");
        }
        out
    }
}
