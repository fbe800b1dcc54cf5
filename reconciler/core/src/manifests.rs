//! What a revision changes in one cluster's bundle: the objects added, changed and removed
//! against the published bundle, with a unified diff of each changed object's canonical YAML
//! (keys sorted, as [`crate::render::Bundle::to_yaml`] prints it), secrets redacted.
//!
//! Pure: it takes the two bundles' objects (parsed from their canonical JSON Lines) and returns
//! data. The reconciler reads the published bundle from the database and the new one from the
//! renderer.
//!
//! **Redaction.** Before anything is printed or diffed, every value of a core/v1 `Secret`'s
//! `data` and `stringData` is replaced by [`REDACTED`], and so is every string under a key the
//! secrets rule ([`cplane_schema::validate::is_secret_name`]) marks (`password`, `apiKey`,
//! `clientSecret`, ...) and every container `env` entry's `value` whose `name` it marks
//! (`DB_PASSWORD`). References (`secretKeyRef`, `configMapKeyRef`, `secretRef`) are kept: they
//! name a secret, they are not one. A diff therefore says *that* a secret value changed (the
//! line is there, `(redacted)` on both sides hides nothing else), never what it is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::render::object_key;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "(redacted)";

/// The diff of an object of which only redacted values change.
pub const ONLY_REDACTED: &str = "(only redacted values change)\n";

/// Lines of context around each change in an object's diff.
const CONTEXT: usize = 3;

/// An object's identity in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `apps/v1`, `v1`.
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// Namespace, empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ", self.api_version, self.kind)?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        f.write_str(&self.name)
    }
}

impl ObjectRef {
    /// The identity of a rendered object.
    pub fn of(value: &Value) -> Self {
        let s = |p: &str| {
            value
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Self {
            api_version: s("/apiVersion"),
            kind: s("/kind"),
            namespace: s("/metadata/namespace"),
            name: s("/metadata/name"),
        }
    }
}

/// A changed object and its diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedObject {
    /// Which object.
    #[serde(flatten)]
    pub object: ObjectRef,
    /// Unified diff of its canonical YAML, published (`---`) to new (`+++`), secrets redacted.
    pub diff: String,
}

/// What a revision changes in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterChanges {
    /// Cluster id (`w-acme`, `prod-sgp-1`).
    pub cluster: String,
    /// `platform` or `tenant`.
    pub kind: String,
    /// Region id.
    pub region: String,
    /// Environment.
    pub environment: String,
    /// Digest of the published bundle (`None`: nothing published yet).
    pub from: Option<String>,
    /// Digest of the new bundle (`None`: the cluster is gone from the revision).
    pub to: Option<String>,
    /// Objects the new bundle adds, in apply order.
    pub added: Vec<ObjectRef>,
    /// Objects whose content changes, in apply order.
    pub changed: Vec<ChangedObject>,
    /// Objects the new bundle no longer has (the agent prunes them).
    pub removed: Vec<ObjectRef>,
}

