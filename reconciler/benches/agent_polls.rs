//! The agent protocol under load (`cargo bench -p cplane-reconciler --bench agent_polls`; env
//! `CPLANE_BENCH_WORKSPACES` (default 10,000), `CPLANE_BENCH_POLLERS` (default: one per
//! workspace), `CPLANE_BENCH_WRK_SECONDS` (default 10), `CPLANE_BENCH_HOLD_SECONDS` (default 0:
//! how long to keep the long-polls held after measuring, to inspect the server meanwhile)).
//! Without `--bench` it runs a quick, small version.
//!
//! (a) Unchanged-bundle polls: `wrk` (2 threads, 64 connections) sends
//!     `GET /v1/clusters/{id}/bundle` with the cluster's token and `If-None-Match: "<digest>"` to
//!     the release `cplane serve` — every answer a `304` — and, in the same run, to nginx (one
//!     worker) serving the same bundle as a static file with an ETag. Goal: ≥ 0.5x nginx.
//! (b) Long-polls: one `?wait=300` long-poll per workspace cluster (each with its own token,
//!     created directly in the database), all held at once on a 10,000-workspace repo; the
//!     server's RSS is read from /proc (goal ≤ 512 MiB); then a commit changing one workspace
//!     (time until that cluster's poller gets its new bundle) and a commit changing a stack every
//!     workspace uses (time until every poller got its new bundle).
//!
//! Needs `wrk` and `nginx` on PATH for (a) (`apt-get install wrk nginx`); (a) is skipped with a
//! message when they are missing. Mind `ulimit -n`: (b) holds one socket per poller on each side.
//!
//! Figures measured in (b) with 10,000 long-polls held, kept here rather than in the code they
//! motivated:
//! - `axum::serve` (hyper-util's protocol-sniffing `auto` builder) held about 17 KiB more
//!   resident memory per parked long-poll than driving hyper's HTTP/1 connection directly: 427
//!   against 254 MiB (hence `connections.rs`).
//! - With transparent huge pages allowed, mimalloc's arenas made 394 of 505 MiB of the server's
//!   anonymous memory huge pages, memory it never used (hence `cplane serve` turns them off).
//!
//! Before/after, 2026-12-06 (issue 12 "Done when"): the tree at 78ab27a ("before") and after the
//! issue 12 sessions (e37b0da plus the validate work), release builds, each bench run in both
//! trees back to back; the machine was shared with other builds (load printed), so figures move
//! by tens of percent between runs of one tree.
//! - load about 9: (a) 304 polls 68,024 req/s against nginx 93,194 (0.73x) before, 62,488
//!   against 108,441 (0.58x) after; (b) 10,000 long-polls held in 212 / 210 MiB (idle 95 / 94
//!   MiB, huge pages 2 MiB in both); one-workspace commit -> its agent woken 465 / 406 ms; stack
//!   commit -> all 9,999 other agents woken 11.7 / 11.3 s, peak RSS 443 / 441 MiB.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, header, http, rss, rss_parts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// nginx's master; stopped with SIGTERM (a SIGKILL would orphan its worker).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs wrk; returns requests/s.
fn wrk(url: &str, headers: &[String], seconds: u64) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", &format!("-d{seconds}s")]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx or 3xx"),
        "errors under wrk:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// (a): 304 polls/s of cplane serve vs nginx.
