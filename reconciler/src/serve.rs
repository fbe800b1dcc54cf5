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
//!   `/internal/principals` for other regions, `/v1/me`.

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

use crate::apply::Sample;
use crate::aws::Aws;
use crate::bundle_store::BundleStore;
use crate::db::Db;
use crate::incremental::{Incremental, Prepared};
use crate::lease::Lease;
use crate::plan::Options;
use crate::reconcile::{self, apply_and_record, record_refusal, Request, Run, RunResult};
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
    /// Deletion threshold.
    pub max_deletions: usize,
    /// How many reconcile runs are kept in the database, and for how long.
    pub retention: crate::db::Retention,
    /// HTTPS (and agents' client certificates); plain HTTP when `None`.
    pub tls: Option<crate::tls::Settings>,
    /// API authentication (OIDC issuers, primary region, inter-region token).
    pub auth: crate::auth::Config,
    /// How long a client has to send a request's head, and to finish a TLS handshake, before
    /// it is disconnected ([`crate::connections::DEFAULT_HEADER_READ_TIMEOUT`] by default).
    pub header_read_timeout: Duration,
}

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

/// The upper bounds (seconds) of `cplane_reconcile_duration_seconds`' buckets.
const DURATION_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The label of `cplane_reconcile_runs_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    /// [`RunOutcome::label`].
    outcome: &'static str,
}

/// The server's Prometheus series, shared by the loop and the HTTP handlers: typed families
/// of constant size (a histogram, not a list of every run's duration), registered once in
/// one [`Registry`] with the API's and the AWS adapter's series ([`Metrics::register`]).
pub struct Metrics {
    /// Every series, rendered by `GET /metrics`; set once at server start.
    registry: std::sync::OnceLock<Registry>,
    /// `cplane_reconcile_runs_total{outcome}`.
    runs: Family<RunLabel, Counter>,
    /// `cplane_reconcile_duration_seconds`.
    durations: Histogram,
    /// `cplane_webhook_deliveries_total`.
    webhook_deliveries: Counter,
    /// `cplane_state_fetches_total`: fetches of the state repo's remote by the loop.
    fetches: Counter,
    /// `cplane_reconcile_queue_depth`: 1 while a trigger waits for the next run.
    pending: Gauge,
    /// `cplane_reconcile_leader`: mirrors [`Shared::leader`] when scraped.
    leader: Gauge,
    /// `cplane_bundle_long_polls`: long-polls waiting for a change right now.
    long_polls: Gauge,
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
        }
    }
}

impl Metrics {
    /// Builds the registry of every series: these, the API's and the AWS adapter's (when
    /// configured). Called once at server start; later calls change nothing.
    fn register(&self, api: Option<&crate::api::Api>, aws: Option<&Aws>) {
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
    fn record_run(&self, outcome: RunOutcome, took: Duration) {
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
struct Waiting<'a>(&'a Gauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A snapshot of the last reconcile.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastRun {
    /// Commit reconciled (or refused).
    pub commit: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Errors (validation, refusals, failed steps).
    pub errors: Vec<String>,
    /// Steps planned.
    pub steps: usize,
    /// Unix millis at the end of the run.
    pub finished_at: i64,
    /// `full` or `incremental`.
    pub mode: &'static str,
}

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
}

/// Opens (or creates) the bare mirror with `origin` pointing at `url`.
fn open_mirror(path: &Path, url: &str) -> Result<git2::Repository, git2::Error> {
    let repo = match git2::Repository::open_bare(path) {
        Ok(r) => r,
        Err(_) => git2::Repository::init_bare(path)?,
    };
    if repo.find_remote("origin").is_err() {
        repo.remote("origin", url)?;
    } else {
        repo.remote_set_url("origin", url)?;
    }
    Ok(repo)
}

/// The branch to follow: `wanted`, or the remote's default branch (`HEAD`) when `None`; an
/// error in words when the remote cannot be read or has no such branch.
fn resolve_branch(
    repo: &git2::Repository,
    url: &str,
    wanted: Option<&str>,
) -> Result<String, String> {
    let mut remote = repo
        .find_remote("origin")
        .map_err(|e| e.message().to_owned())?;
    let connection = remote
        .connect_auth(
            git2::Direction::Fetch,
            Some(crate::remote::callbacks()),
            None,
        )
        .map_err(|e| format!("cannot read the state repo {url}: {}", e.message()))?;
    let heads: Vec<String> = connection
        .list()
        .map_err(|e| format!("cannot list the branches of {url}: {}", e.message()))?
        .iter()
        .filter_map(|h| h.name().strip_prefix("refs/heads/").map(str::to_owned))
        .collect();
    let branch = match wanted {
        Some(b) => b.to_owned(),
        None => {
            let default = connection.default_branch().ok();
            match default.as_ref().and_then(|d| d.as_str().ok()) {
                Some(d) => d.trim_start_matches("refs/heads/").to_owned(),
                None => {
                    return Err(format!(
                        "the state repo {url} has no default branch; name one with --branch"
                    ))
                }
            }
        }
    };
    if heads.contains(&branch) {
        Ok(branch)
    } else if heads.is_empty() {
        Err(format!(
            "the state repo {url} has no branches yet: push a first commit"
        ))
    } else {
        Err(format!(
            "the state repo {url} has no branch `{branch}` (it has: {}); choose one with --branch",
            heads.join(", ")
        ))
    }
}

/// Fetches the branch; returns the mirrored ref name.
fn fetch(repo: &git2::Repository, branch: &str) -> Result<String, git2::Error> {
    let mut remote = repo.find_remote("origin")?;
    let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(crate::remote::callbacks());
    remote.fetch(&[spec.as_str()], Some(&mut options), None)?;
    Ok(format!("refs/remotes/origin/{branch}"))
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
    let db = db.with_retention(settings.retention);
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
    let store = BundleStore::load(db.clone())
        .await
        .map_err(|source| Error::Store { source })?;
    let _listener = store.listen();
    let auth = Arc::new(crate::auth::Auth::new(settings.auth.clone(), db.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
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
    });
    let _ = shared.api.set(crate::api::Api::start(
        crate::api::Settings {
            repo_url: shared.settings.repo_url.clone(),
            branch: shared.branch.clone(),
            mirror: shared.settings.mirror.clone(),
            scope: shared.settings.scope.clone(),
            max_deletions: shared.settings.max_deletions,
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
    let app = router(shared.clone());
    let served = crate::connections::serve(
        listener,
        tls,
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
    drop(watcher);
    served.map_err(|source| Error::Listen {
        addr: shared.settings.listen,
        source,
    })
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

/// Quiet time after the last ref change before a watched repository triggers a run: a
/// `git commit` or `git pull` moves several files, and they make one run.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(150);

/// Whether a file-system event in a watched repository's git directory moves a branch or
/// `HEAD`. Only writes count: reading a ref (which every fetch of the reconciler does) makes
/// access events that must not trigger another fetch; lock files, reflogs and the index are
/// git's own bookkeeping.
fn moves_a_ref(git_dir: &Path, event: &notify::Event) -> bool {
    use notify::event::{EventKind, ModifyKind};
    let writes = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    };
    writes
        && event.paths.iter().any(|p| {
            let Ok(rel) = p.strip_prefix(git_dir) else {
                return false;
            };
            let lock = p.extension().is_some_and(|e| e == "lock");
            !lock
                && (rel.starts_with("refs/heads")
                    || rel == Path::new("packed-refs")
                    || rel == Path::new("HEAD"))
        })
}

/// Watches a local repository's branches (loose refs under `refs/heads`, `packed-refs`,
/// `HEAD`) and triggers a reconcile when one moves, debounced ([`WATCH_DEBOUNCE`]). Nothing
/// else is watched: the reconciler's own writes (its mirror, database and `.cplane` folder)
/// live elsewhere, and its reads of the repository are not writes ([`moves_a_ref`]).
fn watch_local(
    path: &Path,
    shared: Arc<Shared>,
) -> Result<notify::RecommendedWatcher, Box<dyn std::error::Error>> {
    use notify::{RecursiveMode, Watcher};
    let git_dir = std::fs::canonicalize(git2::Repository::open(path)?.path())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched = git_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| moves_a_ref(&watched, &e)) {
            let _ = tx.send(());
        }
    })?;
    std::fs::create_dir_all(git_dir.join("refs/heads"))?;
    watcher.watch(&git_dir.join("refs/heads"), RecursiveMode::Recursive)?;
    watcher.watch(&git_dir, RecursiveMode::NonRecursive)?;
    // The debounce: after a change, wait until the repository is quiet, then trigger once.
    // Ends when the watcher (and with it `tx`) is dropped.
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            shared.metrics.pending.set(1);
            loop {
                tokio::select! {
                    more = rx.recv() => if more.is_none() { return },
                    () = tokio::time::sleep(WATCH_DEBOUNCE) => break,
                }
            }
            shared.trigger.notify_one();
        }
    });
    tracing::info!(path = %git_dir.display(), "watching the local repository's branches");
    Ok(watcher)
}

/// Reconciles while this replica holds the lease ([`crate::lease`]); stands by otherwise.
/// Returns when the server shuts down.
async fn reconcile_loop(shared: Arc<Shared>) {
    let scope = shared.settings.scope.label();
    let mut stopped = shared.stopped.clone();
    loop {
        let mut lease = tokio::select! {
            lease = Lease::acquire(shared.db.url(), &scope) => lease,
            () = standby(&shared, &scope) => unreachable!("standby returns only by cancellation"),
            () = stop_requested(&mut stopped) => return,
        };
        tracing::info!(scope, "holding the reconcile lease");
        shared.leader.store(true, Ordering::SeqCst);
        let lost = lead(&shared, &mut lease).await;
        shared.leader.store(false, Ordering::SeqCst);
        if !lost {
            return;
        }
        tracing::warn!(scope, "lost the reconcile lease; standing by");
    }
}

/// What the loop does after a run: the shape of kube-runtime's `Action`, decided from the
/// run's outcome by [`next_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Run again after this long (converging: soon; errors: with growing backoff), or
    /// earlier on a trigger.
    Requeue(Duration),
    /// Nothing to retry: wait for the branch to move (a trigger) or the periodic poll.
    AwaitChange,
}

