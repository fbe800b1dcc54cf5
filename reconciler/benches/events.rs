//! Lifecycle events under a fleet-wide change (issue 21, item 5): events written per second,
//! outbox-to-sink latency (p50/p99), and the reconcile time with and without a sink.
//!
//! ```text
//! cargo bench -p cplane-reconciler --bench events --no-run     # the release build first
//! flock /work/bench.lock cargo bench -p cplane-reconciler --bench events
//! ```
//! (env `CPLANE_BENCH_WORKSPACES`, default 10000; `CPLANE_BENCH_RUNS`, default 3;
//! `CPLANE_BENCH_DATABASE`, default SQLite in a temporary directory; `cargo test -p
//! cplane-reconciler --bench events` is a quick check: 30 workspaces, one run.) A synthetic
//! repo is applied once (`--cloud none`); then fleet-wide changes (the `bff` stack's version,
//! which changes every tenant cluster's bundle: one `bundle.published` per workspace plus the
//! commit's) are applied alternately without a sink and with a webhook sink delivering to a
//! receiver on 127.0.0.1 (`notify::run_sink`, as `serve` runs it, started afresh at the newest
//! event before each run). The sink and the receiver run on a tokio runtime of their own
//! (threads named `sink`), so their CPU time is told apart from the rest of the process's.
//! Reported:
//! - the run's wall time without and with the sink (median of the runs of each), and the CPU
//!   time of every thread but the sink's during the run (`/proc/self/task/*/stat`; it includes
//!   SQLite's connection threads, which also serve the sink's queries), and the sink's and
//!   receiver's own CPU time for the run's events;
//! - events written per second: the run's events over the run's time (a lower bound: the run
//!   does everything else too), and a raw figure, one event per transaction;
//! - outbox-to-sink latency: the receiver's clock at arrival minus the event's `time` (the
//!   append, inside its transaction), over every event of the runs with the sink;
//! - the load average before and after.
//!
//! # Figures, 2026-12-06, 10,000 workspaces, SQLite, release build
//! Taken on the shared 2-core machine while other helpers built and benchmarked, so wall
//! times carry several per cent of noise; the lead re-runs it in a quiet window. Two runs of
//! the bench with the final code, 22:21 UTC (load 4.2 → 5.5; a debug build of mine overlapped
//! its first minute) and 21:58 UTC (load 11.0 → 11.3):
//!
//! | | no sink | webhook sink |
//! |---|---|---|
//! | fleet-wide change, wall (median of 3), load 4-5 | 12,650 ms | 12,500 ms (−1.2 %) |
//! | the same, CPU of all but the sink's threads | 7.41 s | 7.71 s (+4.0 %) |
//! | fleet-wide change, wall (median of 3), load 11 | 14,431 ms | 15,118 ms (+4.8 %) |
//! | the same, CPU of all but the sink's threads | 7.79 s | 8.18 s (+5.0 %) |
//!
//! - 10,001 events per change; written at 791 (693 at load 11) events/s within the run (the
//!   run's own pace), 6,385 (6,435) events/s raw, one per transaction.
//! - Outbox to sink: p50 24 ms, p99 55 ms, max 315 ms (30,003 events); at load 11 p50 26 ms,
//!   p99 93 ms, max 472 ms. The sink and receiver used 0.36 s (0.37 s) CPU for one change's
//!   10,001 events.
//! - Wall 2:43 for the whole bench (first apply 11.6 s).
//!
//! How it got there (same machine, same day):
//! - Before (the sink polling the outbox every 250 ms, a write and a read per event; quick
//!   mode only, as the release build had not finished): latency p50 240 ms, p99 254 ms — the
//!   poll.
//! - Woken by the outbox's writers (`Db::watch_events`) instead, still a write per event:
//!   p50 2 ms, p99 36 ms, but the wall time with a sink +10.6 % (14,835 → 16,404 ms; CPU
//!   +2.1 %, load 6.8 → 11.1) and 0.64 s of sink CPU per change: events trickle in a commit
//!   at a time, and each wake expanded, claimed and deleted on its own — up to three takes of
//!   SQLite's single writer lock per event while the run needed it.
//! - Then a woken sink lingers 20 ms to gather a burst, and deletes a batch's deliveries in
//!   one statement: the figures above (the load-11 run is the like-for-like comparison) — a
//!   few writes per round instead of three per event, wall with a sink +10.6 % → +4.8 %, sink
//!   CPU 0.64 → 0.37 s, latency p50 26 ms (the linger) and p99 93 ms.
//!
//! The goal (within 5 %) is met in both runs, by wall time. The reconcile itself never waits
//! on the sink (it only bumps a watch after a commit). The 4-5 % more CPU on the non-sink
//! threads is most likely SQLite's connection threads running the sink's queries (they are
//! not told apart; not verified with perf). On PostgreSQL the sink's row writes would not
//! queue behind the run's; not measured here.

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

