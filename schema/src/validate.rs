//! Rules across fields and files: ids, naming, cross references, stack values.
//!
//! Every rule reports into one list; nothing stops at the first problem.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::diagnostic::Diagnostic;
use crate::domain::{is_dns_label, is_dns_name, RegionalNames};
use crate::load::{EntityRef, Model};
use crate::model::{RegionStatus, StackTarget, ValueDecl};
use crate::suggest;

pub mod integrations;

/// Checks every rule on a parsed model. `broken` names entities whose files failed to parse, so
/// that dangling references to them are not reported a second time.
pub fn validate(model: &Model, broken: &BTreeSet<EntityRef>) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    platform(model, broken, &mut out);
    integrations::platform(&model.platform, &mut out);
    for region in model.regions.values() {
        self::region(model, region, &mut out);
        integrations::region(region, &mut out);
    }
    for stack in model.stacks.values() {
        self::stack(stack, &mut out);
    }
    // Thousands of workspaces, each checked on its own: on every core.
    let per_workspace: Vec<Vec<Diagnostic>> = model
        .workspaces
        .par_iter()
        .map(|(_, w)| {
            let mut own = Vec::new();
            self::workspace(model, broken, w, &mut own);
            own
        })
        .collect();
    out.extend(per_workspace.into_iter().flatten());
    out
}

fn platform(model: &Model, broken: &BTreeSet<EntityRef>, out: &mut Vec<Diagnostic>) {
    let p = &model.platform;
    let spec = &p.doc.spec;
    if !is_dns_label(&p.doc.metadata.name) {
        out.push(p.diag(
            "metadata.name",
            format!(
                "`{}` is not a DNS label (lowercase letters, digits, `-`)",
                p.doc.metadata.name
            ),
        ));
    }
    if !is_dns_name(&spec.base_domain) || !spec.base_domain.contains('.') {
        out.push(p.diag(
            "spec.baseDomain",
            format!(
                "`{}` is not a domain name like `cogrion.com`",
                spec.base_domain
            ),
        ));
    }
    if !is_dns_label(&spec.bucket_prefix) {
        out.push(p.diag(
            "spec.bucketPrefix",
            format!(
                "`{}` is not a valid bucket name prefix (lowercase letters, digits, `-`)",
                spec.bucket_prefix
            ),
        ));
    }
    if spec.environments.is_empty() {
        out.push(p.diag("spec.environments", "at least one environment is required"));
    }
    let mut seen = BTreeSet::new();
    for (i, env) in spec.environments.iter().enumerate() {
        let path = format!("spec.environments[{i}]");
        if !is_dns_label(env) {
            out.push(p.diag(&path, format!("`{env}` is not a DNS label")));
        }
        if !seen.insert(env) {
            out.push(p.diag(&path, format!("environment `{env}` is listed twice")));
        }
    }
    if !spec.environments.contains(&spec.production_environment) {
        out.push(p.diag(
            "spec.productionEnvironment",
            format!(
                "`{}` is not one of spec.environments",
                spec.production_environment
            ),
        ));
    }
    let primary = &spec.primary_region;
    match model.regions.get(primary) {
        Some(r) if r.doc.spec.status == RegionStatus::Retired => {
            out.push(p.diag(
                "spec.primaryRegion",
                format!(
                    "region `{primary}` is retired; the primary region must be live or planned"
                ),
            ));
        }
        Some(_) => {}
        None if broken.contains(&EntityRef::Region(primary.clone())) => {}
        None => out.push(p.diag(
            "spec.primaryRegion",
            format!(
                "region `{primary}` does not exist (no regions/{primary}.yaml){}",
                region_suggestion(model, primary)
            ),
        )),
    }
}

/// "; did you mean `sgp-1`?" for a region id mistyped in its city part (`spg-1`). A different
/// index (`sgp-9`) more likely names a region not yet added than a typo: no suggestion.
fn region_suggestion(model: &Model, id: &str) -> String {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let index = digits(id);
    suggest::did_you_mean(
        id,
        model
            .regions
            .keys()
            .map(String::as_str)
            .filter(|r| digits(r) == index),
    )
}

