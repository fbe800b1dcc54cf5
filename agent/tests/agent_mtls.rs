//! The agent's mTLS client: it presents its client certificate and verifies the server against
//! `--server-ca`. The peer is a TLS server of this test (rustls, client certificates required,
//! certificates made with the `openssl` command) that answers every request with `304`.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cplane_agent::client::{Credentials, Poll, ServerClient};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}-ca.crt`), and a leaf `{leaf}.crt`/`.key` signed by it with `ext`.
fn pki(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.crt"),
            "-subj",
            &format!("/CN={name}-ca"),
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

fn leaf(dir: &Path, ca: &str, leaf: &str, cn: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(dir.join(format!("{leaf}.ext")), ext).expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

/// A TLS server requiring client certificates from `ca`; records the client certificates seen.
async fn tls_server(dir: &Path) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let ca = CertificateDer::from_pem_file(dir.join("test-ca.crt")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("verifier");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server key");
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(certs) = tls.get_ref().1.peer_certificates() {
                    seen.lock().expect("seen").push(certs[0].to_vec());
                }
                let svc = hyper::service::service_fn(|_req| async {
                    hyper::Response::builder()
                        .status(304)
                        .header("etag", "\"sha256:0\"")
                        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn presents_its_client_certificate_and_verifies_the_server() {
    cplane_agent::install_crypto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    pki(dir, "test");
    pki(dir, "other");
    leaf(dir, "test", "server", "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
    leaf(
        dir,
        "test",
        "client",
        "w-acme",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let (port, seen) = tls_server(dir).await;
    let url = format!("https://127.0.0.1:{port}");
    let mtls = Credentials::ClientCert {
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
    };

    // With its certificate and the right CA: the request goes through.
    let client = ServerClient::new(&url, "w-acme", mtls.clone(), Some(&dir.join("test-ca.crt")))
        .expect("client");
    let polled = client
        .poll(Some("sha256:0"), Duration::from_secs(1))
        .await
        .expect("poll");
    assert!(matches!(polled, Poll::NotModified));
    let presented = CertificateDer::from_pem_file(dir.join("client.crt")).expect("client cert");
    assert_eq!(seen.lock().expect("seen").as_slice(), [presented.to_vec()]);

    // A server whose certificate does not chain to --server-ca is refused.
    let client =
        ServerClient::new(&url, "w-acme", mtls, Some(&dir.join("other-ca.crt"))).expect("client");
    let err = client
        .poll(None, Duration::from_secs(1))
        .await
        .expect_err("untrusted server");
    assert!(err.to_string().contains("unreachable"), "{err}");

    // Without a client certificate, the server refuses the handshake.
    std::fs::write(dir.join("token"), "cpt_x").expect("token");
    let client = ServerClient::new(
        &url,
        "w-acme",
        Credentials::TokenFile(dir.join("token")),
        Some(&dir.join("test-ca.crt")),
    )
    .expect("client");
    assert!(client.poll(None, Duration::from_secs(1)).await.is_err());
    assert_eq!(seen.lock().expect("seen").len(), 1);

    // A key that does not belong to the certificate is a configuration error, not retried.
    let err = ServerClient::new(
        &url,
        "w-acme",
        Credentials::ClientCert {
            cert: dir.join("client.crt"),
            key: dir.join("server.key"),
        },
        Some(&dir.join("test-ca.crt")),
    )
    .expect_err("mismatched key");
    assert!(!err.is_retryable(), "{err}");
}
