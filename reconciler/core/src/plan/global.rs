//! Steps 8 and 9 of reference doc 001's flow: the workspace's entry in the global tenant →
//! region map (a [`Providers::lookup_sink`]: Cloudflare Workers KV or DynamoDB), and its OIDC
//! client `w-{id}` in the regional Keycloak realm ([`Providers::identity`]).
//!
//! Both are planned from two sources, like the NS delegation: the journal (was the step done?)
//! and, when the run could read them, what the sink and the realms actually hold
//! ([`super::Observed::lookup_sink`], [`super::Observed::identity_clients`]). Guarantees:
//! - Read and equal to the desired entry / client: nothing is planned.
//! - Read and missing or different: the write is planned (`drift: …` once it was done before).
//! - Not read (the sink or Keycloak could not be reached): the write is planned only if the
//!   journal does not have it done, and a removal is always planned; both calls are idempotent
//!   (a PUT of the same entry; a client found by its client id first), so planning one more is
//!   safe, while skipping one could leave a workspace without routing or login.
//! - Not configured: nothing is planned (the run's notes say the step is skipped).
//!
//! On removal the lookup entry goes whatever the deletion policy: a removed workspace is no
//! longer routed. The client is deleted under `Delete`; under `Retain` it is kept *disabled*
//! (no login through it, its settings kept for a return), and re-enabled when the workspace
//! comes back.

use std::collections::BTreeMap;

use cplane_schema::domain::workspace_name;
use cplane_schema::validate::integrations::{keycloak_realm, KeycloakRealm};
use cplane_schema::Model;
use serde::{Deserialize, Serialize};

use super::{
    Action, Builder, DesiredWorkspace, LookupRow, ObservedWorkspace, Policy, Status, StepKind,
};

/// The outside systems of steps 8 and 9 this run reaches, as configured in `cplane.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    /// Step 8: the global sink's name (`cloudflare-kv`, `dynamodb`); `None`: not configured.
    pub lookup_sink: Option<String>,
    /// Step 9: the realm of every region × environment; `None`: not configured.
    pub identity: Option<BTreeMap<(String, String), Realm>>,
}

/// A Keycloak realm: its server's base URL and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Realm {
    /// Base URL of the server, without a trailing `/`.
    pub url: String,
    /// Realm name.
    pub name: String,
}

impl From<KeycloakRealm> for Realm {
    fn from(r: KeycloakRealm) -> Self {
        Self {
            url: r.url,
            name: r.realm,
        }
    }
}

/// The fields of a workspace's Keycloak client that cplane owns (and the drift check compares);
/// every other setting of the client is left as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClient {
    /// `w-{id}`.
    pub client_id: String,
    /// `https://*.w-{id}.{env?}.{region}.{base}/*`, sorted.
    pub redirect_uris: Vec<String>,
    /// Whether users may sign in through it (`false` while the workspace is retained).
    pub enabled: bool,
}

impl IdentityClient {
    /// The client a workspace should have.
    pub fn desired(w: &DesiredWorkspace) -> Self {
        Self {
            client_id: workspace_name(&w.id),
            redirect_uris: vec![format!("https://*.{}/*", w.zone_name)],
            enabled: true,
        }
    }
}

impl Providers {
    /// What the revision's `cplane.yaml` configures.
    pub fn from_model(model: &Model) -> Self {
        let spec = &model.platform.doc.spec;
        let lookup_sink = spec.tenant_lookup.as_ref().map(|l| {
            if l.dynamodb.is_some() {
                "dynamodb".to_owned()
            } else {
                "cloudflare-kv".to_owned()
            }
        });
        let identity = spec.keycloak.as_ref().map(|_| {
            model
                .regions
                .iter()
                .flat_map(|(id, r)| {
                    r.doc.spec.environments.iter().filter_map(move |env| {
                        keycloak_realm(model, id, env)
                            .map(|realm| ((id.clone(), env.clone()), Realm::from(realm)))
                    })
                })
                .collect()
        });
        Self {
            lookup_sink,
            identity,
        }
    }

