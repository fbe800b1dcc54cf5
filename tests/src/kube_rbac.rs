//! RBAC for the fake Kubernetes API server ([`crate::kube_apiserver`]): which requests one
//! service account may make, from the Roles, ClusterRoles and their bindings in a set of
//! manifests (`cplane agent install`'s output, say).
//!
//! # What it emulates
//! Kubernetes' RBAC authorizer for resource requests: a request is allowed when one rule of a
//! role bound to the user allows its verb, API group and resource (and its name, when the rule
//! lists `resourceNames`). A ClusterRole bound by a ClusterRoleBinding applies in every
//! namespace and to cluster-scoped resources; a Role (or a ClusterRole) bound by a RoleBinding
//! applies only in the binding's namespace. `*` matches any verb, group or resource. A rule with
//! `resourceNames` never allows `list` or `create` (requests that carry no name). Verbs follow
//! the request: `GET` one object is `get`, `GET` a collection is `list`, `POST` is `create`,
//! `PATCH` is `patch` — and a server-side apply that creates the object also needs `create`, as
//! on a real API server — and `DELETE` is `delete`.
//!
//! # What it does not emulate
//! No authentication (every request is taken to come from the configured user), no groups or
//! aggregated ClusterRoles, no subresource rules (`deployments/status`), no
//! `nonResourceURLs` (discovery and `/version` are always allowed, as the default
//! `system:discovery` role does), no escalation checks when RBAC objects are written.

use serde_json::Value;

/// One policy rule, with where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every namespace and cluster-scoped resources (a ClusterRoleBinding); otherwise
    /// only this namespace (a RoleBinding).
    pub namespace: Option<String>,
    /// `apiGroups` (`""` is the core group).
    pub api_groups: Vec<String>,
    /// `resources` (plural names).
    pub resources: Vec<String>,
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `resourceNames` (empty: any name).
    pub resource_names: Vec<String>,
}

/// One request, as the authorizer sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The verb (`get`, `list`, `create`, `patch`, `delete`).
    pub verb: &'a str,
    /// API group (`""` for core).
    pub group: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Namespace (`None`: cluster-scoped, or a list across all namespaces).
    pub namespace: Option<&'a str>,
    /// Object name (`None` for list and create).
    pub name: Option<&'a str>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(ToOwned::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn matches(list: &[String], value: &str) -> bool {
    list.iter().any(|x| x == "*" || x == value)
}

impl Rule {
    /// Whether this rule allows `r`.
    pub fn allows(&self, r: &Request<'_>) -> bool {
        if let Some(ns) = &self.namespace {
            if r.namespace != Some(ns.as_str()) {
                return false;
            }
        }
        if !matches(&self.verbs, r.verb)
            || !matches(&self.api_groups, r.group)
            || !matches(&self.resources, r.resource)
        {
            return false;
        }
        if self.resource_names.is_empty() {
            return true;
        }
        r.name
            .is_some_and(|n| self.resource_names.iter().any(|x| x == n))
    }
}

/// The rules that apply to service account `namespace/name`, from the Roles, ClusterRoles,
/// RoleBindings and ClusterRoleBindings among `manifests`.
pub fn rules_for_service_account(manifests: &[Value], namespace: &str, name: &str) -> Vec<Rule> {
    let kind = |o: &Value| o["kind"].as_str().unwrap_or("").to_owned();
    let meta = |o: &Value, k: &str| o["metadata"][k].as_str().unwrap_or("").to_owned();
    let bound = |b: &Value| {
        b["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace
            })
        })
    };
    // The rules of role `role_kind/role_name` (a Role in `role_ns`), applying in `scope`.
    let role_rules = |role_kind: &str, role_name: &str, role_ns: &str, scope: Option<String>| {
        manifests
            .iter()
            .filter(|o| {
                kind(o) == role_kind
                    && meta(o, "name") == role_name
                    && (role_kind == "ClusterRole" || meta(o, "namespace") == role_ns)
            })
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| Rule {
                namespace: scope.clone(),
                api_groups: strings(r.get("apiGroups")),
                resources: strings(r.get("resources")),
                verbs: strings(r.get("verbs")),
                resource_names: strings(r.get("resourceNames")),
            })
            .collect::<Vec<Rule>>()
    };
    let mut out = Vec::new();
    for b in manifests.iter().filter(|o| bound(o)) {
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or("");
        let role_name = b["roleRef"]["name"].as_str().unwrap_or("");
        let scope = match kind(b).as_str() {
            "ClusterRoleBinding" if role_kind == "ClusterRole" => None,
            "RoleBinding" => Some(meta(b, "namespace")),
            _ => continue,
        };
        let role_ns = scope.clone().unwrap_or_default();
        out.extend(role_rules(role_kind, role_name, &role_ns, scope));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req<'a>(verb: &'a str, ns: Option<&'a str>, name: Option<&'a str>) -> Request<'a> {
        Request {
            verb,
            group: "",
            resource: "configmaps",
            namespace: ns,
            name,
        }
    }

    #[test]
    fn bindings_scope_the_rules() {
        let manifests = vec![
            json!({"kind": "ClusterRole", "metadata": {"name": "all"},
                "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "all"},
                "roleRef": {"kind": "ClusterRole", "name": "all"},
                "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "sys"}]}),
            json!({"kind": "Role", "metadata": {"name": "inv", "namespace": "sys"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"], "resourceNames": ["inv"]},
                          {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "inv", "namespace": "sys"},
                "roleRef": {"kind": "Role", "name": "inv"},
                "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "sys"}]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "other", "namespace": "sys"},
                "roleRef": {"kind": "Role", "name": "inv"},
                "subjects": [{"kind": "ServiceAccount", "name": "someone-else", "namespace": "sys"}]}),
        ];
        let rules = rules_for_service_account(&manifests, "sys", "agent");
        assert_eq!(rules.len(), 3);
        let allowed = |r: Request<'_>| rules.iter().any(|rule| rule.allows(&r));
        assert!(allowed(req("get", Some("sys"), Some("inv"))));
        assert!(allowed(req("create", Some("sys"), None)));
        assert!(
            !allowed(req("get", Some("sys"), Some("other"))),
            "resourceNames"
        );
        assert!(
            !allowed(req("get", Some("default"), Some("inv"))),
            "namespace"
        );
        assert!(!allowed(req("delete", Some("sys"), Some("inv"))), "verb");
        let deploy = Request {
            verb: "list",
            group: "apps",
            resource: "deployments",
            namespace: None,
            name: None,
        };
        assert!(allowed(deploy.clone()), "cluster-wide");
        assert!(!allowed(Request {
            verb: "delete",
            ..deploy
        }));
        assert!(rules_for_service_account(&manifests, "sys", "nobody").is_empty());
    }
}
