//! Rollouts, decided: which policy a revision's bundle changes follow, which wave each
//! cluster is in, and what a rollout does next given its clusters' reports. Pure: the
//! reconciler's `rollout` module reads and writes the database around these functions.

use std::collections::{BTreeMap, BTreeSet};

use cplane_schema::model::RolloutPolicy;
use cplane_schema::rollout::OnFailure;
use cplane_schema::Model;
use sha2::Digest as _;

/// One cluster a rollout covers, with what waves select it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Cluster id (`w-acme`, `prod-sgp-1`).
    pub cluster: String,
    /// Its workspace id, for tenant clusters.
    pub workspace: Option<String>,
    /// The workspace's `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// The wave of each member (same order as `members`): each wave in turn takes, of the
/// members still unassigned that it selects (`ids` in their order, then `labels`; all when it
/// gives neither), at most `count`, or `percent` of all members rounded up; the last wave
/// also takes every member left.
pub fn assign(policy: &RolloutPolicy, members: &[Member]) -> Vec<usize> {
    let total = members.len();
    let last = policy.waves.len().saturating_sub(1);
    let mut wave_of: Vec<Option<usize>> = vec![None; total];
    for (w, wave) in policy.waves.iter().enumerate() {
        let limit = match (wave.count, wave.percent) {
            (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
            (None, Some(p)) => (total * usize::try_from(p).unwrap_or(100)).div_ceil(100),
            (None, None) => usize::MAX,
        };
        let selects = |m: &Member| {
            let by_labels = !wave.labels.is_empty()
                && wave.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v));
            by_labels || (wave.ids.is_empty() && wave.labels.is_empty())
        };
        // `ids` first, in the order the wave lists them.
        let mut picked: Vec<usize> = Vec::new();
        for id in &wave.ids {
            if let Some(i) = members.iter().enumerate().position(|(i, m)| {
                wave_of[i].is_none()
                    && !picked.contains(&i)
                    && (m.workspace.as_deref() == Some(id.as_str()) || m.cluster == *id)
            }) {
                picked.push(i);
            }
        }
        for (i, m) in members.iter().enumerate() {
            if wave_of[i].is_none() && !picked.contains(&i) && selects(m) {
                picked.push(i);
            }
        }
        for i in picked.into_iter().take(limit) {
            wave_of[i] = Some(w);
        }
    }
    wave_of.into_iter().map(|w| w.unwrap_or(last)).collect()
}

/// A fingerprint of each stack's definition (its document without `spec.rollout`, and its
/// templates): a stack whose fingerprint changed between two revisions changed.
pub fn stack_fingerprints(model: &Model) -> BTreeMap<String, String> {
    model
        .stacks
        .iter()
        .map(|(name, entry)| {
            let mut doc = entry.entity.doc.clone();
            doc.spec.rollout = None;
            let mut h = sha2::Sha256::new();
            h.update(serde_json::to_vec(&doc).expect("documents serialize"));
            for (path, text) in &entry.templates {
                h.update(path.as_bytes());
                h.update([0]);
                h.update(text.as_bytes());
                h.update([0]);
            }
            (name.clone(), hex::encode(h.finalize()))
        })
        .collect()
}

/// The stacks whose fingerprint differs from `before` (a stack new since `before` counts).
/// Nothing when `before` is empty: the first revision a database sees is not a change.
pub fn changed_stacks(
    before: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    if before.is_empty() {
        return Vec::new();
    }
    now.iter()
        .filter(|(name, fp)| before.get(*name) != Some(*fp))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The policy a change of `stacks` follows: the first of them (by name) that declares one,
/// else the platform's `spec.rollout`; `None` (publish at once) when neither is given or no
/// stack changed.
pub fn policy_for<'m>(model: &'m Model, stacks: &[String]) -> Option<&'m RolloutPolicy> {
    if stacks.is_empty() {
        return None;
    }
    stacks
        .iter()
        .filter_map(|s| model.stacks.get(s))
        .find_map(|e| e.entity.doc.spec.rollout.as_ref())
        .or(model.platform.doc.spec.rollout.as_deref())
}

