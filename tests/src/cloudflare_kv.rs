//! A recording test server for Cloudflare's Workers KV REST API: the endpoints cplane's
//! Workers KV sink calls, served by axum on 127.0.0.1, in memory, every request recorded.
//!
//! Emulated faithfully, under `/client/v4/accounts/{account}/storage/kv/namespaces/{ns}`
//! (answers in Cloudflare's envelope `{"success", "errors", "messages", "result"}`):
//! - Every call needs `Authorization: Bearer <token>` with the token given at start; another
//!   is `403` with error code `10000` ("Authentication error"). An account or namespace other
//!   than the one served is `404` (code `10013`).
//! - `PUT /values/{key}`: the body is the value (stored as bytes) → `200`.
//! - `GET /values/{key}` → the raw value, or `404` with code `10009` ("key not found").
//! - `DELETE /values/{key}` → `200`, also for a key not there.
//! - `POST /bulk/get` `{"keys": [...], "type": "text"|"json"}` with at most 100 keys →
//!   `{"result": {"values": {key: value-or-null}}}` (`json` parses each value); more keys
//!   or a value that is not JSON under `json` is `400`.
//! - `GET /keys?prefix=&limit=&cursor=` → `{"result": [{"name"}], "result_info": {"cursor",
//!   "count"}}`, in key order (the cursor is the last key returned).
//! - [`KvServer::faults`]: a share of requests answered `429` (code `971`, `Retry-After: 0`)
//!   or `503` before they take effect.
//!
//! Not emulated: metadata, expiration, multipart writes, bulk writes and deletes, namespace
//! management, eventual consistency (a write is visible at once, everywhere), key and value
//! size limits, the per-account rate limit's real thresholds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::faults::{Fault, Faults};

#[derive(Debug)]
struct World {
    account: String,
    namespace: String,
    token: String,
    values: BTreeMap<String, Vec<u8>>,
    log: Vec<(String, String, String)>,
}

/// The server. Cheap to clone.
#[derive(Clone)]
pub struct KvServer {
    /// `http://127.0.0.1:PORT/client/v4`: the API base URL (`apiUrl`).
    pub api_url: String,
    world: Arc<Mutex<World>>,
    faults: Arc<Faults>,
}

type Shared = (Arc<Mutex<World>>, Arc<Faults>);

impl KvServer {
    /// Serves one namespace of one account, for bearer `token`.
    pub fn start(account: &str, namespace: &str, token: &str) -> Self {
        let world = Arc::new(Mutex::new(World {
            account: account.to_owned(),
            namespace: namespace.to_owned(),
            token: token.to_owned(),
            values: BTreeMap::new(),
            log: Vec::new(),
        }));
        let faults = Arc::new(Faults::seeded(2));
        let shared: Shared = (world.clone(), faults.clone());
        let base = "/client/v4/accounts/{account}/storage/kv/namespaces/{ns}";
        let app = Router::new()
            .route(&format!("{base}/values/{{key}}"), any(value))
            .route(&format!("{base}/bulk/get"), post(bulk_get))
            .route(&format!("{base}/keys"), axum::routing::get(keys))
            .with_state(shared);
        let url = crate::faults::serve_in_background(app);
        Self {
            api_url: format!("{url}/client/v4"),
            world,
            faults,
        }
    }

    /// The fault plan.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("kv lock")
    }

    /// Every stored value, as text.
    pub fn values(&self) -> BTreeMap<String, String> {
        self.world()
            .values
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Drift: removes a key outside the API. Returns whether it was there.
    pub fn remove(&self, key: &str) -> bool {
        self.world().values.remove(key).is_some()
    }

    /// Requests handled (after faults), as (method, path after the namespace, body).
    pub fn log(&self) -> Vec<(String, String, String)> {
        self.world().log.clone()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.world().log.clear();
    }

    /// Handled requests of `method` on paths starting with `prefix` (`values/`, `bulk/get`).
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.log()
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .count()
    }
}

fn envelope(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null})),
    )
        .into_response()
}

