//! **A fake Kubernetes API server, for tests only**: it lives in the test crate `cplane-e2e`, so
//! no build of the agent contains it. The `kube-fake` example serves it
//! (`cargo run -p cplane-e2e --example kube-fake`) to try the agent without a cluster.
//!
//! No real API server runs on the test machines (no Docker, no kind/k3s), so this module
//! emulates, in memory, the part of the Kubernetes API the agent uses — faithfully enough that
//! ordering and ownership mistakes fail the tests, as they would on a real cluster. It is an
//! axum [`Router`]: use it in-process with `kube::Client::new(router, "default")`
//! ([`ApiServer::client`]) or serve it on 127.0.0.1 for kubeconfig-based tests
//! ([`ApiServer::serve`]).
//!
//! # What it emulates
//! - `/version`; discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}/{version}` (built-in
//!   kinds the cplane stacks use, plus the kinds of every applied CustomResourceDefinition once it
//!   is Established — after a configurable delay — with `/status` subresource entries).
//! - GET, LIST (all namespaces or one; `labelSelector` with `=`, `==`, `!=`, `in`, `notin`,
//!   `key`, `!key`), POST create (`201`, `409 AlreadyExists`), DELETE (`200` with the object;
//!   deleting a Namespace deletes its objects at once; deleting a CRD deletes its kind and its
//!   objects).
//! - Server-side apply (`PATCH`, `application/apply-patch+yaml`, `fieldManager` required,
//!   `force`): create → `201`; update → `200`, merging the applied configuration into the live
//!   object; fields the same manager applied before and no longer applies are removed; fields
//!   owned by another manager with a different value are a `409 Conflict` unless `force=true`,
//!   which takes them over. `resourceVersion` changes only when the object changes; `uid`,
//!   `creationTimestamp`, `generation` (kinds with a status subresource) and `managedFields`
//!   (FieldsV1) are kept. JSON merge patch (`application/merge-patch+json`) acts as an Update
//!   by its `fieldManager` (default `unknown`), taking ownership of the fields it sets.
//! - Server-side dry run (`?dryRun=All` on POST, PATCH and DELETE, or `"dryRun": ["All"]` in a
//!   DELETE's DeleteOptions body): every check above runs and
//!   the answer is the would-be object (a create has no `resourceVersion`, an update keeps the
//!   live one; a delete answers the object), but nothing is stored, no `resourceVersion` is
//!   used up, and no side effect happens (no CRD is Established, no Namespace's objects go).
//!   Any other `dryRun` value is a `400`.
//! - Admission basics: a namespaced object needs an existing Namespace (`404`); names must be
//!   RFC 1123 (`422 Invalid`, Namespaces: labels of ≤ 63 characters), label values must be
//!   valid (`422`); body/URL mismatches of name, namespace, apiVersion or kind are `400`.
//!   Errors are Kubernetes `Status` bodies (`kind: Status`, `reason`, `code`, `details`).
//!
//! # What it does not emulate
//! No controllers (Deployments never get Pods or `status`; nothing becomes Available), no
//! finalizers or graceful deletion, no watch, no `fieldSelector`, no strategic-merge or JSON
//! patch, no PUT/replace, no subresource writes, no authentication, no RBAC unless
//! [`ApiServer::with_rbac`] turns it on (then as [`crate::kube_rbac`] says; otherwise every
//! request is allowed), no OpenAPI schema validation or defaulting (unknown fields are kept), lists in
//! applied objects are atomic (real SSA merges lists such as `containers` by key), no
//! `resourceVersion` preconditions, no pagination, one stored version per kind (no
//! conversion), protobuf and aggregated discovery are not offered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};

/// One served kind.
#[derive(Debug, Clone)]
struct Resource {
    group: String,
    version: String,
    kind: String,
    plural: String,
    singular: String,
    namespaced: bool,
    /// Has a `/status` subresource (status is not written through the main resource) and
    /// tracks `metadata.generation`.
    status: bool,
    /// The CRD that defines it.
    crd: Option<String>,
}

