//! What the journal records of a done cloud step ([`StepResult`]), and the record sets it
//! holds ([`RecordSet`]).
//!
//! Stored form: a JSON object tagged with its step, e.g.
//! `{"step":"create_zone","zone_id":"Z1","name_servers":["ns-1.example"]}`.
//!
//! Guarantees:
//! - Rows written before the tag existed (the same fields, no `step`) still load:
//!   [`StepResult::from_stored`] takes the step from the journal row, which always names it.
//! - The field names are those of the untagged rows, so code that reads rows by field name
//!   reads the tagged ones too (it ignores the tag).
//! - A result that is not valid JSON, not an object, tagged with another step than its row, or
//!   missing a field is an error ([`StepResultError`]), never silently "no result".

use serde::{Deserialize, Serialize};

use super::StepKind;

/// A record set (simple routing only), as Route53 holds it and the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordSet {
    /// Lowercase name without the trailing dot.
    pub name: String,
    /// `NS`, `CNAME`, ….
    pub rtype: String,
    /// TTL in seconds.
    pub ttl: i64,
    /// Values, sorted; no trailing dots.
    pub values: Vec<String>,
}

/// The result of a done cloud step: one variant per [`StepKind`], holding what later steps,
/// deprovisioning and the drift check read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum StepResult {
    /// The tenant zone was created (or found by its CallerReference).
    CreateZone {
        /// Bare zone id (`Z123`).
        zone_id: String,
        /// The zone's name servers, sorted: the NS delegation to write and check.
        name_servers: Vec<String>,
    },
    /// The NS delegation was written in the parent zone.
    DelegateZone {
        /// The parent zone's id (operator account).
        parent_zone_id: String,
        /// The NS record set written.
        record: RecordSet,
    },
    /// The certificate was requested (or found by its ownership tag).
    RequestCertificate {
        /// Its ARN.
        arn: String,
    },
    /// The validation CNAMEs were written in the tenant zone.
    ValidationRecords {
        /// The records written (what deprovisioning deletes and the drift check compares).
        records: Vec<RecordSet>,
    },
    /// The certificate is issued.
    AwaitCertificate {
        /// Its ARN (absent from rows written before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arn: Option<String>,
        /// Its status when the step was done (`ISSUED`).
        status: String,
    },
    /// The NS delegation was removed from the parent zone.
    RemoveDelegation {
        /// How many record sets were deleted (0 when already gone).
        removed: usize,
    },
    /// The certificate was deleted.
    DeleteCertificate {
        /// The ARN deleted; `None` when there was none to delete.
        arn: Option<String>,
    },
    /// The validation CNAMEs were deleted.
    DeleteValidationRecords {
        /// How many record sets were deleted.
        removed: usize,
    },
    /// The zone was deleted.
    DeleteZone {
        /// The zone id deleted; `None` when there was none to delete.
        zone_id: Option<String>,
    },
    /// The global tenant → region entry was written.
    PublishLookup {
        /// Its key, `w-{id}`.
        key: String,
        /// The region written.
        region: String,
        /// The BFF URL written.
        bff_url: String,
    },
    /// The global tenant → region entry was removed.
    UnpublishLookup {
        /// Its key, `w-{id}`.
        key: String,
    },
    /// The Keycloak client exists with the fields cplane owns.
    IdentityClient {
        /// The realm's name.
        realm: String,
        /// Keycloak's id of the client (a UUID).
        id: String,
        /// `w-{id}`.
        client_id: String,
    },
    /// The Keycloak client was disabled.
    DisableIdentityClient {
        /// Keycloak's id of the client; `None` when there was none.
        id: Option<String>,
    },
    /// The Keycloak client was deleted.
    DeleteIdentityClient {
        /// Keycloak's id of the client deleted; `None` when there was none.
        id: Option<String>,
    },
}

/// Why a stored result does not load.
#[derive(Debug, thiserror::Error)]
pub enum StepResultError {
    /// Not JSON, or a field missing or of the wrong type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// Tagged with another step than the journal row's.
    #[error("tagged `{found}` in a `{expected}` row")]
    WrongStep {
        /// The row's step.
        expected: &'static str,
        /// The tag found.
        found: String,
    },
}

const TAG: &str = "step";

