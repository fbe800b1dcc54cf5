//! `cplane serve` end to end, as users drive it: `git push` to a bare remote, a signed
//! webhook, and the change reconciled into the database, lookup and status.

use std::io::Read as _;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cplane_e2e::http::Request;
use cplane_e2e::serve::{http, push, remote_and_work, wait_for, webhook, SECRET};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn push_and_webhook_are_reconciled_and_bad_commits_refused() {
    let s = start();
    let (port, work, branch) = (s.port, s.work.clone(), s.branch.clone());
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    let (status, body) = http(port, "GET", "/lookup/w-acme", &[], b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"region": "sgp-1", "bff_url": "https://bff.w-acme.sgp-1.cogrion.com"})
    );
    let (_, body) = http(port, "GET", "/v1/workspaces/acme", &[], b"");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["spec"]["region"], "sgp-1");
    assert!(
        v["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Ready"),
        "{v}"
    );
    // Regions carry their Ready condition: all of sgp-1's workspaces are ready.
    let (_, body) = http(port, "GET", "/v1/regions", &[], b"");
    let regions: serde_json::Value = serde_json::from_str(&body).expect("json");
    let sgp = regions
        .as_array()
        .expect("regions")
        .iter()
        .find(|r| r["id"] == "sgp-1")
        .unwrap_or_else(|| panic!("sgp-1 in {regions}"));
    let ready = &sgp["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"]),
        (&"Ready".into(), &"True".into()),
        "{regions}"
    );
    assert_eq!(http(port, "GET", "/lookup/w-umbrella", &[], b"").0, 404);
    let (_, body) = http(port, "GET", "/v1/clusters", &[], b"");
    let clusters: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(clusters.as_array().map(Vec::len), Some(5), "{clusters}");
    assert!(
        clusters[0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{clusters}"
    );

    // An engineer adds a workspace and pushes; the push webhook triggers a reconcile at once.
    let acme = std::fs::read_to_string(work.join("workspaces/acme.yaml")).expect("read");
    let umbrella = acme
        .replace("name: acme\n", "name: umbrella\n")
        .replace("account: acme-corp", "account: umbrella");
    std::fs::write(work.join("workspaces/umbrella.yaml"), umbrella).expect("write");
    cplane_e2e::commit_all(&work, "add umbrella");
    push(&work, &branch);
    let (status, body) = webhook(port, &branch, "delivery-1");
    assert_eq!(status, 202, "{body}");
    wait_for("w-umbrella in the lookup", || {
        http(port, "GET", "/lookup/w-umbrella", &[], b"").0 == 200
    });

    // A broken commit is refused whole; the last good revision stays in force.
    let text = std::fs::read_to_string(work.join("workspaces/umbrella.yaml")).expect("read");
    std::fs::write(
        work.join("workspaces/umbrella.yaml"),
        text.replace("region: sgp-1", "region: sgp-9"),
    )
    .expect("write");
    std::fs::remove_file(work.join("workspaces/globex.yaml")).expect("rm");
    let bad = cplane_e2e::commit_all(&work, "break umbrella");
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "delivery-2").0, 202);
    wait_for("the refusal", || {
        let (_, body) = http(port, "GET", "/v1/status", &[], b"");
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
            v["last_run"]["commit"] == bad.as_str() && v["last_run"]["outcome"] == "refused"
        })
    });
    let (_, body) = http(port, "GET", "/v1/status", &[], b"");
    assert!(
        body.contains("workspaces/umbrella.yaml:9:11: spec.region: region `sgp-9` does not exist"),
        "{body}"
    );
    assert_eq!(
        http(port, "GET", "/lookup/w-globex", &[], b"").0,
        200,
        "globex's removal was not applied"
    );

    // Unsigned deliveries are refused; metrics count what happened.
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/webhooks/git",
            &[],
            br#"{"ref":"refs/heads/x"}"#
        )
        .0,
        401
    );
    let (_, metrics) = http(port, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("cplane_webhook_deliveries_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cplane_reconcile_runs_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cplane_reconcile_duration_seconds_count 3"),
        "{metrics}"
    );

    // SIGTERM stops it gracefully.
    let mut server = s._server;
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn up_creates_a_state_repo_and_reconciles_plain_commits_by_file_watch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("try");
    let port = cplane_e2e::moto::free_port();
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "up",
            "--dir",
            dir.to_str().expect("utf-8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane up");
    let _server = Server(child);
    wait_for("/readyz", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    assert!(dir.join("state/workspaces/acme.yaml").exists());
    assert!(dir.join("cplane.db").exists());
    assert_eq!(http(port, "GET", "/lookup/w-acme", &[], b"").0, 200);

    // A plain `git commit` in the state repo is picked up by the file watch (the poll is 3 min).
    let state = dir.join("state");
    let acme = std::fs::read_to_string(state.join("workspaces/acme.yaml")).expect("read");
    std::fs::write(
        state.join("workspaces/hooli.yaml"),
        acme.replace("name: acme\n", "name: hooli\n"),
    )
    .expect("write");
    cplane_e2e::commit_all(&state, "add hooli");
    wait_for("w-hooli reconciled after a local commit", || {
        http(port, "GET", "/lookup/w-hooli", &[], b"").0 == 200
    });
}

