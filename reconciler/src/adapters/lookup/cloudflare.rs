//! Cloudflare Workers KV through Cloudflare's REST API, with an API token (bearer) read from
//! the reference `cplane.yaml` gives.
//!
//! Calls made (and all the recording test server in `tests/src/cloudflare_kv.rs` must
//! answer), under `{apiUrl}/accounts/{accountId}/storage/kv/namespaces/{namespaceId}`:
//! - `PUT /values/{key}`: the value is the body (`{"region","bff_url"}` as JSON text).
//! - `DELETE /values/{key}`: a key not there succeeds.
//! - `POST /bulk/get` `{"keys": [...], "type": "json"}` (at most 100 keys) →
//!   `{"result": {"values": {key: value-or-null}}}`: the drift check's batched read.
//!
//! Answers are Cloudflare's envelope `{"success", "errors", "messages", "result"}`; `429`
//! and `5xx` are retried by the HTTP client (honouring `Retry-After`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::Method;
use cplane_schema::model::{CloudflareKvSpec, SecretRef};
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::adapters::http::{Client, Response};
use crate::global::{read_secret, Error, GlobalFuture, LookupRow, LookupSink};

/// Keys per bulk read (Cloudflare's limit).
const BATCH: usize = 100;

/// The adapter.
#[derive(Clone)]
pub struct CloudflareKv {
    http: Client,
    base: String,
    token: SecretRef,
    calls: Arc<Mutex<HashMap<(String, String), u64>>>,
}

impl CloudflareKv {
    /// From `spec.tenantLookup.cloudflareKv` (the token is read at each call).
    pub fn new(spec: &CloudflareKvSpec) -> Self {
        Self {
            http: Client::new(),
            base: format!(
                "{}/accounts/{}/storage/kv/namespaces/{}",
                spec.api_url.trim_end_matches('/'),
                spec.account_id,
                spec.namespace_id
            ),
            token: spec.api_token.clone(),
            calls: Arc::default(),
        }
    }

    /// Calls of `op` (e.g. `kv:PutValue`) that ended with `outcome` (`ok` or an error label).
    pub fn calls(&self, op: &str, outcome: &str) -> u64 {
        self.calls
            .lock()
            .expect("calls lock")
            .get(&(op.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &str,
    ) -> Result<Response, Error> {
        let token = read_secret("spec.tenantLookup.cloudflareKv.apiToken", &self.token)?;
        let auth = format!("Bearer {token}");
        let url = format!("{}/{path}", self.base);
        let result = self
            .http
            .send(
                method,
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", content_type),
                    ("accept", "application/json"),
                ],
                body,
                true,
            )
            .await
            .map_err(|e| {
                let retryable = matches!(e, crate::adapters::http::Error::Transport { .. });
                Error::Call {
                    op,
                    message: e.to_string(),
                    retryable,
                    source: Some(Box::new(e)),
                }
            })
            .and_then(|resp| {
                if resp.status.is_success() {
                    Ok(resp)
                } else {
                    Err(Error::call(
                        op,
                        format!("{url} answered {}: {}", resp.status, resp.snippet()),
                        resp.retryable(),
                    ))
                }
            });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        *self
            .calls
            .lock()
            .expect("calls lock")
            .entry((op.to_owned(), outcome.to_owned()))
            .or_insert(0) += 1;
        result
    }

    async fn bulk_get(&self, keys: &[String]) -> Result<BTreeMap<String, LookupRow>, Error> {
        const OP: &str = "kv:BulkGet";
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(BATCH) {
            let body = json!({"keys": chunk, "type": "json"}).to_string();
            let resp = self
                .call(
                    OP,
                    Method::POST,
                    "bulk/get",
                    Some(Bytes::from(body)),
                    "application/json",
                )
                .await?;
            let v: Value = serde_json::from_slice(&resp.body).map_err(|e| Error::Unexpected {
                op: OP,
                message: format!("not JSON: {e}"),
            })?;
            let values = v["result"]["values"]
                .as_object()
                .ok_or_else(|| Error::Unexpected {
                    op: OP,
                    message: "no result.values".into(),
                })?;
            for (key, value) in values {
                if value.is_null() {
                    continue;
                }
                // An entry that is not ours in shape is kept as found-but-different, so the
                // planner repairs it.
                let row = serde_json::from_value::<LookupRow>(value.clone()).unwrap_or(LookupRow {
                    region: String::new(),
                    bff_url: value.to_string(),
                });
                out.insert(key.clone(), row);
            }
        }
        Ok(out)
    }
}

impl LookupSink for CloudflareKv {
    fn name(&self) -> &'static str {
        "cloudflare-kv"
    }

    fn put<'a>(&'a self, key: &'a str, row: &'a LookupRow) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_string(row).expect("a lookup row serializes");
            self.call(
                "kv:PutValue",
                Method::PUT,
                &format!("values/{}", encode(key)),
                Some(Bytes::from(body)),
                "text/plain",
            )
            .await
            .map(drop)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            match self
                .call(
                    "kv:DeleteValue",
                    Method::DELETE,
                    &format!("values/{}", encode(key)),
                    None,
                    "application/json",
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(Error::Call { message, .. }) if message.contains(" 404 ") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> GlobalFuture<'a, BTreeMap<String, LookupRow>> {
        Box::pin(self.bulk_get(keys))
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
