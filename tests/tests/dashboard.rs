//! The development issuer's sign-in (authorization code + PKCE) as `cplane up` serves it for
//! the dashboard: no redirect off its origin, single-use codes bound to their verifier.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cplane_e2e::serve::{http, wait_up_to};

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dev_issuer_signs_in_only_with_a_matching_pkce_verifier() {
    // The authorization endpoint never redirects off its own origin, and a code is single
    // use and bound to its verifier.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = cplane_e2e::moto::free_port();
    let _up = Up(Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "up",
            "--dir",
            ".cplane",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cplane up"));
    wait_up_to("cplane up", Duration::from_secs(60), || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    // A verifier and its S256 challenge (computed independently, by Python's hashlib and
    // base64; the browser test computes its own with WebCrypto).
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_XW1gFWFOEjXk";
    let challenge = "QilX_TplyS9MaZ2X2ly0lHSl2CK1bBL-tPz2ADMJbnI";
    let auth = |redirect: &str| {
        let q = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", "cplane-dashboard"),
            ("redirect_uri", redirect),
            ("state", "s1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .expect("query");
        cplane_e2e::http::Request::new(
            port,
            "GET",
            &format!("/dev-issuer/protocol/openid-connect/auth?{q}"),
        )
        .send()
        .expect("authorize")
    };
    let evil = auth("https://evil.example/ui/");
    assert_eq!(evil.status, 400, "no redirect off the issuer's origin");
    let redirect = format!("http://127.0.0.1:{port}/ui/");
    let r = auth(&redirect);
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").expect("location").to_owned();
    assert!(
        location.starts_with(&redirect) && location.contains("state=s1"),
        "{location}"
    );
    let code = location
        .split("code=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .expect("code")
        .to_owned();
    let token = |verifier: &str| {
        let form = serde_urlencoded::to_string([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("client_id", "cplane-dashboard"),
            ("code_verifier", verifier),
        ])
        .expect("form");
        http(
            port,
            "POST",
            "/dev-issuer/protocol/openid-connect/token",
            &[(
                "content-type",
                "application/x-www-form-urlencoded".to_owned(),
            )],
            form.as_bytes(),
        )
    };
    let (status, body) = token("not-the-verifier-not-the-verifier-not-the-verifier");
    assert_eq!(status, 400, "{body}");
    // The failed attempt used the code up: the right verifier is too late now.
    let (status, _) = token(verifier);
    assert_eq!(status, 400);
    // A fresh code with the right verifier gives a token the API accepts.
    let r = auth(&redirect);
    let location = r.header("location").expect("location").to_owned();
    let fresh = location
        .split("code=")
        .nth(1)
        .and_then(|c| c.split('&').next())
        .expect("code")
        .to_owned();
    let form = serde_urlencoded::to_string([
        ("grant_type", "authorization_code"),
        ("code", fresh.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("client_id", "cplane-dashboard"),
        ("code_verifier", verifier),
    ])
    .expect("form");
    let (status, body) = http(
        port,
        "POST",
        "/dev-issuer/protocol/openid-connect/token",
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )],
        form.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let t: serde_json::Value = serde_json::from_str(&body).expect("json");
    let access = t["access_token"].as_str().expect("access_token");
    let (status, me) = http(
        port,
        "GET",
        "/v1/me",
        &[("authorization", format!("Bearer {access}"))],
        b"",
    );
    assert_eq!(status, 200, "{me}");
    assert!(me.contains("admin@cplane.localhost"), "{me}");
}