/// How soon a converging run (e.g. a certificate waiting for DNS validation) runs again.
const REQUEUE_CONVERGING: Duration = Duration::from_secs(15);
/// The first retry after an error; it doubles per consecutive error up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between retries of a run that keeps failing.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The requeue after a run that ended with `outcome`; `failures` counts consecutive errors
/// (reset by any other outcome). Errors back off exponentially with full jitter (half to all
/// of the step, so replicas and restarts spread out); a refused or held commit is never
/// retried: it waits for the branch to change.
fn next_action(outcome: RunOutcome, failures: &mut u32, jitter: f64) -> Action {
    match outcome {
        RunOutcome::Failed | RunOutcome::Error => {
            let step = BACKOFF_FIRST
                .saturating_mul(1 << (*failures).min(16))
                .min(BACKOFF_MAX);
            *failures = failures.saturating_add(1);
            Action::Requeue(step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
        }
        RunOutcome::Converging => {
            *failures = 0;
            Action::Requeue(REQUEUE_CONVERGING.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
        }
        RunOutcome::Converged | RunOutcome::Refused | RunOutcome::Held => {
            *failures = 0;
            Action::AwaitChange
        }
    }
}

/// Why [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A webhook, the file watch or an API write: run if the branch moved.
    Trigger,
    /// The poll or a requeue: a full run (which also checks drift).
    Full,
}

/// Runs reconciles until the lease is lost (`true`) or the server stops (`false`). The first
/// run, polls and requeues are full runs (they also check drift); triggers run
/// incrementally, and not at all when the branch did not move. A commit that was refused (or
/// held) is not run again: the loop waits for the branch to move.
async fn lead(shared: &Arc<Shared>, lease: &mut Lease) -> bool {
    let mut wake = Wake::Full;
    let mut failures = 0u32;
    let mut requeue: Option<tokio::time::Instant> = None;
    // The head commit whose run is final until the branch moves (refused or held).
    let mut settled: Option<String> = None;
    loop {
        if *shared.stopped.borrow() {
            return false;
        }
        if !lease.check().await {
            return true;
        }
        shared.metrics.pending.set(0);
        let started = Instant::now();
        if let Some(outcome) = run_once(shared, wake == Wake::Full, settled.as_deref()).await {
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            shared
                .metrics
                .record_run(outcome.outcome, started.elapsed());
            match outcome.outcome {
                RunOutcome::Refused => tracing::warn!(
                    commit = %outcome.commit,
                    errors = outcome.errors.len(),
                    "commit refused, nothing of it applied; waiting for the next commit: {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Held => tracing::warn!(
                    commit = %outcome.commit,
                    "commit held, waiting for a confirming commit: {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Error | RunOutcome::Failed => tracing::warn!(
                    commit = %outcome.commit,
                    outcome = %outcome.outcome,
                    ms,
                    "run failed (retried with backoff): {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Converged | RunOutcome::Converging => tracing::info!(
                    commit = %outcome.commit,
                    outcome = %outcome.outcome,
                    mode = outcome.mode,
                    ms,
                    "reconciled"
                ),
            }
            settled = matches!(outcome.outcome, RunOutcome::Refused | RunOutcome::Held)
                .then(|| outcome.commit.clone());
            if !matches!(outcome.outcome, RunOutcome::Refused | RunOutcome::Error) {
                shared
                    .applied
                    .lock()
                    .expect("applied")
                    .clone_from(&outcome.commit);
            }
            let action = next_action(outcome.outcome, &mut failures, rand::random());
            requeue = match action {
                Action::Requeue(after) => Some(tokio::time::Instant::now() + after),
                Action::AwaitChange => None,
            };
            *shared.last.lock().expect("last") = Some(outcome);
            // Wake the long-polls of clusters whose bundle changed (other replicas hear of it
            // by NOTIFY).
            if let Err(e) = shared.store.refresh(None).await {
                tracing::warn!(error = %e, "reading bundle heads");
            }
        }
        wake = match wait(shared, lease, requeue).await {
            Some(wake) => wake,
            None => return !*shared.stopped.borrow(),
        };
        if wake == Wake::Full {
            requeue = None;
        }
    }
}

/// A standby's duties, until cancelled: keep the mirror and the applied revision current (from
/// the holder's record in the database) so that the read API answers on every replica.
async fn standby(shared: &Shared, scope: &str) {
    loop {
        match shared.db.applied_revision(scope).await {
            Ok(Some(commit)) => {
                let s = &shared.settings;
                let fetched = tokio::task::block_in_place(|| {
                    let repo = open_mirror(&s.mirror, &s.repo_url)?;
                    fetch(&repo, &shared.branch)?;
                    // The holder may have applied a commit this mirror has not fetched yet.
                    repo.find_commit(git2::Oid::from_str(&commit)?).map(|_| ())
                });
                match fetched {
                    Ok(()) => {
                        *shared.applied.lock().expect("applied") = commit;
                        shared.ready.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "standby: applied commit not mirrored yet")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "standby: reading the applied revision"),
        }
        tokio::select! {
            () = shared.trigger.notified() => {}
            () = tokio::time::sleep(STANDBY_REFRESH) => {}
        }
    }
}

/// How often a standby re-reads the applied revision.
const STANDBY_REFRESH: Duration = Duration::from_secs(2);

/// How often the holder checks its lease while it waits.
const LEASE_CHECK: Duration = Duration::from_secs(5);

/// Waits for a trigger, the jittered poll or the requeue deadline; triggers during a run
/// coalesce. `None` when the lease was lost or the server stops meanwhile.
async fn wait(
    shared: &Shared,
    lease: &mut Lease,
    requeue: Option<tokio::time::Instant>,
) -> Option<Wake> {
    let poll = tokio::time::sleep(shared.settings.poll.mul_f64(rand::random_range(0.8..1.2)));
    tokio::pin!(poll);
    let mut stopped = shared.stopped.clone();
    loop {
        let requeued = async {
            match requeue {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop_requested(&mut stopped) => return None,
            () = shared.trigger.notified() => return Some(Wake::Trigger),
            () = &mut poll => return Some(Wake::Full),
            () = requeued => return Some(Wake::Full),
            () = tokio::time::sleep(LEASE_CHECK) => {
                if !lease.check().await {
                    return None;
                }
            }
        }
    }
}

fn progress() -> crate::apply::Progress {
    Arc::new(|step, outcome| {
        tracing::info!(workspace = %step.workspace, action = %step.action, outcome = outcome.label(), "step");
    })
}

fn summary(commit: String, plan: &crate::plan::Plan, report: &crate::apply::Report) -> LastRun {
    LastRun {
        commit,
        outcome: crate::status::summarize(plan, report),
        errors: crate::status::errors(plan, report),
        steps: plan.steps.len(),
        finished_at: crate::db::now_ms(),
        mode: "full",
    }
}

fn error_run(commit: String, error: impl std::fmt::Display) -> LastRun {
    LastRun {
        commit,
        outcome: RunOutcome::Error,
        errors: vec![error.to_string()],
        finished_at: crate::db::now_ms(),
        ..LastRun::default()
    }
}

/// One run: incremental when the new commit only touches `workspaces/` (re-validate, render,
/// plan and apply just those), full otherwise (and on the first run, and on a poll with no new
/// commit, which is when drift is checked).
///
/// `None` when there is nothing to run: triggered but the branch did not move, or the head is
/// `settled` (a refused or held commit, final until the branch moves).
async fn run_once(shared: &Shared, periodic: bool, settled: Option<&str>) -> Option<LastRun> {
    let s = &shared.settings;
    let options = Options {
        max_deletions: s.max_deletions,
        confirmed: false,
    };
    let scope = s.scope.label();
    let started = Instant::now();
    let started_at = crate::db::now_ms();
    let mut state = shared.state.lock().await;

    // Git work is synchronous and stays in this block (a Repository is not Send).
    type Fetched = (String, Option<Prepared>, Option<source::Snapshot>);
    let fetched = tokio::task::block_in_place(|| -> Result<Fetched, String> {
        let repo = open_mirror(&s.mirror, &s.repo_url).map_err(|e| e.to_string())?;
        shared.metrics.fetches.inc();
        let rev = fetch(&repo, &shared.branch)
            .map_err(|e| format!("fetching {}: {}", s.repo_url, e.message()))?;
        let commit = source::resolve(&repo, &rev)
            .map_err(|e| e.to_string())?
            .to_string();
        if settled == Some(commit.as_str()) {
            return Ok((commit, None, None));
        }
        if !periodic && state.as_ref().is_some_and(|inc| inc.commit() == commit) {
            return Ok((commit, None, None));
        }
        if let Some(inc) = state.as_mut() {
            if let Ok(Some(ids)) = inc.incremental_ids(&repo, &rev) {
                if !ids.is_empty() {
                    let prepared = inc.prepare(&repo, &rev).map_err(|e| e.to_string())?;
                    return Ok((commit, Some(prepared), None));
                }
            }
        }
        let snapshot = source::read(&repo, &rev).map_err(|e| e.to_string())?;
        Ok((commit, None, Some(snapshot)))
    });
    let (commit, prepared, snapshot) = match fetched {
        Ok((_, None, None)) => return None, // the branch did not move, or its head is settled
        Ok(f) => f,
        Err(e) => return Some(error_run(String::new(), e)),
    };
    let run_id = format!("{started_at}-{}", &commit[..12.min(commit.len())]);
    let run = Run {
        db: &shared.db,
        commit: &commit,
        scope: &scope,
        run_id: &run_id,
        started,
        started_at,
    };

    match prepared {
        Some(Prepared::Refused(r)) => {
            let errors: Vec<String> = r.diagnostics.iter().map(ToString::to_string).collect();
            if let Err(e) = record_refusal(run, &errors).await {
                return Some(error_run(commit, e));
            }
            return Some(LastRun {
                commit,
                outcome: RunOutcome::Refused,
                errors,
                steps: 0,
                finished_at: crate::db::now_ms(),
                mode: "incremental",
            });
        }
        Some(Prepared::Staged(staged)) => {
            let inc = state.as_mut().expect("staged implies a state");
            let r = match inc.finish(staged, &shared.db, options).await {
                Ok(r) => r,
                Err(e) => return Some(error_run(commit, e)),
            };
            return Some(
                match apply_and_record(
                    run,
                    shared.aws.clone(),
                    &r.plan,
                    r.desired,
                    r.observed,
                    r.bundles,
                    progress(),
                )
                .await
                {
                    Ok((report, _)) => LastRun {
                        mode: "incremental",
                        ..summary(commit, &r.plan, &report)
                    },
                    Err(e) => error_run(commit, e),
                },
            );
        }
        Some(Prepared::NeedsFull(_)) | None => {}
    }

    let Some(snapshot) = snapshot else {
        return Some(error_run(commit, "no snapshot for a full run"));
    };
    let request = Request {
        scope: s.scope.clone(),
        options,
        dry_run: false,
        drift: Sample::OneIn(800),
        memo: Some(shared.render_memo.clone()),
    };
    Some(
        match reconcile::run(
            snapshot,
            &shared.db,
            shared.aws.clone(),
            request,
            progress(),
        )
        .await
        {
            Err(e) => error_run(commit, e),
            Ok(RunResult::Refused(errors)) => LastRun {
                commit,
                outcome: RunOutcome::Refused,
                errors,
                steps: 0,
                finished_at: crate::db::now_ms(),
                mode: "full",
            },
            Ok(RunResult::Planned {
                plan,
                report,
                model,
                ..
            }) => {
                shared.ready.store(true, Ordering::SeqCst);
                if let Some(model) = model {
                    *state = Some(Incremental::from_model(
                        commit.clone(),
                        *model,
                        s.scope.clone(),
                    ));
                }
                summary(commit, &plan, &report.unwrap_or_default())
            }
        },
    )
}

fn router(shared: Arc<Shared>) -> Router {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/regions", get(regions))
        .route("/v1/stacks", get(stacks))
        .route("/v1/clusters", get(clusters))
        .route("/v1/workspaces", get(workspaces))
        .route("/v1/workspaces/{id}", get(workspace))
        .route("/lookup/{workspace}", get(lookup))
        .route("/v1/clusters/{cluster}/bundle", get(bundle))
        .route(
            "/v1/clusters/{cluster}/status",
            get(cluster_status).post(report_status),
        )
        .route("/api/workspaces/{id}/config", get(bff_config))
        .route(
            "/api/workspaces/{id}/register",
            axum::routing::post(bff_register),
        )
        .with_state(shared.clone());
    if let Some(api) = shared.api.get() {
        app = app.merge(crate::api::router(api.clone()));
    }
    if let Some(config) = shared
        .settings
        .webhook_secret
        .as_deref()
        .and_then(|s| cplane_webhook::Config::new(s.as_bytes(), &shared.branch))
    {
        let sh = shared.clone();
        let trigger: cplane_webhook::Trigger = Arc::new(move |_push| {
            sh.metrics.webhook_deliveries.inc();
            sh.metrics.pending.set(1);
            sh.trigger.notify_one();
        });
        app = app.merge(cplane_webhook::router(
            config,
            trigger,
            cplane_webhook::DEFAULT_MAX_BODY,
        ));
    }
    // Users' bearer JWTs on the /v1 API (crate::auth::needs_user_token); keep this layer last
    // so it covers every route above.
    app.merge(crate::auth::routes(shared.auth.clone()))
        .layer(axum::middleware::from_fn_with_state(
            shared.auth.clone(),
            crate::auth::middleware,
        ))
}

async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
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
async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    sh.metrics
        .leader
        .set(i64::from(sh.leader.load(Ordering::SeqCst)));
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

async fn status(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let last = sh.last.lock().expect("last").clone();
    Json(json!({
        "ready": sh.ready.load(Ordering::SeqCst),
        "leader": sh.leader.load(Ordering::SeqCst),
        "branch": sh.branch,
        "last_run": last,
    }))
}

/// An API error: status and message, answered as `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn api_error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError(status, message.to_string())
}

/// The model of the last applied revision, read from the mirror.
fn model_of(sh: &Shared) -> Result<cplane_schema::Model, ApiError> {
    applied_model(sh).map(|(_, model)| model)
}

/// The last applied revision and its model (the commit is the one the model was read at,
/// even when a reconcile applies another meanwhile).
fn applied_model(sh: &Shared) -> Result<(String, cplane_schema::Model), ApiError> {
    let commit = sh.applied.lock().expect("applied").clone();
    if commit.is_empty() || !sh.ready.load(Ordering::SeqCst) {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no good revision loaded yet",
        ));
    }
    let repo = git2::Repository::open_bare(&sh.settings.mirror)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let snap = source::read(&repo, &commit)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let model = cplane_schema::load(snap.files).into_valid().map_err(|d| {
        api_error(
            StatusCode::CONFLICT,
            format!("revision {commit} is invalid: {} error(s)", d.len()),
        )
    })?;
    Ok((commit, model))
}

