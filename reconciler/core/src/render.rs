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
use minijinja::value::{Enumerator, Kwargs, Value, ValueKind};
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
    let mut out = Vec::with_capacity(model.workspaces.len() + 2 * model.regions.len());
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
pub struct Compiled {
    envs: Arc<BTreeMap<String, Environment<'static>>>,
    /// The platform name the environments' `labels()` were made with.
    platform: String,
}

/// Compiled templates of every stack.
pub struct Renderer<'m> {
    model: &'m Model,
    envs: Arc<BTreeMap<String, Environment<'static>>>,
    /// Template variables of each region × environment, made once.
    scopes: HashMap<(String, String), Scope>,
    /// Template variables of each stack, made once.
    stacks: HashMap<&'m str, PreparedStack<'m>>,
    cache: ParseCache,
    lines: LineCache,
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
            env.add_filter("tojson", tojson);
            env.add_function("host", host);
            env.add_function("bucket", bucket);
            let standard = Arc::new(StandardLabels::new(name, &model.platform.doc.metadata.name));
            let of = standard.clone();
            env.add_function("labels", move |component: &str| {
                of.map("labels", component, true)
            });
            env.add_function("selector", move |component: &str| {
                standard.map("selector", component, false)
            });
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
                scopes: Scope::all(model),
                stacks: PreparedStack::all(model),
                cache: ParseCache::default(),
                lines: LineCache::default(),
            },
            diags,
        )
    }

    /// The compiled templates, to make more renderers of the same stacks without compiling
    /// again ([`Renderer::with_compiled`]).
    pub fn compiled(&self) -> Compiled {
        Compiled {
            envs: self.envs.clone(),
            platform: self.model.platform.doc.metadata.name.clone(),
        }
    }

    /// A renderer of `model` with templates compiled before, from a model with the same stacks
    /// (the API writer renders changed workspaces against an unchanged base). Should the
    /// platform's name differ from the one they were compiled with (it is built into
    /// `labels()`), they are compiled again.
    pub fn with_compiled(model: &'m Model, compiled: &Compiled) -> Self {
        if model.platform.doc.metadata.name != compiled.platform {
            return Self::new(model).0;
        }
        Self {
            model,
            envs: compiled.envs.clone(),
            scopes: Scope::all(model),
            stacks: PreparedStack::all(model),
            cache: ParseCache::default(),
            lines: LineCache::default(),
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
        let mut objects = Vec::new();
        let mut diags = Vec::new();
        self.outputs(cluster, given, |output| {
            match output {
                Ok(out) => {
                    if let Err(d) = parse_objects(&out, cluster, &self.cache, &mut objects) {
                        diags.push(d);
                    }
                }
                Err(d) => diags.push(d),
            }
            true
        });
        if !diags.is_empty() {
            return Err(diags);
        }
        canonical_bundle(cluster, objects)
    }

    /// The digest and object count of a cluster's bundle: the same as [`Renderer::render`]'s,
    /// faster. Tenant documents are looked up as canonical lines in their generalized form
    /// ([`Generalizer`], [`LineCache`]), so a document seen before is neither parsed nor
    /// serialized again; the bundle itself is not built. Whatever the fast route cannot vouch
    /// for (platform clusters, errors, documents that do not generalize) goes through
    /// [`Renderer::render`].
    pub fn digest(&self, cluster: &Cluster) -> Result<(String, usize), Vec<Diagnostic>> {
        match self.fast_digest(cluster) {
            Some(digest) => Ok(digest),
            None => self.render(cluster).map(|b| (b.digest, b.objects.len())),
        }
    }

    /// [`Renderer::digest`] by canonical lines, or `None` where that route cannot vouch for
    /// the result.
    fn fast_digest(&self, cluster: &Cluster) -> Option<(String, usize)> {
        let id = cluster.workspace.as_deref()?;
        let generalizer = Generalizer::new(id)?;
        let general_cluster = cluster.id.replace(id, &generalizer.placeholder);
        let placeholder = generalizer.placeholder.as_str();
        // Each document's line (shared with the cache) and, where its key holds the
        // placeholder, the key with the id back.
        let mut lines: Vec<(Arc<Line>, Option<ObjectKey>)> = Vec::new();
        let mut sound = true;
        self.outputs(cluster, None, |output| {
            sound = output.is_ok_and(|out| {
                split_documents(&out.text).into_iter().all(|(_, doc)| {
                    let Some(at) = generalizer.occurrences(doc) else {
                        return false;
                    };
                    let line = self.lines.get(
                        doc,
                        &at,
                        placeholder,
                        out.stack,
                        &general_cluster,
                        |text| {
                            canonical_line(
                                &self.cache,
                                text,
                                out.stack,
                                &general_cluster,
                                placeholder,
                            )
                        },
                    );
                    match line {
                        Some(line) if !(line.needs_plain_id && could_be_non_string(id)) => {
                            let key = line.key_has_placeholder.then(|| {
                                let back = |s: &str| s.replace(placeholder, id);
                                let (rank, kind, namespace, name, group) = &line.key;
                                (*rank, back(kind), back(namespace), back(name), back(group))
                            });
                            lines.push((line, key));
                            true
                        }
                        _ => false,
                    }
                })
            });
            sound
        });
        if !sound {
            return None;
        }
        fn key_of((line, key): &(Arc<Line>, Option<ObjectKey>)) -> &ObjectKey {
            key.as_ref().unwrap_or(&line.key)
        }
        lines.sort_unstable_by(|a, b| key_of(a).cmp(key_of(b)));
        if lines
            .windows(2)
            .any(|pair| key_of(&pair[0]) == key_of(&pair[1]))
        {
            return None; // a duplicate object: the full route reports it
        }
        // The canonical bytes are each line with the id put back at its marks, hashed as they
        // are streamed (SHA-256 does not care how its input is cut).
        let mut hasher = Sha256::new();
        for (line, _) in &lines {
            let mut copied = 0;
            for &mark in &line.marks {
                hasher.update(&line.json.as_bytes()[copied..mark]);
                hasher.update(id.as_bytes());
                copied = mark + placeholder.len();
            }
            hasher.update(&line.json.as_bytes()[copied..]);
            hasher.update(b"\n");
        }
        Some((
            format!("sha256:{}", hex::encode(hasher.finalize())),
            lines.len(),
        ))
    }

    /// Renders every template of every stack enabled on `cluster` and hands each output (or
    /// the template's error) to `each`, which returns whether to go on.
    fn outputs(
        &self,
        cluster: &Cluster,
        given: Option<&cplane_schema::load::Entity<cplane_schema::model::Workspace>>,
        mut each: impl FnMut(Result<Output<'_>, Diagnostic>) -> bool,
    ) {
        let model = self.model;
        let scope = match self
            .scopes
            .get(&(cluster.region.clone(), cluster.environment.clone()))
        {
            Some(scope) => std::borrow::Cow::Borrowed(scope),
            None => {
                std::borrow::Cow::Owned(Scope::new(model, &cluster.region, &cluster.environment))
            }
        };
        let names = &scope.names;
        let mut domains = scope.domains.clone();
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
        let base = Arc::new(ClusterContext {
            platform: scope.platform.clone(),
            region: scope.region.clone(),
            environment: scope.environment.clone(),
            cluster: context! { id => cluster.id, kind => Value::from_serialize(cluster.kind) },
            vars: scope.vars.clone(),
            domains: Value::from_serialize(&domains),
            workspace,
        });

        for (name, overrides) in enabled {
            let Some(stack) = model.stacks.get(name) else {
                continue; // reported by validation
            };
            let Some(env) = self.envs.get(name) else {
                continue; // syntax errors, reported by Renderer::new
            };
            // Made from the same model's stacks, so it is there.
            let prepared = &self.stacks[name];
            let values = match overrides.filter(|o| !o.is_empty()) {
                // Nothing to merge: the stack's defaults, made once.
                None => prepared.defaults.clone(),
                Some(overrides) => {
                    let mut values = prepared.defaults_json.clone();
                    let overrides = serde_json::to_value(overrides).expect("JSON values serialize");
                    deep_merge(&mut values, &overrides);
                    Value::from_serialize(&values)
                }
            };
            let ctx = Value::from_object(TemplateContext {
                cluster: base.clone(),
                stack: prepared.stack.clone(),
                values,
            });
            for path in prepared.templates.iter().copied() {
                let tmpl = env
                    .get_template(path)
                    .expect("every template was added to its stack's environment");
                let output = match tmpl.render(&ctx) {
                    Ok(text) => Ok(Output {
                        stack: name,
                        path,
                        source: &stack.templates[path],
                        text,
                    }),
                    Err(err) => Err(template_diag(&err, path, &stack.templates)),
                };
                if !each(output) {
                    return;
                }
            }
        }
    }

    /// Renders every cluster in parallel, in [`clusters`] order.
    pub fn render_all(&self, clusters: &[Cluster]) -> Vec<Result<Bundle, Vec<Diagnostic>>> {
        clusters
            .par_iter()
            .with_max_len(32)
            .map(|c| self.render(c))
            .collect()
    }
}

/// The template variables shared by every cluster of one region × environment: made once per
/// renderer rather than once per cluster (a tenant cluster's own are few: its id, workspace
/// and workspace domains).
#[derive(Clone)]
struct Scope {
    names: cplane_schema::domain::RegionalNames,
    platform: Value,
    region: Value,
    environment: Value,
    vars: Value,
    /// The regional entries of `domains`.
    domains: BTreeMap<&'static str, String>,
}

impl Scope {
    fn new(model: &Model, region_id: &str, environment: &str) -> Self {
        let names = names_for(model, region_id, environment);
        let platform = &model.platform.doc;
        let region = model.regions.get(region_id);
        let production = environment == platform.spec.production_environment;
        Self {
            platform: context! {
                name => platform.metadata.name,
                baseDomain => platform.spec.base_domain,
                primaryRegion => platform.spec.primary_region,
                bucketPrefix => platform.spec.bucket_prefix,
            },
            region: context! {
                id => region_id,
                displayName => region.map(|r| &r.doc.spec.display_name),
                awsRegion => region.map(|r| &r.doc.spec.aws_region),
                status => Value::from_serialize(region.map(|r| r.doc.spec.status)),
                primary => region_id == platform.spec.primary_region,
            },
            environment: context! { name => environment, production => production },
            vars: Value::from_serialize(names.cluster_vars()),
            domains: BTreeMap::from([
                ("regional", names.regional_domain()),
                ("cplane", names.service_host("cplane")),
                ("auth", names.service_host("auth")),
                ("temporal", names.service_host("temporal")),
                ("grafana", names.service_host("grafana")),
            ]),
            names,
        }
    }

    /// Every region × environment of `model` that clusters can be in.
    fn all(model: &Model) -> HashMap<(String, String), Self> {
        let mut scopes = HashMap::new();
        for region in model.regions.keys() {
            for env in &model.platform.doc.spec.environments {
                scopes.insert((region.clone(), env.clone()), Self::new(model, region, env));
            }
        }
        scopes
    }
}

/// What every cluster's rendering of one stack starts from: its `stack` variable, its value
/// defaults (as JSON to merge a workspace's values into, and as the `values` variable of a
/// workspace that sets none), and its templates that render (partials only get included).
struct PreparedStack<'m> {
    stack: Value,
    defaults_json: serde_json::Value,
    defaults: Value,
    templates: Vec<&'m str>,
}