/// The members of a rollout over `clusters` (ids), from the model's workspaces.
pub fn members(model: &Model, clusters: &BTreeSet<String>) -> Vec<Member> {
    clusters
        .iter()
        .map(|c| {
            let ws = c.strip_prefix("w-").and_then(|id| model.workspaces.get(id));
            Member {
                cluster: c.clone(),
                workspace: ws.map(|w| w.doc.metadata.name.clone()),
                labels: ws
                    .map(|w| w.doc.metadata.labels.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Where one cluster of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterState {
    /// Not reached yet: keeps its current bundle.
    Pending,
    /// Its wave is current but a sync window is closed (or its workspace is suspended).
    Held,
    /// Published; waiting for its agent to report the digest applied and healthy.
    Published,
    /// Reported the digest applied and healthy.
    Done,
    /// Did not pass the gate: an apply error, or not healthy within the timeout.
    Failed,
    /// Left out: a newer rollout took it over, or this rollout was aborted before reaching it.
    Skipped,
}

impl ClusterState {
    /// The label stored and shown.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Held => "held",
            Self::Published => "published",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// From [`ClusterState::label`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "held" => Self::Held,
            "published" => Self::Published,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RolloutState {
    /// Publishing its current wave and waiting for the wave's gate.
    Progressing,
    /// The current wave's gate passed; waiting out the bake time.
    Baking,
    /// Stopped by a failed gate or an operator; resume or promote to go on.
    Paused,
    /// Every wave passed.
    Completed,
    /// Stopped for good by an operator or a failed gate (`onFailure: abort`).
    Aborted,
    /// A newer revision changed the same clusters again.
    Superseded,
}

impl RolloutState {
    /// The label stored and shown.
    pub fn label(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Baking => "baking",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Superseded => "superseded",
        }
    }

    /// From [`RolloutState::label`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "progressing" => Self::Progressing,
            "baking" => Self::Baking,
            "paused" => Self::Paused,
            "completed" => Self::Completed,
            "aborted" => Self::Aborted,
            "superseded" => Self::Superseded,
            _ => return None,
        })
    }

    /// Still publishing (or able to, once resumed).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Progressing | Self::Baking | Self::Paused)
    }
}

/// What a cluster's agent last said, as a gate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Digest applied.
    pub digest: String,
    /// Whether every object applied and is healthy.
    pub healthy: bool,
    /// Whether some object failed to apply (an error no waiting mends).
    pub apply_failed: bool,
    /// When it was reported, unix millis.
    pub at: i64,
}

/// The gate's verdict on one published cluster at `now`: `Done` when its agent reported the
/// target digest applied and healthy, `Failed` when it reported an apply error for it or the
/// timeout passed since publishing, else still `Published`.
pub fn gate(
    target: &str,
    published_at: i64,
    timeout_ms: i64,
    report: Option<&Report>,
    now: i64,
) -> ClusterState {
    match report {
        Some(r) if r.digest == target && r.healthy => ClusterState::Done,
        Some(r) if r.digest == target && r.apply_failed => ClusterState::Failed,
        _ if now.saturating_sub(published_at) >= timeout_ms => ClusterState::Failed,
        _ => ClusterState::Published,
    }
}

/// What a failed gate turns its rollout into.
pub fn on_failure(policy: &RolloutPolicy) -> RolloutState {
    match policy.on_failure {
        OnFailure::Pause => RolloutState::Paused,
        OnFailure::Abort => RolloutState::Aborted,
    }
}

/// Where a cluster stands, as its status and `cplane_clusters{state}` tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Standing {
    /// Its workspace is suspended (`spec.suspend: true`): it gets no new bundle.
    Suspended,
    /// Its agent never reported.
    NeverReported,
    /// Its agent has not reported for longer than the offline threshold.
    Offline,
    /// Its agent's last report says an object failed to apply or is not healthy.
    Failed,
    /// Healthy, but on an older bundle than it is pointed at (or than a rollout holds for it).
    Behind,
    /// Healthy on the bundle it is pointed at, and nothing newer waits for it.
    InSync,
}

impl Standing {
    /// Every standing, in order.
    pub const ALL: [Standing; 6] = [
        Self::Suspended,
        Self::NeverReported,
        Self::Offline,
        Self::Failed,
        Self::Behind,
        Self::InSync,
    ];

    /// The label shown (`in-sync`, `behind`, `failed`, `offline`, `never-reported`,
    /// `suspended`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Suspended => "suspended",
            Self::NeverReported => "never-reported",
            Self::Offline => "offline",
            Self::Failed => "failed",
            Self::Behind => "behind",
            Self::InSync => "in-sync",
        }
    }
}

/// What a cluster's agent last reported, as [`standing`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The generation it applied.
    pub generation: i64,
    /// Whether every object applied and is healthy.
    pub healthy: bool,
    /// When it reported, unix millis.
    pub at: i64,
}

/// Where a cluster stands at `now`, and by how many generations it is behind: the
/// generations published to it but not applied by its agent (its head's generation minus the
/// reported one; all of them before a first report), plus one while an active rollout holds a
/// newer bundle for it (`waiting`). The first that holds of: suspended, never reported,
/// offline (no report for `offline_after_ms`), failed (the last report is not healthy),
/// behind, in sync.
pub fn standing(
    head_generation: Option<i64>,
    seen: Option<Seen>,
    waiting: bool,
    suspended: bool,
    now: i64,
    offline_after_ms: i64,
) -> (Standing, i64) {
    let reported = seen.map_or(0, |s| s.generation);
    let behind_by = (head_generation.unwrap_or(0) - reported).max(0) + i64::from(waiting);
    let state = match seen {
        _ if suspended => Standing::Suspended,
        None => Standing::NeverReported,
        Some(s) if now.saturating_sub(s.at) > offline_after_ms => Standing::Offline,
        Some(s) if !s.healthy => Standing::Failed,
        _ if behind_by > 0 => Standing::Behind,
        _ => Standing::InSync,
    };
    (state, behind_by)
}

