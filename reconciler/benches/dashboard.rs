//! The dashboard at fleet size (issue 18: "clusters: filter and search at 10,000"):
//! `cargo bench -p cplane-reconciler --bench dashboard` (env `CPLANE_BENCH_WORKSPACES`, default
//! 10,000). Without `--bench` it runs a quick, small version (50 workspaces).
//!
//! A release `cplane up` on a synthetic state repo of that many workspaces (mixed stacks, four
//! regions; [`cplane_reconciler::synthetic`]), SQLite, no cloud. Once every workspace cluster
//! is published:
//! - **the API the pages read**, as the admin (who sees everything): each route's median
//!   and max wall time over 5 requests, and the body's size — `/v1/clusters`,
//!   `/v1/workspaces` (the overview), `/v1/status`, `/v1/workspaces/{id}`,
//!   `/v1/workspaces/{id}/history`, `/v1/clusters/{id}/status`;
//! - **the browser** (Debian's headless Chromium through `playwright-core`, scenario `fleet`
//!   of `tests/browser/dashboard.cjs`; it needs `npm install --prefix
//!   ~/.cache/cplane-playwright playwright-core@1.64.1`, which the browser test does on its
//!   first run): from the click on "Clusters" to the table drawn with every cluster counted,
//!   then from typing a search to its matches drawn (five searches, median), and the state
//!   filter; the overview from sign-in to drawn.
//!
//! Figures, 2026-12-06 22:31 UTC, 10,000 workspaces (10,008 clusters with the platform's),
//! release build, load 2.2 (two other helpers' builds idle or light), one run:
//!
//! | what                                         | median  | max    | body      |
//! |----------------------------------------------|---------|--------|-----------|
//! | `GET /v1/clusters` (with each one's standing) | 126 ms  | 129 ms | 2,217 KiB |
//! | `GET /v1/workspaces` (the overview)          | 300 ms  | 303 ms | 6,180 KiB |
//! | `GET /v1/status`                             | 0 ms    | 1 ms   | 0.3 KiB   |
//! | `GET /v1/workspaces/{id}`                    | 97 ms   | 98 ms  | 1 KiB     |
//! | `GET /v1/workspaces/{id}/history?limit=10`   | 97 ms   | 113 ms | 0.3 KiB   |
//! | `GET /v1/clusters/{id}/status`               | 26 ms   | 27 ms  | 0.4 KiB   |
//!
//! In the browser: the overview drawn 852 ms after sign-in; the clusters page drawn 252 ms
//! after the click ("Clusters (10008)"); a search drawn 17 ms after typing it (median of 5;
//! it filters the list already fetched); the state filter 49 ms. `cplane up` published the
//! 10,000 clusters 9.2 s after it started.
//!
//! What costs: `/v1/workspaces/{id}` and its history read the applied revision's whole model
//! from the mirror (about 90 ms of the 97 at 10,000 workspaces), as every model read of the
//! API does; `/v1/workspaces` sends every readable workspace's spec (6 MB), which the
//! overview only counts and shows the first 500 of.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{http, load, Killed};

/// The playwright-core the browser test installs.
const PLAYWRIGHT: &str = ".cache/cplane-playwright/node_modules/playwright-core";

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let workspaces: usize = std::env::var("CPLANE_BENCH_WORKSPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 50 } else { 10_000 });
    let playwright = Path::new(&std::env::var("HOME").expect("HOME")).join(PLAYWRIGHT);
    assert!(
        playwright.join("package.json").exists(),
        "{} is missing: run `npm install --prefix ~/.cache/cplane-playwright playwright-core@1.64.1`",
        playwright.display()
    );
    println!("dashboard bench: {workspaces} workspaces; load {}", load());

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(".cplane");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    common::state_repo(&state, workspaces);

    let port = common::free_port();
    let t = Instant::now();
    let _up = Killed(
        Command::new(env!("CARGO_BIN_EXE_cplane"))
            .args(["up", "--dir"])
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CPLANE_LOG", "warn")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_PROFILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cplane up"),
    );
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(dir.join("admin.token")) {
            break t.trim().to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no admin token");
        std::thread::sleep(Duration::from_millis(100));
    };
    let auth = [("authorization", format!("Bearer {token}"))];
    let tenant_clusters = || {
        let (status, _, body) = http(port, "/v1/clusters", &auth);
        if status != 200 {
            return 0;
        }
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .map(|v| v.iter().filter(|c| c["kind"] == "tenant").count())
            .unwrap_or(0)
    };
    while tenant_clusters() < workspaces {
        assert!(t.elapsed() < Duration::from_secs(1800), "never published");
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "  published {workspaces} workspace clusters {:.1} s after start",
        t.elapsed().as_secs_f64()
    );

    // The API the pages read.
    let (_, _, body) = http(port, "/v1/clusters", &auth);
    let clusters: Vec<serde_json::Value> = serde_json::from_str(&body).expect("clusters");
    // A tenant cluster whose id no other id contains: its search matches it alone.
    let ids: Vec<&str> = clusters.iter().filter_map(|c| c["id"].as_str()).collect();
    let one = clusters
        .iter()
        .filter(|c| c["kind"] == "tenant")
        .filter_map(|c| c["id"].as_str())
        .rev()
        .find(|id| ids.iter().filter(|other| other.contains(*id)).count() == 1)
        .expect("a tenant cluster")
        .to_owned();
    let ws = one.trim_start_matches("w-").to_owned();
    println!("  route                                   median     max      body");
    for path in [
        "/v1/clusters".to_owned(),
        "/v1/workspaces".to_owned(),
        "/v1/status".to_owned(),
        format!("/v1/workspaces/{ws}"),
        format!("/v1/workspaces/{ws}/history?limit=10"),
        format!("/v1/clusters/{one}/status"),
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (status, _, body) = http(port, &path, &auth);
            times.push(t.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
            size = body.len();
        }
        times.sort();
        println!(
            "  {path:<38} {:>7.0} ms {:>6.0} ms {:>7.0} KiB",
            times[2].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3,
            size as f64 / 1024.0
        );
    }

    // The browser.
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/browser/dashboard.cjs"
        ))
        .env("CPLANE_URL", format!("http://127.0.0.1:{port}"))
        .env("SHOTS", tmp.path())
        .env("PLAYWRIGHT_CORE", &playwright)
        .env("CHROMIUM", "/usr/bin/chromium")
        .env("SCENARIO", "fleet")
        .env("SEARCH", &one)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("browser: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(seen["ok"] == true, "{seen:#}");
    let text = |k: &str| seen[k].as_str().unwrap_or_default().to_owned();
    println!(
        "  browser: overview drawn {} ms after sign-in; clusters page drawn {} ms after the click (heading: {})",
        seen["overviewMs"],
        seen["clustersMs"],
        text("counted")
    );
    println!(
        "  browser: a search drawn in {} ms (median of 5; {} for {one}), the state filter in {} ms",
        seen["searchMs"],
        text("matches"),
        seen["stateMs"]
    );
    println!("  load {}", load());
}