impl<'m> PreparedStack<'m> {
    fn new(name: &str, stack: &'m cplane_schema::load::StackEntry) -> Self {
        let spec = &stack.entity.doc.spec;
        let defaults_json = serde_json::Value::Object(
            spec.values
                .iter()
                .filter_map(|(k, d)| d.default.clone().map(|v| (k.clone(), v)))
                .collect(),
        );
        Self {
            stack: context! { name => name, version => spec.version },
            defaults: Value::from_serialize(&defaults_json),
            defaults_json,
            templates: stack
                .templates
                .keys()
                .filter(|p| !is_partial(p))
                .map(String::as_str)
                .collect(),
        }
    }

    fn all(model: &'m Model) -> HashMap<&'m str, Self> {
        model
            .stacks
            .iter()
            .map(|(name, stack)| (name.as_str(), Self::new(name, stack)))
            .collect()
    }
}

/// The variables of one cluster, the same for each of its stacks (see [`TemplateContext`]).
#[derive(Debug)]
struct ClusterContext {
    platform: Value,
    region: Value,
    environment: Value,
    cluster: Value,
    vars: Value,
    domains: Value,
    /// Undefined on platform clusters.
    workspace: Value,
}

/// What a stack's templates see: the cluster's variables, the stack and its values (documented
/// in the state repo template's README). One object with a fixed set of names rather than a
/// map merged from two: every variable and function name a template uses is looked up here
/// first, and a miss (`labels`, `host`, ...) costs a `match`, not two map searches.
#[derive(Debug)]
struct TemplateContext {
    cluster: Arc<ClusterContext>,
    stack: Value,
    values: Value,
}

impl TemplateContext {
    const NAMES: &'static [&'static str] = &[
        "platform",
        "region",
        "environment",
        "cluster",
        "vars",
        "domains",
        "workspace",
        "stack",
        "values",
    ];
}

