//! The inventory: the set of objects this agent applied to its cluster, kept in the cluster
//! itself (ConfigMap `cplane-inventory` in the agent's namespace, key `inventory.json`), and the
//! prune decision that reads it.
//!
//! # Guarantees
//! - **Recorded before created.** Before a run applies anything, the inventory is written as
//!   (previous inventory ∪ every object of the bundle). An object the agent creates is therefore
//!   always in the inventory, even when the agent dies in the middle of a run.
//! - **Only its own.** Prune candidates come only from the inventory, and an object is deleted
//!   only when it *also* still carries the label `cplane.io/cluster=<this cluster>` (checked with
//!   a labelled LIST just before deleting). An object the agent never applied is never a
//!   candidate; an object someone took over (removed the label) is dropped from the inventory
//!   and left alone.
//! - **Never on an empty bundle, never without the server.** [`decide`] refuses to prune when the
//!   bundle holds no object, when the run is a re-apply of the stored bundle that the server has
//!   not confirmed as current in its latest answer (e.g. the server is unreachable), or when any
//!   object of the bundle failed to apply (a half-applied bundle is not a basis for deleting).
//! - **Nothing lost on failure.** A failed delete keeps the object in the inventory, so a later
//!   run retries it.
//!
//! # Assumptions
//! - One agent per cluster id, and the inventory ConfigMap is not edited by hand.
//! - An object's identity is (API group, kind, namespace, name): a version change of the same
//!   object is an update, not a prune.
//!
//! # Errors
//! - Reading or writing the inventory fails the whole run before anything is applied or deleted
//!   (nothing is pruned on a run whose inventory is unknown).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::Api;

use crate::bundle::ObjectRef;

/// Name of the inventory ConfigMap.
pub const CONFIGMAP: &str = "cplane-inventory";
/// Key of the inventory in the ConfigMap's data.
pub const KEY: &str = "inventory.json";

/// The recorded set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// Cluster id it belongs to.
    pub cluster: String,
    /// Digest of the bundle last applied.
    pub digest: String,
    /// Its generation.
    pub generation: i64,
    /// Objects applied and not yet pruned.
    pub objects: Vec<ObjectRef>,
}

impl Inventory {
    /// Whether `r` is recorded (any version of the same object).
    pub fn contains(&self, r: &ObjectRef) -> bool {
        self.objects.iter().any(|o| o.same_object(r))
    }

    /// Adds `refs` not yet recorded (the newest `apiVersion` wins).
    pub fn extend(&mut self, refs: impl IntoIterator<Item = ObjectRef>) {
        for r in refs {
            match self.objects.iter_mut().find(|o| o.same_object(&r)) {
                Some(o) => *o = r,
                None => self.objects.push(r),
            }
        }
        self.objects.sort();
    }
}

/// Why a run does or does not prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delete these (objects recorded earlier that left the bundle).
    Prune(Vec<ObjectRef>),
    /// Prune nothing, for this reason.
    Skip(String),
}

/// What a run knows when it decides about pruning.
#[derive(Debug, Clone, Copy)]
pub struct PruneInput<'a> {
    /// The inventory before this run.
    pub previous: &'a Inventory,
    /// The objects of the bundle being applied.
    pub bundle: &'a [ObjectRef],
    /// Whether the server confirmed, in its latest answer, that this bundle is current.
    pub confirmed: bool,
    /// How many objects of the bundle failed to apply.
    pub failed: usize,
}

/// The prune decision (pure). Candidates are in reverse apply order: ordinary objects first,
/// then CustomResourceDefinitions, then Namespaces.
pub fn decide(input: PruneInput<'_>) -> Decision {
    let PruneInput {
        previous,
        bundle,
        confirmed,
        failed,
    } = input;
    let mut stale: Vec<ObjectRef> = previous
        .objects
        .iter()
        .filter(|o| !bundle.iter().any(|b| b.same_object(o)))
        .cloned()
        .collect();
    if stale.is_empty() {
        return Decision::Prune(Vec::new());
    }
    if bundle.is_empty() {
        return Decision::Skip(format!(
            "prune skipped: the bundle is empty ({} object(s) kept)",
            stale.len()
        ));
    }
    if !confirmed {
        return Decision::Skip(format!(
            "prune skipped: the server has not confirmed this bundle ({} object(s) kept)",
            stale.len()
        ));
    }
    if failed > 0 {
        return Decision::Skip(format!(
            "prune skipped: {failed} object(s) failed to apply ({} object(s) kept)",
            stale.len()
        ));
    }
    let rank = |r: &ObjectRef| match (r.kind.as_str(), r.is_foundation()) {
        (_, false) => 0,
        ("Namespace", true) => 2,
        _ => 1,
    };
    stale.sort_by_key(rank);
    Decision::Prune(stale)
}

