//! The first hour with cplane (issue 20): the faults a new user met, each driven through the
//! real binary on real git repositories, SQLite and HTTP on 127.0.0.1.

use std::fs;
use std::io::Read as _;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cplane_e2e::serve::{http, wait_for};

/// A `cplane` child process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cplane_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .current_dir(dir)
        .env_remove("CPLANE_DATABASE_URL")
        .env_remove("CPLANE_FORMAT")
        .env_remove("CPLANE_LOG")
        .env_remove("NO_COLOR")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run cplane")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A counter or gauge of `/metrics` (`None` when the series is absent).
fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, body) = http(port, "GET", "/metrics", &[], b"");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `cplane up` on a fresh directory, stderr kept in `log`, until `/readyz` answers.
fn up(dir: &Path, port: u16, log: &Path) -> Server {
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["up", "--dir", dir.to_str().expect("utf-8")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("CPLANE_LOG")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start cplane up");
    let server = Server(child);
    wait_for("/readyz", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    server
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits up to `limit` for the child to exit; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_sits_idle_refuses_a_bad_commit_once_and_stops_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("try");
    let log = tmp.path().join("up.log");
    let port = cplane_e2e::moto::free_port();
    let mut server = up(&dir, port, &log);
    let token = fs::read_to_string(dir.join("admin.token")).expect("admin token");
    let auth = [("Authorization", format!("Bearer {}", token.trim()))];

    // Idle: no fetch, no run beyond the first one. (Before: the watch saw the loop's own reads
    // of the repository and fetched about 46 times a second.)
    let fetches = metric(port, "cplane_state_fetches_total").expect("fetch counter");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        metric(port, "cplane_state_fetches_total"),
        Some(fetches),
        "fetched while idle"
    );
    assert_eq!(
        metric(port, "cplane_reconcile_runs_total{outcome=\"converged\"}"),
        Some(1.0)
    );

    // An invalid commit: refused once, one WARN line naming the commit and its error.
    let state = dir.join("state");
    let acme = state.join("workspaces/acme.yaml");
    let broken = fs::read_to_string(&acme)
        .expect("read")
        .replace("region: sgp-1", "region: sgp-9");
    fs::write(&acme, broken).expect("write");
    let bad = cplane_e2e::commit_all(&state, "break acme");
    wait_for("the refusal", || {
        let (_, body) = http(port, "GET", "/v1/status", &auth, b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["last_run"]["outcome"] == "refused" && v["last_run"]["commit"] == bad.as_str()
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        metric(port, "cplane_reconcile_runs_total{outcome=\"refused\"}"),
        Some(1.0),
        "a refused commit was run again"
    );
    let logged = fs::read_to_string(&log).expect("log");
    let warnings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&bad))
        .collect();
    assert_eq!(warnings.len(), 1, "{logged}");
    assert!(
        warnings[0].contains("region `sgp-9` does not exist"),
        "{}",
        warnings[0]
    );
    assert!(!logged.contains('\u{1b}'), "ANSI codes in a redirected log");

    // The database holds one run row for it (`cplane status` reads it).
    let db = format!("sqlite://{}", dir.join("cplane.db").display());
    let out = cplane_in(
        tmp.path(),
        &[
            "status",
            "--database",
            &db,
            "--runs",
            "100",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows: Vec<&serde_json::Value> = status["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["commit"] == bad.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{status}");
    assert_eq!(rows[0]["outcome"], "refused");

    // The next commit is reconciled again.
    let fixed = fs::read_to_string(&acme)
        .expect("read")
        .replace("region: sgp-9", "region: sgp-1");
    fs::write(&acme, fixed).expect("write");
    let good = cplane_e2e::commit_all(&state, "fix acme");
    wait_for("the fixed commit", || {
        let (_, body) = http(port, "GET", "/v1/status", &auth, b"");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["last_run"]["outcome"] == "converged" && v["last_run"]["commit"] == good.as_str()
    });

    // SIGTERM: a clean exit 0, no panic.
    sigterm(&server.0);
    let code = exit_within(&mut server.0, Duration::from_secs(30));
    let logged = fs::read_to_string(&log).expect("log");
    assert_eq!(code, Some(0), "{logged}");
    assert!(!logged.contains("panicked"), "{logged}");
}

#[test]
fn serve_follows_the_remotes_default_branch_and_names_a_missing_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = cplane_e2e::template_repo();
    // A bare remote whose default branch (HEAD) is `trunk`.
    let remote = tmp.path().join("remote.git");
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    };
    git(&["init", "-q", "--bare", remote.to_str().expect("utf-8")]);
    git(&[
        "-C",
        remote.to_str().expect("utf-8"),
        "symbolic-ref",
        "HEAD",
        "refs/heads/trunk",
    ]);
    git(&[
        "-C",
        seed.path().to_str().expect("utf-8"),
        "push",
        "-q",
        remote.to_str().expect("utf-8"),
        "HEAD:refs/heads/trunk",
    ]);
    let url = format!("file://{}", remote.display());
    let serve = |extra: &[&str], port: u16| {
        Command::new(cplane_e2e::cargo_bin("cplane"))
            .args([
                "serve",
                "--insecure-open-read",
                "--repo-url",
                &url,
                "--poll",
                "1h",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--mirror",
                tmp.path()
                    .join(format!("mirror-{port}.git"))
                    .to_str()
                    .expect("utf-8"),
            ])
            .args([
                "--database",
                &format!(
                    "sqlite://{}",
                    tmp.path().join(format!("{port}.db")).display()
                ),
            ])
            .args(extra)
            .env_remove("CPLANE_BRANCH")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cplane serve")
    };

    let port = cplane_e2e::moto::free_port();
    let _server = Server(serve(&[], port));
    wait_for("/readyz", || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    let (_, body) = http(port, "GET", "/v1/status", &[], b"");
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(v["branch"], "trunk", "{v}");
    assert_eq!(v["last_run"]["outcome"], "converged", "{v}");

    // A branch the remote does not have: one clear error at start, not a loop of errors.
    let mut missing = serve(&["--branch", "main"], cplane_e2e::moto::free_port());
    let code = exit_within(&mut missing, Duration::from_secs(30));
    let mut err = String::new();
    missing
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert_eq!(code, Some(1), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("no branch `main` (it has: trunk)") && errors[0].contains("--branch"),
        "{err}"
    );
}

#[test]
fn a_busy_port_is_one_line_naming_it_and_listen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "up",
            "--dir",
            tmp.path().join("try").to_str().expect("utf-8"),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .output()
        .expect("run cplane up");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: cannot listen on 127.0.0.1:{port}: the port is in use by another process (choose another address with --listen)"
        ),
        "{err}"
    );
}