impl StepResult {
    /// The step this is the result of.
    pub fn kind(&self) -> StepKind {
        match self {
            StepResult::CreateZone { .. } => StepKind::CreateZone,
            StepResult::DelegateZone { .. } => StepKind::DelegateZone,
            StepResult::RequestCertificate { .. } => StepKind::RequestCertificate,
            StepResult::ValidationRecords { .. } => StepKind::ValidationRecords,
            StepResult::AwaitCertificate { .. } => StepKind::AwaitCertificate,
            StepResult::RemoveDelegation { .. } => StepKind::RemoveDelegation,
            StepResult::DeleteCertificate { .. } => StepKind::DeleteCertificate,
            StepResult::DeleteValidationRecords { .. } => StepKind::DeleteValidationRecords,
            StepResult::DeleteZone { .. } => StepKind::DeleteZone,
            StepResult::PublishLookup { .. } => StepKind::PublishLookup,
            StepResult::UnpublishLookup { .. } => StepKind::UnpublishLookup,
            StepResult::IdentityClient { .. } => StepKind::IdentityClient,
            StepResult::DisableIdentityClient { .. } => StepKind::DisableIdentityClient,
            StepResult::DeleteIdentityClient { .. } => StepKind::DeleteIdentityClient,
        }
    }

    /// The cloud resource the step made or removed (zone id, certificate ARN), if any: the
    /// journal's `external_id` column, for people reading the table.
    pub fn external_id(&self) -> Option<&str> {
        match self {
            StepResult::CreateZone { zone_id, .. } => Some(zone_id),
            StepResult::RequestCertificate { arn } => Some(arn),
            StepResult::AwaitCertificate { arn, .. } | StepResult::DeleteCertificate { arn } => {
                arn.as_deref()
            }
            StepResult::DeleteZone { zone_id } => zone_id.as_deref(),
            StepResult::IdentityClient { id, .. } => Some(id),
            StepResult::DisableIdentityClient { id } | StepResult::DeleteIdentityClient { id } => {
                id.as_deref()
            }
            StepResult::PublishLookup { key, .. } | StepResult::UnpublishLookup { key } => {
                Some(key)
            }
            StepResult::DelegateZone { .. }
            | StepResult::ValidationRecords { .. }
            | StepResult::RemoveDelegation { .. }
            | StepResult::DeleteValidationRecords { .. } => None,
        }
    }

