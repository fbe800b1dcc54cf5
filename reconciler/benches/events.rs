//! Lifecycle events under a fleet-wide change (issue 21, item 5): events written per second,
//! outbox-to-sink latency (p50/p99), and the reconcile time with and without a sink.
//!
//! `cargo bench -p cplane-reconciler --bench events` (env `CPLANE_BENCH_WORKSPACES`, default
//! 10000; `CPLANE_BENCH_DATABASE`, default SQLite in a temporary directory). A synthetic
//! repo is applied once (`--cloud none`); then fleet-wide changes (the `bff` stack's version,
//! which changes every tenant cluster's bundle: one `bundle.published` per workspace plus the
//! commit's) are applied alternately without a sink and with a webhook sink delivering to a
//! receiver on 127.0.0.1 (`notify::run_sink`, as `serve` runs it). Reported:
//! - the run's time without and with the sink (median of the runs of each);
//! - events written per second: the run's events over the run's time (a lower bound: the run
//!   does everything else too), and a raw figure, one event per transaction;
//! - outbox-to-sink latency: the receiver's clock at arrival minus the event's `time`.
//!
//! Figures, 2026-12-06: the 10,000-workspace run is still to be taken — the release build did
//! not finish within the session on the shared machine (load 9-10). The quick mode (`cargo
//! test -p cplane-reconciler --bench events`: 30 workspaces, debug build, SQLite) gave: a
//! fleet-wide change 1518 ms without a sink, 1535 ms with one (+1.1 %); 748 events/s written
//! one per transaction; latency p50 240 ms, p99 254 ms — the sink task's 250 ms poll
//! (`notify::TICK`) dominates it: waking the sinks on the outbox head, as `/v1/events` is
//! woken, is the obvious next step if that matters.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cplane_reconciler::db::Db;
use cplane_reconciler::events::{EventType, NewEvent};
use cplane_reconciler::reconcile::{self, Request, RunResult};
use cplane_reconciler::{notify, plan, source, synthetic};

use common::commit_all;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("millis")
}

/// Applies the repo's HEAD; returns the run's time and how many bundles it published.
async fn apply(dir: &std::path::Path, db: &Db) -> (Duration, usize) {
    let repo = git2::Repository::open(dir).expect("open");
    let snapshot = source::read(&repo, "HEAD").expect("read");
    let t = Instant::now();
    let result = reconcile::run(
        snapshot,
        db,
        None,
        Request {
            scope: plan::Scope::all(),
            options: plan::Options::default(),
            dry_run: false,
            drift: cplane_reconciler::aws::observe::Sample::HOURLY,
            memo: None,
        },
        Arc::new(|_, _| {}),
    )
    .await
    .expect("run");
    let took = t.elapsed();
    match result {
        RunResult::Planned { published, .. } => (took, published.len()),
        RunResult::Refused(e) => panic!("refused: {e:?}"),
    }
}

/// Sets the `bff` stack's version: every tenant cluster's bundle changes.
fn bump_bff(dir: &std::path::Path, version: &str) {
    let path = dir.join("stacks/bff/stack.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("version:") {
                format!("  version: \"{version}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&path, text).expect("write");
    commit_all(dir, &format!("bff {version}"));
}

/// A receiver on 127.0.0.1 recording each event id's arrival (unix millis).
async fn receiver() -> (u16, Arc<Mutex<HashMap<String, i64>>>) {
    let seen: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let record = record.clone();
        async move {
            let at = now_ms();
            let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
            let id = e["id"].as_str().expect("id").to_owned();
            record.lock().expect("seen").entry(id).or_insert(at);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let workspaces: usize = if quick {
        30
    } else {
        std::env::var("CPLANE_BENCH_WORKSPACES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    };
    let runs = if quick { 1 } else { 2 };
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic::generate(
        dir.path(),
        synthetic::Shape {
            workspaces,
            regions: 4,
        },
    )
    .expect("generate");
    let url = std::env::var("CPLANE_BENCH_DATABASE")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let db = Db::connect(&url).await.expect("db");
    let (first, published) = apply(dir.path(), &db).await;
    println!(
        "workspaces: {workspaces}; first apply {:.1} s, {published} bundles",
        first.as_secs_f64()
    );

    // Raw outbox writes: one event per transaction.
    let n = if quick { 100 } else { 5_000 };
    let t = Instant::now();
    for i in 0..n {
        db.record_events(&[NewEvent::new(
            EventType::DriftFound,
            format!("workspace/ws{i:05}"),
            serde_json::json!({ "workspace": format!("ws{i:05}"), "repairs": [] }),
        )
        .in_stream("r1", "prod")])
            .await
            .expect("record");
    }
    let raw = f64::from(n) / t.elapsed().as_secs_f64();

    let (port, seen) = receiver().await;
    let sink = notify::SinkConfig {
        name: "bench".into(),
        sink: Arc::new(notify::WebhookSink::new(
            &format!("http://127.0.0.1:{port}/hook"),
            "bench-key",
        )),
        types: EventType::ALL.to_vec(),
        max_attempts: 10,
    };

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut rates = Vec::new();
    let mut latencies: Vec<i64> = Vec::new();
    for r in 0..runs {
        // Without a sink.
        bump_bff(dir.path(), &format!("1.9.{}", 2 * r));
        let before = db.last_event_position().await.expect("position");
        let (took, published) = apply(dir.path(), &db).await;
        let written = db.last_event_position().await.expect("position") - before;
        assert!(published >= workspaces, "{published} bundles published");
        without.push(took);
        rates.push(written as f64 / took.as_secs_f64());

        // With a webhook sink delivering as the run writes, started afresh at the newest
        // event (not behind the run without it).
        db.forget_sinks_except(&[]).await.expect("forget");
        let head = db.last_event_position().await.expect("position");
        db.start_sink("bench", head).await.expect("start");
        let task = tokio::spawn(notify::run_sink(db.clone(), "bench".into(), sink.clone()));
        bump_bff(dir.path(), &format!("1.9.{}", 2 * r + 1));
        let before = db.last_event_position().await.expect("position");
        let (took, _) = apply(dir.path(), &db).await;
        with.push(took);
        let after = db.last_event_position().await.expect("position");
        let events = db
            .events_after(
                before,
                &cplane_reconciler::db::EventFilter::default(),
                u32::try_from(after - before).expect("count"),
            )
            .await
            .expect("events");
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let done = {
                let seen = seen.lock().expect("seen");
                events.iter().all(|e| seen.contains_key(&e.event.id))
            };
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "the sink did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        let seen = seen.lock().expect("seen");
        for e in &events {
            let written_at = humantime::parse_rfc3339(&e.event.time)
                .expect("time")
                .duration_since(UNIX_EPOCH)
                .expect("after the epoch")
                .as_millis();
            let at = seen[&e.event.id];
            latencies.push(at - i64::try_from(written_at).expect("millis"));
        }
    }
    latencies.sort_unstable();
    let (a, b) = (median(without), median(with));
    println!(
        "fleet-wide change, no sink:             {:9.1} ms",
        a.as_secs_f64() * 1e3
    );
    println!(
        "fleet-wide change, webhook sink:        {:9.1} ms  ({:+.1} %)",
        b.as_secs_f64() * 1e3,
        100.0 * (b.as_secs_f64() / a.as_secs_f64() - 1.0)
    );
    rates.sort_by(f64::total_cmp);
    println!(
        "events written per second, in the run:  {:9.0}  (raw, one per transaction: {raw:.0})",
        rates[rates.len() / 2]
    );
    println!(
        "outbox-to-sink latency:                 p50 {} ms, p99 {} ms, max {} ms ({} events)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
}
