//! Rendering: stack templates (minijinja) → per-cluster bundles of Kubernetes objects.
//!
//! Guarantees:
//! - **Strict**: an undefined variable or attribute is an error, never an empty string.
//! - **Sandboxed**: each stack gets its own template environment holding only that stack's
//!   templates, so `include`/`import` can reach nothing else; execution is bounded by fuel.
//! - **Checked**: every rendered document must be a Kubernetes object (`apiVersion`, `kind`,
//!   `metadata.name`); an object may appear only once per cluster.
//! - **Deterministic**: objects are sorted (Namespaces, then CRDs, then by kind, namespace,
//!   name), keys are sorted, and the bundle's canonical YAML is hashed into a `sha256:` digest.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use cplane_schema::domain::workspace_name;
use cplane_schema::model::{deep_merge, RegionStatus, StackTarget};
use cplane_schema::validate::{is_partial, names_for};
use cplane_schema::{Diagnostic, Model, Pos};
use minijinja::value::Value;
use minijinja::{context, AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Instruction budget for one template render: generous for real manifests, finite for loops
/// that would never end.
const FUEL: u64 = 5_000_000;

/// Label cplane puts on every object it renders.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cplane");
/// Inventory label: the cluster an object belongs to (the agent prunes by it).
pub const CLUSTER_LABEL: &str = "cplane.io/cluster";
/// Annotation naming the stack an object comes from.
pub const STACK_ANNOTATION: &str = "cplane.io/stack";

/// Platform clusters run the platform stacks; tenant clusters (one per workspace) the tenant ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    /// `{env}-{region}`, one per live region × environment.
    Platform,
    /// `w-{id}`, one per workspace.
    Tenant,
}

/// A cluster cplane renders a bundle for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    /// `prod-sgp-1`, `w-acme`.
    pub id: String,
    /// Platform or tenant.
    pub kind: ClusterKind,
    /// Region id.
    pub region: String,
    /// Environment name.
    pub environment: String,
    /// Workspace id (tenant clusters).
    #[serde(skip)]
    pub workspace: Option<String>,
}

/// Every cluster of the model: platform clusters of live regions first, then workspaces of live
/// regions, each group sorted by id.
pub fn clusters(model: &Model) -> Vec<Cluster> {
    let mut out = Vec::new();
    for (id, region) in &model.regions {
        if region.doc.spec.status != RegionStatus::Live {
            continue;
        }
        for env in &region.doc.spec.environments {
            out.push(Cluster {
                id: format!("{env}-{id}"),
                kind: ClusterKind::Platform,
                region: id.clone(),
                environment: env.clone(),
                workspace: None,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    for (id, ws) in &model.workspaces {
        let live = model
            .regions
            .get(&ws.doc.spec.region)
            .is_some_and(|r| r.doc.spec.status == RegionStatus::Live);
        if live {
            out.push(Cluster {
                id: workspace_name(id),
                kind: ClusterKind::Tenant,
                region: ws.doc.spec.region.clone(),
                environment: ws.doc.spec.environment.clone(),
                workspace: Some(id.clone()),
            });
        }
    }
    out
}

/// One rendered Kubernetes object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Stack it comes from.
    pub stack: String,
    /// Template path in the repo.
    pub template: String,
    /// The object, keys sorted.
    pub value: serde_json::Value,
}

/// A cluster's rendered bundle.
///
/// Its canonical form ([`Bundle::canonical`]) is JSON Lines: one object per line, compact,
/// keys sorted, objects in apply order. The digest is the SHA-256 of exactly those bytes, so
/// anyone holding a bundle can check it. [`Bundle::to_yaml`] is the same content for people.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Cluster id.
    pub cluster: String,
    /// Objects in apply order.
    pub objects: Vec<Object>,
    /// `sha256:<hex>` of the canonical form.
    pub digest: String,
}

impl Bundle {
    /// The canonical bytes: one compact JSON object per line (keys sorted), in apply order.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str(&serde_json::to_string(&o.value).expect("JSON values serialize"));
            out.push('\n');
        }
        out
    }

    /// The bundle as multi-document YAML (keys sorted, apply order), for people and `kubectl`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&o.value).expect("JSON values serialize to YAML"));
        }
        out
    }
}

/// Compiled templates of every stack, shareable between threads and renderers.
#[derive(Clone)]
pub struct Compiled(Arc<BTreeMap<String, Environment<'static>>>);

/// Compiled templates of every stack.
pub struct Renderer<'m> {
    model: &'m Model,
    envs: Arc<BTreeMap<String, Environment<'static>>>,
    cache: ParseCache,
}

