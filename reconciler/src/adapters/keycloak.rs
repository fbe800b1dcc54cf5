//! The Keycloak adapter of the [`Identity`] port: its admin REST API, signed in with the
//! client-credentials grant of the admin client `cplane.yaml` names.
//!
//! Calls made (and all the test server in `tests/src/keycloak.rs` must answer):
//! - `POST {url}/realms/{realm}/protocol/openid-connect/token` (form: `grant_type=
//!   client_credentials`, `client_id`, `client_secret`) → `access_token`, `expires_in`. Tokens
//!   are cached per realm until 30 s before they expire; an admin call answered `401` fetches
//!   a new one and is tried once more.
//! - `GET {url}/admin/realms/{realm}/clients?clientId=w-acme` (exact match) → `[client]`.
//! - `GET …/clients?clientId=w-&search=true&first=N&max=500`: the workspace clients, page by
//!   page (Keycloak's search is a substring match; the prefix is checked here).
//! - `POST …/clients` → `201` with `Location: …/clients/{id}`; `409` when the client id exists.
//! - `PUT …/clients/{id}` with only the owned fields (`clientId`, `redirectUris`, `enabled`):
//!   Keycloak leaves the fields a representation leaves out as they are.
//! - `DELETE …/clients/{id}` → `204`; `404` counts as gone.
//!
//! A workspace client is created public with PKCE (`S256`) and the standard flow only: the
//! BFF signs users in with it and holds no client secret, so no secret has to be handed out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use cplane_schema::model::KeycloakSpec;
use hyper::body::Bytes;
use serde_json::{json, Value};

use super::http::{Client, Response};
use crate::global::{
    read_secret, Error, FoundClient, GlobalFuture, Identity, IdentityClient, Realm,
};

/// Workspace clients read per page.
const PAGE: usize = 500;

/// The adapter. Cheap to clone.
#[derive(Clone)]
pub struct Keycloak {
    http: Client,
    admin_client_id: String,
    secret: cplane_schema::model::SecretRef,
    tokens: Arc<tokio::sync::Mutex<HashMap<Realm, (String, Instant)>>>,
    calls: Arc<Mutex<BTreeMap<(String, String), u64>>>,
}

