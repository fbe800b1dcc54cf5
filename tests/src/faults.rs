//! Injected failures for the test servers of outside systems ([`crate::keycloak`],
//! [`crate::cloudflare_kv`]): a share of requests answered with throttling or a server error
//! *before* they take effect, as a rate limiter or an overloaded front end would. Decided by a
//! seeded generator, so a failing run can be replayed.

use std::sync::Mutex;

/// The fault plan of one server.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    percent: u32,
    seed: u64,
    count: u64,
    injected: u64,
}

/// What to answer instead of handling a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `429 Too Many Requests` with `Retry-After: 0`.
    Throttle,
    /// `503 Service Unavailable`.
    Unavailable,
}

impl Default for Faults {
    fn default() -> Self {
        Self::seeded(1)
    }
}

/// splitmix64: a well-mixed value for each request number.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Faults {
    /// No faults yet; the requests that will fail are decided by `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            state: Mutex::new(State {
                percent: 0,
                seed,
                count: 0,
                injected: 0,
            }),
        }
    }

    /// From now on, `percent` % of requests fail (two thirds throttled, a third `503`).
    pub fn set_percent(&self, percent: u32) {
        self.state.lock().expect("faults").percent = percent.min(100);
    }

    /// Requests failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().expect("faults").injected
    }

    /// Whether to fail the request now arriving, and how.
    pub fn next(&self) -> Option<Fault> {
        let mut s = self.state.lock().expect("faults");
        if s.percent == 0 {
            return None;
        }
        s.count += 1;
        let r = mix(s.seed.wrapping_mul(1_000_003).wrapping_add(s.count - 1));
        if r % 100 >= u64::from(s.percent) {
            return None;
        }
        s.injected += 1;
        Some(if (r >> 32).is_multiple_of(3) {
            Fault::Unavailable
        } else {
            Fault::Throttle
        })
    }
}

/// Serves `app` on a fresh port of 127.0.0.1 from a thread of its own (so a test may block
/// on a child process meanwhile); returns `http://127.0.0.1:PORT`. The server lives as long
/// as the process.
pub fn serve_in_background(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_the_share_asked_for_fails() {
        let f = Faults::default();
        assert_eq!((0..1000).filter(|_| f.next().is_some()).count(), 0);
        f.set_percent(30);
        let failed = (0..1000).filter(|_| f.next().is_some()).count();
        assert!((250..350).contains(&failed), "{failed}");
        assert_eq!(f.injected(), failed as u64);
    }
}
