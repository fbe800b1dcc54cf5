//! The naming rules of reference doc 001 ("Domain Structure", "Cluster Configuration").
//!
//! - Cogrion service, production: `{service}.{region}.{base}` (`cplane.sgp-1.cogrion.com`)
//! - Cogrion service, other environments: `{service}.{env}.{region}.{base}`
//!   (`cplane.dev.sgp-1.cogrion.com`)
//! - Workspace service: `{service}.w-{id}.{env?}.{region}.{base}` (`bff.w-acme.sgp-1.cogrion.com`)
//! - Delegated zone: `w-{id}.{env?}.{region}.{base}`; certificate `*.` + zone
//! - Buckets: `{prefix}-{env}-{region}-{purpose}` (`cogrion-prod-sgp-1-artifacts`)
//!
//! `{env?}` is left out for the production environment.

use serde::Serialize;

/// The names of one region × environment: everything derived from base domain, region id and
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionalNames {
    base_domain: String,
    region: String,
    environment: String,
    production: bool,
    bucket_prefix: String,
}

impl RegionalNames {
    /// Names for `region` in `environment`; `production` drops the environment label from domains.
    pub fn new(
        base_domain: &str,
        bucket_prefix: &str,
        region: &str,
        environment: &str,
        production: bool,
    ) -> Self {
        Self {
            base_domain: base_domain.to_owned(),
            region: region.to_owned(),
            environment: environment.to_owned(),
            production,
            bucket_prefix: bucket_prefix.to_owned(),
        }
    }

    /// `{env?}.{region}.{base}`: the suffix of every regional name (`WORKSPACE_DOMAIN`).
    pub fn regional_domain(&self) -> String {
        if self.production {
            format!("{}.{}", self.region, self.base_domain)
        } else {
            format!("{}.{}.{}", self.environment, self.region, self.base_domain)
        }
    }

    /// A Cogrion service: `{service}.{env?}.{region}.{base}`.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}", self.regional_domain())
    }

    /// The workspace's delegated hosted zone: `w-{id}.{env?}.{region}.{base}`.
    pub fn workspace_zone(&self, workspace_id: &str) -> String {
        format!(
            "{}.{}",
            workspace_name(workspace_id),
            self.regional_domain()
        )
    }

    /// A workspace service: `{service}.w-{id}.{env?}.{region}.{base}`.
    pub fn workspace_host(&self, workspace_id: &str, service: &str) -> String {
        format!("{service}.{}", self.workspace_zone(workspace_id))
    }

    /// The workspace's wildcard certificate name: `*.w-{id}.{env?}.{region}.{base}`.
    pub fn workspace_wildcard(&self, workspace_id: &str) -> String {
        format!("*.{}", self.workspace_zone(workspace_id))
    }

    /// A regional bucket: `{prefix}-{env}-{region}-{purpose}` (the environment is always present).
    pub fn bucket(&self, purpose: &str) -> String {
        format!(
            "{}-{}-{}-{purpose}",
            self.bucket_prefix, self.environment, self.region
        )
    }

    /// The variables injected into every pod ("Cluster Configuration").
    pub fn cluster_vars(&self) -> ClusterVars {
        ClusterVars {
            base_domain: self.service_host("cplane"),
            workspace_domain: self.regional_domain(),
            auth_domain: self.service_host("auth"),
            temporal_domain: self.service_host("temporal"),
            region: self.region.clone(),
            environment: self.environment.clone(),
        }
    }
}

/// `w-{id}`: the derived workspace name (cluster id, zone label, Kubernetes names).
pub fn workspace_name(workspace_id: &str) -> String {
    format!("w-{workspace_id}")
}

/// The per-pod variables of reference doc 001, "Cluster Configuration".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct ClusterVars {
    /// Control plane API / Keycloak redirect URIs: `cplane.{env?}.{region}.{base}`.
    pub base_domain: String,
    /// Suffix for per-workspace URLs and delegated zones: `{env?}.{region}.{base}`.
    pub workspace_domain: String,
    /// Keycloak: `auth.{env?}.{region}.{base}`.
    pub auth_domain: String,
    /// Temporal UI: `temporal.{env?}.{region}.{base}`.
    pub temporal_domain: String,
    /// Region id, e.g. `sgp-1`.
    pub region: String,
    /// Environment tag, e.g. `prod`.
    pub environment: String,
}

/// Whether `s` is a DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a lowercase DNS name of labels (no trailing dot), at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sgp1(env: &str) -> RegionalNames {
        RegionalNames::new("cogrion.com", "cogrion", "sgp-1", env, env == "prod")
    }

    // Every expectation below is an example printed in reference doc 001.
    #[test]
    fn production_names_leave_out_the_environment() {
        let prod = sgp1("prod");
        assert_eq!(prod.service_host("cplane"), "cplane.sgp-1.cogrion.com");
        assert_eq!(prod.service_host("auth"), "auth.sgp-1.cogrion.com");
        assert_eq!(
            prod.workspace_host("acme", "bff"),
            "bff.w-acme.sgp-1.cogrion.com"
        );
        assert_eq!(prod.workspace_zone("acme"), "w-acme.sgp-1.cogrion.com");
        assert_eq!(
            prod.workspace_wildcard("acme"),
            "*.w-acme.sgp-1.cogrion.com"
        );
        assert_eq!(prod.bucket("artifacts"), "cogrion-prod-sgp-1-artifacts");
    }

    #[test]
    fn other_environments_carry_their_label() {
        let dev = sgp1("dev");
        assert_eq!(dev.service_host("cplane"), "cplane.dev.sgp-1.cogrion.com");
        assert_eq!(
            dev.workspace_host("acme", "trino"),
            "trino.w-acme.dev.sgp-1.cogrion.com"
        );
        assert_eq!(dev.workspace_zone("acme"), "w-acme.dev.sgp-1.cogrion.com");
        assert_eq!(dev.bucket("exports"), "cogrion-dev-sgp-1-exports");
    }

    #[test]
    fn cluster_vars_match_the_prod_sgp_1_example() {
        let vars = sgp1("prod").cluster_vars();
        assert_eq!(
            vars,
            ClusterVars {
                base_domain: "cplane.sgp-1.cogrion.com".into(),
                workspace_domain: "sgp-1.cogrion.com".into(),
                auth_domain: "auth.sgp-1.cogrion.com".into(),
                temporal_domain: "temporal.sgp-1.cogrion.com".into(),
                region: "sgp-1".into(),
                environment: "prod".into(),
            }
        );
        let json = serde_json::to_value(&vars).expect("plain strings serialize");
        assert_eq!(json["BASE_DOMAIN"], "cplane.sgp-1.cogrion.com");
        assert_eq!(json["TEMPORAL_DOMAIN"], "temporal.sgp-1.cogrion.com");
    }

    #[test]
    fn dns_labels() {
        for ok in ["acme", "a", "x-1", "0abc"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_name("sgp-1.cogrion.com"));
        assert!(!is_dns_name("sgp-1..cogrion.com"));
    }
}
