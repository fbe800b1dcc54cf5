//! The agent's loop.
//!
//! ```text
//! start: load the stored bundle (if any) → re-apply it at once
//! loop:
//!   long-poll the server (If-None-Match: the digest we hold)
//!     200 → verify digest → apply (may prune) → persist → report status
//!     304 → the server confirmed our bundle is current
//!     error → jittered exponential backoff; the cluster stays as it is
//!   drift timer (jittered) → re-apply the stored bundle → report status (best effort)
//!   SIGTERM / Ctrl-C → stop after the apply in progress
//! ```
//!
//! An apply in progress is never interrupted: the shutdown signal is looked at between steps.
//! Prune runs only when the server's latest answer confirmed the bundle (see
//! [`crate::inventory`]); while the server is down the stored bundle is still re-applied, so
//! drift is corrected, but nothing is deleted.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::apply::{self, Options, Target};
use crate::bundle::Bundle;
use crate::client::{Poll, ServerClient};
use crate::store::Store;
use crate::Exit;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state dir cannot be used.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long the server may hold a poll.
    pub wait: Duration,
    /// Period of the drift re-apply (jittered ±20 %).
    pub drift: Duration,
    /// First backoff after an error (doubles up to `max_backoff`, jittered).
    pub min_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(60),
            drift: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starting at `min`, capped at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
        }
    }

    /// The next pause: `min · 2^failures`, capped, times a random factor in [0.5, 1.5).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        exp.min(self.max).mul_f64(rand::random_range(0.5..1.5))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// Everything one agent needs.
pub struct Agent {
    /// The server side.
    pub server: ServerClient,
    /// The cluster side.
    pub target: Target,
    /// The on-disk copy of the last applied bundle.
    pub store: Store,
    /// Timing.
    pub timing: Timing,
}

/// Posts `status`; whether the server took it (a failure is logged).
async fn report(server: &ServerClient, status: &serde_json::Value) -> bool {
    match server.report(status).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "status report not delivered");
            false
        }
    }
}

/// Reports a run that failed as a whole (see [`apply::failure_status`]); whether delivered.
pub async fn report_failure(
    server: &ServerClient,
    digest: &str,
    generation: i64,
    message: &str,
) -> bool {
    report(server, &apply::failure_status(digest, generation, message)).await
}

/// What one apply came to.
enum Applied {
    /// It ran; every object applied (`ok`), and the report.
    Ran { ok: bool, report: apply::Report },
    /// It failed as a whole (reported as such).
    Failed(apply::Error),
}

/// One apply (fresh or drift), reported to the server — per object, or as a whole when the
/// run failed before it could look at the objects. The second value: whether the report was
/// delivered.
async fn apply_and_report(
    agent: &Agent,
    bundle: &Bundle,
    confirmed: bool,
    why: &str,
) -> (Applied, bool) {
    match apply::apply(&agent.target, bundle, Options { confirmed }).await {
        Ok(r) => {
            let ok = r.count(apply::Action::Failed) == 0;
            tracing::info!(
                digest = %bundle.digest,
                generation = bundle.generation,
                why,
                summary = %r.summary(),
                "applied"
            );
            let delivered = report(&agent.server, &r.to_status()).await;
            (Applied::Ran { ok, report: r }, delivered)
        }
        Err(e) => {
            tracing::warn!(digest = %bundle.digest, why, error = %e, "apply failed");
            let delivered = report_failure(
                &agent.server,
                &bundle.digest,
                bundle.generation,
                &format!("apply failed: {e}"),
            )
            .await;
            (Applied::Failed(e), delivered)
        }
    }
}

fn applied_ok(applied: &Applied) -> bool {
    matches!(applied, Applied::Ran { ok: true, .. })
}

/// The stored bundle, or `None` (with a warning) when there is none or it does not verify.
fn stored(agent: &Agent) -> Option<Bundle> {
    agent.store.load().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignoring the stored bundle");
        None
    })
}

