//! The cloud port: the calls apply and the drift check make, as a trait ([`Cloud`]), with the
//! plain data they exchange.
//!
//! [`crate::aws::Aws`] implements it against Route53, ACM and STS; the tests implement it in
//! memory (`tests/src/fake_cloud.rs`), so crash and property tests of apply run without
//! moto. Apply holds it as `Arc<dyn Cloud>`.
//!
//! Contract every implementation keeps (apply relies on it):
//! - Names are lowercase without the trailing dot; zone ids are bare (`Z123`).
//! - [`Cloud::create_zone`] with a CallerReference already used for that name returns the zone
//!   created with it (real Route53 answers `HostedZoneAlreadyExists`; the adapter resolves it by
//!   lookup), never a second zone.
//! - [`Cloud::request_certificate`] with the same IdempotencyToken, domain and tags returns the
//!   same ARN.
//! - Deleting what is already gone succeeds ([`Cloud::delete_zone`],
//!   [`Cloud::delete_certificate`], and records not found in [`Cloud::delete_records`]).
//! - An error says whether a later attempt may succeed ([`Error::is_retryable`]); a lost answer
//!   (transport error after the call took effect) is retryable, and the journal resolves it.

use std::future::Future;
use std::pin::Pin;

/// Which account a call acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// The operator (platform) account: the base credentials.
    Operator,
    /// A tenant account, through `sts:AssumeRole` with the role's ExternalId.
    Tenant {
        /// Role to assume.
        role_arn: &'a str,
        /// ExternalId agreed with the tenant.
        external_id: &'a str,
        /// The AWS region of the tenant's regional resources: ACM certificates are requested
        /// and looked up there (calls on a certificate ARN use the ARN's region). Route53 is
        /// a global service and ignores it.
        aws_region: &'a str,
    },
}

/// A Route53 hosted zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedZone {
    /// Bare id (`Z123`).
    pub id: String,
    /// Lowercase name without the trailing dot.
    pub name: String,
    /// The CallerReference it was created with.
    pub caller_reference: String,
    /// Name servers (sorted, no trailing dots); empty when not fetched.
    pub name_servers: Vec<String>,
}

/// A record set (simple routing only). Defined in the core, since the journal records them
/// ([`crate::plan::StepResult`]) and the planner compares them.
pub use crate::plan::RecordSet;

/// An ACM certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// ARN.
    pub arn: String,
    /// Primary domain.
    pub domain: String,
    /// `PENDING_VALIDATION`, `ISSUED`, `FAILED`, ….
    pub status: String,
    /// DNS validation records, de-duplicated and sorted (wildcard and apex share one).
    pub validation_records: Vec<RecordSet>,
    /// When it expires (issued certificates).
    pub not_after: Option<std::time::SystemTime>,
}

/// The underlying cause of a failed call (an SDK error), kept for error chains.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of cloud calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call failed; `retryable` says whether a later attempt may succeed.
    #[error("{op}: {code}: {message}")]
    Call {
        /// Operation, e.g. `route53:CreateHostedZone`.
        op: &'static str,
        /// AWS error code (or `transport`).
        code: String,
        /// AWS message.
        message: String,
        /// Throttling, 5xx, transport, or a resource still in use.
        retryable: bool,
        /// The SDK's error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A service quota is exhausted (ACM `LimitExceededException`): not throttling, needs a
    /// quota increase or cleanup.
    #[error("{op}: quota exceeded: {message}")]
    Quota {
        /// Operation.
        op: &'static str,
        /// AWS message.
        message: String,
    },
    /// The request could not be built from these arguments (the SDK's builder refused it); no
    /// call was made.
    #[error("{op}: invalid request: {source}")]
    InvalidRequest {
        /// Operation.
        op: &'static str,
        /// The builder's error.
        #[source]
        source: Cause,
    },
    /// The answer lacked something the API promises.
    #[error("{op}: unexpected response: {message}")]
    Unexpected {
        /// Operation.
        op: &'static str,
        /// What was missing.
        message: String,
    },
}

impl Error {
    /// A failed call without an underlying SDK error (fakes, synthetic answers).
    pub fn call(op: &'static str, code: &str, message: &str, retryable: bool) -> Self {
        Error::Call {
            op,
            code: code.to_owned(),
            message: message.to_owned(),
            retryable,
            source: None,
        }
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Call {
                retryable: true,
                ..
            }
        )
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Call {
                retryable: true, ..
            } => "retryable",
            Error::Call { .. } => "error",
            Error::Quota { .. } => "quota",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::Unexpected { .. } => "unexpected",
        }
    }

    /// The AWS error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Call { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What a [`Cloud`] call returns: a boxed future, so the trait is usable as `dyn Cloud`.
pub type CloudFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The calls apply and the drift check make (see the module docs for the contract).
pub trait Cloud: Send + Sync {
    /// The zone named `name` created with `caller_reference`, if any, with its name servers.
    /// Matches the exact name and the CallerReference (never the name alone: a name may have
    /// several zones).
    fn zone_by_caller_reference<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, Option<HostedZone>>;

    /// Every zone with exactly this name (name servers not fetched).
    fn zones_by_name<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
    ) -> CloudFuture<'a, Vec<HostedZone>>;

    /// Creates the zone; a CallerReference already used returns the zone created with it.
    fn create_zone<'a>(
        &'a self,
        t: Target<'a>,
        name: &'a str,
        caller_reference: &'a str,
    ) -> CloudFuture<'a, HostedZone>;

    /// Deletes a zone (already gone is fine). The caller deletes its records first.
    fn delete_zone<'a>(&'a self, t: Target<'a>, zone_id: &'a str) -> CloudFuture<'a, ()>;

    /// Every record set of a zone (the apex SOA and NS included).
    fn list_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
    ) -> CloudFuture<'a, Vec<RecordSet>>;

    /// UPSERTs the records in one change batch (nothing is called for an empty list).
    fn upsert_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()>;

    /// DELETEs the records in one change batch; records already gone are fine, a record whose
    /// TTL or values differ from the zone's is an error.
    fn delete_records<'a>(
        &'a self,
        t: Target<'a>,
        zone_id: &'a str,
        records: &'a [RecordSet],
    ) -> CloudFuture<'a, ()>;

    /// The certificate for `domain` carrying the tag `(key, value)`, if any (all statuses).
    fn find_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        tag: (&'a str, &'a str),
    ) -> CloudFuture<'a, Option<Certificate>>;

    /// Requests a DNS-validated certificate; the same `idempotency_token` (and arguments)
    /// returns the same ARN.
    fn request_certificate<'a>(
        &'a self,
        t: Target<'a>,
        domain: &'a str,
        sans: &'a [&'a str],
        idempotency_token: &'a str,
        tags: &'a [(&'a str, &'a str)],
    ) -> CloudFuture<'a, String>;

    /// A certificate with its status and validation records.
    fn describe_certificate<'a>(
        &'a self,
        t: Target<'a>,
        arn: &'a str,
    ) -> CloudFuture<'a, Certificate>;

    /// Deletes a certificate (already gone is fine; still in use is a retryable error).
    fn delete_certificate<'a>(&'a self, t: Target<'a>, arn: &'a str) -> CloudFuture<'a, ()>;
}
