//! The `cplane-agent` binary: usage errors, and a clean stop on SIGTERM while the server is
//! unreachable, without the token in its logs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cplane_e2e::kube_apiserver::ApiServer;

#[test]
fn credentials_are_required() {
    let out = Command::new(cplane_e2e::cargo_bin("cplane-agent"))
        .args(["--server", "http://127.0.0.1:1", "--cluster", "w-acme"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token-file"), "{err}");
    let help = Command::new(cplane_e2e::cargo_bin("cplane-agent"))
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for env in [
        "CPLANE_AGENT_SERVER",
        "CPLANE_AGENT_TOKEN_FILE",
        "CPLANE_AGENT_DRIFT_INTERVAL",
        "CPLANE_AGENT_KUBECONFIG",
        "CPLANE_AGENT_ONCE",
        "CPLANE_AGENT_DRY_RUN",
        "CPLANE_LOG",
    ] {
        assert!(help.contains(env), "{env} missing from --help:\n{help}");
    }
    for code in [
        "0  --once",
        "1  the poll",
        "2  usage",
        "3  --once",
        "4  --dry-run",
    ] {
        assert!(
            help.contains(code),
            "exit code {code:?} missing from --help:\n{help}"
        );
    }
}

#[test]
fn stops_cleanly_on_sigterm_and_never_logs_the_token() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let kube = ApiServer::new();
    let served = rt.block_on(kube.serve()).expect("serve");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, served.kubeconfig()).expect("write");
    let token = "cpt_do_not_log_me_0123456789";
    std::fs::write(dir.path().join("token"), token).expect("write");
    let child = Command::new(cplane_e2e::cargo_bin("cplane-agent"))
        .env("CPLANE_AGENT_SERVER", "http://127.0.0.1:1")
        .env("CPLANE_AGENT_CLUSTER", "w-acme")
        .env("CPLANE_AGENT_TOKEN_FILE", dir.path().join("token"))
        .env("CPLANE_AGENT_STATE_DIR", dir.path().join("state"))
        .env("CPLANE_AGENT_KUBECONFIG", &kubeconfig)
        .env("CPLANE_AGENT_MAX_BACKOFF", "200ms")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    std::thread::sleep(Duration::from_millis(1500)); // a few failed polls
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success());
    let started = Instant::now();
    let out = child.wait_with_output().expect("wait");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.status.success(), "{:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("poll failed"), "{logs}");
    assert!(
        logs.contains("v1.33.0-cplane-fake"),
        "connected to the cluster: {logs}"
    );
    assert!(logs.contains("agent stopped"), "{logs}");
    assert!(!logs.contains(token), "the token leaked into the logs");
    // Nothing was applied: the server never answered.
    assert!(kube
        .object("v1", "ConfigMap", Some("cplane-system"), "cplane-inventory")
        .is_none());
}
