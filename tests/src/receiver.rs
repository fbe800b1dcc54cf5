//! HTTP receivers on 127.0.0.1 that record every request they answer `200` (what a webhook
//! or Slack sink sent), and can be killed and started again on the same port mid-test.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::HeaderMap;

/// One request received: its headers (names lowercase) and body.
#[derive(Debug, Clone)]
pub struct Received {
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Received {
    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A recording receiver ([`Receiver::start`]); stopped when dropped.
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
    delay: std::time::Duration,
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    ///
    /// # Panics
    /// When it cannot listen.
    pub fn start() -> Self {
        Self::slow(std::time::Duration::ZERO)
    }

    /// Starts a receiver that takes `delay` to answer each request (after recording it).
    ///
    /// # Panics
    /// When it cannot listen.
    pub fn slow(delay: std::time::Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut r = Self {
            port: crate::moto::free_port(),
            seen: Arc::default(),
            delay,
            runtime,
            task: None,
        };
        r.resume();
        r
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().expect("seen").clone()
    }

    /// Stops answering: the listener and every connection are dropped at once (a crash, not
    /// a graceful stop).
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.runtime.block_on(t);
        }
    }

    /// Listens again on the same port.
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub fn resume(&mut self) {
        let seen = self.seen.clone();
        let delay = self.delay;
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("seen").push(Received { headers, body });
                tokio::time::sleep(delay).await;
                "ok"
            }
        });
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
            .expect("bind the receiver's port");
        self.task = Some(self.runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}
