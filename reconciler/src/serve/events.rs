//! `GET /v1/events`: the outbox ([`crate::events`]) as server-sent events, behind the users'
//! authentication layer.
//!
//! Each SSE event has the outbox position as its `id`, the CloudEvents `type` as its `event`
//! and the CloudEvent (JSON) as its `data`. A client resumes where it stopped with the
//! standard `Last-Event-ID` header (or `?after=`): it is sent every event after that position,
//! then new ones as they commit. Positions are visible in commit order on every replica
//! sharing the database ([`crate::db`]'s outbox guarantees), so nothing is lost across a
//! reconnect, a server restart or a switch to another replica.
//!
//! Query: `type` (comma-separated: `rollout.paused`, `io.cplane.commit.refused`, `agent.*`),
//! `workspace`, `after` (a position; default: the newest, i.e. only what comes next; `0`:
//! everything retained), `follow=false` (send what is there, then end the stream).
//!
//! Scoped like every read ([`authz::allows`]): an event concerning a workspace is sent to who
//! may read that workspace, every other (commits, rollouts, platform clusters) to operators.
//!
//! One task per replica ([`tail`]) watches the newest position (one small query per
//! [`TAIL_INTERVAL`], or as soon as this replica commits events) and wakes the streams, so
//! idle clients cost no queries.

use std::convert::Infallible;

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;

use super::*;
use crate::auth::authz::{self, Action, Grants};
use crate::db::EventFilter;
use crate::events::{EventType, StoredEvent};

/// How often the tail reads the newest position.
pub(super) const TAIL_INTERVAL: Duration = Duration::from_millis(200);

/// Events read per query.
const PAGE: u32 = 500;

/// The events route (mounted behind the users' authentication layer).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/events", get(events))
        .with_state(shared)
}

/// Watches the outbox's newest position and publishes it on `shared.events_head` until the
/// server stops. Read errors are logged and retried (the streams keep what they have).
///
/// It reads the database only while some stream is open: an idle server makes no query. A
/// head left behind meanwhile is only ever lower than the truth, which a stream treats as
/// "not yet committed" (it reads from the database itself when it starts), and the first read
/// after a stream opens moves it on.
///
/// Events this replica commits wake it at once ([`crate::db::Db::watch_events`]); the ticker
/// catches those of other replicas.
pub(super) async fn tail(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(TAIL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed = shared.db.watch_events();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Ok(()) = committed.changed() => {}
        }
        if shared.events_head.receiver_count() == 0 {
            continue;
        }
        match shared.db.last_event_position().await {
            Ok(p) => {
                shared.events_head.send_if_modified(|head| {
                    let moved = p > *head;
                    *head = p.max(*head);
                    moved
                });
            }
            Err(e) => tracing::warn!(error = %e, "reading the events outbox"),
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct Query {
    #[serde(rename = "type")]
    types: Option<String>,
    workspace: Option<String>,
    after: Option<i64>,
    follow: Option<bool>,
}

/// What a stream is at.
struct Cursor {
    shared: Arc<Shared>,
    grants: Grants,
    filter: EventFilter,
    after: i64,
    follow: bool,
    head: tokio::sync::watch::Receiver<i64>,
    ready: std::collections::VecDeque<StoredEvent>,
    /// Workspaces' accounts (who may read their events), refreshed per page.
    accounts: std::collections::BTreeMap<String, String>,
}

impl Cursor {
    /// Whether the caller may read `e`.
    fn may_read(&self, e: &StoredEvent) -> bool {
        match e.workspace.as_deref().and_then(|ws| self.accounts.get(ws)) {
            Some(account) => authz::allows(&self.grants, Action::Read(account)),
            None => authz::allows(&self.grants, Action::Operate),
        }
    }

    /// The next event to send; `None` ends the stream (`follow=false` at the end, the server
    /// stopping, or the database failing).
    async fn next(&mut self) -> Option<StoredEvent> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            // Every position up to the head seen now has committed: a page shorter than
            // `PAGE` has read all of them, so the cursor may move there even when the
            // filter left nothing to send.
            let head = *self.head.borrow();
            let page = match self
                .shared
                .db
                .events_after(self.after, &self.filter, PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reading events for a stream");
                    return None;
                }
            };
            let full = page.len() == PAGE as usize;
            if !full {
                self.after = self.after.max(head);
            }
            if let Some(last) = page.last() {
                self.after = self.after.max(last.position);
                if page.iter().any(|e| e.workspace.is_some()) {
                    match self.shared.db.workspace_accounts().await {
                        Ok(a) => self.accounts = a,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading accounts for a stream");
                            return None;
                        }
                    }
                }
                let readable: Vec<StoredEvent> =
                    page.into_iter().filter(|e| self.may_read(e)).collect();
                self.ready.extend(readable);
                if full || !self.ready.is_empty() {
                    continue;
                }
            }
            if !self.follow {
                return None;
            }
            // Wait until the newest position passes ours (or the server stops).
            let after = self.after;
            let mut stopped = self.shared.stopped.clone();
            tokio::select! {
                r = self.head.wait_for(|h| *h > after) => { r.ok()?; }
                () = stop_requested(&mut stopped) => return None,
            }
        }
    }
}

async fn events(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Query>,
) -> Response {
    let mut types = Vec::new();
    for t in q.types.iter().flat_map(|t| t.split(',')).map(str::trim) {
        if t.is_empty() {
            continue;
        }
        match EventType::matching(t) {
            Some(found) => types.extend(found),
            None => {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "type `{t}` names no event type; known: {}",
                        known.join(", ")
                    ),
                )
                .into_response();
            }
        }
    }
    types.sort();
    types.dedup();
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.trim().parse::<i64>() {
            Ok(p) if p >= 0 => Some(p),
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID `{v}` is not an event position (a number)"),
                )
                .into_response()
            }
        },
        Some(Err(_)) => {
            return api_error(StatusCode::BAD_REQUEST, "Last-Event-ID is not text").into_response()
        }
    };
    let after = match last_event_id.or(q.after) {
        Some(p) => p.max(0),
        None => match sh.db.last_event_position().await {
            Ok(p) => p,
            Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
    };
    let cursor = Cursor {
        head: sh.events_head.subscribe(),
        shared: sh,
        grants,
        filter: EventFilter {
            types,
            workspace: q.workspace,
        },
        after,
        follow: q.follow.unwrap_or(true),
        ready: Default::default(),
        accounts: Default::default(),
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        let e = c.next().await?;
        let sse = Event::default()
            .id(e.position.to_string())
            .event(e.event.kind.clone())
            .data(serde_json::to_string(&e.event).expect("events serialize"));
        Some((Ok::<_, Infallible>(sse), c))
    });
    (
        [(crate::event_stream::STARTS_AFTER, after.to_string())],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response()
}