impl Keycloak {
    /// From `cplane.yaml`'s `spec.keycloak` (the secret is read when a token is needed, so a
    /// rotated file is picked up).
    pub fn new(spec: &KeycloakSpec) -> Self {
        Self {
            http: Client::new(),
            admin_client_id: spec.admin_client_id.clone(),
            secret: spec.admin_client_secret.clone(),
            tokens: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Calls of `op` (e.g. `keycloak:CreateClient`) that ended with `outcome` (`ok` or an
    /// error label).
    pub fn calls(&self, op: &str, outcome: &str) -> u64 {
        self.calls
            .lock()
            .expect("calls lock")
            .get(&(op.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn count<T>(&self, op: &str, result: &Result<T, Error>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        *self
            .calls
            .lock()
            .expect("calls lock")
            .entry((op.to_owned(), outcome.to_owned()))
            .or_insert(0) += 1;
    }

    async fn token(&self, realm: &Realm, fresh: bool) -> Result<String, Error> {
        let mut tokens = self.tokens.lock().await;
        if !fresh {
            if let Some((token, until)) = tokens.get(realm) {
                if *until > Instant::now() {
                    return Ok(token.clone());
                }
            }
        }
        const OP: &str = "keycloak:Token";
        let secret = read_secret("spec.keycloak.adminClientSecret", &self.secret)?;
        let form = serde_urlencoded::to_string([
            ("grant_type", "client_credentials"),
            ("client_id", self.admin_client_id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .map_err(|e| Error::Config(format!("{OP}: {e}")))?;
        let url = format!(
            "{}/realms/{}/protocol/openid-connect/token",
            realm.url, realm.name
        );
        let result = async {
            let resp = self
                .http
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("accept", "application/json"),
                    ],
                    Some(Bytes::from(form)),
                    true,
                )
                .await
                .map_err(|e| transport(OP, e))?;
            if resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::BAD_REQUEST {
                return Err(Error::call(
                    OP,
                    format!(
                        "{} at {url}: the admin client `{}` or its secret is not accepted ({})",
                        resp.status,
                        self.admin_client_id,
                        resp.snippet()
                    ),
                    false,
                ));
            }
            let body = ok_json(OP, &url, &resp)?;
            let token = body["access_token"]
                .as_str()
                .ok_or_else(|| unexpected(OP, "no access_token"))?
                .to_owned();
            let expires_in = body["expires_in"].as_u64().unwrap_or(60);
            Ok((token, expires_in))
        }
        .await;
        self.count(OP, &result);
        let (token, expires_in) = result?;
        let until = Instant::now() + Duration::from_secs(expires_in.saturating_sub(30).max(1));
        tokens.insert(realm.clone(), (token.clone(), until));
        Ok(token)
    }

    /// An admin API call with the realm's token (a fresh token once on `401`).
    async fn admin(
        &self,
        op: &'static str,
        realm: &Realm,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response, Error> {
        let url = format!("{}/admin/realms/{}/{path}", realm.url, realm.name);
        let body = body.map(|b| Bytes::from(b.to_string()));
        let mut fresh = false;
        loop {
            let token = self.token(realm, fresh).await?;
            let auth = format!("Bearer {token}");
            let resp = self
                .http
                .send(
                    method.clone(),
                    &url,
                    &[
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                        ("accept", "application/json"),
                    ],
                    body.clone(),
                    true,
                )
                .await
                .map_err(|e| transport(op, e))?;
            if resp.status == StatusCode::UNAUTHORIZED && !fresh {
                fresh = true;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn find(&self, realm: &Realm, client_id: &str) -> Result<Option<FoundClient>, Error> {
        const OP: &str = "keycloak:GetClients";
        let path = format!("clients?clientId={}", encode(client_id));
        let resp = self.admin(OP, realm, Method::GET, &path, None).await?;
        let url = resp_url(realm, &path);
        let list = ok_json(OP, &url, &resp)?;
        let clients = parse_clients(OP, &list)?;
        Ok(clients
            .into_iter()
            .find(|c| c.client.client_id == client_id))
    }

    async fn list(&self, realm: &Realm) -> Result<Vec<FoundClient>, Error> {
        const OP: &str = "keycloak:GetClients";
        let mut out = Vec::new();
        let mut first = 0;
        loop {
            let path = format!("clients?clientId=w-&search=true&first={first}&max={PAGE}");
            let resp = self.admin(OP, realm, Method::GET, &path, None).await?;
            let list = ok_json(OP, &resp_url(realm, &path), &resp)?;
            let page = parse_clients(OP, &list)?;
            let n = page.len();
            out.extend(
                page.into_iter()
                    .filter(|c| c.client.client_id.starts_with("w-")),
            );
            if n < PAGE {
                return Ok(out);
            }
            first += PAGE;
        }
    }

    async fn create(&self, realm: &Realm, client: &IdentityClient) -> Result<String, Error> {
        const OP: &str = "keycloak:CreateClient";
        let body = json!({
            "clientId": client.client_id,
            "name": client.client_id,
            "description": "Managed by cplane: the workspace's sign-in client",
            "protocol": "openid-connect",
            "enabled": client.enabled,
            "publicClient": true,
            "standardFlowEnabled": true,
            "implicitFlowEnabled": false,
            "directAccessGrantsEnabled": false,
            "serviceAccountsEnabled": false,
            "redirectUris": client.redirect_uris,
            "webOrigins": ["+"],
            "attributes": {"pkce.code.challenge.method": "S256"},
        });
        let resp = self
            .admin(OP, realm, Method::POST, "clients", Some(&body))
            .await?;
        match resp.status {
            StatusCode::CREATED => {
                let location = resp
                    .headers
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| unexpected(OP, "201 without a Location"))?;
                let id = location
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                if id.is_empty() {
                    return Err(unexpected(
                        OP,
                        &format!("Location `{location}` names no id"),
                    ));
                }
                Ok(id.to_owned())
            }
            StatusCode::CONFLICT => Err(Error::Conflict {
                op: OP,
                client_id: client.client_id.clone(),
            }),
            _ => Err(status_error(OP, &resp_url(realm, "clients"), &resp)),
        }
    }

    async fn update(&self, realm: &Realm, id: &str, client: &IdentityClient) -> Result<(), Error> {
        const OP: &str = "keycloak:UpdateClient";
        let body = json!({
            "clientId": client.client_id,
            "redirectUris": client.redirect_uris,
            "enabled": client.enabled,
        });
        let path = format!("clients/{}", encode(id));
        let resp = self
            .admin(OP, realm, Method::PUT, &path, Some(&body))
            .await?;
        if resp.status.is_success() {
            Ok(())
        } else {
            Err(status_error(OP, &resp_url(realm, &path), &resp))
        }
    }

    async fn delete(&self, realm: &Realm, id: &str) -> Result<(), Error> {
        const OP: &str = "keycloak:DeleteClient";
        let path = format!("clients/{}", encode(id));
        let resp = self.admin(OP, realm, Method::DELETE, &path, None).await?;
        if resp.status.is_success() || resp.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_error(OP, &resp_url(realm, &path), &resp))
        }
    }
}

impl Identity for Keycloak {
    fn find_client<'a>(
        &'a self,
        realm: &'a Realm,
        client_id: &'a str,
    ) -> GlobalFuture<'a, Option<FoundClient>> {
        Box::pin(async move {
            let r = self.find(realm, client_id).await;
            self.count("keycloak:FindClient", &r);
            r
        })
    }

    fn workspace_clients<'a>(&'a self, realm: &'a Realm) -> GlobalFuture<'a, Vec<FoundClient>> {
        Box::pin(async move {
            let r = self.list(realm).await;
            self.count("keycloak:ListClients", &r);
            r
        })
    }

    fn create_client<'a>(
        &'a self,
        realm: &'a Realm,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, String> {
        Box::pin(async move {
            let r = self.create(realm, client).await;
            self.count("keycloak:CreateClient", &r);
            r
        })
    }

    fn update_client<'a>(
        &'a self,
        realm: &'a Realm,
        id: &'a str,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            let r = self.update(realm, id, client).await;
            self.count("keycloak:UpdateClient", &r);
            r
        })
    }

    fn delete_client<'a>(&'a self, realm: &'a Realm, id: &'a str) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            let r = self.delete(realm, id).await;
            self.count("keycloak:DeleteClient", &r);
            r
        })
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn resp_url(realm: &Realm, path: &str) -> String {
    format!("{}/admin/realms/{}/{path}", realm.url, realm.name)
}

