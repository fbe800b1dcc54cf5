//! `cplane serve`: the running control plane of one region.
//!
//! A reconcile loop and an HTTP server share one process:
//! - **Loop**: waits for a trigger — a verified push webhook, the jittered poll (default 3 min)
//!   — coalescing triggers that arrive while a run is in flight; fetches the state repo's remote
//!   into a local bare mirror; runs one reconcile ([`crate::reconcile::run`]) of the mirrored
//!   branch; records the outcome (status, metrics). A failed run never stops the loop.
//! - **HTTP** (axum): `/healthz`, `/readyz` (after the first good load), `/metrics`
//!   (Prometheus text), read API `GET /v1/regions`, `/v1/workspaces`, `/v1/workspaces/{id}`
//!   (desired + status conditions), `/v1/stacks`, `/v1/clusters`, `/v1/status`, the tenant →
//!   region lookup `GET /lookup/{workspace}`, and `POST /v1/webhooks/git` (cplane-webhook).
//!
//! - **Replicas**: several processes may share one PostgreSQL database; only the holder of the
//!   reconcile lease ([`crate::lease`]) runs the loop, the others stand by (they follow the
//!   applied revision for the read API) and take over when the holder dies. Agents' long-polls
//!   are woken on every replica ([`crate::bundle_store`], `LISTEN/NOTIFY`).
//! - **Auth** ([`crate::auth`]): OIDC bearer JWTs on the `/v1` API when issuers are configured,
//!   `/internal/principals` and `/internal/tenants` for other regions, `/v1/me`.
//! - **Primary region** ([`crate::tenants`]): with `PRIMARY_CPLANE_API_URL` set, the `tenants`
//!   rows are read and written through the primary's `/internal/tenants`, never this
//!   database's table.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Notify;

use crate::aws::observe::Sample;
use crate::aws::Aws;
use crate::bundle_store::BundleStore;
use crate::db::Db;
use crate::incremental::{Incremental, Prepared};
use crate::lease::Lease;
use crate::plan::Options;
use crate::reconcile::{
    self, apply_and_record_ports, record_refusal, GlobalPorts, Ports, Request, Run, RunResult,
};
use crate::source;
use crate::status::RunOutcome;
use crate::tls::ClientCluster;

/// What `cplane serve` is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Remote of the state repo (any URL libgit2 fetches: file://, git://, a path).
    pub repo_url: String,
    /// Branch to follow; `None` follows the remote's default branch (its `HEAD`).
    pub branch: Option<String>,
    /// Where the bare mirror lives.
    pub mirror: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Regions and environments reconciled (reference doc 001: one control plane per region ×
    /// environment).
    pub scope: crate::plan::Scope,
    /// Poll interval (jittered ±20 %).
    pub poll: Duration,
    /// Webhook secret; `None` disables the webhook endpoint (404).
    pub webhook_secret: Option<String>,
    /// Webhook deliveries per source address; `None`: unlimited.
    pub webhook_rate: Option<cplane_webhook::RateLimit>,
    /// Deletion threshold.
    pub max_deletions: usize,
    /// Deleting a removed workspace's zone also deletes records cplane did not create.
    pub delete_foreign_records: bool,
    /// How many reconcile runs are kept in the database, and for how long.
    pub retention: crate::db::Retention,
    /// HTTPS (and agents' client certificates); plain HTTP when `None`.
    pub tls: Option<crate::tls::Settings>,
    /// Agents' client certificates forwarded by a load balancer that terminates TLS.
    pub forwarded_certs: Option<crate::tls::ForwardedSettings>,
    /// API authentication (OIDC issuers, primary region, inter-region token).
    pub auth: crate::auth::Config,
    /// How long a client has to send a request's head, and to finish a TLS handshake, before
    /// it is disconnected ([`crate::connections::DEFAULT_HEADER_READ_TIMEOUT`] by default).
    pub header_read_timeout: Duration,
    /// The edge front door's routes and TLS authorization ([`edge`]).
    pub edge: edge::Settings,
    /// How long a BFF's registration keeps its workspace's `BffHealthy` condition `True`
    /// ([`DEFAULT_BFF_REGISTER_TTL`] by default).
    pub bff_register_ttl: Duration,
    /// How long without a report before a cluster's agent counts as offline
    /// ([`crate::rollout::OFFLINE_AFTER`] by default).
    pub agent_offline_after: Duration,
    /// The forge hosting the state repo: pull-request events are planned and the plan posted
    /// there (a commit status and one comment), and `?mode=pr` opens its pull requests.
    /// `None`: request events are acknowledged and ignored, `?mode=pr` only pushes a branch.
    pub forge: Option<crate::adapters::forge::Settings>,
    /// This server's URL as the forge's users reach it: the links of commit statuses
    /// (`{public_url}/v1/plan?rev=…`). Default: `http(s)://{listen}`.
    pub public_url: Option<String>,
    /// Lifecycle events: how long they are kept, when a silent agent counts as offline.
    pub events: EventSettings,
}

