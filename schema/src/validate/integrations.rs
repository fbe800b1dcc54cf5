//! Rules for the platform's integrations in `cplane.yaml` and the region documents: the
//! regional Keycloak (step 9), the global tenant → region map (step 8), feature flags and the
//! Temporal address handed to BFFs. Also the names they derive per region × environment
//! ([`keycloak_realm`], [`features`], [`temporal_address`]), so the planner, the adapters and
//! the BFF config endpoint read one definition.

use std::collections::BTreeMap;

use crate::diagnostic::Diagnostic;
use crate::domain::is_dns_name;
use crate::load::{Entity, Model};
use crate::model::{Platform, Region, SecretRef};

use super::names_for;

/// A regional Keycloak realm: the server's base URL (no trailing `/`) and the realm's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeycloakRealm {
    /// Base URL, e.g. `https://auth.sgp-1.cogrion.com`.
    pub url: String,
    /// Realm name, e.g. `cogrion`.
    pub realm: String,
}

impl KeycloakRealm {
    /// `{url}/realms/{realm}`: the issuer of the realm's tokens.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.url, self.realm)
    }
}

/// The Keycloak realm of `region` × `environment`, when `spec.keycloak` is configured.
pub fn keycloak_realm(model: &Model, region: &str, environment: &str) -> Option<KeycloakRealm> {
    let platform = &model.platform.doc;
    let k = platform.spec.keycloak.as_ref()?;
    let auth = names_for(model, region, environment).service_host("auth");
    let fill = |s: &str| {
        s.replace("{authDomain}", &auth)
            .replace("{region}", region)
            .replace("{environment}", environment)
    };
    Some(KeycloakRealm {
        url: fill(&k.url).trim_end_matches('/').to_owned(),
        realm: fill(k.realm.as_deref().unwrap_or(&platform.metadata.name)),
    })
}

/// Feature flags of a region's workspaces: the platform's, overridden by the region's.
pub fn features(model: &Model, region: &str) -> BTreeMap<String, bool> {
    let mut flags = model.platform.doc.spec.features.clone();
    if let Some(r) = model.regions.get(region) {
        flags.extend(r.doc.spec.features.clone());
    }
    flags
}

/// Temporal's frontend address for a region × environment's BFFs.
pub fn temporal_address(model: &Model, region: &str, environment: &str) -> String {
    match model
        .regions
        .get(region)
        .and_then(|r| r.doc.spec.temporal_address.as_deref())
    {
        Some(a) => a.replace("{environment}", environment),
        None => format!(
            "{}:7233",
            names_for(model, region, environment).service_host("temporal")
        ),
    }
}

/// Checks `spec.keycloak`, `spec.tenantLookup` and `spec.features` of `cplane.yaml`.
pub(super) fn platform(p: &Entity<Platform>, out: &mut Vec<Diagnostic>) {
    let spec = &p.doc.spec;
    if let Some(k) = &spec.keycloak {
        if let Err(e) =
            pattern(&k.url, &["authDomain", "region", "environment"]).and_then(|url| base_url(&url))
        {
            out.push(p.diag("spec.keycloak.url", format!("`{}`: {e}", k.url)));
        }
        if let Some(realm) = &k.realm {
            match pattern(realm, &["region", "environment"]) {
                Err(e) => out.push(p.diag("spec.keycloak.realm", format!("`{realm}`: {e}"))),
                Ok(r) if !is_name(&r, 255) => out.push(p.diag(
                    "spec.keycloak.realm",
                    format!("`{realm}` is not a realm name (letters, digits, `-`, `_`, `.`)"),
                )),
                Ok(_) => {}
            }
        }
        if !is_name(&k.admin_client_id, 255) {
            out.push(p.diag(
                "spec.keycloak.adminClientId",
                format!(
                    "`{}` is not a client id (letters, digits, `-`, `_`, `.`)",
                    k.admin_client_id
                ),
            ));
        }
        secret_ref(
            p,
            "spec.keycloak.adminClientSecret",
            &k.admin_client_secret,
            out,
        );
    }
    if let Some(l) = &spec.tenant_lookup {
        match (&l.cloudflare_kv, &l.dynamodb) {
            (Some(_), Some(_)) | (None, None) => out.push(p.diag(
                "spec.tenantLookup",
                "give exactly one of `cloudflareKv` and `dynamodb`",
            )),
            _ => {}
        }
        if let Some(kv) = &l.cloudflare_kv {
            for (field, value) in [
                ("accountId", &kv.account_id),
                ("namespaceId", &kv.namespace_id),
            ] {
                if !is_cloudflare_id(value) {
                    out.push(p.diag(
                        &format!("spec.tenantLookup.cloudflareKv.{field}"),
                        format!("`{value}` is not a Cloudflare id (1–64 letters, digits)"),
                    ));
                }
            }
            if let Err(e) = base_url(&kv.api_url) {
                out.push(p.diag(
                    "spec.tenantLookup.cloudflareKv.apiUrl",
                    format!("`{}`: {e}", kv.api_url),
                ));
            }
            secret_ref(
                p,
                "spec.tenantLookup.cloudflareKv.apiToken",
                &kv.api_token,
                out,
            );
        }
        if let Some(d) = &l.dynamodb {
            let ok = (3..=255).contains(&d.table.len())
                && d.table
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                out.push(p.diag(
                    "spec.tenantLookup.dynamodb.table",
                    format!(
                        "`{}` is not a DynamoDB table name (3–255 of letters, digits, `_`, `-`, `.`)",
                        d.table
                    ),
                ));
            }
            if let Some(r) = &d.aws_region {
                if !super::is_aws_region(r) {
                    out.push(p.diag(
                        "spec.tenantLookup.dynamodb.awsRegion",
                        format!("`{r}` is not an AWS region code like `us-east-1`"),
                    ));
                }
            }
        }
    }
    flags(p, &spec.features, out);
    if let Some(policy) = &spec.rollout {
        crate::rollout::check_policy(p, "spec.rollout", policy, out);
    }
    crate::rollout::check_windows(p, "spec.syncWindows", &spec.sync_windows, out);
    if let Some(n) = &spec.notifications {
        crate::notifications::check(p, n, out);
    }
}