    /// The realm of a workspace's region × environment.
    pub fn realm(&self, region: &str, environment: &str) -> Option<&Realm> {
        self.identity
            .as_ref()?
            .get(&(region.to_owned(), environment.to_owned()))
    }

    /// What a plan of this run leaves out, for its notes.
    pub fn skipped(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.lookup_sink.is_none() {
            notes.push("step 8: no spec.tenantLookup in cplane.yaml — the tenant → region map is only this control plane's /lookup".to_owned());
        }
        if self.identity.is_none() {
            notes.push(
                "step 9: no spec.keycloak in cplane.yaml — no Keycloak client is provisioned"
                    .to_owned(),
            );
        }
        notes
    }
}

/// Plans steps 8 and 9 of a desired workspace after `after`; returns the last step planned.
pub(super) fn provision(
    b: &mut Builder<'_>,
    want: &DesiredWorkspace,
    have: Option<&ObservedWorkspace>,
    after: Option<usize>,
) -> Option<usize> {
    let o = b.observed;
    let providers = b.providers;
    let fresh = have.is_none();
    let returning = have.is_some_and(|h| h.status == Status::Retained);
    let reason = if fresh { "new workspace" } else { "converge" };
    let done = |b: &Builder<'_>, k| !fresh && b.done(k);
    let mut last = after;

    if let Some(sink) = &providers.lookup_sink {
        let row = LookupRow {
            region: want.region.clone(),
            bff_url: want.bff_url.clone(),
        };
        let why = match o.lookup_sink.as_ref().map(|found| found.get(&want.id)) {
            Some(Some(found)) if *found == row => None,
            Some(Some(_)) if done(b, StepKind::PublishLookup) => {
                Some("drift: global lookup entry differs")
            }
            Some(None) if done(b, StepKind::PublishLookup) && !returning => {
                Some("drift: global lookup entry missing")
            }
            Some(_) => Some(reason),
            None if done(b, StepKind::PublishLookup) && !returning => None,
            None => Some(reason),
        };
        if let Some(why) = why {
            let drift = why.starts_with("drift");
            last = b
                .push(
                    Action::PublishLookup {
                        sink: sink.clone(),
                        row,
                        drift,
                    },
                    &[last],
                    why,
                )
                .or(last);
        }
    }

    if let Some(realm) = providers.realm(&want.region, &want.environment) {
        let client = IdentityClient::desired(want);
        let why = match o.identity_clients.as_ref().map(|found| found.get(&want.id)) {
            Some(Some(found)) if *found == client => None,
            Some(Some(_)) if returning => Some(reason),
            Some(Some(_)) => Some("drift: keycloak client edited"),
            Some(None) if done(b, StepKind::IdentityClient) && !returning => {
                Some("drift: keycloak client missing")
            }
            Some(None) => Some(reason),
            None if done(b, StepKind::IdentityClient) && !returning => None,
            None => Some(reason),
        };
        if let Some(why) = why {
            let drift = why.starts_with("drift");
            last = b
                .push(
                    Action::EnsureIdentityClient {
                        realm: realm.clone(),
                        client,
                        drift,
                    },
                    &[last],
                    why,
                )
                .or(last);
        }
    }
    last
}

