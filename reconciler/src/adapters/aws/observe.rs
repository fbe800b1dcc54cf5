//! Observing the cloud for the drift check: what the NS delegations in the parent zones and the
//! validation CNAMEs in the tenant zones actually are, as the plain maps the planner compares
//! with the journal ([`crate::plan::Observed::delegations`], [`crate::plan::Observed::validation`]).
//!
//! Written against the [`Cloud`] port, not the SDK: the same reads run against [`super::Aws`]
//! and against the in-memory fake of the tests. Reads are batched: one paged listing per parent
//! zone (not a call per workspace), and one per *sampled* tenant zone ([`Sample`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::cloud::{Cloud, Target};
use crate::plan::{DesiredWorkspace, JournalState, Observed, Status, StepKind, StepResult};

/// Why a drift check could not read the cloud (the run goes on without it, and says so).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listing failed.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::Error),
    /// A parent zone is missing from the operator account, or its name has several zones.
    #[error(
        "parent zone {parent}: expected one hosted zone in the operator account, found {found}"
    )]
    ParentZone {
        /// The parent zone's name.
        parent: String,
        /// How many hosted zones have that name.
        found: usize,
    },
}

impl Error {
    /// Whether the next check may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Cloud(e) => e.is_retryable(),
            Error::ParentZone { .. } => false,
        }
    }
}

/// How many tenant zones a drift check reads: all, or the rotating 1-in-`n` slice of this
/// check (so every zone is read once every `n` checks and a check stays within its read
/// budget of N/100 + 5 calls for N workspaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Every workspace.
    All,
    /// The workspaces whose id hashes to this check's slot of `n`.
    OneIn(u64),
}

impl Sample {
    /// Whether workspace `id` is read in the check numbered `epoch`.
    pub fn includes(self, id: &str, epoch: u64) -> bool {
        match self {
            Sample::All => true,
            Sample::OneIn(n) => {
                let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                h % n.max(1) == epoch % n.max(1)
            }
        }
    }
}

/// Drift check of validation records: for the sampled workspaces whose records are journaled,
/// the CNAMEs found in their tenant zone (one paged listing per sampled zone).
pub async fn validation(
    cloud: &dyn Cloud,
    desired: &BTreeMap<String, DesiredWorkspace>,
    observed: &Observed,
    sample: Sample,
    epoch: u64,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<String>>>, Error> {
    let mut out = BTreeMap::new();
    for (id, w) in desired {
        // A deleted workspace being re-created gets a new generation: its journal (and the zone
        // it names, deleted) belongs to the old one. Reading that zone would fail the whole
        // check.
        if observed
            .workspaces
            .get(id)
            .is_some_and(|o| o.status == Status::Deleted)
        {
            continue;
        }
        let done = |k| {
            observed
                .journal
                .get(&(id.clone(), k))
                .filter(|j| j.state == JournalState::Done)
                .and_then(|j| j.result.as_ref())
        };
        let (
            Some(StepResult::CreateZone { zone_id, .. }),
            Some(StepResult::ValidationRecords { records }),
        ) = (
            done(StepKind::CreateZone),
            done(StepKind::ValidationRecords),
        )
        else {
            continue;
        };
        if !sample.includes(id, epoch) {
            continue;
        }
        let names: Vec<&str> = records.iter().map(|r| r.name.as_str()).collect();
        let tenant = Target::Tenant {
            role_arn: &w.role_arn,
            external_id: &w.external_id,
        };
        let found: BTreeMap<String, Vec<String>> = cloud
            .list_records(tenant, zone_id)
            .await?
            .into_iter()
            .filter(|r| r.rtype == "CNAME" && names.contains(&r.name.as_str()))
            .map(|r| (r.name, r.values))
            .collect();
        out.insert(id.clone(), found);
    }
    Ok(out)
}

/// Drift check, batched: the NS records of every parent zone, one paged listing per parent
/// zone (not a call per workspace). Returns delegated zone → NS values.
pub async fn delegations(
    cloud: &dyn Cloud,
    desired: &BTreeMap<String, DesiredWorkspace>,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let wanted: BTreeSet<&str> = desired.values().map(|w| w.zone_name.as_str()).collect();
    let parents: BTreeSet<&str> = desired.values().map(|w| w.parent_zone.as_str()).collect();
    let mut found = BTreeMap::new();
    for parent in parents {
        let zones = cloud.zones_by_name(Target::Operator, parent).await?;
        let [zone] = zones.as_slice() else {
            return Err(Error::ParentZone {
                parent: parent.to_owned(),
                found: zones.len(),
            });
        };
        for r in cloud.list_records(Target::Operator, &zone.id).await? {
            if r.rtype == "NS" && wanted.contains(r.name.as_str()) {
                found.insert(r.name, r.values);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::Sample;

    #[test]
    fn a_rotating_sample_reads_every_zone_once_per_cycle() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("ws{i:05}")).collect();
        let per_epoch: Vec<usize> = (0..400)
            .map(|e| {
                ids.iter()
                    .filter(|id| Sample::OneIn(400).includes(id, e))
                    .count()
            })
            .collect();
        assert_eq!(
            per_epoch.iter().sum::<usize>(),
            ids.len(),
            "each workspace in exactly one epoch of the cycle"
        );
        assert!(
            per_epoch.iter().all(|n| *n < 60),
            "slices stay small: max {:?}",
            per_epoch.iter().max()
        );
        assert!(ids.iter().all(|id| Sample::All.includes(id, 7)));
    }
}