/// A running `cplane serve` on a bare remote seeded with the template, and a working clone.
struct Setup {
    _tmp: tempfile::TempDir,
    _server: Server,
    port: u16,
    work: std::path::PathBuf,
    branch: String,
    db: String,
}

fn start() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (remote, work, branch) = remote_and_work(tmp.path());
    let port = cplane_e2e::moto::free_port();
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "serve",
            "--insecure-open-read",
            "--repo-url",
            &format!("file://{}", remote.display()),
            "--branch",
            &branch,
        ])
        .args([
            "--mirror",
            tmp.path().join("mirror.git").to_str().expect("utf-8"),
            "--database",
            &db,
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll",
            "1h",
            "--webhook-secret",
            SECRET,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    let server = Server(child);
    wait_for("/readyz", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    Setup {
        _tmp: tmp,
        _server: server,
        port,
        work,
        branch,
        db,
    }
}

fn token(db: &str, cluster: &str) -> String {
    token_with(db, cluster, &[])
}

fn token_with(db: &str, cluster: &str, args: &[&str]) -> String {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", cluster, "--database", db])
        .args(args)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn header_value(raw_headers: &str, name: &str) -> Option<String> {
    raw_headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// `GET path` like `http`, returning the head (status line and headers, as text) too.
fn http_full(port: u16, path: &str, headers: &[(&str, String)]) -> (u16, String, String) {
    let r = Request::get(port, path)
        .headers(headers)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status, r.head(), r.text())
}

#[test]
fn agent_bundle_protocol_with_cluster_tokens_and_bff_endpoints() {
    let s = start();
    let acme = token(&s.db, "w-acme");
    let globex = token(&s.db, "w-globex");
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));

    // Tokens are per cluster.
    assert_eq!(http_full(s.port, "/v1/clusters/w-acme/bundle", &[]).0, 401);
    assert_eq!(
        http_full(
            s.port,
            "/v1/clusters/w-acme/bundle",
            &[bearer("cpt_forged")]
        )
        .0,
        401
    );
    assert_eq!(
        http_full(s.port, "/v1/clusters/w-acme/bundle", &[bearer(&globex)]).0,
        403
    );
    let (status, head, body) = http_full(s.port, "/v1/clusters/w-acme/bundle", &[bearer(&acme)]);
    assert_eq!(status, 200, "{head}");
    let etag = header_value(&head, "etag").expect("etag");
    use sha2::Digest;
    assert_eq!(
        etag,
        format!(
            "\"sha256:{}\"",
            hex::encode(sha2::Sha256::digest(body.as_bytes()))
        ),
        "the digest is the body's"
    );
    assert!(body
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    assert_eq!(
        header_value(&head, "x-cplane-generation").as_deref(),
        Some("1")
    );
    // Agents that accept gzip get the stored compressed bytes; they inflate to the same body.
    let gz = Request::get(s.port, "/v1/clusters/w-acme/bundle")
        .bearer(&acme)
        .header("Accept-Encoding", "br, gzip;q=0.8")
        .send()
        .expect("GET bundle, gzip");
    assert_eq!(gz.header("content-encoding"), Some("gzip"), "{gz:?}");
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut inflated)
        .expect("gzip body");
    assert_eq!(inflated, body);
    assert_eq!(
        http_full(
            s.port,
            "/v1/clusters/w-acme/bundle",
            &[bearer(&acme), ("If-None-Match", etag.clone())]
        )
        .0,
        304
    );

    // A parked long-poll is counted while it waits, and let go when its agent goes away (the
    // server keeps reading the connection while the request is in flight).
    let long_polls = |port: u16| {
        http(port, "GET", "/metrics", &[], b"")
            .1
            .lines()
            .find_map(|l| l.strip_prefix("cplane_bundle_long_polls "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("cplane_bundle_long_polls gauge")
    };
    assert_eq!(long_polls(s.port), 0);
    let gone = Request::get(s.port, "/v1/clusters/w-acme/bundle?wait=30")
        .bearer(&acme)
        .header("If-None-Match", etag.clone())
        .start();
    wait_for("the long-poll to be parked", || long_polls(s.port) == 1);
    drop(gone); // closes the connection with the request in flight
    wait_for("the abandoned long-poll to be let go", || {
        long_polls(s.port) == 0
    });

    // Long-poll: answered as soon as a pushed change alters the bundle.
    let port = s.port;
    let (acme2, etag2) = (acme.clone(), etag.clone());
    let poll = std::thread::spawn(move || {
        let t = Instant::now();
        let r = http_full(
            port,
            "/v1/clusters/w-acme/bundle?wait=30",
            &[
                ("Authorization", format!("Bearer {acme2}")),
                ("If-None-Match", etag2),
            ],
        );
        (r, t.elapsed())
    });
    wait_for("the long-poll to be parked", || long_polls(s.port) == 1);
    let file = s.work.join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("replicas: 3", "replicas: 4")).expect("write");
    cplane_e2e::commit_all(&s.work, "acme: 4 bff replicas");
    push(&s.work, &s.branch);
    assert_eq!(webhook(s.port, &s.branch, "bundle-1").0, 202);
    let ((status, head, body), waited) = poll.join().expect("poll");
    assert_eq!(status, 200, "{head}");
    assert!(
        waited < Duration::from_secs(25),
        "answered on change, not at the deadline"
    );
    assert_ne!(header_value(&head, "etag"), Some(etag));
    assert_eq!(
        header_value(&head, "x-cplane-generation").as_deref(),
        Some("2")
    );
    assert!(body.contains("\"replicas\":4"), "the new bundle");
    assert_eq!(long_polls(s.port), 0, "answered polls are not counted");

    // BFF endpoints, with the workspace BFF's own token (an agent token gets 403 there).
    let acme_bff = token_with(&s.db, "w-acme", &["--scope", "bff"]);
    assert_eq!(
        http(
            s.port,
            "GET",
            "/api/workspaces/acme/config",
            &[bearer(&acme)],
            b""
        )
        .0,
        403
    );
    let (status, body) = http(
        s.port,
        "GET",
        "/api/workspaces/acme/config",
        &[bearer(&acme_bff)],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(cfg["domains"]["bff"], "bff.w-acme.sgp-1.cogrion.com");
    assert_eq!(
        cfg["auth"]["issuer"],
        "https://auth.sgp-1.cogrion.com/realms/cogrion"
    );
    assert_eq!(
        http(
            s.port,
            "GET",
            "/api/workspaces/acme/config",
            &[bearer(&globex)],
            b""
        )
        .0,
        403
    );
    let reg = br#"{"bff_url":"https://bff.w-acme.sgp-1.cogrion.com","public_ip":"203.0.113.7"}"#;
    let json = ("Content-Type", "application/json".to_owned());
    assert_eq!(
        http(
            s.port,
            "POST",
            "/api/workspaces/acme/register",
            &[bearer(&acme_bff), json.clone()],
            reg
        )
        .0,
        200
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/api/workspaces/acme/register",
            &[bearer(&acme_bff), json.clone()],
            br#"{"bff_url":"http://x","public_ip":"203.0.113.7"}"#
        )
        .0,
        400
    );
    let (_, body) = http(
        s.port,
        "GET",
        "/api/workspaces/w-acme/config",
        &[bearer(&acme_bff)],
        b"",
    );
    assert!(
        body.contains("\"registered_url\":\"https://bff.w-acme.sgp-1.cogrion.com\""),
        "{body}"
    );

    // The agent reports what it applied; a stale report shows as out of sync.
    let new_digest = header_value(&head, "etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    let report = format!(
        r#"{{"digest":"{new_digest}","generation":2,"healthy":true,"message":"applied 15 objects","objects":[{{"kind":"Deployment","namespace":"bff","name":"bff","result":"configured","health":"Healthy"}}]}}"#
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/clusters/w-acme/status",
            &[bearer(&acme), json.clone()],
            report.as_bytes()
        )
        .0,
        204
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/clusters/w-acme/status",
            &[bearer(&globex), json.clone()],
            report.as_bytes()
        )
        .0,
        403
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/clusters/w-acme/status",
            &[bearer(&acme), json.clone()],
            br#"{"digest":"md5:1","generation":1,"healthy":true}"#
        )
        .0,
        422
    );
    let (status, body) = http(s.port, "GET", "/v1/clusters/w-acme/status", &[], b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["in_sync"], true, "{v}");
    assert_eq!(v["reported"]["report"]["objects"][0]["name"], "bff");

    // Revoked tokens stop working (SQLite: within a second; the server caches verified tokens
    // and looks for revocations every second).
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "revoke", "w-acme", "--database", &s.db])
        .output()
        .expect("revoke");
    // Every scope's: the agent's token and the BFF's.
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 2 token(s)"));
    let revoked = Instant::now();
    wait_for("the revoked token to be refused", || {
        http_full(s.port, "/v1/clusters/w-acme/bundle", &[bearer(&acme)]).0 == 401
    });
    assert!(
        revoked.elapsed() < Duration::from_secs(3),
        "within a second or so"
    );
}

