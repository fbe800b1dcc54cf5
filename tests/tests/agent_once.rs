//! `cplane-agent --once` and `--dry-run`, the real binary, against a bundle server on 127.0.0.1
//! (the agent protocol: ETag / If-None-Match, status reports checked like the real server
//! checks them) and the fake Kubernetes API server on 127.0.0.1: exit codes, status reports
//! (also when the whole apply fails), and a dry run that writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use cplane_agent::bundle::digest_of;
use cplane_e2e::kube_apiserver::{ApiServer, Served};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

const TOKEN: &str = "cpt_once_test_token";
const CLUSTER: &str = "w-acme";

/// What the bundle server publishes and what it was told.
#[derive(Default)]
struct State {
    body: Vec<u8>,
    generation: i64,
    /// Serve a body that does not hash to the ETag.
    tamper: bool,
    /// Every status report accepted.
    statuses: Vec<Value>,
    /// Every request, as `METHOD path?query`.
    requests: Vec<String>,
}

#[derive(Clone, Default)]
struct Bundles(Arc<Mutex<State>>);

impl Bundles {
    fn publish(&self, objects: &[Value], generation: i64) -> String {
        let body: String = objects.iter().map(|o| format!("{o}\n")).collect();
        let mut s = self.0.lock().expect("state");
        s.body = body.into_bytes();
        s.generation = generation;
        digest_of(&s.body)
    }

    fn statuses(&self) -> Vec<Value> {
        self.0.lock().expect("state").statuses.clone()
    }

    fn requests(&self) -> Vec<String> {
        self.0.lock().expect("state").requests.clone()
    }
}

/// The checks of the server's `report_status` (reconciler/src/serve.rs, `ClusterReport` with
/// `deny_unknown_fields`): `None` when accepted, else why not.
fn refuse_report(v: &Value) -> Option<String> {
    let Some(m) = v.as_object() else {
        return Some("not an object".into());
    };
    for k in m.keys() {
        if !["digest", "generation", "healthy", "message", "objects"].contains(&k.as_str()) {
            return Some(format!("unknown field {k}"));
        }
    }
    let hex = m
        .get("digest")
        .and_then(Value::as_str)
        .and_then(|d| d.strip_prefix("sha256:"))
        .unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("digest must be sha256:<64 hex>".into());
    }
    if !m.get("generation").is_some_and(Value::is_i64)
        || !m.get("healthy").is_some_and(Value::is_boolean)
    {
        return Some("generation and healthy are required".into());
    }
    if m.get("message").is_some_and(|v| !v.is_string())
        || m.get("objects").is_some_and(|v| !v.is_array())
    {
        return Some("message is a string, objects a list".into());
    }
    None
}

async fn handle(
    bundles: Bundles,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    let line = format!(
        "{} {}{}",
        req.method(),
        path,
        req.uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    );
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let if_none_match = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let method = req.method().clone();
    let body = req.into_body().collect().await?.to_bytes();
    let mut s = bundles.0.lock().expect("state");
    s.requests.push(line);
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    if !authorized {
        return Ok(reply(401, b"unauthorized".to_vec()));
    }
    if method == hyper::Method::GET && path == format!("/v1/clusters/{CLUSTER}/bundle") {
        let digest = digest_of(&s.body);
        if if_none_match.as_deref() == Some(digest.as_str()) {
            return Ok(hyper::Response::builder()
                .status(304)
                .header("etag", format!("\"{digest}\""))
                .body(Full::new(Bytes::new()))
                .expect("response"));
        }
        let mut body = s.body.clone();
        if s.tamper {
            body.extend_from_slice(b"{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"evil\"}}\n");
        }
        return Ok(hyper::Response::builder()
            .status(200)
            .header("etag", format!("\"{digest}\""))
            .header("x-cplane-generation", s.generation.to_string())
            .body(Full::new(Bytes::from(body)))
            .expect("response"));
    }
    if method == hyper::Method::POST && path == format!("/v1/clusters/{CLUSTER}/status") {
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return Ok(reply(422, b"not JSON".to_vec()));
        };
        if let Some(why) = refuse_report(&v) {
            return Ok(reply(422, why.into_bytes()));
        }
        s.statuses.push(v);
        return Ok(reply(204, Vec::new()));
    }
    Ok(reply(404, b"not found".to_vec()))
}

