//! An in-memory [`Cloud`]: Route53 hosted zones and record sets, ACM certificates, accounts
//! reached through roles — enough of AWS for apply's crash and property tests to run in
//! milliseconds. The moto tests (`aws_moto.rs`, `apply_moto.rs`) remain the adapter's tests.
//!
//! Emulated faithfully (as real AWS behaves, then as [`cplane_reconciler::aws::Aws`] maps it):
//! - Accounts: the operator account ([`OPERATOR`]) for [`Target::Operator`]; a tenant account
//!   per role, its id read from the role ARN. Each account has its own zones and certificates.
//! - Hosted zones: ids `Z…`, four name servers, apex SOA and NS records. A CallerReference is
//!   used once per account, forever: reusing it answers `HostedZoneAlreadyExists`, which the
//!   adapter resolves to the zone created with it (the call is counted with that outcome), or
//!   fails when that zone was deleted. Deleting a zone holding more than its apex records is
//!   `HostedZoneNotEmpty`; deleting one already gone succeeds.
//! - Record sets: a change batch is atomic. UPSERT creates or replaces the (name, type) set;
//!   DELETE must match name, type, TTL and values exactly (a mismatch is `InvalidChangeBatch`,
//!   not retryable). A DELETE of a record not there makes AWS reject the whole batch with "not
//!   found", which the adapter treats as success: nothing of that batch is deleted. Records
//!   outside the zone are `InvalidChangeBatch`; an unknown zone is `NoSuchHostedZone`.
//! - Certificates are regional: requested in, and listed from, the target's `aws_region`
//!   ([`DEFAULT_REGION`] when empty); their ARN names that region, and calls on an ARN reach
//!   it wherever it lives. `RequestCertificate` with the same IdempotencyToken, domain, SANs and
//!   tags in the same region returns the same ARN (for as long as that certificate exists). One validation CNAME per
//!   base domain (the wildcard and the apex share it), published at once. A certificate is
//!   ISSUED on the (N+1)-th describe that finds its validation record resolvable, N set by
//!   [`FakeCloud::issue_after`] (default 2) — resolvable meaning present in a zone that is
//!   itself reachable: a top-most zone, or one delegated from a reachable enclosing zone by NS
//!   records equal to its name servers. Deleting a certificate marked in use
//!   ([`FakeCloud::set_in_use`]) is a retryable `ResourceInUseException`; one already gone is
//!   fine; describing an unknown ARN is `ResourceNotFoundException`.
//! - Calls are counted by operation and outcome, with the names [`Aws::calls`] uses.
//! - Faults: [`FakeCloud::lose_answer`] executes a mutating call and then loses its answer (a
//!   retryable transport error after the state changed); [`FakeCloud::crash_at`] does the same
//!   and fails every later call until [`FakeCloud::heal`], as if the process had died there.
//!
//! Not emulated: IAM (any role ARN with a 12-digit account is assumable; ExternalIds are not
//! checked), throttling, pagination, SDK retries, eventual consistency (a change is visible at
//! once, no `PENDING` change status), the one-hour expiry of ACM idempotency tokens, record
//! types' value syntax, routing policies other than simple, private zones, DNSSEC, quotas.
//!
//! [`Aws::calls`]: cplane_reconciler::aws::Aws::calls

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use cplane_reconciler::cloud::{
    Certificate, Cloud, CloudFuture, Error, HostedZone, RecordSet, Target,
};

/// The operator account's id.
pub const OPERATOR: &str = "123456789012";

/// How long an issued certificate is valid (ACM's 395 days).
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(395 * 24 * 3600);

/// The region of ACM calls whose target names none (the adapter's configured region).
pub const DEFAULT_REGION: &str = "us-east-1";

/// A certificate as [`FakeCloud::certificates`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// ARN.
    pub arn: String,
    /// The AWS region it lives in (ACM is regional).
    pub region: String,
    /// Primary domain.
    pub domain: String,
    /// `PENDING_VALIDATION` or `ISSUED`.
    pub status: String,
    /// Tags, sorted.
    pub tags: Vec<(String, String)>,
}

/// When a fault strikes: the next mutating call matching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The k-th mutating call from now (1-based).
    Nth(u64),
    /// The first mutating call whose label (see [`FakeCloud::mutation_log`]) is this.
    Label(String),
}

#[derive(Debug, Clone)]
struct Fault {
    trigger: Trigger,
    crash: bool,
}