/// One sample of an exposition: (series name, labels, value).
type Sample = (String, Vec<(String, String)>, f64);

/// One family of a Prometheus text exposition: its type, help and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

/// Parses the Prometheus text format (version 0.0.4) strictly enough to catch a broken page:
/// every family has exactly one `# HELP` then one `# TYPE`, every sample belongs to the family
/// declared last under a name its type allows, labels are `name="value"` pairs and values
/// numbers.
fn parse_exposition(text: &str) -> std::collections::BTreeMap<String, Family> {
    let mut families = std::collections::BTreeMap::<String, Family>::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.trim().is_empty(), "empty help: {line}");
            assert!(
                !families.contains_key(name),
                "family {name} declared twice:\n{text}"
            );
            families.insert(
                name.to_owned(),
                Family {
                    help: help.to_owned(),
                    ..Family::default()
                },
            );
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name type");
            assert_eq!(current.as_deref(), Some(name), "TYPE without HELP: {line}");
            let family = families.get_mut(name).expect("declared");
            assert!(family.kind.is_empty(), "two TYPE lines for {name}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}: {line}"
            );
            family.kind = kind.to_owned();
        } else if line.starts_with('#') || line.is_empty() {
            panic!("unexpected line {line:?}");
        } else {
            let family_name = current.clone().expect("a sample before any family");
            let family = families.get_mut(&family_name).expect("declared");
            let (series, rest) = match line.find('{') {
                Some(i) => (&line[..i], &line[i..]),
                None => line.split_once(' ').map(|(n, _)| (n, "")).expect("sample"),
            };
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once("} ").expect("labels end");
                let labels = labels
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label k=v");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted label value");
                        (k.to_owned(), v.to_owned())
                    })
                    .collect();
                (labels, value)
            } else {
                (Vec::new(), line.split_once(' ').expect("value").1)
            };
            let allowed: Vec<String> = match family.kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{family_name}{s}"))
                    .collect(),
                _ => vec![family_name.clone()],
            };
            assert!(
                allowed.iter().any(|a| a == series),
                "sample {series} under family {family_name}:\n{text}"
            );
            let value: f64 = value.trim().parse().expect("numeric sample value");
            family.samples.push((series.to_owned(), labels, value));
        }
    }
    for (name, family) in &families {
        assert!(!family.kind.is_empty(), "{name} has no TYPE");
        if family.kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
    }
    families
}

