//! Lifecycle events (issue 21): the facts operators want to hear about — a workspace
//! provisioned or failing, a commit refused, a rollout paused, an agent gone quiet — as
//! CloudEvents 1.0 (JSON format).
//!
//! # Guarantees
//! - **Transactional**: an event is written to the outbox (the `events` table, migration 0012)
//!   in the same database transaction as the state change that causes it
//!   ([`crate::db::Db`]'s writers do it), so there is no event without its change and no
//!   change without its event, whatever crashes in between.
//! - **Ordered**: every event has a `position`, increasing in commit order across the whole
//!   database (what `GET /v1/events` resumes from), and a `sequence` increasing by one per
//!   stream (a region × environment, or the control plane's scope for fleet-wide facts:
//!   commits, rollouts), carried as the CloudEvents `sequence` extension.
//! - **Identified**: the CloudEvents `id` (`<stream>:<sequence>`) is unique, so a receiver
//!   de-duplicates redeliveries (notifications are at-least-once) by it.
//!
//! # Why not the `cloudevents-sdk` crate
//! Its JSON event model pulls in `chrono`, `url`, `uuid`, `snafu`, `delegate-attr` and
//! `base64` even with default features off, and its HTTP bindings are for reqwest, actix,
//! warp or an older axum; cplane writes one fixed shape, the structured JSON format (spec
//! `json-format.md`): seven attributes, an extension and a JSON `data`, which the serde
//! struct [`CloudEvent`] says exactly.

use serde::{Deserialize, Serialize};

/// The CloudEvents spec version cplane writes.
pub const SPEC_VERSION: &str = "1.0";

/// What happened: each variant's [`EventType::as_str`] is the CloudEvents `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A workspace's cloud resources are in place (its row turned `active`).
    WorkspaceProvisioned,
    /// A workspace was removed (`deleted`, or `retained` with its resources kept).
    WorkspaceDeprovisioned,
    /// A provisioning step failed (data: the step and the error). Emitted when a step starts
    /// failing or fails differently, not on every retry of the same failure.
    WorkspaceProvisioningFailed,
    /// A commit became the applied revision.
    CommitApplied,
    /// A commit was refused (data: every validation error); the last good one stays in force.
    CommitRefused,
    /// A rollout started (its first wave is published).
    RolloutStarted,
    /// A rollout's wave passed its gate (or was promoted).
    RolloutWavePassed,
    /// A rollout was paused (by an operator, or by a failed gate).
    RolloutPaused,
    /// A paused rollout was resumed.
    RolloutResumed,
    /// A rollout published its last wave.
    RolloutFinished,
    /// A rollout was aborted.
    RolloutAborted,
    /// A rollout was superseded by a newer one.
    RolloutSuperseded,
    /// A cluster was pointed at a new bundle.
    BundlePublished,
    /// The drift check found cloud resources edited or deleted by hand.
    DriftFound,
    /// A drift repair step succeeded.
    DriftRepaired,
    /// An agent stopped reporting.
    AgentOffline,
    /// An agent reported again after being offline.
    AgentBack,
    /// An agent reported a bundle that did not apply or is unhealthy.
    AgentFailing,
    /// An agent reported healthy again after failing.
    AgentRecovered,
}

impl EventType {
    /// Every type, in the order the docs list them.
    pub const ALL: [EventType; 19] = [
        EventType::WorkspaceProvisioned,
        EventType::WorkspaceDeprovisioned,
        EventType::WorkspaceProvisioningFailed,
        EventType::CommitApplied,
        EventType::CommitRefused,
        EventType::RolloutStarted,
        EventType::RolloutWavePassed,
        EventType::RolloutPaused,
        EventType::RolloutResumed,
        EventType::RolloutFinished,
        EventType::RolloutAborted,
        EventType::RolloutSuperseded,
        EventType::BundlePublished,
        EventType::DriftFound,
        EventType::DriftRepaired,
        EventType::AgentOffline,
        EventType::AgentBack,
        EventType::AgentFailing,
        EventType::AgentRecovered,
    ];