/// `--once`: one poll without waiting, one apply, one status report (see `cplane-agent --help`
/// for the exit codes).
///
/// - A new bundle: verified, stored, applied (prune allowed: the server confirmed it).
/// - `304`: the stored bundle is current; it is applied (prune allowed).
/// - A bundle that fails verification: nothing is applied; a failed status naming the server's
///   digest is reported; exit 1.
/// - The server unreachable (or answering an error): the stored bundle, if any, is re-applied
///   without pruning, as the loop's drift correction would (its report cannot be delivered
///   unless the server is back); exit 1 in any case, since the cluster may lag behind git.
pub async fn once(agent: &Agent) -> Exit {
    let cluster = agent.server.cluster().to_owned();
    let stored = stored(agent);
    let known = stored.as_ref().map(|b| b.digest.clone());
    let bundle = match agent.server.poll(known.as_deref(), Duration::ZERO).await {
        Ok(Poll::Fresh(bundle)) => {
            if let Err(e) = agent.store.save(&bundle) {
                tracing::error!(error = %e, "cannot persist the bundle; applying it anyway");
            }
            bundle
        }
        Ok(Poll::NotModified) => match stored {
            Some(b) => b,
            None => {
                println!("the server answered 304 Not Modified to a poll naming no bundle");
                return Exit::Failed;
            }
        },
        Err(e) => {
            if let Some((digest, generation)) = e.refused_bundle() {
                println!("bundle {digest} (generation {generation}) refused: {e}");
                report_failure(
                    &agent.server,
                    digest,
                    generation,
                    &format!("bundle refused: {e}"),
                )
                .await;
                return Exit::Failed;
            }
            println!("poll failed: {e}");
            if let Some(b) = stored {
                println!(
                    "re-applying the stored bundle {} (generation {}) without prune",
                    b.digest, b.generation
                );
                let (applied, _) =
                    apply_and_report(agent, &b, false, "stored bundle; the poll failed").await;
                print!("{}", render(&applied, &b, &cluster));
            }
            return Exit::Failed;
        }
    };
    let (applied, delivered) = apply_and_report(agent, &bundle, true, "once").await;
    print!("{}", render(&applied, &bundle, &cluster));
    if !delivered {
        println!("the status report was not delivered");
    }
    match applied {
        Applied::Failed(_) | Applied::Ran { ok: false, .. } => Exit::Failed,
        Applied::Ran { .. } if !delivered => Exit::Failed,
        Applied::Ran { report, .. } if !report.healthy() => Exit::Unhealthy,
        Applied::Ran { .. } => Exit::Success,
    }
}

/// What `--once` prints: one line per object, then the summary.
fn render(applied: &Applied, bundle: &Bundle, cluster: &str) -> String {
    let mut out = format!(
        "bundle {} (generation {}) on cluster {cluster}:\n",
        bundle.digest, bundle.generation
    );
    match applied {
        Applied::Failed(e) => out.push_str(&format!("apply failed: {e}\n")),
        Applied::Ran { report, .. } => {
            for o in &report.objects {
                out.push_str(&format!(
                    "  {:<10} {} {}",
                    o.action.label(),
                    o.object,
                    o.health.label()
                ));
                if !o.message.is_empty() {
                    out.push_str(&format!(": {}", o.message));
                }
                out.push('\n');
            }
            out.push_str(&report.summary());
            out.push('\n');
        }
    }
    out
}

/// `--dry-run`: one poll without waiting, then a server-side dry run of the bundle
/// ([`crate::dry_run`]), printed. Writes nothing: the bundle is not stored, no status is
/// reported (the server's record of what was applied stays as it is), and prune is only
/// dry-run.
pub async fn dry_run(agent: &Agent) -> Exit {
    let stored = stored(agent);
    let known = stored.as_ref().map(|b| b.digest.clone());
    let bundle = match agent.server.poll(known.as_deref(), Duration::ZERO).await {
        Ok(Poll::Fresh(bundle)) => bundle,
        Ok(Poll::NotModified) => match stored {
            Some(b) => b,
            None => {
                println!("the server answered 304 Not Modified to a poll naming no bundle");
                return Exit::Failed;
            }
        },
        Err(e) => {
            println!("poll failed: {e}");
            return Exit::Failed;
        }
    };
    match crate::dry_run::plan(&agent.target, &bundle, Options { confirmed: true }).await {
        Ok(plan) => {
            print!("{}", plan.render(agent.server.cluster()));
            if plan.count(apply::Action::Failed) > 0 {
                Exit::Failed
            } else if plan.has_changes() {
                Exit::Changes
            } else {
                Exit::Success
            }
        }
        Err(e) => {
            println!("dry run failed: {e}");
            Exit::Failed
        }
    }
}

