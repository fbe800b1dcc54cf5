//! `cplane deploy render --values FILE`: the control plane's Kubernetes manifests for one
//! region × environment, from one values file (reference doc 001: one chart, a values file per
//! environment per region, the application configured by environment variables only).
//!
//! The template (`deploy/templates/control-plane.yaml.j2`, built into the binary) is rendered
//! with the same template engine as stacks; a values file is read strictly (unknown fields
//! are errors) and checked, every error naming the file, line and field. Secrets appear only
//! as references to Secrets the operator creates.

use cplane_schema::domain::{is_dns_label, is_dns_name};
use cplane_schema::position::PositionIndex;
use cplane_schema::Diagnostic;
use serde::{Deserialize, Serialize};

/// The template, as shipped in `deploy/templates/`.
pub const TEMPLATE: &str = include_str!("../../../deploy/templates/control-plane.yaml.j2");

/// One region × environment's values.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Values {
    /// `REGION`, e.g. `sgp-1`.
    pub region: String,
    /// `ENVIRONMENT`, e.g. `prod`.
    pub environment: String,
    /// `BASE_DOMAIN`: the control plane's host, e.g. `cplane.sgp-1.cogrion.com`.
    pub base_domain: String,
    /// `WORKSPACE_DOMAIN`: suffix of workspace URLs and zones, e.g. `sgp-1.cogrion.com`.
    pub workspace_domain: String,
    /// `AUTH_DOMAIN`: the identity provider's host, e.g. `auth.sgp-1.cogrion.com`.
    pub auth_domain: String,
    /// `TEMPORAL_DOMAIN`, e.g. `temporal.sgp-1.cogrion.com`.
    pub temporal_domain: String,
    /// Keycloak realm whose issuer signs users' tokens (`https://{authDomain}/realms/{realm}`).
    pub oidc_realm: String,
    /// Audience users' tokens must carry.
    #[serde(default = "default_audience")]
    pub oidc_audience: String,
    /// `PRIMARY_CPLANE_API_URL`: set in every region but the primary.
    #[serde(default)]
    pub primary_cplane_api_url: Option<String>,
    /// The `cplane` image.
    pub image: String,
    /// Replicas (they share the database; one holds the reconcile lease).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// The state repo.
    pub state_repo: StateRepo,
    /// `aws` or `none`.
    #[serde(default = "default_cloud")]
    pub cloud: String,
    /// Namespace of the control plane.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Names of the Secrets the operator creates (never their contents).
    #[serde(default)]
    pub secrets: Secrets,
    /// IngressClass of the public ingress.
    #[serde(default = "default_ingress_class")]
    pub ingress_class: String,
    /// Namespace of the ingress controller (allowed in by the NetworkPolicy).
    #[serde(default = "default_ingress_namespace")]
    pub ingress_namespace: String,
    /// Namespace of Prometheus (allowed in by the NetworkPolicy).
    #[serde(default = "default_monitoring_namespace")]
    pub monitoring_namespace: String,
    /// cert-manager ClusterIssuer of the control plane's certificate.
    #[serde(default = "default_cluster_issuer")]
    pub cluster_issuer: String,
}

/// Where the state repo is.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateRepo {
    /// Its remote.
    pub url: String,
    /// The branch to follow (default: the remote's HEAD).
    #[serde(default)]
    pub branch: Option<String>,
}

/// Names of Secrets in the control plane's namespace.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Secrets {
    /// Key `url`: the PostgreSQL URL.
    #[serde(default = "default_database_secret")]
    pub database: String,
    /// Key `secret`: the git push webhook's secret.
    #[serde(default = "default_webhook_secret")]
    pub webhook: String,
    /// Key `token`: `INTER_REGION_SERVICE_TOKEN` (regions with a primary).
    #[serde(default = "default_inter_region_secret")]
    pub inter_region_token: String,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            database: default_database_secret(),
            webhook: default_webhook_secret(),
            inter_region_token: default_inter_region_secret(),
        }
    }
}

fn default_audience() -> String {
    "cplane".into()
}
fn default_replicas() -> u32 {
    2
}
fn default_cloud() -> String {
    "aws".into()
}
fn default_namespace() -> String {
    "cplane".into()
}
fn default_ingress_class() -> String {
    "nginx".into()
}
fn default_ingress_namespace() -> String {
    "ingress-nginx".into()
}
fn default_monitoring_namespace() -> String {
    "monitoring".into()
}
fn default_cluster_issuer() -> String {
    "letsencrypt".into()
}
fn default_database_secret() -> String {
    "cplane-database".into()
}
fn default_webhook_secret() -> String {
    "cplane-webhook".into()
}
fn default_inter_region_secret() -> String {
    "cplane-inter-region".into()
}