#[test]
fn init_makes_main_and_every_command_shares_the_repos_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane_in(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = tmp.path().join("state");
    let head = git2::Repository::open(&state).expect("open");
    assert_eq!(
        head.find_reference("HEAD")
            .expect("HEAD")
            .symbolic_target()
            .ok()
            .flatten(),
        Some("refs/heads/main")
    );

    // apply without --database writes state/.cplane/cplane.db, which git ignores.
    let out = cplane_in(&state, &["apply", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(applied["outcome"], "converged", "{applied}");
    assert!(applied["published"]
        .as_array()
        .expect("published")
        .iter()
        .any(|b| b["cluster"] == "w-acme"));
    assert!(state.join(".cplane/cplane.db").exists());
    assert!(!state.join("cplane.db").exists());
    let porcelain = Command::new("git")
        .args([
            "-C",
            state.to_str().expect("utf-8"),
            "status",
            "--porcelain",
        ])
        .output()
        .expect("git status");
    assert_eq!(String::from_utf8_lossy(&porcelain.stdout), "");

    // The token lands in the same database, and only for a cluster that exists.
    let out = cplane_in(
        &state,
        &["cluster", "token", "create", "w-acme", "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(token["cluster"], "w-acme");
    assert!(token["token"].as_str().expect("token").starts_with("cpt_"));
    let out = cplane_in(&state, &["cluster", "token", "create", "w-acmee"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("cluster `w-acmee` is not in the rendered state")
            && text(&out).contains("w-acme"),
        "{}",
        text(&out)
    );

    // cplane status reads it too.
    let out = cplane_in(&state, &["status", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["runs"][0]["outcome"], "converged", "{status}");
    // With the region's Ready condition: every workspace provisioned in sgp-1 is ready.
    let sgp = status["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["id"] == "sgp-1")
        .unwrap_or_else(|| panic!("sgp-1 in {status}"));
    let ready = &sgp["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (&"Ready".into(), &"True".into(), &"WorkspacesReady".into()),
        "{status}"
    );
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("workspaces ready") && !m.starts_with("0 of")),
        "{status}"
    );
    let out = cplane_in(&state, &["status"]);
    assert!(
        text(&out).contains("region sgp-1: Ready=True (WorkspacesReady)"),
        "{}",
        text(&out)
    );
}

#[test]
fn plan_errors_are_json_said_once_and_skipped_cloud_steps_are_not_pending() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let out = cplane_in(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));

    let out = cplane_in(&state, &["plan", "--rev", "nope", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
    let error = v["error"].as_str().expect("error");
    assert_eq!(
        error,
        "revision `nope` does not name a commit (no branch, tag or commit of that name)"
    );
    let out = cplane_in(&state, &["validate", "--rev", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: revision `nope` does not name a commit (no branch, tag or commit of that name)\n"
    );

    // An invalid revision: a JSON object with every error, exit 2.
    let acme = state.join("workspaces/acme.yaml");
    let broken = fs::read_to_string(&acme)
        .expect("read")
        .replace("region: sgp-1", "region: sgp-9");
    fs::write(&acme, broken).expect("write");
    cplane_e2e::commit_all(&state, "break");
    let out = cplane_in(&state, &["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["outcome"], "refused");
    assert!(
        v["errors"][0]
            .as_str()
            .expect("error")
            .starts_with("workspaces/acme.yaml:"),
        "{v}"
    );
    let out = cplane_in(&state, &["plan", "--format", "json", "--rev", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Without a cloud, after an apply, the plan is empty: the cloud steps are skipped.
    let out = cplane_in(&state, &["apply", "--rev", "HEAD~1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = cplane_in(&state, &["plan", "--rev", "HEAD~1"]);
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        plan.contains("No changes. The database matches the revision."),
        "{plan}"
    );
    assert!(
        plan.contains("cloud step(s) of 3 workspace(s) skipped: --cloud none"),
        "{plan}"
    );
    assert!(!plan.contains("+ route53"), "{plan}");
    let out = cplane_in(&state, &["plan", "--rev", "HEAD~1", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v["skipped"].as_array().expect("skipped").len(),
        v["plan"]["steps"].as_array().expect("steps").len(),
        "{v}"
    );
}

#[test]
fn colour_only_when_asked_or_on_a_terminal_and_json_logs_for_machines() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane_in(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = tmp.path().join("state");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(cplane_e2e::cargo_bin("cplane"));
        c.args(args)
            .current_dir(&state)
            .env("CPLANE_LOG", "debug")
            .env_remove("NO_COLOR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run cplane")
    };
    let piped = run(&["plan"], &[]);
    let logs = String::from_utf8_lossy(&piped.stderr).into_owned();
    assert!(!logs.is_empty(), "no logs to look at");
    assert!(!logs.contains('\u{1b}'), "{logs}");
    let always = run(&["--color", "always", "plan"], &[]);
    assert!(String::from_utf8_lossy(&always.stderr).contains("\u{1b}["));
    let env_never = run(&["plan"], &[("CPLANE_COLOR", "never")]);
    assert!(!String::from_utf8_lossy(&env_never.stderr).contains('\u{1b}'));
    let json = run(&["plan", "--log-format", "json"], &[]);
    let logs = String::from_utf8_lossy(&json.stderr).into_owned();
    let log_lines: Vec<&str> = logs.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!log_lines.is_empty(), "{logs}");
    for line in log_lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(v["level"].is_string(), "{line}");
    }

    let help = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for code in [
        "0  done",
        "1  error",
        "2  refused or invalid input",
        "3  held for confirmation",
        "4  converging",
    ] {
        assert!(help.contains(code), "{help}");
    }
}

#[test]
fn apply_every_counts_failed_runs_and_exits_with_the_last_ones_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = cplane_in(tmp.path(), &["init", "state"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = tmp.path().join("state");
    // A database that refuses connections: every run fails before it starts.
    let log = tmp.path().join("every.log");
    let mut child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "apply",
            "--every",
            "1s",
            "--database",
            "postgres://127.0.0.1:1/none",
        ])
        .current_dir(&state)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start cplane apply --every");
    wait_for("two runs", || {
        fs::read_to_string(&log).is_ok_and(|l| l.contains("run 2: exit 1 (2 of 2 runs failed)"))
    });
    sigterm(&child);
    let code = exit_within(&mut child, Duration::from_secs(30));
    let logged = fs::read_to_string(&log).expect("log");
    assert_eq!(code, Some(1), "{logged}");
    assert!(logged.contains("failed); the last exited 1"), "{logged}");
}