async fn regions(State(sh): State<Arc<Shared>>) -> Response {
    match model_of(&sh) {
        Err(r) => r.into_response(),
        Ok(m) => Json(
            m.regions
                .values()
                .map(|r| json!({ "id": r.doc.metadata.name, "spec": r.doc.spec }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
    }
}

async fn stacks(State(sh): State<Arc<Shared>>) -> Response {
    match model_of(&sh) {
        Err(r) => r.into_response(),
        Ok(m) => Json(
            m.stacks
                .values()
                .map(|s| json!({ "name": s.entity.doc.metadata.name, "spec": s.entity.doc.spec }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
    }
}

/// Every cluster with the digest and generation of its published bundle (from the database:
/// no rendering per request).
async fn clusters(State(sh): State<Arc<Shared>>) -> Response {
    match sh.db.clusters().await {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|(id, kind, region, environment, digest, generation)| {
                    json!({ "id": id, "kind": kind, "region": region, "environment": environment, "digest": digest, "generation": generation })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// One workspace of the model read at `commit`: its desired state, the commit (what a write's
/// `If-Match` names) and its conditions.
async fn workspace_json(
    sh: &Shared,
    m: &cplane_schema::Model,
    commit: &str,
    id: &str,
) -> Result<serde_json::Value, ApiError> {
    let ws = m
        .workspaces
        .get(id)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")))?;
    let conditions = sh
        .db
        .conditions("workspace", id)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let conditions: Vec<_> = conditions
        .into_iter()
        .map(|(c, (status, reason, message))| json!({ "type": c, "status": if status { "True" } else { "False" }, "reason": reason, "message": message }))
        .collect();
    Ok(
        json!({ "id": id, "file": ws.file, "commit": commit, "spec": ws.doc.spec, "status": { "conditions": conditions } }),
    )
}

/// `ETag: "<commit>"`: the applied revision a read shows, which a write sends back as
/// `If-Match` (`412` if the workspace's file changed since).
fn commit_etag(commit: &str) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{commit}\""))]
}

async fn workspaces(State(sh): State<Arc<Shared>>) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let mut out = Vec::new();
    for id in m.workspaces.keys() {
        match workspace_json(&sh, &m, &commit, id).await {
            Ok(v) => out.push(v),
            Err(r) => return r.into_response(),
        }
    }
    (commit_etag(&commit), Json(out)).into_response()
}

async fn workspace(State(sh): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match workspace_json(&sh, &m, &commit, &id).await {
        Ok(v) => (commit_etag(&commit), Json(v)).into_response(),
        Err(r) => r.into_response(),
    }
}

/// Tenant → region lookup (reference doc 001, step 8): `{"region", "bff_url"}`.
async fn lookup(State(sh): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    match sh.db.lookup_entry(&name).await {
        Ok(Some(row)) => {
            Json(json!({ "region": row.region, "bff_url": row.bff_url })).into_response()
        }
        Ok(None) => {
            api_error(StatusCode::NOT_FOUND, format!("no workspace {name}")).into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// The cluster a request's `Authorization: Bearer <cluster token>` belongs to.
async fn token_cluster(sh: &Shared, headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| api_error(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    match sh.store.token_cluster(token.trim()).await {
        Ok(Some(cluster)) => Ok(cluster),
        Ok(None) => Err(api_error(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked token",
        )),
        Err(e) => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// The verified client certificate's cluster, when the connection is mTLS ([`crate::tls`]).
type ClientCert = Option<axum::Extension<ClientCluster>>;

/// Passes when the caller acts for `cluster` — by its verified client certificate, else by its
/// cluster token: 401 without either, 403 for another cluster's.
async fn require_cluster(
    sh: &Shared,
    headers: &axum::http::HeaderMap,
    cert: &ClientCert,
    cluster: &str,
) -> Result<(), ApiError> {
    let owner = match cert {
        Some(axum::Extension(ClientCluster(c))) => c.clone(),
        None => token_cluster(sh, headers).await?,
    };
    if owner == cluster {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::FORBIDDEN,
            format!("this credential is not for {cluster}"),
        ))
    }
}

/// `?wait=<seconds>` of the bundle long-poll.
#[derive(serde::Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

/// Longest long-poll accepted.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// `GET /v1/clusters/{cluster}/bundle` (agent protocol): the cluster's canonical bundle with
/// `ETag: "<digest>"` and `X-Cplane-Generation`, or `304` when `If-None-Match` names the current
/// digest — after waiting up to `?wait=` seconds for a change. A token for one cluster gets `403`
/// for every other. A `304` is answered from memory (no database read); a `200` is gzip-encoded
/// when the agent accepts it (the stored bytes, as they are) and inflated otherwise.
async fn bundle(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
) -> Response {
    if let Err(e) = require_cluster(&sh, &headers, &cert, &cluster).await {
        return e.into_response();
    }
    let known = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned());
    let gzip = accepts_gzip(&headers);
    // Not held while parked: hyper parses header values in place, so they would keep the
    // connection's first read buffer alive next to the one it reads into meanwhile.
    drop(headers);
    let deadline = Instant::now() + Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_WAIT);
    // Subscribe before looking, so a publish between the look and the wait is not missed.
    let mut changes = sh.store.subscribe();
    let mut waiting = None;
    loop {
        let Some(head) = sh.store.head(&cluster) else {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("no bundle published for cluster {cluster}"),
            )
            .into_response();
        };
        if known.as_deref() != Some(&*head.digest) {
            break;
        }
        let now = Instant::now();
        if now < deadline && waiting.is_none() {
            waiting = Some(Waiting::new(&sh.metrics.long_polls));
        }
        if now >= deadline
            || tokio::time::timeout(deadline - now, changes.changed())
                .await
                .is_err()
        {
            return (
                StatusCode::NOT_MODIFIED,
                [(axum::http::header::ETAG, format!("\"{}\"", head.digest))],
            )
                .into_response();
        }
    }
    let (digest, generation, gz) = match sh.store.body(&cluster).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("no bundle published for cluster {cluster}"),
            )
            .into_response()
        }
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    drop(waiting);
    let mut response = if gzip {
        let mut r = gz.into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
        r
    } else {
        let mut body = Vec::new();
        if let Err(e) =
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut body)
        {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored bundle {digest} is corrupt: {e}"),
            )
            .into_response();
        }
        body.into_response()
    };
    let h = response.headers_mut();
    for (name, value) in [
        (axum::http::header::ETAG, format!("\"{digest}\"")),
        (
            axum::http::header::CONTENT_TYPE,
            "application/x-ndjson".to_owned(),
        ),
        (axum::http::header::VARY, "Accept-Encoding".to_owned()),
        (
            axum::http::HeaderName::from_static("x-cplane-generation"),
            generation.to_string(),
        ),
    ] {
        h.insert(
            name,
            axum::http::HeaderValue::try_from(value).expect("digests and numbers are ASCII"),
        );
    }
    response
}

/// Whether `Accept-Encoding` admits gzip (`gzip` or `*`, with a non-zero `q`).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        })
}