#[test]
fn metrics_page_is_one_exposition_of_typed_families_with_a_duration_histogram() {
    let s = start();
    let (port, work, branch) = (s.port, s.work.clone(), s.branch.clone());
    // Several runs: the first (full) one and one per pushed commit.
    let runs = |port: u16| -> f64 {
        let (_, page) = http(port, "GET", "/metrics", &[], b"");
        page.lines()
            .filter(|l| l.starts_with("cplane_reconcile_runs_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_for("the first run", || runs(port) >= 1.0);
    for i in 0..3 {
        std::fs::write(work.join(format!("note-{i}.txt")), "x\n").expect("write");
        cplane_e2e::commit_all(&work, &format!("note {i}"));
        push(&work, &branch);
        assert_eq!(webhook(port, &branch, &format!("d-{i}")).0, 202);
        wait_for("the pushed commit's run", || runs(port) >= f64::from(i + 2));
    }
    // One API write that is turned away (no token, or a broken body) is counted too.
    let (status, _) = http(port, "PUT", "/v1/workspaces/acme", &[], b"{");
    assert!(status == 400 || status == 401, "{status}");
    let (head, page) = {
        let (status, head, body) = http_full(port, "/metrics", &[]);
        assert_eq!(status, 200, "{body}");
        (head, body)
    };
    assert_eq!(
        header_value(&head, "content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let families = parse_exposition(&page);
    for (name, kind) in [
        ("cplane_reconcile_runs_total", "counter"),
        ("cplane_reconcile_duration_seconds", "histogram"),
        ("cplane_state_fetches_total", "counter"),
        ("cplane_reconcile_queue_depth", "gauge"),
        ("cplane_reconcile_leader", "gauge"),
        ("cplane_bundle_long_polls", "gauge"),
        ("cplane_webhook_deliveries_total", "counter"),
        ("cplane_api_commits_total", "counter"),
    ] {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing:\n{page}"));
        assert_eq!(family.kind, kind, "{name}");
    }
    let value = |name: &str| -> f64 {
        let f = &families[name];
        assert_eq!(f.samples.len(), 1, "{name}: {:?}", f.samples);
        f.samples[0].2
    };
    assert_eq!(
        families["cplane_reconcile_runs_total"].help,
        "Reconcile runs by outcome."
    );
    assert_eq!(value("cplane_webhook_deliveries_total"), 3.0);
    assert_eq!(value("cplane_reconcile_leader"), 1.0);
    assert_eq!(value("cplane_bundle_long_polls"), 0.0);
    assert!(value("cplane_state_fetches_total") >= 4.0, "{page}");
    let runs: f64 = families["cplane_reconcile_runs_total"]
        .samples
        .iter()
        .inspect(|(_, labels, _)| {
            assert_eq!(labels.len(), 1);
            assert_eq!(labels[0].0, "outcome");
        })
        .map(|(_, _, v)| v)
        .sum();
    assert_eq!(runs, 4.0, "{page}");
    assert_eq!(
        families["cplane_api_commits_total"].samples.len(),
        1,
        "{page}"
    );

    // The durations are a histogram of fixed buckets: cumulative, ending in +Inf = _count.
    let histogram = &families["cplane_reconcile_duration_seconds"];
    let buckets: Vec<(&str, f64)> = histogram
        .samples
        .iter()
        .filter(|(n, _, _)| n.ends_with("_bucket"))
        .map(|(_, labels, v)| {
            assert_eq!(labels.len(), 1);
            assert_eq!(labels[0].0, "le");
            (labels[0].1.as_str(), *v)
        })
        .collect();
    assert_eq!(
        buckets.iter().map(|(le, _)| *le).collect::<Vec<_>>(),
        ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf"],
        "{page}"
    );
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{page}");
    let series = |suffix: &str| {
        histogram
            .samples
            .iter()
            .find(|(n, _, _)| n.ends_with(suffix))
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {suffix}:\n{page}"))
    };
    assert_eq!(series("_count"), 4.0, "{page}");
    assert_eq!(buckets.last().map(|b| b.1), Some(4.0));
    assert!(series("_sum") > 0.0, "{page}");
}