/// Serves `bundles` on 127.0.0.1; returns its URL.
async fn serve_bundles(bundles: Bundles) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let bundles = bundles.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(bundles.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// The bundle server, the fake API server (both on 127.0.0.1) and the agent's files.
struct World {
    rt: tokio::runtime::Runtime,
    bundles: Bundles,
    server_url: String,
    kube: ApiServer,
    served: Served,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl World {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let bundles = Bundles::default();
        let server_url = rt.block_on(serve_bundles(bundles.clone()));
        let kube = ApiServer::new();
        let served = rt.block_on(kube.serve()).expect("serve");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, served.kubeconfig()).expect("write");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write");
        Self {
            rt,
            bundles,
            server_url,
            kube,
            served,
            dir,
            kubeconfig,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `cplane-agent` with `flags`, against `kubeconfig`.
    fn agent_with(&self, kubeconfig: &Path, flags: &[&str]) -> Output {
        let out = Command::new(cplane_e2e::cargo_bin("cplane-agent"))
            .args(flags)
            .env("CPLANE_AGENT_SERVER", &self.server_url)
            .env("CPLANE_AGENT_CLUSTER", CLUSTER)
            .env("CPLANE_AGENT_TOKEN_FILE", self.dir.path().join("token"))
            .env("CPLANE_AGENT_STATE_DIR", self.state_dir())
            .env("CPLANE_AGENT_KUBECONFIG", kubeconfig)
            .env("CPLANE_AGENT_CRD_TIMEOUT", "5s")
            .env_remove("CPLANE_LOG")
            .env_remove("RUST_LOG")
            .output()
            .expect("run cplane-agent");
        let _ = &self.rt;
        out
    }

    fn agent(&self, flags: &[&str]) -> Output {
        self.agent_with(&self.kubeconfig, flags)
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ns(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn cm(ns: &str, name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"key": value}})
}

#[test]
fn once_applies_reports_and_exits_0() {
    let w = World::new();
    let digest = w.bundles.publish(&[ns("shop"), cm("shop", "cfg", "1")], 3);
    let out = Command::new(cplane_e2e::cargo_bin("cplane-agent"))
        .args(["--once"])
        .env("CPLANE_AGENT_SERVER", &w.server_url)
        .env("CPLANE_AGENT_CLUSTER", CLUSTER)
        .env("CPLANE_AGENT_TOKEN_FILE", w.dir.path().join("token"))
        .env("CPLANE_AGENT_STATE_DIR", w.state_dir())
        .env("CPLANE_AGENT_KUBECONFIG", &w.kubeconfig)
        // CPLANE_LOG is the filter; RUST_LOG only a fallback.
        .env("CPLANE_LOG", "cplane_agent=debug")
        .env("RUST_LOG", "off")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(text.contains(&digest), "{text}");
    assert!(
        text.contains("created    ConfigMap shop/cfg Healthy"),
        "{text}"
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("DEBUG"),
        "CPLANE_LOG=debug was not used: {logs}"
    );
    let cfg = w
        .kube
        .object("v1", "ConfigMap", Some("shop"), "cfg")
        .expect("applied");
    assert_eq!(cfg["data"]["key"], "1");
    // One poll, without waiting; one status report.
    let requests = w.bundles.requests();
    assert_eq!(
        requests,
        vec![
            format!("GET /v1/clusters/{CLUSTER}/bundle?wait=0"),
            format!("POST /v1/clusters/{CLUSTER}/status"),
        ]
    );
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["digest"], digest.as_str());
    assert_eq!(statuses[0]["generation"], 3);
    assert_eq!(statuses[0]["healthy"], true);
    assert_eq!(statuses[0]["objects"].as_array().map(Vec::len), Some(2));

    // Again: the server answers 304 for the stored bundle, which is applied (unchanged).
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("unchanged  ConfigMap shop/cfg"),
        "{}",
        explain(&out)
    );
    assert_eq!(w.bundles.statuses().len(), 2);
}

