//! Health and metrics: `/healthz`, `/readyz` and `/metrics` (one prometheus-client registry
//! of typed families, Prometheus text format 0.0.4).

use super::*;

/// `/healthz`, `/readyz`, `/metrics`: open to every caller.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// The upper bounds (seconds) of `cplane_reconcile_duration_seconds`' buckets.
pub(super) const DURATION_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The label of `cplane_reconcile_runs_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RunLabel {
    /// [`RunOutcome::label`].
    pub(super) outcome: &'static str,
}

/// The labels of `cplane_rollout_clusters`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RolloutLabel {
    /// The rollout's state (`progressing`, `baking`, `paused`).
    pub(super) rollout_state: String,
    /// The cluster's state in it (`pending`, `held`, `published`, `done`, `failed`, `skipped`).
    pub(super) cluster_state: String,
}

/// The label of `cplane_clusters`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StandingLabel {
    /// [`cplane_core::rollout::Standing::label`].
    pub(super) state: &'static str,
}

/// The labels of `cplane_rollout_wave_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WaveLabel {
    /// The rollout's id.
    pub(super) rollout: String,
    /// Its state (`progressing`, `baking`, `paused`).
    pub(super) state: String,
    /// The current wave's name.
    pub(super) wave: String,
}

/// The server's Prometheus series, shared by the loop and the HTTP handlers: typed families
/// of constant size (a histogram, not a list of every run's duration), registered once in
/// one [`Registry`] with the API's and the AWS adapter's series ([`Metrics::register`]).
pub struct Metrics {
    /// Every series, rendered by `GET /metrics`; set once at server start.
    pub(super) registry: std::sync::OnceLock<Registry>,
    /// `cplane_reconcile_runs_total{outcome}`.
    pub(super) runs: Family<RunLabel, Counter>,
    /// `cplane_reconcile_duration_seconds`.
    pub(super) durations: Histogram,
    /// `cplane_webhook_deliveries_total`.
    pub(super) webhook_deliveries: Counter,
    /// `cplane_state_fetches_total`: fetches of the state repo's remote by the loop.
    pub(super) fetches: Counter,
    /// `cplane_reconcile_queue_depth`: 1 while a trigger waits for the next run.
    pub(super) pending: Gauge,
    /// `cplane_reconcile_leader`: mirrors [`Shared::leader`] when scraped.
    pub(super) leader: Gauge,
    /// `cplane_bundle_long_polls`: long-polls waiting for a change right now.
    pub(super) long_polls: Gauge,
    /// `cplane_rollout_clusters{rollout_state,cluster_state}`: clusters of active rollouts.
    pub(super) rollout_clusters: Family<RolloutLabel, Gauge>,
    /// `cplane_rollout_wave_wake_seconds`: from the driver judging a gate passed to the next
    /// wave's long-polls woken.
    pub(super) wave_wake: Histogram,
    /// `cplane_clusters{state}`: clusters by where they stand (counts, never a series per
    /// cluster), computed from the database when scraped.
    pub(super) standings: Family<StandingLabel, Gauge>,
    /// `cplane_rollout_wave_seconds{rollout,state,wave}`: time in the current wave of each
    /// active rollout (a newer rollout supersedes the active ones, so this is one series, or
    /// none), computed when scraped.
    pub(super) in_wave: Family<WaveLabel, Gauge>,
    /// `cplane_pull_request_plans_total{outcome}`: plans of pull requests posted on the forge
    /// (`planned`, `invalid`, `error`) or not (`forge_error`).
    pub(super) pull_request_plans: Family<RunLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            registry: std::sync::OnceLock::new(),
            runs: Family::default(),
            durations: Histogram::new(DURATION_BUCKETS),
            webhook_deliveries: Counter::default(),
            fetches: Counter::default(),
            pending: Gauge::default(),
            leader: Gauge::default(),
            long_polls: Gauge::default(),
            rollout_clusters: Family::default(),
            wave_wake: Histogram::new(DURATION_BUCKETS),
            standings: Family::default(),
            in_wave: Family::default(),
            pull_request_plans: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts one pull request's plan by its outcome.
    pub(super) fn pull_request_plan(&self, outcome: &'static str) {
        self.pull_request_plans
            .get_or_create(&RunLabel { outcome })
            .inc();
    }

