//! The ports of steps 8 and 9 of reference doc 001's flow: the global tenant → region map
//! ([`LookupSink`]: Cloudflare Workers KV or DynamoDB) and the regional identity provider
//! ([`Identity`]: Keycloak's admin REST API), with the plain data they exchange.
//!
//! The adapters live in `adapters/lookup` and `adapters/keycloak`; the tests implement both
//! ports in memory (`tests/src/fake_global.rs`) so apply's crash and property tests cover
//! steps 8 and 9 too. Apply holds them as `Arc<dyn …>`.
//!
//! Contract every implementation keeps (apply relies on it):
//! - [`LookupSink::put`] and [`LookupSink::delete`] are idempotent; deleting a key not there
//!   succeeds.
//! - [`Identity::create_client`] never makes a second client with the same client id: it
//!   answers [`Error::Conflict`] (Keycloak's `409`), which apply resolves by lookup.
//! - [`Identity::update_client`] sets only the fields of [`IdentityClient`] and leaves every
//!   other setting of the client as it is; [`Identity::delete_client`] of a client already gone
//!   succeeds.
//! - An error says whether a later attempt may succeed ([`Error::is_retryable`]); a lost
//!   answer is retryable, and the journal resolves it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

pub use crate::plan::{IdentityClient, LookupRow, Realm};

/// The underlying cause of a failed call, kept for error chains.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the lookup sink and the identity provider.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call failed; `retryable` says whether a later attempt may succeed.
    #[error("{op}: {message}")]
    Call {
        /// Operation, e.g. `keycloak:CreateClient`, `kv:PutValue`, `dynamodb:PutItem`.
        op: &'static str,
        /// What went wrong (the status and the service's message, or the transport error).
        message: String,
        /// Throttling, 5xx, transport.
        retryable: bool,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A client with this client id exists already (Keycloak `409`).
    #[error("{op}: a client with client id {client_id} exists already")]
    Conflict {
        /// Operation.
        op: &'static str,
        /// The client id.
        client_id: String,
    },
    /// The configuration cannot be used: a secret reference that names nothing, a URL that
    /// does not parse. Needs a person.
    #[error("{0}")]
    Config(String),
    /// The answer lacked something the API promises.
    #[error("{op}: unexpected response: {message}")]
    Unexpected {
        /// Operation.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// A failed call without an underlying error.
    pub fn call(op: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Error::Call {
            op,
            message: message.into(),
            retryable,
            source: None,
        }
    }

    /// Whether a later attempt may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Call {
                retryable: true,
                ..
            }
        )
    }

    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Call {
                retryable: true, ..
            } => "retryable",
            Error::Call { .. } => "error",
            Error::Conflict { .. } => "conflict",
            Error::Config(_) => "config",
            Error::Unexpected { .. } => "unexpected",
        }
    }
}

/// What a port call returns: a boxed future, so the traits are usable as `dyn`.
pub type GlobalFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// The global tenant → region map: `w-{id}` → `{region, bff_url}` (see the module docs).
pub trait LookupSink: Send + Sync {
    /// The sink's name in plans: `cloudflare-kv`, `dynamodb`.
    fn name(&self) -> &'static str;

    /// Writes (creates or replaces) the entry of `key`.
    fn put<'a>(&'a self, key: &'a str, row: &'a LookupRow) -> GlobalFuture<'a, ()>;

    /// Removes the entry of `key` (absent is fine).
    fn delete<'a>(&'a self, key: &'a str) -> GlobalFuture<'a, ()>;

    /// The entries of `keys` that exist, read in batches (as many keys per call as the API
    /// takes: 100 for both Workers KV and DynamoDB).
    fn get_many<'a>(&'a self, keys: &'a [String]) -> GlobalFuture<'a, BTreeMap<String, LookupRow>>;
}

/// A client found in a realm: Keycloak's id for it and the fields cplane owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundClient {
    /// Keycloak's id (a UUID): what update and delete address.
    pub id: String,
    /// The owned fields as found (redirect URIs sorted).
    pub client: IdentityClient,
}

/// The regional identity provider's admin API (see the module docs).
pub trait Identity: Send + Sync {
    /// The client with exactly this client id, if any.
    fn find_client<'a>(
        &'a self,
        realm: &'a Realm,
        client_id: &'a str,
    ) -> GlobalFuture<'a, Option<FoundClient>>;

    /// Every client of the realm whose client id starts with `w-`, read page by page.
    fn workspace_clients<'a>(&'a self, realm: &'a Realm) -> GlobalFuture<'a, Vec<FoundClient>>;

    /// Creates the client; returns Keycloak's id for it. An existing client id is
    /// [`Error::Conflict`].
    fn create_client<'a>(
        &'a self,
        realm: &'a Realm,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, String>;

    /// Sets the owned fields of the client `id`, leaving its other settings.
    fn update_client<'a>(
        &'a self,
        realm: &'a Realm,
        id: &'a str,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, ()>;

    /// Deletes the client `id` (already gone is fine).
    fn delete_client<'a>(&'a self, realm: &'a Realm, id: &'a str) -> GlobalFuture<'a, ()>;
}

/// Reads a secret given by reference (`env` or `file` of `cplane.yaml`); `what` names it in
/// errors, which never include the secret.
pub fn read_secret(what: &str, r: &cplane_schema::model::SecretRef) -> Result<String, Error> {
    let value = match (&r.env, &r.file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| Error::Config(format!("{what}: environment variable {var} is not set")))?,
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| Error::Config(format!("{what}: cannot read {file}: {e}")))?,
        (None, None) => return Err(Error::Config(format!("{what}: no reference given"))),
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(Error::Config(format!("{what}: the secret is empty")));
    }
    Ok(value)
}

/// Drift check of step 8: the sink's entries of the workspaces `ids` (no `w-`), by
/// workspace id, read in batches.
pub async fn observe_lookup<'i>(
    sink: &dyn LookupSink,
    ids: impl IntoIterator<Item = &'i String>,
) -> Result<BTreeMap<String, LookupRow>, Error> {
    let keys: Vec<String> = ids
        .into_iter()
        .map(|id| cplane_schema::domain::workspace_name(id))
        .collect();
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(sink
        .get_many(&keys)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("w-")?.to_owned(), v)))
        .collect())
}

/// Drift check of step 9: the workspace clients (`w-…`) of every realm in `realms`, by
/// workspace id, one paged listing per realm.
pub async fn observe_identity<'r>(
    idp: &dyn Identity,
    realms: impl IntoIterator<Item = &'r Realm>,
) -> Result<BTreeMap<String, IdentityClient>, Error> {
    let realms: std::collections::BTreeSet<&Realm> = realms.into_iter().collect();
    let mut out = BTreeMap::new();
    for realm in realms {
        for found in idp.workspace_clients(realm).await? {
            if let Some(id) = found.client.client_id.strip_prefix("w-") {
                out.insert(id.to_owned(), found.client);
            }
        }
    }
    Ok(out)
}