/// `w-{id}` from a path segment that may or may not carry the prefix.
fn workspace_of(id: &str) -> String {
    id.strip_prefix("w-").unwrap_or(id).to_owned()
}

/// `GET /api/workspaces/{id}/config`: the BFF's startup configuration (reference doc 001),
/// for the workspace's own cluster token only.
async fn bff_config(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
) -> Response {
    let id = workspace_of(&id);
    let name = cplane_schema::domain::workspace_name(&id);
    if let Err(e) = require_cluster(&sh, &headers, &cert, &name).await {
        return e.into_response();
    }
    let m = match model_of(&sh) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let Some(ws) = m.workspaces.get(&id) else {
        return api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")).into_response();
    };
    let spec = &ws.doc.spec;
    let names = cplane_schema::validate::names_for(&m, &spec.region, &spec.environment);
    let vars = names.cluster_vars();
    let registered = sh.db.bff_registration(&name).await.ok().flatten();
    Json(json!({
        "workspace_id": name,
        "region": spec.region,
        "environment": spec.environment,
        "account": spec.account,
        "domains": {
            "zone": names.workspace_zone(&id),
            "bff": names.workspace_host(&id, "bff"),
            "app": names.workspace_host(&id, "app"),
        },
        "auth": {
            "issuer": format!("https://{}/realms/{}", vars.auth_domain, m.platform.doc.metadata.name),
            "client_id": name,
        },
        "control_plane": format!("https://{}", vars.base_domain),
        "stacks": spec.stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "registered_url": registered,
    }))
    .into_response()
}

