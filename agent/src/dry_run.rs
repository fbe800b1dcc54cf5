//! `--dry-run`: what an apply of a bundle would change, asked of the API server itself
//! (server-side dry run, `?dryRun=All`), writing nothing.
//!
//! Every object goes through the same server-side apply as a real run (field manager `cplane`,
//! `force`, the cluster label), with `dryRun=All`; the answer is compared with the live object,
//! ignoring what the server sets by itself (`metadata.managedFields`, `resourceVersion`,
//! `generation`, `uid`, `creationTimestamp`). Prune is decided by the same rules as a real run
//! ([`crate::inventory::decide`]) and each delete is dry-run too.
//!
//! Guarantees: nothing is written — no object, no inventory, no Namespace (not even the agent's
//! own), no bundle on disk, no status report.
//!
//! Limits: an object in a Namespace the bundle creates, or of a kind a CustomResourceDefinition
//! of the bundle defines, cannot be checked by the server before that Namespace or CRD exists;
//! it is listed as to be created, with a note saying it was not checked.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::Scope;
use serde_json::Value;

use crate::apply::{self, Action, Error, Options, PruneOutcome, Target, LABEL};
use crate::bundle::{Bundle, ObjectRef};
use crate::inventory::{self, Decision, PruneInput};

/// What would happen to one object.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Which object.
    pub object: ObjectRef,
    /// `Created`, `Configured`, `Unchanged` or `Pruned` (would be), or `Failed` (the server
    /// would refuse it, or it could not be checked).
    pub action: Action,
    /// For `Configured`: the fields that would change (`spec.replicas`, `data.key`, …).
    pub fields: Vec<String>,
    /// Why it failed, or a note.
    pub message: String,
}

/// The outcome of one dry run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Digest of the bundle.
    pub digest: String,
    /// Its generation.
    pub generation: i64,
    /// Per-object results (bundle order, then what prune would delete).
    pub objects: Vec<Planned>,
    /// Why prune would be skipped, when it would.
    pub prune_skipped: Option<String>,
}

impl Plan {
    /// Count of objects with `action`.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|o| o.action == action).count()
    }

    /// Whether applying would change the cluster (create, change or prune something).
    pub fn has_changes(&self) -> bool {
        self.objects.iter().any(|o| {
            matches!(
                o.action,
                Action::Created | Action::Configured | Action::Pruned
            )
        })
    }

    /// The human-readable plan: one line per object, then a summary.
    pub fn render(&self, cluster: &str) -> String {
        let mut out = format!(
            "dry run of bundle {} (generation {}) on cluster {cluster}:\n",
            self.digest, self.generation
        );
        for o in &self.objects {
            let verb = match o.action {
                Action::Created => "create",
                Action::Configured => "change",
                Action::Unchanged => "unchanged",
                Action::Pruned => "prune",
                Action::Failed => "error",
            };
            let _ = write!(out, "  {verb:<9} {}", o.object);
            if !o.fields.is_empty() {
                let _ = write!(out, ": {}", o.fields.join(", "));
            }
            if !o.message.is_empty() {
                let _ = write!(out, " ({})", o.message);
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "{} to create, {} to change, {} unchanged, {} to prune, {} errors",
            self.count(Action::Created),
            self.count(Action::Configured),
            self.count(Action::Unchanged),
            self.count(Action::Pruned),
            self.count(Action::Failed),
        );
        if let Some(why) = &self.prune_skipped {
            let _ = write!(out, "; {why}");
        }
        out.push_str("; nothing was written\n");
        out
    }
}

fn planned(object: ObjectRef, action: Action, message: impl Into<String>) -> Planned {
    Planned {
        object,
        action,
        fields: Vec::new(),
        message: message.into(),
    }
}