impl minijinja::value::Object for TemplateContext {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let c = &self.cluster;
        Some(
            match key.as_str()? {
                "platform" => &c.platform,
                "region" => &c.region,
                "environment" => &c.environment,
                "cluster" => &c.cluster,
                "vars" => &c.vars,
                "domains" => &c.domains,
                "workspace" => &c.workspace,
                "stack" => &self.stack,
                "values" => &self.values,
                _ => return None,
            }
            .clone(),
        )
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(Self::NAMES)
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

/// minijinja's `tojson` filter, with a fast route for the common case of a plain string
/// (`{{ vars.REGION | tojson }}`): the same bytes as the built-in, which serializes through
/// the generic value serializer and then copies the text a character at a time to escape what
/// HTML would read (`<`, `>`, `&`, `'`). Anything else (maps, lists, an indent) goes to the
/// built-in itself.
fn tojson(value: &Value, indent: Option<Value>, args: Kwargs) -> Result<Value, minijinja::Error> {
    if indent.is_some() || args.args().next().is_some() || value.kind() != ValueKind::String {
        return minijinja::filters::tojson(value, indent, args);
    }
    let text = value.as_str().unwrap_or_default();
    let json = serde_json::to_string(text).expect("strings serialize");
    let html = |b: &u8| matches!(b, b'<' | b'>' | b'&' | b'\'');
    if !json.as_bytes().iter().any(html) {
        return Ok(Value::from_safe_string(json));
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\'' => out.push_str("\\u0027"),
            _ => out.push(c),
        }
    }
    Ok(Value::from_safe_string(out))
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

/// The built-ins `labels(component)` and `selector(component)` of one stack's environment.
///
/// `labels(component)` gives the Kubernetes recommended labels of one component of the stack
/// as a one-line JSON map (valid YAML after any key, at any indentation):
/// `{"app.kubernetes.io/component": component, "app.kubernetes.io/name": stack.name,
/// "app.kubernetes.io/part-of": platform.name}`. `selector(component)` gives the subset that
/// selects a component's pods (`name` and `component`). Every stack needs them on every
/// object; a built-in keeps them identical everywhere. They are called on nearly every object
/// of every cluster, so the stack's and platform's parts are serialized once, when the
/// environment is made, and a call only checks and splices in the component.
struct StandardLabels {
    /// `,"app.kubernetes.io/name":"<stack>"`.
    name: String,
    /// `,"app.kubernetes.io/part-of":"<platform>"`.
    part_of: String,
}

impl StandardLabels {
    fn new(stack: &str, platform: &str) -> Self {
        let pair = |key: &str, value: &str| {
            let value = serde_json::to_string(value).expect("strings serialize");
            format!(",\"app.kubernetes.io/{key}\":{value}")
        };
        Self {
            name: pair("name", stack),
            part_of: pair("part-of", platform),
        }
    }

    /// The map, keys sorted as JSON maps are: `component`, `name`, then `part-of` when asked.
    fn map(&self, func: &str, component: &str, part_of: bool) -> Result<String, minijinja::Error> {
        // A DNS label: nothing in it needs a JSON escape.
        check_label(func, component)?;
        let mut out = String::with_capacity(64 + self.name.len() + self.part_of.len());
        out.push_str("{\"app.kubernetes.io/component\":\"");
        out.push_str(component);
        out.push('"');
        out.push_str(&self.name);
        if part_of {
            out.push_str(&self.part_of);
        }
        out.push('}');
        Ok(out)
    }
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
    let bytes = text.as_bytes();
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut newlines = memchr::memchr_iter(b'\n', bytes);
    let mut offset = 0;
    let mut i = 0;
    while offset < bytes.len() {
        let end = newlines.next().map_or(bytes.len(), |nl| nl + 1);
        // Only a line starting with `-` or `.` can be a marker: the others are skipped unread.
        if matches!(bytes[offset], b'-' | b'.') {
            let line = &text[offset..end];
            if is_marker(line.trim_end_matches('\n')) && offset > start {
                docs.push((start_line, &text[start..offset]));
                start = offset;
                start_line = i + 1;
            }
            if line.trim_end() == "..." {
                // A document end marker belongs to no document.
                docs.push((start_line, &text[start..offset]));
                start = end;
                start_line = i + 2;
            }
        }
        offset = end;
        i += 1;
    }
    docs.push((start_line, &text[start..]));
    without_blank_lead(docs)
}

/// `docs` without a leading chunk that holds only blanks and comments (before the first `---`).
fn without_blank_lead(mut docs: Vec<(usize, &str)>) -> Vec<(usize, &str)> {
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

/// Rendered documents parsed once per render pass; YAML parsing is the expensive part of
/// rendering, and most documents repeat across clusters.
///
/// - Many documents (Namespaces, Services, RBAC, ...) come out byte-identical in thousands of
///   clusters: they are cached by their exact text.
/// - Most of the rest differ between tenant clusters only in the workspace id (host names, zone
///   names, client ids, values such as repository URLs). Those are cached in *generalized* form,
///   the id replaced by a placeholder of the same length (see [`Generalizer`]), and the parsed
///   value is specialized back to the cluster. At 10,000 workspaces this turns ~126 MB of unique YAML
///   into a few hundred distinct documents.
///
/// Keyed by the SHA-256 of the text (a hit is exact for all practical purposes). A document is
/// kept only from its second sighting on, so the cache never holds documents that are unique
/// after generalization: memory stays flat on large repos.
#[derive(Default)]
struct ParseCache {
    shards: [Mutex<CacheShard>; 16],
    /// YAML parses done (cache misses), for tests.
    parses: std::sync::atomic::AtomicUsize,
}

/// Document digest → parsed document, or `None` when seen only once so far.
type CacheShard = HashMap<[u8; 32], Option<Arc<ParsedDoc>>>;

impl ParseCache {
    /// Parses `doc`, rendered for `workspace`'s cluster (tenant clusters). Errors come from
    /// parsing the exact text, so their messages and lines are the user's.
    fn parse(
        &self,
        doc: &str,
        workspace: Option<&str>,
    ) -> Result<serde_json::Value, (String, usize)> {
        let generalizer = workspace
            .filter(|id| doc.contains(*id))
            .and_then(Generalizer::new);
        if let Some((g, text)) = generalizer.as_ref().and_then(|g| Some((g, g.of(doc)?))) {
            if let ParsedDoc::Object(value) = &*self.get(&text) {
                if let Some(value) = g.specialize(value) {
                    return Ok(value);
                }
            }
        }
        match &*self.get(doc) {
            ParsedDoc::Object(value) => Ok(value.clone()),
            ParsedDoc::Invalid(message, line) => Err((message.clone(), *line)),
        }
    }

    fn get(&self, doc: &str) -> Arc<ParsedDoc> {
        let key: [u8; 32] = Sha256::digest(doc.as_bytes()).into();
        let shard = &self.shards[usize::from(key[0]) % 16];
        let seen = match shard.lock().expect("cache lock").get(&key) {
            Some(Some(hit)) => return hit.clone(),
            Some(None) => true,
            None => false,
        };
        let parsed = Arc::new(parse_document(doc));
        self.parses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shard
            .lock()
            .expect("cache lock")
            .insert(key, seen.then(|| parsed.clone()));
        parsed
    }
}

/// The placeholder character: a letter no YAML null, boolean or number contains.
const PLACEHOLDER: char = 'Z';

/// Generalizes rendered documents for one workspace id: the id replaced by a placeholder of the
/// same length made of [`PLACEHOLDER`] characters (`acme` → `ZZZZ`, so `bff.w-acme.sgp-1.cogrion.com` →
/// `bff.w-ZZZZ.sgp-1.cogrion.com`).
///
/// Guarantee: when [`Generalizer::of`] gives `text` and [`Generalizer::specialize`] succeeds,
/// `specialize(parse(text)) == parse(doc)`. Why this holds:
/// - The id is a DNS label (`[a-z0-9-]`, no leading or trailing `-`); the placeholder has its
///   length, so lines, columns and YAML's 1024-character limit on simple keys are unchanged.
///   Letters, digits and an inner `-` mean the same to YAML's scanner, so both texts tokenize
///   alike, except where YAML reads letters or digits as syntax. In a tag (`!!str`) or a
///   directive (`%TAG`) a renamed id could change a value's type: documents with the id there
///   are not generalized ([`in_tag_or_directive`]). In a block scalar header (`|2`) or an
///   escape (`\n`) the placeholder is invalid (no indentation indicator or escape contains a
///   `Z`), so the generalized text fails to parse and the document is parsed as it is.
/// - `doc` contains no `Z` at all (checked), so every `Z` of `text` comes from a replaced id:
///   the placeholder occurs exactly where the id was, and anchor names stay distinct.
/// - A string's value is its text up to whitespace folding and escapes. The id contains no
///   whitespace, and documents with an escape that spells a `Z` (`\x5a`, `\u005A`, ...) are
///   not generalized: every `Z` of a parsed value is a placeholder.
/// - A plain scalar containing `Z` is always a string (no null, boolean or number contains a
///   `Z`), but the same scalar with the id back might not be (`1234`, `0xdead`). So
///   [`Generalizer::specialize`] refuses any specialized string that YAML could read as
///   something else ([`could_be_non_string`]), and the document is parsed as it is.
struct Generalizer<'a> {
    id: &'a str,
    placeholder: String,
    finder: memchr::memmem::Finder<'a>,
}

impl<'a> Generalizer<'a> {
    /// `None` when `id` is not a DNS label (then nothing is generalized). The searches are
    /// prepared once, for every document of a cluster.
    fn new(id: &'a str) -> Option<Self> {
        cplane_schema::domain::is_dns_label(id).then(|| Self {
            id,
            placeholder: PLACEHOLDER.to_string().repeat(id.len()),
            finder: memchr::memmem::Finder::new(id),
        })
    }

