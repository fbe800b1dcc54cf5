//! `cplane events [--follow]`: a control plane's lifecycle events in the terminal.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use cplane_reconciler::event_stream::{self, Received};

use super::{block_on, Format};

/// What `cplane events` was asked.
pub(super) struct EventsQuery {
    pub(super) server: Vec<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) types: Vec<String>,
    pub(super) workspace: Option<String>,
    pub(super) after: Option<i64>,
    pub(super) follow: bool,
    pub(super) format: Format,
}

/// Longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Prints the events; with `follow`, reconnects (resuming after the last one printed) until
/// interrupted.
pub(super) fn events_command(q: EventsQuery) -> anyhow::Result<ExitCode> {
    let EventsQuery {
        server,
        token_file,
        types,
        workspace,
        after,
        follow,
        format,
    } = q;
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("--token-file {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("CPLANE_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()),
    };
    let mut query: Vec<(&str, String)> = Vec::new();
    if !types.is_empty() {
        query.push(("type", types.join(",")));
    }
    if let Some(ws) = &workspace {
        query.push(("workspace", ws.clone()));
    }
    if !follow {
        query.push(("follow", "false".into()));
    }
    let query = serde_urlencoded::to_string(&query).context("encoding the query")?;
    let urls: Vec<String> = server
        .iter()
        .map(|s| format!("{}/v1/events?{query}", s.trim_end_matches('/')))
        .collect();
    anyhow::ensure!(!urls.is_empty(), "--server names no control plane");
    // Without --follow, everything retained unless told; with it, only what comes next.
    let mut last = match (after, follow) {
        (Some(p), _) => Some(p),
        (None, false) => Some(0),
        (None, true) => None,
    };
    let print = |r: &Received| {
        let mut out = std::io::stdout().lock();
        let line = match format {
            Format::Json => serde_json::to_string(&r.event).expect("events serialize"),
            Format::Text => format!(
                "{}  {:<40}  {:<32}  {}",
                r.event.time,
                r.event.kind.trim_start_matches("io.cplane."),
                r.event.subject,
                r.event.data
            ),
        };
        // A closed pipe (`| head`) ends the command, not a panic.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    block_on(async move {
        let mut backoff = Duration::from_millis(200);
        for url in urls.iter().cycle() {
            let mut got = false;
            let result = event_stream::read(url, token.as_deref(), &mut last, |r| {
                print(&r);
                got = true;
            })
            .await;
            if got {
                backoff = Duration::from_millis(200);
            }
            match result {
                Ok(()) if !follow => return Ok(ExitCode::SUCCESS),
                Ok(()) => {}
                Err(e) if follow && e.is_retryable() => {
                    eprintln!("{e}; reconnecting in {backoff:?}");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        unreachable!("cycling a non-empty list never ends")
    })
}