/// Dry-runs `bundle` (see the module docs).
pub async fn plan(target: &Target, bundle: &Bundle, options: Options) -> Result<Plan, Error> {
    let Target {
        client,
        cluster,
        namespace,
        ..
    } = target;
    let discovery = apply::discover(client).await?;
    let previous = inventory::read(client, namespace, cluster)
        .await
        .map_err(|source| Error::Inventory {
            namespace: namespace.clone(),
            source,
        })?;
    if !previous.cluster.is_empty() && previous.cluster != *cluster {
        return Err(Error::ForeignInventory {
            namespace: namespace.clone(),
            found: previous.cluster,
            cluster: cluster.clone(),
        });
    }
    let refs: Vec<ObjectRef> = bundle.objects.iter().filter_map(ObjectRef::of).collect();
    // Kinds defined by the bundle's CRDs: (group, kind).
    let bundle_kinds: BTreeSet<(String, String)> = bundle
        .objects
        .iter()
        .zip(&refs)
        .filter(|(_, r)| r.is_crd())
        .filter_map(|(o, _)| {
            let spec = o.data.get("spec")?;
            Some((
                spec.get("group")?.as_str()?.to_owned(),
                spec.get("names")?.get("kind")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let order: Vec<usize> = (0..refs.len())
        .filter(|i| refs[*i].is_foundation())
        .chain((0..refs.len()).filter(|i| !refs[*i].is_foundation()))
        .collect();
    let mut results: Vec<Option<Planned>> = vec![None; refs.len()];
    let mut new_namespaces: BTreeSet<String> = BTreeSet::new();
    for i in order {
        let r = &refs[i];
        let p = plan_one(
            target,
            &discovery,
            &bundle_kinds,
            &new_namespaces,
            r,
            &bundle.objects[i],
        )
        .await;
        if p.action == Action::Created && r.kind == "Namespace" && r.group().is_empty() {
            new_namespaces.insert(r.name.clone());
        }
        results[i] = Some(p);
    }
    let mut objects: Vec<Planned> = results.into_iter().flatten().collect();

    let decision = inventory::decide(PruneInput {
        previous: &previous,
        bundle: &refs,
        confirmed: options.confirmed,
        failed: objects
            .iter()
            .filter(|o| o.action == Action::Failed)
            .count(),
    });
    let mut prune_skipped = None;
    match decision {
        Decision::Skip(why) => prune_skipped = Some(why),
        Decision::Prune(stale) => {
            for (r, outcome) in apply::prune(client, &discovery, cluster, stale, true).await {
                match outcome {
                    PruneOutcome::Deleted => objects.push(planned(r, Action::Pruned, "")),
                    PruneOutcome::NotOurs => {}
                    PruneOutcome::Failed(e) => {
                        objects.push(planned(r, Action::Failed, format!("prune: {e}")));
                    }
                }
            }
        }
    }
    Ok(Plan {
        digest: bundle.digest.clone(),
        generation: bundle.generation,
        objects,
        prune_skipped,
    })
}

async fn plan_one(
    target: &Target,
    discovery: &kube::Discovery,
    bundle_kinds: &BTreeSet<(String, String)>,
    new_namespaces: &BTreeSet<String>,
    r: &ObjectRef,
    obj: &DynamicObject,
) -> Planned {
    let Some((ar, caps)) = apply::resolve(discovery, r) else {
        if bundle_kinds.contains(&(r.group().to_owned(), r.kind.clone())) {
            return planned(
                r.clone(),
                Action::Created,
                "its CustomResourceDefinition is created by this bundle: not checked by the API server",
            );
        }
        return planned(
            r.clone(),
            Action::Failed,
            format!("the server does not serve {} {}", r.api_version, r.kind),
        );
    };
    let mut obj = obj.clone();
    match caps.scope {
        Scope::Namespaced => match &r.namespace {
            None => {
                return planned(
                    r.clone(),
                    Action::Failed,
                    format!("metadata.namespace is required: {} is namespaced", r.kind),
                )
            }
            Some(ns) if new_namespaces.contains(ns) => {
                return planned(
                    r.clone(),
                    Action::Created,
                    "its Namespace is created by this bundle: not checked by the API server",
                )
            }
            Some(_) => {}
        },
        Scope::Cluster => obj.metadata.namespace = None,
    }
    obj.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL.to_owned(), target.cluster.clone());
    let api = apply::api_for(
        &target.client,
        &ar,
        &caps,
        obj.metadata.namespace.as_deref(),
    );
    let live = match api.get_opt(&r.name).await {
        Ok(l) => l,
        Err(e) => return planned(r.clone(), Action::Failed, e.to_string()),
    };
    let params = PatchParams {
        dry_run: true,
        ..PatchParams::apply(crate::FIELD_MANAGER).force()
    };
    let would = match api.patch(&r.name, &params, &Patch::Apply(&obj)).await {
        Ok(w) => w,
        Err(e) => return planned(r.clone(), Action::Failed, e.to_string()),
    };
    let Some(live) = live else {
        return planned(r.clone(), Action::Created, "");
    };
    let as_value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
    let fields = changed_fields(&as_value(&live), &as_value(&would));
    if fields.is_empty() {
        planned(r.clone(), Action::Unchanged, "")
    } else {
        Planned {
            object: r.clone(),
            action: Action::Configured,
            fields,
            message: String::new(),
        }
    }
}

/// Metadata the API server sets by itself: never a change the bundle makes.
const SERVER_SET: [&str; 5] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
];

/// The paths at which `live` and `would` differ (added, removed or changed), ignoring
/// [`SERVER_SET`] metadata: `spec.replicas`, `metadata.labels["cplane.io/cluster"]`,
/// `spec.template.spec.containers[0].image`.
pub fn changed_fields(live: &Value, would: &Value) -> Vec<String> {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in SERVER_SET {
                m.remove(f);
            }
        }
        v
    };
    let mut out = Vec::new();
    diff(&strip(live), &strip(would), String::new(), &mut out);
    out
}

fn key_path(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key:?}]"),
    }
}

fn diff(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = key_path(&path, k);
                diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    p,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(u, v, format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(if path.is_empty() { ".".into() } else { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_name_leaves_and_ignore_server_metadata() {
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "resourceVersion": "7", "uid": "u", "generation": 2,
                "labels": {"app": "web"}, "managedFields": [{"manager": "cplane"}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.26"}]}}}});
        let mut would = live.clone();
        would["metadata"]["resourceVersion"] = json!("7");
        would["metadata"]["generation"] = json!(3);
        would["metadata"]["managedFields"] = json!([]);
        assert!(changed_fields(&live, &would).is_empty());
        would["spec"]["replicas"] = json!(3);
        would["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        would["metadata"]["labels"]["cplane.io/cluster"] = json!("w-acme");
        assert_eq!(
            changed_fields(&live, &would),
            vec![
                "metadata.labels[\"cplane.io/cluster\"]",
                "spec.replicas",
                "spec.template.spec.containers[0].image",
            ]
        );
    }
}
