//! The typed documents of the state repo. Every document is `apiVersion: cplane/v1`, a `kind`,
//! `metadata` and `spec`; unknown fields are errors (`deny_unknown_fields` everywhere).
//!
//! Types here only decide *shape*. Rules that need more than one field or file (ids, cross
//! references, naming) live in [`crate::validate`], so that one bad field never hides another.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::rollout::{RolloutPolicy, SyncWindow};

/// `apiVersion` of every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ApiVersion {
    /// The only version so far.
    #[serde(rename = "cplane/v1")]
    V1,
}

/// `metadata` of every document.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The id. Must equal the file name (`regions/<id>.yaml`, `workspaces/<id>.yaml`,
    /// `stacks/<name>/stack.yaml`).
    pub name: String,
    /// Labels (`key: value`), e.g. `tier: canary`: rollout waves select workspaces by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

macro_rules! document {
    ($(#[$doc:meta])* $name:ident, $kind:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {
            /// Always `cplane/v1`.
            pub api_version: ApiVersion,
            /// The document kind.
            pub kind: $kind,
            /// Name (the id).
            pub metadata: Metadata,
            /// The desired state.
            pub spec: $spec,
        }

        #[doc = concat!("The `kind` of a ", stringify!($name), " document.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
        pub enum $kind {
            #[doc = concat!("`", stringify!($name), "`")]
            $name,
        }
    };
}

document!(
    /// `cplane.yaml`: the platform as a whole.
    Platform, PlatformKind, PlatformSpec
);
document!(
    /// `regions/<id>.yaml`: one region of the platform.
    Region, RegionKind, RegionSpec
);
document!(
    /// `workspaces/<id>.yaml`: one tenant workspace.
    Workspace, WorkspaceKind, WorkspaceSpec
);
document!(
    /// `stacks/<name>/stack.yaml`: one deployable stack and its declared values.
    Stack, StackKind, StackSpec
);

/// Spec of the platform.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlatformSpec {
    /// Base domain of every name, e.g. `cogrion.com`.
    pub base_domain: String,
    /// The region that holds global provisioning metadata (tenants, principals).
    pub primary_region: String,
    /// Prefix of regional bucket names: `{prefix}-{env}-{region}-{purpose}`.
    pub bucket_prefix: String,
    /// The environment whose names leave out the environment label. Default `prod`.
    #[serde(default = "default_production")]
    pub production_environment: String,
    /// Environments regions may run, e.g. `[dev, prod]`.
    pub environments: Vec<String>,
    /// Step 9 of the provisioning flow: the regional Keycloak in which every workspace gets
    /// its OIDC client `w-{id}`. Absent: step 9 is skipped (and plans say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak: Option<Box<KeycloakSpec>>,
    /// Step 8: the global tenant → region map every workspace is written to. Absent: only the
    /// control plane's own `/lookup` answers (and plans say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_lookup: Option<Box<TenantLookupSpec>>,
    /// Feature flags handed to every workspace's BFF (`GET /api/workspaces/{id}/config`);
    /// a region's `features` override them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, bool>,
    /// The rollout policy of stacks that give none of their own: changed bundles are
    /// published wave by wave behind health gates. Absent: published at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<RolloutPolicy>>,
    /// When bundles may be published, for every cluster (workspaces add their own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_windows: Vec<SyncWindow>,
    /// Where lifecycle events are sent (webhooks, Slack) and which types go where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Box<crate::notifications::NotificationsSpec>>,
}

/// A secret given by reference, never by value: exactly one of `env` (an environment
/// variable of the control plane's process) and `file` (an absolute path it reads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the environment variable holding the secret, e.g. `CPLANE_KEYCLOAK_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Absolute path of a file holding the secret (surrounding whitespace is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// The regional Keycloak of every region (reference doc 001: `auth.{env?}.{region}.{base}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeycloakSpec {
    /// Base URL of a region's Keycloak (https; plain http only to a loopback address).
    /// `{authDomain}`, `{region}` and `{environment}` are replaced per region × environment.
    /// Default `https://{authDomain}` (`https://auth.sgp-1.cogrion.com`).
    #[serde(default = "default_keycloak_url")]
    pub url: String,
    /// The realm workspace clients live in; `{region}` and `{environment}` are replaced.
    /// Default: the platform's name (`metadata.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The confidential client cplane signs in as (client-credentials grant at the realm's
    /// token endpoint); its service account needs `realm-management` → `manage-clients`.
    pub admin_client_id: String,
    /// That client's secret, by reference.
    pub admin_client_secret: SecretRef,
}

fn default_keycloak_url() -> String {
    "https://{authDomain}".to_owned()
}

/// Where the global tenant → region map lives: exactly one of `cloudflareKv` and `dynamodb`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantLookupSpec {
    /// Cloudflare Workers KV (reference doc 001's design).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare_kv: Option<CloudflareKvSpec>,
    /// DynamoDB (reference doc 001's AWS-only alternative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamodb: Option<DynamoDbSpec>,
}

/// A Workers KV namespace, written through Cloudflare's REST API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudflareKvSpec {
    /// Cloudflare account id.
    pub account_id: String,
    /// KV namespace id.
    pub namespace_id: String,
    /// API token with `Workers KV Storage: Edit`, by reference.
    pub api_token: SecretRef,
    /// API base URL. Default `https://api.cloudflare.com/client/v4`.
    #[serde(default = "default_cloudflare_api")]
    pub api_url: String,
}

fn default_cloudflare_api() -> String {
    "https://api.cloudflare.com/client/v4".to_owned()
}

/// A DynamoDB table keyed by the string attribute `tenant_id` (`w-{id}`), items
/// `{tenant_id, region, bff_url}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DynamoDbSpec {
    /// Table name, e.g. `tenant-region-map`.
    pub table: String,
    /// AWS region of the table. Default: the control plane's AWS region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
}

