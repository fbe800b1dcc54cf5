//! One apply of a bundle to the cluster, as a linear pipeline (Flux style):
//! inventory (record first) → Namespaces and CRDs → wait for CRDs Established → discovery again →
//! the rest, in bundle order, by server-side apply → prune → inventory (final) → health.
//!
//! Every object is applied with `PatchParams::apply("cplane").force()` (server-side apply,
//! field manager `cplane`, taking over conflicting fields: git is the source of truth) and
//! labelled `cplane.io/cluster=<cluster>`. Per-object failures do not stop the run; they are
//! reported, and they forbid pruning (see [`crate::inventory`] for the prune guarantees).
//! Whole-run errors ([`Error`]) happen before anything is applied or deleted only for the
//! discovery and the first inventory write; later ones leave the cluster as far as it got.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Api, Client};

use crate::bundle::{Bundle, ObjectRef};
use crate::health::{self, Health};
use crate::inventory::{self, Decision, Inventory, PruneInput};

/// The label put on every object the agent applies.
pub const LABEL: &str = "cplane.io/cluster";

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// API discovery failed (the API server is unreachable or broken).
    #[error("Kubernetes API discovery: {source}")]
    Discovery {
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the inventory failed.
    #[error("inventory ConfigMap {namespace}/{name}: {source}", name = inventory::CONFIGMAP)]
    Inventory {
        /// Its namespace.
        namespace: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The inventory belongs to another cluster id.
    #[error("inventory ConfigMap {namespace}/{name} belongs to cluster {found}, not {cluster}: refusing to touch this cluster", name = inventory::CONFIGMAP)]
    ForeignInventory {
        /// Its namespace.
        namespace: String,
        /// The cluster recorded in it.
        found: String,
        /// This agent's cluster.
        cluster: String,
    },
}

impl Error {
    /// All of these may clear up by themselves (API server back, inventory fixed).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::ForeignInventory { .. })
    }
}

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed and the apply changed nothing.
    Unchanged,
    /// It left the bundle and was deleted.
    Pruned,
    /// Applying (or pruning) it failed.
    Failed,
}

impl Action {
    /// The label used in status reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Pruned => "pruned",
            Self::Failed => "failed",
        }
    }
}

/// One object's outcome.
#[derive(Debug, Clone)]
pub struct ObjectResult {
    /// Which object.
    pub object: ObjectRef,
    /// What happened.
    pub action: Action,
    /// Why it failed, or why it is not healthy.
    pub message: String,
    /// Its health after the apply.
    pub health: Health,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Digest applied.
    pub digest: String,
    /// Its generation.
    pub generation: i64,
    /// Per-object results (bundle order, then pruned objects).
    pub objects: Vec<ObjectResult>,
    /// Why prune was skipped, when it was.
    pub prune_skipped: Option<String>,
}

