//! Observing the cloud for the drift check: what the NS delegations in the parent zones and the
//! validation CNAMEs in the tenant zones actually are, as the plain maps the planner compares
//! with the journal ([`crate::plan::Observed::delegations`], [`crate::plan::Observed::validation`]).
//!
//! Written against the [`Cloud`] port, not the SDK: the same reads run against [`super::Aws`]
//! and against the in-memory fake of the tests. Reads are batched: one paged listing per parent
//! zone (not a call per workspace), and one per tenant zone in the check's [`Window`] (each zone
//! at least once an hour by default, [`Sample::HOURLY`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use crate::cloud::{Cloud, Target};
use crate::plan::{
    CertificateDrift, DesiredWorkspace, JournalState, Observed, Status, StepKind, StepResult,
    TenantDrift, ZoneDrift,
};

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

/// Which tenant zones drift checks read: all of them in every check, or each at least once
/// every `period` (each check reads the zones whose slot fell in the time since the previous
/// check, so the reads of a period are spread evenly over its checks, however often they run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Every workspace, every check (`--deep-drift`).
    All,
    /// Every workspace at least once per period.
    Every(Duration),
}

impl Sample {
    /// The default: every tenant zone at least once an hour.
    pub const HOURLY: Sample = Sample::Every(Duration::from_secs(3600));

    /// The window of a check at `now_ms` whose previous check ended at `previous_ms` (`None`:
    /// no check yet; the window is then the last [`FIRST_WINDOW`]).
    pub fn window(self, previous_ms: Option<i64>, now_ms: i64) -> Window {
        match self {
            Sample::All => Window::All,
            Sample::Every(period) => {
                let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
                let first = i64::try_from(FIRST_WINDOW.as_millis()).unwrap_or(0);
                let from = previous_ms.unwrap_or(now_ms - first).min(now_ms);
                if now_ms - from >= period_ms {
                    Window::All
                } else {
                    Window::Slots {
                        from: from.rem_euclid(period_ms),
                        to: now_ms.rem_euclid(period_ms),
                        period: period_ms,
                    }
                }
            }
        }
    }
}

/// A first check with no previous one reads the zones of this much time (a slice, not all:
/// a new server of a large region must not read every zone at once).
pub const FIRST_WINDOW: Duration = Duration::from_secs(180);

/// The workspaces one check reads ([`Sample::window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// All of them.
    All,
    /// Those whose slot (a hash of the id modulo `period`, in milliseconds) lies in
    /// `(from, to]`, wrapping around the period.
    Slots {
        /// Start of the window, exclusive (milliseconds into the period).
        from: i64,
        /// End of the window, inclusive.
        to: i64,
        /// The period, in milliseconds.
        period: i64,
    },
}

impl Window {
    /// Whether workspace `id` is read.
    pub fn includes(self, id: &str) -> bool {
        match self {
            Window::All => true,
            Window::Slots { from, to, period } => {
                let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                let slot = i64::try_from(h % period.unsigned_abs()).unwrap_or(0);
                if from <= to {
                    from < slot && slot <= to
                } else {
                    slot > from || slot <= to
                }
            }
        }
    }
}

/// What the drift check of tenant accounts found ([`tenants`]), for
/// [`Observed::validation`] and [`Observed::tenant_drift`].
#[derive(Debug, Default)]
pub struct TenantChecks {
    /// Validation CNAMEs found per checked workspace: record name → values.
    pub validation: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// Zones and certificates found wrong, per workspace.
    pub drift: BTreeMap<String, TenantDrift>,
    /// Workspaces checked.
    pub checked: usize,
}

