//! End to end: `cplane serve` on a local state repo (file watch) + `cplane-agent` (in-process,
//! through a kubeconfig) + the fake Kubernetes API server on 127.0.0.1.
//!
//! A commit enabling a stack on a workspace reaches that workspace's cluster; a commit disabling
//! it prunes it; an object deleted by hand comes back at the next drift interval; with the
//! server stopped, the cluster stays as it was (nothing pruned) and drift is still corrected
//! from the bundle on disk; a tampered bundle (digest mismatch) is refused, and reported as a
//! failed status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;
use cplane_e2e::kube_apiserver::ApiServer;

/// One GET: (status, body). Status 0 when nothing answers.
fn get(port: u16, path: &str) -> (u16, String) {
    cplane_e2e::serve::http(port, "GET", path, &[], b"")
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    cplane_e2e::serve::wait_up_to(what, Duration::from_secs(60), f);
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(repo: &Path, dir: &Path, db: &str, port: u16) -> Server {
    let branch = git2::Repository::open(repo)
        .expect("open")
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned();
    let child = Command::new(cplane_e2e::cargo_bin("cplane"))
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
            db,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll",
            "1h",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane serve");
    let server = Server(child);
    wait_for("/readyz", || get(port, "/readyz").0 == 200);
    server
}

fn token(db: &str, cluster: &str) -> String {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", cluster, "--database", db])
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

fn cluster_status(port: u16, cluster: &str) -> serde_json::Value {
    let (_, body) = get(port, &format!("/v1/clusters/{cluster}/status"));
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn serve_and_agent_end_to_end() {
    cplane_agent::install_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = cplane_e2e::template_repo();
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let port = cplane_e2e::moto::free_port();
    let server = serve(work.path(), tmp.path(), &db, port);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token(&db, "w-initech")).expect("token");

    // The fake cluster, reached through a kubeconfig; the agent runs in-process.
    let kube = ApiServer::new();
    let served = rt.block_on(kube.serve()).expect("serve fake");
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, served.kubeconfig()).expect("kubeconfig");
    let state_dir = tmp.path().join("agent-state");
    let args = cplane_agent::Args::parse_from([
        "cplane-agent",
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--cluster",
        "w-initech",
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--state-dir",
        state_dir.to_str().expect("utf-8"),
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--drift-interval",
        "1s",
        "--wait",
        "20s",
        "--max-backoff",
        "1s",
    ]);
    let start_agent = |args: cplane_agent::Args| {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let task = rt.spawn(async move {
            let client = cplane_agent::kube_client(args.kubeconfig.as_ref()).await?;
            cplane_agent::run_with(args, client, shutdown).await
        });
        (stop, task)
    };
    let stop_agent = |(stop, task): (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), cplane_agent::Error>>,
    )| {
        stop.send(true).expect("stop");
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), task).await })
            .expect("the agent stops on request")
            .expect("join")
            .expect("agent ran cleanly");
    };
    let agent = start_agent(args.clone());

    // 1. The workspace's current bundle is applied, and reported.
    wait_for("trino applied", || {
        kube.object("apps/v1", "Deployment", Some("trino"), "trino-worker")
            .is_some()
    });
    wait_for("in sync", || {
        cluster_status(port, "w-initech")["in_sync"] == true
    });
    let status = cluster_status(port, "w-initech");
    assert_eq!(status["reported"]["report"]["generation"], 1, "{status}");
    // The agent says which version it is (its User-Agent), as `cplane-agent --version` does.
    assert_eq!(
        status["reported"]["report"]["agent_version"],
        cplane_agent::version(),
        "{status}"
    );
    assert!(kube.object("v1", "Namespace", None, "superset").is_none());
    assert!(
        state_dir.join("bundle.jsonl").exists(),
        "the bundle is kept on disk"
    );

    // 2. A commit enabling a stack: applied to that workspace's cluster.
    let file = work.path().join("workspaces/initech.yaml");
    let original = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        format!("{original}    - name: superset\n      values:\n        replicas: 1\n"),
    )
    .expect("write");
    cplane_e2e::commit_all(work.path(), "initech: enable superset");
    wait_for("superset applied", || {
        kube.object("v1", "Namespace", None, "superset").is_some()
    });
    wait_for("superset deployment", || {
        kube.inventory()
            .iter()
            .any(|o| o.starts_with("Deployment superset/"))
    });
    wait_for("in sync with generation 2", || {
        let s = cluster_status(port, "w-initech");
        s["in_sync"] == true && s["reported"]["report"]["generation"] == 2
    });
    let superset: Vec<String> = kube
        .inventory()
        .into_iter()
        .filter(|o| o.contains("superset"))
        .collect();
    assert!(superset.len() >= 3, "{superset:?}");

    // 3. A commit disabling it: pruned; the rest stays.
    std::fs::write(&file, &original).expect("write");
    cplane_e2e::commit_all(work.path(), "initech: disable superset");
    wait_for("superset pruned", || {
        !kube.inventory().iter().any(|o| o.contains("superset"))
    });
    assert!(kube
        .object("apps/v1", "Deployment", Some("trino"), "trino-worker")
        .is_some());
    wait_for("pruned objects reported", || {
        let s = cluster_status(port, "w-initech");
        s["reported"]["report"]["generation"] == 3
            && s["reported"]["report"]["objects"]
                .as_array()
                .is_some_and(|o| {
                    o.iter().any(|o| {
                        o["result"] == "pruned"
                            && o["kind"] == "Namespace"
                            && o["name"] == "superset"
                    })
                })
    });

    // 4. An object deleted by hand is restored at the next drift interval.
    assert!(kube.delete_by_hand("v1", "ConfigMap", Some("trino"), "trino-config"));
    wait_for("trino-config restored", || {
        kube.object("v1", "ConfigMap", Some("trino"), "trino-config")
            .is_some()
    });

    // 5. The server stops: nothing is pruned, and drift is still corrected from disk.
    let before = kube.inventory();
    drop(server);
    wait_for("server down", || get(port, "/healthz").0 == 0);
    assert!(kube.delete_by_hand("apps/v1", "Deployment", Some("jupyterhub"), "hub"));
    wait_for("hub restored while the server is down", || {
        kube.object("apps/v1", "Deployment", Some("jupyterhub"), "hub")
            .is_some()
    });
    std::thread::sleep(Duration::from_secs(3)); // a few more drift runs and failed polls
    assert_eq!(kube.inventory(), before, "the cluster stays as it was");

    // 6. A restarted agent, with the server still down, re-applies what it kept on disk.
    stop_agent(agent);
    assert!(kube.delete_by_hand("v1", "Service", Some("trino"), "trino"));
    let agent = start_agent(args);
    wait_for("trino service restored by a restarted agent", || {
        kube.object("v1", "Service", Some("trino"), "trino")
            .is_some()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(kube.inventory(), before, "still nothing pruned");
    stop_agent(agent);
}

/// What the proxy between agent and server does to bundle responses (0: pass them on).
const TAMPER: u8 = 1;
const GZIP: u8 = 2;

/// A proxy of ours in front of `cplane serve` that can tamper with bundle bodies (keeping the
/// ETag) or gzip them; it asks the server for identity bodies and counts what it did.
struct Proxy {
    port: u16,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    gzipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tampered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    agent_accepts_gzip: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn proxy(upstream: u16) -> Proxy {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let p = Proxy {
        port,
        mode: Arc::default(),
        gzipped: Arc::default(),
        tampered: Arc::default(),
        agent_accepts_gzip: Arc::default(),
    };
    let (mode, gzipped, tampered, accepts) = (
        p.mode.clone(),
        p.gzipped.clone(),
        p.tampered.clone(),
        p.agent_accepts_gzip.clone(),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (mode, gzipped, tampered, accepts, client) = (
                mode.clone(),
                gzipped.clone(),
                tampered.clone(),
                accepts.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (mode, gzipped, tampered, accepts, client) = (
                            mode.clone(),
                            gzipped.clone(),
                            tampered.clone(),
                            accepts.clone(),
                            client.clone(),
                        );
                        async move {
                            let (mut parts, body) = req.into_parts();
                            if parts
                                .headers
                                .get("accept-encoding")
                                .and_then(|v| v.to_str().ok())
                                .is_some_and(|v| v.contains("gzip"))
                            {
                                accepts.store(true, SeqCst);
                            }
                            parts.headers.remove("accept-encoding");
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map_or("/", |p| p.as_str())
                                .to_owned();
                            parts.uri = format!("http://127.0.0.1:{upstream}{pq}")
                                .parse()
                                .expect("uri");
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let resp = match client
                                .request(hyper::Request::from_parts(parts, Full::new(body)))
                                .await
                            {
                                Ok(r) => r,
                                Err(_) => {
                                    return Ok::<_, std::convert::Infallible>(
                                        hyper::Response::builder()
                                            .status(502)
                                            .body(Full::new(Bytes::new()))
                                            .expect("response"),
                                    )
                                }
                            };
                            let (mut parts, body) = resp.into_parts();
                            let mut body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            if parts.status == 200 && pq.contains("/bundle") {
                                match mode.load(SeqCst) {
                                    TAMPER => {
                                        body.extend_from_slice(b"{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"evil\",\"namespace\":\"default\"}}\n");
                                        tampered.fetch_add(1, SeqCst);
                                    }
                                    GZIP => {
                                        use std::io::Write as _;
                                        let mut enc = flate2::write::GzEncoder::new(
                                            Vec::new(),
                                            flate2::Compression::default(),
                                        );
                                        enc.write_all(&body).expect("gzip");
                                        body = enc.finish().expect("gzip");
                                        parts.headers.insert(
                                            "content-encoding",
                                            "gzip".parse().expect("header"),
                                        );
                                        gzipped.fetch_add(1, SeqCst);
                                    }
                                    _ => {}
                                }
                            }
                            parts.headers.remove("content-length");
                            parts.headers.remove("transfer-encoding");
                            Ok(hyper::Response::from_parts(
                                parts,
                                Full::new(Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    p
}

#[test]
fn a_tampered_bundle_is_refused_and_a_gzipped_one_applied() {
    use std::sync::atomic::Ordering::SeqCst;
    cplane_agent::install_crypto();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = cplane_e2e::template_repo();
    let db = format!("sqlite://{}", tmp.path().join("cplane.db").display());
    let port = cplane_e2e::moto::free_port();
    let _server = serve(work.path(), tmp.path(), &db, port);
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token(&db, "w-globex")).expect("token");
    let proxy = rt.block_on(proxy(port));
    proxy.mode.store(TAMPER, SeqCst);

    let kube = ApiServer::new();
    let args = cplane_agent::Args::parse_from([
        "cplane-agent",
        "--server",
        &format!("http://127.0.0.1:{}", proxy.port),
        "--cluster",
        "w-globex",
        "--token-file",
        token_file.to_str().expect("utf-8"),
        "--state-dir",
        tmp.path().join("agent-state").to_str().expect("utf-8"),
        "--drift-interval",
        "1s",
        "--wait",
        "20s",
        "--max-backoff",
        "1s",
    ]);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let client = {
        let _runtime = rt.enter(); // the kube client spawns its buffer task
        kube.client()
    };
    let agent = rt.spawn(cplane_agent::run_with(args, client, shutdown));

    // Tampered: refused every time; nothing reaches the cluster; the server is told, with a
    // failed status naming its digest (and the real server accepts that report).
    wait_for("two tampered bundles", || proxy.tampered.load(SeqCst) >= 2);
    let builtin = ApiServer::new().inventory();
    assert_eq!(
        kube.inventory(),
        builtin,
        "nothing applied from a tampered bundle"
    );
    wait_for("the refusal reported", || {
        !cluster_status(port, "w-globex")["reported"].is_null()
    });
    let status = cluster_status(port, "w-globex");
    let report = &status["reported"]["report"];
    assert_eq!(report["healthy"], false, "{status:#}");
    assert_eq!(report["digest"], status["current"]["digest"], "{status:#}");
    assert_eq!(report["objects"], serde_json::json!([]), "{status:#}");
    let message = report["message"].as_str().expect("message");
    assert!(
        message.starts_with("bundle refused") && message.contains("digest mismatch"),
        "{status:#}"
    );
    assert!(
        !tmp.path().join("agent-state/bundle.jsonl").exists(),
        "nothing persisted"
    );

    // Gzip-encoded: decoded, verified, applied.
    proxy.mode.store(GZIP, SeqCst);
    wait_for("applied from a gzipped bundle", || {
        let status = cluster_status(port, "w-globex");
        status["in_sync"] == true
            && status["reported"]["report"]["objects"]
                .as_array()
                .is_some_and(|o| !o.is_empty())
    });
    assert!(proxy.gzipped.load(SeqCst) >= 1);
    assert!(
        proxy.agent_accepts_gzip.load(SeqCst),
        "the agent sends Accept-Encoding: gzip"
    );
    assert!(
        kube.inventory().len() > builtin.len() + 10,
        "{:?}",
        kube.inventory()
    );
    assert!(kube
        .object("v1", "ConfigMap", Some("default"), "evil")
        .is_none());

    stop.send(true).expect("stop");
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), agent).await })
        .expect("stops")
        .expect("join")
        .expect("clean");
}