impl<'m> Renderer<'m> {
    /// Compiles every stack's templates; syntax errors come back as diagnostics (the stack is
    /// then skipped when rendering).
    pub fn new(model: &'m Model) -> (Self, Vec<Diagnostic>) {
        let mut envs = BTreeMap::new();
        let mut diags = Vec::new();
        for (name, stack) in &model.stacks {
            let mut env = Environment::new();
            env.set_undefined_behavior(UndefinedBehavior::Strict);
            env.set_auto_escape_callback(|_| AutoEscape::None);
            env.set_fuel(Some(FUEL));
            env.set_recursion_limit(64);
            env.set_keep_trailing_newline(true);
            let dir = format!("stacks/{}/templates/", stack.entity.path_id);
            let join_dir = dir.clone();
            env.set_path_join_callback(move |name, _parent| format!("{join_dir}{name}").into());
            env.add_function("host", host);
            env.add_function("bucket", bucket);
            let mut ok = true;
            for (path, source) in &stack.templates {
                if let Err(err) = env.add_template_owned(path.clone(), source.to_string()) {
                    diags.push(template_diag(&err, path, &stack.templates));
                    ok = false;
                }
            }
            if ok {
                envs.insert(name.clone(), env);
            }
        }
        (
            Self {
                model,
                envs: Arc::new(envs),
                cache: ParseCache::default(),
            },
            diags,
        )
    }

    /// The compiled templates, to make more renderers of the same stacks without compiling
    /// again ([`Renderer::with_compiled`]).
    pub fn compiled(&self) -> Compiled {
        Compiled(self.envs.clone())
    }

    /// A renderer of `model` with templates compiled before, from a model with the same stacks
    /// (the API writer renders changed workspaces against an unchanged base).
    pub fn with_compiled(model: &'m Model, compiled: &Compiled) -> Self {
        Self {
            model,
            envs: compiled.0.clone(),
            cache: ParseCache::default(),
        }
    }

    /// Renders one cluster's bundle, or every problem found in it.
    pub fn render(&self, cluster: &Cluster) -> Result<Bundle, Vec<Diagnostic>> {
        self.render_with(cluster, None)
    }

