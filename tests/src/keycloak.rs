//! A test Keycloak: the admin REST endpoints cplane's Keycloak adapter calls, served by axum
//! on 127.0.0.1, in memory. Keycloak itself cannot run on these machines.
//!
//! Emulated faithfully (as Keycloak 24+ answers):
//! - `POST /realms/{realm}/protocol/openid-connect/token` with a form body: `grant_type=
//!   client_credentials` and the realm's admin client's `client_id` / `client_secret` →
//!   `200 {"access_token", "expires_in", "token_type": "Bearer"}`; a wrong secret or an
//!   unknown client is `401 {"error": "unauthorized_client"}`, another grant type `400
//!   {"error": "unsupported_grant_type"}`, an unknown realm `404`.
//! - Admin endpoints under `/admin/realms/{realm}/clients` need `Authorization: Bearer` with a
//!   token of that realm that has not expired ([`KeycloakServer::expire_tokens`]), else `401
//!   {"error": "HTTP 401 Unauthorized"}`.
//! - `GET …/clients?clientId=X` is an exact match, with `&search=true` a case-insensitive
//!   substring match; `first` / `max` page the result (default `max` 100), in creation order.
//! - `POST …/clients` → `201` with `Location: …/clients/{id}` (a new UUID), or `409
//!   {"errorMessage": "Client w-acme already exists"}` for a client id in use.
//! - `GET …/clients/{id}` → the representation, `404` when unknown.
//! - `PUT …/clients/{id}` sets the top-level fields the body has and leaves the others, as
//!   Keycloak's representation update does (`204`); `404` when unknown, `409` when the new
//!   client id is another client's.
//! - `DELETE …/clients/{id}` → `204`, `404 {"error": "Could not find client"}` when unknown.
//! - [`KeycloakServer::faults`]: a share of requests answered `429` / `503` before they take
//!   effect.
//!
//! Not emulated: users, roles and fine-grained admin permissions (any token of the realm's
//! admin client may manage its clients), HTTP Basic client authentication at the token
//! endpoint, refresh tokens, client secrets, scopes and protocol mappers, validation of the
//! representation's fields (they are stored as given), `briefRepresentation` and `q`
//! searches, the `master` realm's cross-realm administration.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::faults::{Fault, Faults};

#[derive(Debug, Default)]
struct Realm {
    admin_client_id: String,
    admin_secret: String,
    /// Clients in creation order: (id, representation).
    clients: Vec<(String, Value)>,
}

#[derive(Debug, Default)]
struct World {
    realms: BTreeMap<String, Realm>,
    tokens: BTreeMap<String, (String, Instant)>,
    log: Vec<String>,
}

/// The server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct KeycloakServer {
    /// `http://127.0.0.1:PORT`: the base URL (`spec.keycloak.url`).
    pub url: String,
    world: Arc<Mutex<World>>,
    faults: Arc<Faults>,
}

type Shared = (Arc<Mutex<World>>, Arc<Faults>, Arc<AtomicU64>);

impl KeycloakServer {
    /// Starts a server without realms.
    pub fn start() -> Self {
        let world: Arc<Mutex<World>> = Arc::default();
        let faults: Arc<Faults> = Arc::default();
        let next = Arc::new(AtomicU64::new(1));
        let shared: Shared = (world.clone(), faults.clone(), next);
        let app = Router::new()
            .route("/realms/{realm}/protocol/openid-connect/token", post(token))
            .route("/admin/realms/{realm}/clients", get(list).post(create))
            .route(
                "/admin/realms/{realm}/clients/{id}",
                get(read).put(update).delete(delete),
            )
            .layer(axum::middleware::from_fn_with_state(shared.clone(), gate))
            .with_state(shared);
        Self {
            url: crate::faults::serve_in_background(app),
            world,
            faults,
        }
    }

    /// Adds a realm whose admin client is `client_id` with `secret`.
    pub fn add_realm(&self, realm: &str, client_id: &str, secret: &str) {
        self.world().realms.insert(
            realm.to_owned(),
            Realm {
                admin_client_id: client_id.to_owned(),
                admin_secret: secret.to_owned(),
                clients: Vec::new(),
            },
        );
    }

