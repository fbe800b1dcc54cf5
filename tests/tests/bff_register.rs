//! The BFF's registration (reference doc 001, BFF startup step 3; issue 14 item 7), end to end
//! through HTTP: `POST /api/workspaces/{id}/register` with `{bff_url, public_ip}` marks the
//! BFF healthy in its workspace's status (`BffHealthy=True`), a BFF that stops registering
//! turns it `False` (`RegistrationExpired`) after `--bff-register-ttl`, and bad bodies are
//! refused with 400 naming every field, recording nothing.

use std::time::{Duration, Instant};

use cplane_e2e::serve::{get_json, http, wait_up_to, Serve};
use serde_json::Value;

/// The TTL the server is started with: short, so the test waits little.
const TTL: Duration = Duration::from_secs(2);

fn register(port: u16, token: &str, body: &str) -> (u16, Value) {
    let (status, body) = http(
        port,
        "POST",
        "/api/workspaces/acme/register",
        &[
            ("Authorization", format!("Bearer {token}")),
            ("Content-Type", "application/json".to_owned()),
        ],
        body.as_bytes(),
    );
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// acme's `BffHealthy` condition as `GET /v1/workspaces/acme` shows it.
fn bff_healthy(port: u16) -> Option<Value> {
    get_json(port, "/v1/workspaces/acme")["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "BffHealthy")
        .cloned()
}

const GOOD: &str =
    r#"{"bff_url":"https://bff.w-acme.sgp-1.cogrion.com","public_ip":"203.0.113.7"}"#;

#[test]
fn a_registered_bff_is_healthy_until_it_stops_registering() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Serve::new(tmp.path())
        .args(["--insecure-open-read", "--bff-register-ttl", "2s"])
        .start();
    let port = server.port;
    let bff = server
        .cplane(&["cluster", "token", "create", "w-acme", "--scope", "bff"])
        .trim()
        .to_owned();
    assert_eq!(bff_healthy(port), None, "no registration yet");

    // Bad bodies: 400 with every bad field named; nothing recorded.
    for (body, fields) in [
        (
            r#"{"bff_url":"http://bff.w-acme.sgp-1.cogrion.com","public_ip":"300.1.2.3"}"#,
            vec!["bff_url", "public_ip"],
        ),
        (
            r#"{"url":"https://bff.example.com"}"#,
            vec!["bff_url", "public_ip"],
        ),
        (
            r#"{"bff_url":"https://bff.w-acme.sgp-1.cogrion.com","public_ip":""}"#,
            vec!["public_ip"],
        ),
        ("not json", vec!["body"]),
    ] {
        let (status, answer) = register(port, &bff, body);
        assert_eq!(status, 400, "{body}: {answer}");
        let named: Vec<&str> = answer["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert_eq!(named, fields, "{body}: {answer}");
        for f in fields {
            assert!(
                answer["error"].as_str().unwrap_or_default().contains(f),
                "{answer}"
            );
        }
    }
    assert_eq!(
        bff_healthy(port),
        None,
        "a refused registration records nothing"
    );

    // A registration marks the BFF healthy, with its address and time.
    let (status, answer) = register(port, &bff, GOOD);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["public_ip"], "203.0.113.7");
    let c = bff_healthy(port).expect("BffHealthy");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&"True".into(), &"Registered".into()),
        "{c}"
    );
    let message = c["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("https://bff.w-acme.sgp-1.cogrion.com")
            && message.contains("203.0.113.7")
            && message.contains(" at 20")
            && message.contains("after 2s"),
        "{message}"
    );
    let config = http(
        port,
        "GET",
        "/api/workspaces/acme/config",
        &[("Authorization", format!("Bearer {bff}"))],
        b"",
    );
    assert!(
        config
            .1
            .contains(r#""registered_url":"https://bff.w-acme.sgp-1.cogrion.com""#),
        "{config:?}"
    );

    // Registering again within the TTL keeps it healthy well past one TTL.
    let first = Instant::now();
    while first.elapsed() < TTL + TTL / 2 {
        std::thread::sleep(TTL / 3);
        assert_eq!(register(port, &bff, GOOD).0, 200);
        assert_eq!(bff_healthy(port).expect("BffHealthy")["status"], "True");
    }

    // It stops: the condition turns False once the TTL has passed, not before.
    let last = Instant::now();
    assert_eq!(register(port, &bff, GOOD).0, 200);
    wait_up_to("BffHealthy=False", Duration::from_secs(10), || {
        bff_healthy(port).is_some_and(|c| c["status"] == "False")
    });
    assert!(last.elapsed() >= TTL, "expired after {:?}", last.elapsed());
    let c = bff_healthy(port).expect("BffHealthy");
    assert_eq!(c["reason"], "RegistrationExpired", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no registration since 20"),
        "{c}"
    );

    // A BFF that comes back is healthy again at once.
    assert_eq!(register(port, &bff, GOOD).0, 200);
    assert_eq!(bff_healthy(port).expect("BffHealthy")["status"], "True");
}
