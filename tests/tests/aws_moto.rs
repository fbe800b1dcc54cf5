//! The AWS adapter against moto's server (through our fault proxy where faults are needed).
//! Moto keeps accounts apart by the assumed role's account id, so placement is asserted.

use cplane_e2e::fault_proxy::{Fault, FaultProxy};
use cplane_e2e::moto::Moto;
use cplane_reconciler::aws::{Aws, Error, RecordSet, Target};

const ROLE: &str = "arn:aws:iam::111111111111:role/cogrion-provisioner";
const TENANT: Target<'static> = Target::Tenant {
    role_arn: ROLE,
    external_id: "acme-ext",
    aws_region: "ap-southeast-1",
};

async fn aws(endpoint: &str) -> Aws {
    Aws::from_sdk_config(Moto::sdk_config(endpoint).await)
}

#[tokio::test]
async fn zones_land_in_the_tenant_account_and_delegations_in_the_operator_account() {
    let moto = Moto::start();
    let aws = aws(&moto.endpoint).await;
    let zone = aws
        .create_zone(TENANT, "w-acme.sgp-1.cogrion.com", "ref-1")
        .await
        .expect("create");
    assert_eq!(zone.name, "w-acme.sgp-1.cogrion.com");
    assert!(!zone.name_servers.is_empty());
    assert_eq!(
        aws.zones_by_name(TENANT, "w-acme.sgp-1.cogrion.com")
            .await
            .expect("list")
            .len(),
        1
    );
    assert!(
        aws.zones_by_name(Target::Operator, "w-acme.sgp-1.cogrion.com")
            .await
            .expect("list")
            .is_empty(),
        "not in the operator account"
    );

    let parent = aws
        .create_zone(Target::Operator, "sgp-1.cogrion.com", "parent")
        .await
        .expect("parent");
    let ns = RecordSet {
        name: zone.name.clone(),
        rtype: "NS".into(),
        ttl: 300,
        values: zone.name_servers.clone(),
    };
    aws.upsert_records(Target::Operator, &parent.id, std::slice::from_ref(&ns))
        .await
        .expect("upsert");
    aws.upsert_records(Target::Operator, &parent.id, std::slice::from_ref(&ns))
        .await
        .expect("upsert is idempotent");
    let records = aws
        .list_records(Target::Operator, &parent.id)
        .await
        .expect("records");
    assert_eq!(
        records
            .iter()
            .filter(|r| r.name == zone.name && r.rtype == "NS")
            .collect::<Vec<_>>(),
        [&ns]
    );

    aws.delete_records(Target::Operator, &parent.id, std::slice::from_ref(&ns))
        .await
        .expect("delete");
    aws.delete_records(Target::Operator, &parent.id, std::slice::from_ref(&ns))
        .await
        .expect("deleting what is gone is fine");
    assert!(!aws
        .list_records(Target::Operator, &parent.id)
        .await
        .expect("records")
        .iter()
        .any(|r| r.name == zone.name));

    aws.delete_zone(TENANT, &zone.id)
        .await
        .expect("delete zone");
    aws.delete_zone(TENANT, &zone.id)
        .await
        .expect("already gone is fine");
    // One AssumeRole for the whole sequence: credentials are cached.
    assert_eq!(aws.calls("sts:AssumeRole", "ok"), 1);
}

#[tokio::test]
async fn zones_are_found_by_caller_reference_never_by_name_alone() {
    let moto = Moto::start();
    let aws = aws(&moto.endpoint).await;
    // Moto lets two zones share a name (real AWS does too, with different CallerReferences).
    let other = aws
        .create_zone(TENANT, "w-acme.sgp-1.cogrion.com", "someone-else")
        .await
        .expect("create");
    assert_eq!(
        aws.zone_by_caller_reference(TENANT, "w-acme.sgp-1.cogrion.com", "cplane/sgp-1/w-acme/g1")
            .await
            .expect("lookup"),
        None
    );
    let ours = aws
        .create_zone(TENANT, "w-acme.sgp-1.cogrion.com", "cplane/sgp-1/w-acme/g1")
        .await
        .expect("create");
    let found = aws
        .zone_by_caller_reference(TENANT, "w-acme.sgp-1.cogrion.com", "cplane/sgp-1/w-acme/g1")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.id, ours.id);
    assert_ne!(found.id, other.id);
    assert_eq!(found.name_servers, ours.name_servers);
}