/// CPU seconds (user + system) of this process's threads: (the sink's runtime's threads,
/// named `sink*`; every other thread: the reconcile, its blocking pool, SQLite's workers).
fn thread_cpu() -> (f64, f64) {
    let ticks = 100.0; // CLK_TCK: 100 on Linux (what `getconf CLK_TCK` says here)
    let (mut sink, mut rest) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0.0, 0.0);
    };
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some((head, rest_of)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let f: Vec<&str> = rest_of.split_whitespace().collect();
        let cpu = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let secs = (cpu(11) + cpu(12)) / ticks;
        if comm.starts_with("sink") {
            sink += secs;
        } else {
            rest += secs;
        }
    }
    (sink, rest)
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
    let runs = if quick {
        1
    } else {
        std::env::var("CPLANE_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
    };
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
    let load = common::load();
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

    // The sink and its receiver run on a runtime of their own (threads named `sink`), as a
    // sink's task shares the machine but not the reconcile's work; their CPU is told apart.
    let sink_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sink")
        .enable_all()
        .build()
        .expect("sink runtime");
    let (port, seen) = sink_rt.spawn(receiver()).await.expect("receiver");
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
    let mut cpu_without = Vec::new();
    let mut cpu_with = Vec::new();
    let mut sink_cpu = Vec::new();
    let mut rates = Vec::new();
    let mut latencies: Vec<i64> = Vec::new();
    for r in 0..runs {
        // Without a sink.
        bump_bff(dir.path(), &format!("1.9.{}", 2 * r));
        let before = db.last_event_position().await.expect("position");
        let cpu = thread_cpu();
        let (took, published) = apply(dir.path(), &db).await;
        cpu_without.push(thread_cpu().1 - cpu.1);
        let written = db.last_event_position().await.expect("position") - before;
        assert!(published >= workspaces, "{published} bundles published");
        without.push(took);
        rates.push(written as f64 / took.as_secs_f64());

        // With a webhook sink delivering as the run writes, started afresh at the newest
        // event (not behind the run without it).
        db.forget_sinks_except(&[]).await.expect("forget");
        let head = db.last_event_position().await.expect("position");
        db.start_sink("bench", head).await.expect("start");
        let task = sink_rt.spawn(notify::run_sink(db.clone(), "bench".into(), sink.clone()));
        bump_bff(dir.path(), &format!("1.9.{}", 2 * r + 1));
        let before = db.last_event_position().await.expect("position");
        let cpu = thread_cpu();
        let (took, _) = apply(dir.path(), &db).await;
        let after_run = thread_cpu();
        cpu_with.push(after_run.1 - cpu.1);
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
        sink_cpu.push(thread_cpu().0 - cpu.0);
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
    let fmedian = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ca, cb, cs) = (fmedian(cpu_without), fmedian(cpu_with), fmedian(sink_cpu));
    let (a, b) = (median(without), median(with));
    println!("load before the runs: {load}");
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
        "reconcile CPU (not the sink's threads): {ca:9.2} s no sink, {cb:.2} s with it ({:+.1} %)",
        100.0 * (cb / ca - 1.0)
    );
    println!("sink + receiver CPU, the run's events:  {cs:9.2} s");
    println!("load after the runs: {}", common::load());
    println!(
        "outbox-to-sink latency:                 p50 {} ms, p99 {} ms, max {} ms ({} events)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0),
        latencies.len()
    );
    sink_rt.shutdown_background();
}
