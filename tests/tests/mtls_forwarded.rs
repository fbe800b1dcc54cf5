//! Agents' client certificates behind a load balancer that ends mTLS (AWS ALB mTLS passthrough:
//! the certificate arrives URL-encoded in `X-Amzn-Mtls-Clientcert`) and certificate
//! revocation by CRL, through `cplane serve` with curl as the client. The forwarded certificate
//! is verified exactly like a direct one (the same rustls verifier, the same CRL); the header is
//! believed only from `--trusted-proxy` addresses (tests send from 127.0.0.2, which Linux's
//! loopback also answers, to play an untrusted peer).

use std::path::Path;
use std::process::Command;

use cplane_e2e::pki::{agent_cert, ca, crl, leaf};
use cplane_e2e::serve::{wait_for, Serve};

const HEADER: &str = "X-Amzn-Mtls-Clientcert";

/// `curl` of `url` (from `source`, with `args`): the HTTP status, or 0 when it failed (e.g. the
/// TLS handshake).
fn curl(url: &str, source: &str, args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            source,
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The header a load balancer sends: the PEM certificate, URL-encoded.
fn forwarded(dir: &Path, name: &str) -> String {
    let pem = std::fs::read_to_string(dir.join(format!("{name}.pem"))).expect("pem");
    let encoded = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC);
    format!("{HEADER}: {encoded}")
}

/// Certificates: a cluster CA, agents of w-acme (one revoked, serial 66), one of another CA,
/// and the CA's CRL.
fn pki(dir: &Path) {
    let cluster_ca = ca("cplane cluster CA");
    std::fs::write(dir.join("cluster-ca.pem"), cluster_ca.pem()).expect("write");
    agent_cert(dir, "acme", "w-acme", &cluster_ca, 65);
    agent_cert(dir, "revoked", "w-acme", &cluster_ca, 66);
    agent_cert(dir, "rogue", "w-acme", &ca("someone else's CA"), 67);
    std::fs::write(dir.join("cluster.crl"), crl(&cluster_ca, &[66])).expect("write");
}

#[test]
fn a_trusted_proxys_forwarded_certificate_is_verified_like_a_direct_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pki(dir);
    let server = Serve::new(dir)
        .args([
            "--client-ca".as_ref(),
            dir.join("cluster-ca.pem").as_os_str(),
            "--client-crl".as_ref(),
            dir.join("cluster.crl").as_os_str(),
            "--client-cert-header".as_ref(),
            HEADER.as_ref(),
            "--trusted-proxy".as_ref(),
            "127.0.0.1/32".as_ref(),
        ])
        .spawn();
    let port = server.port;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    wait_for("/readyz", || curl(&url("/readyz"), "127.0.0.1", &[]) == 200);
    let bundle = url("/v1/clusters/w-acme/bundle");
    let acme = forwarded(dir, "acme");

    // From the trusted proxy: the certificate authenticates its cluster, and only it.
    assert_eq!(curl(&bundle, "127.0.0.1", &["-H", &acme]), 200);
    assert_eq!(
        curl(
            &url("/v1/clusters/w-globex/bundle"),
            "127.0.0.1",
            &["-H", &acme]
        ),
        403
    );
    // Revoked by the CRL, issued by another CA, or not a certificate: nothing authenticated.
    for header in [
        forwarded(dir, "revoked"),
        forwarded(dir, "rogue"),
        format!("{HEADER}: -----BEGIN%20CERTIFICATE-----%0Anonsense"),
    ] {
        assert_eq!(
            curl(&bundle, "127.0.0.1", &["-H", &header]),
            401,
            "{header:.60}"
        );
    }
    // Two headers: ambiguous, neither is believed.
    let both = ["-H", &acme, "-H", &acme];
    assert_eq!(curl(&bundle, "127.0.0.1", &both), 401);
    // The same valid header from a peer that is not a trusted proxy is ignored.
    assert_eq!(curl(&bundle, "127.0.0.2", &["-H", &acme]), 401);
}

#[test]
fn a_revoked_certificate_fails_a_direct_handshake() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pki(dir);
    let server_ca = ca("cplane server CA");
    std::fs::write(dir.join("server-ca.pem"), server_ca.pem()).expect("write");
    leaf(
        dir,
        "server",
        &server_ca,
        vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        1,
    );
    let server = Serve::new(dir)
        .args([
            "--tls-cert".as_ref(),
            dir.join("server.pem").as_os_str(),
            "--tls-key".as_ref(),
            dir.join("server.key").as_os_str(),
            "--client-ca".as_ref(),
            dir.join("cluster-ca.pem").as_os_str(),
            "--client-crl".as_ref(),
            dir.join("cluster.crl").as_os_str(),
        ])
        .spawn();
    let port = server.port;
    let ca_file = dir.join("server-ca.pem");
    let tls = |name: Option<&str>| {
        let mut args = vec!["--cacert".to_owned(), ca_file.display().to_string()];
        if let Some(name) = name {
            args.extend([
                "--cert".to_owned(),
                dir.join(format!("{name}.pem")).display().to_string(),
                "--key".to_owned(),
                dir.join(format!("{name}.key")).display().to_string(),
            ]);
        }
        args
    };
    let get = |path: &str, name: Option<&str>| {
        let args = tls(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(
            &format!("https://127.0.0.1:{port}{path}"),
            "127.0.0.1",
            &args,
        )
    };
    wait_for("/readyz over https", || get("/readyz", None) == 200);
    assert_eq!(get("/v1/clusters/w-acme/bundle", Some("acme")), 200);
    assert_eq!(get("/v1/clusters/w-acme/bundle", Some("revoked")), 0);
    // A header is no way around it: without --client-cert-header it is never read.
    let header = forwarded(dir, "acme");
    let mut args = tls(None);
    args.extend(["-H".to_owned(), header]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        curl(
            &format!("https://127.0.0.1:{port}/v1/clusters/w-acme/bundle"),
            "127.0.0.1",
            &args
        ),
        401
    );
}
