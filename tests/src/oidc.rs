//! A real local OIDC issuer for tests: RSA and EC keys generated here (aws-lc-rs), a JWKS
//! served on 127.0.0.1 at Keycloak's path `{issuer}/protocol/openid-connect/certs` (keys can be
//! swapped to simulate rotation; JWKS fetches and all requests are counted), and JWTs signed here byte by byte, so
//! tests can also build the hostile ones (`alg: none`, HMAC with the public key, tampering).
//!
//! For plain valid tokens, `cplane_reconciler::auth::dev::DevIssuer` does the same with less.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine as _;
use serde_json::{json, Value};

/// base64url without padding (JWS encoding).
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

enum Kind {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

/// A signing key with its id.
pub struct TestKey {
    /// Key id published in the JWKS and put in token headers.
    pub kid: String,
    kind: Kind,
}

impl TestKey {
    /// A new RSA-2048 key.
    pub fn rsa(kid: &str) -> Self {
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("generate RSA key");
        Self {
            kid: kid.into(),
            kind: Kind::Rsa(key),
        }
    }

    /// A new P-256 key.
    pub fn ec(kid: &str) -> Self {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate EC");
        Self {
            kid: kid.into(),
            kind: Kind::Ec(key),
        }
    }

    /// The public JWK, as Keycloak publishes it.
    pub fn jwk(&self) -> Value {
        match &self.kind {
            Kind::Rsa(k) => {
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Kind::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        }
    }

    /// The public key's DER bytes (what an attacker would try as an HMAC secret).
    pub fn public_der(&self) -> Vec<u8> {
        match &self.kind {
            Kind::Rsa(k) => k.public_key().as_ref().to_vec(),
            Kind::Ec(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// `header.claims.signature`, signed with this key using the header's `alg`
    /// (RS256/384/512 for RSA keys, ES256 for EC keys).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = match &self.kind {
            Kind::Rsa(k) => {
                let alg: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    match header["alg"].as_str() {
                        Some("RS384") => &aws_lc_rs::signature::RSA_PKCS1_SHA384,
                        Some("RS512") => &aws_lc_rs::signature::RSA_PKCS1_SHA512,
                        _ => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(alg, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA sign");
                sig
            }
            Kind::Ec(k) => k
                .sign(&rng, input.as_bytes())
                .expect("EC sign")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    /// A token with the usual header (`alg` of the key type, this `kid`).
    pub fn token(&self, claims: &Value) -> String {
        let alg = match self.kind {
            Kind::Rsa(_) => "RS256",
            Kind::Ec(_) => "ES256",
        };
        self.sign(&json!({"alg": alg, "typ": "JWT", "kid": self.kid}), claims)
    }
}

/// Claims of a Keycloak-like access token valid from now for `lifetime` seconds.
pub fn claims(issuer: &str, audience: &str, email: &str, lifetime: i64) -> Value {
    let t = now();
    json!({
        "iss": issuer, "aud": audience, "sub": format!("sub-{email}"), "email": email,
        "email_verified": true, "name": format!("Name of {email}"),
        "iat": t, "nbf": t, "exp": t + lifetime,
    })
}

/// HMAC-SHA256 "signature" of a token with `secret` (the classic key-confusion attack).
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

/// An issuer serving a JWKS on 127.0.0.1, counting fetches.
pub struct TestIssuer {
    /// The issuer URL (`iss`), e.g. `http://127.0.0.1:PORT/realms/test`.
    pub url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Starts an issuer at `http://127.0.0.1:PORT{realm}` publishing `keys`.
    pub async fn start(realm: &str, keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}{realm}",
            listener.local_addr().expect("local addr")
        );
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (p, f, r) = (published.clone(), fetches.clone(), requests.clone());
        let app = axum::Router::new().route(
            &format!("{realm}/protocol/openid-connect/certs"),
            axum::routing::get(move || {
                let (p, f) = (p.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let keys = p.lock().expect("keys").clone();
                    axum::Json(json!({ "keys": keys }))
                }
            }),
        );
        // Every request on any path (discovery, a JWKS at another path…) is counted.
        let app = app.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                r.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            },
        ));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            keys: published,
            fetches,
            requests,
            task,
        }
    }

    /// Replaces the published keys (rotation).
    pub fn publish(&self, keys: &[&TestKey]) {
        *self.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk()).collect();
    }

    /// JWKS fetches served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Requests received so far, on any path (an unknown path is answered `404`).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A development issuer for tests that sign their own users' tokens: keys generated here, its
/// JWKS served on 127.0.0.1 (a free port) for as long as the runtime runs.
///
/// # Panics
/// When no local port can be bound.
pub async fn dev_issuer() -> cplane_reconciler::auth::dev::DevIssuer {
    let (dev, _serving) = cplane_reconciler::auth::dev::DevIssuer::start_local()
        .await
        .expect("a development issuer on 127.0.0.1");
    dev
}
