//! In-memory ports of steps 8 and 9 ([`FakeGlobal`] implements both
//! [`cplane_reconciler::global::LookupSink`] and [`cplane_reconciler::global::Identity`]),
//! so apply's crash and property tests cover them in milliseconds. The adapters are tested
//! against the test servers ([`crate::keycloak`], [`crate::cloudflare_kv`]) and moto.
//!
//! Emulated faithfully (the ports' contract): entries are put and deleted by key (deleting a
//! missing one succeeds) and read in batches of at most 100 keys (more is an error); one
//! realm's clients are unique by client id (a create of an existing one is a conflict),
//! ids are assigned at create, an update sets only the owned fields, a delete of a missing id
//! succeeds. Calls are counted and mutating ones logged as `op key`
//! ([`FakeGlobal::mutation_log`]); [`FakeGlobal::lose_answer`] makes the k-th mutating call
//! take effect and then fail as a lost answer, [`FakeGlobal::crash_at`] also fails every later
//! call until [`FakeGlobal::heal`] (the process died there).
//!
//! Not emulated: throttling, pagination limits of the realm listing, authentication,
//! Keycloak's other client settings.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cplane_reconciler::global::{
    Error, FoundClient, GlobalFuture, Identity, IdentityClient, LookupRow, LookupSink, Realm,
};

#[derive(Debug, Default)]
struct World {
    entries: BTreeMap<String, LookupRow>,
    /// Realm name → clients (id, owned fields).
    clients: BTreeMap<String, Vec<(String, IdentityClient)>>,
    next: u64,
    log: Vec<String>,
    calls: BTreeMap<String, u64>,
    fault: Option<(String, bool)>,
    fired: bool,
    crashed: bool,
}

/// The fake. Share it as `Arc<FakeGlobal>`; hand apply clones as `Arc<dyn LookupSink>` and
/// `Arc<dyn Identity>`.
#[derive(Debug, Default)]
pub struct FakeGlobal {
    world: Mutex<World>,
}

impl FakeGlobal {
    /// Empty: no entries, no clients.
    pub fn new() -> Self {
        Self::default()
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("fake global lock")
    }

    /// The entries of the sink.
    pub fn entries(&self) -> BTreeMap<String, LookupRow> {
        self.world().entries.clone()
    }

    /// The clients of a realm: (id, owned fields).
    pub fn clients(&self, realm: &str) -> Vec<(String, IdentityClient)> {
        self.world().clients.get(realm).cloned().unwrap_or_default()
    }

    /// Mutating calls so far, in order, as `op key`.
    pub fn mutation_log(&self) -> Vec<String> {
        self.world().log.clone()
    }

    /// Calls so far by operation.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.world().calls.clone()
    }

    /// Forgets the log and the counts.
    pub fn reset_counts(&self) {
        let mut w = self.world();
        w.log.clear();
        w.calls.clear();
    }

    /// The mutating call logged as `label` takes effect, then its answer is lost.
    pub fn lose_answer(&self, label: &str) {
        let mut w = self.world();
        w.fault = Some((label.to_owned(), false));
        w.fired = false;
    }

    /// Like [`FakeGlobal::lose_answer`], and every later call fails until healed.
    pub fn crash_at(&self, label: &str) {
        let mut w = self.world();
        w.fault = Some((label.to_owned(), true));
        w.fired = false;
    }

    /// Whether the fault struck.
    pub fn fault_fired(&self) -> bool {
        self.world().fired
    }

    /// Calls work again.
    pub fn heal(&self) {
        let mut w = self.world();
        w.fault = None;
        w.crashed = false;
    }

    /// Drift: removes an entry outside the API.
    pub fn remove_entry(&self, key: &str) -> bool {
        self.world().entries.remove(key).is_some()
    }

    /// Drift: edits a client's redirect URIs outside the API.
    pub fn edit_redirects(&self, realm: &str, client_id: &str, uris: &[&str]) -> bool {
        let mut w = self.world();
        match w
            .clients
            .get_mut(realm)
            .and_then(|c| c.iter_mut().find(|(_, c)| c.client_id == client_id))
        {
            Some((_, c)) => {
                c.redirect_uris = uris.iter().map(|u| (*u).to_owned()).collect();
                true
            }
            None => false,
        }
    }

    /// Drift: deletes a client outside the API.
    pub fn remove_client(&self, realm: &str, client_id: &str) -> bool {
        let mut w = self.world();
        let Some(list) = w.clients.get_mut(realm) else {
            return false;
        };
        let before = list.len();
        list.retain(|(_, c)| c.client_id != client_id);
        list.len() != before
    }

    fn call<T>(
        &self,
        op: &'static str,
        mutating: Option<String>,
        run: impl FnOnce(&mut World) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut w = self.world();
        *w.calls.entry(op.to_owned()).or_insert(0) += 1;
        if w.crashed {
            return Err(Error::call(op, "connection refused (fake: crashed)", true));
        }
        let mut lose = false;
        if let Some(label) = &mutating {
            w.log.push(label.clone());
            if w.fault.as_ref().is_some_and(|(l, _)| l == label) {
                let (_, crash) = w.fault.take().expect("checked");
                w.fired = true;
                w.crashed = crash;
                lose = true;
            }
        }
        let result = run(&mut w);
        if lose {
            return Err(Error::call(op, "answer lost (fake)", true));
        }
        result
    }
}