#[test]
fn once_with_a_failing_object_exits_1_and_reports_it() {
    let w = World::new();
    // The Namespace `nowhere` neither exists nor is in the bundle: the API server says 404.
    w.bundles.publish(
        &[ns("shop"), cm("shop", "cfg", "1"), cm("nowhere", "x", "1")],
        1,
    );
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains("failed     ConfigMap nowhere/x"),
        "{}",
        explain(&out)
    );
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["healthy"], false);
    let failed: Vec<&Value> = statuses[0]["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["result"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{statuses:#?}");
    assert_eq!(failed[0]["name"], "x");
    assert!(
        failed[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{statuses:#?}"
    );
    // The other objects were applied all the same.
    assert!(w
        .kube
        .object("v1", "ConfigMap", Some("shop"), "cfg")
        .is_some());
}

#[test]
fn a_whole_apply_failure_is_reported_as_failed() {
    let w = World::new();
    let digest = w.bundles.publish(&[ns("shop"), cm("shop", "cfg", "1")], 2);

    // The Kubernetes API server is down: discovery fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let down = w.dir.path().join("down.kubeconfig");
    std::fs::write(
        &down,
        std::fs::read_to_string(&w.kubeconfig)
            .expect("read")
            .replace(w.served.url.as_str(), &format!("http://127.0.0.1:{port}")),
    )
    .expect("write");
    let out = w.agent_with(&down, &["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(stdout(&out).contains("apply failed"), "{}", explain(&out));
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 1, "{}", explain(&out));
    assert_eq!(statuses[0]["digest"], digest.as_str());
    assert_eq!(statuses[0]["generation"], 2);
    assert_eq!(statuses[0]["healthy"], false);
    assert_eq!(statuses[0]["objects"], json!([]));
    let message = statuses[0]["message"].as_str().expect("message");
    assert!(
        message.starts_with("apply failed: Kubernetes API discovery"),
        "{message}"
    );

    // A kubeconfig that is not one: a configuration error (2), reported all the same.
    let bad = w.dir.path().join("bad.kubeconfig");
    std::fs::write(&bad, "this: [is not a kubeconfig").expect("write");
    let out = w.agent_with(&bad, &["--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 2, "{}", explain(&out));
    assert_eq!(statuses[1]["healthy"], false);
    assert!(
        statuses[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Kubernetes configuration") && m.contains("bad.kubeconfig")),
        "{statuses:#?}"
    );

    // A bundle that does not hash to its digest: refused, nothing applied, reported.
    let digest = w.bundles.publish(&[ns("shop"), cm("shop", "cfg", "2")], 3);
    w.bundles.0.lock().expect("state").tamper = true;
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 3, "{}", explain(&out));
    assert_eq!(statuses[2]["digest"], digest.as_str());
    assert_eq!(statuses[2]["generation"], 3);
    assert_eq!(statuses[2]["healthy"], false);
    assert!(
        statuses[2]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bundle refused") && m.contains("digest mismatch")),
        "{statuses:#?}"
    );
    assert!(w.kube.object("v1", "Namespace", None, "shop").is_none());
    assert!(w.kube.object("v1", "Namespace", None, "evil").is_none());
}

#[test]
fn dry_run_prints_the_changes_and_writes_nothing() {
    let w = World::new();
    let first = w.bundles.publish(
        &[ns("shop"), cm("shop", "cfg", "1"), cm("shop", "old", "1")],
        1,
    );
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    // The next generation: cfg changes, old leaves, new and a new Namespace with an object come.
    w.bundles.publish(
        &[
            ns("shop"),
            cm("shop", "cfg", "2"),
            cm("shop", "new", "1"),
            ns("pay"),
            cm("pay", "p", "1"),
        ],
        2,
    );
    let objects_before = w.kube.inventory();
    let inventory_before = w
        .kube
        .object("v1", "ConfigMap", Some("cplane-system"), "cplane-inventory")
        .expect("inventory");
    let stored_before = std::fs::read(w.state_dir().join("bundle.jsonl")).expect("stored");
    w.kube.clear_requests();
    let out = w.agent(&["--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "changes pending: {}",
        explain(&out)
    );
    let text = stdout(&out);
    for line in [
        "  unchanged Namespace shop\n",
        "  change    ConfigMap shop/cfg: data.key\n",
        "  create    ConfigMap shop/new\n",
        "  create    Namespace pay\n",
        "  create    ConfigMap pay/p (its Namespace is created by this bundle: not checked by the API server)\n",
        "  prune     ConfigMap shop/old\n",
        "3 to create, 1 to change, 1 unchanged, 1 to prune, 0 errors; nothing was written\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{}", explain(&out));
    }

    // Nothing was written: objects, inventory, stored bundle, status reports.
    assert_eq!(w.kube.inventory(), objects_before);
    assert_eq!(
        w.kube
            .object("v1", "ConfigMap", Some("cplane-system"), "cplane-inventory")
            .expect("inventory"),
        inventory_before
    );
    assert_eq!(
        w.kube
            .object("v1", "ConfigMap", Some("shop"), "cfg")
            .expect("cfg")["data"]["key"],
        "1"
    );
    assert_eq!(
        std::fs::read(w.state_dir().join("bundle.jsonl")).expect("stored"),
        stored_before
    );
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 1, "only the first --once reported");
    assert_eq!(statuses[0]["digest"], first.as_str());
    // The API server was asked to check every write, and did none.
    let writes: Vec<String> = w
        .kube
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET "))
        .collect();
    assert!(!writes.is_empty());
    for r in &writes {
        assert!(
            r.starts_with("DELETE ") || r.contains("dryRun=All"),
            "a write that is not a dry run: {r}"
        );
    }
    assert!(
        writes
            .iter()
            .any(|r| r.starts_with("DELETE /api/v1/namespaces/shop/configmaps/old")),
        "{writes:#?}"
    );
    assert!(w
        .kube
        .object("v1", "ConfigMap", Some("shop"), "old")
        .is_some());

    // Applied for real, the dry run has nothing more to say: exit 0.
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(w
        .kube
        .object("v1", "ConfigMap", Some("shop"), "old")
        .is_none());
    let out = w.agent(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("0 to create, 0 to change, 5 unchanged, 0 to prune, 0 errors"),
        "{}",
        explain(&out)
    );
}

#[test]
fn dry_run_with_an_object_the_server_refuses_exits_1() {
    let w = World::new();
    w.bundles.publish(&[ns("shop"), cm("nowhere", "x", "1")], 1);
    let out = w.agent(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains("  error     ConfigMap nowhere/x"),
        "{}",
        explain(&out)
    );
    assert!(w.kube.object("v1", "Namespace", None, "shop").is_none());
    assert!(w.bundles.statuses().is_empty());
    assert!(!w.state_dir().join("bundle.jsonl").exists());
}

#[test]
fn once_with_objects_not_healthy_yet_exits_3() {
    let w = World::new();
    // The fake runs no controllers: a Deployment never becomes Available.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}});
    w.bundles.publish(&[ns("shop"), deployment], 1);
    let out = w.agent(&["--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    assert!(
        stdout(&out).contains("created    Deployment shop/web Progressing: 0/1 replicas ready"),
        "{}",
        explain(&out)
    );
    let statuses = w.bundles.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["healthy"], false);
}