    /// The fault plan (e.g. `faults().set_percent(30)`).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("keycloak lock")
    }

    /// Every token issued so far expires now (the next admin call gets `401`).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for (_, until) in self.world().tokens.values_mut() {
            *until = now;
        }
    }

    /// The clients of a realm: (id, representation), in creation order.
    pub fn clients(&self, realm: &str) -> Vec<(String, Value)> {
        self.world()
            .realms
            .get(realm)
            .map(|r| r.clients.clone())
            .unwrap_or_default()
    }

    /// The representations of the clients with this client id (more than one would be a bug).
    pub fn clients_named(&self, realm: &str, client_id: &str) -> Vec<Value> {
        self.clients(realm)
            .into_iter()
            .filter(|(_, c)| c["clientId"] == client_id)
            .map(|(_, c)| c)
            .collect()
    }

    /// Drift: deletes a client by client id outside the API. Returns whether it was there.
    pub fn remove_client(&self, realm: &str, client_id: &str) -> bool {
        let mut w = self.world();
        let Some(r) = w.realms.get_mut(realm) else {
            return false;
        };
        let before = r.clients.len();
        r.clients.retain(|(_, c)| c["clientId"] != client_id);
        r.clients.len() != before
    }

    /// Drift: sets a field of a client outside the API (as an admin in the console would).
    pub fn edit_client(&self, realm: &str, client_id: &str, field: &str, value: Value) -> bool {
        let mut w = self.world();
        let Some(r) = w.realms.get_mut(realm) else {
            return false;
        };
        match r
            .clients
            .iter_mut()
            .find(|(_, c)| c["clientId"] == client_id)
        {
            Some((_, c)) => {
                c[field] = value;
                true
            }
            None => false,
        }
    }

    /// Requests handled (not failed on purpose), as `METHOD /path`, in order.
    pub fn log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.world().log.clear();
    }

    /// Handled requests of `method` whose path ends with `suffix`.
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| {
                l.split_once(' ').is_some_and(|(m, p)| {
                    m == method && p.split('?').next().unwrap_or(p).ends_with(suffix)
                })
            })
            .count()
    }
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn gate(
    State((world, faults, _)): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match faults.next() {
        Some(Fault::Throttle) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                Json(json!({"error": "too many requests"})),
            )
                .into_response()
        }
        Some(Fault::Unavailable) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unavailable"}),
            )
        }
        None => {}
    }
    let line = format!(
        "{} {}",
        request.method(),
        request.uri().path_and_query().map_or("", |p| p.as_str())
    );
    world.lock().expect("keycloak lock").log.push(line);
    next.run(request).await
}

async fn token(
    State((world, _, next)): State<Shared>,
    Path(realm): Path<String>,
    body: String,
) -> Response {
    let form: BTreeMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
    let mut w = world.lock().expect("keycloak lock");
    let Some(r) = w.realms.get(&realm) else {
        return error(
            StatusCode::NOT_FOUND,
            json!({"error": "Realm does not exist"}),
        );
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant_type"}),
        );
    }
    if form.get("client_id") != Some(&r.admin_client_id)
        || form.get("client_secret") != Some(&r.admin_secret)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"}),
        );
    }
    let token = format!("kc-{realm}-{}", next.fetch_add(1, Ordering::SeqCst));
    w.tokens.insert(
        token.clone(),
        (realm, Instant::now() + Duration::from_secs(300)),
    );
    Json(json!({"access_token": token, "expires_in": 300, "token_type": "Bearer", "scope": "profile email"}))
        .into_response()
}

/// The realm the bearer token is valid for, if it is.
fn authorized(w: &World, headers: &HeaderMap, realm: &str) -> bool {
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    w.tokens
        .get(token)
        .is_some_and(|(r, until)| r == realm && *until > Instant::now())
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        json!({"error": "HTTP 401 Unauthorized"}),
    )
}

