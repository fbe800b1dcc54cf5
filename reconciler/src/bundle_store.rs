//! The server's view of the published bundles, as agents poll it.
//!
//! Agents poll `GET /v1/clusters/{id}/bundle` with `If-None-Match`; nearly every poll is answered
//! `304`. [`BundleStore`] makes that answer cost no database read: it keeps every cluster's
//! *head* (current digest and generation) in memory and caches the cluster of each token it has
//! verified. Bodies (gzip-compressed, see [`crate::db::Db::publish_bundle`]) are read from the
//! database only for a `200`. Bodies and token checks that miss the cache are read in batches
//! ([`Loader`]): when a commit changes every cluster's bundle, or thousands of agents connect at
//! once, they share a few queries instead of queueing for the pool one by one.
//!
//! # Guarantees
//! - After [`BundleStore::refresh`] returns, [`BundleStore::head`] answers what the database
//!   holds, and every waiter of [`BundleStore::subscribe`] has been woken if any head changed.
//! - On PostgreSQL, [`BundleStore::listen`] keeps the heads current across replicas: the replica
//!   that publishes sends `NOTIFY cplane_bundles`, every replica refreshes that cluster and wakes
//!   its long-polls. After a lost listener connection it reconnects and refreshes everything (a
//!   notification sent while it was gone is not lost, only late).
//! - A revoked token stops working on PostgreSQL at once (`NOTIFY cplane_tokens` clears the
//!   cache), on SQLite within [`REVOCATION_CHECK`] (the CLI that revokes is another process, so
//!   the last change to the tokens is read that often), and everywhere within [`TOKEN_TTL`].
//!   The same holds for the new end of a token that a rotation cut short.
//! - An expired token stops working at its expiry to the millisecond: the cache keeps each
//!   token's expiry and the caller checks it on every request ([`db::TokenGrant::is_expired`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::db::{self, Db};

/// How long a verified token's cluster is trusted without asking the database again.
pub const TOKEN_TTL: Duration = Duration::from_secs(10);

/// How often SQLite deployments look for revoked (or rotated) tokens.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(1);

/// The published bundle a cluster currently points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `sha256:<hex>` of the canonical bundle.
    pub digest: Arc<str>,
    /// Bumped on every digest change.
    pub generation: i64,
}

/// Errors reading bundle bodies or token owners.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed (the message of the shared batch query).
    #[error("reading {what}: {message}")]
    Read {
        /// What was read.
        what: &'static str,
        /// The database's error.
        message: String,
    },
    /// The batch reader is gone (the process is shutting down).
    #[error("the {0} reader stopped")]
    Stopped(&'static str),
}

/// Most keys one batch query reads.
const BATCH: usize = 256;

type Reply<V> = tokio::sync::oneshot::Sender<Result<Option<V>, Error>>;

/// Reads values by key in batches: a request waits for the batch in flight, then everything
/// queued meanwhile (up to [`BATCH`] keys) is read with one query.
pub struct Loader<V> {
    what: &'static str,
    requests: tokio::sync::mpsc::UnboundedSender<(String, Reply<V>)>,
}

impl<V: Clone + Send + 'static> Loader<V> {
    /// Starts the reader task; `read` answers one batch of distinct keys.
    pub fn spawn<F, Fut>(what: &'static str, read: F) -> Self
    where
        F: Fn(Vec<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<HashMap<String, V>, db::Error>> + Send,
    {
        let (requests, mut queue) = tokio::sync::mpsc::unbounded_channel::<(String, Reply<V>)>();
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let mut keys: Vec<String> = batch.iter().map(|(k, _)| k.clone()).collect();
                keys.sort();
                keys.dedup();
                match read(keys).await {
                    Ok(found) => {
                        for (key, reply) in batch {
                            let _ = reply.send(Ok(found.get(&key).cloned()));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for (_, reply) in batch {
                            let _ = reply.send(Err(Error::Read {
                                what,
                                message: message.clone(),
                            }));
                        }
                    }
                }
            }
        });
        Self { what, requests }
    }

    /// The value of `key`, if there is one.
    pub async fn get(&self, key: String) -> Result<Option<V>, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((key, tx))
            .map_err(|_| Error::Stopped(self.what))?;
        rx.await.map_err(|_| Error::Stopped(self.what))?
    }
}

/// Heads in memory, bodies in the database, verified tokens cached.
pub struct BundleStore {
    db: Db,
    bodies: Loader<Vec<u8>>,
    owners: Loader<db::TokenGrant>,
    heads: RwLock<HashMap<String, Head>>,
    changes: watch::Sender<u64>,
    /// SHA-256 of a token → (what it grants, verified at).
    tokens: Mutex<HashMap<String, (db::TokenGrant, Instant)>>,
}