    /// Where the id occurs in `doc` (byte offsets, not overlapping), or `None` when the
    /// guarantee could not be given.
    fn occurrences(&self, doc: &str) -> Option<Vec<usize>> {
        if memchr::memchr(PLACEHOLDER as u8, doc.as_bytes()).is_some() || escapes_placeholder(doc) {
            return None;
        }
        let mut at = Vec::new();
        for found in self.finder.find_iter(doc.as_bytes()) {
            if in_tag_or_directive(doc, found) {
                return None;
            }
            at.push(found);
        }
        Some(at)
    }

    /// `doc` with the placeholder at `at` (from [`Generalizer::occurrences`]).
    fn generalize(&self, doc: &str, at: &[usize]) -> String {
        let mut text = String::with_capacity(doc.len());
        let mut copied = 0;
        for &found in at {
            text.push_str(&doc[copied..found]);
            text.push_str(&self.placeholder);
            copied = found + self.id.len();
        }
        text.push_str(&doc[copied..]);
        text
    }

    /// `doc` generalized, or `None` when the guarantee could not be given. A document that
    /// does not mention the id is its own generalization.
    fn of<'d>(&self, doc: &'d str) -> Option<std::borrow::Cow<'d, str>> {
        let at = self.occurrences(doc)?;
        Some(if at.is_empty() {
            doc.into()
        } else {
            self.generalize(doc, &at).into()
        })
    }

    /// The value parsed from the generalized text with the id put back, or `None` when a
    /// string with the id back could be read by YAML as a null, boolean or number.
    fn specialize(&self, value: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value as V;
        let put_back = |s: &str| {
            if !s.contains(PLACEHOLDER) {
                return Some(s.to_owned());
            }
            let back = s.replace(&self.placeholder, self.id);
            (!could_be_non_string(&back)).then_some(back)
        };
        Some(match value {
            V::String(s) => V::String(put_back(s)?),
            V::Array(items) => V::Array(
                items
                    .iter()
                    .map(|v| self.specialize(v))
                    .collect::<Option<_>>()?,
            ),
            V::Object(map) => V::Object(
                map.iter()
                    .map(|(k, v)| Some((put_back(k)?, self.specialize(v)?)))
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// Whether `doc` has a `\x`, `\u` or `\U` escape that spells the placeholder character (looked
/// for everywhere, not only in double-quoted scalars: a false alarm only costs a parse).
fn escapes_placeholder(doc: &str) -> bool {
    let bytes = doc.as_bytes();
    memchr::memchr_iter(b'\\', bytes).any(|i| {
        let digits = match bytes.get(i + 1) {
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => return false,
        };
        doc.get(i + 2..i + 2 + digits)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            == Some(u32::from(PLACEHOLDER))
    })
}

/// Whether the id found at byte `at` of `doc` is inside a tag (`!!str`, `!acme`,
/// `!<tag:...>`) or on a directive line (`%TAG`), where renaming it would change how YAML types
/// a value rather than the value's text. Conservative: a `!` anywhere earlier in the same run of
/// non-blank characters counts (a verbatim tag `!<tag:yaml.org,2002:int>` has no blanks, but
/// may have `,`).
fn in_tag_or_directive(doc: &str, at: usize) -> bool {
    let before = &doc.as_bytes()[..at];
    let token = before.iter().rev().take_while(|b| !b.is_ascii_whitespace());
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    token.clone().any(|&b| b == b'!') || before.get(line_start) == Some(&b'%')
}

/// Whether YAML could read `s`, as a plain scalar, as anything but a string. Conservative: true
/// unless `s` has a character that no null (`~`, `null`), boolean (`true`, `yes`, `on`, ...) or
/// number (`0x1f`, `-1.5e3`, `.inf`, `NaN`, `1_000`, `1:30`) can contain.
fn could_be_non_string(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_digit()
            || "+-._:~".contains(c)
            || "abcdefilnorstuxy".contains(c.to_ascii_lowercase())
    })
}

/// A tenant document reduced to what a bundle's digest needs, in generalized form: the id
/// replaced by the placeholder everywhere, the cluster label included.
struct Line {
    /// The object's canonical JSON (labels and annotation added, keys sorted, compact).
    json: String,
    /// Where the placeholder is in `json` (byte offsets): the id goes there.
    marks: Vec<usize>,
    /// The object's [`object_key`].
    key: ObjectKey,
    /// Whether a string of `key` holds the placeholder.
    key_has_placeholder: bool,
    /// Whether some string holding the placeholder has nothing but characters that YAML
    /// numbers, booleans and nulls are made of: it is a string with the id back only when the
    /// id has another character ([`could_be_non_string`]).
    needs_plain_id: bool,
}

/// Canonical lines of generalized tenant documents, by stack, generalized cluster id and
/// generalized text. Like [`ParseCache`], an entry is kept from its second sighting on. `None`:
/// the document has no line (it does not parse, or a map key holds the placeholder, whose sort
/// order would differ from the id's): the cluster takes the full route.
///
/// Looked up for every tenant document, so keyed by a fast hash (FxHash) of the document as
/// generalized, computed piecewise from the document and the id's offsets without building the
/// generalized text. A first sighting is remembered by its hash only; a kept entry holds its key
/// in full, compared on every hit (a hash collision costs a render, never a wrong line).
#[derive(Default)]
struct LineCache {
    shards: [Mutex<HashMap<u64, LineSlot>>; 16],
}

/// What [`LineCache`] holds for one hash.
enum LineSlot {
    /// Seen once.
    Seen,
    /// Kept lines by their full key (more than one only on a hash collision).
    Kept(Vec<(LineKey, Option<Arc<Line>>)>),
}

/// The full key of a kept line: stack, generalized cluster id, generalized text.
type LineKey = (Box<str>, Box<str>, Box<str>);

impl LineCache {
    /// The line of `doc`, where the id is at `at` and becomes `placeholder`; `make` builds it
    /// from the generalized text on a miss.
    fn get(
        &self,
        doc: &str,
        at: &[usize],
        placeholder: &str,
        stack: &str,
        cluster: &str,
        make: impl FnOnce(&str) -> Option<Line>,
    ) -> Option<Arc<Line>> {
        use std::hash::Hasher as _;
        let pieces = || {
            let mut copied = 0;
            at.iter()
                .flat_map(move |&found| {
                    let piece = [&doc[copied..found], placeholder];
                    copied = found + placeholder.len();
                    piece
                })
                .chain(std::iter::once(
                    &doc[at.last().map_or(0, |&l| l + placeholder.len())..],
                ))
        };
        let mut h = rustc_hash::FxHasher::default();
        for part in [stack, cluster] {
            h.write_usize(part.len());
            h.write(part.as_bytes());
        }
        h.write_usize(doc.len());
        for piece in pieces() {
            h.write(piece.as_bytes());
        }
        let hash = h.finish();
        let is_key = |(s, c, t): &LineKey| {
            **s == *stack && **c == *cluster && t.len() == doc.len() && {
                let mut offset = 0;
                pieces().all(|piece| {
                    let same = t.as_bytes()[offset..offset + piece.len()] == *piece.as_bytes();
                    offset += piece.len();
                    same
                })
            }
        };
        let shard = &self.shards[(hash % 16) as usize];
        let seen = match shard.lock().expect("cache lock").get(&hash) {
            Some(LineSlot::Kept(kept)) => match kept.iter().find(|(key, _)| is_key(key)) {
                Some((_, line)) => return line.clone(),
                None => true,
            },
            Some(LineSlot::Seen) => true,
            None => false,
        };
        let text: String = pieces().collect();
        let line = make(&text).map(Arc::new);
        let mut shard = shard.lock().expect("cache lock");
        if !seen {
            shard.entry(hash).or_insert(LineSlot::Seen);
            return line;
        }
        let key = (stack.into(), cluster.into(), text.into());
        match shard.entry(hash).or_insert(LineSlot::Seen) {
            LineSlot::Kept(kept) => {
                if !kept.iter().any(|(k, _)| is_key(k)) {
                    kept.push((key, line.clone()));
                }
            }
            slot => *slot = LineSlot::Kept(vec![(key, line.clone())]),
        }
        line
    }
}

/// The canonical line of a generalized document rendered by `stack` for the (generalized)
/// cluster id `cluster`, or `None` when it has none (see [`LineCache`]).
fn canonical_line(
    cache: &ParseCache,
    text: &str,
    stack: &str,
    cluster: &str,
    placeholder: &str,
) -> Option<Line> {
    let ParsedDoc::Object(value) = &*cache.get(text) else {
        return None;
    };
    let mut value = value.clone();
    mark(&mut value, cluster, stack);
    let mut needs_plain_id = false;
    let mut keys_plain = true;
    visit_strings(&value, &mut |s, is_key| {
        if s.contains(PLACEHOLDER) {
            keys_plain &= !is_key;
            needs_plain_id |= could_be_non_string(&s.replace(PLACEHOLDER, ""));
        }
    });
    if !keys_plain {
        return None;
    }
    let json = serde_json::to_string(&value).expect("JSON values serialize");
    let key = object_key(&value);
    let (_, kind, namespace, name, group) = &key;
    Some(Line {
        marks: memchr::memmem::find_iter(json.as_bytes(), placeholder).collect(),
        key_has_placeholder: [kind, namespace, name, group]
            .iter()
            .any(|s| s.contains(PLACEHOLDER)),
        json,
        key,
        needs_plain_id,
    })
}

/// Calls `f` with every string of `value` and whether it is a map key.
fn visit_strings(value: &serde_json::Value, f: &mut impl FnMut(&str, bool)) {
    match value {
        serde_json::Value::String(s) => f(s, false),
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit_strings(v, f)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                f(k, true);
                visit_strings(v, f);
            }
        }
        _ => {}
    }
}