impl Resource {
    fn builtin(gv: &str, kind: &str, plural: &str, namespaced: bool, status: bool) -> Self {
        let (group, version) = gv.rsplit_once('/').unwrap_or(("", gv));
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            status,
            crd: None,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps` / `configmaps`, as Kubernetes names a kind in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

fn builtins() -> Vec<Resource> {
    let b = Resource::builtin;
    vec![
        b("v1", "Namespace", "namespaces", false, false),
        b("v1", "ConfigMap", "configmaps", true, false),
        b("v1", "Secret", "secrets", true, false),
        b("v1", "Service", "services", true, false),
        b("v1", "ServiceAccount", "serviceaccounts", true, false),
        b(
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
            true,
        ),
        b("v1", "Pod", "pods", true, true),
        b("apps/v1", "Deployment", "deployments", true, true),
        b("apps/v1", "StatefulSet", "statefulsets", true, true),
        b("apps/v1", "DaemonSet", "daemonsets", true, true),
        b("apps/v1", "ReplicaSet", "replicasets", true, true),
        b("batch/v1", "Job", "jobs", true, true),
        b("batch/v1", "CronJob", "cronjobs", true, true),
        b("networking.k8s.io/v1", "Ingress", "ingresses", true, true),
        b(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            false,
        ),
        b(
            "policy/v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            true,
        ),
        b(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            true,
        ),
        b("rbac.authorization.k8s.io/v1", "Role", "roles", true, false),
        b(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
            true,
            false,
        ),
        b(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "clusterroles",
            false,
            false,
        ),
        b(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            false,
        ),
        b(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            true,
        ),
    ]
}

/// A leaf field path (`["spec", "replicas"]`); lists are leaves (atomic).
type FieldPath = Vec<String>;

#[derive(Debug, Clone)]
struct Manager {
    operation: &'static str,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
}

#[derive(Debug, Clone)]
struct Stored {
    object: Value,
    managers: BTreeMap<String, Manager>,
}

/// Key of a stored object: (group, plural, namespace or "", name).
type Key = (String, String, String, String);

struct World {
    resources: Vec<Resource>,
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    crd_delay: Duration,
    /// CRDs applied but not Established yet, with when they will be.
    pending: BTreeMap<String, Instant>,
    requests: Vec<String>,
    /// `Some`: requests are authorized by these rules, for this user (see [`crate::kube_rbac`]).
    rbac: Option<(String, Vec<crate::kube_rbac::Rule>)>,
}

/// The fake API server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ApiServer {
    world: Arc<Mutex<World>>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl ApiServer {
    /// An empty cluster with the namespaces `default`, `kube-system`, `kube-public` and
    /// `kube-node-lease`; CRDs are Established at once.
    pub fn new() -> Self {
        let mut world = World {
            resources: builtins(),
            objects: BTreeMap::new(),
            resource_version: 100,
            crd_delay: Duration::ZERO,
            pending: BTreeMap::new(),
            requests: Vec::new(),
            rbac: None,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let rv = world.next_rv();
            world.objects.insert(
                (String::new(), "namespaces".into(), String::new(), ns.into()),
                Stored {
                    object: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                        "name": ns, "uid": uid(), "resourceVersion": rv, "creationTimestamp": now(),
                        "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]},
                        "status": {"phase": "Active"}}),
                    managers: BTreeMap::new(),
                },
            );
        }
        Self {
            world: Arc::new(Mutex::new(world)),
        }
    }

    /// CRDs become Established (and their kinds served) only `delay` after they are applied.
    pub fn with_crd_delay(self, delay: Duration) -> Self {
        self.lock().crd_delay = delay;
        self
    }

    /// Authorizes every resource request by RBAC `rules` (as [`crate::kube_rbac`] describes),
    /// as if it came from `user` (named in `403 Forbidden` messages). Without this, every
    /// request is allowed.
    pub fn with_rbac(self, user: &str, rules: Vec<crate::kube_rbac::Rule>) -> Self {
        self.lock().rbac = Some((user.to_owned(), rules));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("fake API server state")
    }

    /// The router (serve it, or hand it to [`kube::Client::new`]).
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// A kube client talking to this server in-process.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the router on 127.0.0.1 (a free port) until the returned handle is dropped.
    pub async fn serve(&self) -> std::io::Result<Served> {
        self.serve_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
    }

    /// Serves the router on `addr` until the returned handle is dropped. Refuses an address that
    /// is not loopback: the fake has no authentication.
    pub async fn serve_on(&self, addr: std::net::SocketAddr) -> std::io::Result<Served> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr} is not a loopback address: the fake API server has no authentication, serve it on 127.0.0.1 or ::1"),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Served {
            url: format!("http://{addr}"),
            task,
        })
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// The stored object (`apiVersion` and `kind` as in manifests), if any.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let mut w = self.lock();
        w.tick();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let r = w
            .resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)?
            .clone();
        let key = (
            r.group.clone(),
            r.plural.clone(),
            namespace.unwrap_or("").to_owned(),
            name.to_owned(),
        );
        w.objects.get(&key).map(with_managed_fields)
    }

    /// Deletes an object as a person with `kubectl delete` would (for drift tests); whether it
    /// existed.
    pub fn delete_by_hand(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let mut w = self.lock();
        w.tick();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let Some(resource) = w
            .resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)
            .cloned()
        else {
            return false;
        };
        let t = Target {
            resource,
            namespace: namespace.map(ToOwned::to_owned),
            name: Some(name.to_owned()),
            dry_run: false,
        };
        w.delete(&t, name).is_ok()
    }

    /// Every stored object as `Kind namespace/name` (or `Kind name`), sorted.
    pub fn inventory(&self) -> Vec<String> {
        let w = self.lock();
        let mut out: Vec<String> = w
            .objects
            .values()
            .map(|s| {
                let m = &s.object["metadata"];
                let kind = s.object["kind"].as_str().unwrap_or("");
                let name = m["name"].as_str().unwrap_or("");
                match m["namespace"].as_str() {
                    Some(ns) => format!("{kind} {ns}/{name}"),
                    None => format!("{kind} {name}"),
                }
            })
            .collect();
        out.sort();
        out
    }

    /// How many objects are stored (all kinds, namespaces included).
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether nothing is stored (never: the built-in namespaces exist).
    pub fn is_empty(&self) -> bool {
        self.lock().objects.is_empty()
    }
}

/// A server on 127.0.0.1; stops when dropped.
pub struct Served {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// A kubeconfig pointing at this server (namespace `default`, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url
        )
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Kubernetes `Status` failure.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Value,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code.as_u16(),
        });
        (self.code, axum::Json(body)).into_response()
    }
}

fn not_found(r: &Resource, name: &str) -> Failure {
    Failure {
        code: StatusCode::NOT_FOUND,
        reason: "NotFound",
        message: format!("{} \"{name}\" not found", r.qualified()),
        details: json!({"name": name, "group": r.group, "kind": r.plural}),
    }
}

fn no_resource() -> Failure {
    Failure {
        code: StatusCode::NOT_FOUND,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: json!({}),
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure {
        code: StatusCode::BAD_REQUEST,
        reason: "BadRequest",
        message: message.into(),
        details: json!({}),
    }
}

fn invalid(r: &Resource, name: &str, field: &str, message: String) -> Failure {
    Failure {
        code: StatusCode::UNPROCESSABLE_ENTITY,
        reason: "Invalid",
        message: format!("{} \"{name}\" is invalid: {field}: {message}", r.kind),
        details: json!({"name": name, "group": r.group, "kind": r.kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]}),
    }
}

fn ok(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// Parsed request target.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    /// `?dryRun=All`: every check runs, the would-be object is returned, nothing is stored.
    dry_run: bool,
}

impl World {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Establishes CRDs whose delay has passed.
    fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.pending.remove(&name);
            self.establish(&name);
        }
    }

    fn establish(&mut self, crd_name: &str) {
        let key = (
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
            String::new(),
            crd_name.to_owned(),
        );
        let Some(stored) = self.objects.get(&key) else {
            return;
        };
        let crd = stored.object.clone();
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_owned();
        let names = &spec["names"];
        let kind = names["kind"].as_str().unwrap_or_default().to_owned();
        let plural = names["plural"].as_str().unwrap_or_default().to_owned();
        let singular = names["singular"]
            .as_str()
            .map_or_else(|| kind.to_ascii_lowercase(), ToOwned::to_owned);
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        self.resources
            .retain(|r| r.crd.as_deref() != Some(crd_name));
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            self.resources.push(Resource {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or("v1").to_owned(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                status: v["subresources"]["status"].is_object(),
                crd: Some(crd_name.to_owned()),
            });
        }
        let rv = self.next_rv();
        let t = now();
        if let Some(stored) = self.objects.get_mut(&key) {
            stored.object["status"] = json!({
                "acceptedNames": names,
                "storedVersions": spec["versions"].as_array().into_iter().flatten()
                    .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            });
            stored.object["metadata"]["resourceVersion"] = json!(rv);
        }
    }

    fn find(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    fn parse(&self, segments: &[&str]) -> Result<Target, Failure> {
        let (group, version, rest) = match segments {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return Err(no_resource()),
        };
        let (namespace, plural, name) = match rest {
            [plural] => (None, *plural, None),
            ["namespaces", ns, plural] if !(group.is_empty() && *plural == "status") => {
                (Some(*ns), *plural, None)
            }
            [plural, name] => (None, *plural, Some(*name)),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            _ => return Err(no_resource()),
        };
        let resource = self.find(group, version, plural).ok_or_else(no_resource)?;
        if namespace.is_some() && !resource.namespaced {
            return Err(no_resource());
        }
        Ok(Target {
            resource,
            namespace: namespace.map(ToOwned::to_owned),
            name: name.map(ToOwned::to_owned),
            dry_run: false,
        })
    }

    /// RBAC, when on: the verbs the request needs (a server-side apply that creates the object
    /// needs `create` as well as `patch`), each allowed by some rule, or `403 Forbidden`.
    fn authorize(&self, method: &Method, t: &Target, content_type: &str) -> Result<(), Failure> {
        let Some((user, rules)) = &self.rbac else {
            return Ok(());
        };
        let mut verbs = vec![match (method, &t.name) {
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => return Ok(()),
        }];
        if let (&Method::PATCH, Some(name), "application/apply-patch+yaml") =
            (method, &t.name, content_type)
        {
            if !self.objects.contains_key(&self.key(t, name)) {
                verbs.push("create");
            }
        }
        for verb in verbs {
            let request = crate::kube_rbac::Request {
                verb,
                group: &t.resource.group,
                resource: &t.resource.plural,
                namespace: t.namespace.as_deref(),
                name: if verb == "create" {
                    None
                } else {
                    t.name.as_deref()
                },
            };
            if !rules.iter().any(|r| r.allows(&request)) {
                let what = match &t.name {
                    Some(n) if verb != "create" => format!("{} \"{n}\"", t.resource.qualified()),
                    _ => t.resource.qualified(),
                };
                let group = &t.resource.group;
                let plural = &t.resource.plural;
                let scope = match &t.namespace {
                    Some(ns) => format!(" in the namespace \"{ns}\""),
                    None if t.resource.namespaced => " at the cluster scope".to_owned(),
                    None => String::new(),
                };
                return Err(Failure {
                    code: StatusCode::FORBIDDEN,
                    reason: "Forbidden",
                    message: format!("{what} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{group}\"{scope}"),
                    details: json!({"name": t.name, "group": group, "kind": plural}),
                });
            }
        }
        Ok(())
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            ns.to_owned(),
        ))
    }
}

async fn handle(
    State(server): State<ApiServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = server.lock();
    w.requests.push(format!(
        "{method} {}{}",
        uri.path(),
        uri.query().map(|q| format!("?{q}")).unwrap_or_default()
    ));
    w.tick();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["version"]) => {
            return ok(
                StatusCode::OK,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-cplane-fake", "gitCommit": "fake",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
            )
        }
        (&Method::GET, ["api"]) => {
            return ok(
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
            )
        }
        (&Method::GET, ["apis"]) => return ok(StatusCode::OK, w.group_list()),
        (&Method::GET, ["api", v]) => return w.resource_list("", v),
        (&Method::GET, ["apis", g, v]) => return w.resource_list(g, v),
        _ => {}
    }
    let mut target = match w.parse(&segments) {
        Ok(t) => t,
        Err(f) => return f.into_response(),
    };
    // DELETE carries its DeleteOptions (`"dryRun": ["All"]`) in the body, the rest in the query.
    let body_dry_run = (method == Method::DELETE)
        .then(|| serde_json::from_slice::<Value>(&body).ok())
        .flatten()
        .and_then(|o| o.get("dryRun").cloned());
    match body_dry_run {
        None | Some(Value::Null) => {}
        Some(v) if v == json!(["All"]) => target.dry_run = true,
        Some(v) if v.as_array().is_some_and(Vec::is_empty) => {}
        Some(v) => {
            return bad_request(format!(
                "dryRun: Unsupported value: {v}: supported values: \"All\""
            ))
            .into_response()
        }
    }
    match query.get("dryRun").map(String::as_str) {
        None => {}
        Some("All") if method != Method::GET => target.dry_run = true,
        Some(other) => {
            return bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\" (on POST, PATCH and DELETE)"
            ))
            .into_response()
        }
    }
    if query.get("watch").is_some_and(|v| v == "true" || v == "1") {
        return bad_request("watch is not emulated by the fake API server").into_response();
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    if let Err(f) = w.authorize(&method, &target, &content_type) {
        return f.into_response();
    }
    let result = match (&method, &target.name) {
        (&Method::GET, None) => w.list(&target, query.get("labelSelector").map(String::as_str)),
        (&Method::GET, Some(name)) => w.get(&target, name),
        (&Method::POST, None) => w.create(&target, &body),
        (&Method::DELETE, Some(name)) => w.delete(&target, name),
        (&Method::PATCH, Some(name)) => match content_type.as_str() {
            "application/apply-patch+yaml" => {
                let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return bad_request("PATCH, fieldManager: Required value: is required for apply patch").into_response();
                };
                let force = query.get("force").is_some_and(|v| v == "true");
                w.apply(&target, name, manager, force, &body)
            }
            "application/merge-patch+json" => {
                let manager = query.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
                w.merge(&target, name, &manager, &body)
            }
            other => Err(Failure {
                code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json (got {other:?}; the fake API server does not emulate the others)"),
                details: json!({}),
            }),
        },
        _ => Err(Failure {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("the fake API server does not emulate {method} here"),
            details: json!({}),
        }),
    };
    match result {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Discovery.

impl World {
    fn group_list(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in self.resources.iter().filter(|r| !r.group.is_empty()) {
            let v = groups.entry(r.group.as_str()).or_default();
            if !v.contains(&r.version.as_str()) {
                v.push(r.version.as_str());
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    fn resource_list(&self, group: &str, version: &str) -> Response {
        let rs: Vec<&Resource> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.version == version)
            .collect();
        if rs.is_empty() {
            return no_resource().into_response();
        }
        let mut resources = Vec::new();
        for r in rs {
            resources.push(json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch"],
            }));
            if r.status {
                resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch"]}));
            }
        }
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        ok(
            StatusCode::OK,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Reads and deletes.

/// One requirement of a label selector.
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn parse_selector(s: &str) -> Result<Vec<Requirement>, Failure> {
    // Split on commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_owned())
            .collect()
    };
    let mut out = Vec::new();
    for p in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = p.split_once("!=") {
            Requirement::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once("==") {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once('=') {
            Requirement::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = p.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(v))
        } else if let Some((k, v)) = p.split_once(" in ") {
            Requirement::In(k.trim().into(), set(v))
        } else if let Some(k) = p.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else if p
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            Requirement::Exists(p.into())
        } else {
            return Err(bad_request(format!("unable to parse requirement: {p:?}")));
        };
        out.push(r);
    }
    Ok(out)
}

fn matches(reqs: &[Requirement], labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
        Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
    })
}

fn with_managed_fields(stored: &Stored) -> Value {
    let mut obj = stored.object.clone();
    if !stored.managers.is_empty() {
        let entries: Vec<Value> = stored
            .managers
            .iter()
            .filter(|(_, m)| !m.fields.is_empty())
            .map(|(name, m)| {
                json!({"manager": name, "operation": m.operation, "apiVersion": m.api_version,
                    "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&m.fields)})
            })
            .collect();
        obj["metadata"]["managedFields"] = Value::Array(entries);
    }
    obj
}

/// FieldsV1: `{"f:metadata":{"f:labels":{"f:app":{}}}}`.
fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("built as objects");
        }
    }
    Value::Object(root)
}

impl World {
    fn key(&self, t: &Target, name: &str) -> Key {
        (
            t.resource.group.clone(),
            t.resource.plural.clone(),
            t.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        )
    }

    fn get(&self, t: &Target, name: &str) -> Result<Response, Failure> {
        let stored = self
            .objects
            .get(&self.key(t, name))
            .ok_or_else(|| not_found(&t.resource, name))?;
        Ok(ok(StatusCode::OK, self.served(&t.resource, stored)))
    }

    /// The object as served at `r`'s version.
    fn served(&self, r: &Resource, stored: &Stored) -> Value {
        let mut obj = with_managed_fields(stored);
        obj["apiVersion"] = json!(r.api_version());
        obj
    }

    fn list(&self, t: &Target, selector: Option<&str>) -> Result<Response, Failure> {
        let reqs = parse_selector(selector.unwrap_or(""))?;
        let r = &t.resource;
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == r.group && *p == r.plural && t.namespace.as_ref().is_none_or(|n| n == ns)
            })
            .filter(|(_, s)| matches(&reqs, &s.object["metadata"]["labels"]))
            .map(|(_, s)| {
                // Like the real API server, list items carry no apiVersion/kind.
                let mut o = self.served(r, s);
                if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        Ok(ok(
            StatusCode::OK,
            json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
                "metadata": {"resourceVersion": self.resource_version.to_string()}, "items": items}),
        ))
    }

    fn delete(&mut self, t: &Target, name: &str) -> Result<Response, Failure> {
        let key = self.key(t, name);
        if t.dry_run {
            let stored = self
                .objects
                .get(&key)
                .ok_or_else(|| not_found(&t.resource, name))?;
            return Ok(ok(StatusCode::OK, self.served(&t.resource, stored)));
        }
        let stored = self
            .objects
            .remove(&key)
            .ok_or_else(|| not_found(&t.resource, name))?;
        let served = self.served(&t.resource, &stored);
        if t.resource.kind == "Namespace" && t.resource.group.is_empty() {
            self.objects.retain(|(_, _, ns, _), _| ns != name);
        }
        if t.resource.kind == "CustomResourceDefinition" {
            let gone: Vec<Resource> = self
                .resources
                .iter()
                .filter(|r| r.crd.as_deref() == Some(name))
                .cloned()
                .collect();
            self.resources.retain(|r| r.crd.as_deref() != Some(name));
            self.pending.remove(name);
            self.objects
                .retain(|(g, p, _, _), _| !gone.iter().any(|r| &r.group == g && &r.plural == p));
        }
        self.next_rv();
        Ok(ok(StatusCode::OK, served))
    }
}

// ---------------------------------------------------------------------------------------------
// Writes.

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Fields that identify or are set by the server, never owned by a manager.
fn is_identity(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [m, f, ..] if m == "metadata" => [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ]
        .contains(&f.as_str()),
        _ => false,
    }
}

fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                prefix.push(k.clone());
                leaves(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() && !is_identity(prefix) {
                out.insert(prefix.clone());
            }
        }
    }
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(m)) = parents.iter().try_fold(&mut *v, |v, k| v.get_mut(k)) {
        m.remove(last);
    }
    // Drop maps emptied by the removal (below the top level).
    for depth in (1..parents.len()).rev() {
        let parent = &parents[..depth];
        let key = &parents[depth];
        if let Some(Value::Object(m)) = parent.iter().try_fold(&mut *v, |v, k| v.get_mut(k)) {
            if m.get(key)
                .is_some_and(|c| c.as_object().is_some_and(Map::is_empty))
            {
                m.remove(key);
            }
        }
    }
}

fn merge_into(live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, v) in c {
                match l.get_mut(k) {
                    Some(lv) if lv.is_object() && v.is_object() => merge_into(lv, v),
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (l, c) => *l = c.clone(),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Whether the parts that make `generation` move (everything but metadata and status) differ.
fn spec_changed(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(a) != strip(b)
}

impl World {
    /// Checks a body against the URL and admission rules; returns it without server fields.
    fn admit(&self, t: &Target, name: &str, body: &Value) -> Result<Value, Failure> {
        let r = &t.resource;
        if !body.is_object() {
            return Err(bad_request("the body of the request is not a JSON object"));
        }
        if body["apiVersion"].as_str() != Some(r.api_version().as_str())
            || body["kind"].as_str() != Some(r.kind.as_str())
        {
            return Err(bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({}) or kind ({}) of {}",
                body["apiVersion"], r.api_version(), r.kind, r.qualified()
            )));
        }
        let body_name = body["metadata"]["name"].as_str().unwrap_or("");
        if body_name != name {
            return Err(bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = body["metadata"]["namespace"].as_str();
        if let (Some(b), Some(u)) = (body_ns, &t.namespace) {
            if b != u {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let valid_name = if r.kind == "Namespace" {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if !valid_name {
            return Err(invalid(r, name, "metadata.name", format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                if r.kind == "Namespace" { "label" } else { "subdomain" }
            )));
        }
        if let Some(labels) = body["metadata"]["labels"].as_object() {
            for (k, v) in labels {
                let v = v.as_str().unwrap_or("\u{0}");
                if !is_label_value(v) {
                    return Err(invalid(r, name, &format!("metadata.labels: Invalid value: {v:?}"), format!(
                        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (label {k})"
                    )));
                }
            }
        }
        if r.namespaced {
            let ns = t.namespace.as_deref().unwrap_or("");
            if !self.namespace_exists(ns) {
                return Err(Failure {
                    code: StatusCode::NOT_FOUND,
                    reason: "NotFound",
                    message: format!("namespaces \"{ns}\" not found"),
                    details: json!({"name": ns, "kind": "namespaces"}),
                });
            }
        }
        let mut obj = body.clone();
        if r.status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        if let Some(m) = obj["metadata"].as_object_mut() {
            for f in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
            ] {
                m.remove(f);
            }
        }
        Ok(obj)
    }

    /// Stores a new object; returns it as served.
    fn insert_new(
        &mut self,
        t: &Target,
        name: &str,
        mut obj: Value,
        manager: &str,
        operation: &'static str,
    ) -> Value {
        // A dry-run create has no resourceVersion: nothing is stored.
        let rv = (!t.dry_run).then(|| self.next_rv());
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("admitted objects have metadata");
        meta.insert("uid".into(), json!(uid()));
        if let Some(rv) = rv {
            meta.insert("resourceVersion".into(), json!(rv));
        }
        meta.insert("creationTimestamp".into(), json!(now()));
        if let Some(ns) = &t.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        if t.resource.status {
            meta.insert("generation".into(), json!(1));
        }
        let mut fields = BTreeSet::new();
        leaves(&obj, &mut Vec::new(), &mut fields);
        if t.resource.kind == "Namespace" && t.resource.group.is_empty() {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["status"] = json!({"phase": "Active"});
        }
        let mut managers = BTreeMap::new();
        managers.insert(
            manager.to_owned(),
            Manager {
                operation,
                api_version: t.resource.api_version(),
                time: now(),
                fields,
            },
        );
        let key = self.key(t, name);
        let stored = Stored {
            object: obj,
            managers,
        };
        let served = self.served(&t.resource, &stored);
        if t.dry_run {
            return served;
        }
        self.objects.insert(key, stored);
        self.after_write(t, name);
        served
    }

    /// Side effects of writing some kinds (CRDs get established).
    fn after_write(&mut self, t: &Target, name: &str) {
        if t.resource.kind == "CustomResourceDefinition"
            && t.resource.group == "apiextensions.k8s.io"
        {
            let established = self
                .objects
                .get(&self.key(t, name))
                .and_then(|s| s.object["status"]["conditions"].as_array().cloned())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if established {
                self.establish(name); // spec may have changed: re-register its versions
            } else if self.crd_delay.is_zero() {
                self.establish(name);
            } else {
                self.pending
                    .entry(name.to_owned())
                    .or_insert_with(|| Instant::now() + self.crd_delay);
            }
        }
    }

    fn create(&mut self, t: &Target, body: &Bytes) -> Result<Response, Failure> {
        let body: Value = serde_json::from_slice(body).map_err(|e| bad_request(e.to_string()))?;
        let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let obj = self.admit(t, &name, &body)?;
        if self.objects.contains_key(&self.key(t, &name)) {
            return Err(Failure {
                code: StatusCode::CONFLICT,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", t.resource.qualified()),
                details: json!({"name": name, "group": t.resource.group, "kind": t.resource.plural}),
            });
        }
        Ok(ok(
            StatusCode::CREATED,
            self.insert_new(t, &name, obj, "unknown", "Update"),
        ))
    }

    fn apply(
        &mut self,
        t: &Target,
        name: &str,
        manager: &str,
        force: bool,
        body: &Bytes,
    ) -> Result<Response, Failure> {
        let config: Value = serde_yaml::from_slice(body)
            .map_err(|e| bad_request(format!("error decoding YAML: {e}")))?;
        let config = self.admit(t, name, &config)?;
        let key = self.key(t, name);
        let Some(stored) = self.objects.get(&key).cloned() else {
            return Ok(ok(
                StatusCode::CREATED,
                self.insert_new(t, name, config, manager, "Apply"),
            ));
        };
        let mut applied = BTreeSet::new();
        leaves(&config, &mut Vec::new(), &mut applied);
        let mut managers = stored.managers.clone();
        // Conflicts: fields another manager owns, with a different value.
        let mut conflicts = Vec::new();
        for (other, m) in managers.iter_mut().filter(|(n, _)| n.as_str() != manager) {
            let taken: Vec<FieldPath> = m
                .fields
                .iter()
                .filter(|p| applied.contains(*p) && at(&stored.object, p) != at(&config, p))
                .cloned()
                .collect();
            for p in taken {
                conflicts.push(format!("conflict with {other:?}: .{}", p.join(".")));
                if force {
                    m.fields.remove(&p);
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(Failure {
                code: StatusCode::CONFLICT,
                reason: "Conflict",
                message: format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join("; ")
                ),
                details: json!({"name": name, "group": t.resource.group, "kind": t.resource.plural,
                    "causes": conflicts.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": c})).collect::<Vec<_>>()}),
            });
        }
        // Fields this manager applied before and no longer applies, owned by nobody else, go.
        let mut object = stored.object.clone();
        let before = managers
            .get(manager)
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        for p in before.difference(&applied) {
            if !managers
                .iter()
                .any(|(n, m)| n != manager && m.fields.contains(p))
            {
                remove_path(&mut object, p);
            }
        }
        merge_into(&mut object, &config);
        managers.retain(|_, m| !m.fields.is_empty());
        managers.insert(
            manager.to_owned(),
            Manager {
                operation: "Apply",
                api_version: t.resource.api_version(),
                time: now(),
                fields: applied,
            },
        );
        Ok(ok(
            StatusCode::OK,
            self.update(t, name, &stored, object, managers),
        ))
    }

    fn merge(
        &mut self,
        t: &Target,
        name: &str,
        manager: &str,
        body: &Bytes,
    ) -> Result<Response, Failure> {
        let patch: Value = serde_json::from_slice(body).map_err(|e| bad_request(e.to_string()))?;
        let key = self.key(t, name);
        let stored = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(&t.resource, name))?;
        let mut object = stored.object.clone();
        merge_patch(&mut object, &patch);
        let mut check = object.clone();
        check["apiVersion"] = json!(t.resource.api_version());
        let object = {
            let mut admitted = self.admit(t, name, &check)?;
            for f in ["uid", "resourceVersion", "creationTimestamp", "generation"] {
                admitted["metadata"][f] = stored.object["metadata"][f].clone();
            }
            if t.resource.status {
                admitted["status"] = stored.object["status"].clone();
            }
            admitted
        };
        let mut set = BTreeSet::new();
        leaves(&patch, &mut Vec::new(), &mut set);
        let mut managers = stored.managers.clone();
        for m in managers.values_mut() {
            m.fields
                .retain(|p| !set.iter().any(|s| p.starts_with(s) || s.starts_with(p)));
        }
        let changed: BTreeSet<FieldPath> = set
            .into_iter()
            .filter(|p| at(&patch, p).is_some_and(|v| !v.is_null()))
            .collect();
        let entry = managers
            .entry(manager.to_owned())
            .or_insert_with(|| Manager {
                operation: "Update",
                api_version: t.resource.api_version(),
                time: now(),
                fields: BTreeSet::new(),
            });
        entry.fields.extend(changed);
        entry.time = now();
        managers.retain(|_, m| !m.fields.is_empty());
        Ok(ok(
            StatusCode::OK,
            self.update(t, name, &stored, object, managers),
        ))
    }

    /// Stores an updated object: a new resourceVersion (and generation) only when it changed.
    fn update(
        &mut self,
        t: &Target,
        name: &str,
        old: &Stored,
        mut object: Value,
        mut managers: BTreeMap<String, Manager>,
    ) -> Value {
        let key = self.key(t, name);
        let fields_changed = managers
            .iter()
            .map(|(n, m)| (n, &m.fields))
            .ne(old.managers.iter().map(|(n, m)| (n, &m.fields)));
        if object == old.object && !fields_changed {
            // A no-op: nothing is written (real SSA does not bump resourceVersion either).
            let stored = Stored {
                object: old.object.clone(),
                managers: old.managers.clone(),
            };
            return self.served(&t.resource, &stored);
        }
        if object != old.object {
            if t.resource.status && spec_changed(&object, &old.object) {
                let g = old.object["metadata"]["generation"].as_i64().unwrap_or(1);
                object["metadata"]["generation"] = json!(g + 1);
            }
        } else {
            // Only ownership moved: keep the old timestamps of untouched managers.
            for (n, m) in &mut managers {
                if let Some(o) = old.managers.get(n) {
                    if o.fields == m.fields {
                        m.time.clone_from(&o.time);
                    }
                }
            }
        }
        if t.dry_run {
            // The would-be object, at the live resourceVersion: nothing is stored.
            let stored = Stored { object, managers };
            return self.served(&t.resource, &stored);
        }
        object["metadata"]["resourceVersion"] = json!(self.next_rv());
        let stored = Stored { object, managers };
        let served = self.served(&t.resource, &stored);
        self.objects.insert(key, stored);
        self.after_write(t, name);
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "bff", "tier": "web"});
        let m = |s: &str| matches(&parse_selector(s).expect("parses"), &labels);
        assert!(m("app=bff"));
        assert!(m("app==bff,tier"));
        assert!(!m("app!=bff"));
        assert!(m("tier in (web, api)"));
        assert!(!m("tier notin (web)"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m(""));
    }

    #[test]
    fn names_and_label_values() {
        assert!(is_dns_subdomain("bff.example-1"));
        assert!(!is_dns_subdomain("Bad_Name"));
        assert!(!is_dns_label("a.b"));
        assert!(is_label_value("w-acme"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"a".repeat(64)));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            decode("cplane.io%2Fcluster%3Dw-acme"),
            "cplane.io/cluster=w-acme"
        );
        assert_eq!(decode("a+b%"), "a b%");
    }
}
