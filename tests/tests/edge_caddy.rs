//! The edge front door (reference doc 002) end to end with a real Caddy (Debian's `caddy`) on
//! 127.0.0.1: Caddy asks `cplane serve` before it obtains a certificate (on-demand TLS `ask`,
//! `GET /v1/public/tls-authorize`) and which upstream serves each request (`forward_auth` to
//! `GET /v1/public/route`), then proxies to the upstream cplane named. Caddy's certificates come
//! from its own local CA (`local_certs`), so nothing leaves the machine; the client is curl.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cplane_e2e::serve::{http, push, wait_for, webhook, Serve, SECRET};

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn caddy_binary() -> &'static str {
    let caddy = "/usr/bin/caddy";
    assert!(
        Path::new(caddy).exists(),
        "{caddy} is missing: `apt-get install caddy` (.ci/run installs it)"
    );
    caddy
}

/// The test upstream: answers every request with the workspace Caddy was told to route to.
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned()
                };
                format!(
                    "upstream: host={} workspace={}",
                    header("host"),
                    header("x-cplane-workspace")
                )
            });
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    port
}

/// `curl` through Caddy for `host`, resolved to 127.0.0.1: (curl's exit code, body).
fn through_caddy(port: u16, host: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "20", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/some/path"))
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn caddy_asks_cplane_before_a_certificate_and_routes_where_it_says() {
    let caddy = caddy_binary();
    let tmp = tempfile::tempdir().expect("tempdir");
    let upstream_port = upstream();
    let upstream_flag = format!("127.0.0.1:{upstream_port}");
    let cplane = Serve::new(tmp.path())
        .args(["--insecure-open-read", "--webhook-secret", SECRET])
        .args([
            "--edge-upstream",
            &upstream_flag,
            "--edge-rate-limit",
            "1000",
        ])
        .start();
    let (port, work, branch) = (cplane.port, &cplane.work, &cplane.branch);

    // cplane's answers, asked directly.
    let (status, body) = http(
        port,
        "GET",
        "/v1/public/route?host=app.w-acme.sgp-1.cogrion.com",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let route: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(route["workspace"], "w-acme");
    assert_eq!(route["upstream"], format!("127.0.0.1:{upstream_port}"));
    for (path, expected) in [
        ("/v1/public/route?host=evil.example.com", 404),
        ("/v1/public/route?host=auth.sgp-1.cogrion.com", 404),
        ("/v1/public/route?host=..%2Fetc", 400),
        ("/v1/public/route", 400),
        (
            "/v1/public/tls-authorize?domain=w-globex.sgp-1.cogrion.com",
            200,
        ),
        ("/v1/public/tls-authorize?domain=evil.example.com", 404),
    ] {
        assert_eq!(http(port, "GET", path, &[], b"").0, expected, "{path}");
    }

    // Caddy, with on-demand TLS asking cplane and every request routed by cplane.
    let edge_port = cplane_e2e::moto::free_port();
    let http_port = cplane_e2e::moto::free_port();
    let caddyfile = tmp.path().join("Caddyfile");
    fs::write(
        &caddyfile,
        format!(
            r#"{{
	admin off
	http_port {http_port}
	https_port {edge_port}
	local_certs
	skip_install_trust
	storage file_system {storage}
	on_demand_tls {{
		ask http://127.0.0.1:{port}/v1/public/tls-authorize
	}}
}}
https:// {{
	tls {{
		on_demand
	}}
	forward_auth 127.0.0.1:{port} {{
		uri /v1/public/route?host={{host}}
		copy_headers X-Cplane-Upstream X-Cplane-Workspace
	}}
	reverse_proxy {{http.request.header.X-Cplane-Upstream}}
}}
"#,
            storage = tmp.path().join("caddy-data").display(),
        ),
    )
    .expect("write Caddyfile");
    let caddy_log = tmp.path().join("caddy.log");
    let _caddy = Process(
        Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&caddyfile)
            .env("HOME", tmp.path())
            .env("XDG_DATA_HOME", tmp.path().join("xdg-data"))
            .env("XDG_CONFIG_HOME", tmp.path().join("xdg-config"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&caddy_log).expect("log"))
            .spawn()
            .expect("start caddy"),
    );
    wait_for("caddy's port", || {
        TcpStream::connect(("127.0.0.1", edge_port)).is_ok()
    });

    // A host cplane owns: Caddy gets a certificate and proxies to the upstream cplane named.
    let (code, body) = through_caddy(edge_port, "app.w-acme.sgp-1.cogrion.com");
    let log = || fs::read_to_string(&caddy_log).unwrap_or_default();
    assert_eq!(code, 0, "curl failed: {body}\n{}", log());
    assert!(
        body.starts_with("upstream: host=app.w-acme.sgp-1.cogrion.com"),
        "{body}"
    );
    assert!(body.ends_with("workspace=w-acme"), "{body}");
    // A foreign host, and an unknown workspace: no certificate, the handshake fails (curl 35).
    for foreign in ["evil.example.com", "app.w-nobody.sgp-1.cogrion.com"] {
        let (code, body) = through_caddy(edge_port, foreign);
        assert_eq!(code, 35, "{foreign} got through: {body}");
    }

    // The state repo decides: remove globex, and once the commit is applied its hosts are
    // neither authorized nor routed.
    fs::remove_file(work.join("workspaces/globex.yaml")).expect("remove globex");
    let commit = cplane_e2e::commit_all(work, "remove globex");
    push(work, branch);
    assert_eq!(webhook(port, branch, "d-1").0, 202);
    wait_for("the removal to be applied", || {
        let status = cplane_e2e::serve::get_json(port, "/v1/status");
        status["last_run"]["commit"] == commit.as_str()
            && status["last_run"]["outcome"] == "converged"
    });
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/public/tls-authorize?domain=app.w-globex.sgp-1.cogrion.com",
            &[],
            b""
        )
        .0,
        404
    );
    let (code, _) = through_caddy(edge_port, "bff.w-globex.sgp-1.cogrion.com");
    assert_eq!(code, 35, "a removed workspace's host got a certificate");
}

#[test]
fn the_front_door_is_rate_limited_per_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cplane = Serve::new(tmp.path())
        .args(["--edge-rate-limit", "2"])
        .start();
    let port = cplane.port;
    let ask = "/v1/public/tls-authorize?domain=w-acme.sgp-1.cogrion.com";
    // A burst of twice the rate passes; the next request is refused with a Retry-After. Other
    // endpoints are not limited by it.
    let statuses: Vec<u16> = (0..8).map(|_| http(port, "GET", ask, &[], b"").0).collect();
    assert_eq!(&statuses[..4], [200, 200, 200, 200], "{statuses:?}");
    assert!(statuses[4..].contains(&429), "{statuses:?}");
    assert_eq!(http(port, "GET", "/healthz", &[], b"").0, 200);
    // The bucket refills: within a second or two the source is served again.
    wait_for("the bucket to refill", || {
        http(port, "GET", ask, &[], b"").0 == 200
    });
}
