//! Apply's steps 8 and 9: the global lookup entry ([`LookupSink`]) and the workspace's
//! Keycloak client ([`Identity`]), journaled like the AWS steps.
//!
//! Guarantees, on top of the journal's (see the parent module):
//! - The lookup entry is a PUT / DELETE by key: repeating it after a lost answer is harmless.
//! - A client is created at most once per client id: a second attempt (an earlier one's
//!   outcome unknown), or a drift repair, looks the client up by its client id first, and a
//!   `409` from the create is resolved the same way. Found, its owned fields are set if they
//!   differ; nothing else about it is touched.

use cplane_schema::domain::workspace_name;

use super::{Context, Outcome, StepError};
use crate::global::{Error, FoundClient, Identity, IdentityClient, LookupSink, Realm};
use crate::plan::{Action, Step, StepKind, StepResult};

/// Runs one step of steps 8 and 9.
pub(super) async fn step(ctx: &Context, step: &Step) -> Result<Outcome, StepError> {
    let id = step.workspace.as_str();
    let key = workspace_name(id);
    let db = &ctx.db;
    match &step.action {
        Action::PublishLookup { row, .. } => {
            let sink = sink(ctx)?;
            db.journal_begin(id, StepKind::PublishLookup, &key).await?;
            sink.put(&key, row).await?;
            db.journal_done(
                id,
                &StepResult::PublishLookup {
                    key: key.clone(),
                    region: row.region.clone(),
                    bff_url: row.bff_url.clone(),
                },
            )
            .await?;
            Ok(Outcome::Done(format!("{key} -> {}", row.region)))
        }
        Action::UnpublishLookup { .. } => {
            let sink = sink(ctx)?;
            db.journal_begin(id, StepKind::UnpublishLookup, &key)
                .await?;
            sink.delete(&key).await?;
            db.journal_done(id, &StepResult::UnpublishLookup { key: key.clone() })
                .await?;
            Ok(Outcome::Done(format!("{key} removed")))
        }
        Action::EnsureIdentityClient {
            realm,
            client,
            drift,
        } => {
            let idp = identity(ctx)?;
            let attempt = db
                .journal_begin(id, StepKind::IdentityClient, &client.client_id)
                .await?;
            let (kc_id, what) = ensure(idp, realm, client, attempt > 1 || *drift).await?;
            db.journal_done(
                id,
                &StepResult::IdentityClient {
                    realm: realm.name.clone(),
                    id: kc_id.clone(),
                    client_id: client.client_id.clone(),
                },
            )
            .await?;
            Ok(Outcome::Done(format!("client {kc_id} ({what})")))
        }
        Action::DisableIdentityClient { realm } => {
            let idp = identity(ctx)?;
            db.journal_begin(id, StepKind::DisableIdentityClient, &key)
                .await?;
            let found = idp.find_client(realm, &key).await?;
            if let Some(FoundClient { id: kc_id, client }) = &found {
                if client.enabled {
                    let disabled = IdentityClient {
                        enabled: false,
                        ..client.clone()
                    };
                    idp.update_client(realm, kc_id, &disabled).await?;
                }
            }
            let kc_id = found.map(|f| f.id);
            let what = if kc_id.is_some() {
                "disabled, kept (Retain)"
            } else {
                "none to disable"
            };
            db.journal_done(id, &StepResult::DisableIdentityClient { id: kc_id })
                .await?;
            Ok(Outcome::Done(what.into()))
        }
        Action::DeleteIdentityClient { realm } => {
            let idp = identity(ctx)?;
            db.journal_begin(id, StepKind::DeleteIdentityClient, &key)
                .await?;
            let kc_id = idp.find_client(realm, &key).await?.map(|f| f.id);
            if let Some(kc_id) = &kc_id {
                idp.delete_client(realm, kc_id).await?;
            }
            let what = if kc_id.is_some() {
                "deleted"
            } else {
                "already gone"
            };
            db.journal_done(id, &StepResult::DeleteIdentityClient { id: kc_id })
                .await?;
            Ok(Outcome::Done(what.into()))
        }
        other => Err(StepError::WrongExecutor {
            kind: "global",
            action: other.to_string(),
        }),
    }
}

/// Makes the client exist with the owned fields: (Keycloak's id, what was done).
async fn ensure(
    idp: &dyn Identity,
    realm: &Realm,
    client: &IdentityClient,
    look_first: bool,
) -> Result<(String, &'static str), Error> {
    let found = if look_first {
        idp.find_client(realm, &client.client_id).await?
    } else {
        None
    };
    let found = match found {
        Some(f) => f,
        None => match idp.create_client(realm, client).await {
            Ok(kc_id) => return Ok((kc_id, "created")),
            Err(Error::Conflict { op, client_id }) => idp
                .find_client(realm, &client.client_id)
                .await?
                .ok_or(Error::Unexpected {
                    op,
                    message: format!("{client_id} exists (409) but is not found by client id"),
                })?,
            Err(e) => return Err(e),
        },
    };
    if found.client == *client {
        return Ok((found.id, "found"));
    }
    idp.update_client(realm, &found.id, client).await?;
    Ok((found.id, "restored"))
}

fn sink(ctx: &Context) -> Result<&dyn LookupSink, StepError> {
    ctx.lookup_sink
        .as_deref()
        .ok_or(StepError::Global(Error::Config(
            "the lookup sink is not available in this run".into(),
        )))
}

fn identity(ctx: &Context) -> Result<&dyn Identity, StepError> {
    ctx.identity
        .as_deref()
        .ok_or(StepError::Global(Error::Config(
            "Keycloak is not available in this run".into(),
        )))
}