#[derive(Debug, Clone)]
struct Zone {
    name: String,
    caller_reference: String,
    name_servers: Vec<String>,
    records: BTreeMap<(String, String), RecordSet>,
}

#[derive(Debug, Clone)]
struct Cert {
    domain: String,
    tags: Vec<(String, String)>,
    validation: RecordSet,
    status: String,
    seen_valid: u32,
    in_use: bool,
    not_after: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Account {
    zones: BTreeMap<String, Zone>,
    caller_references: BTreeMap<String, String>,
    certificates: BTreeMap<String, Cert>,
    tokens: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct World {
    accounts: BTreeMap<String, Account>,
    next: u64,
    calls: BTreeMap<(String, String), u64>,
    mutations: u64,
    log: Vec<String>,
    fault: Option<Fault>,
    fault_base: u64,
    fired: bool,
    crashed: bool,
    issue_after: u32,
}

/// The fake cloud. Share it as `Arc<FakeCloud>` and hand apply a clone as `Arc<dyn Cloud>`.
#[derive(Debug)]
pub struct FakeCloud {
    world: Mutex<World>,
}

impl Default for FakeCloud {
    fn default() -> Self {
        Self::new()
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn within(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn sorted(mut r: RecordSet) -> RecordSet {
    r.name = norm(&r.name);
    r.values = r.values.iter().map(|v| norm(v)).collect();
    r.values.sort();
    r
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The region ACM calls of `t` go to: the tenant's, or [`DEFAULT_REGION`] when empty (as the
/// adapter falls back to its configuration's region).
fn acm_region(t: Target<'_>) -> &str {
    match t {
        Target::Tenant { aws_region, .. } if !aws_region.is_empty() => aws_region,
        _ => DEFAULT_REGION,
    }
}

fn region_of_arn(arn: &str) -> &str {
    arn.split(':').nth(3).unwrap_or("")
}

fn account_of(t: Target<'_>) -> Result<String, Error> {
    match t {
        Target::Operator => Ok(OPERATOR.to_owned()),
        Target::Tenant { role_arn, .. } => {
            let account = role_arn.split(':').nth(4).unwrap_or("");
            if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
                Ok(account.to_owned())
            } else {
                Err(Error::call(
                    "sts:AssumeRole",
                    "AccessDenied",
                    &format!("cannot assume {role_arn}"),
                    false,
                ))
            }
        }
    }
}

impl FakeCloud {
    /// An empty cloud: no zones, no certificates; certificates issue on the third describe
    /// that finds their validation record.
    pub fn new() -> Self {
        Self {
            world: Mutex::new(World {
                issue_after: 2,
                ..World::default()
            }),
        }
    }

    /// Certificates issue on the (`n`+1)-th describe that finds their validation record
    /// resolvable (`0`: at the first).
    pub fn issue_after(self, n: u32) -> Self {
        self.world().issue_after = n;
        self
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("fake cloud lock")
    }

    /// Calls so far: (operation, outcome) → count, as [`cplane_reconciler::aws::Aws::calls`].
    pub fn calls(&self) -> BTreeMap<(String, String), u64> {
        self.world().calls.clone()
    }

    /// Mutating calls so far (whatever their outcome).
    pub fn mutations(&self) -> u64 {
        self.world().mutations
    }

    /// Every mutating call so far, in order, as `operation resource` (e.g.
    /// `route53:CreateHostedZone 111111111111 w-acme.sgp-1.cogrion.com`).
    pub fn mutation_log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    /// Forgets the call counts and the mutation log.
    pub fn reset_counts(&self) {
        let mut w = self.world();
        w.calls.clear();
        w.log.clear();
        w.fault_base = w.mutations;
    }

    /// The mutating call `trigger` names is executed, then its answer is lost: the caller gets
    /// a retryable transport error while the change stands.
    pub fn lose_answer(&self, trigger: Trigger) {
        self.set_fault(trigger, false);
    }

    /// Like [`FakeCloud::lose_answer`], and every call after it fails (retryable, no effect)
    /// until [`FakeCloud::heal`]: the process died right after the call.
    pub fn crash_at(&self, trigger: Trigger) {
        self.set_fault(trigger, true);
    }

    fn set_fault(&self, trigger: Trigger, crash: bool) {
        let mut w = self.world();
        w.fault_base = w.mutations;
        w.fault = Some(Fault { trigger, crash });
        w.fired = false;
    }

    /// Whether the fault set last has struck.
    pub fn fault_fired(&self) -> bool {
        self.world().fired
    }

    /// Clears any fault and the crash: calls work again.
    pub fn heal(&self) {
        let mut w = self.world();
        w.fault = None;
        w.crashed = false;
    }

    /// Marks a certificate in use (by a load balancer) or not.
    pub fn set_in_use(&self, account: &str, arn: &str, in_use: bool) {
        if let Some(c) = self
            .world()
            .accounts
            .get_mut(account)
            .and_then(|a| a.certificates.get_mut(arn))
        {
            c.in_use = in_use;
        }
    }

    // Inspection and drift, outside the API (not counted, never faulted).

    /// Every zone of an account, with name servers.
    pub fn zones(&self, account: &str) -> Vec<HostedZone> {
        let w = self.world();
        w.accounts
            .get(account)
            .map(|a| {
                a.zones
                    .iter()
                    .map(|(id, z)| HostedZone {
                        id: id.clone(),
                        name: z.name.clone(),
                        caller_reference: z.caller_reference.clone(),
                        name_servers: z.name_servers.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every account that has a zone or a certificate.
    pub fn accounts(&self) -> Vec<String> {
        self.world().accounts.keys().cloned().collect()
    }

    /// The record sets of a zone (any account).
    pub fn records(&self, zone_id: &str) -> Vec<RecordSet> {
        let w = self.world();
        w.accounts
            .values()
            .find_map(|a| a.zones.get(zone_id))
            .map(|z| z.records.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every certificate of an account.
    pub fn certificates(&self, account: &str) -> Vec<CertificateInfo> {
        let w = self.world();
        w.accounts
            .get(account)
            .map(|a| {
                a.certificates
                    .iter()
                    .map(|(arn, c)| CertificateInfo {
                        arn: arn.clone(),
                        region: region_of_arn(arn).to_owned(),
                        domain: c.domain.clone(),
                        status: c.status.clone(),
                        tags: c.tags.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drift: sets a certificate's status and expiry (any account), as time or a revocation
    /// would. Returns whether it exists.
    pub fn set_certificate(&self, arn: &str, status: &str, not_after: Option<SystemTime>) -> bool {
        let mut w = self.world();
        let Some(c) = w
            .accounts
            .values_mut()
            .find_map(|a| a.certificates.get_mut(arn))
        else {
            return false;
        };
        c.status = status.to_owned();
        c.not_after = not_after;
        true
    }

    /// Drift: deletes a hosted zone with whatever records it holds (any account), as someone
    /// emptying and deleting it in the console would. Returns whether it was there.
    pub fn drop_zone(&self, zone_id: &str) -> bool {
        let mut w = self.world();
        w.accounts
            .values_mut()
            .any(|a| a.zones.remove(zone_id).is_some())
    }

    /// Drift: removes the record set `(name, rtype)` from a zone (any account), as a hand edit
    /// in the console would. Returns whether it was there.
    pub fn remove_record(&self, zone_id: &str, name: &str, rtype: &str) -> bool {
        let mut w = self.world();
        w.accounts
            .values_mut()
            .find_map(|a| a.zones.get_mut(zone_id))
            .and_then(|z| z.records.remove(&(norm(name), rtype.to_owned())))
            .is_some()
    }

    // The API.

    /// Counts a call; for mutating calls, applies the fault. `run` performs the call.
    fn call<T>(
        &self,
        op: &'static str,
        mutating: Option<String>,
        run: impl FnOnce(&mut World) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = self.world();
        if w.crashed {
            let e = Error::call(op, "transport", "connection refused (fake: crashed)", true);
            *w.calls
                .entry((op.to_owned(), "transport".into()))
                .or_insert(0) += 1;
            return Err(e);
        }
        let mut lose = false;
        if let Some(label) = &mutating {
            w.mutations += 1;
            w.log.push(label.clone());
            let strikes = match &w.fault {
                Some(Fault {
                    trigger: Trigger::Nth(k),
                    ..
                }) => w.mutations - w.fault_base == *k,
                Some(Fault {
                    trigger: Trigger::Label(l),
                    ..
                }) => l == label,
                None => false,
            };
            if strikes {
                let crash = w.fault.take().is_some_and(|f| f.crash);
                w.fired = true;
                w.crashed = crash;
                lose = true;
            }
        }
        let result = run(&mut w);
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().unwrap_or(e.label()).to_owned(),
        };
        *w.calls.entry((op.to_owned(), outcome)).or_insert(0) += 1;
        if lose {
            return Err(Error::call(
                op,
                "transport",
                "connection reset before the answer (fake: answer lost)",
                true,
            ));
        }
        result
    }

    fn zones_by_name_now(w: &World, account: &str, name: &str) -> Vec<HostedZone> {
        let want = norm(name);
        w.accounts
            .get(account)
            .map(|a| {
                a.zones
                    .iter()
                    .filter(|(_, z)| z.name == want)
                    .map(|(id, z)| HostedZone {
                        id: id.clone(),
                        name: z.name.clone(),
                        caller_reference: z.caller_reference.clone(),
                        name_servers: Vec::new(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn zone_by_ref_now(
        w: &World,
        account: &str,
        name: &str,
        caller_reference: &str,
    ) -> Option<HostedZone> {
        let a = w.accounts.get(account)?;
        a.zones
            .iter()
            .find(|(_, z)| z.name == norm(name) && z.caller_reference == caller_reference)
            .map(|(id, z)| HostedZone {
                id: id.clone(),
                name: z.name.clone(),
                caller_reference: z.caller_reference.clone(),
                name_servers: z.name_servers.clone(),
            })
    }

    fn zone_mut<'w>(
        w: &'w mut World,
        op: &'static str,
        account: &str,
        zone_id: &str,
    ) -> Result<&'w mut Zone, Error> {
        w.accounts
            .get_mut(account)
            .and_then(|a| a.zones.get_mut(zone_id))
            .ok_or_else(|| {
                Error::call(
                    op,
                    "NoSuchHostedZone",
                    &format!("No hosted zone found with ID: {zone_id}"),
                    false,
                )
            })
    }

    /// Whether `zone` (in `account`) answers for its name on the public internet.
    fn reachable(w: &World, account: &str, zone_id: &str, depth: usize) -> bool {
        let Some(z) = w.accounts.get(account).and_then(|a| a.zones.get(zone_id)) else {
            return false;
        };
        let enclosing: Vec<(&String, &String, &Zone)> = w
            .accounts
            .iter()
            .flat_map(|(acc, a)| a.zones.iter().map(move |(id, p)| (acc, id, p)))
            .filter(|(_, _, p)| p.name != z.name && within(&z.name, &p.name))
            .collect();
        if enclosing.is_empty() {
            return true; // a top-most zone: delegated by the world outside the fake
        }
        depth < 16
            && enclosing.iter().any(|(acc, id, p)| {
                p.records
                    .get(&(z.name.clone(), "NS".into()))
                    .is_some_and(|ns| ns.values == z.name_servers)
                    && Self::reachable(w, acc, id, depth + 1)
            })
    }

    /// Whether the record is answered by DNS: present in a reachable zone.
    fn resolvable(w: &World, record: &RecordSet) -> bool {
        w.accounts.iter().any(|(acc, a)| {
            a.zones.iter().any(|(id, z)| {
                z.records.get(&(record.name.clone(), record.rtype.clone())) == Some(record)
                    && Self::reachable(w, acc, id, 0)
            })
        })
    }

    fn describe_now(w: &mut World, account: &str, arn: &str) -> Result<Certificate, Error> {
        let op = "acm:DescribeCertificate";
        let issue_after = w.issue_after;
        let cert = w
            .accounts
            .get(account)
            .and_then(|a| a.certificates.get(arn))
            .cloned()
            .ok_or_else(|| {
                Error::call(
                    op,
                    "ResourceNotFoundException",
                    &format!("Could not find certificate {arn}."),
                    false,
                )
            })?;
        let valid = cert.status == "PENDING_VALIDATION" && Self::resolvable(w, &cert.validation);
        let c = w
            .accounts
            .get_mut(account)
            .and_then(|a| a.certificates.get_mut(arn))
            .expect("looked up above");
        if valid {
            c.seen_valid += 1;
            if c.seen_valid > issue_after {
                c.status = "ISSUED".into();
                c.not_after = Some(SystemTime::now() + CERTIFICATE_LIFETIME);
            }
        }
        Ok(Certificate {
            arn: arn.to_owned(),
            domain: c.domain.clone(),
            status: c.status.clone(),
            validation_records: vec![c.validation.clone()],
            not_after: c.not_after,
        })
    }
}

fn ready<'a, T: Send + 'a>(r: Result<T, Error>) -> CloudFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

impl Cloud for FakeCloud {
    fn zone_by_caller_reference<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, Option<HostedZone>> {
        ready(account_of(t).and_then(|account| {
            let found = self.call("route53:ListHostedZonesByName", None, |w| {
                Ok(Self::zone_by_ref_now(w, &account, name, caller_reference))
            })?;
            if found.is_some() {
                self.call("route53:GetHostedZone", None, |_| Ok(()))?;
            }
            Ok(found)
        }))
    }

    fn zones_by_name<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
    ) -> CloudFuture<'a, Vec<HostedZone>> {
        ready(account_of(t).and_then(|account| {
            self.call("route53:ListHostedZonesByName", None, |w| {
                Ok(Self::zones_by_name_now(w, &account, name))
            })
        }))
    }

    fn create_zone<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, HostedZone> {
        let op = "route53:CreateHostedZone";
        ready(account_of(t).and_then(|account| {
            let label = format!("{op} {account} {}", norm(name));
            let created = self.call(op, Some(label), |w| {
                let used = w
                    .accounts
                    .get(&account)
                    .is_some_and(|a| a.caller_references.contains_key(caller_reference));
                if used {
                    return Err(Error::call(
                        op,
                        "HostedZoneAlreadyExists",
                        "A hosted zone has already been created with the specified caller reference.",
                        false,
                    ));
                }
                w.next += 1;
                let n = w.next;
                let id = format!("Z{:019X}", hash(&format!("{account}/{n}")) >> 4);
                let tlds = ["com", "net", "org", "co.uk"];
                let mut name_servers: Vec<String> = tlds
                    .iter()
                    .enumerate()
                    .map(|(i, tld)| format!("ns-{}.awsdns-{:02}.{tld}", (n * 7 + i as u64) % 2048, (n + i as u64) % 64))
                    .collect();
                name_servers.sort();
                let zone_name = norm(name);
                let mut records = BTreeMap::new();
                records.insert(
                    (zone_name.clone(), "NS".to_owned()),
                    RecordSet {
                        name: zone_name.clone(),
                        rtype: "NS".into(),
                        ttl: 172_800,
                        values: name_servers.clone(),
                    },
                );
                records.insert(
                    (zone_name.clone(), "SOA".to_owned()),
                    RecordSet {
                        name: zone_name.clone(),
                        rtype: "SOA".into(),
                        ttl: 900,
                        values: vec![format!(
                            "{} awsdns-hostmaster.amazon.com. 1 7200 900 1209600 86400",
                            name_servers[0]
                        )],
                    },
                );
                let a = w.accounts.entry(account.clone()).or_default();
                a.caller_references
                    .insert(caller_reference.to_owned(), id.clone());
                a.zones.insert(
                    id.clone(),
                    Zone {
                        name: zone_name.clone(),
                        caller_reference: caller_reference.to_owned(),
                        name_servers: name_servers.clone(),
                        records,
                    },
                );
                Ok(HostedZone {
                    id,
                    name: zone_name,
                    caller_reference: caller_reference.to_owned(),
                    name_servers,
                })
            });
            match created {
                // What the adapter does: resolve by lookup, never create again.
                Err(e) if e.code() == Some("HostedZoneAlreadyExists") => {
                    let found = self.call("route53:ListHostedZonesByName", None, |w| {
                        Ok(Self::zone_by_ref_now(w, &account, name, caller_reference))
                    })?;
                    match found {
                        Some(z) => {
                            self.call("route53:GetHostedZone", None, |_| Ok(()))?;
                            Ok(z)
                        }
                        None => Err(Error::Unexpected {
                            op,
                            message: "HostedZoneAlreadyExists, but no zone has this CallerReference"
                                .into(),
                        }),
                    }
                }
                other => other,
            }
        }))
    }

    fn delete_zone<'a>(&'a self, t: Target<'a>, zone_id: &'a str) -> CloudFuture<'a, ()> {
        let op = "route53:DeleteHostedZone";
        ready(account_of(t).and_then(|account| {
            let label = {
                let w = self.world();
                let name = w
                    .accounts
                    .get(&account)
                    .and_then(|a| a.zones.get(zone_id))
                    .map_or_else(|| zone_id.to_owned(), |z| z.name.clone());
                format!("{op} {account} {name}")
            };
            let result = self.call(op, Some(label), |w| {
                let z = Self::zone_mut(w, op, &account, zone_id)?;
                let name = z.name.clone();
                if z.records.keys().any(|(n, t)| n != &name || (t != "NS" && t != "SOA")) {
                    return Err(Error::call(
                        op,
                        "HostedZoneNotEmpty",
                        "The specified hosted zone contains non-required resource record sets and so cannot be deleted.",
                        false,
                    ));
                }
                if let Some(a) = w.accounts.get_mut(&account) {
                    a.zones.remove(zone_id);
                }
                Ok(())
            });
            match result {
                Err(e) if e.code() == Some("NoSuchHostedZone") => Ok(()),
                other => other,
            }
        }))
    }

    fn list_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
    ) -> CloudFuture<'a, Vec<RecordSet>> {
        let op = "route53:ListResourceRecordSets";
        ready(account_of(t).and_then(|account| {
            self.call(op, None, |w| {
                Ok(Self::zone_mut(w, op, &account, zone_id)?
                    .records
                    .values()
                    .cloned()
                    .collect())
            })
        }))
    }

    fn upsert_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()> {
        change(self, t, zone_id, records, false)
    }

    fn delete_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()> {
        change(self, t, zone_id, records, true)
    }

    fn find_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        tag: (&'a str, &'a str),
    ) -> CloudFuture<'a, Option<Certificate>> {
        ready(account_of(t).and_then(|account| {
            let candidates: Vec<(String, bool)> = self.call("acm:ListCertificates", None, |w| {
                Ok(w.accounts
                    .get(&account)
                    .map(|a| {
                        a.certificates
                            .iter()
                            .filter(|(arn, c)| {
                                c.domain == norm(domain) && region_of_arn(arn) == acm_region(t)
                            })
                            .map(|(arn, c)| {
                                let tagged = c.tags.iter().any(|(k, v)| k == tag.0 && v == tag.1);
                                (arn.clone(), tagged)
                            })
                            .collect()
                    })
                    .unwrap_or_default())
            })?;
            for (arn, tagged) in candidates {
                self.call("acm:ListTagsForCertificate", None, |_| Ok(()))?;
                if tagged {
                    let c = self.call("acm:DescribeCertificate", None, |w| {
                        Self::describe_now(w, &account, &arn)
                    })?;
                    return Ok(Some(c));
                }
            }
            Ok(None)
        }))
    }

    fn request_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        sans: &'a [&'a str],
        idempotency_token: &'a str,
        tags: &'a [(&'a str, &'a str)],
    ) -> CloudFuture<'a, String> {
        let op = "acm:RequestCertificate";
        ready(account_of(t).and_then(|account| {
            let label = format!("{op} {account} {}", norm(domain));
            self.call(op, Some(label), |w| {
                if idempotency_token.is_empty()
                    || idempotency_token.len() > 32
                    || !idempotency_token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(Error::call(
                        op,
                        "ValidationException",
                        "idempotencyToken must be 1-32 word characters",
                        false,
                    ));
                }
                let mut tag_list: Vec<(String, String)> = tags
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                tag_list.sort();
                let names: BTreeSet<String> = std::iter::once(norm(domain))
                    .chain(sans.iter().map(|s| norm(s)))
                    .collect();
                let region = acm_region(t);
                let key = format!("{region}|{idempotency_token}|{names:?}|{tag_list:?}");
                let a = w.accounts.entry(account.clone()).or_default();
                if let Some(arn) = a.tokens.get(&key) {
                    if a.certificates.contains_key(arn) {
                        return Ok(arn.clone());
                    }
                }
                w.next += 1;
                let n = w.next;
                let arn = format!(
                    "arn:aws:acm:{region}:{account}:certificate/{:016x}-{n:04}",
                    hash(&key)
                );
                let base = norm(domain).trim_start_matches("*.").to_owned();
                let validation = RecordSet {
                    name: format!(
                        "_{:032x}.{base}",
                        u128::from(hash(&format!("{account}/{base}")))
                    ),
                    rtype: "CNAME".into(),
                    ttl: 300,
                    values: vec![format!(
                        "_{:032x}.acm-validations.aws",
                        u128::from(hash(&format!("value/{account}/{base}")))
                    )],
                };
                let a = w.accounts.entry(account.clone()).or_default();
                a.tokens.insert(key, arn.clone());
                a.certificates.insert(
                    arn.clone(),
                    Cert {
                        domain: norm(domain),
                        tags: tag_list,
                        validation,
                        status: "PENDING_VALIDATION".into(),
                        seen_valid: 0,
                        in_use: false,
                        not_after: None,
                    },
                );
                Ok(arn)
            })
        }))
    }

    fn describe_certificate<'a>(
        &'a self,
        t: Target<'a>,
        arn: &'a str,
    ) -> CloudFuture<'a, Certificate> {
        ready(account_of(t).and_then(|account| {
            self.call("acm:DescribeCertificate", None, |w| {
                Self::describe_now(w, &account, arn)
            })
        }))
    }

    fn delete_certificate<'a>(&'a self, t: Target<'a>, arn: &'a str) -> CloudFuture<'a, ()> {
        let op = "acm:DeleteCertificate";
        ready(account_of(t).and_then(|account| {
            let label = {
                let w = self.world();
                let domain = w
                    .accounts
                    .get(&account)
                    .and_then(|a| a.certificates.get(arn))
                    .map_or_else(|| arn.to_owned(), |c| c.domain.clone());
                format!("{op} {account} {domain}")
            };
            self.call(op, Some(label), |w| {
                let Some(a) = w.accounts.get_mut(&account) else {
                    return Ok(());
                };
                match a.certificates.get(arn) {
                    None => Ok(()),
                    Some(c) if c.in_use => Err(Error::call(
                        op,
                        "ResourceInUseException",
                        &format!("Certificate {arn} is in use."),
                        true,
                    )),
                    Some(_) => {
                        a.certificates.remove(arn);
                        Ok(())
                    }
                }
            })
        }))
    }
}

/// One change batch, atomic, with the adapter's mapping of "not found" on DELETE.
fn change<'a>(
    fake: &'a FakeCloud,
    t: Target<'a>,
    zone_id: &'a str,
    records: &'a [RecordSet],
    delete: bool,
) -> CloudFuture<'a, ()> {
    let op = "route53:ChangeResourceRecordSets";
    if records.is_empty() {
        return ready(Ok(()));
    }
    ready(account_of(t).and_then(|account| {
        let label = {
            let w = fake.world();
            let zone = w
                .accounts
                .get(&account)
                .and_then(|a| a.zones.get(zone_id))
                .map_or_else(|| zone_id.to_owned(), |z| z.name.clone());
            let names: Vec<String> = records
                .iter()
                .map(|r| format!("{} {}", r.rtype, norm(&r.name)))
                .collect();
            format!(
                "{op} {account} {zone} {} {}",
                if delete { "DELETE" } else { "UPSERT" },
                names.join(",")
            )
        };
        let result = fake.call(op, Some(label), |w| {
            let z = FakeCloud::zone_mut(w, op, &account, zone_id)?;
            let mut next = z.records.clone();
            for r in records.iter().cloned().map(sorted) {
                let key = (r.name.clone(), r.rtype.clone());
                if !within(&r.name, &z.name) {
                    return Err(Error::call(
                        op,
                        "InvalidChangeBatch",
                        &format!("RRSet with DNS name {} is not permitted in zone {}", r.name, z.name),
                        false,
                    ));
                }
                if r.values.is_empty() {
                    return Err(Error::call(op, "InvalidChangeBatch", "no values", false));
                }
                if delete {
                    match next.get(&key) {
                        None => {
                            return Err(Error::call(
                                op,
                                "InvalidChangeBatch",
                                &format!(
                                    "Tried to delete resource record set [name='{}.', type='{}'] but it was not found",
                                    r.name, r.rtype
                                ),
                                false,
                            ))
                        }
                        Some(have) if *have != r => {
                            return Err(Error::call(
                                op,
                                "InvalidChangeBatch",
                                &format!(
                                    "Tried to delete resource record set [name='{}.', type='{}'] but the values provided do not match the current values",
                                    r.name, r.rtype
                                ),
                                false,
                            ))
                        }
                        Some(_) => {
                            next.remove(&key);
                        }
                    }
                } else {
                    next.insert(key, r);
                }
            }
            z.records = next;
            Ok(())
        });
        match result {
            Err(Error::Call { code, message, .. })
                if delete && code == "InvalidChangeBatch" && message.contains("not found") =>
            {
                Ok(())
            }
            other => other,
        }
    }))
}

/// The account a target acts in (for inspection in tests).
pub fn account(t: Target<'_>) -> String {
    account_of(t).expect("a 12-digit account in the role ARN")
}
