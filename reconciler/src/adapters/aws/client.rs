//! SDK clients: construction from the AWS configuration chain (retry mode, ACM's quota
//! classifier), STS AssumeRole into tenant accounts with a credential cache, per-account pacing,
//! call metrics, and SDK errors mapped to [`Error`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::error::ProvideErrorMetadata;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{Aws, Error, Target};

const THROTTLING: [&str; 3] = [
    "Throttling",
    "PriorRequestNotComplete",
    "ThrottlingException",
];

pub(super) fn call_error<E>(
    op: &'static str,
    err: aws_sdk_route53::error::SdkError<E, HttpResponse>,
) -> Error
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

/// Maps an SDK builder's error (a request that cannot be built) to [`Error::InvalidRequest`].
pub(super) fn invalid_request<E>(op: &'static str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::InvalidRequest {
        op,
        source: Box::new(e),
    }
}

pub(super) fn unexpected(op: &'static str, message: &str) -> Error {
    Error::Unexpected {
        op,
        message: message.to_owned(),
    }
}

/// Route53 and ACM clients acting in one account.
#[derive(Clone)]
pub(super) struct Clients {
    pub(super) route53: aws_sdk_route53::Client,
    pub(super) acm: aws_sdk_acm::Client,
}

/// An assumed role: its credentials, its Route53 client and its ACM clients by region.
pub(super) struct CachedRole {
    creds: Credentials,
    route53: aws_sdk_route53::Client,
    acm: HashMap<String, aws_sdk_acm::Client>,
    expires: Option<SystemTime>,
}

/// The labels of `cplane_aws_calls_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CallLabels {
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

    pub(super) fn count<T>(&self, op: &str, result: &Result<T, Error>) {
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
    pub(super) async fn pace(&self, account: &str) {
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
    /// cached and refreshed five minutes before they expire), ACM in the target's AWS region.
    pub(super) async fn clients(&self, target: Target<'_>) -> Result<Clients, Error> {
        let region = match target {
            Target::Tenant { aws_region, .. } => aws_region,
            Target::Operator => "",
        };
        self.clients_in(target, region).await
    }

    /// Like [`Aws::clients`], with ACM in `region` (calls on a certificate ARN use the ARN's
    /// region, [`region_of_arn`]). An empty region means the base configuration's region: rows
    /// written before workspaces recorded theirs.
    pub(super) async fn clients_in(
        &self,
        target: Target<'_>,
        region: &str,
    ) -> Result<Clients, Error> {
        let Target::Tenant {
            role_arn,
            external_id,
            ..
        } = target
        else {
            self.pace("operator").await;
            return Ok(self.operator.clone());
        };
        let account = role_arn.split(':').nth(4).unwrap_or("tenant").to_owned();
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
                    route53: route53_client(&self.base, Some(&creds)),
                    acm: HashMap::new(),
                    creds,
                    expires,
                },
            );
        }
        let role = roles.get_mut(role_arn).expect("inserted above");
        let acm = role
            .acm
            .entry(region.to_owned())
            .or_insert_with(|| acm_client(&self.base, Some(&role.creds), region))
            .clone();
        let clients = Clients {
            route53: role.route53.clone(),
            acm,
        };
        drop(roles);
        self.pace(&account).await;
        Ok(clients)
    }
}

/// The region of an ARN (`arn:aws:acm:ap-southeast-1:…` → `ap-southeast-1`); empty when the
/// ARN has none.
pub(super) fn region_of_arn(arn: &str) -> &str {
    arn.split(':').nth(3).unwrap_or("")
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

fn clients(base: &SdkConfig, creds: Option<&Credentials>) -> Clients {
    Clients {
        route53: route53_client(base, creds),
        acm: acm_client(base, creds, ""),
    }
}

/// Route53 is a global service: its endpoint is in `us-east-1` whatever the caller's region.
fn route53_client(base: &SdkConfig, creds: Option<&Credentials>) -> aws_sdk_route53::Client {
    let mut conf = aws_sdk_route53::config::Builder::from(base).region(Region::new("us-east-1"));
    if let Some(creds) = creds {
        conf = conf.credentials_provider(SharedCredentialsProvider::new(creds.clone()));
    }
    aws_sdk_route53::Client::from_conf(conf.build())
}

/// ACM in `region` (empty: the base configuration's region).
fn acm_client(base: &SdkConfig, creds: Option<&Credentials>, region: &str) -> aws_sdk_acm::Client {
    let mut conf = aws_sdk_acm::config::Builder::from(base).retry_classifier(QuotaIsNotThrottling);
    if !region.is_empty() {
        conf = conf.region(Region::new(region.to_owned()));
    }
    if let Some(creds) = creds {
        conf = conf.credentials_provider(SharedCredentialsProvider::new(creds.clone()));
    }
    aws_sdk_acm::Client::from_conf(conf.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_the_sdk_cannot_build_keeps_the_builders_error() {
        let err = aws_sdk_route53::types::ResourceRecord::builder()
            .build()
            .map_err(invalid_request("route53:ChangeResourceRecordSets"))
            .expect_err("a record without a value");
        assert!(err
            .to_string()
            .starts_with("route53:ChangeResourceRecordSets: invalid request: "));
        let source = std::error::Error::source(&err).expect("the builder's error is kept");
        assert!(source.to_string().contains("value"), "{source}");
        assert!(!err.is_retryable());
        assert_eq!(err.label(), "invalid_request");
    }
}
