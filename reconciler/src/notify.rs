//! Notifications: lifecycle events ([`crate::events`]) delivered to the sinks `cplane.yaml`
//! declares (`spec.notifications`): generic webhooks (CloudEvents over HTTP, HMAC-SHA256
//! signed) and Slack incoming webhooks (a readable message per event type).
//!
//! # Guarantees
//! - **At least once**, with the CloudEvents `id` for de-duplication: an event is retried
//!   with backoff until the sink accepts it (2xx) or `maxAttempts` is spent (then it is a
//!   dead letter, counted in `/v1/status`); a sink answering 4xx (but 408 and 429) refuses it
//!   for good at once.
//! - **Once across replicas**: deliveries are claimed with a lease ([`crate::db`]); only a
//!   replica dying mid-delivery makes another send the event again.
//! - **Never in the way**: delivery runs in tasks of its own, one per sink, reading the
//!   outbox; reconciling never waits for a sink, and a slow sink never delays another.
//! - **Prompt**: a sink's task wakes when this process commits events (not on a poll), and
//!   works through a backlog without pausing between pages.
//! - **From where it was added**: a sink's cursor is started by whoever configures it
//!   ([`Db::start_sink`]; `serve` starts a sink that a commit adds at that commit's run, see
//!   the README's "Events and notifications") and kept across restarts and changes.
//!
//! # Sinks
//! [`Sink`] is the port: a name and `deliver(event)`. A Kafka or Redpanda sink (a producer
//! keyed by the event id, the CloudEvent as the value in structured mode) fits it as is; it
//! is left out until a broker can run in the tests here.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::db::Db;
use crate::events::{CloudEvent, EventType};
use cplane_schema::notifications::{matching_types, NotificationsSpec, SinkSpec};

/// The header carrying a webhook body's signature: `sha256=<hex of HMAC-SHA256(key, body)>`.
pub const SIGNATURE_HEADER: &str = "X-Cplane-Signature-256";

/// Attempts per event unless the sink says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// First retry pause; it doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry pause.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a claimed delivery is this replica's (longer than one HTTP call may take).
const LEASE: Duration = Duration::from_secs(30);
/// How often each sink's task looks for due retries, and for events other replicas commit.
const TICK: Duration = Duration::from_millis(250);
/// How long a sink's task waits, once woken by a commit, for more commits to deliver with it.
const LINGER: Duration = Duration::from_millis(20);

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What went wrong (never a secret).
    pub message: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

/// A delivery in flight.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Where events go: the port every sink implements (webhook and Slack here; a Kafka producer
/// fits it too, see the module docs).
pub trait Sink: Send + Sync {
    /// Delivers one event; `Ok` once the destination accepted it.
    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> Delivery<'a>;
}

/// A generic webhook: the CloudEvent (structured JSON) POSTed, signed.
pub struct WebhookSink {
    url: String,
    key: String,
    client: crate::adapters::http::Client,
}

impl WebhookSink {
    /// A sink POSTing to `url`, signing with `key`.
    pub fn new(url: &str, key: &str) -> Self {
        Self {
            url: url.to_owned(),
            key: key.to_owned(),
            client: crate::adapters::http::Client::new(),
        }
    }
}

