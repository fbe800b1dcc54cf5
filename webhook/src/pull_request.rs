//! Pull- and merge-request events: which deliveries ask for a plan of a request's head.
//!
//! - **GitHub** `pull_request` and **Gitea** `pull_request`: `action` `opened`, `reopened`, and
//!   `synchronize` (GitHub) or `synchronized` (Gitea) — a push to the request's branch; the
//!   head is `pull_request.head.sha`, fetched as `refs/pull/{number}/head`.
//! - **GitLab** `Merge Request Hook`: `object_attributes.action` `open`, `reopen`, and `update`
//!   when it carries `oldrev` (new commits; an update without it is an edit of the title,
//!   labels, …); the head is `object_attributes.last_commit.id`, fetched as
//!   `refs/merge-requests/{iid}/head`.
//!
//! Requests into another branch than the watched one, closed ones, and other actions are
//! acknowledged and ignored.

use serde::Deserialize;

use crate::{Error, Sender, Verdict};

/// A verified pull- or merge-request event asking for a plan of the request's head.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PullRequest {
    /// Sender.
    pub sender: Sender,
    /// Delivery id, when the sender gives one.
    pub delivery: Option<String>,
    /// The request's number (GitHub, Gitea) or `iid` (GitLab): what its comments are under.
    pub number: u64,
    /// The head commit (hex).
    pub head: String,
    /// The request's source branch.
    pub source_branch: String,
    /// The branch it merges into (the watched one).
    pub target_branch: String,
    /// The ref of the head in the base repository, which holds it also for requests from
    /// forks: `refs/pull/{number}/head` or `refs/merge-requests/{iid}/head`.
    pub head_ref: String,
    /// The sender's action (`opened`, `synchronize`, `update`, …).
    pub action: String,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

#[derive(Deserialize)]
struct Base {
    #[serde(rename = "ref")]
    name: String,
}

#[derive(Deserialize)]
struct HubRequest {
    number: u64,
    #[serde(default)]
    state: Option<String>,
    head: Head,
    base: Base,
}

/// GitHub's and Gitea's payload (the fields read).
#[derive(Deserialize)]
struct HubPayload {
    action: String,
    pull_request: HubRequest,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: u64,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    state: Option<String>,
    source_branch: String,
    target_branch: String,
    last_commit: LastCommit,
    #[serde(default)]
    oldrev: Option<String>,
}

/// GitLab's payload (the fields read).
#[derive(Deserialize)]
struct LabPayload {
    object_attributes: MergeRequest,
}

fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The verdict of an authentic pull- or merge-request delivery.
pub(crate) fn interpret(
    sender: Sender,
    delivery: Option<String>,
    body: &[u8],
    watched: &str,
) -> Result<Verdict, Error> {
    let payload = |e: serde_json::Error| Error::Payload(e.to_string());
    let request = match sender {
        Sender::GitLab => {
            let p: LabPayload = serde_json::from_slice(body).map_err(payload)?;
            let mr = p.object_attributes;
            let action = mr.action.unwrap_or_default();
            let planned = match action.as_str() {
                "open" | "reopen" => true,
                "update" => mr.oldrev.is_some(),
                _ => false,
            };
            if !planned || mr.state.as_deref().is_some_and(|s| s != "opened") {
                return Ok(Verdict::Ignored(format!(
                    "merge request !{} {action}: no new commits to plan",
                    mr.iid
                )));
            }
            PullRequest {
                sender,
                delivery,
                number: mr.iid,
                head: mr.last_commit.id,
                source_branch: mr.source_branch,
                target_branch: mr.target_branch,
                head_ref: format!("refs/merge-requests/{}/head", mr.iid),
                action,
            }
        }
        Sender::GitHub | Sender::Gitea => {
            let p: HubPayload = serde_json::from_slice(body).map_err(payload)?;
            let pr = p.pull_request;
            let planned = matches!(
                p.action.as_str(),
                "opened" | "reopened" | "synchronize" | "synchronized"
            );
            if !planned || pr.state.as_deref().is_some_and(|s| s != "open") {
                return Ok(Verdict::Ignored(format!(
                    "pull request #{} {}: no new commits to plan",
                    pr.number, p.action
                )));
            }
            PullRequest {
                sender,
                delivery,
                number: pr.number,
                head: pr.head.sha,
                source_branch: pr.head.name,
                target_branch: pr.base.name,
                head_ref: format!("refs/pull/{}/head", pr.number),
                action: p.action,
            }
        }
        Sender::Generic => return Ok(Verdict::Ignored("generic senders send pushes only".into())),
    };
    if !is_commit_id(&request.head) {
        return Err(Error::Payload(format!(
            "the request's head `{}` is not a commit id",
            request.head
        )));
    }
    if request.number == 0 {
        return Err(Error::Payload("the request's number is 0".into()));
    }
    let target = request.target_branch.trim_start_matches("refs/heads/");
    if target != watched {
        return Ok(Verdict::Ignored(format!(
            "the request merges into {target}, which is not watched ({watched})"
        )));
    }
    Ok(Verdict::PullRequest(request))
}
