//! The primary region's internal API, as the other regions call it: the `tenants` rows
//! ([`RemoteTenants`], the [`TenantStore`] of every region but the primary).
//!
//! Calls (bearer `INTER_REGION_SERVICE_TOKEN`; the server side is `serve::internal`):
//! - `GET {primary}/internal/tenants?region=R1,R2&after=W&limit=N` (or `?workspace=w-a,w-b`):
//!   `{"tenants": [row…], "next": "w-…" | null}`, pages of at most [`PAGE`] rows in
//!   `workspace_id` order; listing follows `next` until it is `null`.
//! - `PUT {primary}/internal/tenants/w-{id}` with the row: an idempotent upsert.
//!
//! # Guarantees
//! - Every call is bounded (5 s, answers of at most 1 MiB; a page of [`PAGE`] rows is far below).
//! - A listing by workspace asks for at most [`IDS_PER_CALL`] names per call, so URLs stay short.
//! - The token is sent only in the `Authorization` header; it is in no message, log or `Debug`.

use axum::http::{Method, StatusCode};

use crate::auth::jwks::{FetchError, HttpClient};
use crate::plan::TenantRow;
use crate::tenants::{Error, Filter, TenantFuture, TenantStore};

/// Rows per page of `GET /internal/tenants` (the most the primary serves at once).
pub const PAGE: u32 = 1000;
/// Workspace names per `GET /internal/tenants?workspace=` call.
pub const IDS_PER_CALL: usize = 100;

/// One page of `GET /internal/tenants`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct TenantsPage {
    /// The rows, in `workspace_id` order.
    pub tenants: Vec<TenantRow>,
    /// The `after` of the next page; `None` on the last.
    pub next: Option<String>,
}

/// The `tenants` rows of the primary region, over its internal API.
pub struct RemoteTenants {
    base: String,
    token: String,
    client: HttpClient,
}

impl std::fmt::Debug for RemoteTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTenants")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RemoteTenants {
    /// The store of the primary at `base` (its API URL: https, or http to loopback), called
    /// with `token`.
    pub fn new(base: &str, token: &str, client: HttpClient) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_owned();
        crate::auth::jwks::checked_uri(&base).map_err(Error::Config)?;
        Ok(Self {
            base,
            token: token.to_owned(),
            client,
        })
    }

    /// A call's error, classified.
    fn failed(&self, e: FetchError) -> Error {
        match e {
            e @ (FetchError::Call { .. }
            | FetchError::Timeout(_)
            | FetchError::Body { .. }
            | FetchError::Recent(_)) => Error::Unreachable {
                base: self.base.clone(),
                source: e,
            },
            e @ (FetchError::BadUrl { .. }
            | FetchError::Insecure(_)
            | FetchError::Request { .. }) => Error::Config(e),
            FetchError::Status { status, .. } => Error::Refused {
                base: self.base.clone(),
                status: status.as_u16(),
                message: status.canonical_reason().unwrap_or_default().to_owned(),
            },
            FetchError::Json { source, .. } => Error::Invalid {
                base: self.base.clone(),
                reason: source.to_string(),
            },
        }
    }

    /// An answer other than `expected`: the primary's `{"error"}` message when it sent one.
    fn refused(&self, status: StatusCode, body: &[u8]) -> Error {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or_default().to_owned());
        Error::Refused {
            base: self.base.clone(),
            status: status.as_u16(),
            message,
        }
    }

    /// Every page of one query (`region=` or `workspace=`).
    async fn pages(&self, key: &str, values: &[String]) -> Result<Vec<TenantRow>, Error> {
        let mut rows = Vec::new();
        let mut after = String::new();
        loop {
            let mut query = vec![("limit", PAGE.to_string())];
            if !values.is_empty() {
                query.push((key, values.join(",")));
            }
            if !after.is_empty() {
                query.push(("after", after.clone()));
            }
            let query = serde_urlencoded::to_string(&query).unwrap_or_default();
            let url = format!("{}/internal/tenants?{query}", self.base);
            let (status, body) = self
                .client
                .get(&url, Some(&self.token))
                .await
                .map_err(|e| self.failed(e))?;
            if status != StatusCode::OK {
                return Err(self.refused(status, &body));
            }
            let page: TenantsPage = serde_json::from_slice(&body).map_err(|e| Error::Invalid {
                base: self.base.clone(),
                reason: format!("not a page of tenants rows: {e}"),
            })?;
            rows.extend(page.tenants);
            match page.next {
                Some(next) if next > after => after = next,
                Some(next) => {
                    return Err(Error::Invalid {
                        base: self.base.clone(),
                        reason: format!("page cursor `{next}` does not advance"),
                    })
                }
                None => return Ok(rows),
            }
        }
    }
}

impl TenantStore for RemoteTenants {
    fn list<'a>(&'a self, filter: &'a Filter) -> TenantFuture<'a, Vec<TenantRow>> {
        Box::pin(async move {
            match filter {
                Filter::Regions(regions) => self.pages("region", regions).await,
                Filter::Workspaces(names) => {
                    let mut rows = Vec::new();
                    for chunk in names.chunks(IDS_PER_CALL) {
                        rows.extend(self.pages("workspace", chunk).await?);
                    }
                    Ok(rows)
                }
            }
        })
    }

    fn put<'a>(&'a self, row: &'a TenantRow) -> TenantFuture<'a, ()> {
        Box::pin(async move {
            let url = format!("{}/internal/tenants/{}", self.base, row.workspace_id);
            let body = serde_json::to_vec(row).expect("rows serialize");
            let (status, answer) = self
                .client
                .send(Method::PUT, &url, Some(&self.token), Some(body))
                .await
                .map_err(|e| self.failed(e))?;
            if status == StatusCode::OK {
                Ok(())
            } else {
                Err(self.refused(status, &answer))
            }
        })
    }

    fn location(&self) -> String {
        format!("the primary region ({})", self.base)
    }
}