    /// [`Renderer::render`], with a tenant cluster's workspace given rather than read from the
    /// model (the API writer renders a changed workspace against the unchanged rest).
    pub fn render_with(
        &self,
        cluster: &Cluster,
        given: Option<&cplane_schema::load::Entity<cplane_schema::model::Workspace>>,
    ) -> Result<Bundle, Vec<Diagnostic>> {
        let model = self.model;
        let names = names_for(model, &cluster.region, &cluster.environment);
        let platform = &model.platform.doc;
        let region = model
            .regions
            .get(&cluster.region)
            .expect("clusters() only yields existing regions");
        let production = cluster.environment == platform.spec.production_environment;

        let mut domains = BTreeMap::from([
            ("regional", names.regional_domain()),
            ("cplane", names.service_host("cplane")),
            ("auth", names.service_host("auth")),
            ("temporal", names.service_host("temporal")),
            ("grafana", names.service_host("grafana")),
        ]);
        let mut workspace = Value::UNDEFINED;
        let mut enabled: BTreeMap<&str, Option<&BTreeMap<String, serde_json::Value>>> =
            BTreeMap::new();
        match (&cluster.kind, &cluster.workspace) {
            (ClusterKind::Tenant, Some(id)) => {
                let ws = match given {
                    Some(w) => w,
                    None => &model.workspaces[id],
                };
                domains.insert("zone", names.workspace_zone(id));
                domains.insert("wildcard", names.workspace_wildcard(id));
                domains.insert("bff", names.workspace_host(id, "bff"));
                domains.insert("app", names.workspace_host(id, "app"));
                workspace = context! {
                    id => id,
                    name => workspace_name(id),
                    account => ws.doc.spec.account,
                    awsAccountId => ws.doc.spec.aws.account_id,
                };
                for (name, stack) in &model.stacks {
                    let spec = &stack.entity.doc.spec;
                    if spec.target == StackTarget::Tenant && spec.required {
                        enabled.insert(name, None);
                    }
                }
                for sref in &ws.doc.spec.stacks {
                    enabled.insert(&sref.name, Some(&sref.values));
                }
            }
            _ => {
                for (name, stack) in &model.stacks {
                    if stack.entity.doc.spec.target == StackTarget::Platform {
                        enabled.insert(name, None);
                    }
                }
            }
        }
        let base = context! {
            platform => context! {
                name => platform.metadata.name,
                baseDomain => platform.spec.base_domain,
                primaryRegion => platform.spec.primary_region,
                bucketPrefix => platform.spec.bucket_prefix,
            },
            region => context! {
                id => cluster.region,
                displayName => region.doc.spec.display_name,
                awsRegion => region.doc.spec.aws_region,
                status => Value::from_serialize(region.doc.spec.status),
                primary => cluster.region == platform.spec.primary_region,
            },
            environment => context! { name => cluster.environment, production => production },
            cluster => context! { id => cluster.id, kind => Value::from_serialize(cluster.kind) },
            vars => Value::from_serialize(names.cluster_vars()),
            domains => Value::from_serialize(&domains),
            workspace => workspace,
        };

        let mut objects = Vec::new();
        let mut diags = Vec::new();
        for (name, overrides) in enabled {
            let Some(stack) = model.stacks.get(name) else {
                continue; // reported by validation
            };
            let Some(env) = self.envs.get(name) else {
                continue; // syntax errors, reported by Renderer::new
            };
            let spec = &stack.entity.doc.spec;
            let mut values = serde_json::Value::Object(
                spec.values
                    .iter()
                    .filter_map(|(k, d)| d.default.clone().map(|v| (k.clone(), v)))
                    .collect(),
            );
            if let Some(overrides) = overrides {
                let overrides = serde_json::to_value(overrides).expect("JSON values serialize");
                deep_merge(&mut values, &overrides);
            }
            let ctx = context! {
                stack => context! { name => name, version => spec.version },
                values => Value::from_serialize(&values),
                ..base.clone()
            };
            for path in stack.templates.keys().filter(|p| !is_partial(p)) {
                let tmpl = env
                    .get_template(path)
                    .expect("every template was added to its stack's environment");
                match tmpl.render(&ctx) {
                    Ok(text) => {
                        if let Err(d) = parse_objects(
                            &text,
                            name,
                            path,
                            &stack.templates[path],
                            cluster,
                            &self.cache,
                            &mut objects,
                        ) {
                            diags.push(d);
                        }
                    }
                    Err(err) => diags.push(template_diag(&err, path, &stack.templates)),
                }
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        canonical_bundle(cluster, objects)
    }

    /// Renders every cluster in parallel, in [`clusters`] order.
    pub fn render_all(&self, clusters: &[Cluster]) -> Vec<Result<Bundle, Vec<Diagnostic>>> {
        clusters.par_iter().map(|c| self.render(c)).collect()
    }
}

/// `host(service)`: the service's host name in this cluster's naming scope — the workspace zone
/// on tenant clusters (`trino.w-acme.sgp-1.cogrion.com`), the regional domain on platform
/// clusters (`grafana.dev.sgp-1.cogrion.com`).
fn host(state: &State, service: &str) -> Result<String, minijinja::Error> {
    check_label("host", service)?;
    let domains = state
        .lookup("domains")
        .ok_or_else(|| minijinja::Error::new(ErrorKind::UndefinedError, "domains"))?;
    let zone = domains.get_attr("zone")?;
    let suffix = if zone.is_undefined() {
        domains.get_attr("regional")?
    } else {
        zone
    };
    Ok(format!("{service}.{suffix}"))
}

/// `bucket(purpose)`: the regional bucket `{prefix}-{env}-{region}-{purpose}` (operator account).
fn bucket(state: &State, purpose: &str) -> Result<String, minijinja::Error> {
    check_label("bucket", purpose)?;
    let get = |var: &str, attr: &str| -> Result<String, minijinja::Error> {
        let v = state
            .lookup(var)
            .ok_or_else(|| minijinja::Error::new(ErrorKind::UndefinedError, var.to_owned()))?;
        Ok(v.get_attr(attr)?.to_string())
    };
    Ok(format!(
        "{}-{}-{}-{purpose}",
        get("platform", "bucketPrefix")?,
        get("environment", "name")?,
        get("region", "id")?
    ))
}

fn check_label(func: &str, arg: &str) -> Result<(), minijinja::Error> {
    if cplane_schema::domain::is_dns_label(arg) {
        Ok(())
    } else {
        Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("{func}(): `{arg}` is not a DNS label"),
        ))
    }
}

