//! Agents authenticate with client certificates (mTLS) as the alternative to cluster tokens:
//! `cplane serve --tls-cert --tls-key --client-ca`, driven with curl as a real TLS client.
//! Certificates are issued in the test (rcgen): a cluster CA, a server certificate for
//! 127.0.0.1, agent certificates naming their cluster in the URI SAN, and a rogue CA.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use cplane_e2e::pki::{agent_cert, ca, leaf};
use cplane_e2e::serve::{remote_and_work, wait_for};
use rcgen::{ExtendedKeyUsagePurpose, SanType};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl` over TLS: the HTTP status, or 0 when the handshake failed.
fn curl(dir: &Path, port: u16, path: &str, client: Option<&str>, token: Option<&str>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(dir.join("server-ca.pem"));
    if let Some(name) = client {
        cmd.arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")));
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn agents_authenticate_with_client_certificates_naming_their_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let server_ca = ca("cplane server CA");
    std::fs::write(dir.join("server-ca.pem"), server_ca.pem()).expect("write");
    leaf(
        dir,
        "server",
        &server_ca,
        vec![SanType::IpAddress([127, 0, 0, 1].into())],
        ExtendedKeyUsagePurpose::ServerAuth,
        1,
    );
    let cluster_ca = ca("cplane cluster CA");
    std::fs::write(dir.join("cluster-ca.pem"), cluster_ca.pem()).expect("write");
    agent_cert(dir, "acme", "w-acme", &cluster_ca, 2);
    agent_cert(dir, "rogue", "w-acme", &ca("someone else's CA"), 3);
    leaf(
        dir,
        "nameless",
        &cluster_ca,
        vec![SanType::DnsName("w-acme".try_into().expect("dns"))],
        ExtendedKeyUsagePurpose::ClientAuth,
        4,
    );

    let (remote, _work, branch) = remote_and_work(dir);
    let db = format!("sqlite://{}", dir.join("cplane.db").display());
    let port = cplane_e2e::moto::free_port();
    let _server = Server(
        Command::new(cplane_e2e::cargo_bin("cplane"))
            .args([
                "serve",
                "--insecure-open-read",
                "--repo-url",
                &format!("file://{}", remote.display()),
            ])
            .args(["--branch", &branch, "--database", &db, "--poll", "1h"])
            .arg("--mirror")
            .arg(dir.join("mirror.git"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.join("server.pem"))
            .arg("--tls-key")
            .arg(dir.join("server.key"))
            .arg("--client-ca")
            .arg(dir.join("cluster-ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cplane serve"),
    );
    wait_for("/readyz over https", || {
        curl(dir, port, "/readyz", None, None) == 200
    });

    let bundle = "/v1/clusters/w-acme/bundle";
    assert_eq!(
        curl(dir, port, bundle, Some("acme"), None),
        200,
        "its own cluster"
    );
    assert_eq!(
        curl(
            dir,
            port,
            "/v1/clusters/w-globex/bundle",
            Some("acme"),
            None
        ),
        403,
        "another cluster"
    );
    assert_eq!(
        curl(dir, port, "/api/workspaces/acme/config", Some("acme"), None),
        401,
        "the agent's certificate is no BFF credential"
    );
    assert_eq!(curl(dir, port, bundle, None, None), 401, "no credential");
    assert_eq!(
        curl(dir, port, bundle, Some("nameless"), None),
        401,
        "a verified certificate without a cluster URI authenticates nothing"
    );
    assert_eq!(
        curl(dir, port, bundle, Some("rogue"), None),
        0,
        "a certificate from another CA fails the handshake"
    );
    // Cluster tokens keep working over TLS, without a client certificate.
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token", "create", "w-acme", "--database", &db])
        .output()
        .expect("token");
    let token = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(curl(dir, port, bundle, None, Some(token.trim())), 200);
}
