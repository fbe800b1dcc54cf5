//! Steps 8 and 9 end to end: `cplane apply --cloud aws` (the real binary) against moto (AWS,
//! DynamoDB as the lookup sink), the test Keycloak and the recording Workers KV server, on
//! SQLite. Every step 1–9 exactly once, a second run changing nothing, drift restored, a bad
//! admin secret refused clearly, and 30 % injected throttling on Keycloak and Workers KV
//! converging without duplicates.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use cplane_e2e::cloudflare_kv::KvServer;
use cplane_e2e::keycloak::KeycloakServer;
use cplane_e2e::moto::Moto;
use cplane_e2e::pg::sqlite_url;
use cplane_reconciler::aws::{Aws, Target};

const SECRET_VAR: &str = "CPLANE_TEST_KEYCLOAK_SECRET";
const TOKEN_VAR: &str = "CPLANE_TEST_KV_TOKEN";
const TABLE: &str = "tenant-region-map";

const IDS: [(&str, &str); 3] = [
    ("acme", "w-acme.sgp-1.cogrion.com"),
    ("globex", "w-globex.sgp-1.cogrion.com"),
    ("initech", "w-initech.dev.sgp-1.cogrion.com"),
];

/// The template with `config` appended to cplane.yaml's spec.
fn repo_with(config: &str) -> tempfile::TempDir {
    let repo = cplane_e2e::template_repo();
    let path = repo.path().join("cplane.yaml");
    let mut text = std::fs::read_to_string(&path).expect("cplane.yaml");
    text.push_str(config);
    std::fs::write(&path, text).expect("write");
    cplane_e2e::commit_all(repo.path(), "configure steps 8 and 9");
    repo
}

fn keycloak_config(url: &str) -> String {
    format!(
        "  keycloak:\n    url: {url}\n    adminClientId: cplane\n    adminClientSecret:\n      env: {SECRET_VAR}\n"
    )
}

