//! What templates see: the variables of a region × environment, of a cluster and of a
//! stack, and the built-in functions and filters (`host`, `bucket`, `labels`, `selector`,
//! `tojson`).

use super::*;

/// The template variables shared by every cluster of one region × environment: made once per
/// renderer rather than once per cluster (a tenant cluster's own are few: its id, workspace
/// and workspace domains).
#[derive(Clone)]
pub(super) struct Scope {
    pub(super) names: cplane_schema::domain::RegionalNames,
    pub(super) platform: Value,
    pub(super) region: Value,
    pub(super) environment: Value,
    pub(super) vars: Value,
    /// The regional entries of `domains`.
    pub(super) domains: BTreeMap<&'static str, String>,
}

impl Scope {
    pub(super) fn new(model: &Model, region_id: &str, environment: &str) -> Self {
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
    pub(super) fn all(model: &Model) -> HashMap<(String, String), Self> {
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
pub(super) struct PreparedStack<'m> {
    pub(super) stack: Value,
    pub(super) defaults_json: serde_json::Value,
    pub(super) defaults: Value,
    pub(super) templates: Vec<&'m str>,
}

impl<'m> PreparedStack<'m> {
    pub(super) fn new(name: &str, stack: &'m cplane_schema::load::StackEntry) -> Self {
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

    /// The `values` variable of a cluster whose workspace gives the stack `overrides` (none
    /// or empty: the defaults, made once).
    pub(super) fn values(&self, overrides: Option<&BTreeMap<String, serde_json::Value>>) -> Value {
        match overrides {
            None => self.defaults.clone(),
            Some(overrides) => {
                let overrides = serde_json::to_value(overrides).expect("JSON values serialize");
                self.merged(&overrides)
            }
        }
    }

    /// The defaults with `overrides` (a JSON map) deep-merged over them.
    pub(super) fn merged(&self, overrides: &serde_json::Value) -> Value {
        let mut values = self.defaults_json.clone();
        deep_merge(&mut values, overrides);
        Value::from_serialize(&values)
    }

    pub(super) fn all(model: &'m Model) -> HashMap<&'m str, Self> {
        model
            .stacks
            .iter()
            .map(|(name, stack)| (name.as_str(), Self::new(name, stack)))
            .collect()
    }
}

/// The variables of one cluster, the same for each of its stacks (see [`TemplateContext`]).
#[derive(Debug)]
pub(super) struct ClusterContext {
    pub(super) platform: Value,
    pub(super) region: Value,
    pub(super) environment: Value,
    pub(super) cluster: Value,
    pub(super) vars: Value,
    pub(super) domains: Value,
    /// Undefined on platform clusters.
    pub(super) workspace: Value,
}

/// The strings of a tenant cluster's variables that name its workspace: those that differ
/// between the tenant clusters of one region × environment, apart from the stacks' values.
#[derive(Debug, Clone)]
pub(super) struct TenantStrings {
    /// `workspace.id`, `.name`, `.account`, `.awsAccountId`.
    pub(super) workspace: [String; 4],
    /// `cluster.id`.
    pub(super) cluster: String,
    /// `domains.zone`, `.wildcard`, `.bff`, `.app`.
    pub(super) domains: [String; 4],
}

impl TenantStrings {
    /// The strings of tenant cluster `cluster` of workspace `id`.
    pub(super) fn new(
        scope: &Scope,
        cluster: &Cluster,
        id: &str,
        spec: &cplane_schema::model::WorkspaceSpec,
    ) -> Self {
        let names = &scope.names;
        Self {
            workspace: [
                id.to_owned(),
                workspace_name(id),
                spec.account.clone(),
                spec.aws.account_id.clone(),
            ],
            cluster: cluster.id.clone(),
            domains: [
                names.workspace_zone(id),
                names.workspace_wildcard(id),
                names.workspace_host(id, "bff"),
                names.workspace_host(id, "app"),
            ],
        }
    }

    /// Every string, in a fixed order.
    pub(super) fn all(&self) -> impl Iterator<Item = &str> {
        let workspace = self.workspace.iter().map(String::as_str);
        let domains = self.domains.iter().map(String::as_str);
        workspace.chain([self.cluster.as_str()]).chain(domains)
    }

    /// The same with `f` applied to every string.
    pub(super) fn map(&self, f: impl Fn(&str) -> String) -> Self {
        Self {
            workspace: self.workspace.each_ref().map(|s| f(s)),
            cluster: f(&self.cluster),
            domains: self.domains.each_ref().map(|s| f(s)),
        }
    }
}

/// The variables of `cluster` in `scope`; `tenant` holds a tenant cluster's own.
pub(super) fn cluster_context(
    scope: &Scope,
    cluster: &Cluster,
    tenant: Option<&TenantStrings>,
) -> Arc<ClusterContext> {
    let mut domains = scope.domains.clone();
    let mut workspace = Value::UNDEFINED;
    let mut id = cluster.id.as_str();
    if let Some(t) = tenant {
        let [ws_id, name, account, aws] = &t.workspace;
        workspace = context! {
            id => ws_id,
            name => name,
            account => account,
            awsAccountId => aws,
        };
        id = &t.cluster;
        for (key, value) in ["zone", "wildcard", "bff", "app"]
            .into_iter()
            .zip(&t.domains)
        {
            domains.insert(key, value.clone());
        }
    }
    Arc::new(ClusterContext {
        platform: scope.platform.clone(),
        region: scope.region.clone(),
        environment: scope.environment.clone(),
        cluster: context! { id => id, kind => Value::from_serialize(cluster.kind) },
        vars: scope.vars.clone(),
        domains: Value::from_serialize(&domains),
        workspace,
    })
}

/// What a stack's templates see: the cluster's variables, the stack and its values (documented
/// in the state repo template's README). One object with a fixed set of names rather than a
/// map merged from two: every variable and function name a template uses is looked up here
/// first, and a miss (`labels`, `host`, ...) costs a `match`, not two map searches.
#[derive(Debug)]
pub(super) struct TemplateContext {
    pub(super) cluster: Arc<ClusterContext>,
    pub(super) stack: Value,
    pub(super) values: Value,
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
pub(super) fn host(state: &State, service: &str) -> Result<String, minijinja::Error> {
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
/// `{{ values.x | secret_key_ref }}`: a stack value of type `secretRef` (`{secretRef: {name,
/// key}}`, or the inner `{name, key}`) as the flow map `{"secretKeyRef":{"key":…,"name":…}}`,
/// to stand after `valueFrom:`. The Secret's value itself never passes through cplane.
pub(super) fn secret_key_ref(value: &Value) -> Result<Value, minijinja::Error> {
    let invalid = |why: &str| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("secret_key_ref: {why}; expected {{secretRef: {{name, key}}}}"),
        )
    };
    let inner = match value.get_attr("secretRef") {
        Ok(inner) if !inner.is_undefined() => inner,
        _ => value.clone(),
    };
    let field = |name: &str| -> Result<String, minijinja::Error> {
        inner
            .get_attr(name)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| invalid(&format!("no string `{name}`")))
    };
    let (name, key) = (field("name")?, field("key")?);
    let json = serde_json::json!({"secretKeyRef": {"name": name, "key": key}});
    Ok(Value::from_safe_string(json.to_string()))
}

pub(super) fn tojson(
    value: &Value,
    indent: Option<Value>,
    args: Kwargs,
) -> Result<Value, minijinja::Error> {
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
pub(super) fn bucket(state: &State, purpose: &str) -> Result<String, minijinja::Error> {
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
pub(super) struct StandardLabels {
    /// `,"app.kubernetes.io/name":"<stack>"`.
    pub(super) name: String,
    /// `,"app.kubernetes.io/part-of":"<platform>"`.
    pub(super) part_of: String,
}

impl StandardLabels {
    pub(super) fn new(stack: &str, platform: &str) -> Self {
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
    pub(super) fn map(
        &self,
        func: &str,
        component: &str,
        part_of: bool,
    ) -> Result<String, minijinja::Error> {
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

pub(super) fn check_label(func: &str, arg: &str) -> Result<(), minijinja::Error> {
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
pub(super) fn template_diag(
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