fn parse_document(doc: &str) -> ParsedDoc {
    // Deeply nested flow collections would exhaust the parser's stack.
    if let Err(d) = cplane_schema::load::refuse_deep_flow_nesting("", doc) {
        return ParsedDoc::Invalid(format!("rendered output: {}", d.message), d.line);
    }
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

/// What one template rendered for one cluster.
struct Output<'a> {
    /// Stack name.
    stack: &'a str,
    /// Template path in the repo.
    path: &'a str,
    /// The template's source.
    source: &'a str,
    /// The rendered text.
    text: String,
}

fn parse_objects(
    out: &Output<'_>,
    cluster: &Cluster,
    cache: &ParseCache,
    objects: &mut Vec<Object>,
) -> Result<(), Diagnostic> {
    let Output {
        stack,
        path,
        source,
        ref text,
    } = *out;
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
    for (n, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        let value = match cache.parse(doc, cluster.workspace.as_deref()) {
            Ok(v) => v,
            Err((msg, 0)) => return Err(at(n, msg)),
            Err((msg, line)) => {
                return Err(at(
                    n,
                    format!("{msg} (rendered line {})", first_line + line - 1),
                ))
            }
        };
        let mut value = value;
        mark(&mut value, &cluster.id, stack);
        objects.push(Object {
            stack: stack.to_owned(),
            template: path.to_owned(),
            value,
        });
    }
    Ok(())
}

/// Adds cplane's labels and annotation to a parsed object (whose `metadata` is a map).
fn mark(value: &mut serde_json::Value, cluster: &str, stack: &str) {
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
        labels.insert(CLUSTER_LABEL.into(), cluster.into());
    }
    if let Some(annotations) = meta
        .entry("annotations")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
    {
        annotations.insert(STACK_ANNOTATION.into(), stack.into());
    }
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

/// Identity and apply order of an object in a cluster: rank (Namespaces, CRDs, the rest),
/// kind, namespace, name, API group.
pub type ObjectKey = (u8, String, String, String, String);

