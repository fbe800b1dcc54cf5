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
//!
//! - `client.rs`: SDK clients, STS AssumeRole and its credential cache, pacing, call metrics,
//!   SDK errors mapped to [`Error`].
//! - `route53.rs`: hosted zones and record sets. `acm.rs`: certificates.
//! - [`observe`]: the drift check's reads of the cloud (written against the [`Cloud`] port, so
//!   they run against the fake cloud of the tests too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

pub use crate::cloud::{Certificate, Error, HostedZone, RecordSet, Target};
use crate::cloud::{Cloud, CloudFuture};

mod acm;
mod client;
pub mod observe;
mod route53;

use client::{CachedRole, CallLabels, Clients};

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

impl Aws {
    /// The AWS configuration the adapter was made from (for other AWS clients of the same
    /// run: the DynamoDB lookup sink).
    pub fn sdk_config(&self) -> &SdkConfig {
        &self.base
    }
}

/// A name as compared everywhere: lowercase, without the trailing dot.
fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
