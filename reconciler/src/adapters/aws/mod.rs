//! The AWS adapter: STS (assume the tenant role), Route53 (zones, records), ACM (certificates).
//!
//! Configured by the standard AWS chain (environment, profile, IMDS, …), so `AWS_ENDPOINT_URL`
//! points it at moto or LocalStack unchanged. Calls are retried by the SDK's standard retry mode
//! (jittered exponential backoff, 5 attempts: throttling codes `Throttling`,
//! `PriorRequestNotComplete`, `ThrottlingException` and 5xx), and paced per account by a small
//! client-side rate limit so one tenant cannot starve the others. Every call is counted by
//! operation and outcome ([`Aws::calls`]).
//!
//! Names are compared lowercase without the trailing dot; ids are bare (`Z123`, not
//! `/hostedzone/Z123`). [`Aws`] implements the [`Cloud`] port; its data types and error live
//! in [`crate::cloud`] and are re-exported here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_acm::types::{CertificateStatus, Tag, ValidationMethod};
use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::error::ProvideErrorMetadata;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use crate::cloud::{Certificate, Error, HostedZone, RecordSet, Target};
use crate::cloud::{Cloud, CloudFuture};

const THROTTLING: [&str; 3] = [
    "Throttling",
    "PriorRequestNotComplete",
    "ThrottlingException",
];

fn call_error<E>(op: &'static str, err: aws_sdk_route53::error::SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_route53::error::SdkError;
    let transport = matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    );
    let server_error = err
        .raw_response()
        .is_some_and(|r| r.status().is_server_error());
    let code = err.code().map(str::to_owned).unwrap_or_else(|| {
        if transport {
            "transport".into()
        } else {
            "unknown".into()
        }
    });
    let message = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| aws_sdk_route53::error::DisplayErrorContext(&err).to_string());
    if code == "LimitExceededException" {
        return Error::Quota { op, message };
    }
    let retryable = transport
        || server_error
        || THROTTLING.contains(&code.as_str())
        || code == "ResourceInUseException"
        || code.starts_with("InternalFailure")
        || code == "ServiceUnavailable";
    Error::Call {
        op,
        code,
        message,
        retryable,
        source: Some(Box::new(err)),
    }
}

