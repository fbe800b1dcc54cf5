//! The primary region owns `tenants` (reference doc 001, "Database Strategy"; issue 14 item 3),
//! end to end with two `cplane serve` processes of one platform and two databases: sgp-1 (the
//! template's `primaryRegion`) on PostgreSQL, fra-1 on SQLite, following one state repo.
//!
//! - fra-1's workspace gets its `tenants` row in sgp-1's database, none in fra-1's own; sgp-1's
//!   own rows are written locally.
//! - Removing the workspace records it there (`status: deleted`, deletionPolicy Delete).
//! - `/internal/tenants` refuses a wrong or missing token (401), and a region that is not the
//!   primary answers 421.
//! - sgp-1 down: fra-1's run is converging and says why; sgp-1 back: it converges, the row
//!   written where it belongs.

use std::time::Duration;

use cplane_e2e::http::Request;
use cplane_e2e::serve::{http, push, wait_for, wait_up_to, webhook, Serve, SECRET};
use cplane_reconciler::db::Db;
use cplane_reconciler::plan::TenantRow;
use cplane_reconciler::tenants::Filter;
use serde_json::Value;

/// The inter-region shared secret both regions are given.
const TOKEN: &str = "inter-region-secret-for-tests";

/// A workspace of fra-1 named `id`, from the template's `acme`.
fn fra_workspace(work: &std::path::Path, id: &str) {
    let acme = std::fs::read_to_string(work.join("workspaces/acme.yaml")).expect("acme");
    let ws = acme
        .replace("name: acme\n", &format!("name: {id}\n"))
        .replace("region: sgp-1", "region: fra-1")
        .replace("account: acme-corp", &format!("account: {id}-gmbh"))
        .replace(
            "externalId: acme-7f3c2a9e",
            &format!("externalId: {id}-1b2c3d4e"),
        )
        .replace("deletionPolicy: Retain", "deletionPolicy: Delete");
    std::fs::write(work.join(format!("workspaces/{id}.yaml")), ws).expect("write workspace");
}

/// `GET /internal/tenants?{query}` on `port` with `token`: (status, body).
fn internal(port: u16, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = Request::get(port, &format!("/internal/tenants?{query}"));
    if let Some(t) = token {
        req = req.bearer(t);
    }
    let r = req.send().expect("GET /internal/tenants");
    (
        r.status,
        serde_json::from_str(&r.text()).unwrap_or_default(),
    )
}

/// The rows of a database's own `tenants` table.
fn own_rows(rt: &tokio::runtime::Runtime, url: &str) -> Vec<TenantRow> {
    rt.block_on(async {
        let db = Db::connect(url).await.expect("connect");
        db.tenants_page(&Filter::Regions(Vec::new()), "", 1000)
            .await
            .expect("tenants rows")
    })
}

fn row_of<'a>(rows: &'a [TenantRow], name: &str) -> Option<&'a TenantRow> {
    rows.iter().find(|r| r.workspace_id == name)
}

/// `/v1/status`'s last run: (commit, outcome).
fn last_run(port: u16) -> (String, String) {
    let v: Value =
        serde_json::from_str(&http(port, "GET", "/v1/status", &[], b"").1).unwrap_or_default();
    let s = |k: &str| v["last_run"][k].as_str().unwrap_or_default().to_owned();
    (s("commit"), s("outcome"))
}