/// A minijinja error as a diagnostic on the template (or partial) where it happened.
fn template_diag(
    err: &minijinja::Error,
    fallback: &str,
    sources: &BTreeMap<String, Arc<str>>,
) -> Diagnostic {
    // An error inside an include or import is wrapped; report the innermost one, where it is.
    let mut err = err;
    while let Some(inner) =
        std::error::Error::source(err).and_then(|e| e.downcast_ref::<minijinja::Error>())
    {
        err = inner;
    }
    let file = err.name().unwrap_or(fallback).to_owned();
    let line = err.line().unwrap_or(1);
    let column = match (err.range(), sources.get(&file)) {
        (Some(range), Some(src)) if range.start <= src.len() => {
            let before = &src[..range.start];
            before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1
        }
        _ => 1,
    };
    let mut text = err.kind().to_string();
    if let Some(detail) = err.detail() {
        let _ = write!(text, ": {detail}");
    } else if let (Some(range), Some(src)) = (err.range(), sources.get(&file)) {
        // minijinja says only "undefined value"; name the expression it was about.
        if let Some(expr) = src.get(range) {
            let _ = write!(text, ": `{expr}`");
        }
    }
    Diagnostic::new(&file, Pos { line, column }, "", text)
}

/// Where the `n`th document (0-based) of a template starts: the line after its `n`th `---`
/// separator. Exact for templates whose documents are not produced by loops; otherwise line 1.
fn document_line(template: &str, n: usize) -> usize {
    if n == 0 {
        return 1;
    }
    template
        .lines()
        .enumerate()
        .filter(|(_, l)| is_marker(l))
        .nth(n - 1)
        .map_or(1, |(i, _)| i + 2)
}

/// A `---` document start (possibly followed by content) or a `...` document end, at column 0.
/// YAML forbids both inside scalars, so splitting on them is exact.
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches('\r');
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "..."
}

/// Splits rendered output into documents: `(first line in the output, text)`. A blank leading
/// chunk (before the first `---`) is not a document.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_marker(line.trim_end_matches('\n')) && offset > start {
            docs.push((start_line, &text[start..offset]));
            start = offset;
            start_line = i + 1;
        }
        if line.trim_end() == "..." {
            // A document end marker belongs to no document.
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    let is_blank = |d: &str| {
        d.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || is_marker(l))
    };
    if docs.len() > 1 && is_blank(docs[0].1) && !docs[0].1.trim_start().starts_with("---") {
        docs.remove(0);
    }
    docs
}

/// The outcome of parsing one rendered document, cached by its exact text.
enum ParsedDoc {
    Object(serde_json::Value),
    /// Message, and the line within the document it concerns (0 when unknown).
    Invalid(String, usize),
}

/// Rendered documents parsed once per render pass: many documents (Namespaces, Services,
/// RBAC, ...) come out byte-identical in thousands of clusters, and YAML parsing is the
/// expensive part of rendering. Keyed by the SHA-256 of the text (a hit is exact for all
/// practical purposes). A document is kept only from its second sighting on, so the cache never
/// holds the (mostly unique) per-workspace documents: memory stays flat on large repos.
#[derive(Default)]
struct ParseCache {
    shards: [Mutex<CacheShard>; 16],
}

/// Document digest → parsed document, or `None` when seen only once so far.
type CacheShard = HashMap<[u8; 32], Option<Arc<ParsedDoc>>>;

impl ParseCache {
    fn get(&self, doc: &str) -> Arc<ParsedDoc> {
        let key: [u8; 32] = Sha256::digest(doc.as_bytes()).into();
        let shard = &self.shards[usize::from(key[0]) % 16];
        let seen = match shard.lock().expect("cache lock").get(&key) {
            Some(Some(hit)) => return hit.clone(),
            Some(None) => true,
            None => false,
        };
        let parsed = Arc::new(parse_document(doc));
        shard
            .lock()
            .expect("cache lock")
            .insert(key, seen.then(|| parsed.clone()));
        parsed
    }
}

fn parse_document(doc: &str) -> ParsedDoc {
    let value = match serde_yaml::from_str::<serde_json::Value>(doc) {
        Ok(v) => v,
        Err(err) => {
            let line = err.location().map_or(0, |l| l.line());
            return ParsedDoc::Invalid(
                format!(
                    "rendered output is not valid YAML: {}",
                    strip_location(&err.to_string())
                ),
                line,
            );
        }
    };
    if value.is_null() {
        return ParsedDoc::Invalid(
            "empty document: every document must be a Kubernetes object".into(),
            0,
        );
    }
    let non_empty = |p: &str| {
        value
            .pointer(p)
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty())
    };
    let missing = [
        ("/apiVersion", "apiVersion"),
        ("/kind", "kind"),
        ("/metadata/name", "metadata.name"),
    ]
    .into_iter()
    .find(|(pointer, _)| !non_empty(pointer))
    .map(|(_, field)| field);
    if let Some(field) = missing {
        return ParsedDoc::Invalid(
            format!("rendered document is not a Kubernetes object: missing `{field}` (a non-empty string)"),
            0,
        );
    }
    for field in ["labels", "annotations"] {
        if value["metadata"].get(field).is_some_and(|v| !v.is_object()) {
            return ParsedDoc::Invalid(format!("metadata.{field} must be a map"), 0);
        }
    }
    ParsedDoc::Object(value)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename the list