/// A certificate expiring within this time and not renewed by ACM (which renews DNS-validated
/// certificates in use from 60 days before expiry) is replaced.
pub const RENEWAL_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Drift check of tenant accounts, for the workspaces in `window` whose zone is journaled:
/// one paged listing of the zone's records (validation CNAMEs; a zone gone answers
/// `NoSuchHostedZone`, and only then are zones of that name listed), and one describe of the
/// certificate once it was issued (deleted, failed, expired, revoked, or expiring within
/// [`RENEWAL_WINDOW`] of `now`).
pub async fn tenants(
    cloud: &dyn Cloud,
    desired: &BTreeMap<String, DesiredWorkspace>,
    observed: &Observed,
    window: Window,
    now: SystemTime,
) -> Result<TenantChecks, Error> {
    let mut out = TenantChecks::default();
    for (id, w) in desired {
        // A deleted workspace being re-created gets a new generation: its journal (and the zone
        // it names, deleted) belongs to the old one.
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
        let zone = match done(StepKind::CreateZone) {
            Some(StepResult::CreateZone { zone_id, .. }) => Some(zone_id),
            _ => None,
        };
        let certificate = match (
            done(StepKind::RequestCertificate),
            done(StepKind::AwaitCertificate),
        ) {
            (
                Some(StepResult::RequestCertificate { arn }),
                Some(StepResult::AwaitCertificate { .. }),
            ) => Some(arn),
            _ => None,
        };
        if (zone.is_none() && certificate.is_none()) || !window.includes(id) {
            continue;
        }
        out.checked += 1;
        let tenant = Target::Tenant {
            role_arn: &w.role_arn,
            external_id: &w.external_id,
            aws_region: &w.aws_region,
        };
        let mut drift = TenantDrift::default();
        if let Some(arn) = certificate {
            drift.certificate = certificate_drift(cloud, tenant, arn, now).await?;
        }
        let Some(zone_id) = zone else {
            if drift != TenantDrift::default() {
                out.drift.insert(id.clone(), drift);
            }
            continue;
        };
        match cloud.list_records(tenant, zone_id).await {
            Ok(records) => {
                if let Some(StepResult::ValidationRecords { records: written }) =
                    done(StepKind::ValidationRecords)
                {
                    let names: Vec<&str> = written.iter().map(|r| r.name.as_str()).collect();
                    let found = records
                        .into_iter()
                        .filter(|r| r.rtype == "CNAME" && names.contains(&r.name.as_str()))
                        .map(|r| (r.name, r.values))
                        .collect();
                    out.validation.insert(id.clone(), found);
                }
            }
            Err(e) if e.code() == Some("NoSuchHostedZone") => {
                let found: Vec<String> = cloud
                    .zones_by_name(tenant, &w.zone_name)
                    .await?
                    .into_iter()
                    .map(|z| z.id)
                    .collect();
                drift.zone = Some(if found.is_empty() {
                    ZoneDrift::Deleted {
                        zone_id: zone_id.clone(),
                    }
                } else {
                    ZoneDrift::Replaced {
                        zone_id: zone_id.clone(),
                        found,
                    }
                });
            }
            Err(e) => return Err(e.into()),
        }
        if drift != TenantDrift::default() {
            out.drift.insert(id.clone(), drift);
        }
    }
    Ok(out)
}

/// What is wrong with an issued certificate, if anything.
async fn certificate_drift(
    cloud: &dyn Cloud,
    tenant: Target<'_>,
    arn: &str,
    now: SystemTime,
) -> Result<Option<CertificateDrift>, Error> {
    let c = match cloud.describe_certificate(tenant, arn).await {
        Ok(c) => c,
        Err(e) if e.code() == Some("ResourceNotFoundException") => {
            return Ok(Some(CertificateDrift::Deleted {
                arn: arn.to_owned(),
            }))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match c.status.as_str() {
        "ISSUED" => {
            c.not_after
                .filter(|t| *t < now + RENEWAL_WINDOW)
                .map(|t| CertificateDrift::Expiring {
                    arn: arn.to_owned(),
                    not_after: humantime::format_rfc3339_seconds(t).to_string(),
                })
        }
        // Pending validation or renewal: ACM is working on it.
        "PENDING_VALIDATION" => None,
        _ => Some(CertificateDrift::Unusable {
            arn: arn.to_owned(),
            status: c.status,
        }),
    })
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
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// The ids read by checks at `times` (each after the previous), as counts per id.
    fn reads(ids: &[String], times: &[i64]) -> BTreeMap<String, usize> {
        let mut seen: BTreeMap<String, usize> = ids.iter().map(|i| (i.clone(), 0)).collect();
        let mut previous = None;
        for &now in times {
            let window = Sample::HOURLY.window(previous, now);
            for id in ids {
                if window.includes(id) {
                    *seen.get_mut(id).expect("id") += 1;
                }
            }
            previous = Some(now);
        }
        seen
    }

    #[test]
    fn every_zone_is_read_once_an_hour_however_often_checks_run() {
        let ids: Vec<String> = (0..2000).map(|i| format!("w{i:05}")).collect();
        let start = 7 * HOUR + 123_456;
        // Every 3 minutes, jittered; every 10 seconds; once every 50 minutes: over exactly one
        // hour after the first check, each zone is read exactly once.
        for step in [180_000 + 7_000, 10_000, 50 * 60_000] {
            let mut times = vec![start];
            while *times.last().expect("one") < start + HOUR {
                times.push((times.last().expect("one") + step).min(start + HOUR));
            }
            let seen = reads(&ids, &times[..]);
            let first = Sample::HOURLY.window(None, start);
            for (id, n) in &seen {
                let expected = 1 + usize::from(first.includes(id));
                assert_eq!(*n, expected, "{id} with checks every {step} ms");
            }
        }
    }

    #[test]
    fn a_check_after_a_long_gap_reads_everything_and_a_first_check_a_slice() {
        assert_eq!(Sample::HOURLY.window(Some(0), HOUR), Window::All);
        assert_eq!(Sample::HOURLY.window(Some(0), 5 * HOUR), Window::All);
        assert_eq!(Sample::All.window(Some(0), 1), Window::All);
        let ids: Vec<String> = (0..2000).map(|i| format!("w{i:05}")).collect();
        let first = Sample::HOURLY.window(None, 10 * HOUR);
        let n = ids.iter().filter(|i| first.includes(i)).count();
        // 3 minutes of an hour: a twentieth, give or take the hash's spread.
        assert!((60..=150).contains(&n), "{n}");
    }
}