/// Plans the removal side of steps 8 and 9 for a workspace leaving, after `after`; returns the
/// last step planned.
pub(super) fn deprovision(
    b: &mut Builder<'_>,
    have: &ObservedWorkspace,
    after: Option<usize>,
) -> Option<usize> {
    let o = b.observed;
    let providers = b.providers;
    let w = &have.applied;
    let reason = "removed from the state repo";
    let mut last = after;
    if let Some(sink) = &providers.lookup_sink {
        let present = o
            .lookup_sink
            .as_ref()
            .is_none_or(|found| found.contains_key(&w.id));
        if present {
            last = b
                .push(
                    Action::UnpublishLookup { sink: sink.clone() },
                    &[last],
                    reason,
                )
                .or(last);
        }
    }
    if let Some(realm) = providers.realm(&w.region, &w.environment) {
        let found = o.identity_clients.as_ref().map(|c| c.get(&w.id));
        let action = match w.deletion_policy {
            Policy::Delete if !matches!(found, Some(None)) => Some(Action::DeleteIdentityClient {
                realm: realm.clone(),
            }),
            Policy::Retain
                if !matches!(
                    found,
                    Some(None) | Some(Some(IdentityClient { enabled: false, .. }))
                ) =>
            {
                Some(Action::DisableIdentityClient {
                    realm: realm.clone(),
                })
            }
            _ => None,
        };
        if let Some(action) = action {
            let why = match w.deletion_policy {
                Policy::Delete => "removed, deletionPolicy: Delete",
                Policy::Retain => "removed, deletionPolicy: Retain (kept disabled)",
            };
            last = b.push(action, &[last], why).or(last);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::super::{plan_with, JournalEntry, JournalState, Options, Plan, StepResult};
    use super::*;
    use crate::plan::{desired_workspaces, Observed, Scope};
    use crate::testdata::template_files;

    const CONFIG: &str = "  keycloak:
    url: http://127.0.0.1:8080
    adminClientId: cplane
    adminClientSecret:
      env: CPLANE_KEYCLOAK_SECRET
  tenantLookup:
    dynamodb:
      table: tenant-region-map
";

    /// The template with `extra` appended to cplane.yaml's spec.
    fn model_with(extra: &str) -> Result<Model, Vec<String>> {
        let mut files = template_files();
        let platform = files
            .iter_mut()
            .find(|f| f.path == "cplane.yaml")
            .expect("cplane.yaml");
        platform.bytes.extend_from_slice(extra.as_bytes());
        cplane_schema::load(files)
            .into_valid()
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    fn steps(plan: &Plan, id: &str) -> Vec<String> {
        plan.steps
            .iter()
            .filter(|s| s.workspace == id)
            .map(|s| format!("{} {} [{}]", s.action.symbol(), s.action, s.reason))
            .collect()
    }

    fn done(observed: &mut Observed, id: &str, kind: StepKind) {
        observed.journal.insert(
            (id.to_owned(), kind),
            JournalEntry {
                state: JournalState::Done,
                result: Some(StepResult::PublishLookup {
                    key: String::new(),
                    region: String::new(),
                    bff_url: String::new(),
                })
                .filter(|_| false),
            },
        );
    }

    #[test]
    fn configured_steps_8_and_9_follow_the_lookup_row_and_precede_active() {
        let model = model_with(CONFIG).expect("valid");
        let providers = Providers::from_model(&model);
        assert_eq!(providers.lookup_sink.as_deref(), Some("dynamodb"));
        assert_eq!(
            providers.realm("sgp-1", "dev"),
            Some(&Realm {
                url: "http://127.0.0.1:8080".into(),
                name: "cogrion".into()
            })
        );
        assert!(providers.skipped().is_empty());
        let desired = desired_workspaces(&model, &Scope::all());
        let plan = plan_with(
            &desired,
            &Observed::default(),
            Options::default(),
            &providers,
        );
        let acme = steps(&plan, "acme");
        let tail: Vec<&str> = acme
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "~ db lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com [new workspace]",
                "+ dynamodb lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com [new workspace]",
                "+ keycloak client w-acme in realm cogrion [new workspace]",
                "~ db workspaces row (status active) [provisioned]",
            ]
        );
        let ensure = plan
            .steps
            .iter()
            .find_map(|s| match &s.action {
                Action::EnsureIdentityClient { client, .. } if s.workspace == "initech" => {
                    Some(client.clone())
                }
                _ => None,
            })
            .expect("initech's client");
        assert_eq!(
            ensure.redirect_uris,
            ["https://*.w-initech.dev.sgp-1.cogrion.com/*"],
            "dev adds `dev.` like the workspace zone"
        );
    }

    #[test]
    fn not_configured_plans_nothing_and_says_so() {
        let model = model_with("").expect("valid");
        let providers = Providers::from_model(&model);
        assert_eq!(providers, Providers::default());
        assert_eq!(providers.skipped().len(), 2);
        let desired = desired_workspaces(&model, &Scope::all());
        let plan = plan_with(
            &desired,
            &Observed::default(),
            Options::default(),
            &providers,
        );
        assert!(plan.steps.iter().all(|s| !s.action.is_global()));
    }

    /// Observed after provisioning acme with steps 8 and 9, plus `edit`.
    fn after(edit: impl FnOnce(&mut Observed)) -> (Plan, Vec<String>) {
        let model = model_with(CONFIG).expect("valid");
        let providers = Providers::from_model(&model);
        let desired = desired_workspaces(&model, &Scope::all());
        let mut observed = Observed::default();
        let first = plan_with(&desired, &observed, Options::default(), &providers);
        // What applying `first` leaves: rows, journal, the sink's entry and the client.
        for w in desired.values() {
            observed.workspaces.insert(
                w.id.clone(),
                super::super::ObservedWorkspace {
                    applied: w.clone(),
                    generation: 1,
                    status: Status::Active,
                },
            );
        }
        for s in &first.steps {
            match &s.action {
                Action::WriteTenant { row } => {
                    observed.tenants.insert(s.workspace.clone(), row.clone());
                }
                Action::WriteLookup { row } => {
                    observed.lookup.insert(s.workspace.clone(), row.clone());
                }
                Action::PublishLookup { row, .. } => {
                    observed
                        .lookup_sink
                        .get_or_insert_with(BTreeMap::new)
                        .insert(s.workspace.clone(), row.clone());
                }
                Action::EnsureIdentityClient { client, .. } => {
                    observed
                        .identity_clients
                        .get_or_insert_with(BTreeMap::new)
                        .insert(s.workspace.clone(), client.clone());
                }
                _ => {}
            }
            if let Some(kind) = s.action.step_kind() {
                done(&mut observed, &s.workspace, kind);
            }
        }
        let again = plan_with(&desired, &observed, Options::default(), &providers);
        assert!(again.is_empty(), "{:#?}", again.steps);
        edit(&mut observed);
        let plan = plan_with(&desired, &observed, Options::default(), &providers);
        let acme = steps(&plan, "acme");
        (plan, acme)
    }

    #[test]
    fn drift_of_the_entry_and_the_client_is_restored() {
        let (_, acme) = after(|o| {
            o.lookup_sink.as_mut().expect("read").remove("acme");
            o.identity_clients
                .as_mut()
                .expect("read")
                .get_mut("acme")
                .expect("client")
                .redirect_uris = vec!["https://evil.example/*".into()];
        });
        assert_eq!(
            acme,
            [
                "~ dynamodb lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com (drift: restore) [drift: global lookup entry missing]",
                "~ keycloak client w-acme in realm cogrion (drift: restore) [drift: keycloak client edited]",
            ]
        );
        let (_, acme) = after(|o| {
            o.identity_clients.as_mut().expect("read").remove("acme");
        });
        assert_eq!(
            acme,
            ["~ keycloak client w-acme in realm cogrion (drift: restore) [drift: keycloak client missing]"]
        );
    }

    #[test]
    fn unreadable_sink_or_realm_trusts_the_journal() {
        let (plan, _) = after(|o| {
            o.lookup_sink = None;
            o.identity_clients = None;
        });
        assert!(plan.is_empty(), "{:#?}", plan.steps);
    }

    #[test]
    fn removal_unpublishes_and_deletes_or_disables_by_policy() {
        let model = model_with(CONFIG).expect("valid");
        let providers = Providers::from_model(&model);
        let (_, _) = after(|_| {});
        // Rebuild the provisioned observation, then remove every workspace.
        let mut observed = Observed::default();
        let desired = desired_workspaces(&model, &Scope::all());
        for w in desired.values() {
            observed.workspaces.insert(
                w.id.clone(),
                super::super::ObservedWorkspace {
                    applied: w.clone(),
                    generation: 1,
                    status: Status::Active,
                },
            );
            observed
                .lookup_sink
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    w.id.clone(),
                    LookupRow {
                        region: w.region.clone(),
                        bff_url: w.bff_url.clone(),
                    },
                );
            observed
                .identity_clients
                .get_or_insert_with(BTreeMap::new)
                .insert(w.id.clone(), IdentityClient::desired(w));
        }
        let plan = plan_with(
            &BTreeMap::new(),
            &observed,
            Options {
                max_deletions: 10,
                confirmed: false,
                ..Options::default()
            },
            &providers,
        );
        // initech: Delete; acme: Retain.
        let initech = steps(&plan, "initech");
        assert!(
            initech.contains(&"- dynamodb lookup entry [removed from the state repo]".to_owned()),
            "{initech:#?}"
        );
        assert!(
            initech.contains(
                &"- keycloak client in realm cogrion [removed, deletionPolicy: Delete]".to_owned()
            ),
            "{initech:#?}"
        );
        let acme = steps(&plan, "acme");
        assert!(acme.contains(&"~ keycloak client in realm cogrion (disable) [removed, deletionPolicy: Retain (kept disabled)]".to_owned()), "{acme:#?}");
    }

    #[test]
    fn realms_features_and_temporal_are_derived_per_region_and_environment() {
        use cplane_schema::validate::integrations::{features, temporal_address};
        let model = model_with(
            "  keycloak:
    realm: \"{region}-{environment}\"
    adminClientId: cplane
    adminClientSecret:
      file: /run/secrets/keycloak
  features:
    notebooks: true
    agents: false
",
        )
        .expect("valid");
        let realm = keycloak_realm(&model, "sgp-1", "dev").expect("configured");
        assert_eq!(realm.url, "https://auth.dev.sgp-1.cogrion.com");
        assert_eq!(
            realm.issuer(),
            "https://auth.dev.sgp-1.cogrion.com/realms/sgp-1-dev"
        );
        assert_eq!(
            keycloak_realm(&model, "sgp-1", "prod")
                .expect("configured")
                .issuer(),
            "https://auth.sgp-1.cogrion.com/realms/sgp-1-prod"
        );
        assert_eq!(
            features(&model, "sgp-1"),
            BTreeMap::from([("agents".into(), false), ("notebooks".into(), true)])
        );
        assert_eq!(
            temporal_address(&model, "sgp-1", "dev"),
            "temporal.dev.sgp-1.cogrion.com:7233"
        );
    }

    #[test]
    fn bad_configuration_is_reported_with_file_line_and_field() {
        let errors = model_with(
            "  keycloak:
    url: http://auth.example.com/{zone}
    realm: a b
    adminClientId: cplane
    adminClientSecret:
      env: lower_case
      file: /run/secret
  tenantLookup:
    cloudflareKv:
      accountId: acc
      namespaceId: ns-1
      apiToken: {}
    dynamodb:
      table: t
  features:
    1bad: true
",
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                "cplane.yaml:15:10: spec.keycloak.url: `http://auth.example.com/{zone}`: unknown placeholder `{zone}` (known: `{authDomain}`, `{region}`, `{environment}`)",
                "cplane.yaml:16:12: spec.keycloak.realm: `a b` is not a realm name (letters, digits, `-`, `_`, `.`)",
                "cplane.yaml:19:10: spec.keycloak.adminClientSecret: give exactly one of `env` (a variable name) and `file` (a path): the secret itself never goes into git",
                "cplane.yaml:22:17: spec.tenantLookup: give exactly one of `cloudflareKv` and `dynamodb`",
                "cplane.yaml:24:20: spec.tenantLookup.cloudflareKv.namespaceId: `ns-1` is not a Cloudflare id (1–64 letters, digits)",
                "cplane.yaml:25:17: spec.tenantLookup.cloudflareKv.apiToken: give exactly one of `env` (a variable name) and `file` (a path): the secret itself never goes into git",
                "cplane.yaml:27:14: spec.tenantLookup.dynamodb.table: `t` is not a DynamoDB table name (3–255 of letters, digits, `_`, `-`, `.`)",
                "cplane.yaml:29:11: spec.features.1bad: `1bad` is not a flag name (a letter, then letters, digits, `_`, `-`, `.`; at most 63)",
            ]
        );
    }
}