/// Reads the inventory (an empty one when there is none yet).
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
) -> Result<Inventory, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let Some(cm) = api.get_opt(CONFIGMAP).await? else {
        return Ok(Inventory {
            cluster: cluster.to_owned(),
            ..Inventory::default()
        });
    };
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(KEY))
        .cloned()
        .unwrap_or_default();
    match serde_json::from_str::<Inventory>(&text) {
        Ok(inv) => Ok(inv),
        Err(e) => Err(kube::Error::SerdeError(e)),
    }
}

/// Writes the inventory by server-side apply.
pub async fn write(
    client: &kube::Client,
    namespace: &str,
    inventory: &Inventory,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut data = BTreeMap::new();
    data.insert(
        KEY.to_owned(),
        serde_json::to_string(inventory).expect("an inventory always serialises"),
    );
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP,
            "namespace": namespace,
            "labels": { "app.kubernetes.io/managed-by": "cplane-agent" },
        },
        "data": data,
    });
    api.patch(
        CONFIGMAP,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: &str, ns: Option<&str>, name: &str) -> ObjectRef {
        let api_version = match kind {
            "Deployment" => "apps/v1",
            "CustomResourceDefinition" => "apiextensions.k8s.io/v1",
            _ => "v1",
        };
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    fn inv(objects: Vec<ObjectRef>) -> Inventory {
        Inventory {
            cluster: "w-acme".into(),
            objects,
            ..Inventory::default()
        }
    }

    #[test]
    fn objects_that_left_the_bundle_are_pruned_in_reverse_order() {
        let previous = inv(vec![
            r("Namespace", None, "old"),
            r("CustomResourceDefinition", None, "widgets.example.com"),
            r("ConfigMap", Some("old"), "cfg"),
            r("Deployment", Some("bff"), "bff"),
        ]);
        let bundle = [r("Deployment", Some("bff"), "bff")];
        let d = decide(PruneInput {
            previous: &previous,
            bundle: &bundle,
            confirmed: true,
            failed: 0,
        });
        assert_eq!(
            d,
            Decision::Prune(vec![
                r("ConfigMap", Some("old"), "cfg"),
                r("CustomResourceDefinition", None, "widgets.example.com"),
                r("Namespace", None, "old"),
            ])
        );
    }

    #[test]
    fn an_empty_bundle_never_prunes() {
        let previous = inv(vec![r("ConfigMap", Some("a"), "b")]);
        let d = decide(PruneInput {
            previous: &previous,
            bundle: &[],
            confirmed: true,
            failed: 0,
        });
        assert_eq!(
            d,
            Decision::Skip("prune skipped: the bundle is empty (1 object(s) kept)".into())
        );
    }

    #[test]
    fn an_unconfirmed_bundle_never_prunes() {
        let previous = inv(vec![
            r("ConfigMap", Some("a"), "b"),
            r("ConfigMap", Some("a"), "c"),
        ]);
        let bundle = [r("ConfigMap", Some("a"), "c")];
        let d = decide(PruneInput {
            previous: &previous,
            bundle: &bundle,
            confirmed: false,
            failed: 0,
        });
        assert!(matches!(d, Decision::Skip(m) if m.contains("not confirmed")));
    }

    #[test]
    fn a_failed_apply_never_prunes() {
        let previous = inv(vec![
            r("ConfigMap", Some("a"), "b"),
            r("ConfigMap", Some("a"), "c"),
        ]);
        let bundle = [r("ConfigMap", Some("a"), "c")];
        let d = decide(PruneInput {
            previous: &previous,
            bundle: &bundle,
            confirmed: true,
            failed: 1,
        });
        assert!(matches!(d, Decision::Skip(m) if m.contains("1 object(s) failed")));
    }

    #[test]
    fn objects_never_recorded_are_never_candidates_and_versions_do_not_matter() {
        let previous = inv(vec![r("Deployment", Some("bff"), "bff")]);
        let mut moved = r("Deployment", Some("bff"), "bff");
        moved.api_version = "apps/v2".into();
        let bundle = [moved.clone(), r("ConfigMap", Some("x"), "new")];
        let d = decide(PruneInput {
            previous: &previous,
            bundle: &bundle,
            confirmed: true,
            failed: 0,
        });
        assert_eq!(d, Decision::Prune(Vec::new()));
        let mut i = previous.clone();
        i.extend(bundle);
        assert_eq!(i.objects.len(), 2);
        assert!(i.objects.contains(&moved));
    }
}