/// Settings of the lifecycle events ([`crate::events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSettings {
    /// How long the outbox keeps events.
    pub retention: crate::db::EventRetention,
    /// An agent that has not reported for this long is offline (`io.cplane.agent.offline`).
    pub agent_offline_after: Duration,
}

impl Default for EventSettings {
    /// Seven days of events; agents offline after 10 minutes of silence.
    fn default() -> Self {
        Self {
            retention: crate::db::EventRetention::default(),
            agent_offline_after: DEFAULT_AGENT_OFFLINE_AFTER,
        }
    }
}

/// How long an agent may stay silent before it counts as offline: the same threshold as cluster
/// and rollout status ([`crate::rollout::OFFLINE_AFTER`], 10 minutes).
pub const DEFAULT_AGENT_OFFLINE_AFTER: Duration = crate::rollout::OFFLINE_AFTER;

/// How often each replica marks silent agents offline and prunes old events.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a BFF's registration counts when no other follows: 5 minutes.
pub const DEFAULT_BFF_REGISTER_TTL: Duration = Duration::from_secs(300);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mirror could not be created.
    #[error("state repo mirror {path}: {source}")]
    Mirror {
        /// Mirror path.
        path: String,
        /// libgit2's reason.
        #[source]
        source: git2::Error,
    },
    /// The TLS settings are unusable.
    #[error("{source}")]
    Tls {
        /// What is wrong.
        #[source]
        source: crate::tls::Error,
    },
    /// The branch to follow could not be found on the remote.
    #[error("{0}")]
    Branch(String),
    /// The primary region's internal API is not usable (`PRIMARY_CPLANE_API_URL`).
    #[error("{source}")]
    Primary {
        /// What is wrong.
        #[source]
        source: crate::tenants::Error,
    },
    /// The forge settings are unusable.
    #[error("{source}")]
    Forge {
        /// What is wrong.
        #[source]
        source: crate::adapters::forge::Error,
    },
    /// The published bundles could not be read.
    #[error("reading published bundles: {source}")]
    Store {
        /// The database's reason.
        #[source]
        source: crate::db::Error,
    },
    /// Binding the listen address failed.
    #[error(
        "cannot listen on {addr}: {} (choose another address with --listen)",
        listen_reason(source)
    )]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a listen address cannot be bound, in words.
fn listen_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "the port is in use by another process".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::AddrNotAvailable => "the address is not on this machine".into(),
        _ => e.to_string(),
    }
}

mod agent_api;
pub mod dashboard;
pub mod edge;
mod events;
mod internal;
mod metrics;
mod notifications;
mod pull_requests;
mod reconcile_loop;
mod rollouts;
mod seed;
mod user_api;
mod webhooks;

use agent_api::*;
pub use metrics::Metrics;
use metrics::*;
pub use reconcile_loop::LastRun;
use reconcile_loop::*;
use user_api::*;

struct Shared {
    settings: Settings,
    /// The branch followed ([`Settings::branch`], or the remote's default branch).
    branch: String,
    db: Db,
    aws: Option<Aws>,
    trigger: Notify,
    /// Set when the server shuts down: the loop stops after the run in flight.
    stopped: tokio::sync::watch::Receiver<bool>,
    ready: AtomicBool,
    /// Whether this replica holds the reconcile lease.
    leader: AtomicBool,
    metrics: Metrics,
    /// The last run (`None` until the first one ends: `/v1/status` shows `null`).
    last: Mutex<Option<LastRun>>,
    /// Published bundles' heads (in memory) and verified cluster tokens: agents' polls.
    store: Arc<BundleStore>,
    /// The last commit applied (not refused): what the read API shows.
    applied: Mutex<String>,
    /// Digests of the bundles of the last full run: full runs (polls) render only clusters
    /// whose inputs changed.
    render_memo: Arc<Mutex<crate::check::RenderMemo>>,
    /// The last valid model, for incremental runs (`None` until the first full run).
    state: tokio::sync::Mutex<Option<Incremental>>,
    /// The write API (set once the server starts).
    api: std::sync::OnceLock<Arc<crate::api::Api>>,
    /// Authentication of API users (the middleware on every route).
    auth: Arc<crate::auth::Auth>,
    /// The edge front door's limiter and index.
    edge: edge::Edge,
    /// The global tenant → region map of the applied revision's `cplane.yaml` (step 8), when
    /// configured and a cloud is: `/lookup` answers from it for other regions' workspaces.
    global_lookup: std::sync::RwLock<Option<Arc<dyn crate::global::LookupSink>>>,
    /// Wakes the rollout driver (an agent reported, an operator acted).
    rollout_wake: Notify,
    /// The forge plans of pull requests are posted to ([`Settings::forge`]).
    forge: Option<crate::adapters::forge::Forge>,
    /// Held while a pull request's plan is posted: one at a time, so two pushes in quick
    /// succession cannot both create "the" comment.
    pull_requests: tokio::sync::Mutex<()>,
    /// The outbox's newest position, as last read ([`events::tail`]): wakes `/v1/events`.
    events_head: tokio::sync::watch::Sender<i64>,
    /// The notification sinks being delivered to ([`notifications::notifier`]).
    notify: Mutex<notifications::NotifyState>,
}