impl BundleStore {
    /// Loads every cluster's head from the database.
    pub async fn load(db: Db) -> Result<Arc<Self>, db::Error> {
        let bodies = {
            let db = db.clone();
            Loader::spawn("bundles", move |digests| {
                let db = db.clone();
                async move { db.bundle_bodies(&digests).await }
            })
        };
        let owners = {
            let db = db.clone();
            Loader::spawn("cluster tokens", move |hashes| {
                let db = db.clone();
                async move { db.token_grants(&hashes).await }
            })
        };
        let store = Arc::new(Self {
            db,
            bodies,
            owners,
            heads: RwLock::default(),
            changes: watch::Sender::new(0),
            tokens: Mutex::default(),
        });
        store.refresh(None).await?;
        Ok(store)
    }

    /// The current head of `cluster`, from memory.
    pub fn head(&self, cluster: &str) -> Option<Head> {
        self.heads.read().expect("heads lock").get(cluster).cloned()
    }

    /// Re-reads the heads of every cluster (`None`) or one, and wakes the long-polls when any
    /// changed.
    pub async fn refresh(&self, only: Option<&str>) -> Result<(), db::Error> {
        let rows = self.db.cluster_heads(only).await?;
        let mut changed = false;
        {
            let mut heads = self.heads.write().expect("heads lock");
            if only.is_none() {
                let before = heads.len();
                let listed: std::collections::HashSet<&str> =
                    rows.iter().map(|(r, _, _)| r.as_str()).collect();
                heads.retain(|id, _| listed.contains(id.as_str()));
                changed |= heads.len() != before;
            }
            for (id, digest, generation) in rows {
                let head = Head {
                    digest: digest.into(),
                    generation,
                };
                if heads.get(&id) != Some(&head) {
                    heads.insert(id, head);
                    changed = true;
                }
            }
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// A receiver that changes whenever some head changed (long-polls wait on it, then look at
    /// their own cluster's head).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The current bundle of `cluster`: (digest, generation, gzip body). The head comes from
    /// memory; the body (immutable, by digest) from the database, batched with other requests.
    pub async fn body(&self, cluster: &str) -> Result<Option<(String, i64, Vec<u8>)>, Error> {
        let Some(head) = self.head(cluster) else {
            return Ok(None);
        };
        let body = self.bodies.get(head.digest.to_string()).await?;
        Ok(body.map(|b| (head.digest.to_string(), head.generation, b)))
    }

    /// What an unrevoked token grants — its cluster, scope and expiry (cached for
    /// [`TOKEN_TTL`]; unknown tokens are not cached, so a token created a moment ago works at
    /// once). An expired token is answered too: the caller checks the expiry.
    pub async fn token_grant(&self, token: &str) -> Result<Option<db::TokenGrant>, Error> {
        let hash = db::token_hash(token);
        if let Some((grant, at)) = self.tokens.lock().expect("tokens lock").get(&hash) {
            if at.elapsed() < TOKEN_TTL {
                return Ok(Some(grant.clone()));
            }
        }
        let grant = self.owners.get(hash.clone()).await?;
        let mut tokens = self.tokens.lock().expect("tokens lock");
        match &grant {
            Some(g) => {
                tokens.insert(hash, (g.clone(), Instant::now()));
            }
            None => {
                tokens.remove(&hash);
            }
        }
        Ok(grant)
    }

    /// Forgets every cached token (a token was revoked or rotated somewhere).
    pub fn forget_tokens(&self) {
        self.tokens.lock().expect("tokens lock").clear();
    }

    /// Keeps the store current until the process ends. On PostgreSQL: follows `cplane_bundles`
    /// and `cplane_tokens` notifications from every replica (and `cplane cluster token revoke`).
    /// On SQLite (one server process): looks for revoked or rotated tokens every
    /// [`REVOCATION_CHECK`].
    pub fn listen(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        if !self.db.is_postgres() {
            return tokio::spawn(async move {
                let mut seen = None;
                loop {
                    tokio::time::sleep(REVOCATION_CHECK).await;
                    match store.db.last_token_change().await {
                        Ok(last) if last != seen => {
                            seen = last;
                            store.forget_tokens();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "checking token changes"),
                    }
                }
            });
        }
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match store.follow().await {
                    Ok(()) => backoff = Duration::from_millis(200),
                    Err(e) => {
                        tracing::warn!(error = %e, "bundle notifications lost; reconnecting");
                        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.8..1.2))).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }

    /// One listener connection: subscribe, catch up (anything published while no listener was
    /// connected), then apply notifications as they come.
    async fn follow(&self) -> Result<(), db::Error> {
        let mut listener = sqlx::postgres::PgListener::connect(self.db.url()).await?;
        listener
            .listen_all([db::BUNDLES_CHANNEL, db::TOKENS_CHANNEL])
            .await?;
        self.refresh(None).await?;
        self.forget_tokens();
        loop {
            let n = listener.recv().await?;
            if n.channel() == db::TOKENS_CHANNEL {
                self.forget_tokens();
            } else {
                self.refresh(Some(n.payload())).await?;
            }
        }
    }
}