#[test]
fn a_secondary_region_keeps_its_tenant_rows_in_the_primary() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        d
    };
    let primary_args = [
        "--insecure-open-read",
        "--region",
        "sgp-1",
        "--webhook-secret",
        SECRET,
    ];
    let primary = Serve::new(&dir("sgp-1"))
        .database(&pg.url)
        .args(primary_args)
        .env("INTER_REGION_SERVICE_TOKEN", TOKEN)
        .stderr_to(&tmp.path().join("sgp-1.log"))
        .start();
    let (primary_port, remote, branch) =
        (primary.port, primary.remote.clone(), primary.branch.clone());

    // The platform opens fra-1 with a workspace there; fra-1's control plane follows the
    // same state repo with the primary's URL and the shared secret.
    let work = primary.work.clone();
    let fra = std::fs::read_to_string(work.join("regions/fra-1.yaml")).expect("fra-1");
    std::fs::write(
        work.join("regions/fra-1.yaml"),
        fra.replace("status: planned", "status: live"),
    )
    .expect("write fra-1");
    fra_workspace(&work, "hans");
    cplane_e2e::commit_all(&work, "Open fra-1 with hans");
    push(&work, &branch);
    let secondary = Serve::new(&dir("fra-1"))
        .state_repo(&remote)
        .args([
            "--insecure-open-read",
            "--region",
            "fra-1",
            "--webhook-secret",
            SECRET,
        ])
        .env(
            "PRIMARY_CPLANE_API_URL",
            &format!("http://127.0.0.1:{primary_port}"),
        )
        .env("INTER_REGION_SERVICE_TOKEN", TOKEN)
        .stderr_to(&tmp.path().join("fra-1.log"))
        .spawn();
    let port = secondary.port;
    wait_for("fra-1 to provision hans", || {
        http(port, "GET", "/lookup/w-hans", &[], b"").0 == 200
    });

    // hans's row is in the primary's database, and none in fra-1's; sgp-1's own rows are
    // the primary's local writes.
    let rows = own_rows(&rt, &pg.url);
    let hans = row_of(&rows, "w-hans").expect("w-hans in the primary's tenants");
    assert_eq!(
        (hans.region.as_str(), hans.status.as_str()),
        ("fra-1", "active")
    );
    assert_eq!(hans.delegated_zone, "w-hans.fra-1.cogrion.com");
    assert_eq!(
        row_of(&rows, "w-acme").map(|r| r.region.as_str()),
        Some("sgp-1")
    );
    assert_eq!(own_rows(&rt, &secondary.database), vec![]);
    let (status, page) = internal(primary_port, "region=fra-1", Some(TOKEN));
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["tenants"]
            .as_array()
            .map(|t| t.iter().map(|r| r["workspace_id"].clone()).collect()),
        Some(vec![Value::from("w-hans")]),
        "{page}"
    );
    assert_eq!(page["next"], Value::Null);

    // The internal API takes the shared secret only; fra-1's is not the primary's.
    let row = serde_json::to_vec(hans).expect("row");
    for token in [None, Some("not-the-secret"), Some("")] {
        assert_eq!(internal(primary_port, "region=fra-1", token).0, 401);
        let mut put = Request::new(primary_port, "PUT", "/internal/tenants/w-hans")
            .header("Content-Type", "application/json")
            .body(row.clone());
        if let Some(t) = token {
            put = put.bearer(t);
        }
        assert_eq!(put.send().expect("PUT").status, 401, "{token:?}");
    }
    assert_eq!(internal(port, "region=fra-1", Some(TOKEN)).0, 421);
    let (status, body) = internal(primary_port, "limit=0", Some(TOKEN));
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (400, &"limit".into())
    );
    let bad = Request::new(primary_port, "PUT", "/internal/tenants/w-hans")
        .bearer(TOKEN)
        .header("Content-Type", "application/json")
        .body(r#"{"workspace_id":"w-other","region":"fra-1","delegated_zone":"z","status":"gone","bff_url":"https://b"}"#)
        .send()
        .expect("PUT");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("workspace_id") && bad.text().contains("status"),
        "{}",
        bad.text()
    );
    assert_eq!(own_rows(&rt, &pg.url), rows, "refused calls change nothing");

    // Removing hans records it in the primary's row.
    std::fs::remove_file(work.join("workspaces/hans.yaml")).expect("rm hans");
    cplane_e2e::commit_all(&work, "Remove hans");
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "remove-hans").0, 202);
    wait_for("hans's row to say deleted", || {
        row_of(&own_rows(&rt, &pg.url), "w-hans").map(|r| r.status.clone())
            == Some("deleted".into())
    });
    wait_for("hans out of fra-1's lookup", || {
        http(port, "GET", "/lookup/w-hans", &[], b"").0 == 404
    });

    // The primary goes down: a new fra-1 workspace waits for it, and says why.
    drop(primary);
    fra_workspace(&work, "lena");
    let add = cplane_e2e::commit_all(&work, "Add lena");
    push(&work, &branch);
    assert_eq!(webhook(port, &branch, "add-lena").0, 202);
    wait_for("the run adding lena to be converging", || {
        last_run(port) == (add.clone(), "converging".into())
    });
    let lena: Value =
        serde_json::from_str(&http(port, "GET", "/v1/workspaces/lena", &[], b"").1).expect("lena");
    let ready = lena["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or_else(|| panic!("Ready in {lena}"));
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&"False".into(), &"Waiting".into()),
        "{ready}"
    );
    let why = ready["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("db tenants row w-lena")
            && why.contains(&format!(
                "the primary region (http://127.0.0.1:{primary_port}) is unreachable"
            ))
            && why.contains("retried on the next run"),
        "{why}"
    );
    assert!(!why.contains(TOKEN), "{why}");
    assert_eq!(http(port, "GET", "/lookup/w-lena", &[], b"").0, 404);
    assert_eq!(own_rows(&rt, &secondary.database), vec![]);

    // The primary comes back (same address, same database): the requeued run converges.
    let _primary = Serve::new(&dir("sgp-1-again"))
        .state_repo(&remote)
        .database(&pg.url)
        .port(primary_port)
        .args(primary_args)
        .env("INTER_REGION_SERVICE_TOKEN", TOKEN)
        .start();
    wait_up_to("fra-1 to converge", Duration::from_secs(60), || {
        last_run(port).1 == "converged" && http(port, "GET", "/lookup/w-lena", &[], b"").0 == 200
    });
    let rows = own_rows(&rt, &pg.url);
    assert_eq!(
        row_of(&rows, "w-lena").map(|r| (r.region.as_str(), r.status.as_str())),
        Some(("fra-1", "active"))
    );
    assert_eq!(own_rows(&rt, &secondary.database), vec![]);
    let log = std::fs::read_to_string(tmp.path().join("fra-1.log")).unwrap_or_default();
    assert!(!log.contains(TOKEN), "the secret is never logged");
}
