//! Push webhooks (`POST /v1/webhooks/git`, the `cplane-webhook` router): each verified push
//! triggers a run; each verified pull-request event asking for a plan is planned and the plan
//! posted on the forge ([`super::pull_requests`]) when one is configured.
//!
//! # Guarantees
//! - Each source address gets [`Settings::webhook_rate`] deliveries (`429` above it).
//! - A delivery id is acted on once by all the replicas of a database: the first replica to
//!   record it in `webhook_deliveries` (a unique insert) triggers a run, the others answer
//!   `200 {"ignored": "duplicate delivery …"}`. Ids are kept for [`DELIVERY_RETENTION`], so a
//!   forge's redelivery within that time is ignored too.
//! - When the database cannot record a delivery, the push is acted on anyway: a second run of
//!   the same revision is a no-op, a missed push is a late reconcile.

use super::*;

/// How long delivery ids are remembered: longer than forges offer redelivery (GitHub lists
/// three days of deliveries).
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often a server deletes delivery ids older than [`DELIVERY_RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The webhook router when a secret is configured.
pub(super) fn router(shared: &Arc<Shared>) -> Option<Router> {
    let config = cplane_webhook::Config::new(
        shared.settings.webhook_secret.as_deref()?.as_bytes(),
        &shared.branch,
    )?;
    let sh = shared.clone();
    let trigger: cplane_webhook::Trigger = Arc::new(move |_push| {
        sh.metrics.webhook_deliveries.inc();
        sh.metrics.pending.set(1);
        sh.trigger.notify_one();
    });
    let pull_requests: Option<cplane_webhook::PullRequestTrigger> =
        shared.forge.as_ref().map(|_| {
            let sh = shared.clone();
            Arc::new(move |request: cplane_webhook::PullRequest| {
                sh.metrics.webhook_deliveries.inc();
                tokio::spawn(super::pull_requests::plan_and_post(sh.clone(), request));
            }) as cplane_webhook::PullRequestTrigger
        });
    Some(cplane_webhook::router_with_pull_requests(
        config,
        trigger,
        pull_requests,
        cplane_webhook::Limits {
            rate: shared.settings.webhook_rate,
            deliveries: Arc::new(Recorded {
                db: shared.db.clone(),
                pruned: Mutex::new(None),
            }),
            ..cplane_webhook::Limits::default()
        },
    ))
}

/// Delivery ids recorded in the database, shared by every replica.
struct Recorded {
    db: Db,
    /// When this server last pruned old ids.
    pruned: Mutex<Option<Instant>>,
}

impl Recorded {
    /// Deletes ids older than [`DELIVERY_RETENTION`], at most every [`PRUNE_EVERY`].
    async fn prune(&self) {
        {
            let mut pruned = self.pruned.lock().expect("prune lock");
            if pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *pruned = Some(Instant::now());
        }
        let retention = i64::try_from(DELIVERY_RETENTION.as_millis()).unwrap_or(i64::MAX);
        match self
            .db
            .prune_deliveries(crate::db::now_ms().saturating_sub(retention))
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(deleted = n, "old webhook delivery ids pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning webhook delivery ids"),
        }
    }
}

impl cplane_webhook::Deliveries for Recorded {
    fn first_seen<'a>(&'a self, key: &'a str) -> cplane_webhook::FirstSeen<'a> {
        Box::pin(async move {
            let first = self
                .db
                .record_delivery(key)
                .await
                .map_err(|e| e.to_string())?;
            self.prune().await;
            Ok(first)
        })
    }
}