impl Report {
    /// Count of objects with `action`.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|o| o.action == action).count()
    }

    /// Whether every object applied and is healthy.
    pub fn healthy(&self) -> bool {
        self.objects
            .iter()
            .all(|o| o.action != Action::Failed && matches!(o.health, Health::Healthy))
    }

    /// One line for logs and the status message.
    pub fn summary(&self) -> String {
        let unhealthy = self
            .objects
            .iter()
            .filter(|o| o.action != Action::Pruned && o.health != Health::Healthy)
            .count();
        let mut s = format!(
            "{} created, {} configured, {} unchanged, {} pruned, {} failed; {} not healthy",
            self.count(Action::Created),
            self.count(Action::Configured),
            self.count(Action::Unchanged),
            self.count(Action::Pruned),
            self.count(Action::Failed),
            unhealthy,
        );
        if let Some(why) = &self.prune_skipped {
            s.push_str("; ");
            s.push_str(why);
        }
        s
    }

    /// The body of `POST /v1/clusters/{cluster}/status`.
    pub fn to_status(&self) -> serde_json::Value {
        let cap = |s: &str| s.chars().take(1024).collect::<String>();
        serde_json::json!({
            "digest": self.digest,
            "generation": self.generation,
            "healthy": self.healthy(),
            "message": cap(&self.summary()),
            "objects": self.objects.iter().map(|o| serde_json::json!({
                "apiVersion": o.object.api_version,
                "kind": o.object.kind,
                "namespace": o.object.namespace,
                "name": o.object.name,
                "result": o.action.label(),
                "message": cap(&o.message),
                "health": o.health.label(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The body of `POST /v1/clusters/{cluster}/status` for a run that failed as a whole (nothing
/// or not everything was attempted): not healthy, `message` says why, no per-object results.
pub fn failure_status(digest: &str, generation: i64, message: &str) -> serde_json::Value {
    serde_json::json!({
        "digest": digest,
        "generation": generation,
        "healthy": false,
        "message": message.chars().take(1024).collect::<String>(),
        "objects": [],
    })
}

/// The cluster side: a Kubernetes client and where the inventory lives.
#[derive(Clone)]
pub struct Target {
    /// The Kubernetes client.
    pub client: Client,
    /// This cluster's id (label value and inventory owner).
    pub cluster: String,
    /// Namespace of the inventory ConfigMap (created when missing).
    pub namespace: String,
    /// How long to wait for a CRD to be Established.
    pub crd_timeout: Duration,
}

/// Whether this run may prune (the server confirmed the bundle in its latest answer).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// See [`inventory::PruneInput::confirmed`].
    pub confirmed: bool,
}

fn failed(object: ObjectRef, message: impl std::fmt::Display) -> ObjectResult {
    ObjectResult {
        object,
        action: Action::Failed,
        message: message.to_string(),
        health: Health::Unknown,
    }
}

pub(crate) async fn discover(client: &Client) -> Result<Discovery, Error> {
    Discovery::new(client.clone())
        .run()
        .await
        .map_err(|source| Error::Discovery { source })
}

pub(crate) fn resolve(
    discovery: &Discovery,
    r: &ObjectRef,
) -> Option<(ApiResource, ApiCapabilities)> {
    let gvk = GroupVersionKind::gvk(r.group(), r.version(), &r.kind);
    discovery.resolve_gvk(&gvk).or_else(|| {
        // The version may have gone; the same kind at the group's recommended version will do
        // (for prune: the object is the same whatever version it is read at).
        discovery.get(r.group())?.recommended_kind(&r.kind)
    })
}

pub(crate) fn api_for(
    client: &Client,
    ar: &ApiResource,
    caps: &ApiCapabilities,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    match (&caps.scope, ns) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// Applies `bundle` to the cluster (see the module docs for the order and guarantees).
pub async fn apply(target: &Target, bundle: &Bundle, options: Options) -> Result<Report, Error> {
    let Target {
        client,
        cluster,
        namespace,
        crd_timeout,
    } = target;
    let inv_err = |source| Error::Inventory {
        namespace: namespace.clone(),
        source,
    };

    // 1. Discovery, and the agent's own namespace (home of the inventory).
    let mut discovery = discover(client).await?;
    ensure_namespace(client, namespace).await.map_err(inv_err)?;

    // 2. Inventory, recorded first: everything this run may create is in it before it exists.
    let previous = inventory::read(client, namespace, cluster)
        .await
        .map_err(inv_err)?;
    if !previous.cluster.is_empty() && previous.cluster != *cluster {
        return Err(Error::ForeignInventory {
            namespace: namespace.clone(),
            found: previous.cluster,
            cluster: cluster.clone(),
        });
    }
    let refs: Vec<ObjectRef> = bundle.objects.iter().filter_map(ObjectRef::of).collect();
    let mut recorded = previous.clone();
    recorded.cluster.clone_from(cluster);
    recorded.extend(refs.iter().cloned());
    if recorded != previous {
        inventory::write(client, namespace, &recorded)
            .await
            .map_err(inv_err)?;
    }

    // 3. Namespaces and CRDs first, then wait until the CRDs are Established.
    let mut results: Vec<Option<ObjectResult>> = vec![None; bundle.objects.len()];
    let mut live: Vec<Option<DynamicObject>> = vec![None; bundle.objects.len()];
    let foundation: Vec<usize> = (0..refs.len())
        .filter(|i| refs[*i].is_foundation())
        .collect();
    let rest: Vec<usize> = (0..refs.len())
        .filter(|i| !refs[*i].is_foundation())
        .collect();
    let mut prior = Prior::default();
    for &i in &foundation {
        let (r, obj) = apply_one(
            client,
            &discovery,
            &mut prior,
            cluster,
            &refs[i],
            &bundle.objects[i],
        )
        .await;
        results[i] = Some(r);
        live[i] = obj;
    }
    let crds: Vec<usize> = foundation
        .iter()
        .copied()
        .filter(|i| refs[*i].is_crd() && live[*i].is_some())
        .collect();
    if !crds.is_empty() {
        let deadline = Instant::now() + *crd_timeout;
        for &i in &crds {
            match wait_established(client, &discovery, &refs[i], deadline).await {
                Ok(obj) => live[i] = Some(obj),
                Err(message) => {
                    if let Some(r) = results[i].as_mut() {
                        r.health = Health::Progressing;
                        r.message = message;
                    }
                }
            }
        }
        // New kinds are served now: look again.
        discovery = discover(client).await?;
    }

    // 4. Everything else, in bundle order.
    for &i in &rest {
        let (r, obj) = apply_one(
            client,
            &discovery,
            &mut prior,
            cluster,
            &refs[i],
            &bundle.objects[i],
        )
        .await;
        results[i] = Some(r);
        live[i] = obj;
    }

    // 5. Health of what was applied.
    let mut objects: Vec<ObjectResult> = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        let mut r = r.expect("every object was attempted");
        if let (Some(obj), true) = (&live[i], r.action != Action::Failed) {
            let (h, why) = health::of(&refs[i].kind, obj);
            r.health = h;
            if r.message.is_empty() {
                r.message = why;
            }
        }
        objects.push(r);
    }

    // 6. Prune objects of earlier generations that left the bundle, then record the final set.
    let failed_count = objects
        .iter()
        .filter(|o| o.action == Action::Failed)
        .count();
    let decision = inventory::decide(PruneInput {
        previous: &previous,
        bundle: &refs,
        confirmed: options.confirmed,
        failed: failed_count,
    });
    let mut prune_skipped = None;
    let mut kept: Vec<ObjectRef> = Vec::new();
    match decision {
        Decision::Skip(why) => {
            kept = previous
                .objects
                .iter()
                .filter(|o| !refs.iter().any(|b| b.same_object(o)))
                .cloned()
                .collect();
            prune_skipped = Some(why);
        }
        Decision::Prune(stale) => {
            for (r, outcome) in prune(client, &discovery, cluster, stale, false).await {
                match outcome {
                    PruneOutcome::Deleted => objects.push(ObjectResult {
                        object: r,
                        action: Action::Pruned,
                        message: String::new(),
                        health: Health::Healthy,
                    }),
                    PruneOutcome::NotOurs => {
                        tracing::info!(object = %r, "not pruned: it no longer carries our label");
                    }
                    PruneOutcome::Failed(e) => {
                        objects.push(failed(r.clone(), format!("prune: {e}")));
                        kept.push(r);
                    }
                }
            }
        }
    }
    let mut final_inventory = Inventory {
        cluster: cluster.clone(),
        digest: bundle.digest.clone(),
        generation: bundle.generation,
        objects: Vec::new(),
    };
    final_inventory.extend(refs.iter().cloned());
    final_inventory.extend(kept);
    if final_inventory != previous {
        inventory::write(client, namespace, &final_inventory)
            .await
            .map_err(inv_err)?;
    }
    Ok(Report {
        digest: bundle.digest.clone(),
        generation: bundle.generation,
        objects,
        prune_skipped,
    })
}

/// (API group, kind): one LIST per kind.
type KindKey = (String, String);
/// (namespace, name) of an object within its kind.
type Name = (Option<String>, String);

/// resourceVersions of our labelled objects, listed once per kind (one LIST instead of a GET
/// per object).
#[derive(Default)]
struct Prior {
    listed: BTreeMap<KindKey, BTreeMap<Name, String>>,
}

impl Prior {
    async fn version_of(
        &mut self,
        client: &Client,
        ar: &ApiResource,
        caps: &ApiCapabilities,
        cluster: &str,
        r: &ObjectRef,
    ) -> Result<Option<String>, kube::Error> {
        let key = (ar.group.clone(), ar.kind.clone());
        if !self.listed.contains_key(&key) {
            let list = Api::<DynamicObject>::all_with(client.clone(), ar)
                .list(&ListParams::default().labels(&format!("{LABEL}={cluster}")))
                .await?;
            let map = list
                .items
                .into_iter()
                .filter_map(|o| {
                    let name = o.metadata.name?;
                    Some((
                        (o.metadata.namespace, name),
                        o.metadata.resource_version.unwrap_or_default(),
                    ))
                })
                .collect();
            self.listed.insert(key.clone(), map);
        }
        let ns = match caps.scope {
            Scope::Namespaced => r.namespace.clone(),
            Scope::Cluster => None,
        };
        if let Some(rv) = self.listed[&key].get(&(ns.clone(), r.name.clone())) {
            return Ok(Some(rv.clone()));
        }
        // Not labelled by us (new, or made by someone else): one GET tells.
        let api = api_for(client, ar, caps, ns.as_deref());
        Ok(api
            .get_opt(&r.name)
            .await?
            .map(|o| o.metadata.resource_version.unwrap_or_default()))
    }
}

async fn apply_one(
    client: &Client,
    discovery: &Discovery,
    prior: &mut Prior,
    cluster: &str,
    r: &ObjectRef,
    obj: &DynamicObject,
) -> (ObjectResult, Option<DynamicObject>) {
    let Some((ar, caps)) = resolve(discovery, r) else {
        return (
            failed(
                r.clone(),
                format!("the server does not serve {} {}", r.api_version, r.kind),
            ),
            None,
        );
    };
    let mut obj = obj.clone();
    match caps.scope {
        Scope::Namespaced if r.namespace.is_none() => {
            return (
                failed(
                    r.clone(),
                    format!("metadata.namespace is required: {} is namespaced", r.kind),
                ),
                None,
            )
        }
        Scope::Cluster => obj.metadata.namespace = None,
        Scope::Namespaced => {}
    }
    obj.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL.to_owned(), cluster.to_owned());
    let before = match prior.version_of(client, &ar, &caps, cluster, r).await {
        Ok(v) => v,
        Err(e) => return (failed(r.clone(), e), None),
    };
    let api = api_for(client, &ar, &caps, obj.metadata.namespace.as_deref());
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    match api.patch(&r.name, &params, &Patch::Apply(&obj)).await {
        Ok(applied) => {
            let action = match before {
                None => Action::Created,
                Some(rv) if Some(&rv) == applied.metadata.resource_version.as_ref() => {
                    Action::Unchanged
                }
                Some(_) => Action::Configured,
            };
            tracing::debug!(object = %r, action = action.label(), "applied");
            (
                ObjectResult {
                    object: r.clone(),
                    action,
                    message: String::new(),
                    health: Health::Unknown,
                },
                Some(applied),
            )
        }
        Err(e) => {
            tracing::warn!(object = %r, error = %e, "apply failed");
            (failed(r.clone(), e), None)
        }
    }
}

async fn ensure_namespace(client: &Client, namespace: &str) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if api.get_opt(namespace).await?.is_some() {
        return Ok(());
    }
    let ns = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": namespace, "labels": { "app.kubernetes.io/managed-by": "cplane-agent" } },
    });
    api.patch(
        namespace,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&ns),
    )
    .await?;
    Ok(())
}

/// Polls a CRD until its `Established` condition is True or the deadline passes.
async fn wait_established(
    client: &Client,
    discovery: &Discovery,
    r: &ObjectRef,
    deadline: Instant,
) -> Result<DynamicObject, String> {
    let Some((ar, caps)) = resolve(discovery, r) else {
        return Err("CustomResourceDefinition is not served".into());
    };
    let api = api_for(client, &ar, &caps, None);
    loop {
        match api.get(&r.name).await {
            Ok(obj) if health::of("CustomResourceDefinition", &obj).0 == Health::Healthy => {
                return Ok(obj)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(object = %r, error = %e, "reading CRD"),
        }
        if Instant::now() >= deadline {
            return Err("not Established before the CRD timeout".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) enum PruneOutcome {
    Deleted,
    NotOurs,
    Failed(String),
}

/// Deletes `stale` objects that still carry our label (see [`crate::inventory`]); with
/// `dry_run`, asks the API server to check the deletes (`?dryRun=All`) and deletes nothing.
pub(crate) async fn prune(
    client: &Client,
    discovery: &Discovery,
    cluster: &str,
    stale: Vec<ObjectRef>,
    dry_run: bool,
) -> Vec<(ObjectRef, PruneOutcome)> {
    let mut out = Vec::new();
    let mut labelled: BTreeMap<KindKey, BTreeSet<Name>> = BTreeMap::new();
    for r in stale {
        let Some((ar, caps)) = resolve(discovery, &r) else {
            // The kind is gone (its CRD was deleted): so are its objects.
            out.push((r, PruneOutcome::NotOurs));
            continue;
        };
        let key = (ar.group.clone(), ar.kind.clone());
        if !labelled.contains_key(&key) {
            let listed = Api::<DynamicObject>::all_with(client.clone(), &ar)
                .list(&ListParams::default().labels(&format!("{LABEL}={cluster}")))
                .await;
            match listed {
                Ok(list) => {
                    let set = list
                        .items
                        .into_iter()
                        .filter_map(|o| Some((o.metadata.namespace, o.metadata.name?)))
                        .collect();
                    labelled.insert(key.clone(), set);
                }
                Err(e) => {
                    out.push((r, PruneOutcome::Failed(e.to_string())));
                    continue;
                }
            }
        }
        let ns = match caps.scope {
            Scope::Namespaced => r.namespace.clone(),
            Scope::Cluster => None,
        };
        if !labelled[&key].contains(&(ns.clone(), r.name.clone())) {
            out.push((r, PruneOutcome::NotOurs));
            continue;
        }
        let api = api_for(client, &ar, &caps, ns.as_deref());
        let params = DeleteParams {
            dry_run,
            ..DeleteParams::default()
        };
        match api.delete(&r.name, &params).await {
            Ok(_) => {
                if !dry_run {
                    tracing::info!(object = %r, "pruned");
                }
                out.push((r, PruneOutcome::Deleted));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => out.push((r, PruneOutcome::Deleted)),
            Err(e) => out.push((r, PruneOutcome::Failed(e.to_string()))),
        }
    }
    out
}
