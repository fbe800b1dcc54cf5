//! Plans of pull (merge) requests, posted on the forge: for each verified request event the
//! webhook hands over ([`cplane_webhook::PullRequest`]), the request's head is fetched
//! (`refs/pull/N/head` or `refs/merge-requests/N/head`, into the mirror's `refs/cplane/plan/`)
//! and planned by the code of `POST /v1/plan` ([`crate::api::Api::preview`]) against what this
//! server has applied; then
//! 1. the head commit gets the status `cplane/plan` `pending` while it is planned;
//! 2. the request gets one comment — [`Preview::markdown`](crate::preview::Preview::markdown),
//!    or every validation error with its file:line:column — marked with
//!    [`MARKER`](crate::adapters::forge::MARKER), and edited in place on later pushes;
//! 3. then the final status: `success` with the plan's summary, or `failure` (the revision is
//!    invalid, or could not be planned), linking to `GET /v1/plan?rev=<head>`. A final
//!    status means the comment is up to date.
//!
//! # Guarantees
//! - Plans are posted one at a time ([`Shared::pull_requests`]), so two pushes in quick
//!   succession edit one comment rather than each creating one.
//! - Nothing is written but the fetched ref, the status and the comment; a forge that fails
//!   is logged (and counted in `cplane_pull_request_plans_total{outcome="forge_error"}`), never
//!   retried in a loop: the next push plans again.
//! - The comment holds what the plan shows (secret values redacted by the renderer's diff);
//!   the state repo's readers see the same files anyway.

use std::fmt::Write as _;

use super::*;
use crate::adapters::forge::{Forge, State, MARKER};
use crate::api::{PlanError, Planned};

/// What a request's plan came to: the status and the comment to post.
struct Outcome {
    state: State,
    description: String,
    comment: String,
    label: &'static str,
}

/// The link of a commit's plan on this server.
fn plan_link(sh: &Shared, sha: &str) -> String {
    let base = match &sh.settings.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if sh.settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", sh.settings.listen)
        }
    };
    format!("{base}/v1/plan?rev={sha}")
}

/// The status and comment for a plan's result.
fn outcome(planned: Result<Planned, PlanError>, head: &str, link: &str, noun: &str) -> Outcome {
    let short = &head[..12.min(head.len())];
    match planned {
        Ok(Planned::Plan { preview, .. }) => Outcome {
            state: State::Success,
            description: preview.summary(),
            comment: format!(
                "{MARKER}\n{}\n_Planned by cplane against the revision this control plane applied; this comment is updated on every push to the {noun}. [The plan as JSON]({link})._\n",
                preview.markdown()
            ),
            label: "planned",
        },
        Ok(Planned::Invalid { commit, errors }) => {
            let short = &commit[..12.min(commit.len())];
            let mut comment = format!(
                "{MARKER}\n### cplane plan of `{short}`\n\n**Invalid: {} error(s). A control plane refuses this revision whole; nothing of it would be applied.**\n\n",
                errors.len()
            );
            for e in &errors {
                let at = if e.line == 0 {
                    e.file.clone()
                } else {
                    format!("{}:{}:{}", e.file, e.line, e.column)
                };
                let _ = writeln!(comment, "- `{at}`: {}", e.message.replace('\n', " "));
            }
            let _ = writeln!(
                comment,
                "\n_`cplane validate` shows the same errors locally; this comment is updated on every push to the {noun}._"
            );
            Outcome {
                state: State::Failure,
                description: format!("invalid: {} error(s), first: {}", errors.len(), errors.first().map(ToString::to_string).unwrap_or_default()),
                comment,
                label: "invalid",
            }
        }
        Err(PlanError(status, message)) => Outcome {
            state: State::Failure,
            description: format!("could not plan: {message}"),
            comment: format!(
                "{MARKER}\n### cplane plan of `{short}`\n\n**Could not plan this revision** ({status}): {message}\n"
            ),
            label: "error",
        },
    }
}

/// Plans `request`'s head and posts the status and the comment (see the module docs).
pub(super) async fn plan_and_post(sh: Arc<Shared>, request: cplane_webhook::PullRequest) {
    let (Some(forge), Some(api)) = (sh.forge.clone(), sh.api.get().cloned()) else {
        return;
    };
    let _one_at_a_time = sh.pull_requests.lock().await;
    let link = plan_link(&sh, &request.head);
    let noun = forge.kind().request_noun();
    let number = request.number;
    if let Err(e) = forge
        .set_status(&request.head, State::Pending, "planning", &link)
        .await
    {
        tracing::warn!(error = %e, number, "posting the pending status");
    }
    let planned = api
        .preview(
            Some(request.head.clone()),
            true,
            Some(request.head_ref.clone()),
        )
        .await;
    let outcome = outcome(planned, &request.head, &link, noun);
    let label = match post(&forge, &request, &outcome, &link).await {
        Ok(()) => outcome.label,
        Err(e) => {
            tracing::warn!(error = %e, number, head = %request.head, "posting the plan on the forge");
            "forge_error"
        }
    };
    tracing::info!(number, head = %request.head, outcome = label, "{noun} planned");
    sh.metrics.pull_request_plan(label);
}

async fn post(
    forge: &Forge,
    request: &cplane_webhook::PullRequest,
    outcome: &Outcome,
    link: &str,
) -> Result<(), crate::adapters::forge::Error> {
    // The comment first: a final status says the plan is posted, for people and for bots
    // waiting on it.
    forge
        .upsert_comment(request.number, &outcome.comment)
        .await?;
    forge
        .set_status(&request.head, outcome.state, &outcome.description, link)
        .await?;
    Ok(())
}