fn transport(op: &'static str, e: super::http::Error) -> Error {
    let retryable = matches!(e, super::http::Error::Transport { .. });
    Error::Call {
        op,
        message: e.to_string(),
        retryable,
        source: Some(Box::new(e)),
    }
}

fn unexpected(op: &'static str, message: &str) -> Error {
    Error::Unexpected {
        op,
        message: message.to_owned(),
    }
}

pub(super) fn status_error(op: &'static str, url: &str, resp: &Response) -> Error {
    Error::call(
        op,
        format!("{url} answered {}: {}", resp.status, resp.snippet()),
        resp.retryable(),
    )
}

fn ok_json(op: &'static str, url: &str, resp: &Response) -> Result<Value, Error> {
    if !resp.status.is_success() {
        return Err(status_error(op, url, resp));
    }
    serde_json::from_slice(&resp.body).map_err(|e| unexpected(op, &format!("{url}: not JSON: {e}")))
}

fn parse_clients(op: &'static str, list: &Value) -> Result<Vec<FoundClient>, Error> {
    let items = list
        .as_array()
        .ok_or_else(|| unexpected(op, "clients: not a list"))?;
    items
        .iter()
        .map(|c| {
            let id = c["id"]
                .as_str()
                .ok_or_else(|| unexpected(op, "client without id"))?;
            let client_id = c["clientId"]
                .as_str()
                .ok_or_else(|| unexpected(op, "client without clientId"))?;
            let mut redirect_uris: Vec<String> = c["redirectUris"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            redirect_uris.sort();
            Ok(FoundClient {
                id: id.to_owned(),
                client: IdentityClient {
                    client_id: client_id.to_owned(),
                    redirect_uris,
                    enabled: c["enabled"].as_bool().unwrap_or(true),
                },
            })
        })
        .collect()
}