fn apply_cmd(repo: &str, db: &str, endpoint: &str, secret: &str) -> Command {
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args(["apply", "--repo", repo, "--database", db, "--cloud", "aws"]);
    for (k, v) in Moto::env(endpoint) {
        cmd.env(k, v);
    }
    cmd.env(SECRET_VAR, secret).env(TOKEN_VAR, "kv-token");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Applies until exit 0; exit 4 (converging) is retried, and with `tolerate_failures` so is
/// exit 1 (a step that failed after its retries: the next run picks it up).
fn apply_until_converged(cmd: impl Fn() -> Command, tolerate_failures: bool) -> Vec<Output> {
    let started = Instant::now();
    let mut runs = Vec::new();
    loop {
        let out = cmd().output().expect("run cplane apply");
        let code = out.status.code();
        runs.push(out);
        match code {
            Some(0) => return runs,
            Some(4) => std::thread::sleep(Duration::from_millis(700)),
            Some(1) if tolerate_failures => {}
            _ => panic!("apply failed: {}", text(runs.last().expect("run"))),
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no convergence: {}",
            text(runs.last().expect("run"))
        );
    }
}

async fn setup_aws(endpoint: &str) -> (Aws, aws_sdk_dynamodb::Client) {
    let conf = Moto::sdk_config(endpoint).await;
    let aws = Aws::from_sdk_config(conf.clone());
    aws.create_zone(Target::Operator, "sgp-1.cogrion.com", "operator-parent")
        .await
        .expect("parent zone");
    let dynamo = aws_sdk_dynamodb::Client::new(&conf);
    dynamo
        .create_table()
        .table_name(TABLE)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("tenant_id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("tenant_id")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
    (aws, dynamo)
}

async fn items(dynamo: &aws_sdk_dynamodb::Client) -> Vec<(String, String, String)> {
    let out = dynamo.scan().table_name(TABLE).send().await.expect("scan");
    let mut rows: Vec<_> = out
        .items()
        .iter()
        .map(|i| {
            let s = |k: &str| match i.get(k) {
                Some(AttributeValue::S(v)) => v.clone(),
                _ => String::new(),
            };
            (s("tenant_id"), s("region"), s("bff_url"))
        })
        .collect();
    rows.sort();
    rows
}

/// One client per workspace with its redirect URIs, enabled.
fn assert_clients_once(kc: &KeycloakServer, what: &str) {
    assert_eq!(kc.clients("cogrion").len(), IDS.len(), "{what}");
    for (id, zone) in IDS {
        let named = kc.clients_named("cogrion", &format!("w-{id}"));
        assert_eq!(named.len(), 1, "{what}: one client w-{id}");
        assert_eq!(
            named[0]["redirectUris"],
            serde_json::json!([format!("https://*.{zone}/*")]),
            "{what}"
        );
        assert_eq!(named[0]["enabled"], true, "{what}");
        assert_eq!(named[0]["publicClient"], true, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_runs_steps_8_and_9_once_changes_nothing_then_restores_drift() {
    let moto = Moto::start();
    let (_aws, dynamo) = setup_aws(&moto.endpoint).await;
    let kc = KeycloakServer::start();
    kc.add_realm("cogrion", "cplane", "s3cret");
    let repo = repo_with(&format!(
        "{}  tenantLookup:\n    dynamodb:\n      table: {TABLE}\n",
        keycloak_config(&kc.url)
    ));
    let repo_path = repo.path().to_str().expect("utf-8");
    let (_dir, db) = sqlite_url();

    // A wrong admin secret: step 9 fails and says why, never with the secret.
    let bad = loop {
        let out = apply_cmd(repo_path, &db, &moto.endpoint, "not-the-secret")
            .output()
            .expect("run");
        if out.status.code() != Some(4) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(700));
    };
    let out = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    assert!(
        out.contains("the admin client `cplane` or its secret is not accepted"),
        "{out}"
    );
    assert!(!out.contains("not-the-secret"), "{out}");
    assert!(kc.clients("cogrion").is_empty());

    let runs = apply_until_converged(
        || apply_cmd(repo_path, &db, &moto.endpoint, "s3cret"),
        false,
    );
    // Step 8 was done before step 9 failed; step 9 now follows.
    let all: String = [&bad].into_iter().chain(&runs).map(text).collect();
    assert!(
        all.contains(
            "acme: + dynamodb lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com ... done"
        ),
        "{all}"
    );
    assert!(
        all.contains("acme: + keycloak client w-acme in realm cogrion ... done"),
        "{all}"
    );
    assert_clients_once(&kc, "provisioned");
    assert_eq!(
        items(&dynamo).await,
        IDS.iter()
            .map(|(id, zone)| (
                format!("w-{id}"),
                "sgp-1".to_owned(),
                format!("https://bff.{zone}")
            ))
            .collect::<Vec<_>>()
    );

    // A second run changes nothing: no step, no write to Keycloak.
    kc.clear_log();
    let again = apply_cmd(repo_path, &db, &moto.endpoint, "s3cret")
        .output()
        .expect("run");
    let out = text(&again);
    assert_eq!(again.status.code(), Some(0), "{out}");
    assert!(out.contains("Apply: converged (0 steps"), "{out}");
    let writes: Vec<String> = kc
        .log()
        .into_iter()
        .filter(|l| !l.starts_with("GET ") && !l.contains("/token"))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(
        kc.count("GET", "/clients"),
        1,
        "one listing of the realm: {:?}",
        kc.log()
    );

    // Drift: a client deleted, one edited, a lookup item deleted.
    assert!(kc.remove_client("cogrion", "w-acme"));
    assert!(kc.edit_client(
        "cogrion",
        "w-globex",
        "redirectUris",
        serde_json::json!(["https://attacker.example/*"])
    ));
    dynamo
        .delete_item()
        .table_name(TABLE)
        .key("tenant_id", AttributeValue::S("w-initech".into()))
        .send()
        .await
        .expect("delete item");
    let repair = apply_cmd(repo_path, &db, &moto.endpoint, "s3cret")
        .output()
        .expect("run");
    let out = text(&repair);
    assert_eq!(repair.status.code(), Some(0), "{out}");
    for line in [
        "acme: ~ keycloak client w-acme in realm cogrion (drift: restore) ... done",
        "globex: ~ keycloak client w-globex in realm cogrion (drift: restore) ... done",
        "initech: ~ dynamodb lookup entry -> sgp-1 https://bff.w-initech.dev.sgp-1.cogrion.com (drift: restore) ... done",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert_clients_once(&kc, "repaired");
    assert_eq!(items(&dynamo).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_throttling_on_keycloak_and_workers_kv_converges_without_duplicates() {
    let moto = Moto::start();
    let _ = setup_aws(&moto.endpoint).await;
    let kc = KeycloakServer::start();
    kc.add_realm("cogrion", "cplane", "s3cret");
    let kv = KvServer::start("acct1", "ns1", "kv-token");
    kc.faults().set_percent(30);
    kv.faults().set_percent(30);
    let repo = repo_with(&format!(
        "{}  tenantLookup:\n    cloudflareKv:\n      accountId: acct1\n      namespaceId: ns1\n      apiToken:\n        env: {TOKEN_VAR}\n      apiUrl: {}\n",
        keycloak_config(&kc.url),
        kv.api_url
    ));
    let repo_path = repo.path().to_str().expect("utf-8");
    let (_dir, db) = sqlite_url();

    let runs = apply_until_converged(|| apply_cmd(repo_path, &db, &moto.endpoint, "s3cret"), true);
    eprintln!(
        "{} runs; faults injected: keycloak {}, kv {}",
        runs.len(),
        kc.faults().injected(),
        kv.faults().injected()
    );
    assert!(kc.faults().injected() > 0 && kv.faults().injected() > 0);
    assert_clients_once(&kc, "throttled");
    assert_eq!(
        kc.count("POST", "/clients"),
        3,
        "each client created once: {:?}",
        kc.log()
    );
    let values = kv.values();
    assert_eq!(values.len(), 3, "{values:?}");
    let acme: serde_json::Value = serde_json::from_str(&values["w-acme"]).expect("a JSON value");
    assert_eq!(
        acme,
        serde_json::json!({"region": "sgp-1", "bff_url": "https://bff.w-acme.sgp-1.cogrion.com"})
    );

    // Still throttled, a further run finds nothing to do and writes nothing.
    kc.clear_log();
    kv.clear_log();
    let again = apply_until_converged(|| apply_cmd(repo_path, &db, &moto.endpoint, "s3cret"), true);
    let last = text(again.last().expect("run"));
    assert!(last.contains("Apply: converged (0 steps"), "{last}");
    assert_eq!(kv.count("PUT", "values/"), 0, "{:?}", kv.log());
    assert_eq!(kc.count("POST", "/clients"), 0);
    assert!(
        kv.count("POST", "bulk/get") >= 1,
        "the drift check read the sink in a batch"
    );
}

/// `GET /lookup/w-{id}` of `cplane serve` answers for every region when the global map can be
/// read: this region's workspaces from its own table, another region's from the DynamoDB sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_answers_other_regions_workspaces_from_the_global_map() {
    use cplane_e2e::serve::{http, wait_for, Serve};
    let moto = Moto::start();
    let (_aws, dynamo) = setup_aws(&moto.endpoint).await;
    // fra-1's control plane wrote its workspace into the global map.
    dynamo
        .put_item()
        .table_name(TABLE)
        .item("tenant_id", AttributeValue::S("w-faraway".into()))
        .item("region", AttributeValue::S("fra-1".into()))
        .item(
            "bff_url",
            AttributeValue::S("https://bff.w-faraway.fra-1.cogrion.com".into()),
        )
        .send()
        .await
        .expect("put");
    let repo = repo_with(&format!(
        "  tenantLookup:\n    dynamodb:\n      table: {TABLE}\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = dir.path().join("state.git");
    let cloned = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(&remote)
        .status()
        .expect("git clone");
    assert!(cloned.success());
    let mut serve = Serve::new(dir.path())
        .state_repo(&remote)
        .args(["--cloud", "aws"]);
    for (k, v) in Moto::env(&moto.endpoint) {
        serve = serve.env(k, &v);
    }
    let server = serve.spawn();
    let port = server.port;
    wait_for("the first run", || {
        http(port, "GET", "/readyz", &[], b"").0 == 200
    });
    let (status, body) = http(port, "GET", "/lookup/w-faraway", &[], b"");
    assert_eq!(status, 200, "{body}");
    let found: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        found,
        serde_json::json!({"region": "fra-1", "bff_url": "https://bff.w-faraway.fra-1.cogrion.com"})
    );
    let (status, body) = http(port, "GET", "/lookup/w-nobody", &[], b"");
    assert_eq!(status, 404, "{body}");
    // The sink gone: another region's workspace cannot be answered, and says why.
    drop(moto);
    let (status, body) = http(port, "GET", "/lookup/w-faraway", &[], b"");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the global lookup (dynamodb) cannot be read"),
        "{body}"
    );
}