/// `sha256=<hex of HMAC-SHA256(key, body)>`.
pub fn signature(key: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` to `url`; 2xx is accepted, 408/429/5xx and transport errors are retryable.
async fn post(
    client: &crate::adapters::http::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(), DeliveryError> {
    match client
        .send(Method::POST, url, headers, Some(body.into()), false)
        .await
    {
        Ok(r) if r.status.is_success() => Ok(()),
        Ok(r) => Err(DeliveryError {
            message: format!("answered {}: {}", r.status, r.snippet()),
            retryable: r.retryable() || r.status.as_u16() == 408,
        }),
        Err(e) => Err(DeliveryError {
            message: e.to_string(),
            retryable: true,
        }),
    }
}

impl Sink for WebhookSink {
    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> Delivery<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(event).expect("events serialize");
            let sig = signature(&self.key, &body);
            post(
                &self.client,
                &self.url,
                &[
                    ("content-type", "application/cloudevents+json"),
                    (SIGNATURE_HEADER, &sig),
                    ("x-cplane-event-id", &event.id),
                ],
                body,
            )
            .await
        })
    }
}

/// A Slack incoming webhook: `{"text": …}`, a readable line per event ([`slack_text`]).
pub struct SlackSink {
    url: String,
    dashboard: Option<String>,
    client: crate::adapters::http::Client,
}

impl SlackSink {
    /// A sink POSTing to the incoming webhook `url`, linking to `dashboard`.
    pub fn new(url: &str, dashboard: Option<&str>) -> Self {
        Self {
            url: url.to_owned(),
            dashboard: dashboard.map(|d| d.trim_end_matches('/').to_owned()),
            client: crate::adapters::http::Client::new(),
        }
    }
}

impl Sink for SlackSink {
    fn deliver<'a>(&'a self, event: &'a CloudEvent) -> Delivery<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(&serde_json::json!({
                "text": slack_text(event, self.dashboard.as_deref()),
            }))
            .expect("json");
            post(
                &self.client,
                &self.url,
                &[("content-type", "application/json")],
                body,
            )
            .await
        })
    }
}

/// Slack's escaping of message text (`&`, `<`, `>`).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A readable Slack message (mrkdwn) for `e`, linking to `dashboard`'s API pages.
pub fn slack_text(e: &CloudEvent, dashboard: Option<&str>) -> String {
    let d = &e.data;
    let s = |k: &str| esc(d[k].as_str().unwrap_or("?"));
    let link = |path: String, text: String| match dashboard {
        Some(base) => format!("<{base}{path}|{text}>"),
        None => text,
    };
    let ws = || {
        link(
            format!("/v1/workspaces/{}", s("workspace")),
            format!("*{}*", s("workspace")),
        )
    };
    let rollout = || {
        link(
            format!("/v1/rollouts/{}", s("rollout")),
            format!("`{}`", s("rollout")),
        )
    };
    let cluster = || {
        link(
            format!("/v1/clusters/{}/status", s("cluster")),
            format!("`{}`", s("cluster")),
        )
    };
    let short = |c: &str| c.chars().take(12).collect::<String>();
    let place = e.source.trim_start_matches("/cplane/");
    let text = match EventType::parse(&e.kind) {
        Some(EventType::WorkspaceProvisioned) => {
            format!(
                ":white_check_mark: Workspace {} provisioned in {place}",
                ws()
            )
        }
        Some(EventType::WorkspaceDeprovisioned) => {
            format!("Workspace {} deprovisioned ({})", ws(), s("status"))
        }
        Some(EventType::WorkspaceProvisioningFailed) => format!(
            ":x: Workspace {}: step `{}` failed (attempt {}): {}",
            ws(),
            s("step"),
            d["attempt"],
            s("error")
        ),
        Some(EventType::CommitApplied) => {
            format!("Commit `{}` applied ({})", short(&s("commit")), s("scope"))
        }
        Some(EventType::CommitRefused) => {
            let errors: Vec<String> = d["errors"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).map(esc).collect())
                .unwrap_or_default();
            let mut text = format!(
                ":no_entry: Commit `{}` refused with {} error(s); the last good commit stays in force",
                short(&s("commit")),
                errors.len()
            );
            for err in errors.iter().take(5) {
                text.push_str(&format!("\n• {err}"));
            }
            if errors.len() > 5 {
                text.push_str(&format!("\n… and {} more", errors.len() - 5));
            }
            text
        }
        Some(EventType::RolloutStarted) => format!(
            ":rocket: Rollout {} started: {} clusters",
            rollout(),
            d["clusters"]
        ),
        Some(EventType::RolloutWavePassed) => {
            format!("Rollout {}: wave {} passed", rollout(), d["wave"])
        }
        Some(EventType::RolloutPaused) => {
            format!(
                ":double_vertical_bar: Rollout {} paused: {}",
                rollout(),
                s("reason")
            )
        }
        Some(EventType::RolloutResumed) => {
            format!("Rollout {} resumed by {}", rollout(), s("actor"))
        }
        Some(EventType::RolloutFinished) => {
            format!(":checkered_flag: Rollout {} finished", rollout())
        }
        Some(EventType::RolloutAborted) => {
            format!("Rollout {} aborted: {}", rollout(), s("reason"))
        }
        Some(EventType::RolloutSuperseded) => {
            format!("Rollout {} superseded by `{}`", rollout(), s("by"))
        }
        Some(EventType::BundlePublished) => format!(
            "Cluster {} got bundle `{}` (generation {})",
            cluster(),
            short(&s("digest").replace("sha256:", "")),
            d["generation"]
        ),
        Some(EventType::DriftFound) => format!(
            ":warning: Drift found in workspace {}: {} repair(s) planned",
            ws(),
            d["repairs"].as_array().map_or(0, Vec::len)
        ),
        Some(EventType::DriftRepaired) => format!(
            ":wrench: Drift repaired in workspace {}: {} repair(s)",
            ws(),
            d["repaired"].as_array().map_or(0, Vec::len)
        ),
        Some(EventType::AgentOffline) => format!(
            ":red_circle: Agent of {} offline: no report for {}s",
            cluster(),
            d["silent_for_seconds"]
        ),
        Some(EventType::AgentBack) => format!(":large_green_circle: Agent of {} back", cluster()),
        Some(EventType::AgentFailing) => {
            format!(":x: Agent of {} failing: {}", cluster(), s("message"))
        }
        Some(EventType::AgentRecovered) => format!("Agent of {} healthy again", cluster()),
        None => format!("{} {}", esc(&e.kind), esc(&e.subject)),
    };
    format!("{text} _({place})_")
}

/// One configured sink: how to deliver, which types, how often to try.
#[derive(Clone)]
pub struct SinkConfig {
    /// The sink's name.
    pub name: String,
    /// The destination.
    pub sink: Arc<dyn Sink>,
    /// The event types its routes select.
    pub types: Vec<EventType>,
    /// Attempts per event.
    pub max_attempts: u32,
}

/// The sinks of a `spec.notifications` with at least one route, their secrets read; a sink
/// whose secret cannot be read is left out, and the returned problems say why.
pub fn sinks_from_spec(spec: &NotificationsSpec) -> (Vec<SinkConfig>, Vec<String>) {
    let mut types: BTreeMap<&str, Vec<EventType>> = BTreeMap::new();
    for r in &spec.routes {
        let entry = types.entry(r.sink.as_str()).or_default();
        for t in &r.types {
            entry.extend(
                matching_types(t)
                    .into_iter()
                    .filter_map(|t| EventType::parse(&format!("io.cplane.{t}"))),
            );
        }
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for s in &spec.sinks {
        let Some(mut t) = types.get(s.name.as_str()).cloned() else {
            continue;
        };
        t.sort();
        t.dedup();
        match sink_of(s) {
            Ok(sink) => out.push(SinkConfig {
                name: s.name.clone(),
                sink,
                types: t,
                max_attempts: s.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            }),
            Err(e) => problems.push(format!("notification sink {}: {e}", s.name)),
        }
    }
    (out, problems)
}

fn sink_of(s: &SinkSpec) -> Result<Arc<dyn Sink>, crate::global::Error> {
    if let Some(w) = &s.webhook {
        let key = crate::global::read_secret("webhook.signingSecret", &w.signing_secret)?;
        return Ok(Arc::new(WebhookSink::new(&w.url, &key)));
    }
    if let Some(sl) = &s.slack {
        let url = crate::global::read_secret("slack.url", &sl.url)?;
        return Ok(Arc::new(SlackSink::new(&url, sl.dashboard_url.as_deref())));
    }
    Err(crate::global::Error::Config(
        "neither webhook nor slack".into(),
    ))
}

/// The pause before attempt `attempts + 1`: 0.5 s doubling, at most a minute.
fn backoff(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_BACKOFF)
}

/// Delivers `sink`'s events until aborted: adds deliveries for new events its routes select,
/// then claims the due ones (as `replica`) and delivers them in order. It runs again as soon
/// as this process commits events ([`Db::watch_events`]: no poll delay between a commit and
/// its delivery), at once while a backlog remains, and every [`TICK`] for retries that come
/// due and for events other replicas commit. Database errors are logged and retried on the
/// next tick. The sink's cursor must have been started ([`Db::start_sink`]); until then it
/// delivers nothing.
///
/// It first takes back the claims `replica` holds on the sink ([`Db::release_claims`]): the
/// caller stops this replica's previous task for the sink (and waits for it to end) before
/// starting another, and what that task had claimed is delivered now, not once its lease
/// has run out.
pub async fn run_sink(db: Db, replica: String, sink: SinkConfig) {
    if let Err(e) = db.release_claims(&sink.name, &replica).await {
        // Its claims then wait for their lease, as a dead replica's do.
        tracing::warn!(sink = %sink.name, error = %e, "taking back this replica's claims");
    }
    let mut committed = db.watch_events();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Woken by a commit of this process: only its new events can be due (retries, leases
    // run out and other replicas' deliveries wait for the tick), so a round that adds no
    // delivery claims nothing — no write to the database for commits the routes skip.
    let mut by_commit = false;
    loop {
        committed.borrow_and_update();
        match round(&db, &replica, &sink, !by_commit).await {
            Ok(Round::More) => continue,
            Ok(Round::Done) => {}
            Err(e) => tracing::warn!(sink = %sink.name, error = %e, "notifications"),
        }
        by_commit = tokio::select! {
            _ = ticker.tick() => false,
            changed = committed.changed() => {
                if changed.is_err() {
                    // The database handle is gone: only the ticker is left.
                    ticker.tick().await;
                }
                changed.is_ok()
            }
        };
        if by_commit {
            // Let a burst of commits (a run writes many) gather into one round: a handful
            // of writes to the outbox's tables per round, not per event, so the sink stays
            // off the reconcile's way (SQLite has one writer).
            tokio::time::sleep(LINGER).await;
        }
    }
}

/// What a round of [`deliver_due`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Nothing due now (the rest waits for new events, a retry's time, or a lease).
    Done,
    /// More events to expand: run another round at once.
    More,
}

/// Events expanded into deliveries per round.
const PAGE: u32 = 1000;
/// Deliveries claimed at once.
const CLAIM: u32 = 50;

/// One round of [`run_sink`]: new events expanded into deliveries, then every due delivery
/// claimed and delivered.
pub async fn deliver_due(
    db: &Db,
    replica: &str,
    sink: &SinkConfig,
) -> Result<Round, crate::db::Error> {
    round(db, replica, sink, true).await
}

/// [`deliver_due`], claiming only when it added deliveries unless `claim_anyway`.
async fn round(
    db: &Db,
    replica: &str,
    sink: &SinkConfig,
    claim_anyway: bool,
) -> Result<Round, crate::db::Error> {
    let added = db.expand_deliveries(&sink.name, &sink.types, PAGE).await?;
    if added == 0 && !claim_anyway {
        return Ok(Round::Done);
    }
    let more = if added >= PAGE as usize {
        Round::More
    } else {
        Round::Done
    };
    let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    loop {
        let claimed = db
            .claim_deliveries(&sink.name, replica, lease, CLAIM)
            .await?;
        if claimed.is_empty() {
            return Ok(more);
        }
        let positions: Vec<i64> = claimed.iter().map(|(p, _)| *p).collect();
        let mut events = db.events_at(&positions).await?;
        // Done deliveries are deleted together, at the end of the batch or before a failure
        // is recorded: one write per batch. A replica dying in between sends them again
        // (at least once; receivers de-duplicate by id).
        let mut done = Vec::with_capacity(positions.len());
        for (i, &(position, attempts)) in claimed.iter().enumerate() {
            let Some(event) = events.remove(&position) else {
                // Pruned before it could be delivered: nothing to send.
                done.push(position);
                continue;
            };
            match sink.sink.deliver(&event.event).await {
                Ok(()) => done.push(position),
                Err(e) => {
                    db.delivered(&sink.name, &std::mem::take(&mut done)).await?;
                    let attempts = attempts + 1;
                    let dead = !e.retryable || attempts >= i64::from(sink.max_attempts);
                    let next = crate::db::now_ms()
                        + i64::try_from(backoff(attempts).as_millis()).unwrap_or(i64::MAX);
                    tracing::warn!(sink = %sink.name, id = %event.event.id, attempts, dead, error = %e, "delivery failed");
                    db.delivery_failed(&sink.name, position, attempts, next, &e.message, dead)
                        .await?;
                    if dead {
                        continue;
                    }
                    // Keep order: the rest of the batch waits for this one's retry, and is
                    // due with it (not when the leases taken for this round run out).
                    let rest: Vec<i64> = claimed[i + 1..].iter().map(|(p, _)| *p).collect();
                    db.hold_deliveries(&sink.name, replica, &rest, next).await?;
                    return Ok(Round::Done);
                }
            }
        }
        db.delivered(&sink.name, &done).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_a_schema_name_and_a_slack_message() {
        let names: Vec<String> = cplane_schema::notifications::EVENT_TYPES
            .iter()
            .map(|t| format!("io.cplane.{t}"))
            .collect();
        let ours: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ours);
        let e = CloudEvent::build(
            &crate::events::NewEvent::new(
                EventType::CommitRefused,
                "commit/0123456789abcdef",
                serde_json::json!({"commit": "0123456789abcdef", "errors": ["workspaces/a.yaml:3:3: spec.x: unknown field <x>"]}),
            ),
            "*",
            1,
            0,
        );
        assert_eq!(
            slack_text(&e, Some("https://cplane.example.com")),
            ":no_entry: Commit `0123456789ab` refused with 1 error(s); the last good commit stays in force\n• workspaces/a.yaml:3:3: spec.x: unknown field &lt;x&gt; _(*)_"
        );
        let e = CloudEvent::build(
            &crate::events::NewEvent::new(
                EventType::WorkspaceProvisioningFailed,
                "workspace/acme",
                serde_json::json!({"workspace": "acme", "step": "create_zone", "attempt": 2, "error": "throttled"}),
            )
            .in_stream("sgp-1", "prod"),
            "sgp-1/prod",
            1,
            0,
        );
        assert_eq!(
            slack_text(&e, Some("https://cplane.example.com")),
            ":x: Workspace <https://cplane.example.com/v1/workspaces/acme|*acme*>: step `create_zone` failed (attempt 2): throttled _(sgp-1/prod)_"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
