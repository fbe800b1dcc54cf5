//! What the benches share (`agent_polls`, `rollouts`, `events`, `replan`): a
//! synthetic state repo behind a running server, cluster tokens made in its database, blocking
//! HTTP for the few requests that set things up, and the server's memory and CPU time read
//! from /proc.
//!
//! Each bench binary includes this module and uses part of it.
#![allow(dead_code)] // each bench binary uses a different part of this module

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One blocking request (`Connection: close`): (status, head, body); status 0 when the server
/// cannot be reached.
pub fn http(port: u16, path: &str, headers: &[(&str, String)]) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_owned(), body.to_owned())
}

/// The value of header `name` in a response head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Commits every file of the work tree at `dir` on its branch.
pub fn commit_all(dir: &Path, message: &str) {
    let repo = git2::Repository::open(dir).expect("open");
    let mut index = repo.index().expect("index");
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .expect("add");
    index.write().expect("write");
    let tree = repo
        .find_tree(index.write_tree().expect("tree"))
        .expect("tree");
    let sig = git2::Signature::now("bench", "bench@cplane.local").expect("sig");
    let parent = repo.head().expect("head").peel_to_commit().expect("commit");
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .expect("commit");
}

/// The value of `key` (`VmRSS:`, ...) in `/proc/{pid}/{file}`, in MiB (0 when missing).
pub fn proc_mib(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `RssAnon`, `RssFile` and `AnonHugePages` of `pid` in MiB, for the record: what the RSS is
/// made of (heap, mapped binary and libraries, transparent huge pages).
pub fn rss_parts(pid: u32) -> String {
    format!(
        "anon {:.0} MiB, file {:.0} MiB, of which huge pages {:.0} MiB",
        proc_mib(pid, "status", "RssAnon:"),
        proc_mib(pid, "status", "RssFile:"),
        proc_mib(pid, "smaps_rollup", "AnonHugePages:")
    )
}

/// (VmRSS, VmHWM) of `pid` in MiB.
pub fn rss(pid: u32) -> (f64, f64) {
    (
        proc_mib(pid, "status", "VmRSS:"),
        proc_mib(pid, "status", "VmHWM:"),
    )
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current RSS (Linux's
/// `clear_refs` value 5), so that the peak read afterwards is the peak of what follows; `false`
/// when the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU time `pid` has used so far (user + system, `utime` + `stime` of `/proc/{pid}/stat`),
/// in seconds; `pid` 0 is this process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 of what follows ')'.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// `getconf CLK_TCK` (100 on Linux everywhere this runs; asked rather than assumed).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The machine's load averages (`/proc/loadavg`), for the record.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The soft limit on open files of this process (`ulimit -n`).
pub fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// A release `cplane serve` (`--insecure-open-read`, SQLite, a local state repo it watches)
/// on 127.0.0.1, killed when dropped.
pub struct Server {
    /// The state repo's work tree (commit to it to change the state).
    pub repo: PathBuf,
    /// Its port.
    pub port: u16,
    /// Its process id.
    pub pid: u32,
    /// Its database.
    pub db_url: String,
    /// How long it took to answer `/readyz` after starting.
    pub ready_after: Duration,
    _process: Killed,
}

impl Server {
    /// Starts `cplane serve` on the state repo at `repo` (its database, mirror and logs go to
    /// `dir`) and waits until it is ready (its first revision published).
    pub fn start(repo: &Path, dir: &Path) -> Self {
        let branch = git2::Repository::open(repo)
            .expect("open")
            .head()
            .expect("head")
            .shorthand()
            .expect("branch")
            .to_owned();
        let port = free_port();
        let db_url = format!("sqlite://{}", dir.join("cplane.db").display());
        let process = Killed(
            Command::new(env!("CARGO_BIN_EXE_cplane"))
                .args([
                    "serve",
                    "--insecure-open-read",
                    "--repo-url",
                    repo.to_str().expect("utf-8"),
                    "--branch",
                    &branch,
                ])
                .args(["--mirror", dir.join("mirror.git").to_str().expect("utf-8")])
                .args([
                    "--database",
                    &db_url,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--poll",
                    "1h",
                ])
                .env("CPLANE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cplane serve"),
        );
        let pid = process.0.id();
        let t = Instant::now();
        while http(port, "/readyz", &[]).0 != 200 {
            assert!(t.elapsed() < Duration::from_secs(900), "never ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            repo: repo.to_owned(),
            port,
            pid,
            db_url,
            ready_after: t.elapsed(),
            _process: process,
        }
    }

    /// The first `n` workspace clusters (`w-…`) with their current digests, as the server
    /// lists them.
    pub fn workspace_clusters(&self, n: usize) -> Vec<(String, String)> {
        let (_, _, body) = http(self.port, "/v1/clusters", &[]);
        let clusters: Vec<serde_json::Value> = serde_json::from_str(&body).expect("clusters");
        let mut out: Vec<(String, String)> = clusters
            .iter()
            .filter(|c| {
                c["kind"] != "platform" && c["id"].as_str().is_some_and(|id| id.starts_with("w-"))
            })
            .filter_map(|c| {
                Some((
                    c["id"].as_str()?.to_owned(),
                    c["digest"].as_str()?.to_owned(),
                ))
            })
            .collect();
        out.truncate(n);
        assert_eq!(out.len(), n, "{} clusters listed", clusters.len());
        out
    }

    /// An agent token for each of `clusters`, created directly in the database.
    pub fn cluster_tokens(&self, rt: &tokio::runtime::Runtime, clusters: &[String]) -> Vec<String> {
        rt.block_on(async {
            let db = cplane_reconciler::db::Db::connect(&self.db_url)
                .await
                .expect("db");
            let mut out = Vec::with_capacity(clusters.len());
            for id in clusters {
                out.push(db.create_cluster_token(id).await.expect("token"));
            }
            out
        })
    }

    /// The value of an unlabelled series of its `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let prefix = format!("{name} ");
        http(self.port, "/metrics", &[])
            .2
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// A synthetic state repo of `workspaces` mixed workspaces in four regions at `dir`
/// ([`cplane_reconciler::synthetic`]), packed as a long-lived repo would be.
pub fn state_repo(dir: &Path, workspaces: usize) {
    cplane_reconciler::synthetic::generate(
        dir,
        cplane_reconciler::synthetic::Shape {
            workspaces,
            regions: 4,
        },
    )
    .expect("generate");
    let _ = Command::new("git")
        .args(["repack", "-adq"])
        .current_dir(dir)
        .status();
}

/// Changes the `bff` stack's ConfigMap template (a stack every synthetic workspace uses), so
/// that every workspace cluster's bundle changes; not yet committed. `mark` makes the change
/// differ from earlier ones.
pub fn change_bff_template(repo: &Path, mark: &str) {
    let tpl_dir = repo.join("stacks/bff/templates");
    let tpl = std::fs::read_dir(&tpl_dir)
        .expect("templates")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("configmap.yaml.j2"))
        .expect("bff configmap template");
    let text = std::fs::read_to_string(&tpl).expect("read");
    let changed = text.replacen("data:\n", &format!("data:\n  BENCH_MARK: \"{mark}\"\n"), 1);
    assert_ne!(text, changed, "no data: in {}", tpl.display());
    std::fs::write(&tpl, changed).expect("write");
}

/// The `p`-th percentile (0..=100) of sorted `v` (nearest rank), or zero when empty.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