fn polls_vs_nginx(dir: &Path, port: u16, cluster: &str, token: &str, seconds: u64) {
    if !which("wrk") || !which("nginx") {
        println!("(a) skipped: wrk and nginx are needed (apt-get install wrk nginx)");
        return;
    }
    let bearer = format!("Authorization: Bearer {token}");
    let (status, head, body) = http(
        port,
        &format!("/v1/clusters/{cluster}/bundle"),
        &[("Authorization", format!("Bearer {token}"))],
    );
    assert_eq!(status, 200, "{head}");
    let etag = header(&head, "etag").expect("etag");
    let path = format!("/v1/clusters/{cluster}/bundle");
    let (status, _, _) = http(
        port,
        &path,
        &[
            ("Authorization", format!("Bearer {token}")),
            ("If-None-Match", etag.clone()),
        ],
    );
    assert_eq!(status, 304);

    // nginx, one worker, serving the same bytes with its own ETag.
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("www")).expect("mkdir");
    std::fs::write(prefix.join("www/bundle.jsonl"), &body).expect("write");
    let nport = free_port();
    let conf = prefix.join("nginx.conf");
    let p = prefix.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/tmp; proxy_temp_path {p}/tmp; fastcgi_temp_path {p}/tmp; uwsgi_temp_path {p}/tmp; scgi_temp_path {p}/tmp;\n  server {{\n    listen 127.0.0.1:{nport};\n    root {p}/www;\n    etag on;\n  }}\n}}\n"
        ),
    )
    .expect("conf");
    let nginx = Nginx(
        Command::new("nginx")
            .args([
                "-p",
                &p.to_string(),
                "-c",
                conf.to_str().expect("utf-8"),
                "-e",
                &format!("{p}/error.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    let t = Instant::now();
    let netag = loop {
        let (s, h, _) = http(nport, "/bundle.jsonl", &[]);
        if s == 200 {
            break header(&h, "etag").expect("nginx etag");
        }
        assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        http(nport, "/bundle.jsonl", &[("If-None-Match", netag.clone())]).0,
        304
    );

    let cplane = wrk(
        &format!("http://127.0.0.1:{port}{path}"),
        &[bearer, format!("If-None-Match: {etag}")],
        seconds,
    );
    let ngx = wrk(
        &format!("http://127.0.0.1:{nport}/bundle.jsonl"),
        &[format!("If-None-Match: {netag}")],
        seconds,
    );
    drop(nginx);
    println!(
        "(a) unchanged-bundle 304 polls, wrk -t2 -c64 -d{seconds}s: cplane serve {cplane:.0} req/s, nginx {ngx:.0} req/s = {:.2}x nginx (goal >= 0.5x); bundle {} bytes",
        cplane / ngx,
        body.len()
    );
}

/// One long-polling agent: polls until it gets a bundle other than `digest`; returns when.
async fn long_poll(
    port: u16,
    cluster: String,
    token: String,
    digest: String,
    sent: Arc<AtomicUsize>,
) -> Option<(String, Instant)> {
    /// Pollers that gave up, by reason (the first few are printed).
    static FAILED: AtomicUsize = AtomicUsize::new(0);
    let fail = |why: String| {
        if FAILED.fetch_add(1, Ordering::SeqCst) < 5 {
            eprintln!("poller {cluster} gave up: {why}");
        }
    };
    let mut first = true;
    loop {
        let mut s = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(e) => {
                fail(format!("connect: {e}"));
                return None;
            }
        };
        let req = format!(
            "GET /v1/clusters/{cluster}/bundle?wait=300 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nIf-None-Match: \"{digest}\"\r\n\r\n"
        );
        if let Err(e) = s.write_all(req.as_bytes()).await {
            fail(format!("send: {e}"));
            return None;
        }
        if first {
            sent.fetch_add(1, Ordering::SeqCst);
            first = false;
        }
        let mut buf = [0u8; 512];
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                fail(format!("read: {e}"));
                return None;
            }
        };
        let at = Instant::now();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        match head.split(' ').nth(1).unwrap_or("") {
            "200" => return Some((cluster, at)),
            "304" => continue,
            _ => {
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
                let body = String::from_utf8_lossy(&rest).to_string();
                fail(format!("answer {head:?} {body:?}"));
                return None;
            }
        }
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let workspaces = if quick {
        20
    } else {
        env("CPLANE_BENCH_WORKSPACES", 10_000)
    };
    let pollers = if quick {
        20
    } else {
        env("CPLANE_BENCH_POLLERS", workspaces)
    }
    .min(workspaces);
    let seconds = if quick {
        1
    } else {
        env("CPLANE_BENCH_WRK_SECONDS", 10) as u64
    };

    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("state");
    common::state_repo(&repo, workspaces);
    let server = common::Server::start(&repo, tmp.path());
    let (port, pid) = (server.port, server.pid);
    println!(
        "{workspaces} workspaces: ready in {:.1} s",
        server.ready_after.as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let workspace_clusters = server.workspace_clusters(pollers);

    // Tokens, directly in the database (one per polled cluster).
    let t = Instant::now();
    let ids: Vec<String> = workspace_clusters
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let tokens = server.cluster_tokens(&rt, &ids);
    println!(
        "{pollers} cluster tokens created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // (a)
    polls_vs_nginx(
        tmp.path(),
        port,
        &workspace_clusters[0].0,
        &tokens[0],
        seconds,
    );

    // (b) every poller holds a long-poll.
    let (idle, _) = rss(pid);
    let idle_parts = rss_parts(pid);
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = {
        let _runtime = rt.enter();
        workspace_clusters
            .iter()
            .zip(&tokens)
            .map(|((id, digest), token)| {
                rt.spawn(long_poll(
                    port,
                    id.clone(),
                    token.clone(),
                    digest.clone(),
                    sent.clone(),
                ))
            })
            .collect()
    };
    while sent.load(Ordering::SeqCst) < pollers {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} polls sent",
            sent.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let connected = started.elapsed();
    // Measure once the server holds them all: its gauge of parked long-polls says so (a sent
    // request may still wait in the listen backlog).
    let parked = || server.metric("cplane_bundle_long_polls") as usize;
    while parked() < pollers {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the server holds only {} of {pollers} long-polls",
            parked()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let all_parked = started.elapsed();
    std::thread::sleep(Duration::from_secs(3)); // as before: a moment to settle
    let (held, _) = rss(pid);
    println!(
        "(b) {pollers} concurrent long-polls held (sent in {:.1} s, all parked in the server after {:.1} s): server RSS {held:.0} MiB (idle before: {idle:.0} MiB; goal <= 512 MiB)",
        connected.as_secs_f64(),
        all_parked.as_secs_f64()
    );
    println!("    held: {}; idle before: {idle_parts}", rss_parts(pid));
    let hold = if quick {
        0
    } else {
        env("CPLANE_BENCH_HOLD_SECONDS", 0) as u64
    };
    if hold > 0 {
        println!("    holding the long-polls for {hold} s (server pid {pid})");
        std::thread::sleep(Duration::from_secs(hold));
    }

    // A commit changing one workspace: its poller is woken.
    let target = &workspace_clusters[pollers / 2].0;
    let file = repo.join(format!(
        "workspaces/{}.yaml",
        target.trim_start_matches("w-")
    ));
    let text = std::fs::read_to_string(&file).expect("read");
    let changed = text.replacen("replicas: ", "replicas: 1", 1);
    assert_ne!(text, changed, "no replicas value in {}", file.display());
    std::fs::write(&file, changed).expect("write");
    let t0 = Instant::now();
    common::commit_all(&repo, "one workspace");
    let mut tasks: Vec<_> = tasks.into_iter().map(Some).collect();
    let idx = pollers / 2;
    let one = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), tasks[idx].take().expect("task")).await
    });
    let (woken, at) = one
        .expect("woken within 120 s")
        .expect("join")
        .expect("a 200");
    assert_eq!(&woken, target);
    println!(
        "(b) one-workspace commit -> its agent woken: {:.0} ms",
        (at - t0).as_secs_f64() * 1000.0
    );

    // A commit changing a stack every workspace uses: every poller is woken.
    common::change_bff_template(&repo, "1");
    let t0 = Instant::now();
    common::commit_all(&repo, "every workspace");
    let results = rt.block_on(async {
        let mut last = t0;
        let mut woken = 0usize;
        for t in tasks.into_iter().flatten() {
            if let Ok(Ok(Some((_, at)))) = tokio::time::timeout(Duration::from_secs(600), t).await {
                woken += 1;
                last = last.max(at);
            }
        }
        (woken, last)
    });
    let (_, peak) = rss(pid);
    println!(
        "(b) stack commit -> all {}/{} other agents woken: {:.1} s; server peak RSS {peak:.0} MiB",
        results.0,
        pollers - 1,
        (results.1 - t0).as_secs_f64()
    );
    drop(server);
}
