//! `cplane agent install --cluster ID`: the manifests that install a cluster's agent, with the
//! least privilege its bundle needs.
//!
//! The agent's RBAC is computed from the cluster's rendered bundle: a ClusterRole granting
//! exactly the verbs the agent uses (`get`, `list`, `create`, `patch`, `delete`: server-side
//! apply that creates an object needs `create` as well as `patch`; prune lists by label across
//! namespaces, then deletes) on exactly the resources of the kinds the bundle holds, and a Role
//! in the agent's namespace for its inventory ConfigMap. The token is never part of the output:
//! the Deployment mounts the Secret `cplane-agent-token`, which the operator creates from a
//! file (the header of the output says how).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::kinds::Kinds;
use crate::render::Bundle;

/// Name of the agent's ServiceAccount, roles, bindings and Deployment.
pub const NAME: &str = "cplane-agent";
/// The Secret holding the agent's token (key `token`), created by the operator.
pub const TOKEN_SECRET: &str = "cplane-agent-token";
/// The agent's inventory ConfigMap (see the agent's `inventory` module).
const INVENTORY: &str = "cplane-inventory";
/// Verbs the agent uses on the objects of its bundle.
pub const VERBS: [&str; 5] = ["create", "delete", "get", "list", "patch"];

/// What `cplane agent install` is asked for.
#[derive(Debug, Clone)]
pub struct Install {
    /// Cluster id (`w-acme`, `prod-sgp-1`).
    pub cluster: String,
    /// The control plane URL the agent pulls from.
    pub server: String,
    /// The agent image.
    pub image: String,
    /// The agent's namespace (home of its inventory).
    pub namespace: String,
}

/// Why the manifests cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object of a kind that is neither built in nor defined by a CRD in the bundle.
    #[error("{object}: kind {kind} (apiVersion {api_version}) is neither a Kubernetes 1.33 built-in kind nor defined by a CustomResourceDefinition in cluster {cluster}'s bundle, so the agent's RBAC cannot name its resource")]
    UnknownKind {
        /// The cluster.
        cluster: String,
        /// `namespace/name` of the object.
        object: String,
        /// Its kind.
        kind: String,
        /// Its apiVersion.
        api_version: String,
    },
}