/// Reads and checks a values file: every problem, each with its file, line and field.
pub fn parse(file: &str, text: &str) -> Result<Values, Vec<Diagnostic>> {
    let values: Values =
        serde_yaml::from_str(text).map_err(|e| vec![cplane_schema::load::yaml_error(file, &e)])?;
    let index = PositionIndex::build(text);
    let mut diags = Vec::new();
    let mut bad = |path: &str, text: String| {
        diags.push(Diagnostic::new(file, index.locate(path), path, text));
    };
    for (path, v) in [
        ("region", &values.region),
        ("environment", &values.environment),
        ("namespace", &values.namespace),
        ("secrets.database", &values.secrets.database),
        ("secrets.webhook", &values.secrets.webhook),
        (
            "secrets.interRegionToken",
            &values.secrets.inter_region_token,
        ),
    ] {
        if !is_dns_label(v) {
            bad(path, format!("{v:?} is not a DNS label (a-z, 0-9, '-')"));
        }
    }
    for (path, v) in [
        ("baseDomain", &values.base_domain),
        ("workspaceDomain", &values.workspace_domain),
        ("authDomain", &values.auth_domain),
        ("temporalDomain", &values.temporal_domain),
    ] {
        if !is_dns_name(v) {
            bad(path, format!("{v:?} is not a DNS name"));
        } else if !v.split('.').any(|l| l == values.region) {
            bad(
                path,
                format!(
                    "{v:?} does not hold the region {:?}: every domain carries its region (reference doc 001)",
                    values.region
                ),
            );
        }
    }
    if values.replicas == 0 {
        bad("replicas", "must be at least 1".into());
    }
    if !matches!(values.cloud.as_str(), "aws" | "none") {
        bad(
            "cloud",
            format!("{:?}: expected `aws` or `none`", values.cloud),
        );
    }
    if let Some(url) = &values.primary_cplane_api_url {
        if !url.starts_with("https://") {
            bad(
                "primaryCplaneApiUrl",
                format!("{url:?}: the primary region is reached over https://"),
            );
        }
    }
    if values.image.trim().is_empty() {
        bad("image", "must name an image".into());
    }
    if diags.is_empty() {
        Ok(values)
    } else {
        Err(diags)
    }
}

/// The manifests for `values`, as multi-document YAML. Each document is parsed back, so what
/// is printed is well-formed YAML.
pub fn render(values: &Values) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("control-plane.yaml.j2", TEMPLATE)
        .map_err(|e| format!("deploy/templates/control-plane.yaml.j2: {e}"))?;
    let text = env
        .get_template("control-plane.yaml.j2")
        .and_then(|t| t.render(minijinja::context! { v => values }))
        .map_err(|e| format!("deploy/templates/control-plane.yaml.j2: {e}"))?;
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        serde_yaml::Value::deserialize(doc)
            .map_err(|e| format!("rendered document {}: {e}", i + 1))?;
    }
    Ok(format!(
        "# cplane control plane, region {} environment {}, rendered by cplane {}.\n{}",
        values.region,
        values.environment,
        crate::version(),
        text.trim_start()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "region: sgp-1\nenvironment: prod\nbaseDomain: cplane.sgp-1.cogrion.com\n\
        workspaceDomain: sgp-1.cogrion.com\nauthDomain: auth.sgp-1.cogrion.com\n\
        temporalDomain: temporal.sgp-1.cogrion.com\noidcRealm: cogrion\nimage: cplane:1\n\
        stateRepo: {url: 'https://git.example.com/state.git'}\n";

    #[test]
    fn a_values_file_renders_with_defaults() {
        let v = parse("v.yaml", GOOD).expect("valid");
        assert_eq!((v.replicas, v.namespace.as_str()), (2, "cplane"));
        let text = render(&v).expect("render");
        assert!(text.contains("value: \"sgp-1\"") && !text.contains("PRIMARY_CPLANE_API_URL"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = GOOD.replace("authDomain: auth.sgp-1", "authDomain: auth.fra-1");
        let e = parse("deploy/values/x.yaml", &text).expect_err("invalid");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].line, e[0].path.as_str()), (5, "authDomain"));
        let e = parse("x.yaml", &format!("{GOOD}replica: 3\n")).expect_err("unknown field");
        assert!(e[0].message.contains("replica") && e[0].line == 10, "{e:?}");
    }
}