    /// The stored form (tagged JSON).
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("a StepResult always serializes: strings and numbers")
    }

    /// Loads the stored result of a journal row whose step is `kind`, tagged or written before
    /// the tag existed.
    pub fn from_stored(kind: StepKind, stored: &str) -> Result<Self, StepResultError> {
        let mut value: serde_json::Value = serde_json::from_str(stored)?;
        let object = value.as_object_mut().ok_or(StepResultError::NotAnObject)?;
        match object.get(TAG) {
            None => {
                object.insert(TAG.to_owned(), kind.as_str().into());
            }
            Some(serde_json::Value::String(tag)) if tag == kind.as_str() => {}
            Some(other) => {
                return Err(StepResultError::WrongStep {
                    expected: kind.as_str(),
                    found: other
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_owned),
                })
            }
        }
        Ok(serde_json::from_value(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cname() -> RecordSet {
        RecordSet {
            name: "_x1.w-acme.sgp-1.cogrion.com".into(),
            rtype: "CNAME".into(),
            ttl: 300,
            values: vec!["_y1.acm-validations.aws".into()],
        }
    }

    fn every_variant() -> Vec<StepResult> {
        vec![
            StepResult::CreateZone {
                zone_id: "Z1".into(),
                name_servers: vec!["ns-1.example".into(), "ns-2.example".into()],
            },
            StepResult::DelegateZone {
                parent_zone_id: "ZP".into(),
                record: RecordSet {
                    name: "w-acme.sgp-1.cogrion.com".into(),
                    rtype: "NS".into(),
                    ttl: 300,
                    values: vec!["ns-1.example".into()],
                },
            },
            StepResult::RequestCertificate {
                arn: "arn:aws:acm:us-east-1:1:certificate/a".into(),
            },
            StepResult::ValidationRecords {
                records: vec![cname()],
            },
            StepResult::AwaitCertificate {
                arn: Some("arn:aws:acm:us-east-1:1:certificate/a".into()),
                status: "ISSUED".into(),
            },
            StepResult::RemoveDelegation { removed: 1 },
            StepResult::DeleteCertificate { arn: None },
            StepResult::DeleteValidationRecords { removed: 2 },
            StepResult::DeleteZone {
                zone_id: Some("Z1".into()),
            },
            StepResult::PublishLookup {
                key: "w-acme".into(),
                region: "sgp-1".into(),
                bff_url: "https://bff.w-acme.sgp-1.cogrion.com".into(),
            },
            StepResult::UnpublishLookup {
                key: "w-acme".into(),
            },
            StepResult::IdentityClient {
                realm: "cogrion".into(),
                id: "5f0c".into(),
                client_id: "w-acme".into(),
            },
            StepResult::DisableIdentityClient { id: None },
            StepResult::DeleteIdentityClient {
                id: Some("5f0c".into()),
            },
        ]
    }

    #[test]
    fn every_variant_round_trips_and_names_its_step() {
        for r in every_variant() {
            let stored = r.to_stored();
            assert!(
                stored.starts_with(&format!(r#"{{"step":"{}""#, r.kind().as_str())),
                "{stored}"
            );
            assert_eq!(
                StepResult::from_stored(r.kind(), &stored).expect(&stored),
                r
            );
        }
    }

    #[test]
    fn the_stored_form_is_readable_json() {
        assert_eq!(
            every_variant()[0].to_stored(),
            r#"{"step":"create_zone","zone_id":"Z1","name_servers":["ns-1.example","ns-2.example"]}"#
        );
        assert_eq!(
            StepResult::DeleteCertificate { arn: None }.to_stored(),
            r#"{"step":"delete_certificate","arn":null}"#
        );
    }

    /// Rows as the code before the tag wrote them (`json!` objects, keys in alphabetical
    /// order), one per step.
    #[test]
    fn untagged_rows_of_the_old_format_load() {
        let old = [
            (
                StepKind::CreateZone,
                r#"{"name_servers":["ns-1.example","ns-2.example"],"zone_id":"Z1"}"#,
                every_variant()[0].clone(),
            ),
            (
                StepKind::DelegateZone,
                r#"{"parent_zone_id":"ZP","record":{"name":"w-acme.sgp-1.cogrion.com","rtype":"NS","ttl":300,"values":["ns-1.example"]}}"#,
                every_variant()[1].clone(),
            ),
            (
                StepKind::RequestCertificate,
                r#"{"arn":"arn:aws:acm:us-east-1:1:certificate/a"}"#,
                every_variant()[2].clone(),
            ),
            (
                StepKind::ValidationRecords,
                r#"{"records":[{"name":"_x1.w-acme.sgp-1.cogrion.com","rtype":"CNAME","ttl":300,"values":["_y1.acm-validations.aws"]}]}"#,
                every_variant()[3].clone(),
            ),
            (
                StepKind::AwaitCertificate,
                r#"{"status":"ISSUED"}"#,
                StepResult::AwaitCertificate {
                    arn: None,
                    status: "ISSUED".into(),
                },
            ),
            (
                StepKind::RemoveDelegation,
                r#"{"removed":1}"#,
                every_variant()[5].clone(),
            ),
            (
                StepKind::DeleteCertificate,
                r#"{"arn":null}"#,
                every_variant()[6].clone(),
            ),
            (
                StepKind::DeleteValidationRecords,
                r#"{"removed":2}"#,
                every_variant()[7].clone(),
            ),
            (
                StepKind::DeleteZone,
                r#"{"zone_id":"Z1"}"#,
                every_variant()[8].clone(),
            ),
        ];
        for (kind, stored, want) in old {
            assert_eq!(StepResult::from_stored(kind, stored).expect(stored), want);
        }
    }

    #[test]
    fn tagged_rows_keep_the_old_field_names() {
        // What the code before the tag reads: the same keys, at the top level.
        let v: serde_json::Value =
            serde_json::from_str(&every_variant()[0].to_stored()).expect("json");
        assert_eq!(v["zone_id"], "Z1");
        assert_eq!(v["name_servers"][1], "ns-2.example");
        let v: serde_json::Value =
            serde_json::from_str(&every_variant()[3].to_stored()).expect("json");
        assert_eq!(v["records"][0]["name"], "_x1.w-acme.sgp-1.cogrion.com");
    }

    #[test]
    fn results_that_cplane_does_not_write_are_errors() {
        let err = |kind, s| StepResult::from_stored(kind, s).expect_err(s).to_string();
        assert_eq!(
            err(
                StepKind::CreateZone,
                r#"{"step":"delete_zone","zone_id":"Z1"}"#
            ),
            "tagged `delete_zone` in a `create_zone` row"
        );
        assert_eq!(err(StepKind::CreateZone, "[]"), "not a JSON object");
        assert_eq!(
            err(StepKind::CreateZone, r#"{"zone_id":"Z1"}"#),
            "missing field `name_servers`"
        );
        assert!(err(StepKind::RequestCertificate, "{").contains("EOF"));
    }
}