/// Body of `POST /api/workspaces/{id}/register`.
#[derive(serde::Deserialize)]
struct Registration {
    url: String,
}

/// `POST /api/workspaces/{id}/register`: the BFF registers its URL at startup.
async fn bff_register(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
    Json(reg): Json<Registration>,
) -> Response {
    let name = cplane_schema::domain::workspace_name(&workspace_of(&id));
    if let Err(e) = require_cluster(&sh, &headers, &cert, &name).await {
        return e.into_response();
    }
    if !reg.url.starts_with("https://") || reg.url.len() > 2048 {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "url: must be an https:// URL",
        )
        .into_response();
    }
    match sh.db.register_bff(&name, &reg.url).await {
        Ok(()) => Json(json!({ "registered": name, "url": reg.url })).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `POST /v1/clusters/{cluster}/status` (agent protocol): the applied digest, generation,
/// per-object results and health, with the cluster's own token.
async fn report_status(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_cluster(&sh, &headers, &cert, &cluster).await {
        return e.into_response();
    }
    let report: crate::db::ClusterReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("status report: {e}"),
            )
            .into_response()
        }
    };
    let hex = report.digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !report.objects.is_array()
    {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "status report: digest must be sha256:<64 hex>, objects a list",
        )
        .into_response();
    }
    match sh.db.report_cluster_status(&cluster, &report).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `GET /v1/clusters/{cluster}/status`: the agent's last report, and whether it applied the