    /// The CloudEvents `type`: `io.cplane.<entity>.<what>`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::WorkspaceProvisioned => "io.cplane.workspace.provisioned",
            EventType::WorkspaceDeprovisioned => "io.cplane.workspace.deprovisioned",
            EventType::WorkspaceProvisioningFailed => "io.cplane.workspace.provisioning_failed",
            EventType::CommitApplied => "io.cplane.commit.applied",
            EventType::CommitRefused => "io.cplane.commit.refused",
            EventType::RolloutStarted => "io.cplane.rollout.started",
            EventType::RolloutWavePassed => "io.cplane.rollout.wave_passed",
            EventType::RolloutPaused => "io.cplane.rollout.paused",
            EventType::RolloutResumed => "io.cplane.rollout.resumed",
            EventType::RolloutFinished => "io.cplane.rollout.finished",
            EventType::RolloutAborted => "io.cplane.rollout.aborted",
            EventType::RolloutSuperseded => "io.cplane.rollout.superseded",
            EventType::BundlePublished => "io.cplane.bundle.published",
            EventType::DriftFound => "io.cplane.drift.found",
            EventType::DriftRepaired => "io.cplane.drift.repaired",
            EventType::AgentOffline => "io.cplane.agent.offline",
            EventType::AgentBack => "io.cplane.agent.back",
            EventType::AgentFailing => "io.cplane.agent.failing",
            EventType::AgentRecovered => "io.cplane.agent.recovered",
        }
    }

    /// From the CloudEvents `type`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The types a filter names: a full type (`io.cplane.rollout.paused`), the part after
    /// `io.cplane.` (`rollout.paused`) or an entity with `*` (`rollout.*`). `None` when it
    /// names none (a typo: the caller says so rather than streaming nothing).
    pub fn matching(filter: &str) -> Option<Vec<EventType>> {
        let short = filter.strip_prefix("io.cplane.").unwrap_or(filter);
        let found: Vec<EventType> = match short.strip_suffix(".*") {
            Some(entity) => Self::ALL
                .into_iter()
                .filter(|t| {
                    t.as_str()
                        .strip_prefix("io.cplane.")
                        .and_then(|rest| rest.split_once('.'))
                        .is_some_and(|(e, _)| e == entity)
                })
                .collect(),
            None => Self::ALL
                .into_iter()
                .filter(|t| t.as_str().strip_prefix("io.cplane.") == Some(short))
                .collect(),
        };
        (!found.is_empty()).then_some(found)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to write with a state change (the outbox gives it its id, sequence and time).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventType,
    /// `region/environment`; `None`: the control plane's scope ([`crate::db::Db::with_event_stream`]).
    pub stream: Option<String>,
    /// What it is about (`workspace/acme`, `commit/<sha>`, `rollout/<id>`, `cluster/w-acme`).
    pub subject: String,
    /// The workspace it concerns (who may read it: see `/v1/events`); `None` for facts only
    /// operators see (commits, rollouts, platform clusters).
    pub workspace: Option<String>,
    /// The event's `data`. Never a secret: events leave cplane (sinks, streams).
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` about `subject`, in the control plane's stream.
    pub fn new(kind: EventType, subject: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            kind,
            stream: None,
            subject: subject.into(),
            workspace: None,
            data,
        }
    }

    /// The same event in the stream of `region` × `environment`.
    pub fn in_stream(mut self, region: &str, environment: &str) -> Self {
        self.stream = Some(stream(region, environment));
        self
    }

    /// The same event, concerning `workspace`.
    pub fn of_workspace(mut self, workspace: &str) -> Self {
        self.workspace = Some(workspace.to_owned());
        self
    }
}

/// The stream of a region × environment: `sgp-1/prod`.
pub fn stream(region: &str, environment: &str) -> String {
    format!("{region}/{environment}")
}

/// A CloudEvents 1.0 event in the structured JSON format: what the outbox stores, `/v1/events`
/// streams and webhook sinks post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// `<stream>:<sequence>`: unique, the receivers' de-duplication key.
    pub id: String,
    /// `/cplane/<stream>`.
    pub source: String,
    /// `io.cplane.…` ([`EventType::as_str`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// When it was written (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The sequence extension: the event's number in its stream (a string, as the extension
    /// says), 1, 2, 3, …
    pub sequence: String,
    /// What happened, by type (see the README's "Events and notifications").
    pub data: serde_json::Value,
}

impl CloudEvent {
    /// The event `new` becomes as number `sequence` of `stream`, written at `at_ms`.
    pub fn build(new: &NewEvent, stream: &str, sequence: i64, at_ms: i64) -> Self {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
        Self {
            specversion: SPEC_VERSION.into(),
            id: format!("{stream}:{sequence}"),
            source: format!("/cplane/{stream}"),
            kind: new.kind.as_str().into(),
            subject: new.subject.clone(),
            time: humantime::format_rfc3339_millis(at).to_string(),
            datacontenttype: "application/json".into(),
            sequence: sequence.to_string(),
            data: new.data.clone(),
        }
    }
}

/// An event as stored: its position (the `/v1/events` id) and the CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Position in commit order across every stream.
    pub position: i64,
    /// The workspace it concerns (`None`: operators only).
    pub workspace: Option<String>,
    /// The event.
    pub event: CloudEvent,
}

/// The drift events of a run: per workspace whose plan has drift repairs,
/// `io.cplane.drift.found` with the repairs planned, and `io.cplane.drift.repaired` with those
/// that succeeded. `where_` gives a workspace's (region, environment).
pub fn drift_events<'a>(
    plan: &crate::plan::Plan,
    report: &crate::status::Report,
    where_: impl Fn(&str) -> Option<(&'a str, &'a str)>,
) -> Vec<NewEvent> {
    use crate::plan::Action;
    use std::collections::BTreeMap;
    let mut found: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let repair = matches!(
            step.action,
            Action::RepairDelegation { .. }
                | Action::RepairValidationRecords { .. }
                | Action::PublishLookup { drift: true, .. }
                | Action::EnsureIdentityClient { drift: true, .. }
        ) || step.reason.starts_with("drift");
        if !repair {
            continue;
        }
        let entry = found.entry(&step.workspace).or_default();
        let what = format!("{}: {}", step.action, step.reason);
        if matches!(
            report.outcomes.get(i),
            Some(crate::status::Outcome::Done(_))
        ) {
            entry.1.push(what.clone());
        }
        entry.0.push(what);
    }
    let mut out = Vec::new();
    for (ws, (planned, repaired)) in found {
        let with_place = |e: NewEvent| match where_(ws) {
            Some((r, env)) => e.in_stream(r, env).of_workspace(ws),
            None => e.of_workspace(ws),
        };
        out.push(with_place(NewEvent::new(
            EventType::DriftFound,
            format!("workspace/{ws}"),
            serde_json::json!({ "workspace": ws, "repairs": planned }),
        )));
        if !repaired.is_empty() {
            out.push(with_place(NewEvent::new(
                EventType::DriftRepaired,
                format!("workspace/{ws}"),
                serde_json::json!({ "workspace": ws, "repaired": repaired }),
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip_and_filters_match() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(
            EventType::matching("rollout.paused"),
            Some(vec![EventType::RolloutPaused])
        );
        assert_eq!(
            EventType::matching("io.cplane.commit.refused"),
            Some(vec![EventType::CommitRefused])
        );
        assert_eq!(
            EventType::matching("agent.*"),
            Some(vec![
                EventType::AgentOffline,
                EventType::AgentBack,
                EventType::AgentFailing,
                EventType::AgentRecovered
            ])
        );
        assert_eq!(EventType::matching("rollout.pasued"), None);
        assert_eq!(EventType::matching("nothing.*"), None);
    }

    #[test]
    fn cloud_events_have_the_json_format_attributes() {
        let new = NewEvent::new(
            EventType::WorkspaceProvisioned,
            "workspace/acme",
            serde_json::json!({"workspace": "acme"}),
        )
        .in_stream("sgp-1", "prod")
        .of_workspace("acme");
        let e = CloudEvent::build(&new, "sgp-1/prod", 7, 1_700_000_000_123);
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            serde_json::json!({
                "specversion": "1.0",
                "id": "sgp-1/prod:7",
                "source": "/cplane/sgp-1/prod",
                "type": "io.cplane.workspace.provisioned",
                "subject": "workspace/acme",
                "time": "2023-11-14T22:13:20.123Z",
                "datacontenttype": "application/json",
                "sequence": "7",
                "data": {"workspace": "acme"},
            })
        );
    }
}