fn default_production() -> String {
    "prod".to_owned()
}

/// Lifecycle of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegionStatus {
    /// Serving: platform clusters are rendered and workspaces provisioned.
    Live,
    /// Announced, not yet serving.
    Planned,
    /// No longer serving; no workspace may reference it.
    Retired,
}

/// Spec of a region.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegionSpec {
    /// Human name, e.g. `Singapore 1`.
    pub display_name: String,
    /// AWS region code, e.g. `ap-southeast-1`.
    pub aws_region: String,
    /// `live`, `planned` or `retired`.
    pub status: RegionStatus,
    /// Operator-account hosted zone that holds the NS delegations of this region's workspaces,
    /// e.g. `sgp-1.cogrion.com`.
    pub parent_zone: String,
    /// Environments this region runs (a platform cluster each), a subset of the platform's.
    pub environments: Vec<String>,
    /// Temporal's frontend address (`host:port`) handed to the region's BFFs; `{environment}`
    /// is replaced. Default `temporal.{env?}.{region}.{base}:7233`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_address: Option<String>,
    /// Feature flags overriding the platform's for this region's workspaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, bool>,
}

/// What happens to a workspace's cloud resources when it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the tenant's zone and certificate; only mark the record (the default).
    #[default]
    Retain,
    /// Remove delegation, certificate, records and zone.
    Delete,
}

/// The tenant's own AWS account, reached by cross-account role.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TenantAws {
    /// 12-digit AWS account id, quoted (`"111111111111"`).
    pub account_id: String,
    /// Role cplane assumes: `arn:aws:iam::<accountId>:role/<name>`.
    pub role_arn: String,
    /// ExternalId agreed with the tenant (2–1224 characters of `[A-Za-z0-9+=,.@:/-]`).
    pub external_id: String,
}

/// One stack enabled on a workspace.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackRef {
    /// Stack name (`stacks/<name>`), a tenant stack.
    pub name: String,
    /// Values, deep-merged over the stack's defaults. Keys must be declared by the stack.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
}

/// Spec of a workspace.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// Region id; the region must exist and not be retired.
    pub region: String,
    /// Environment, one of the platform's and the region's.
    pub environment: String,
    /// The customer account (organization) that owns the workspace.
    pub account: String,
    /// The tenant AWS account.
    pub aws: TenantAws,
    /// `Retain` (default) or `Delete`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Opt-in stacks and values; required tenant stacks are always deployed.
    #[serde(default)]
    pub stacks: Vec<StackRef>,
    /// Hold the workspace: no cloud steps are run for it and its cluster gets no new
    /// bundle until this is removed (or `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// When this workspace's cluster may get a new bundle, besides the platform's windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_windows: Vec<SyncWindow>,
}

/// Which clusters a stack is deployed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StackTarget {
    /// Every platform cluster (live region × environment).
    Platform,
    /// Workspace clusters that enable it (or all, when `required`).
    Tenant,
}

/// Declared type of a stack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A map.
    Object,
    /// A list.
    Array,
    /// A reference to a key of a Kubernetes Secret, `{secretRef: {name, key}}`: how a stack
    /// takes a secret without the secret entering git (templates render it with the
    /// `secret_key_ref` filter as a `valueFrom.secretKeyRef`).
    #[serde(rename = "secretRef")]
    SecretRef,
}

impl ValueType {
    /// Whether `value` has this type.
    pub fn admits(self, value: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match self {
            ValueType::String => value.is_string(),
            ValueType::Integer => value.is_i64() || value.is_u64(),
            ValueType::Number => value.is_number(),
            ValueType::Boolean => value.is_boolean(),
            ValueType::Object => matches!(value, V::Object(_)),
            ValueType::Array => value.is_array(),
            ValueType::SecretRef => value.get("secretRef").is_some(),
        }
    }

    /// The name used in `stack.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Integer => "integer",
            ValueType::Number => "number",
            ValueType::Boolean => "boolean",
            ValueType::Object => "object",
            ValueType::Array => "array",
            ValueType::SecretRef => "secretRef",
        }
    }
}

/// Declaration of one stack value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueDecl {
    /// Declared type.
    #[serde(rename = "type")]
    pub ty: ValueType,
    /// Default; without one, every workspace that enables the stack must set the value.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// What the value does.
    #[serde(default)]
    pub description: Option<String>,
}

/// Spec of a stack.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Version deployed (usually the image tag), quoted.
    pub version: String,
    /// `platform` or `tenant`.
    pub target: StackTarget,
    /// Tenant stacks only: deployed to every workspace without opting in.
    #[serde(default)]
    pub required: bool,
    /// What the stack is.
    #[serde(default)]
    pub description: Option<String>,
    /// Declared values with their types and defaults.
    #[serde(default)]
    pub values: BTreeMap<String, ValueDecl>,
    /// How a change of this stack is rolled out (else the platform's `spec.rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

/// Deep-merges `overlay` into `base`: maps merge key by key, anything else is replaced.
pub fn deep_merge(base: &mut serde_json::Value, overlay: &serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_merges_maps_and_replaces_lists() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2]}, "b": "keep"});
        deep_merge(&mut base, &json!({"a": {"y": [3], "z": true}}));
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [3], "z": true}, "b": "keep"})
        );
    }

    #[test]
    fn value_types() {
        assert!(ValueType::Integer.admits(&json!(3)));
        assert!(!ValueType::Integer.admits(&json!(3.5)));
        assert!(ValueType::Number.admits(&json!(3.5)));
        assert!(!ValueType::String.admits(&json!(3)));
    }
}