/// current bundle.
async fn cluster_status(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
) -> Response {
    let current = sh
        .store
        .head(&cluster)
        .map(|h| (h.digest.to_string(), h.generation));
    match sh.db.cluster_status(&cluster).await {
        Ok(report) => {
            let in_sync = match (&current, &report) {
                (Some((digest, _)), Some((r, _))) => r.digest == *digest,
                _ => false,
            };
            Json(json!({
                "cluster": cluster,
                "current": current.map(|(digest, generation)| json!({"digest": digest, "generation": generation})),
                "reported": report.map(|(r, at)| json!({"report": r, "reported_at": at})),
                "in_sync": in_sync,
            }))
            .into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_writes_to_branches_and_head_move_a_ref() {
        let git = Path::new("/repo/.git");
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(moves_a_ref(
            git,
            &event(rename, "/repo/.git/refs/heads/main")
        ));
        assert!(moves_a_ref(
            git,
            &event(
                EventKind::Create(CreateKind::File),
                "/repo/.git/refs/heads/topic/x"
            )
        ));
        assert!(moves_a_ref(git, &event(write, "/repo/.git/packed-refs")));
        assert!(moves_a_ref(git, &event(write, "/repo/.git/HEAD")));
        // Reads (what a fetch of the repository does) and git's bookkeeping do not.
        for kind in [
            EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read)),
            EventKind::Access(AccessKind::Close(notify::event::AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        ] {
            assert!(!moves_a_ref(git, &event(kind, "/repo/.git/HEAD")));
        }
        for path in [
            "/repo/.git/refs/heads/main.lock",
            "/repo/.git/index",
            "/repo/.git/FETCH_HEAD",
            "/repo/.git/logs/HEAD",
            "/repo/.git/refs/remotes/origin/main",
            "/repo/workspaces/acme.yaml",
        ] {
            assert!(!moves_a_ref(git, &event(write, path)), "{path}");
        }
    }

    #[test]
    fn errors_back_off_with_jitter_and_settled_runs_wait_for_a_change() {
        let mut failures = 0;
        let steps: Vec<Action> = (0..12)
            .map(|_| next_action(RunOutcome::Error, &mut failures, 1.0))
            .collect();
        assert_eq!(steps[0], Action::Requeue(Duration::from_secs(1)));
        assert_eq!(steps[1], Action::Requeue(Duration::from_secs(2)));
        assert_eq!(steps[4], Action::Requeue(Duration::from_secs(16)));
        assert_eq!(steps[11], Action::Requeue(BACKOFF_MAX));
        // Full jitter: at least half the step.
        let mut f = 3;
        assert_eq!(
            next_action(RunOutcome::Failed, &mut f, 0.0),
            Action::Requeue(Duration::from_secs(4))
        );
        // Any other outcome resets the count.
        assert_eq!(
            next_action(RunOutcome::Refused, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(failures, 0);
        assert_eq!(
            next_action(RunOutcome::Held, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(
            next_action(RunOutcome::Converged, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(
            next_action(RunOutcome::Converging, &mut failures, 0.5),
            Action::Requeue(REQUEUE_CONVERGING)
        );
    }
}
