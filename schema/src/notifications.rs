//! `spec.notifications` of `cplane.yaml`: where lifecycle events are sent (sinks) and which
//! event types go to which sink (routes). Secrets — a webhook's signing key, a Slack incoming
//! webhook's URL (which is itself a credential) — are given by reference ([`SecretRef`]).
//!
//! ```yaml
//! notifications:
//!   sinks:
//!     - name: ops
//!       webhook: {url: https://hooks.example.com/cplane, signingSecret: {env: CPLANE_HOOK_KEY}}
//!     - name: team-slack
//!       slack: {url: {env: CPLANE_SLACK_URL}, dashboardUrl: https://cplane.example.com}
//!   routes:
//!     - sink: team-slack
//!       types: [workspace.provisioning_failed, commit.refused, rollout.paused, agent.*]
//!     - sink: ops
//!       types: ["*"]
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::load::Entity;
use crate::model::{Platform, SecretRef};

/// Every event type cplane writes (`io.cplane.` + these): what routes may name.
pub const EVENT_TYPES: [&str; 19] = [
    "workspace.provisioned",
    "workspace.deprovisioned",
    "workspace.provisioning_failed",
    "commit.applied",
    "commit.refused",
    "rollout.started",
    "rollout.wave_passed",
    "rollout.paused",
    "rollout.resumed",
    "rollout.finished",
    "rollout.aborted",
    "rollout.superseded",
    "bundle.published",
    "drift.found",
    "drift.repaired",
    "agent.offline",
    "agent.back",
    "agent.failing",
    "agent.recovered",
];

/// The types a route's entry names: `commit.refused`, `io.cplane.commit.refused`, `rollout.*`
/// or `*` (every type). Empty when it names none.
pub fn matching_types(pattern: &str) -> Vec<&'static str> {
    let short = pattern.strip_prefix("io.cplane.").unwrap_or(pattern);
    EVENT_TYPES
        .into_iter()
        .filter(|t| match short {
            "*" => true,
            _ => match short.strip_suffix(".*") {
                Some(entity) => t.split_once('.').is_some_and(|(e, _)| e == entity),
                None => *t == short,
            },
        })
        .collect()
}

/// Notifications of lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotificationsSpec {
    /// Where events can be sent.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// Which event types go to which sink (an event goes to a sink once, whatever routes
    /// match).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

/// One sink: exactly one of `webhook` and `slack`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkSpec {
    /// The sink's name (lowercase letters, digits, `-`): routes and `/v1/status` name it.
    pub name: String,
    /// A generic webhook: each event POSTed as a CloudEvent (structured JSON), signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSinkSpec>,
    /// A Slack incoming webhook: a readable message per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSinkSpec>,
    /// Attempts per event before it is given up on (a dead letter, shown in `/v1/status`).
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A generic webhook sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookSinkSpec {
    /// Where events are POSTed (https; plain http only to a loopback address).
    pub url: String,
    /// The HMAC-SHA256 key: each request carries `X-Cplane-Signature-256: sha256=<hex of
    /// HMAC(key, body)>`. By reference.
    pub signing_secret: SecretRef,
}

/// A Slack incoming webhook sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlackSinkSpec {
    /// The incoming webhook's URL — a credential, so by reference.
    pub url: SecretRef,
    /// The dashboard or API base URL messages link to (`{url}/v1/workspaces/{id}`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
}

/// A route: these event types go to that sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// The sink's name.
    pub sink: String,
    /// Event types: `commit.refused`, `rollout.*`, `*`.
    pub types: Vec<String>,
}

/// Checks `spec.notifications`: sink names, exactly one kind per sink, URLs, secret
/// references, routes naming known sinks and types.
pub(crate) fn check(p: &Entity<Platform>, n: &NotificationsSpec, out: &mut Vec<Diagnostic>) {
    let at = "spec.notifications";
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in n.sinks.iter().enumerate() {
        let path = format!("{at}.sinks[{i}]");
        if !crate::domain::is_dns_label(&s.name) {
            out.push(p.diag(
                &format!("{path}.name"),
                format!(
                    "`{}` is not a sink name (lowercase letters, digits, `-`)",
                    s.name
                ),
            ));
        } else if !names.insert(s.name.as_str()) {
            out.push(p.diag(
                &format!("{path}.name"),
                format!("sink `{}` is named twice", s.name),
            ));
        }
        match (&s.webhook, &s.slack) {
            (Some(_), Some(_)) | (None, None) => {
                out.push(p.diag(&path, "give exactly one of `webhook` and `slack`"));
            }
            _ => {}
        }
        if let Some(w) = &s.webhook {
            if let Err(e) = crate::validate::integrations::base_url(&w.url) {
                out.push(p.diag(&format!("{path}.webhook.url"), format!("`{}`: {e}", w.url)));
            }
            crate::validate::integrations::secret_ref(
                p,
                &format!("{path}.webhook.signingSecret"),
                &w.signing_secret,
                out,
            );
        }
        if let Some(sl) = &s.slack {
            crate::validate::integrations::secret_ref(
                p,
                &format!("{path}.slack.url"),
                &sl.url,
                out,
            );
            if let Some(d) = &sl.dashboard_url {
                if let Err(e) = crate::validate::integrations::base_url(d) {
                    out.push(p.diag(&format!("{path}.slack.dashboardUrl"), format!("`{d}`: {e}")));
                }
            }
        }
        if s.max_attempts == Some(0) {
            out.push(p.diag(&format!("{path}.maxAttempts"), "must be at least 1"));
        }
    }
    for (i, r) in n.routes.iter().enumerate() {
        let path = format!("{at}.routes[{i}]");
        if !names.contains(r.sink.as_str()) {
            out.push(p.diag(
                &format!("{path}.sink"),
                format!(
                    "no sink `{}`{}",
                    r.sink,
                    crate::suggest::did_you_mean(&r.sink, names.iter().copied())
                ),
            ));
        }
        if r.types.is_empty() {
            out.push(p.diag(
                &format!("{path}.types"),
                "name at least one event type (`*`: every type)",
            ));
        }
        for (j, t) in r.types.iter().enumerate() {
            if matching_types(t).is_empty() {
                let short = t.strip_prefix("io.cplane.").unwrap_or(t);
                out.push(p.diag(
                    &format!("{path}.types[{j}]"),
                    format!(
                        "`{t}` names no event type{}",
                        crate::suggest::did_you_mean(short, EVENT_TYPES)
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_types() {
        assert_eq!(matching_types("commit.refused"), ["commit.refused"]);
        assert_eq!(
            matching_types("io.cplane.commit.refused"),
            ["commit.refused"]
        );
        assert_eq!(
            matching_types("agent.*"),
            [
                "agent.offline",
                "agent.back",
                "agent.failing",
                "agent.recovered"
            ]
        );
        assert_eq!(matching_types("*").len(), EVENT_TYPES.len());
        assert!(matching_types("commit.refussed").is_empty());
    }
}