fn parse_objects(
    text: &str,
    stack: &str,
    path: &str,
    source: &str,
    cluster: &Cluster,
    cache: &ParseCache,
    objects: &mut Vec<Object>,
) -> Result<(), Diagnostic> {
    if text.trim().is_empty() {
        return Ok(()); // a template may render nothing (e.g. a disabled feature)
    }
    let at = |n: usize, msg: String| {
        Diagnostic::new(
            path,
            Pos {
                line: document_line(source, n),
                column: 1,
            },
            "",
            format!("{msg} (rendered document {})", n + 1),
        )
    };
    if let Err(d) = cplane_schema::load::refuse_deep_flow_nesting(path, text) {
        return Err(at(
            0,
            format!("rendered output: {} (rendered line {})", d.message, d.line),
        ));
    }
    for (n, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        let mut value = match &*cache.get(doc) {
            ParsedDoc::Object(v) => v.clone(),
            ParsedDoc::Invalid(msg, 0) => return Err(at(n, msg.clone())),
            ParsedDoc::Invalid(msg, line) => {
                return Err(at(
                    n,
                    format!("{msg} (rendered line {})", first_line + line - 1),
                ))
            }
        };
        let meta = value
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .expect("checked by parse_document");
        if let Some(labels) = meta
            .entry("labels")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
        {
            labels
                .entry(MANAGED_BY.0)
                .or_insert_with(|| MANAGED_BY.1.into());
            labels.insert(CLUSTER_LABEL.into(), cluster.id.clone().into());
        }
        if let Some(annotations) = meta
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
        {
            annotations.insert(STACK_ANNOTATION.into(), stack.into());
        }
        objects.push(Object {
            stack: stack.to_owned(),
            template: path.to_owned(),
            value,
        });
    }
    Ok(())
}

fn strip_location(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// Namespaces, then CRDs, then everything else.
fn kind_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        _ => 2,
    }
}

/// Identity of an object in a cluster: API group, kind, namespace, name.
pub fn object_key(v: &serde_json::Value) -> (u8, String, String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let api_version = s("/apiVersion");
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(g, _)| g)
        .to_owned();
    let kind = s("/kind");
    (
        kind_rank(&kind),
        kind,
        s("/metadata/namespace"),
        s("/metadata/name"),
        group,
    )
}

fn canonical_bundle(
    cluster: &Cluster,
    mut objects: Vec<Object>,
) -> Result<Bundle, Vec<Diagnostic>> {
    objects.sort_by_cached_key(|o| object_key(&o.value));
    let mut diags = Vec::new();
    for pair in objects.windows(2) {
        if object_key(&pair[0].value) == object_key(&pair[1].value) {
            let (_, kind, ns, name, _) = object_key(&pair[1].value);
            let ns = if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}/")
            };
            diags.push(Diagnostic::file(
                &pair[1].template,
                format!("{kind} {ns}{name} is also rendered by {}; an object may be defined once per cluster", pair[0].template),
            ));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut hasher = HashWriter(Sha256::new());
    for o in &objects {
        serde_json::to_writer(&mut hasher, &o.value).expect("hashing cannot fail");
        hasher.0.update(b"\n");
    }
    let digest = format!("sha256:{}", hex::encode(hasher.0.finalize()));
    Ok(Bundle {
        cluster: cluster.id.clone(),
        objects,
        digest,
    })
}

/// Feeds serialized bytes straight into the hash, without building the string.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Folds the same problem found in many clusters into one diagnostic, naming the clusters.
pub fn group(errors: Vec<(String, Diagnostic)>) -> Vec<Diagnostic> {
    let mut by_problem: BTreeMap<Diagnostic, Vec<String>> = BTreeMap::new();
    for (cluster, diagnostic) in errors {
        by_problem.entry(diagnostic).or_default().push(cluster);
    }
    by_problem
        .into_iter()
        .map(|(mut d, clusters)| {
            let _ = match clusters.len() {
                1 => write!(d.message, " [cluster {}]", clusters[0]),
                n => write!(d.message, " [clusters {} and {} more]", clusters[0], n - 1),
            };
            d
        })
        .collect()
}