fn ok(result: Value) -> Response {
    Json(json!({"success": true, "errors": [], "messages": [], "result": result})).into_response()
}

/// Faults, authentication, the namespace; records the request. `Err` is the answer.
fn admit(
    (world, faults): &Shared,
    account: &str,
    ns: &str,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<(), Box<Response>> {
    match faults.next() {
        Some(Fault::Throttle) => {
            return Err(Box::new((
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                Json(json!({"success": false, "errors": [{"code": 971, "message": "Please wait and consider throttling your request speed"}], "messages": [], "result": null})),
            )
                .into_response()))
        }
        Some(Fault::Unavailable) => {
            return Err(Box::new(envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                10043,
                "service unavailable",
            )))
        }
        None => {}
    }
    let mut w = world.lock().expect("kv lock");
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(w.token.as_str()) {
        return Err(Box::new(envelope(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error",
        )));
    }
    if account != w.account || ns != w.namespace {
        return Err(Box::new(envelope(
            StatusCode::NOT_FOUND,
            10013,
            "namespace not found",
        )));
    }
    w.log.push((
        method.to_string(),
        path.to_owned(),
        String::from_utf8_lossy(body).into_owned(),
    ));
    Ok(())
}

async fn value(
    State(shared): State<Shared>,
    Path((account, ns, key)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(
        &shared,
        &account,
        &ns,
        &headers,
        &method,
        &format!("values/{key}"),
        &body,
    ) {
        return *r;
    }
    let mut w = shared.0.lock().expect("kv lock");
    match method {
        Method::PUT => {
            w.values.insert(key, body.to_vec());
            ok(Value::Null)
        }
        Method::GET => match w.values.get(&key) {
            Some(v) => (StatusCode::OK, v.clone()).into_response(),
            None => envelope(StatusCode::NOT_FOUND, 10009, "get: 'key not found'"),
        },
        Method::DELETE => {
            w.values.remove(&key);
            ok(Value::Null)
        }
        _ => envelope(StatusCode::METHOD_NOT_ALLOWED, 10405, "method not allowed"),
    }
}

async fn bulk_get(
    State(shared): State<Shared>,
    Path((account, ns)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(
        &shared,
        &account,
        &ns,
        &headers,
        &Method::POST,
        "bulk/get",
        &body,
    ) {
        return *r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return envelope(
            StatusCode::BAD_REQUEST,
            10026,
            "could not parse request body",
        );
    };
    let Some(keys) = req["keys"].as_array() else {
        return envelope(StatusCode::BAD_REQUEST, 10026, "keys is required");
    };
    if keys.len() > 100 {
        return envelope(StatusCode::BAD_REQUEST, 10026, "at most 100 keys");
    }
    let as_json = req["type"].as_str() == Some("json");
    let w = shared.0.lock().expect("kv lock");
    let mut values = serde_json::Map::new();
    for key in keys.iter().filter_map(Value::as_str) {
        let v = match w.values.get(key) {
            None => Value::Null,
            Some(bytes) if as_json => match serde_json::from_slice(bytes) {
                Ok(v) => v,
                Err(_) => return envelope(StatusCode::BAD_REQUEST, 10026, "value is not JSON"),
            },
            Some(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        };
        values.insert(key.to_owned(), v);
    }
    ok(json!({ "values": values }))
}

async fn keys(
    State(shared): State<Shared>,
    Path((account, ns)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &account, &ns, &headers, &Method::GET, "keys", b"") {
        return *r;
    }
    let w = shared.0.lock().expect("kv lock");
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
    let after = q.get("cursor").cloned().unwrap_or_default();
    let names: Vec<&String> = w
        .values
        .keys()
        .filter(|k| k.starts_with(&prefix) && (after.is_empty() || **k > after))
        .take(limit)
        .collect();
    let cursor = if names.len() == limit {
        names.last().map(|k| (*k).clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Json(json!({
        "success": true, "errors": [], "messages": [],
        "result": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "result_info": {"count": names.len(), "cursor": cursor},
    }))
    .into_response()
}
