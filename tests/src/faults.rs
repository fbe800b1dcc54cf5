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
        Self {
            state: Mutex::new(State {
                percent: 0,
                seed: 0x9e37_79b9_7f4a_7c15,
                injected: 0,
            }),
        }
    }
}

impl Faults {
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
        // xorshift64*: deterministic from the seed.
        s.seed ^= s.seed >> 12;
        s.seed ^= s.seed << 25;
        s.seed ^= s.seed >> 27;
        let r = s.seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if (r >> 33) % 100 >= u64::from(s.percent) {
            return None;
        }
        s.injected += 1;
        Some(if (r >> 20) % 3 == 0 {
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