#[tokio::test]
async fn certificates_are_idempotent_tagged_deduplicated_and_issue() {
    let moto = Moto::start();
    let aws = aws(&moto.endpoint).await;
    let domain = "*.w-acme.sgp-1.cogrion.com";
    let tags = [("cplane:workspace", "w-acme/g1")];
    let arn = aws
        .request_certificate(
            TENANT,
            domain,
            &["w-acme.sgp-1.cogrion.com"],
            "0123456789abcdef0123456789abcdef",
            &tags,
        )
        .await
        .expect("request");
    let again = aws
        .request_certificate(
            TENANT,
            domain,
            &["w-acme.sgp-1.cogrion.com"],
            "0123456789abcdef0123456789abcdef",
            &tags,
        )
        .await
        .expect("request");
    assert_eq!(arn, again, "same token, same certificate");
    assert!(
        arn.contains(":111111111111:"),
        "in the tenant account: {arn}"
    );
    let found = aws
        .find_certificate(TENANT, domain, ("cplane:workspace", "w-acme/g1"))
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.arn, arn);
    assert_eq!(
        aws.find_certificate(TENANT, domain, ("cplane:workspace", "w-acme/g2"))
            .await
            .expect("find"),
        None
    );
    let cert = aws
        .describe_certificate(TENANT, &arn)
        .await
        .expect("describe");
    let mut dedup = cert.validation_records.clone();
    dedup.dedup();
    assert_eq!(cert.validation_records, dedup);
    // MOTO_ACM_VALIDATION_WAIT=1: ISSUED on a describe after a second.
    let start = std::time::Instant::now();
    loop {
        let c = aws
            .describe_certificate(TENANT, &arn)
            .await
            .expect("describe");
        if c.status == "ISSUED" {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "never issued: {}",
            c.status
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    aws.delete_certificate(TENANT, &arn).await.expect("delete");
    aws.delete_certificate(TENANT, &arn)
        .await
        .expect("already gone is fine");
}

/// ACM is regional (issue 14, item 4): a certificate lives in the target's AWS region, never
/// in the process's default region (`us-east-1` here), and calls on its ARN reach it there.
#[tokio::test]
async fn certificates_live_in_the_targets_aws_region() {
    let moto = Moto::start();
    let aws = aws(&moto.endpoint).await;
    let in_region = |aws_region| Target::Tenant {
        role_arn: ROLE,
        external_id: "acme-ext",
        aws_region,
    };
    let tag = ("cplane:workspace", "w-acme/g1");
    let domain = "*.w-acme.fra-1.cogrion.com";
    let arn = aws
        .request_certificate(in_region("eu-central-1"), domain, &[], "tokfra", &[tag])
        .await
        .expect("request");
    assert!(
        arn.starts_with("arn:aws:acm:eu-central-1:111111111111:"),
        "{arn}"
    );
    for elsewhere in ["us-east-1", "ap-southeast-1", ""] {
        assert_eq!(
            aws.find_certificate(in_region(elsewhere), domain, tag)
                .await
                .expect("find"),
            None,
            "not in `{elsewhere}`"
        );
    }
    let found = aws
        .find_certificate(in_region("eu-central-1"), domain, tag)
        .await
        .expect("find")
        .expect("found in eu-central-1");
    assert_eq!(found.arn, arn);
    // By ARN: the ARN's region, whatever the target says.
    let described = aws
        .describe_certificate(in_region("us-east-1"), &arn)
        .await
        .expect("describe by ARN");
    assert_eq!(described.domain, "*.w-acme.fra-1.cogrion.com");
    aws.delete_certificate(in_region(""), &arn)
        .await
        .expect("delete by ARN");
    assert_eq!(
        aws.find_certificate(in_region("eu-central-1"), domain, tag)
            .await
            .expect("find"),
        None,
        "deleted where it lived"
    );
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_quota_is_reported() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint).await;
    let aws = aws(&proxy.url).await;
    proxy.inject("sts:AssumeRole", Fault::Throttle, 2);
    proxy.inject("route53:CreateHostedZone", Fault::Throttle, 2);
    proxy.inject("acm:RequestCertificate", Fault::Throttle, 2);
    let zone = aws
        .create_zone(TENANT, "w-acme.sgp-1.cogrion.com", "ref")
        .await
        .expect("absorbed by retries");
    proxy.inject("route53:ChangeResourceRecordSets", Fault::ServerError, 2);
    let rec = RecordSet {
        name: "x.w-acme.sgp-1.cogrion.com".into(),
        rtype: "CNAME".into(),
        ttl: 300,
        values: vec!["y.example".into()],
    };
    aws.upsert_records(TENANT, &zone.id, &[rec])
        .await
        .expect("5xx retried");
    aws.request_certificate(TENANT, "*.w-acme.sgp-1.cogrion.com", &[], "tok1", &[])
        .await
        .expect("absorbed");
    let counts = proxy.counts();
    assert_eq!(counts["sts:AssumeRole"], 3);
    assert_eq!(counts["route53:CreateHostedZone"], 3);
    assert_eq!(counts["route53:ChangeResourceRecordSets"], 3);
    assert_eq!(counts["acm:RequestCertificate"], 3);
    assert_eq!(
        aws.zones_by_name(TENANT, "w-acme.sgp-1.cogrion.com")
            .await
            .expect("list")
            .len(),
        1,
        "no duplicate zone"
    );

    proxy.inject("acm:RequestCertificate", Fault::LimitExceeded, 10);
    let err = aws
        .request_certificate(TENANT, "*.w-other.sgp-1.cogrion.com", &[], "tok2", &[])
        .await
        .expect_err("quota");
    assert!(matches!(err, Error::Quota { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert_eq!(
        proxy.counts()["acm:RequestCertificate"],
        4,
        "the quota error was not retried"
    );
}
