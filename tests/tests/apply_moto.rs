//! `cplane apply --cloud aws` end to end: the real binary, moto behind our fault proxy, and
//! PostgreSQL (a database per test) or SQLite. Provisioning, idempotence, drift repair, and
//! crash safety (SIGKILL at every mutating AWS call in turn).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cplane_e2e::fault_proxy::FaultProxy;
use cplane_e2e::moto::Moto;
use cplane_e2e::pg::{sqlite_url, PgDatabase};
use cplane_reconciler::aws::{Aws, Target};
use sqlx::Row;

/// The template's workspaces and their tenant accounts.
const WORKSPACES: [(&str, &str, &str); 3] = [
    ("acme", "111111111111", "w-acme.sgp-1.cogrion.com"),
    ("globex", "222222222222", "w-globex.sgp-1.cogrion.com"),
    ("initech", "333333333333", "w-initech.dev.sgp-1.cogrion.com"),
];

fn tenant(account: &str) -> (String, &'static str) {
    (
        format!("arn:aws:iam::{account}:role/cogrion-provisioner"),
        "any",
    )
}

fn apply_cmd(repo: &str, db: &str, endpoint: &str) -> Command {
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args(["apply", "--repo", repo, "--database", db, "--cloud", "aws"]);
    for (k, v) in Moto::env(endpoint) {
        cmd.env(k, v);
    }
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

/// Runs `cplane apply` until it converges (exit 0); exit 4 (waiting for certificate
/// validation) is retried after a short pause, anything else fails the test.
fn apply_until_converged(repo: &str, db: &str, endpoint: &str) -> Vec<Output> {
    let started = Instant::now();
    let mut runs = Vec::new();
    loop {
        let out = apply_cmd(repo, db, endpoint)
            .output()
            .expect("run cplane apply");
        let code = out.status.code();
        runs.push(out);
        match code {
            Some(0) => return runs,
            Some(4) => std::thread::sleep(Duration::from_millis(700)),
            _ => panic!("apply failed: {}", text(runs.last().expect("run"))),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no convergence: {}",
            text(runs.last().expect("run"))
        );
    }
}

/// The platform's precondition: the region's parent zone exists in the operator account.
async fn parent_zone(aws: &Aws) -> String {
    aws.create_zone(Target::Operator, "sgp-1.cogrion.com", "operator-parent")
        .await
        .expect("parent zone")
        .id
}

/// Exactly one zone, one certificate and one delegation per workspace, in the right accounts.
async fn assert_provisioned_once(aws: &Aws, parent: &str) {
    let records = aws
        .list_records(Target::Operator, parent)
        .await
        .expect("parent records");
    for (id, account, zone) in WORKSPACES {
        let (role, ext) = tenant(account);
        let t = Target::Tenant {
            role_arn: &role,
            external_id: ext,
            aws_region: "ap-southeast-1",
        };
        let zones = aws.zones_by_name(t, zone).await.expect("zones");
        assert_eq!(
            zones.len(),
            1,
            "{id}: exactly one zone in account {account}: {zones:?}"
        );
        assert!(
            aws.zones_by_name(Target::Operator, zone)
                .await
                .expect("zones")
                .is_empty(),
            "{id}: no zone in the operator account"
        );
        let delegations: Vec<_> = records
            .iter()
            .filter(|r| r.name == zone && r.rtype == "NS")
            .collect();
        assert_eq!(delegations.len(), 1, "{id}: one delegation");
        let zone_ns = aws
            .zone_by_caller_reference(t, zone, &zones[0].caller_reference)
            .await
            .expect("zone")
            .expect("zone")
            .name_servers;
        assert_eq!(
            delegations[0].values, zone_ns,
            "{id}: delegation points at the zone's name servers"
        );
        let cert = aws
            .find_certificate(
                t,
                &format!("*.{zone}"),
                ("cplane:workspace", &format!("w-{id}/g1")),
            )
            .await
            .expect("find")
            .expect("certificate");
        assert_eq!(cert.status, "ISSUED");
        assert!(
            cert.arn.starts_with(&format!("arn:aws:acm:ap-southeast-1:{account}:")),
            "{id}: certificate in the tenant account and in sgp-1's AWS region, never the process's us-east-1: {}",
            cert.arn
        );
        assert!(
            cert.arn.contains(account),
            "{id}: certificate in the tenant account"
        );
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    sqlx::query(sql)
        .fetch_one(&pool)
        .await
        .expect("query")
        .try_get::<i64, _>(0)
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_provisions_every_workspace_then_changes_nothing_and_repairs_drift() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let aws = Aws::from_sdk_config(Moto::sdk_config(&moto.endpoint).await);
    let parent = parent_zone(&aws).await;
    let pg = PgDatabase::create().await;
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");

    let runs = apply_until_converged(repo_path, &pg.url, &proxy.url);
    let first = text(&runs[0]);
    assert!(
        first.contains(
            "acme: + route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) ... done"
        ),
        "{first}"
    );
    assert_provisioned_once(&aws, &parent).await;
    assert_eq!(
        count(
            &pg.url,
            "SELECT COUNT(*) FROM tenants WHERE status = 'active'"
        )
        .await,
        3
    );
    assert_eq!(
        count(&pg.url, "SELECT COUNT(*) FROM tenant_lookup").await,
        3
    );
    assert_eq!(
        count(
            &pg.url,
            "SELECT COUNT(*) FROM workspaces WHERE status = 'active'"
        )
        .await,
        3
    );
    let calls = proxy.total();
    eprintln!(
        "AWS calls to provision 3 workspaces over {} runs: {calls} {:?}",
        runs.len(),
        proxy.counts()
    );
    assert!(
        calls <= 3 * 12 + 3 * runs.len() as u64,
        "calls per provisioned workspace: {calls} in all"
    );

    // A second run changes nothing: no mutating call, no step.
    proxy.reset_counts();
    let before = proxy.mutations();
    let again = apply_cmd(repo_path, &pg.url, &proxy.url)
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("Apply: converged (0 steps"),
        "{}",
        text(&again)
    );
    assert_eq!(proxy.mutations(), before, "no writes");
    let reads = proxy.total();
    assert!(
        reads <= WORKSPACES.len() as u64 / 100 + 5,
        "no-op drift check of 3 workspaces used {reads} reads: {:?}",
        proxy.counts()
    );

    // Drift: a deleted delegation and a hand-edited tenants row are repaired and reported.
    let acme_ns: Vec<_> = aws
        .list_records(Target::Operator, &parent)
        .await
        .expect("records")
        .into_iter()
        .filter(|r| r.name == "w-acme.sgp-1.cogrion.com" && r.rtype == "NS")
        .collect();
    aws.delete_records(Target::Operator, &parent, &acme_ns)
        .await
        .expect("delete delegation");
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&pg.url).await.expect("connect");
        sqlx::query("UPDATE tenants SET status = 'suspended' WHERE workspace_id = 'w-globex'")
            .execute(&pool)
            .await
            .expect("edit");
    }
    let repair = apply_cmd(repo_path, &pg.url, &proxy.url)
        .output()
        .expect("run");
    let out = text(&repair);
    assert_eq!(repair.status.code(), Some(0), "{out}");
    assert!(out.contains("acme: ~ route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (drift: restore) ... done"), "{out}");
    assert!(
        out.contains("globex: ~ db tenants row w-globex (status active) ... done"),
        "{out}"
    );
    assert_provisioned_once(&aws, &parent).await;
    assert_eq!(
        count(
            &pg.url,
            "SELECT COUNT(*) FROM tenants WHERE status = 'active'"
        )
        .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_mutating_call_never_duplicates_or_loses_anything() {
    // 3 workspaces x (zone, delegation, certificate, validation record) = 12 mutating calls.
    for n in 1..=12u64 {
        let moto = Moto::start();
        let proxy = FaultProxy::start(&moto.endpoint).await;
        let aws = Aws::from_sdk_config(Moto::sdk_config(&moto.endpoint).await);
        let parent = parent_zone(&aws).await;
        let (_dir, db) = sqlite_url();
        let repo = cplane_e2e::template_repo();
        let repo_path = repo.path().to_str().expect("utf-8");

        // The n-th mutating call is executed by moto, then its answer is swallowed and the
        // process killed: the journal says `started`, the cloud says done.
        proxy.swallow_mutation(n);
        let mut child = apply_cmd(repo_path, &db, &proxy.url)
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        while !proxy.swallowed() {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("apply exited ({status}) before mutating call {n}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "mutating call {n} never came"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        proxy.swallow_mutation(0);
        apply_until_converged(repo_path, &db, &proxy.url);
        assert_provisioned_once(&aws, &parent).await;
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM tenants WHERE status = 'active'").await,
            3,
            "kill at call {n}"
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM tenant_lookup").await,
            3,
            "kill at call {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_workspaces_deprovisions_delete_and_keeps_retain_without_its_delegation() {
    let moto = Moto::start();
    let aws = Aws::from_sdk_config(Moto::sdk_config(&moto.endpoint).await);
    let parent = parent_zone(&aws).await;
    let (_dir, db) = sqlite_url();
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");
    apply_until_converged(repo_path, &db, &moto.endpoint);

    // initech has deletionPolicy: Delete, acme Retain.
    std::fs::remove_file(repo.path().join("workspaces/initech.yaml")).expect("rm");
    std::fs::remove_file(repo.path().join("workspaces/acme.yaml")).expect("rm");
    cplane_e2e::commit_all(repo.path(), "offboard initech and acme");
    let runs = apply_until_converged(repo_path, &db, &moto.endpoint);
    let out = text(&runs[0]);
    let order: Vec<usize> = [
        "initech: - route53 NS w-initech.dev.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) ... done",
        "initech: - acm certificate *.w-initech.dev.sgp-1.cogrion.com (tenant account) ... done",
        "initech: - route53 validation CNAMEs in w-initech.dev.sgp-1.cogrion.com ... done",
        "initech: - route53 hosted zone w-initech.dev.sgp-1.cogrion.com (tenant account) ... done",
    ]
    .iter()
    .map(|line| out.find(line).unwrap_or_else(|| panic!("missing `{line}` in:\n{out}")))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "delegation first, then certificate, records, zone:\n{out}"
    );

    let (role, ext) = tenant("333333333333");
    let initech = Target::Tenant {
        role_arn: &role,
        external_id: ext,
        aws_region: "ap-southeast-1",
    };
    assert!(aws
        .zones_by_name(initech, "w-initech.dev.sgp-1.cogrion.com")
        .await
        .expect("zones")
        .is_empty());
    assert_eq!(
        aws.find_certificate(
            initech,
            "*.w-initech.dev.sgp-1.cogrion.com",
            ("cplane:workspace", "w-initech/g1")
        )
        .await
        .expect("find"),
        None
    );
    let records = aws
        .list_records(Target::Operator, &parent)
        .await
        .expect("records");
    assert!(
        !records
            .iter()
            .any(|r| r.name == "w-initech.dev.sgp-1.cogrion.com"),
        "no dangling delegation"
    );
    // Retain: acme's zone and certificate stay in its account; its delegation in the operator's
    // parent zone goes whatever the policy (a dangling delegation is a takeover risk).
    let (role, ext) = tenant("111111111111");
    let acme = Target::Tenant {
        role_arn: &role,
        external_id: ext,
        aws_region: "ap-southeast-1",
    };
    assert_eq!(
        aws.zones_by_name(acme, "w-acme.sgp-1.cogrion.com")
            .await
            .expect("zones")
            .len(),
        1
    );
    assert!(
        !records.iter().any(|r| r.name == "w-acme.sgp-1.cogrion.com"),
        "no delegation of the retained workspace"
    );
    assert!(
        out.contains("acme: - route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (operator account) ... done"),
        "{out}"
    );
    assert_eq!(
        aws.find_certificate(
            acme,
            "*.w-acme.sgp-1.cogrion.com",
            ("cplane:workspace", "w-acme/g1")
        )
        .await
        .expect("find")
        .map(|c| c.status)
        .as_deref(),
        Some("ISSUED"),
        "the retained certificate stays"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM tenants WHERE status = 'deleted' AND workspace_id = 'w-initech'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM tenants WHERE status = 'retained' AND workspace_id = 'w-acme'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM tenant_lookup").await,
        1,
        "only globex is still routed"
    );
}

/// 30 % of AWS calls throttled (or a 500) before they reach moto: the SDK's retries and the
/// journal absorb it, and every workspace is provisioned exactly once. A run whose step ran
/// out of retries exits 1; the next run picks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_throttling_converges_without_duplicates() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let aws = Aws::from_sdk_config(Moto::sdk_config(&moto.endpoint).await);
    let parent = parent_zone(&aws).await;
    let (_dir, db) = sqlite_url();
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");
    proxy.throttle_percent(30);
    let started = Instant::now();
    let mut runs = 0;
    loop {
        runs += 1;
        let out = apply_cmd(repo_path, &db, &proxy.url)
            .output()
            .expect("run cplane apply");
        match out.status.code() {
            Some(0) => break,
            Some(1 | 4) => std::thread::sleep(Duration::from_millis(500)),
            _ => panic!("apply failed: {}", text(&out)),
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no convergence in {runs} runs: {}",
            text(&out)
        );
    }
    let (throttled, total) = (proxy.throttled(), proxy.total());
    assert!(
        throttled > 0 && throttled * 100 >= total * 15,
        "about 30 % of the calls were throttled: {throttled} of {total}"
    );
    proxy.throttle_percent(0);
    assert_provisioned_once(&aws, &parent).await;
    let again = apply_cmd(repo_path, &db, &proxy.url).output().expect("run");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    eprintln!("converged in {runs} runs, {throttled} of {total} calls throttled");
}