impl ClusterChanges {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The objects of a canonical bundle (JSON Lines, one object a line).
pub fn parse_canonical(text: &str) -> Result<Vec<Value>, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

/// The changes from `published` to `new` (each a bundle's objects), by object identity;
/// `cluster` fills in the rest of [`ClusterChanges`] (its `added`, `changed` and `removed`
/// are replaced).
pub fn diff(mut cluster: ClusterChanges, published: &[Value], new: &[Value]) -> ClusterChanges {
    let old: BTreeMap<_, &Value> = published.iter().map(|v| (object_key(v), v)).collect();
    let now: BTreeMap<_, &Value> = new.iter().map(|v| (object_key(v), v)).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (key, value) in &now {
        match old.get(key) {
            None => added.push(ObjectRef::of(value)),
            Some(before) if before != value => {
                let object = ObjectRef::of(value);
                let (a, b) = (yaml(&redact(before)), yaml(&redact(value)));
                let label = object.to_string();
                let diff = if a == b {
                    ONLY_REDACTED.to_owned()
                } else {
                    similar::TextDiff::from_lines(&a, &b)
                        .unified_diff()
                        .context_radius(CONTEXT)
                        .header(&format!("published: {label}"), &format!("new: {label}"))
                        .to_string()
                };
                changed.push(ChangedObject { object, diff });
            }
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|(key, _)| !now.contains_key(*key))
        .map(|(_, v)| ObjectRef::of(v))
        .collect();
    cluster.added = added;
    cluster.changed = changed;
    cluster.removed = removed;
    cluster
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("JSON values serialize to YAML")
}

/// `v` with its secrets replaced by [`REDACTED`] (see the module docs for what counts).
pub fn redact(v: &Value) -> Value {
    let mut out = v.clone();
    let is_secret = v["kind"] == "Secret" && v["apiVersion"] == "v1";
    if let Some(obj) = out.as_object_mut() {
        if is_secret {
            for field in ["data", "stringData"] {
                if let Some(Value::Object(m)) = obj.get_mut(field) {
                    for value in m.values_mut() {
                        *value = Value::String(REDACTED.into());
                    }
                }
            }
        }
    }
    redact_walk(&mut out);
    out
}

/// Keys whose value references a secret (and is kept).
const REFERENCES: [&str; 4] = ["secretKeyRef", "configMapKeyRef", "secretRef", "valueFrom"];

fn redact_walk(v: &mut Value) {
    match v {
        Value::Object(m) => {
            // A container env entry `{name: DB_PASSWORD, value: ...}`.
            let env_secret = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(cplane_schema::validate::is_secret_name);
            for (key, value) in m.iter_mut() {
                if REFERENCES.contains(&key.as_str()) {
                    continue;
                }
                let marked =
                    cplane_schema::validate::is_secret_name(key) || (env_secret && key == "value");
                match value {
                    Value::String(s) if marked && !s.is_empty() => {
                        *value = Value::String(REDACTED.into());
                    }
                    other => redact_walk(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_walk),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster() -> ClusterChanges {
        ClusterChanges {
            cluster: "w-acme".into(),
            kind: "tenant".into(),
            region: "sgp-1".into(),
            environment: "prod".into(),
            from: Some("sha256:a".into()),
            to: Some("sha256:b".into()),
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        }
    }

    fn cm(name: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "trino"}, "data": data})
    }

    #[test]
    fn objects_are_added_changed_and_removed_by_identity_with_a_unified_diff() {
        let old = vec![
            cm("config", json!({"workers": "1", "coordinator": "true"})),
            cm("gone", json!({})),
            cm("same", json!({"a": "b"})),
        ];
        let new = vec![
            cm("config", json!({"workers": "2", "coordinator": "true"})),
            cm("fresh", json!({})),
            cm("same", json!({"a": "b"})),
        ];
        let c = diff(cluster(), &old, &new);
        let r = |name: &str| ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: "trino".into(),
            name: name.into(),
        };
        assert_eq!(c.added, vec![r("fresh")]);
        assert_eq!(c.removed, vec![r("gone")]);
        assert_eq!(c.changed.len(), 1);
        assert_eq!(c.changed[0].object, r("config"));
        assert_eq!(
            c.changed[0].diff,
            "--- published: v1 ConfigMap trino/config\n\
             +++ new: v1 ConfigMap trino/config\n\
             @@ -1,7 +1,7 @@\n \
             apiVersion: v1\n \
             data:\n   \
             coordinator: 'true'\n\
             -  workers: '1'\n\
             +  workers: '2'\n \
             kind: ConfigMap\n \
             metadata:\n   \
             name: config\n"
        );
        assert!(!c.is_empty());
        assert!(diff(cluster(), &new, &new).is_empty());
    }

    #[test]
    fn secrets_are_redacted_and_references_kept() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                            "data": {"password": "aHVudGVyMg=="}, "stringData": {"x": "y"}});
        let r = redact(&secret);
        assert_eq!(r["data"]["password"], REDACTED);
        assert_eq!(r["stringData"]["x"], REDACTED);
        let pod = json!({"kind": "Deployment", "apiVersion": "apps/v1", "spec": {"containers": [{
            "env": [
                {"name": "DB_PASSWORD", "value": "hunter2"},
                {"name": "WORKERS", "value": "2"},
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            ],
            "args": {"adminPassword": "hunter2", "clientSecret": ""},
        }]}});
        let r = redact(&pod);
        let env = &r["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["value"], REDACTED);
        assert_eq!(env[1]["value"], "2");
        assert_eq!(env[2]["valueFrom"]["secretKeyRef"]["key"], "token");
        assert_eq!(
            r["spec"]["containers"][0]["args"]["adminPassword"],
            REDACTED
        );
        assert_eq!(r["spec"]["containers"][0]["args"]["clientSecret"], "");

        // A changed secret value shows as a changed object whose diff never holds the value.
        let old = vec![secret.clone()];
        let mut changed = secret;
        changed["data"]["password"] = json!("c3dvcmRmaXNo");
        let c = diff(cluster(), &old, std::slice::from_ref(&changed));
        assert_eq!(c.changed[0].diff, ONLY_REDACTED);
        changed["metadata"]["labels"] = json!({"rotated": "now"});
        let c = diff(cluster(), &old, &[changed]);
        assert_eq!(c.changed.len(), 1);
        let d = &c.changed[0].diff;
        assert!(
            !d.contains("aHVudGVyMg") && !d.contains("c3dvcmRmaXNo"),
            "{d}"
        );
        assert!(d.contains("+    rotated: now"), "{d}");
    }

    #[test]
    fn canonical_bundles_parse_line_by_line() {
        let objects = parse_canonical("{\"kind\":\"A\"}\n{\"kind\":\"B\"}\n").expect("parse");
        assert_eq!(objects.len(), 2);
        assert!(parse_canonical("{\"kind\":\n").is_err());
    }
}