/// Holds suspended workspaces (`spec.suspend: true`): takes them out of both the desired
/// and the observed workspaces, so the planner plans no step for them (neither provisioning
/// nor removal). Returns their ids.
pub fn hold_suspended(
    model: &Model,
    desired: &mut BTreeMap<String, crate::plan::DesiredWorkspace>,
    observed: &mut crate::plan::Observed,
) -> Vec<String> {
    let held: Vec<String> = model
        .workspaces
        .iter()
        .filter(|(_, w)| w.doc.spec.suspend)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &held {
        desired.remove(id);
        observed.workspaces.remove(id);
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use cplane_schema::rollout::Wave;

    fn wave(name: &str) -> Wave {
        Wave {
            name: name.into(),
            ids: Vec::new(),
            labels: BTreeMap::new(),
            count: None,
            percent: None,
        }
    }

    fn member(i: usize, tier: Option<&str>) -> Member {
        Member {
            cluster: format!("w-t{i:02}"),
            workspace: Some(format!("t{i:02}")),
            labels: tier
                .map(|t| BTreeMap::from([("tier".to_owned(), t.to_owned())]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn waves_take_ids_then_labels_then_counts_and_the_last_takes_the_rest() {
        let members: Vec<Member> = (0..20)
            .map(|i| member(i, (i % 10 == 3).then_some("canary")))
            .collect();
        let policy = RolloutPolicy {
            waves: vec![
                Wave {
                    ids: vec!["t07".into()],
                    labels: BTreeMap::from([("tier".into(), "canary".into())]),
                    ..wave("canary")
                },
                Wave {
                    percent: Some(25),
                    ..wave("quarter")
                },
                Wave {
                    count: Some(2),
                    ..wave("two")
                },
                wave("rest"),
            ],
            max_unavailable: None,
            health_timeout: "1m".into(),
            bake_time: "0s".into(),
            on_failure: OnFailure::Pause,
        };
        let waves = assign(&policy, &members);
        let of = |w: usize| -> Vec<usize> { (0..20).filter(|i| waves[*i] == w).collect() };
        assert_eq!(of(0), vec![3, 7, 13]);
        assert_eq!(of(1), vec![0, 1, 2, 4, 5]); // 25 % of 20
        assert_eq!(of(2), vec![6, 8]);
        assert_eq!(of(3).len(), 20 - 3 - 5 - 2);
    }

    #[test]
    fn the_gate_passes_on_a_healthy_report_and_fails_on_errors_or_time() {
        let r = |digest: &str, healthy, apply_failed| Report {
            digest: digest.into(),
            healthy,
            apply_failed,
            at: 0,
        };
        assert_eq!(
            gate("d2", 0, 100, Some(&r("d2", true, false)), 5),
            ClusterState::Done
        );
        assert_eq!(
            gate("d2", 0, 100, Some(&r("d1", true, false)), 5),
            ClusterState::Published
        );
        assert_eq!(
            gate("d2", 0, 100, Some(&r("d2", false, false)), 5),
            ClusterState::Published
        );
        assert_eq!(
            gate("d2", 0, 100, Some(&r("d2", false, true)), 5),
            ClusterState::Failed
        );
        assert_eq!(gate("d2", 0, 100, None, 100), ClusterState::Failed);
    }

    #[test]
    fn a_cluster_stands_suspended_then_unseen_offline_failed_behind_or_in_sync() {
        let seen = |generation, healthy, at| {
            Some(Seen {
                generation,
                healthy,
                at,
            })
        };
        let at = |head, s, waiting, suspended| standing(head, s, waiting, suspended, 1_000, 100);
        assert_eq!(
            at(Some(3), seen(3, true, 950), false, true),
            (Standing::Suspended, 0)
        );
        assert_eq!(
            at(Some(2), None, false, false),
            (Standing::NeverReported, 2)
        );
        assert_eq!(
            at(Some(3), seen(2, true, 899), false, false),
            (Standing::Offline, 1)
        );
        assert_eq!(
            at(Some(3), seen(3, false, 950), false, false),
            (Standing::Failed, 0)
        );
        assert_eq!(
            at(Some(5), seen(3, true, 950), false, false),
            (Standing::Behind, 2)
        );
        assert_eq!(
            at(Some(3), seen(3, true, 950), true, false),
            (Standing::Behind, 1)
        );
        assert_eq!(
            at(Some(3), seen(3, true, 900), false, false),
            (Standing::InSync, 0)
        );
    }

    #[test]
    fn only_changed_stacks_count_and_the_first_revision_is_no_change() {
        let before = BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".into(), "1".into())]);
        let now = BTreeMap::from([
            ("a".to_owned(), "2".to_owned()),
            ("b".into(), "1".into()),
            ("c".into(), "1".into()),
        ]);
        assert_eq!(
            changed_stacks(&before, &now),
            vec!["a".to_owned(), "c".to_owned()]
        );
        assert!(changed_stacks(&BTreeMap::new(), &now).is_empty());
    }
}