/// Checks a region's `temporalAddress` and `features`.
pub(super) fn region(r: &Entity<Region>, out: &mut Vec<Diagnostic>) {
    if let Some(a) = &r.doc.spec.temporal_address {
        let ok = pattern(a, &["environment"]).is_ok_and(|a| {
            a.rsplit_once(':').is_some_and(|(host, port)| {
                is_dns_name(host) && port.parse::<u16>().is_ok_and(|p| p > 0)
            })
        });
        if !ok {
            out.push(r.diag(
                "spec.temporalAddress",
                format!("`{a}` is not `host:port` (a DNS name and a port)"),
            ));
        }
    }
    flags(r, &r.doc.spec.features, out);
}

fn flags<T>(e: &Entity<T>, flags: &BTreeMap<String, bool>, out: &mut Vec<Diagnostic>) {
    for name in flags.keys() {
        let ok = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            out.push(e.diag(
                &format!("spec.features.{name}"),
                format!("`{name}` is not a flag name (a letter, then letters, digits, `_`, `-`, `.`; at most 63)"),
            ));
        }
    }
}

pub(crate) fn secret_ref(
    p: &Entity<Platform>,
    path: &str,
    s: &SecretRef,
    out: &mut Vec<Diagnostic>,
) {
    match (&s.env, &s.file) {
        (Some(_), Some(_)) | (None, None) => {
            out.push(p.diag(
                path,
                "give exactly one of `env` (a variable name) and `file` (a path): the secret itself never goes into git",
            ));
        }
        (Some(var), None) => {
            let ok = var.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                && var
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                out.push(p.diag(
                    &format!("{path}.env"),
                    format!("`{var}` is not an environment variable name (A-Z, 0-9, `_`)"),
                ));
            }
        }
        (None, Some(file)) => {
            if !file.starts_with('/') || file.contains('\0') {
                out.push(p.diag(
                    &format!("{path}.file"),
                    format!("`{file}` is not an absolute path"),
                ));
            }
        }
    }
}

/// `s` with each `{placeholder}` of `allowed` replaced by a sample value; an unknown or
/// unclosed placeholder is an error.
fn pattern(s: &str, allowed: &[&str]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a `{` is not closed".to_owned())?;
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{name}}}` (known: {})",
                allowed
                    .iter()
                    .map(|a| format!("`{{{a}}}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push_str(if name == "authDomain" {
            "auth.sgp-1.example.com"
        } else {
            "x-1"
        });
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An https URL of a DNS host (optional port and path), or plain http to a loopback host.
pub(crate) fn base_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "not a URL (expected `https://host`)".to_owned())?;
    let authority = rest.split('/').next().unwrap_or_default();
    if rest.contains(['?', '#', ' ']) || authority.contains('@') {
        return Err("a base URL has no query, fragment, spaces or user info".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return Err("an IPv6 address is not closed with `]`".into()),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" if (is_dns_name(host) && host.contains('.')) || loopback => {}
        "http" if loopback => {}
        "http" => return Err("plain http only to a loopback address; use https".into()),
        _ => return Err("expected `https://` and a host name".into()),
    }
    if !port_ok {
        return Err("the port is not a number".into());
    }
    Ok(())
}

fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn is_cloudflare_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        for ok in [
            "https://auth.sgp-1.example.com",
            "https://auth.example.com:8443/kc",
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:80",
        ] {
            assert_eq!(base_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "auth.example.com",
            "http://auth.example.com",
            "ftp://x.example.com",
            "https://x.example.com:port",
            "https://user@x.example.com",
            "https://x.example.com/?a=b",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            pattern("https://{authDomain}", &["authDomain"]).as_deref(),
            Ok("https://auth.sgp-1.example.com")
        );
        assert!(pattern("{region", &["region"]).is_err());
        assert_eq!(
            pattern("{zone}", &["region"]),
            Err("unknown placeholder `{zone}` (known: `{region}`)".into())
        );
    }
}
