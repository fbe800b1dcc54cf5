//! Identity from the primary region (reference doc 001): a region with `PRIMARY_CPLANE_API_URL`
//! set asks `GET {primary}/internal/principals?email=` (bearer `INTER_REGION_SERVICE_TOKEN`).
//!
//! # Guarantees
//! - Answers (found or not found) are cached for `ttl` (60 s by default) in a map of at most
//!   [`CAPACITY`] entries: expired entries are dropped first, and the map is emptied when it is
//!   still full, so memory stays bounded whatever emails arrive.
//! - A primary that cannot be reached, or answers anything but 200/404, is an error: the caller
//!   answers 503. Identity is never guessed or downgraded when the primary is down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::jwks::{FetchError, HttpClient};
use super::principals::{normalize_email, Identity};

/// Most emails cached at once.
pub const CAPACITY: usize = 10_000;

/// The primary region's principal directory, cached.
pub struct Primary {
    base: String,
    token: String,
    client: HttpClient,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<Identity>)>>,
}

impl Primary {
    /// A directory at `base` (the primary's API URL) using `token`.
    pub fn new(base: &str, token: &str, client: HttpClient, ttl: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The primary's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The identity the primary holds for `email` (`None`: the primary does not know them).
    pub async fn lookup(&self, email: &str) -> Result<Option<Identity>, FetchError> {
        let email = normalize_email(email);
        if let Some((at, found)) = self.cache.lock().expect("principal cache").get(&email) {
            if at.elapsed() < self.ttl {
                return Ok(found.clone());
            }
        }
        let found = self.fetch(&email).await?;
        let mut cache = self.cache.lock().expect("principal cache");
        if cache.len() >= CAPACITY {
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if cache.len() >= CAPACITY {
                cache.clear();
            }
        }
        cache.insert(email, (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Entries cached now.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("principal cache").len()
    }

    async fn fetch(&self, email: &str) -> Result<Option<Identity>, FetchError> {
        let query = serde_urlencoded::to_string([("email", email)]).unwrap_or_default();
        let url = format!("{}/internal/principals?{query}", self.base);
        let (status, body) = self.client.get(&url, Some(&self.token)).await?;
        match status {
            StatusCode::OK => {
                let mut identity: Identity =
                    serde_json::from_slice(&body).map_err(|source| FetchError::Json {
                        url: url.clone(),
                        what: "a principal",
                        source,
                    })?;
                identity.email = email.to_owned();
                Ok(Some(identity))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(FetchError::Status { url, status }),
        }
    }
}
