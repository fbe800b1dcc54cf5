//! The HTTP client of the REST adapters (Keycloak's admin API, Cloudflare's API): hyper's
//! HTTP/1.1 client with rustls (system roots; plain http only to loopback addresses), a
//! timeout and a body limit per call, and a retry policy for throttling and server errors.
//!
//! Retries: a call answered `429`, `502`, `503` or `504`, or failing in transport, is tried
//! again up to [`ATTEMPTS`] times in all, after a jittered exponential pause (50 ms doubling,
//! at most 2 s) or the `Retry-After` the server asked for (at most 5 s). Retrying a
//! non-idempotent call is the caller's choice ([`Client::send`] with `retry: false` for none);
//! the adapters here only send calls whose repetition is harmless or detected (Keycloak answers
//! a second create of one client id with `409`).

use std::time::Duration;

use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use rand::Rng as _;

use crate::auth::jwks::checked_uri;

/// Attempts per call, the first included.
pub const ATTEMPTS: u32 = 5;
/// Longest a call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (4 MiB).
const MAX_BODY: usize = 4 << 20;

/// An answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (at most 4 MiB).
    pub body: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not https (or http to loopback).
    #[error(transparent)]
    Url(#[from] crate::auth::jwks::FetchError),
    /// The request could not be built.
    #[error("request to {url}: {source}")]
    Request {
        /// URL.
        url: String,
        /// Reason.
        #[source]
        source: axum::http::Error,
    },
    /// Connecting, sending or reading failed, or no answer came in time.
    #[error("calling {url}: {reason}")]
    Transport {
        /// URL.
        url: String,
        /// Reason.
        reason: String,
    },
}

use crate::auth::jwks::Connector;

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with the system's CA certificates (https fails without them; logged).
    pub fn new() -> Self {
        Self {
            inner: crate::auth::jwks::hyper_client("Keycloak and Cloudflare"),
        }
    }

    /// Sends `method url` with `headers` and `body`; with `retry`, throttling, 502-504 and
    /// transport errors are retried (see the module docs). The last answer is returned
    /// whatever its status.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        retry: bool,
    ) -> Result<Response, Error> {
        let uri = checked_uri(url)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = Request::builder().method(method.clone()).uri(uri.clone());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req
                .body(Full::new(body.clone().unwrap_or_default()))
                .map_err(|source| Error::Request {
                    url: url.to_owned(),
                    source,
                })?;
            let result = tokio::time::timeout(TIMEOUT, self.once(req, url))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Transport {
                        url: url.to_owned(),
                        reason: format!("no answer within {TIMEOUT:?}"),
                    })
                });
            let again = retry
                && attempt < ATTEMPTS
                && match &result {
                    Ok(r) => matches!(r.status.as_u16(), 429 | 502 | 503 | 504),
                    Err(Error::Transport { .. }) => true,
                    Err(_) => false,
                };
            if !again {
                return result;
            }
            let asked = result.as_ref().ok().and_then(|r| {
                r.headers
                    .get("retry-after")?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
            let pause = match asked {
                Some(s) => Duration::from_secs(s.min(5)),
                None => {
                    let base = 50u64 << (attempt - 1).min(6);
                    Duration::from_millis(rand::rng().random_range(base / 2..=base).min(2000))
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    async fn once(&self, req: Request<Full<Bytes>>, url: &str) -> Result<Response, Error> {
        let transport = |reason: String| Error::Transport {
            url: url.to_owned(),
            reason,
        };
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| transport(chain(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

impl Response {
    /// The body as text, cut to 300 characters (for error messages).
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            s.push('…');
        }
        s
    }

    /// Whether a later attempt may succeed: throttling and server errors.
    pub fn retryable(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()
    }
}

/// An error with its causes, `outer: cause: root`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        next = cause.source();
    }
    text
}