async fn list(
    State((world, _, _)): State<Shared>,
    Path(realm): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let w = world.lock().expect("keycloak lock");
    if !authorized(&w, &headers, &realm) {
        return unauthorized();
    }
    let Some(r) = w.realms.get(&realm) else {
        return error(StatusCode::NOT_FOUND, json!({"error": "Realm not found."}));
    };
    let search = q.get("search").is_some_and(|s| s == "true");
    let wanted = q.get("clientId");
    let first: usize = q.get("first").and_then(|v| v.parse().ok()).unwrap_or(0);
    let max: usize = q.get("max").and_then(|v| v.parse().ok()).unwrap_or(100);
    let found: Vec<Value> = r
        .clients
        .iter()
        .map(|(_, c)| c)
        .filter(|c| match wanted {
            None => true,
            Some(want) => {
                let id = c["clientId"].as_str().unwrap_or("");
                if search {
                    id.to_lowercase().contains(&want.to_lowercase())
                } else {
                    id == want
                }
            }
        })
        .skip(first)
        .take(max)
        .cloned()
        .collect();
    Json(Value::Array(found)).into_response()
}

async fn create(
    State((world, _, next)): State<Shared>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Response {
    let mut w = world.lock().expect("keycloak lock");
    if !authorized(&w, &headers, &realm) {
        return unauthorized();
    }
    let Some(r) = w.realms.get_mut(&realm) else {
        return error(StatusCode::NOT_FOUND, json!({"error": "Realm not found."}));
    };
    let Some(client_id) = body["clientId"].as_str().map(str::to_owned) else {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"errorMessage": "clientId is required"}),
        );
    };
    if r.clients
        .iter()
        .any(|(_, c)| c["clientId"] == client_id.as_str())
    {
        return error(
            StatusCode::CONFLICT,
            json!({"errorMessage": format!("Client {client_id} already exists")}),
        );
    }
    let n = next.fetch_add(1, Ordering::SeqCst);
    let id = format!("{n:08x}-0000-4000-8000-{:012x}", n * 7919);
    body["id"] = json!(id);
    if body.get("enabled").is_none() {
        body["enabled"] = json!(true);
    }
    r.clients.push((id.clone(), body));
    (
        StatusCode::CREATED,
        [(
            "location",
            format!("http://keycloak.invalid/admin/realms/{realm}/clients/{id}"),
        )],
    )
        .into_response()
}

async fn read(
    State((world, _, _)): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let w = world.lock().expect("keycloak lock");
    if !authorized(&w, &headers, &realm) {
        return unauthorized();
    }
    match w
        .realms
        .get(&realm)
        .and_then(|r| r.clients.iter().find(|(i, _)| *i == id))
    {
        Some((_, c)) => Json(c.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            json!({"error": "Could not find client"}),
        ),
    }
}

async fn update(
    State((world, _, _)): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut w = world.lock().expect("keycloak lock");
    if !authorized(&w, &headers, &realm) {
        return unauthorized();
    }
    let Some(r) = w.realms.get_mut(&realm) else {
        return error(StatusCode::NOT_FOUND, json!({"error": "Realm not found."}));
    };
    if let Some(new_id) = body["clientId"].as_str() {
        if r.clients
            .iter()
            .any(|(i, c)| *i != id && c["clientId"] == new_id)
        {
            return error(
                StatusCode::CONFLICT,
                json!({"errorMessage": format!("Client {new_id} already exists")}),
            );
        }
    }
    let Some((_, c)) = r.clients.iter_mut().find(|(i, _)| *i == id) else {
        return error(
            StatusCode::NOT_FOUND,
            json!({"error": "Could not find client"}),
        );
    };
    if let (Some(target), Some(fields)) = (c.as_object_mut(), body.as_object()) {
        for (k, v) in fields {
            if k != "id" && !v.is_null() {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn delete(
    State((world, _, _)): State<Shared>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut w = world.lock().expect("keycloak lock");
    if !authorized(&w, &headers, &realm) {
        return unauthorized();
    }
    let Some(r) = w.realms.get_mut(&realm) else {
        return error(StatusCode::NOT_FOUND, json!({"error": "Realm not found."}));
    };
    let before = r.clients.len();
    r.clients.retain(|(i, _)| *i != id);
    if r.clients.len() == before {
        error(
            StatusCode::NOT_FOUND,
            json!({"error": "Could not find client"}),
        )
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}