/// Reports that the run failed before any apply (no usable Kubernetes configuration): polls
/// once without waiting to learn the digest to name (the server's bundle, else the stored one);
/// nothing is reported when neither is known or the server is unreachable.
pub async fn report_setup_failure(server: &ServerClient, store: &Store, message: &str) {
    let stored = store.load().ok().flatten();
    let known = stored.as_ref().map(|b| b.digest.clone());
    let named = match server.poll(known.as_deref(), Duration::ZERO).await {
        Ok(Poll::Fresh(b)) => Some((b.digest, b.generation)),
        Ok(Poll::NotModified) => stored.map(|b| (b.digest, b.generation)),
        Err(e) => e
            .refused_bundle()
            .map(|(d, g)| (d.to_owned(), g))
            .or_else(|| stored.map(|b| (b.digest, b.generation))),
    };
    match named {
        Some((digest, generation)) => {
            report_failure(server, &digest, generation, message).await;
        }
        None => tracing::warn!("no bundle known: the failure is not reported to the server"),
    }
}

/// Runs until `shutdown` turns true (after the apply in progress, if any).
pub async fn run(agent: Agent, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let Timing {
        wait,
        drift,
        min_backoff,
        max_backoff,
    } = agent.timing;
    // The stored bundle: applied again at once (a restarted agent corrects drift even while
    // the server is down).
    let mut current: Option<Bundle> = agent.store.load()?;
    let mut next_drift = Instant::now();
    // Whether the server's latest answer confirmed `current` (200 with it, or 304).
    let mut confirmed = false;
    let mut backoff = Backoff::new(min_backoff, max_backoff);
    let mut retry_at: Option<Instant> = None;
    let mut apply_backoff = Backoff::new(min_backoff, drift.max(min_backoff));

    loop {
        if *shutdown.borrow() {
            break;
        }
        let known = current.as_ref().map(|b| b.digest.clone());
        let poll = async {
            if let Some(t) = retry_at {
                tokio::time::sleep_until(t).await;
            }
            agent.server.poll(known.as_deref(), wait).await
        };
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break; // the sender is gone: nobody can ask us to stop any more
                }
            }
            () = tokio::time::sleep_until(next_drift), if current.is_some() => {
                // Drift: re-apply what we hold, whatever the server's state.
                let bundle = current.as_ref().expect("guarded by current.is_some()");
                let ok = applied_ok(&apply_and_report(&agent, bundle, confirmed, "drift").await.0);
                next_drift = Instant::now() + if ok { apply_backoff.reset(); jitter(drift) } else { apply_backoff.next_delay() };
            }
            polled = poll => match polled {
                Ok(Poll::Fresh(bundle)) => {
                    retry_at = None;
                    backoff.reset();
                    confirmed = true;
                    tracing::info!(digest = %bundle.digest, generation = bundle.generation, objects = bundle.objects.len(), "new bundle");
                    // Persist before applying: the bundle is verified desired state, and the
                    // drift timer must re-apply it even if this apply is cut short.
                    if let Err(e) = agent.store.save(&bundle) {
                        tracing::error!(error = %e, "cannot persist the bundle; applying it anyway");
                    }
                    let ok = applied_ok(&apply_and_report(&agent, &bundle, true, "new bundle").await.0);
                    next_drift = Instant::now() + if ok { apply_backoff.reset(); jitter(drift) } else { apply_backoff.next_delay() };
                    current = Some(bundle);
                }
                Ok(Poll::NotModified) => {
                    retry_at = None;
                    backoff.reset();
                    confirmed = current.is_some();
                }
                Err(e) => {
                    confirmed = false;
                    if let Some((digest, generation)) = e.refused_bundle() {
                        // The server is there but its bundle does not verify: say so.
                        report_failure(&agent.server, digest, generation, &format!("bundle refused: {e}")).await;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "poll failed; the cluster stays as it is");
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }
    tracing::info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_millis(500) && capped < Duration::from_millis(1500));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }
}