fn unexpected(op: &'static str, message: &str) -> Error {
    Error::Unexpected {
        op,
        message: message.to_owned(),
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn bare_zone_id(id: &str) -> String {
    id.trim_start_matches("/hostedzone/").to_owned()
}

/// Route53 and ACM clients acting in one account.
#[derive(Clone)]
struct Clients {
    route53: aws_sdk_route53::Client,
    acm: aws_sdk_acm::Client,
}

struct CachedRole {
    clients: Clients,
    expires: Option<SystemTime>,
}

/// The adapter. Cheap to clone (shared state behind `Arc`s).
#[derive(Clone)]
pub struct Aws {
    base: SdkConfig,
    sts: aws_sdk_sts::Client,
    operator: Clients,
    roles: Arc<tokio::sync::Mutex<HashMap<String, CachedRole>>>,
    pacing: Arc<Mutex<HashMap<String, Instant>>>,
    interval: Duration,
    /// Calls by operation and outcome (`cplane_aws_calls_total`).
    calls: Family<CallLabels, Counter>,
}

/// The labels of `cplane_aws_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// `service:Operation`, e.g. `route53:ChangeResourceRecordSets`.
    operation: String,
    /// `ok` or an error label.
    outcome: String,
}

/// Default pace per account: 10 requests per second.
const DEFAULT_RATE: u32 = 10;

impl Aws {
    /// From the standard AWS configuration chain.
    pub async fn from_env() -> Self {
        let conf = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .load()
            .await;
        Self::from_sdk_config(conf)
    }

    /// From an explicit configuration (tests: static credentials and a moto endpoint).
    pub fn from_sdk_config(conf: SdkConfig) -> Self {
        let conf = if conf.retry_config().is_some_and(|r| r.max_attempts() >= 5) {
            conf
        } else {
            conf.into_builder()
                .retry_config(RetryConfig::standard().with_max_attempts(5))
                .build()
        };
        let sts = aws_sdk_sts::Client::new(&conf);
        let operator = clients(&conf, None);
        Self {
            base: conf,
            sts,
            operator,
            roles: Arc::default(),
            pacing: Arc::default(),
            interval: Duration::from_secs(1) / DEFAULT_RATE,
            calls: Family::default(),
        }
    }

    /// Calls of `operation` (e.g. `sts:AssumeRole`) that ended with `outcome` (`ok` or an
    /// error label) so far.
    pub fn calls(&self, operation: &str, outcome: &str) -> u64 {
        self.calls
            .get(&CallLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// Registers the adapter's series (`cplane_aws_calls_total`) in the server's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "cplane_aws_calls",
            "AWS calls by operation and outcome",
            self.calls.clone(),
        );
    }

    fn count<T>(&self, op: &str, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().unwrap_or(e.label()).to_owned(),
        };
        self.calls
            .get_or_create(&CallLabels {
                operation: op.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Waits for this account's turn (client-side pacing).
    async fn pace(&self, account: &str) {
        let wait = {
            let mut next = self.pacing.lock().expect("pacing lock");
            let now = Instant::now();
            let slot = next.entry(account.to_owned()).or_insert(now);
            let at = (*slot).max(now);
            *slot = at + self.interval;
            at - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Clients for the target account (assuming the tenant role when needed; credentials are
    /// cached and refreshed five minutes before they expire).
    async fn clients(&self, target: Target<'_>) -> Result<Clients, Error> {
        let Target::Tenant {
            role_arn,
            external_id,
        } = target
        else {
            self.pace("operator").await;
            return Ok(self.operator.clone());
        };
        let account = role_arn.split(':').nth(4).unwrap_or("tenant").to_owned();
        {
            let mut roles = self.roles.lock().await;
            let fresh = roles.get(role_arn).is_some_and(|c| {
                c.expires
                    .is_none_or(|e| e > SystemTime::now() + Duration::from_secs(300))
            });
            if !fresh {
                self.pace(&account).await;
                let result = self
                    .sts
                    .assume_role()
                    .role_arn(role_arn)
                    .role_session_name("cplane")
                    .external_id(external_id)
                    .send()
                    .await
                    .map_err(|e| call_error("sts:AssumeRole", e));
                self.count("sts:AssumeRole", &result);
                let out = result?;
                let c = out
                    .credentials()
                    .ok_or_else(|| unexpected("sts:AssumeRole", "no credentials"))?;
                let expires = SystemTime::try_from(*c.expiration()).ok();
                let creds = Credentials::new(
                    c.access_key_id(),
                    c.secret_access_key(),
                    Some(c.session_token().to_owned()),
                    expires,
                    "cplane-assume-role",
                );
                roles.insert(
                    role_arn.to_owned(),
                    CachedRole {
                        clients: clients(&self.base, Some(creds)),
                        expires,
                    },
                );
            }
        }
        self.pace(&account).await;
        Ok(self.roles.lock().await[role_arn].clients.clone())
    }

    /// The zone named `name` created with `caller_reference`, if any. Matches the exact name and
    /// the CallerReference (never the name alone: a name may have several zones).
    pub async fn zone_by_caller_reference(
        &self,
        t: Target<'_>,
        name: &str,
        caller_reference: &str,
    ) -> Result<Option<HostedZone>, Error> {
        let zones = self.zones_by_name(t, name).await?;
        match zones
            .into_iter()
            .find(|z| z.caller_reference == caller_reference)
        {
            Some(z) => Ok(Some(self.with_name_servers(t, z).await?)),
            None => Ok(None),
        }
    }

    /// Every zone with exactly this name (ListHostedZonesByName, which real AWS lists *from*
    /// the name on and moto filters *by* it: both handled by matching ourselves).
    pub async fn zones_by_name(&self, t: Target<'_>, name: &str) -> Result<Vec<HostedZone>, Error> {
        let c = self.clients(t).await?;
        let want = norm(name);
        let mut out = Vec::new();
        let mut next: Option<(String, Option<String>)> = Some((format!("{want}."), None));
        while let Some((dns, zone_id)) = next.take() {
            let result = c
                .route53
                .list_hosted_zones_by_name()
                .dns_name(dns)
                .set_hosted_zone_id(zone_id)
                .max_items(100)
                .send()
                .await
                .map_err(|e| call_error("route53:ListHostedZonesByName", e));
            self.count("route53:ListHostedZonesByName", &result);
            let page = result?;
            let mut past = false;
            for z in page.hosted_zones() {
                if norm(z.name()) == want {
                    out.push(HostedZone {
                        id: bare_zone_id(z.id()),
                        name: want.clone(),
                        caller_reference: z.caller_reference().to_owned(),
                        name_servers: Vec::new(),
                    });
                } else if !out.is_empty() || norm(z.name()) > want {
                    past = true;
                }
            }
            if page.is_truncated() && !past {
                next = page
                    .next_dns_name()
                    .map(|n| (n.to_owned(), page.next_hosted_zone_id().map(str::to_owned)));
            }
        }
        Ok(out)
    }

    async fn with_name_servers(
        &self,
        t: Target<'_>,
        mut zone: HostedZone,
    ) -> Result<HostedZone, Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .get_hosted_zone()
            .id(&zone.id)
            .send()
            .await
            .map_err(|e| call_error("route53:GetHostedZone", e));
        self.count("route53:GetHostedZone", &result);
        let out = result?;
        zone.name_servers = name_servers(
            out.delegation_set()
                .map(|d| d.name_servers())
                .unwrap_or_default(),
        );
        Ok(zone)
    }

    /// Creates the zone. A `HostedZoneAlreadyExists` (real AWS, on a reused CallerReference
    /// after a lost answer) is resolved by lookup, never by creating again.
    pub async fn create_zone(
        &self,
        t: Target<'_>,
        name: &str,
        caller_reference: &str,
    ) -> Result<HostedZone, Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .create_hosted_zone()
            .name(norm(name))
            .caller_reference(caller_reference)
            .send()
            .await
            .map_err(|e| call_error("route53:CreateHostedZone", e));
        self.count("route53:CreateHostedZone", &result);
        match result {
            Ok(out) => {
                let z = out
                    .hosted_zone()
                    .ok_or_else(|| unexpected("route53:CreateHostedZone", "no hosted zone"))?;
                Ok(HostedZone {
                    id: bare_zone_id(z.id()),
                    name: norm(z.name()),
                    caller_reference: z.caller_reference().to_owned(),
                    name_servers: name_servers(
                        out.delegation_set()
                            .map(|d| d.name_servers())
                            .unwrap_or_default(),
                    ),
                })
            }
            Err(e) if e.code() == Some("HostedZoneAlreadyExists") => self
                .zone_by_caller_reference(t, name, caller_reference)
                .await?
                .ok_or_else(|| {
                    unexpected(
                        "route53:CreateHostedZone",
                        "HostedZoneAlreadyExists, but no zone has this CallerReference",
                    )
                }),
            Err(e) => Err(e),
        }
    }

    /// Deletes a zone (already gone is fine). The caller deletes its records first.
    pub async fn delete_zone(&self, t: Target<'_>, zone_id: &str) -> Result<(), Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .delete_hosted_zone()
            .id(zone_id)
            .send()
            .await
            .map_err(|e| call_error("route53:DeleteHostedZone", e));
        self.count("route53:DeleteHostedZone", &result);
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchHostedZone") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every record set of a zone, all pages (300 per page): the batched read of drift checks.
    pub async fn list_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
    ) -> Result<Vec<RecordSet>, Error> {
        let c = self.clients(t).await?;
        let mut out = Vec::new();
        let mut start: Option<(String, RrType)> = None;
        loop {
            let mut req = c
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(zone_id)
                .max_items(300);
            if let Some((name, rtype)) = start.take() {
                req = req.start_record_name(name).start_record_type(rtype);
            }
            let result = req
                .send()
                .await
                .map_err(|e| call_error("route53:ListResourceRecordSets", e));
            self.count("route53:ListResourceRecordSets", &result);
            let page = result?;
            for r in page.resource_record_sets() {
                let mut values: Vec<String> = r
                    .resource_records()
                    .iter()
                    .map(|v| v.value().trim_end_matches('.').to_owned())
                    .collect();
                values.sort();
                out.push(RecordSet {
                    name: norm(r.name()),
                    rtype: r.r#type().as_str().to_owned(),
                    ttl: r.ttl().unwrap_or(0),
                    values,
                });
            }
            match (
                page.is_truncated(),
                page.next_record_name(),
                page.next_record_type(),
            ) {
                (true, Some(name), Some(rtype)) => start = Some((name.to_owned(), rtype.clone())),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn change(
        &self,
        t: Target<'_>,
        zone_id: &str,
        action: ChangeAction,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let op = "route53:ChangeResourceRecordSets";
        let mut batch = ChangeBatch::builder();
        for r in records {
            let mut set = ResourceRecordSet::builder()
                .name(format!("{}.", r.name))
                .r#type(RrType::from(r.rtype.as_str()))
                .ttl(r.ttl);
            for v in &r.values {
                set = set.resource_records(
                    ResourceRecord::builder()
                        .value(v)
                        .build()
                        .map_err(|e| unexpected(op, &e.to_string()))?,
                );
            }
            let change = Change::builder()
                .action(action.clone())
                .resource_record_set(set.build().map_err(|e| unexpected(op, &e.to_string()))?)
                .build()
                .map_err(|e| unexpected(op, &e.to_string()))?;
            batch = batch.changes(change);
        }
        let c = self.clients(t).await?;
        let result = c
            .route53
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch.build().map_err(|e| unexpected(op, &e.to_string()))?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| call_error(op, e));
        self.count(op, &result);
        result
    }

    /// UPSERTs the records in one change batch.
    pub async fn upsert_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        self.change(t, zone_id, ChangeAction::Upsert, records).await
    }

    /// DELETEs the records in one change batch; records already gone are fine (real AWS answers
    /// `InvalidChangeBatch` "not found", moto `InvalidInput`).
    pub async fn delete_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        match self.change(t, zone_id, ChangeAction::Delete, records).await {
            Err(Error::Call { code, message, .. })
                if (code == "InvalidChangeBatch" || code == "InvalidInput")
                    && message.to_ascii_lowercase().contains("not found") =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The certificate for `domain` carrying `tag`, if any (all statuses, all pages).
    pub async fn find_certificate(
        &self,
        t: Target<'_>,
        domain: &str,
        tag: (&str, &str),
    ) -> Result<Option<Certificate>, Error> {
        let c = self.clients(t).await?;
        let mut token = None;
        loop {
            let result = c
                .acm
                .list_certificates()
                .set_next_token(token.take())
                .set_certificate_statuses(Some(vec![
                    CertificateStatus::PendingValidation,
                    CertificateStatus::Issued,
                    CertificateStatus::Inactive,
                    CertificateStatus::Expired,
                    CertificateStatus::ValidationTimedOut,
                    CertificateStatus::Revoked,
                    CertificateStatus::Failed,
                ]))
                .send()
                .await
                .map_err(|e| call_error("acm:ListCertificates", e));
            self.count("acm:ListCertificates", &result);
            let page = result?;
            for s in page.certificate_summary_list() {
                if s.domain_name().map(norm) != Some(norm(domain)) {
                    continue;
                }
                let Some(arn) = s.certificate_arn() else {
                    continue;
                };
                let tags = c
                    .acm
                    .list_tags_for_certificate()
                    .certificate_arn(arn)
                    .send()
                    .await
                    .map_err(|e| call_error("acm:ListTagsForCertificate", e));
                self.count("acm:ListTagsForCertificate", &tags);
                if tags?
                    .tags()
                    .iter()
                    .any(|x| x.key() == tag.0 && x.value() == Some(tag.1))
                {
                    return Ok(Some(self.describe_certificate(t, arn).await?));
                }
            }
            match page.next_token() {
                Some(next) => token = Some(next.to_owned()),
                None => return Ok(None),
            }
        }
    }

    /// Requests a DNS-validated certificate. The same `idempotency_token` (≤ 32 word
    /// characters; the caller derives it deterministically) returns the same ARN.
    pub async fn request_certificate(
        &self,
        t: Target<'_>,
        domain: &str,
        sans: &[&str],
        idempotency_token: &str,
        tags: &[(&str, &str)],
    ) -> Result<String, Error> {
        let op = "acm:RequestCertificate";
        let c = self.clients(t).await?;
        let mut req = c
            .acm
            .request_certificate()
            .domain_name(domain)
            .validation_method(ValidationMethod::Dns)
            .idempotency_token(idempotency_token);
        for san in sans {
            req = req.subject_alternative_names(*san);
        }
        for (k, v) in tags {
            req = req.tags(
                Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build()
                    .map_err(|e| unexpected(op, &e.to_string()))?,
            );
        }
        let result = req.send().await.map_err(|e| call_error(op, e));
        self.count(op, &result);
        result?
            .certificate_arn()
            .map(str::to_owned)
            .ok_or_else(|| unexpected(op, "no certificate ARN"))
    }

    /// A certificate with its status and validation records.
    pub async fn describe_certificate(
        &self,
        t: Target<'_>,
        arn: &str,
    ) -> Result<Certificate, Error> {
        let op = "acm:DescribeCertificate";
        let c = self.clients(t).await?;
        let result = c
            .acm
            .describe_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map_err(|e| call_error(op, e));
        self.count(op, &result);
        let out = result?;
        let cert = out
            .certificate()
            .ok_or_else(|| unexpected(op, "no certificate"))?;
        let mut records: Vec<RecordSet> = cert
            .domain_validation_options()
            .iter()
            .filter_map(|o| o.resource_record())
            .map(|r| RecordSet {
                name: norm(r.name()),
                rtype: r.r#type().as_str().to_owned(),
                ttl: 300,
                values: vec![r.value().trim_end_matches('.').to_owned()],
            })
            .collect();
        records.sort();
        records.dedup();
        Ok(Certificate {
            arn: arn.to_owned(),
            domain: cert.domain_name().map(norm).unwrap_or_default(),
            status: cert
                .status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            validation_records: records,
        })
    }

    /// Deletes a certificate (already gone is fine; `ResourceInUseException` is retryable:
    /// the load balancer has not let go of it yet).
    pub async fn delete_certificate(&self, t: Target<'_>, arn: &str) -> Result<(), Error> {
        let c = self.clients(t).await?;
        let result = c
            .acm
            .delete_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| call_error("acm:DeleteCertificate", e));
        self.count("acm:DeleteCertificate", &result);
        match result {
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            other => other,
        }
    }
}

/// Thin delegation to the inherent methods (which document each call's AWS specifics).
impl Cloud for Aws {
    fn zone_by_caller_reference<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, Option<HostedZone>> {
        Box::pin(Aws::zone_by_caller_reference(
            self,
            t,
            name,
            caller_reference,
        ))
    }

    fn zones_by_name<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
    ) -> CloudFuture<'a, Vec<HostedZone>> {
        Box::pin(Aws::zones_by_name(self, t, name))
    }

    fn create_zone<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, HostedZone> {
        Box::pin(Aws::create_zone(self, t, name, caller_reference))
    }

    fn delete_zone<'a>(&'a self, t: Target<'a>, zone_id: &'a str) -> CloudFuture<'a, ()> {
        Box::pin(Aws::delete_zone(self, t, zone_id))
    }

    fn list_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
    ) -> CloudFuture<'a, Vec<RecordSet>> {
        Box::pin(Aws::list_records(self, t, zone_id))
    }

    fn upsert_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()> {
        Box::pin(Aws::upsert_records(self, t, zone_id, records))
    }

    fn delete_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()> {
        Box::pin(Aws::delete_records(self, t, zone_id, records))
    }

    fn find_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        tag: (&'a str, &'a str),
    ) -> CloudFuture<'a, Option<Certificate>> {
        Box::pin(Aws::find_certificate(self, t, domain, tag))
    }

    fn request_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        sans: &'a [&'a str],
        idempotency_token: &'a str,
        tags: &'a [(&'a str, &'a str)],
    ) -> CloudFuture<'a, String> {
        Box::pin(Aws::request_certificate(
            self,
            t,
            domain,
            sans,
            idempotency_token,
            tags,
        ))
    }

    fn describe_certificate<'a>(
        &'a self,
        t: Target<'a>,
        arn: &'a str,
    ) -> CloudFuture<'a, Certificate> {
        Box::pin(Aws::describe_certificate(self, t, arn))
    }

    fn delete_certificate<'a>(&'a self, t: Target<'a>, arn: &'a str) -> CloudFuture<'a, ()> {
        Box::pin(Aws::delete_certificate(self, t, arn))
    }
}

