//! The client side of `GET /v1/events` (`cplane events`): one connection's server-sent
//! events, parsed by `eventsource-stream`, each handed over as it arrives.
//!
//! Resuming is the caller's loop: it passes the position of the last event it handled as
//! `last_event_id` (sent as `Last-Event-ID`), and the server sends everything after it.

use axum::http::{header, Method, Request, StatusCode};
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;

use crate::auth::jwks::checked_uri;
use crate::events::CloudEvent;

/// One event received: its position (the SSE `id`) and the CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The outbox position: what to resume after.
    pub position: i64,
    /// The event.
    pub event: CloudEvent,
}

/// Why a stream ended without the server ending it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not https (or http to loopback).
    #[error(transparent)]
    Url(#[from] crate::auth::jwks::FetchError),
    /// The request could not be built.
    #[error("request to {url}: {source}")]
    Request {
        /// URL.
        url: String,
        /// Reason.
        #[source]
        source: axum::http::Error,
    },
    /// Connecting or reading failed (retryable: the caller resumes).
    #[error("{url}: {reason}")]
    Transport {
        /// URL.
        url: String,
        /// Reason.
        reason: String,
    },
    /// The server refused the request (a bad filter, no rights): not retryable.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
        /// What it said.
        body: String,
    },
    /// An event that is not one cplane sends.
    #[error("{url}: unreadable event: {reason}")]
    Unreadable {
        /// URL.
        url: String,
        /// Reason.
        reason: String,
    },
}

impl Error {
    /// Whether connecting again (and resuming) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Refused { status, .. } => status.is_server_error(),
            Error::Url(_) | Error::Request { .. } | Error::Unreadable { .. } => false,
        }
    }
}

/// The response header naming the position a stream starts after (what a client without a
/// `Last-Event-ID` resumes from if the stream breaks before its first event).
pub const STARTS_AFTER: &str = "cplane-events-after";

/// Reads `url` (`…/v1/events?…`) as server-sent events after `cursor` (the position of the
/// last event handled; `None`: the server decides, and `cursor` is set to where it started),
/// calling `on_event` for each and moving `cursor` past it; returns when the server ends the
/// stream (`follow=false`, or it shut down), or with the error that ended it.
pub async fn read(
    url: &str,
    bearer: Option<&str>,
    cursor: &mut Option<i64>,
    mut on_event: impl FnMut(Received),
) -> Result<(), Error> {
    let last_event_id = *cursor;
    let uri = checked_uri(url)?;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::ACCEPT, "text/event-stream");
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|source| Error::Request {
            url: url.to_owned(),
            source,
        })?;
    let transport = |reason: String| Error::Transport {
        url: url.to_owned(),
        reason,
    };
    let resp = crate::auth::jwks::hyper_client("the events server")
        .request(req)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(Error::Refused {
            url: url.to_owned(),
            status,
            body: body.chars().take(500).collect(),
        });
    }
    if cursor.is_none() {
        *cursor = resp
            .headers()
            .get(STARTS_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
    }
    let mut events = resp.into_body().into_data_stream().eventsource();
    while let Some(item) = events.next().await {
        let e = item.map_err(|e| transport(e.to_string()))?;
        let unreadable = |reason: String| Error::Unreadable {
            url: url.to_owned(),
            reason,
        };
        let position =
            e.id.parse::<i64>()
                .map_err(|_| unreadable(format!("id `{}` is not a position", e.id)))?;
        let event: CloudEvent =
            serde_json::from_str(&e.data).map_err(|err| unreadable(err.to_string()))?;
        *cursor = Some(position);
        on_event(Received { position, event });
    }
    Ok(())
}