/// The RBAC rules the agent needs for `bundle` (cluster-wide; sorted, one rule per API group).
pub fn bundle_rules(bundle: &Bundle) -> Result<Vec<Value>, Error> {
    let kinds = Kinds::new(bundle.objects.iter().map(|o| &o.value));
    let mut by_group: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in &bundle.objects {
        let v = &o.value;
        let api_version = v["apiVersion"].as_str().unwrap_or("");
        let kind = v["kind"].as_str().unwrap_or("");
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let Some(r) = kinds.resolve(group, kind) else {
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
            let name = v["metadata"]["name"].as_str().unwrap_or("");
            return Err(Error::UnknownKind {
                cluster: bundle.cluster.clone(),
                object: if ns.is_empty() {
                    name.to_owned()
                } else {
                    format!("{ns}/{name}")
                },
                kind: kind.to_owned(),
                api_version: api_version.to_owned(),
            });
        };
        by_group.entry(r.group).or_default().insert(r.resource);
    }
    // Creating Roles that grant what the agent itself does not hold needs `escalate`, and
    // bindings to roles it does not hold need `bind` (Kubernetes' escalation checks).
    let rbac: Vec<String> = by_group
        .get("rbac.authorization.k8s.io")
        .map(|r| {
            r.iter()
                .filter(|r| matches!(r.as_str(), "roles" | "clusterroles"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut rules: Vec<Value> = by_group
        .into_iter()
        .map(|(group, resources)| {
            json!({"apiGroups": [group], "resources": resources, "verbs": VERBS})
        })
        .collect();
    if !rbac.is_empty() {
        rules.push(json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": rbac, "verbs": ["bind", "escalate"]}));
    }
    Ok(rules)
}

fn labels(cluster: &str) -> Value {
    json!({
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/managed-by": "cplane",
        "cplane.io/cluster": cluster,
    })
}

/// The install manifests for `bundle`'s cluster, in apply order.
pub fn manifests(bundle: &Bundle, install: &Install) -> Result<Vec<Value>, Error> {
    let Install {
        cluster,
        server,
        image,
        namespace: ns,
    } = install;
    let mut cluster_rules = bundle_rules(bundle)?;
    // The agent reads its own namespace before anything else (it exists: it is created here).
    cluster_rules.push(json!({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"], "resourceNames": [ns]}));
    let l = labels(cluster);
    let sa = json!([{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]);
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
            "app.kubernetes.io/managed-by": "cplane",
            "pod-security.kubernetes.io/enforce": "restricted"}}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": ns, "labels": l}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": NAME, "labels": l}, "rules": cluster_rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": l},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": sa}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": NAME, "namespace": ns, "labels": l},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"], "resourceNames": [INVENTORY]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": NAME, "namespace": ns, "labels": l},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": sa}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("{NAME}-state"), "namespace": ns, "labels": l},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": l},
        "spec": {
            "replicas": 1,
            // One agent per cluster, and its state volume is ReadWriteOnce.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": l},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "agent",
                        "image": image,
                        "env": [
                            {"name": "CPLANE_AGENT_SERVER", "value": server},
                            {"name": "CPLANE_AGENT_CLUSTER", "value": cluster},
                            {"name": "CPLANE_AGENT_NAMESPACE", "value": ns},
                            {"name": "CPLANE_AGENT_TOKEN_FILE", "value": "/var/run/secrets/cplane/token"},
                            {"name": "CPLANE_AGENT_STATE_DIR", "value": "/var/lib/cplane-agent"},
                        ],
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "volumeMounts": [
                            {"name": "token", "mountPath": "/var/run/secrets/cplane", "readOnly": true},
                            {"name": "state", "mountPath": "/var/lib/cplane-agent"},
                        ],
                    }],
                    "volumes": [
                        {"name": "token", "secret": {"secretName": TOKEN_SECRET, "defaultMode": 0o440}},
                        {"name": "state", "persistentVolumeClaim": {"claimName": format!("{NAME}-state")}},
                    ],
                },
            },
        }}),
    ])
}

/// The manifests as one multi-document YAML text, after a header saying how to apply them and
/// create the token Secret.
pub fn to_yaml(install: &Install, objects: &[Value]) -> String {
    let ns = &install.namespace;
    let mut out = format!(
        "# cplane agent for cluster {cluster}, from {version}.\n\
         # Apply (or re-apply, to upgrade), then create the token Secret from the file holding the\n\
         # cluster's token (`cplane cluster token create {cluster}`); the token is never printed here:\n\
         #   kubectl apply --server-side -f <this file>\n\
         #   kubectl -n {ns} create secret generic {TOKEN_SECRET} --from-file=token=<token file>\n",
        cluster = install.cluster,
        version = crate::version(),
    );
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o).expect("JSON values serialize as YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Object;

    fn bundle(objects: Vec<Value>) -> Bundle {
        Bundle {
            cluster: "w-acme".into(),
            objects: objects
                .into_iter()
                .map(|value| Object {
                    stack: "s".into(),
                    template: "t".into(),
                    value,
                })
                .collect(),
            digest: String::new(),
        }
    }

    #[test]
    fn rules_name_exactly_the_bundles_resources() {
        let b = bundle(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "trino"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "namespace": "trino"}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "b", "namespace": "trino"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "trino"}}),
        ]);
        assert_eq!(
            bundle_rules(&b).expect("rules"),
            vec![
                json!({"apiGroups": [""], "resources": ["namespaces", "services"], "verbs": VERBS}),
                json!({"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": VERBS}),
            ]
        );
    }

    #[test]
    fn an_unknown_kind_is_an_error_naming_the_object() {
        let b = bundle(vec![
            json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m", "namespace": "obs"}}),
        ]);
        let e = bundle_rules(&b).expect_err("unknown").to_string();
        assert!(
            e.contains("obs/m") && e.contains("ServiceMonitor") && e.contains("w-acme"),
            "{e}"
        );
    }
}