/// The SDK's standard classifier counts ACM's `LimitExceededException` as throttling and
/// retries it; it is a quota (too many certificates), which no retry fixes. Forbid the retry so
/// it is reported at once.
#[derive(Debug)]
struct QuotaIsNotThrottling;

impl aws_sdk_acm::config::retry::ClassifyRetry for QuotaIsNotThrottling {
    fn classify_retry(
        &self,
        ctx: &aws_sdk_acm::config::interceptors::InterceptorContext,
    ) -> aws_sdk_acm::config::retry::RetryAction {
        use aws_sdk_acm::config::retry::RetryAction;
        let quota = ctx.response().is_some_and(|r| {
            r.headers()
                .get("x-amzn-errortype")
                .is_some_and(|v| v.starts_with("LimitExceededException"))
                || r.body().bytes().is_some_and(|b| {
                    String::from_utf8_lossy(b).contains("\"LimitExceededException\"")
                })
        });
        if quota {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "QuotaIsNotThrottling"
    }
}

fn name_servers(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|n| norm(n)).collect();
    v.sort();
    v
}

fn clients(base: &SdkConfig, creds: Option<Credentials>) -> Clients {
    let mut r53 = aws_sdk_route53::config::Builder::from(base).region(Region::new("us-east-1"));
    let mut acm = aws_sdk_acm::config::Builder::from(base).retry_classifier(QuotaIsNotThrottling);
    if let Some(creds) = creds {
        r53 = r53.credentials_provider(SharedCredentialsProvider::new(creds.clone()));
        acm = acm.credentials_provider(SharedCredentialsProvider::new(creds));
    }
    Clients {
        route53: aws_sdk_route53::Client::from_conf(r53.build()),
        acm: aws_sdk_acm::Client::from_conf(acm.build()),
    }
}