/// Runs the server until Ctrl-C or SIGTERM, then stops gracefully: no new connections, HTTP
/// requests in flight finish, the reconcile run in flight finishes (a step cut short anyway
/// is journaled, so the next run resolves it).
pub async fn serve(mut settings: Settings, db: Db, aws: Option<Aws>) -> Result<(), Error> {
    let mirror =
        open_mirror(&settings.mirror, &settings.repo_url).map_err(|source| Error::Mirror {
            path: settings.mirror.display().to_string(),
            source,
        })?;
    let branch = tokio::task::block_in_place(|| {
        resolve_branch(&mirror, &settings.repo_url, settings.branch.as_deref())
    })
    .map_err(Error::Branch)?;
    drop(mirror);
    settings.branch = Some(branch.clone());
    let mut db = db
        .with_retention(settings.retention)
        .with_event_stream(&settings.scope.label());
    // A region other than the primary reads and writes the primary's `tenants` rows.
    if let (Some(primary), Some(token)) = (&settings.auth.primary, &settings.auth.service_token) {
        let remote = crate::adapters::primary::RemoteTenants::new(
            primary,
            token,
            crate::auth::jwks::HttpClient::new(),
        )
        .map_err(|source| Error::Primary { source })?;
        tracing::info!(primary = %primary, "tenants rows live in the primary region");
        db = db.with_tenant_store(Arc::new(remote));
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: settings.listen,
            source,
        })?;
    let tls = match &settings.tls {
        Some(t) => Some(crate::tls::server_config(t).map_err(|source| Error::Tls { source })?),
        None => None,
    };
    let forwarded = match &settings.forwarded_certs {
        Some(f) => Some(Arc::new(
            crate::tls::ForwardedCerts::new(f).map_err(|source| Error::Tls { source })?,
        )),
        None => None,
    };
    let forge = match settings.forge.clone() {
        Some(f) => {
            Some(crate::adapters::forge::Forge::new(f).map_err(|source| Error::Forge { source })?)
        }
        None => None,
    };
    let store = BundleStore::load(db.clone())
        .await
        .map_err(|source| Error::Store { source })?;
    let _listener = store.listen();
    let auth = Arc::new(crate::auth::Auth::new(settings.auth.clone(), db.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let edge = edge::Edge::new(settings.edge.clone());
    let shared = Arc::new(Shared {
        settings,
        branch,
        db,
        aws,
        trigger: Notify::new(),
        stopped,
        ready: AtomicBool::new(false),
        leader: AtomicBool::new(false),
        metrics: Metrics::default(),
        last: Mutex::default(),
        applied: Mutex::default(),
        store,
        state: tokio::sync::Mutex::new(None),
        api: std::sync::OnceLock::new(),
        render_memo: Arc::default(),
        auth,
        edge,
        global_lookup: std::sync::RwLock::new(None),
        rollout_wake: Notify::new(),
        forge: forge.clone(),
        pull_requests: tokio::sync::Mutex::new(()),
        events_head: tokio::sync::watch::channel(0).0,
        notify: Mutex::default(),
    });
    let _ = shared.api.set(crate::api::Api::start(
        crate::api::Settings {
            repo_url: shared.settings.repo_url.clone(),
            branch: shared.branch.clone(),
            mirror: shared.settings.mirror.clone(),
            scope: shared.settings.scope.clone(),
            max_deletions: shared.settings.max_deletions,
            delete_foreign_records: shared.settings.delete_foreign_records,
            cloud: shared.aws.is_some(),
            forge,
        },
        shared.db.clone(),
        {
            let weak = Arc::downgrade(&shared);
            Arc::new(move || {
                if let Some(sh) = weak.upgrade() {
                    sh.metrics.pending.set(1);
                    sh.trigger.notify_one();
                }
            })
        },
    ));
    shared
        .metrics
        .register(shared.api.get().map(|a| &**a), shared.aws.as_ref());
    tracing::info!(addr = %shared.settings.listen, branch = %shared.branch, "listening");
    // A local repository (a path, not a URL) is watched: a plain `git commit` reconciles.
    let watcher = if Path::new(&shared.settings.repo_url).exists() {
        match watch_local(Path::new(&shared.settings.repo_url), shared.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "file watch unavailable; relying on the poll");
                None
            }
        }
    } else {
        None
    };
    let reconciler = tokio::spawn(reconcile_loop(shared.clone()));
    let expiry = tokio::spawn(seed::expire_registrations(shared.clone()));
    let rollouts = tokio::spawn(rollouts::driver(shared.clone()));
    let events_tail = tokio::spawn(events::tail(shared.clone()));
    let housekeeping = tokio::spawn(housekeeping(shared.clone()));
    let notifier = tokio::spawn(notifications::notifier(shared.clone()));
    let app = router(shared.clone());
    let served = crate::connections::serve(
        listener,
        tls,
        forwarded,
        app,
        shared.settings.header_read_timeout,
        shutdown_signal(),
    )
    .await;
    // The HTTP side has stopped; let the loop finish the run in flight (it checks `stopped`
    // between runs), then stop watching.
    let _ = stop.send(true);
    shared.trigger.notify_one();
    match tokio::time::timeout(SHUTDOWN_GRACE, reconciler).await {
        Ok(_) => tracing::info!("reconcile loop stopped"),
        Err(_) => tracing::warn!(
            "the run in flight did not finish within {}s; its journal lets the next run resolve it",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    expiry.abort();
    rollouts.abort();
    events_tail.abort();
    housekeeping.abort();
    notifier.abort();
    drop(watcher);
    served.map_err(|source| Error::Listen {
        addr: shared.settings.listen,
        source,
    })
}

/// Every [`HOUSEKEEPING_INTERVAL`], on every replica (both are safe to run concurrently):
/// marks agents silent for too long offline, and prunes events past their retention.
async fn housekeeping(shared: Arc<Shared>) {
    let settings = shared.settings.events;
    let mut ticker = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        ticker.tick().await;
        match shared
            .db
            .mark_agents_offline(settings.agent_offline_after)
            .await
        {
            Ok(marked) if !marked.is_empty() => {
                tracing::warn!(clusters = ?marked, "agents offline");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "marking silent agents offline"),
        }
        if let Err(e) = shared.db.prune_events(settings.retention).await {
            tracing::warn!(error = %e, "pruning events");
        }
    }
}

