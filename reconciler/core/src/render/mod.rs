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

mod cache;
mod clusters;
mod context;
mod documents;
mod generalize;
mod once;
mod passthrough;

use cache::*;
pub use clusters::{clusters, Cluster, ClusterKind};
use context::*;
pub use documents::object_key;
use documents::*;
use generalize::*;
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
    /// What each stack's generalized contexts are made with (see `once`).
    through: Arc<HashMap<String, once::Through>>,
    /// The platform name the environments' `labels()` were made with.
    platform: String,
}

/// Compiled templates of every stack.
pub struct Renderer<'m> {
    model: &'m Model,
    envs: Arc<BTreeMap<String, Environment<'static>>>,
    /// What each stack's generalized contexts are made with (see `once`).
    through: Arc<HashMap<String, once::Through>>,
    /// Tenant stacks' outputs by generalized context (see `once`).
    once: once::OnceCache,
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
            env.add_filter("secret_key_ref", secret_key_ref);
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
                through: Arc::new(once::through_of(model)),
                once: Default::default(),
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
            through: self.through.clone(),
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
            through: compiled.through.clone(),
            once: Default::default(),
            scopes: Scope::all(model),
            stacks: PreparedStack::all(model),
            cache: ParseCache::default(),
            lines: LineCache::default(),
        }
    }

    /// The same renderer with the generalized parsing of tenant documents on (the default) or
    /// off. Off, every template is rendered and every document parsed for every cluster, and
    /// [`Renderer::digest`] always builds the bundle: the results are the same (the
    /// guarantees and their arguments are on `generalize::Generalizer` and in `once`), only
    /// slower. The switch is there to compare the two routes
    /// and to rule the fast one out when a rendering looks wrong.
    pub fn generalizing(mut self, on: bool) -> Self {
        self.cache.no_generalizing = !on;
        self
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
        self.outputs(cluster, given, false, |output| {
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
    /// ([`Tokens`], [`LineCache`]: the workspace id and the values that differ between
    /// workspaces replaced by placeholders), so a document seen before, up to those values, is
    /// neither parsed nor serialized again; the bundle itself is not built. A tenant template
    /// is rendered once per generalized context (`once`), not once per cluster. A document that
    /// does not generalize is parsed as it is; whatever the fast route cannot vouch for
    /// (platform clusters, errors, duplicate objects) goes through [`Renderer::render`].
    pub fn digest(&self, cluster: &Cluster) -> Result<(String, usize), Vec<Diagnostic>> {
        match self.fast_digest(cluster) {
            Some(digest) => Ok(digest),
            None => self.render(cluster).map(|b| (b.digest, b.objects.len())),
        }
    }

    /// [`Renderer::digest`] by canonical lines, or `None` where that route cannot vouch for
    /// the result.
    fn fast_digest(&self, cluster: &Cluster) -> Option<(String, usize)> {
        self.fast_lines(cluster, |lines| {
            // The canonical bytes are each line with the tokens put back at its marks, hashed
            // as they are streamed (SHA-256 does not care how its input is cut).
            let mut hasher = Sha256::new();
            for (line, _, tokens) in lines {
                let mut copied = 0;
                for &(mark, run, token) in &line.marks {
                    hasher.update(&line.json.as_bytes()[copied..mark]);
                    let text = tokens.texts[token];
                    for _ in 0..run / text.len() {
                        hasher.update(text.as_bytes());
                    }
                    copied = mark + run;
                }
                hasher.update(&line.json.as_bytes()[copied..]);
                hasher.update(b"\n");
            }
            (
                format!("sha256:{}", hex::encode(hasher.finalize())),
                lines.len(),
            )
        })
    }

    /// Whether `cluster` renders, with every check [`Renderer::render`] makes, and its object
    /// count; by the route of [`Renderer::digest`], without hashing the bundle (`cplane
    /// validate` needs no digest).
    pub fn verify(&self, cluster: &Cluster) -> Result<usize, Vec<Diagnostic>> {
        match self.fast_lines(cluster, |lines| lines.len()) {
            Some(objects) => Ok(objects),
            None => self.render(cluster).map(|b| b.objects.len()),
        }
    }

    /// `finish` given the canonical lines of `cluster`'s bundle in apply order, each with the
    /// tokens to put back into it, or `None` where this route cannot vouch for the result.
    ///
    /// Each document is generalized over the cluster's [`Tokens`]: the workspace id, the AWS
    /// account id and the values the workspace gives the document's stack. A document that
    /// cannot be (or whose line does not hold for these tokens) is parsed as it is: its line is
    /// then the full route's for that document.
    fn fast_lines<R>(
        &self,
        cluster: &Cluster,
        finish: impl FnOnce(&[Found<'_>]) -> R,
    ) -> Option<R> {
        if self.cache.no_generalizing {
            return None;
        }
        let id = cluster.workspace.as_deref()?;
        let ws = self.model.workspaces.get(id)?;
        let spec = &ws.doc.spec;
        let common = [spec.aws.account_id.as_str(), spec.account.as_str()];
        let tokens = Tokens::new(id, common)?;
        // Each stack's values as further tokens (a stack's templates see only its own).
        let values: Vec<(&str, Vec<String>)> = spec
            .stacks
            .iter()
            .map(|sref| {
                let mut values = Vec::new();
                for v in sref.values.values() {
                    scalars(v, &mut values);
                }
                values.retain(|v| is_token(v));
                (sref.name.as_str(), values)
            })
            .collect();
        let by_stack: Vec<(&str, Tokens<'_>)> = values
            .iter()
            .filter(|(_, values)| !values.is_empty())
            .filter_map(|(stack, values)| {
                let extra = values.iter().map(String::as_str);
                Some((*stack, Tokens::new(id, common.into_iter().chain(extra))?))
            })
            .collect();
        let placeholder = generalize::placeholder(0, id.len());
        let general_cluster = cluster.id.replace(id, placeholder);
        let foreign = |s: &str| s.bytes().any(|b| generalize::slot_of(b).is_some());
        if foreign(&cluster.id) {
            return None; // its letters would read as placeholders
        }
        // Each document's line and, where its key holds a placeholder, the key with the tokens
        // back, and the tokens to put back into the line.
        let mut lines: Vec<Found<'_>> = Vec::new();
        let mut sound = true;
        self.outputs(cluster, None, true, |output| {
            let Ok(out) = output else {
                sound = false;
                return false;
            };
            if foreign(out.stack) {
                sound = false;
                return false;
            }
            let tokens = by_stack
                .iter()
                .find(|(stack, _)| *stack == out.stack)
                .map_or(&tokens, |(_, t)| t);
            sound = split_documents(&out.text).into_iter().all(|(_, doc)| {
                let general = tokens.generalize(doc).and_then(|g| {
                    let line = self
                        .lines
                        .get(doc, &g, out.stack, &general_cluster, |text| {
                            canonical_line(&self.cache, text, out.stack, &general_cluster, &g.slots)
                        })?;
                    if !line.holds_for(tokens) {
                        return None;
                    }
                    let key = match line.key_has_placeholder {
                        false => None,
                        true => {
                            let (rank, kind, namespace, name, group) = &line.key;
                            let back = |s: &str| tokens.put_back(s, &g);
                            Some((
                                *rank,
                                back(kind)?,
                                back(namespace)?,
                                back(name)?,
                                back(group)?,
                            ))
                        }
                    };
                    Some((line, key))
                });
                let (line, key) = match general {
                    Some(found) => found,
                    None => match exact_line(&self.cache, doc, out.stack, &cluster.id) {
                        Some(line) => (Arc::new(line), None),
                        None => return false, // not an object: the full route reports it
                    },
                };
                lines.push((line, key, tokens));
                true
            });
            sound
        });
        if !sound {
            return None;
        }
        lines.sort_unstable_by(|a, b| key_of(a).cmp(key_of(b)));
        if lines
            .windows(2)
            .any(|pair| key_of(&pair[0]) == key_of(&pair[1]))
        {
            return None; // a duplicate object: the full route reports it
        }
        Some(finish(&lines))
    }

    /// Renders every template of every stack enabled on `cluster` and hands each output (or
    /// the template's error) to `each`, which returns whether to go on. With `once`, a tenant
    /// stack's templates are rendered once for every cluster that shares their generalized
    /// context ([`Renderer::stack_once`]); the outputs are the same.
    fn outputs(
        &self,
        cluster: &Cluster,
        given: Option<&cplane_schema::load::Entity<cplane_schema::model::Workspace>>,
        once: bool,
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
        let mut tenant = None;
        let mut enabled: BTreeMap<&str, Option<&BTreeMap<String, serde_json::Value>>> =
            BTreeMap::new();
        match (&cluster.kind, &cluster.workspace) {
            (ClusterKind::Tenant, Some(id)) => {
                let ws = match given {
                    Some(w) => w,
                    None => &model.workspaces[id],
                };
                tenant = Some(TenantStrings::new(&scope, cluster, id, &ws.doc.spec));
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
        let base = cluster_context(&scope, cluster, tenant.as_ref());

        for (name, overrides) in enabled {
            let Some(stack) = model.stacks.get(name) else {
                continue; // reported by validation
            };
            let Some(env) = self.envs.get(name) else {
                continue; // syntax errors, reported by Renderer::new
            };
            // Made from the same model's stacks, so it is there.
            let prepared = &self.stacks[name];
            let overrides = overrides.filter(|o| !o.is_empty());
            let context = |base: &Arc<ClusterContext>, values: Value| {
                Value::from_object(TemplateContext {
                    cluster: base.clone(),
                    stack: prepared.stack.clone(),
                    values,
                })
            };
            let render = |path: &str, ctx: &Value| {
                env.get_template(path)
                    .expect("every template was added to its stack's environment")
                    .render(ctx)
            };
            let output = |path: &'m str, rendered: Result<String, minijinja::Error>| {
                rendered
                    .map(|text| Output {
                        stack: name,
                        path,
                        source: &stack.templates[path],
                        text,
                    })
                    .map_err(|err| template_diag(&err, path, &stack.templates))
            };
            let tenant = tenant.as_ref().filter(|_| once);
            if let Some(rendered) = tenant.and_then(|tenant| {
                let of_strings = |strings: Option<&TenantStrings>, values| match strings {
                    None => context(&base, values),
                    Some(s) => context(&cluster_context(&scope, cluster, Some(s)), values),
                };
                self.stack_once(name, cluster, tenant, overrides, of_strings, render)
            }) {
                for (path, text) in prepared.templates.iter().zip(rendered) {
                    if !each(output(path, text)) {
                        return;
                    }
                }
                continue;
            }
            let ctx = context(&base, prepared.values(overrides));
            for path in prepared.templates.iter().copied() {
                if !each(output(path, render(path, &ctx))) {
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

/// A document's canonical line as the fast route found it: the line, its key with the tokens
/// back when the line's key holds a placeholder, and the tokens to put back into it.
type Found<'t> = (Arc<Line>, Option<ObjectKey>, &'t Tokens<'t>);

/// The object key of a found line, as the cluster's bundle has it.
fn key_of<'l>((line, key, _): &'l Found<'_>) -> &'l ObjectKey {
    key.as_ref().unwrap_or(&line.key)
}

/// The strings and integers of a stack value, at any depth, as text (candidate [`Tokens`]).
fn scalars(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| scalars(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| scalars(v, out)),
        _ => {}
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
mod tests;