/// Identity of an object in a cluster: API group, kind, namespace, name.
pub fn object_key(v: &serde_json::Value) -> ObjectKey {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `doc` generalized for `id` (see [`Generalizer::of`]).
    fn generalized(doc: &str, id: &str) -> Option<String> {
        Generalizer::new(id)?
            .of(doc)
            .map(std::borrow::Cow::into_owned)
    }

    /// The value parsed from generalized text, with `id` put back.
    fn specialized(value: &serde_json::Value, id: &str) -> Option<serde_json::Value> {
        Generalizer::new(id).expect("an id").specialize(value)
    }

    /// Parses `doc` both ways and asserts the generalized route gives the exact result.
    fn assert_generalizes(doc: &str, id: &str) {
        let general = generalized(doc, id).expect("generalizable");
        assert_ne!(general, doc, "the id was abstracted");
        assert!(!general.contains(id), "{general}");
        let (ParsedDoc::Object(exact), ParsedDoc::Object(abstracted)) =
            (parse_document(doc), parse_document(&general))
        else {
            panic!("both parse:\n{doc}");
        };
        assert_eq!(specialized(&abstracted, id), Some(exact), "{doc}");
    }

    /// Asserts the generalized route gives up on `doc` (at `of`, the parse or `specialize`).
    fn assert_not_generalized(doc: &str, id: &str) {
        let Some(general) = generalized(doc, id) else {
            return;
        };
        if let ParsedDoc::Object(abstracted) = parse_document(&general) {
            assert_eq!(specialized(&abstracted, id), None, "{doc}");
        }
    }

    const TRICKY: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: w-acme-config
  namespace: acme
  labels: {"w-acme": "w-acme", team: acme, acme2: x}
data:
  host: bff.w-acme.sgp-1.cogrion.com
  quoted: "https://acme.example/x\n\"acme\"\u0027s\\acme"
  single: 'it''s acme'
  anchored: &acme acme.dev
  alias: *acme
  folded: >
    line one w-acme
    line two
  literal: |
    acme
      indented acme
  list: [acme, "w-acme", 'acme']
  acme: key
  ? acme-complex
  : value
  multi: plain acme
    continued acme
  number: 12
  other: acmex-acme
  repo: https://git.example.com/acme/dags.git
"#;

    #[test]
    fn generalized_documents_parse_to_the_exact_value() {
        assert_generalizes(TRICKY, "acme");
        // Ids that are numbers or booleans on their own, inside longer strings.
        for id in ["1e5", "123", "true", "no", "0x1f", "a-1", "inf"] {
            assert_generalizes(
                &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: w-{id}\n  labels: {{id: w-{id}, repo: \"git/{id}\"}}\n"),
                id,
            );
        }
    }

    #[test]
    fn documents_that_cannot_be_generalized_safely_are_not() {
        let doc = |extra: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: w-acme\n  annotations:\n    {extra}\n")
        };
        assert!(generalized(&doc("a: b"), "acme").is_some());
        // Escapes that could spell the placeholder; a placeholder already there.
        for extra in [
            r#"a: "\x5a""#,
            r#"a: "\u005A""#,
            r#"a: "\U0000005a""#,
            "a: Zulu",
        ] {
            assert!(generalized(&doc(extra), "acme").is_none(), "{extra}");
        }
        // The id in a tag or a directive.
        assert!(generalized(&doc("a: !!int 5"), "int").is_none());
        assert!(generalized("%TAG !e! tag:acme.com,2000:\n---\na: !e!x acme\n", "acme").is_none());
        // Not mentioned: the document is its own generalization. Not an id: no guarantee.
        let own = doc("a: b");
        assert_eq!(generalized(&own, "globex").expect("as it is"), own);
        assert!(generalized("a: ACME\n", "ACME").is_none());
        // With the id back, a scalar YAML reads as a number, boolean or null: not a string.
        for (id, extra) in [
            ("1234", "a: 1234"),
            ("dead", "a: 0xdead"),
            ("true", "a: true"),
            ("inf", "a: .inf"),
            ("30", "a: 1:30"),
            ("123", "a: !!int 123"),
            ("str", "a: !!str 5"),
            ("int", "a: !!int 5"),
            ("int", "a: [x, !!int 5]"),
            ("in", "a: !<tag:yaml.org,2002:int> 5"),
            ("2", "a: |2\n      text"),
            ("1", "a: \"\\x31\""),
        ] {
            assert_not_generalized(&doc(extra), id);
        }
    }

    /// Differential test: random documents built from fragments that put an id where YAML
    /// reads it as a value, a key, a tag, an anchor, a number, an escape or a header. Whenever
    /// the generalized route answers, it must be the exact parse.
    #[test]
    fn generalization_never_changes_a_parse() {
        const FRAGMENTS: &[&str] = &[
            "k{n}: {id}",
            "k{n}: w-{id}.sgp-1.cogrion.com",
            "k{n}: \"{id}\"",
            "k{n}: '{id}'",
            "k{n}: {id}{id}",
            "k{n}: !!int {id}",
            "k{n}: !!str {id}",
            "k{n}: !{id} x",
            "k{n}: 0x{id}",
            "k{n}: 1{id}",
            "k{n}: .{id}",
            "k{n}: -{id}",
            "{id}{n}: v",
            "k{n}: [{id}, 1, \"{id}\"]",
            "k{n}: {{a: {id}, {id}: b}}",
            "k{n}: &{id}{n} {id}",
            "k{n}: |\n    {id}\n    x {id}",
            "k{n}: |{id}\n    text",
            "k{n}: \"a\\n{id}\\\"\"",
            "k{n}: \"\\x{id}\"",
            "k{n}: \"\\u00{id}\"",
            "k{n}: {id} # {id}",
            "k{n}: plain {id}\n    folded {id}",
            "k{n}: 1:{id}",
            "k{n}: {id}e3",
            "k{n}:\n    - {id}\n    - w-{id}",
        ];
        const IDS: &[&str] = &[
            "acme", "123", "dead", "int", "str", "a-1", "e5", "true", "no", "ws00001", "1", "5a",
            "inf", "nan", "null", "x", "0",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut answered, mut fell_back) = (0, 0);
        for _ in 0..6000 {
            let id = IDS[next(IDS.len())];
            let mut doc =
                String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata:\n");
            for n in 0..1 + next(3) {
                let fragment = FRAGMENTS[next(FRAGMENTS.len())]
                    .replace("{n}", &n.to_string())
                    .replace("{id}", id);
                doc.push_str("  ");
                doc.push_str(&fragment);
                doc.push('\n');
            }
            let exact = match parse_document(&doc) {
                ParsedDoc::Object(v) => Some(v),
                ParsedDoc::Invalid(..) => None,
            };
            let general = generalized(&doc, id).and_then(|g| match parse_document(&g) {
                ParsedDoc::Object(v) => specialized(&v, id),
                ParsedDoc::Invalid(..) => None,
            });
            match general {
                Some(v) => {
                    assert_eq!(
                        Some(v),
                        exact,
                        "generalized parse differs for id {id}:\n{doc}"
                    );
                    answered += 1;
                }
                None => fell_back += 1,
            }
        }
        // Both routes are exercised.
        assert!(
            answered > 500 && fell_back > 500,
            "{answered} / {fell_back}"
        );
    }

    /// The straightforward line-by-line splitter [`split_documents`] must agree with.
    fn split_documents_by_lines(text: &str) -> Vec<(usize, &str)> {
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
        without_blank_lead(docs)
    }

    #[test]
    fn documents_split_as_line_by_line() {
        let mut cases: Vec<String> = [
            "",
            "\n",
            "---",
            "---\n",
            "a: 1",
            "a: 1\n---\nb: 2\n",
            "---\na: 1\n---\nb: 2",
            "# c\n---\na: 1\n...\n---\nb: 2\n",
            "a: 1\n...\n",
            "...\n",
            "--- a\n--- b\n",
            "---\t\n-x\n.y\n- z\n...  \n",
            "a: |\n  ---\n---\r\nb: 1\r\n",
            "\n\n---\n\n",
            "- a\n- b\n---\n- c",
            "....\n---x\n",
            "a\n.\n-\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let pieces = [
            "---", "...", "--- x", "a: 1", "- b", ".c", "# d", "", " ---", "\r",
        ];
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(state % 7) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
                if !state.is_multiple_of(5) {
                    text.push('\n');
                }
            }
            state = state.wrapping_add(0x9e37_79b9);
            cases.push(text);
        }
        for text in &cases {
            assert_eq!(
                split_documents(text),
                split_documents_by_lines(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn yaml_non_strings_are_recognized() {
        for s in [
            "12", "-1.5e3", "0x1F", "0o17", ".inf", "-.Inf", "NaN", "true", "False", "null", "~",
            "yes", "off", "1_000", "1:30", "infinity",
        ] {
            assert!(could_be_non_string(s), "{s}");
        }
        // What the guard is for: these would not come back as strings.
        for s in ["12", "-1.5e3", "0x1F", ".inf", "true", "null", "~"] {
            let v: serde_json::Value = serde_yaml::from_str(s).expect("scalar");
            assert!(!v.is_string(), "{s}: {v}");
        }
        for s in [
            "acme",
            "w-1234",
            "git/123",
            "1 2",
            "sgp-1.cogrion.com",
            "ZZZZ",
        ] {
            assert!(!could_be_non_string(s), "{s}");
            assert!(serde_yaml::from_str::<serde_json::Value>(s).is_ok_and(|v| v.is_string()));
        }
    }

    fn template_model() -> Model {
        cplane_schema::load(crate::testdata::template_files())
            .into_valid()
            .expect("the template is valid")
    }

    #[test]
    fn templates_compiled_for_another_platform_name_are_compiled_again() {
        let model = template_model();
        let (renderer, _) = Renderer::new(&model);
        let compiled = renderer.compiled();
        let mut renamed = template_model();
        renamed.platform.doc.metadata.name = "acmecorp".into();
        let part_of = |model: &Model, renderer: &Renderer<'_>| {
            let cluster = clusters(model)
                .into_iter()
                .find(|c| c.id == "w-acme")
                .expect("acme");
            let bundle = renderer.render(&cluster).expect("renders");
            bundle
                .objects
                .iter()
                .find_map(|o| {
                    o.value["metadata"]["labels"]["app.kubernetes.io/part-of"]
                        .as_str()
                        .map(str::to_owned)
                })
                .expect("a part-of label")
        };
        let same = Renderer::with_compiled(&model, &compiled);
        assert_eq!(part_of(&model, &same), "cogrion");
        let other = Renderer::with_compiled(&renamed, &compiled);
        assert_eq!(part_of(&renamed, &other), "acmecorp");
    }

    #[test]
    fn template_context_is_the_documented_one() {
        let mut model = template_model();
        // A probe template in a platform stack and in a tenant stack.
        let probe = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  \
                     workspace: \"{{ workspace is defined }}\"\n  region: {{ region.id }}\n  \
                     production: \"{{ environment.production }}\"\n  \
                     replicas: \"{{ values.replicas | default('none') }}\"\n";
        for stack in ["control-plane", "bff"] {
            model
                .stacks
                .get_mut(stack)
                .expect("stack")
                .templates
                .insert(
                    format!("stacks/{stack}/templates/probe.yaml.j2"),
                    probe.into(),
                );
        }
        let data = |model: &Model, cluster: &str| {
            let (renderer, errors) = Renderer::new(model);
            assert!(errors.is_empty(), "{errors:?}");
            let cluster = clusters(model)
                .into_iter()
                .find(|c| c.id == cluster)
                .expect("cluster");
            let bundle = renderer.render(&cluster).expect("renders");
            let digest = renderer.digest(&cluster).expect("digest").0;
            assert_eq!(digest, bundle.digest);
            let probe = bundle
                .objects
                .iter()
                .find(|o| o.value["metadata"]["name"] == "probe")
                .expect("probe")
                .value["data"]
                .clone();
            (probe, digest)
        };
        let (platform, _) = data(&model, "prod-sgp-1");
        assert_eq!(
            platform["workspace"], "False",
            "no workspace on a platform cluster"
        );
        assert_eq!(platform["region"], "sgp-1");
        assert_eq!(platform["production"], "True");
        let (tenant, listed) = data(&model, "w-acme");
        assert_eq!(tenant["workspace"], "True");
        assert_eq!(
            tenant["replicas"], "3",
            "the workspace's value over the default"
        );
        // A stack listed with no values renders with the defaults, as one not listed at all
        // (bff is required).
        model
            .workspaces
            .get_mut("acme")
            .expect("acme")
            .doc
            .spec
            .stacks
            .iter_mut()
            .find(|s| s.name == "bff")
            .expect("bff listed")
            .values
            .clear();
        let (empty, with_empty_values) = data(&model, "w-acme");
        assert_ne!(empty["replicas"], "3");
        assert_ne!(with_empty_values, listed);
        model
            .workspaces
            .get_mut("acme")
            .expect("acme")
            .doc
            .spec
            .stacks
            .retain(|s| s.name != "bff");
        let (unlisted, not_listed) = data(&model, "w-acme");
        assert_eq!(unlisted, empty);
        assert_eq!(not_listed, with_empty_values);
    }

    #[test]
    fn every_template_document_generalizes_exactly() {
        let model = template_model();
        let (renderer, diags) = Renderer::new(&model);
        assert!(diags.is_empty(), "{diags:?}");
        let mut checked = 0;
        for cluster in clusters(&model) {
            if cluster.kind != ClusterKind::Tenant {
                continue;
            }
            let bundle = renderer.render(&cluster).expect("renders");
            let id = cluster.workspace.as_deref().expect("tenant");
            for doc in bundle.to_yaml().split("---\n").filter(|d| !d.is_empty()) {
                if generalized(doc, id).is_some() {
                    assert_generalizes(doc, id);
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 20,
            "only {checked} documents mention their cluster"
        );
    }

    /// Synthetic workspaces' files (`workspaces` in one region), plus workspaces whose ids are
    /// numbers, hex or YAML words, or appear in a map key, to drive both digest routes.
    fn odd_files(workspaces: usize) -> Vec<cplane_schema::SourceFile> {
        let mut files = crate::testdata::synthetic_files(workspaces);
        for (n, id) in ["1234", "dead", "e5", "true", "keyed", "zz-top", "9"]
            .into_iter()
            .enumerate()
        {
            let extra = if id == "keyed" {
                format!("        extraEnv: {{\"{id}\": \"x-{id}\"}}\n")
            } else {
                String::new()
            };
            let doc = format!(
                "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: \"{id}\"\nspec:\n  region: sgp-1\n  environment: prod\n  account: odd-{n}\n  aws:\n    accountId: \"90000000000{n}\"\n    roleArn: arn:aws:iam::90000000000{n}:role/p\n    externalId: odd-{n}\n  deletionPolicy: Retain\n  stacks:\n    - name: bff\n      values:\n        replicas: 2\n{extra}    - name: airflow\n      values:\n        dagsRepo: https://git.example.com/{id}/dags.git\n"
            );
            files.push(cplane_schema::SourceFile {
                path: format!("workspaces/{id}.yaml"),
                bytes: doc.into_bytes(),
            });
        }
        files
    }

    #[test]
    fn the_fast_digest_is_the_bundles_digest() {
        let model = cplane_schema::load(odd_files(40))
            .into_valid()
            .expect("valid");
        let all = clusters(&model);
        let (renderer, diags) = Renderer::new(&model);
        assert!(diags.is_empty(), "{diags:?}");
        // Three passes: first and second sightings fill the caches, the third hits them.
        for pass in 0..3 {
            for cluster in &all {
                if cluster.id.starts_with("w-ws") {
                    assert!(renderer.fast_digest(cluster).is_some(), "{}", cluster.id);
                }
                let bundle = renderer.render(cluster).expect("renders");
                let digest = renderer.digest(cluster).expect("digests");
                assert_eq!(
                    digest,
                    (bundle.digest.clone(), bundle.objects.len()),
                    "pass {pass}, cluster {}",
                    cluster.id
                );
            }
        }
        // A fresh renderer agrees with one whose caches are warm.
        let (fresh, _) = Renderer::new(&model);
        for cluster in &all {
            assert_eq!(fresh.digest(cluster), renderer.digest(cluster));
        }
        // Where the fast route cannot vouch, it says so: platform clusters, and an id in a key.
        for id in ["prod-sgp-1", "w-keyed"] {
            let cluster = all.iter().find(|c| c.id == id).expect(id);
            assert_eq!(renderer.fast_digest(cluster), None, "{id}");
        }
        // The odd ids really are there, with their ids back in place.
        let keyed = all.iter().find(|c| c.id == "w-keyed").expect("keyed");
        let yaml = renderer.render(keyed).expect("renders").to_yaml();
        assert!(yaml.contains("keyed: x-keyed"), "{yaml}");
    }

    #[test]
    fn the_fast_digest_reports_errors_like_render() {
        let mut files = odd_files(4);
        let bad = files
            .iter_mut()
            .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
            .expect("service template");
        bad.bytes
            .extend_from_slice(b"---\nkind: Service\nmetadata: {name: {{ workspace.name }}}\n");
        let model = cplane_schema::load(files).into_valid().expect("valid");
        let (renderer, _) = Renderer::new(&model);
        for cluster in clusters(&model).iter().filter(|c| c.workspace.is_some()) {
            let errors = renderer.digest(cluster).expect_err("not an object");
            assert_eq!(Err(errors), renderer.render(cluster).map(|b| b.digest));
        }
    }

    #[test]
    fn tojson_is_the_builtins() {
        let ours = {
            let mut env = Environment::new();
            env.add_filter("tojson", tojson);
            env
        };
        let builtin = Environment::new();
        // Strings of every kind of character JSON or HTML escapes, and random mixes of them.
        let alphabet: Vec<char> = "aZ9-. <>&'\"\\/\u{0}\u{1f}\t\n\r\u{7f}é中😀\u{2028}\u{2029}"
            .chars()
            .collect();
        let mut strings: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        strings.extend(["", "sgp-1.cogrion.com", "</script>", "a<b>&'c\"d\\e"].map(String::from));
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2_000 {
            let len = (seed % 12) as usize;
            strings.push(
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect(),
            );
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        let mut values: Vec<Value> = strings.iter().map(|s| Value::from(s.as_str())).collect();
        values.extend(strings.iter().map(|s| Value::from_safe_string(s.clone())));
        values.extend([
            Value::from(1),
            Value::from(true),
            Value::from(()),
            Value::from(vec!["<a>", "b"]),
            Value::from_serialize(serde_json::json!({"cpu": "500m", "x": {"y": ["&", 1.5]}})),
        ]);
        for template in [
            "{{ v | tojson }}",
            "{{ v | tojson(2) }}",
            "{{ v | tojson(indent=2) }}",
            "{{ v | tojson(true) }}",
            "{{ v | tojson(false) }}",
            "{{ v | tojson(bogus=1) }}",
        ] {
            for v in &values {
                let render = |env: &Environment| {
                    env.render_str(template, context! { v => v })
                        .map_err(|e| e.to_string())
                };
                assert_eq!(render(&ours), render(&builtin), "{template} of {v:?}");
            }
        }
    }

    #[test]
    fn standard_labels_are_built_in() {
        let mut files = crate::testdata::template_files();
        let service = files
            .iter_mut()
            .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
            .expect("service template");
        service.bytes = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: bff\n  labels: {{ labels(\"api\") }}\n  annotations: {s: {{ selector(\"api\") | tojson }}}\n".to_vec();
        let model = cplane_schema::load(files.clone())
            .into_valid()
            .expect("valid");
        let (renderer, _) = Renderer::new(&model);
        let acme = clusters(&model)
            .into_iter()
            .find(|c| c.id == "w-acme")
            .expect("acme");
        let bundle = renderer.render(&acme).expect("renders");
        let service = bundle
            .objects
            .iter()
            .find(|o| o.value["kind"] == "Service")
            .expect("service");
        let labels = &service.value["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "bff");
        assert_eq!(labels["app.kubernetes.io/component"], "api");
        assert_eq!(labels["app.kubernetes.io/part-of"], "cogrion");
        assert_eq!(
            service.value["metadata"]["annotations"]["s"],
            r#"{"app.kubernetes.io/component":"api","app.kubernetes.io/name":"bff"}"#
        );
        // A component must be a DNS label.
        let bad = files
            .iter_mut()
            .find(|f| f.path == "stacks/bff/templates/service.yaml.j2")
            .expect("service template");
        bad.bytes = b"apiVersion: v1\nkind: Service\nmetadata:\n  name: bff\n  labels: {{ labels(\"Not A Label\") }}\n".to_vec();
        let model = cplane_schema::load(files).into_valid().expect("valid");
        let (renderer, _) = Renderer::new(&model);
        let errors = renderer.render(&acme).expect_err("refused");
        assert!(
            errors[0]
                .message
                .contains("labels(): `Not A Label` is not a DNS label"),
            "{errors:?}"
        );
    }

    #[test]
    fn tenant_documents_are_parsed_once_per_shape() {
        // Synthetic workspaces 1, 13 and 31 have the same stacks, values, region and
        // environment: only their names (of the same length) differ.
        let model = cplane_schema::load(crate::testdata::synthetic_files(32))
            .into_valid()
            .expect("valid");
        let (renderer, _) = Renderer::new(&model);
        let all = clusters(&model);
        let cluster = |id: &str| all.iter().find(|c| c.id == id).expect("cluster").clone();
        let (a, b, c) = (
            cluster("w-ws00001"),
            cluster("w-ws00013"),
            cluster("w-ws00031"),
        );
        let count = || {
            renderer
                .cache
                .parses
                .load(std::sync::atomic::Ordering::Relaxed)
        };

        let first = renderer.render(&a).expect("renders");
        renderer.render(&b).expect("renders"); // the second sighting keeps them
        let before = count();
        let third = renderer.render(&c).expect("renders");
        assert_eq!(
            count(),
            before,
            "the third cluster's documents all come from the cache"
        );
        assert_ne!(first.digest, third.digest);
        assert_eq!(
            first.to_yaml().replace("ws00001", "ws00031"),
            third.to_yaml(),
            "the same bundle, with the other name"
        );
    }
}