    /// Builds the registry of every series: these, the API's and the AWS adapter's (when
    /// configured). Called once at server start; later calls change nothing.
    pub(super) fn register(&self, api: Option<&crate::api::Api>, aws: Option<&Aws>) {
        let mut registry = Registry::default();
        registry.register(
            "cplane_reconcile_runs",
            "Reconcile runs by outcome",
            self.runs.clone(),
        );
        registry.register(
            "cplane_reconcile_duration_seconds",
            "Duration of reconcile runs",
            self.durations.clone(),
        );
        registry.register(
            "cplane_rollout_clusters",
            "Clusters of active rollouts by rollout state and cluster state",
            self.rollout_clusters.clone(),
        );
        registry.register(
            "cplane_rollout_wave_wake_seconds",
            "From a rollout gate passing to the next wave's agents woken",
            self.wave_wake.clone(),
        );
        registry.register(
            "cplane_clusters",
            "Clusters by state: in-sync, behind, failed, offline, never-reported, suspended",
            self.standings.clone(),
        );
        registry.register(
            "cplane_rollout_wave_seconds",
            "Seconds each active rollout has been in its current wave",
            self.in_wave.clone(),
        );
        registry.register(
            "cplane_pull_request_plans",
            "Plans of pull requests by outcome (forge_error: not posted)",
            self.pull_request_plans.clone(),
        );
        registry.register(
            "cplane_state_fetches",
            "Fetches of the state repo by the reconcile loop",
            self.fetches.clone(),
        );
        registry.register(
            "cplane_reconcile_queue_depth",
            "Triggers waiting for the next run",
            self.pending.clone(),
        );
        registry.register(
            "cplane_reconcile_leader",
            "Whether this replica holds the reconcile lease",
            self.leader.clone(),
        );
        registry.register(
            "cplane_bundle_long_polls",
            "Agents' bundle long-polls waiting for a change",
            self.long_polls.clone(),
        );
        registry.register(
            "cplane_webhook_deliveries",
            "Verified push deliveries that triggered a reconcile",
            self.webhook_deliveries.clone(),
        );
        if let Some(api) = api {
            api.register_metrics(&mut registry);
        }
        if let Some(aws) = aws {
            aws.register_metrics(&mut registry);
        }
        let _ = self.registry.set(registry);
    }

    /// Records one finished run.
    pub(super) fn record_run(&self, outcome: RunOutcome, took: Duration) {
        self.runs
            .get_or_create(&RunLabel {
                outcome: outcome.label(),
            })
            .inc();
        self.durations.observe(took.as_secs_f64());
    }
}

/// Counts one long-poll in [`Metrics`] for as long as it waits (dropped with the request,
/// whether it is answered or the agent goes away).
pub(super) struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    pub(super) fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
    if sh.ready.load(Ordering::SeqCst) {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no good revision loaded yet\n",
        )
            .into_response()
    }
}

/// `GET /metrics`: every series in the Prometheus text format (version 0.0.4).
pub(super) async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    sh.metrics
        .leader
        .set(i64::from(sh.leader.load(Ordering::SeqCst)));
    // Four small queries (heads, reports in brief, rollouts' waiting clusters, suspended
    // workspaces) per scrape, on whichever replica is scraped.
    match crate::rollout::standing_counts(
        &sh.db,
        crate::db::now_ms(),
        sh.settings.agent_offline_after,
    )
    .await
    {
        Ok(counts) => {
            for (state, n) in counts {
                sh.metrics
                    .standings
                    .get_or_create(&StandingLabel { state })
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting clusters by state"),
    }
    match sh.db.rollouts(true, 0).await {
        Ok(active) => {
            let now = crate::db::now_ms();
            sh.metrics.in_wave.clear();
            for r in active {
                let wave = usize::try_from(r.wave)
                    .ok()
                    .and_then(|w| r.policy.waves.get(w))
                    .map(|w| w.name.clone())
                    .unwrap_or_default();
                sh.metrics
                    .in_wave
                    .get_or_create(&WaveLabel {
                        rollout: r.id,
                        state: r.state,
                        wave,
                    })
                    .set((now - r.wave_started_at).max(0) / 1000);
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading active rollouts"),
    }
    let mut out = String::new();
    if let Some(registry) = sh.metrics.registry.get() {
        if let Err(e) = prometheus_text::encode(&mut out, registry) {
            // Writing to a String fails only if an encoder does; say so rather than half a page.
            tracing::error!(error = %e, "encoding metrics");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_text::CONTENT_TYPE,
        )],
        out,
    )
        .into_response()
}