/// `{city}-{index}`: lowercase letters, a dash, digits (`sgp-1`, `fra-2`).
fn is_region_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((city, index)) => {
            !city.is_empty()
                && city.bytes().all(|b| b.is_ascii_lowercase())
                && !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// AWS region codes: `ap-southeast-1`, `us-gov-west-1`.
fn is_aws_region(code: &str) -> bool {
    let parts: Vec<&str> = code.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

fn region(model: &Model, r: &crate::load::Entity<crate::model::Region>, out: &mut Vec<Diagnostic>) {
    let id = &r.doc.metadata.name;
    let spec = &r.doc.spec;
    let platform = &model.platform.doc.spec;
    if !is_region_id(id) {
        out.push(r.diag("metadata.name", format!("`{id}` is not a region id of the form {{city}}-{{index}}, lowercase (e.g. `sgp-1`)")));
    } else if *id != r.path_id {
        out.push(r.diag("metadata.name", format!("`{id}` does not match the file name; expected regions/{id}.yaml or metadata.name `{}`", r.path_id)));
    }
    if !is_aws_region(&spec.aws_region) {
        out.push(r.diag(
            "spec.awsRegion",
            format!(
                "`{}` is not an AWS region code like `ap-southeast-1`",
                spec.aws_region
            ),
        ));
    }
    let zone = &spec.parent_zone;
    let base = &platform.base_domain;
    if !is_dns_name(zone) {
        out.push(r.diag("spec.parentZone", format!("`{zone}` is not a DNS name")));
    } else if zone != base && !zone.ends_with(&format!(".{base}")) {
        out.push(r.diag(
            "spec.parentZone",
            format!("`{zone}` is not within the base domain `{base}`"),
        ));
    }
    if spec.status == RegionStatus::Live && spec.environments.is_empty() {
        out.push(r.diag(
            "spec.environments",
            "a live region runs at least one environment",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, env) in spec.environments.iter().enumerate() {
        let path = format!("spec.environments[{i}]");
        if !platform.environments.contains(env) {
            out.push(r.diag(
                &path,
                format!(
                    "environment `{env}` is not one of the platform's ({})",
                    platform.environments.join(", ")
                ),
            ));
        } else if !seen.insert(env) {
            out.push(r.diag(&path, format!("environment `{env}` is listed twice")));
        } else {
            let names = names_for(model, id, env);
            let domain = names.regional_domain();
            if is_dns_name(zone) && domain != *zone && !domain.ends_with(&format!(".{zone}")) {
                out.push(r.diag("spec.parentZone", format!("`{zone}` cannot delegate this region's {env} names (`{domain}` is not within it)")));
            }
        }
    }
}

/// The naming rules for one region × environment.
pub fn names_for(model: &Model, region: &str, env: &str) -> RegionalNames {
    let p = &model.platform.doc.spec;
    RegionalNames::new(
        &p.base_domain,
        &p.bucket_prefix,
        region,
        env,
        *env == p.production_environment,
    )
}

fn stack(entry: &crate::load::StackEntry, out: &mut Vec<Diagnostic>) {
    let s = &entry.entity;
    let name = &s.doc.metadata.name;
    let spec = &s.doc.spec;
    if !is_dns_label(name) {
        out.push(s.diag(
            "metadata.name",
            format!(
                "`{name}` is not a valid stack name (a DNS label: lowercase letters, digits, `-`)"
            ),
        ));
    } else if *name != s.path_id {
        out.push(s.diag("metadata.name", format!("`{name}` does not match the folder name; expected stacks/{name}/stack.yaml or metadata.name `{}`", s.path_id)));
    }
    if spec.version.trim().is_empty() {
        out.push(s.diag("spec.version", "must not be empty"));
    }
    for (key, decl) in &spec.values {
        let path = format!("spec.values.{key}");
        if let Some(default) = &decl.default {
            for (at, message) in secret_problems(key, default, &format!("{path}.default")) {
                out.push(s.diag(&at, message));
            }
            if !decl.ty.admits(default) {
                out.push(s.diag(
                    &format!("{path}.default"),
                    format!(
                        "default does not match the declared type `{}`",
                        decl.ty.name()
                    ),
                ));
            }
        } else if spec.target == StackTarget::Platform {
            out.push(s.diag(
                &path,
                "platform stacks need a default for every value (no workspace sets them)",
            ));
        }
    }
    if let Some(policy) = &spec.rollout {
        crate::rollout::check_policy(s, "spec.rollout", policy, out);
    }
    let renderable = entry.templates.keys().filter(|p| !is_partial(p)).count();
    if renderable == 0 {
        out.push(s.diag(
            "",
            format!(
                "stack has no templates: add stacks/{}/templates/<file>.yaml.j2",
                s.path_id
            ),
        ));
    }
}

/// Partials (`_name.j2`) are only included, never rendered on their own.
pub fn is_partial(template_path: &str) -> bool {
    template_path
        .rsplit('/')
        .next()
        .is_some_and(|f| f.starts_with('_'))
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws:iam::<account>:role/<path/name>` → the account id.
fn role_arn_account(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:")?;
    let (partition, rest) = rest.split_once(':')?;
    if !partition.starts_with("aws") {
        return None;
    }
    let rest = rest.strip_prefix("iam::")?;
    let (account, role) = rest.split_once(':')?;
    let name = role.strip_prefix("role/")?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c));
    (ok && is_account_id(account)).then_some(account)
}

/// The rules of one workspace: its id, region, environment, tenant account and stacks. They
/// depend only on the workspace itself, the platform, regions and stacks, so after a change
/// confined to `workspaces/` they are all that needs checking again.
pub fn workspace(
    model: &Model,
    broken: &BTreeSet<EntityRef>,
    w: &crate::load::Entity<crate::model::Workspace>,
    out: &mut Vec<Diagnostic>,
) {
    let id = &w.doc.metadata.name;
    let spec = &w.doc.spec;
    let platform = &model.platform.doc.spec;
    for (key, value) in &w.doc.metadata.labels {
        if !crate::rollout::is_label_key(key) {
            out.push(w.diag(
                &format!("metadata.labels.{key}"),
                format!("`{key}` is not a label key (a letter or digit, then letters, digits, `-`, `_`, `.`, `/`; at most 63)"),
            ));
        } else if value.len() > 63
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            out.push(w.diag(
                &format!("metadata.labels.{key}"),
                format!(
                    "`{value}` is not a label value (at most 63 letters, digits, `-`, `_`, `.`)"
                ),
            ));
        }
    }
    crate::rollout::check_windows(w, "spec.syncWindows", &spec.sync_windows, out);
    if let Some(rest) = id.strip_prefix("w-") {
        out.push(w.diag(
            "metadata.name",
            format!("`{id}`: the `w-` prefix is derived, not typed; use `{rest}`"),
        ));
    } else if !is_dns_label(id) || id.len() > 61 {
        out.push(w.diag("metadata.name", format!("`{id}` is not a DNS label of at most 61 characters (lowercase letters, digits, `-`)")));
    } else if *id != w.path_id {
        out.push(w.diag("metadata.name", format!("`{id}` does not match the file name; expected workspaces/{id}.yaml or metadata.name `{}`", w.path_id)));
    }

    // Region and environment.
    match model.regions.get(&spec.region) {
        Some(region) => {
            if region.doc.spec.status == RegionStatus::Retired {
                out.push(w.diag(
                    "spec.region",
                    format!("region `{}` is retired", spec.region),
                ));
            }
            if platform.environments.contains(&spec.environment)
                && !region.doc.spec.environments.contains(&spec.environment)
            {
                out.push(w.diag(
                    "spec.environment",
                    format!(
                        "region `{}` does not run environment `{}` (it runs: {})",
                        spec.region,
                        spec.environment,
                        region.doc.spec.environments.join(", ")
                    ),
                ));
            }
            let zone = names_for(model, &spec.region, &spec.environment).workspace_zone(id);
            // 253 minus room for the longest service label cplane derives (`jupyterhub.`).
            if is_dns_label(id) && zone.len() > 240 {
                out.push(w.diag(
                    "metadata.name",
                    format!("derived zone `{zone}` is too long for DNS"),
                ));
            }
        }
        None if broken.contains(&EntityRef::Region(spec.region.clone())) => {}
        None => out.push(w.diag(
            "spec.region",
            format!(
                "region `{}` does not exist (no regions/{}.yaml){}",
                spec.region,
                spec.region,
                region_suggestion(model, &spec.region)
            ),
        )),
    }
    if !platform.environments.contains(&spec.environment) {
        out.push(w.diag(
            "spec.environment",
            format!(
                "environment `{}` is not one of the platform's ({})",
                spec.environment,
                platform.environments.join(", ")
            ),
        ));
    }
    if !is_dns_label(&spec.account) {
        out.push(w.diag(
            "spec.account",
            format!("`{}` is not a DNS label", spec.account),
        ));
    }

    // Tenant AWS account.
    let aws = &spec.aws;
    if !is_account_id(&aws.account_id) {
        out.push(w.diag(
            "spec.aws.accountId",
            format!(
                "`{}` is not a 12-digit AWS account id (quote it: \"012345678901\")",
                aws.account_id
            ),
        ));
    }
    match role_arn_account(&aws.role_arn) {
        None => out.push(w.diag(
            "spec.aws.roleArn",
            format!(
                "`{}` is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
                aws.role_arn
            ),
        )),
        Some(account) if is_account_id(&aws.account_id) && account != aws.account_id => {
            out.push(w.diag(
                "spec.aws.roleArn",
                format!(
                    "role is in account {account}, but spec.aws.accountId is {}",
                    aws.account_id
                ),
            ));
        }
        Some(_) => {}
    }
    let ext = &aws.external_id;
    if !(2..=1224).contains(&ext.len())
        || !ext
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@:/_-".contains(c))
    {
        out.push(w.diag(
            "spec.aws.externalId",
            "must be 2–1224 characters of letters, digits and +=,.@:/_-",
        ));
    }

    // Stacks and values.
    let mut listed = BTreeMap::new();
    for (i, sref) in spec.stacks.iter().enumerate() {
        let path = format!("spec.stacks[{i}]");
        if listed.insert(sref.name.as_str(), i).is_some() {
            out.push(w.diag(
                &format!("{path}.name"),
                format!("stack `{}` is listed twice", sref.name),
            ));
            continue;
        }
        let Some(stack) = model.stacks.get(&sref.name) else {
            if !broken.contains(&EntityRef::Stack(sref.name.clone())) {
                out.push(w.diag(
                    &format!("{path}.name"),
                    format!(
                        "stack `{}` does not exist (no stacks/{}/stack.yaml){}",
                        sref.name,
                        sref.name,
                        suggest::did_you_mean(
                            &sref.name,
                            model
                                .stacks
                                .iter()
                                .filter(|(_, s)| s.entity.doc.spec.target == StackTarget::Tenant)
                                .map(|(name, _)| name.as_str())
                        )
                    ),
                ));
            }
            continue;
        };
        let sspec = &stack.entity.doc.spec;
        if sspec.target != StackTarget::Tenant {
            out.push(w.diag(
                &format!("{path}.name"),
                format!(
                    "stack `{}` targets platform clusters, not workspaces",
                    sref.name
                ),
            ));
            continue;
        }
        for (key, value) in &sref.values {
            let vpath = format!("{path}.values.{key}");
            match sspec.values.get(key) {
                None => out.push(w.diag(
                    &vpath,
                    format!(
                        "stack `{}` declares no value `{key}` (declared: {})",
                        sref.name,
                        declared(&sspec.values)
                    ),
                )),
                Some(decl) if !decl.ty.admits(value) => {
                    out.push(w.diag(
                        &vpath,
                        format!("expected {}, found {}", decl.ty.name(), json_type(value)),
                    ));
                }
                Some(_) => {}
            }
            for (at, message) in secret_problems(key, value, &vpath) {
                out.push(w.diag(&at, message));
            }
        }
        missing_values(w, &path, &sref.name, &sspec.values, Some(&sref.values), out);
    }
    for (name, stack) in &model.stacks {
        let sspec = &stack.entity.doc.spec;
        if sspec.target == StackTarget::Tenant
            && sspec.required
            && !listed.contains_key(name.as_str())
        {
            missing_values(w, "spec.stacks", name, &sspec.values, None, out);
        }
    }
}

/// Words that make a value's key name a secret (split at `_`, `-`, `.` and camelCase humps,
/// compared lower-case): `password`, `adminPassword`, `api_key`, `clientSecret`, `token`.
const SECRET_WORDS: [&str; 6] = [
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "credentials",
];

/// Whether a value key is named like a secret (see [`SECRET_WORDS`]).
pub fn is_secret_name(key: &str) -> bool {
    let is_secret = |w: &str| SECRET_WORDS.contains(&w) || w == "apikey";
    let mut word = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if matches!(c, '_' | '-' | '.') || (c.is_uppercase() && prev_lower) {
            if is_secret(&word) {
                return true;
            }
            word.clear();
        }
        if c.is_alphanumeric() {
            word.push(c.to_ascii_lowercase());
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    is_secret(&word)
}

/// What is wrong with the secrets in a stack value, as (path, message) pairs:
/// - a literal secret: a non-empty string under a key named like a secret
///   ([`is_secret_name`]), at any depth;
/// - a malformed reference: a `secretRef` that is not `{name, key}` with `name` a Kubernetes
///   object name (DNS-1123 subdomain) and `key` a Secret data key (`[-._a-zA-Z0-9]+`).
///
/// A well-formed `secretRef` is the way to pass a secret and is not looked into further.
/// Messages never quote the value: an error must not carry the secret it refuses.
fn secret_problems(key: &str, value: &serde_json::Value, path: &str) -> Vec<(String, String)> {
    /// `path` is one buffer, extended and cut back while walking: this runs for every value of
    /// every workspace, and almost always finds nothing.
    fn walk(
        key: &str,
        v: &serde_json::Value,
        path: &mut String,
        found: &mut Vec<(String, String)>,
    ) {
        if key == "secretRef" {
            if let Some(message) = secret_ref_problem(v) {
                found.push((path.clone(), message));
            }
            return;
        }
        let len = path.len();
        match v {
            serde_json::Value::String(s) if !s.is_empty() && is_secret_name(key) => {
                found.push((path.clone(), secret_literal_message(key)));
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    path.push('.');
                    path.push_str(k);
                    walk(k, v, path, found);
                    path.truncate(len);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    use std::fmt::Write as _;
                    let _ = write!(path, "[{i}]");
                    walk(key, v, path, found);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(key, value, &mut path.to_owned(), &mut found);
    found
}

/// Why `v` (the value of a `secretRef` key) is not a reference to a Secret's key, if it is not.
fn secret_ref_problem(v: &serde_json::Value) -> Option<String> {
    let shape = "a secretRef is `{name, key}`: the name of a Kubernetes Secret and one of its keys";
    let Some(map) = v.as_object() else {
        return Some(format!("expected a map, found {}; {shape}", json_type(v)));
    };
    if let Some(other) = map.keys().find(|k| !matches!(k.as_str(), "name" | "key")) {
        return Some(format!("unknown field `{other}`; {shape}"));
    }
    let name = map.get("name").and_then(|n| n.as_str());
    let key = map.get("key").and_then(|k| k.as_str());
    match (name, key) {
        (None, _) => Some(format!("`name` is missing or not a string; {shape}")),
        (_, None) => Some(format!("`key` is missing or not a string; {shape}")),
        (Some(name), _) if !crate::domain::is_dns_name(name) => {
            Some(format!(
                "`name` `{name}` is not a Kubernetes object name (lower-case DNS labels joined by dots)"
            ))
        }
        (_, Some(key))
            if key.is_empty()
                || key.len() > 253
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            Some(format!(
                "`key` `{key}` is not a Secret data key (letters, digits, `-`, `_` and `.`)"
            ))
        }
        _ => None,
    }
}

fn secret_literal_message(key: &str) -> String {
    format!(
        "`{key}` looks like a secret (a string under a key named like password, token, secret or key), and secrets never go into git: keep it in a Kubernetes Secret (or an ExternalSecret) and pass `{{secretRef: {{name, key}}}}` instead, which templates render as a `secretKeyRef` with the `secret_key_ref` filter"
    )
}

fn missing_values(
    w: &crate::load::Entity<crate::model::Workspace>,
    path: &str,
    stack: &str,
    decls: &BTreeMap<String, ValueDecl>,
    given: Option<&BTreeMap<String, serde_json::Value>>,
    out: &mut Vec<Diagnostic>,
) {
    for (key, decl) in decls {
        if decl.default.is_none() && !given.is_some_and(|g| g.contains_key(key)) {
            out.push(w.diag(
                path,
                format!(
                    "stack `{stack}` needs value `{key}` ({}), which has no default",
                    decl.ty.name()
                ),
            ));
        }
    }
}

fn declared(values: &BTreeMap<String, ValueDecl>) -> String {
    if values.is_empty() {
        "none".to_owned()
    } else {
        values
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_f64() => "number",
        serde_json::Value::Number(_) => "integer",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_names_are_told_by_their_words() {
        for key in [
            "password",
            "adminPassword",
            "api_key",
            "apiKey",
            "clientSecret",
            "token",
            "s3.aws-secret-key",
            "DB_PASSWD",
        ] {
            assert!(is_secret_name(key), "{key}");
        }
        for key in [
            "keycloak",
            "monkey",
            "tokens_per_minute_",
            "replicas",
            "accessTokenLifespanSeconds",
        ] {
            // `accessTokenLifespanSeconds` has the word `token`: only string values count.
            assert_eq!(
                is_secret_name(key),
                key == "accessTokenLifespanSeconds",
                "{key}"
            );
        }
    }

    #[test]
    fn secret_literals_are_found_at_any_depth_but_not_in_references() {
        let v = serde_json::json!({
            "lake": {"s3.secret-key": "abc", "region": "x", "empty_token": ""},
            "admin": {"password": {"secretRef": {"name": "db", "key": "password"}}},
            "list": [{"apiKey": "k1"}],
            "timeoutSecondsToken": 30,
        });
        let found: Vec<_> = secret_problems("catalogs", &v, "spec.values.catalogs")
            .into_iter()
            .map(|(path, message)| {
                assert!(
                    !message.contains("abc") && !message.contains("k1"),
                    "{message}"
                );
                path
            })
            .collect();
        assert_eq!(
            found,
            [
                "spec.values.catalogs.lake.s3.secret-key",
                "spec.values.catalogs.list[0].apiKey"
            ]
        );
    }

    #[test]
    fn a_secret_ref_must_name_a_secret_and_a_key() {
        let problem = |v: serde_json::Value| {
            secret_problems("password", &serde_json::json!({ "secretRef": v }), "p")
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
        };
        assert!(
            problem(serde_json::json!({"name": "db.main", "key": "pass_word-1.txt"})).is_empty()
        );
        for (v, says) in [
            (serde_json::json!("db"), "expected a map, found string"),
            (serde_json::json!({"key": "k"}), "`name` is missing"),
            (serde_json::json!({"name": "db"}), "`key` is missing"),
            (
                serde_json::json!({"name": "Db", "key": "k"}),
                "not a Kubernetes object name",
            ),
            (
                serde_json::json!({"name": "db", "key": "a/b"}),
                "not a Secret data key",
            ),
            (
                serde_json::json!({"name": "db", "key": "k", "value": "x"}),
                "unknown field `value`",
            ),
        ] {
            let found = problem(v.clone());
            assert_eq!(found.len(), 1, "{v}");
            assert!(found[0].contains(says), "{v}: {}", found[0]);
        }
    }

    use super::*;

    #[test]
    fn region_ids() {
        assert!(is_region_id("sgp-1"));
        assert!(is_region_id("fra-12"));
        assert!(!is_region_id("SGP-1"));
        assert!(!is_region_id("sgp1"));
        assert!(!is_region_id("sgp-a"));
        assert!(!is_region_id("new-york-1"));
    }

    #[test]
    fn aws_regions() {
        assert!(is_aws_region("ap-southeast-1"));
        assert!(is_aws_region("us-gov-west-1"));
        assert!(!is_aws_region("singapore"));
    }

    #[test]
    fn role_arns() {
        assert_eq!(
            role_arn_account("arn:aws:iam::111111111111:role/cogrion-provisioner"),
            Some("111111111111")
        );
        assert_eq!(role_arn_account("arn:aws:iam::111111111111:user/bob"), None);
        assert_eq!(role_arn_account("arn:aws:iam::1111:role/x"), None);
    }
}
