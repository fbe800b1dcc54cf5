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

/// One apply (fresh or drift), reported to the server; returns whether every object applied.
async fn apply_and_report(agent: &Agent, bundle: &Bundle, confirmed: bool, why: &str) -> bool {
    match apply::apply(&agent.target, bundle, Options { confirmed }).await {
        Ok(report) => {
            let ok = report.count(apply::Action::Failed) == 0;
            tracing::info!(
                digest = %bundle.digest,
                generation = bundle.generation,
                why,
                summary = %report.summary(),
                "applied"
            );
            if let Err(e) = agent.server.report(&report.to_status()).await {
                tracing::warn!(error = %e, "status report not delivered");
            }
            ok
        }
        Err(e) => {
            tracing::warn!(digest = %bundle.digest, why, error = %e, "apply failed");
            false
        }
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
                let ok = apply_and_report(&agent, bundle, confirmed, "drift").await;
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
                    let ok = apply_and_report(&agent, &bundle, true, "new bundle").await;
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