/// Whether a path segment could be the id of something stored, so that it may be looked up.
/// Ids are names (DNS labels, at most 253 bytes): one with a control character names nothing,
/// and is not sent to the database either, where PostgreSQL refuses a NUL in text with an error
/// (a `500` for what is simply not found).
pub(super) fn possible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 253 && !id.chars().any(char::is_control)
}

/// Resolves once the server is shutting down.
async fn stop_requested(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not across an await.
    let _ = stopped.wait_for(|s| *s).await.map(|_| ());
}

/// How long shutdown waits for the reconcile run in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    tracing::info!("shutting down: finishing requests and the run in flight");
}

/// The server's routes: one router per surface, each with its own authentication, so where a
/// route is mounted says who may call it.
fn router(shared: Arc<Shared>) -> Router {
    let auth = shared.auth.clone();
    // Users (OIDC bearer JWTs): the read API, the write API, `/v1/me`.
    let mut users = user_api::router(shared.clone())
        .merge(rollouts::router(shared.clone()))
        .merge(events::router(shared.clone()))
        .merge(crate::auth::user_routes(auth.clone()));
    if let Some(api) = shared.api.get() {
        users = users.merge(crate::api::router(api.clone()));
    }
    // `route_layer`: the layer guards these routes, not the fallback (an unknown path is a
    // 404 for everyone, not a 401).
    let users = users.route_layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        crate::auth::require_user,
    ));
    let mut app = Router::new()
        // Open: health, metrics, the API description.
        .merge(metrics::router(shared.clone()))
        .merge(crate::api::open_router())
        .merge(dashboard::router(shared.clone()))
        // Agents (cluster tokens or client certificates) and the seed's endpoints (lookup,
        // the BFF's cluster token).
        .merge(agent_api::router(shared.clone()))
        .merge(seed::router(shared.clone()))
        // The edge front door (open, rate-limited per source address).
        .merge(edge::router(shared.clone()))
        // Other regions (`INTER_REGION_SERVICE_TOKEN`) and the development issuer's keys.
        .merge(internal::router(&shared))
        .merge(crate::auth::routes(auth))
        .merge(users);
    // Push and pull-request webhooks (signed).
    if let Some(webhooks) = webhooks::router(&shared) {
        app = app.merge(webhooks);
    }
    app
}