impl LookupSink for FakeGlobal {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn put<'a>(&'a self, key: &'a str, row: &'a LookupRow) -> GlobalFuture<'a, ()> {
        let r = self.call("sink:put", Some(format!("sink:put {key}")), |w| {
            w.entries.insert(key.to_owned(), row.clone());
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn delete<'a>(&'a self, key: &'a str) -> GlobalFuture<'a, ()> {
        let r = self.call("sink:delete", Some(format!("sink:delete {key}")), |w| {
            w.entries.remove(key);
            Ok(())
        });
        Box::pin(async move { r })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> GlobalFuture<'a, BTreeMap<String, LookupRow>> {
        let mut out = BTreeMap::new();
        let mut result = Ok(());
        for chunk in keys.chunks(100) {
            let r = self.call("sink:batch_get", None, |w| {
                Ok(chunk
                    .iter()
                    .filter_map(|k| w.entries.get(k).map(|v| (k.clone(), v.clone())))
                    .collect::<Vec<_>>())
            });
            match r {
                Ok(found) => out.extend(found),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        Box::pin(async move { result.map(|()| out) })
    }
}

impl Identity for FakeGlobal {
    fn find_client<'a>(
        &'a self,
        realm: &'a Realm,
        client_id: &'a str,
    ) -> GlobalFuture<'a, Option<FoundClient>> {
        let r = self.call("keycloak:find", None, |w| {
            Ok(w.clients.get(&realm.name).and_then(|list| {
                list.iter()
                    .find(|(_, c)| c.client_id == client_id)
                    .map(|(id, c)| FoundClient {
                        id: id.clone(),
                        client: c.clone(),
                    })
            }))
        });
        Box::pin(async move { r })
    }

    fn workspace_clients<'a>(&'a self, realm: &'a Realm) -> GlobalFuture<'a, Vec<FoundClient>> {
        let r = self.call("keycloak:list", None, |w| {
            Ok(w.clients
                .get(&realm.name)
                .map(|list| {
                    list.iter()
                        .filter(|(_, c)| c.client_id.starts_with("w-"))
                        .map(|(id, c)| FoundClient {
                            id: id.clone(),
                            client: c.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default())
        });
        Box::pin(async move { r })
    }

    fn create_client<'a>(
        &'a self,
        realm: &'a Realm,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, String> {
        let label = format!("keycloak:create {}", client.client_id);
        let r = self.call("keycloak:create", Some(label), |w| {
            w.next += 1;
            let id = format!("kc-{}", w.next);
            let list = w.clients.entry(realm.name.clone()).or_default();
            if list.iter().any(|(_, c)| c.client_id == client.client_id) {
                return Err(Error::Conflict {
                    op: "keycloak:create",
                    client_id: client.client_id.clone(),
                });
            }
            list.push((id.clone(), client.clone()));
            Ok(id)
        });
        Box::pin(async move { r })
    }

    fn update_client<'a>(
        &'a self,
        realm: &'a Realm,
        id: &'a str,
        client: &'a IdentityClient,
    ) -> GlobalFuture<'a, ()> {
        let label = format!("keycloak:update {}", client.client_id);
        let r = self.call("keycloak:update", Some(label), |w| {
            match w
                .clients
                .get_mut(&realm.name)
                .and_then(|l| l.iter_mut().find(|(i, _)| i == id))
            {
                Some((_, c)) => {
                    *c = client.clone();
                    Ok(())
                }
                None => Err(Error::call(
                    "keycloak:update",
                    "404 Could not find client",
                    false,
                )),
            }
        });
        Box::pin(async move { r })
    }

    fn delete_client<'a>(&'a self, realm: &'a Realm, id: &'a str) -> GlobalFuture<'a, ()> {
        // Labelled by client id: Keycloak's ids depend on the order workspaces ran in.
        let name = self
            .clients(&realm.name)
            .into_iter()
            .find(|(i, _)| i == id)
            .map_or_else(|| id.to_owned(), |(_, c)| c.client_id);
        let r = self.call(
            "keycloak:delete",
            Some(format!("keycloak:delete {name}")),
            |w| {
                if let Some(l) = w.clients.get_mut(&realm.name) {
                    l.retain(|(i, _)| i != id);
                }
                Ok(())
            },
        );
        Box::pin(async move { r })
    }
}
