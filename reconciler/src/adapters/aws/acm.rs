//! ACM: DNS-validated certificates (find by ownership tag, request, describe, delete).
//!
//! ACM is regional: certificates are requested and found in the target's AWS region (the
//! workspace's Region document says which), and calls on an ARN go to the ARN's region, so a
//! certificate is always deleted where it lives.

use aws_sdk_acm::types::{CertificateStatus, Tag, ValidationMethod};

use super::client::{call_error, invalid_request, region_of_arn, unexpected};
use super::{norm, Aws, Certificate, Error, RecordSet, Target};

impl Aws {
    /// The certificate for `domain` carrying `tag`, if any (all statuses, all pages).
    pub async fn find_certificate(
        &self,
        t: Target<'_>,
        domain: &str,
        tag: (&str, &str),
    ) -> Result<Option<Certificate>, Error> {
        let c = self.clients(t).await?;
        let mut token = None;
        loop {
            let result = c
                .acm
                .list_certificates()
                .set_next_token(token.take())
                .set_certificate_statuses(Some(vec![
                    CertificateStatus::PendingValidation,
                    CertificateStatus::Issued,
                    CertificateStatus::Inactive,
                    CertificateStatus::Expired,
                    CertificateStatus::ValidationTimedOut,
                    CertificateStatus::Revoked,
                    CertificateStatus::Failed,
                ]))
                .send()
                .await
                .map_err(|e| call_error("acm:ListCertificates", e));
            self.count("acm:ListCertificates", &result);
            let page = result?;
            for s in page.certificate_summary_list() {
                if s.domain_name().map(norm) != Some(norm(domain)) {
                    continue;
                }
                let Some(arn) = s.certificate_arn() else {
                    continue;
                };
                let tags = c
                    .acm
                    .list_tags_for_certificate()
                    .certificate_arn(arn)
                    .send()
                    .await
                    .map_err(|e| call_error("acm:ListTagsForCertificate", e));
                self.count("acm:ListTagsForCertificate", &tags);
                if tags?
                    .tags()
                    .iter()
                    .any(|x| x.key() == tag.0 && x.value() == Some(tag.1))
                {
                    return Ok(Some(self.describe_certificate(t, arn).await?));
                }
            }
            match page.next_token() {
                Some(next) => token = Some(next.to_owned()),
                None => return Ok(None),
            }
        }
    }

    /// Requests a DNS-validated certificate. The same `idempotency_token` (≤ 32 word
    /// characters; the caller derives it deterministically) returns the same ARN.
    pub async fn request_certificate(
        &self,
        t: Target<'_>,
        domain: &str,
        sans: &[&str],
        idempotency_token: &str,
        tags: &[(&str, &str)],
    ) -> Result<String, Error> {
        let op = "acm:RequestCertificate";
        let c = self.clients(t).await?;
        let mut req = c
            .acm
            .request_certificate()
            .domain_name(domain)
            .validation_method(ValidationMethod::Dns)
            .idempotency_token(idempotency_token);
        for san in sans {
            req = req.subject_alternative_names(*san);
        }
        for (k, v) in tags {
            req = req.tags(
                Tag::builder()
                    .key(*k)
                    .value(*v)
                    .build()
                    .map_err(invalid_request(op))?,
            );
        }
        let result = req.send().await.map_err(|e| call_error(op, e));
        self.count(op, &result);
        result?
            .certificate_arn()
            .map(str::to_owned)
            .ok_or_else(|| unexpected(op, "no certificate ARN"))
    }

    /// A certificate with its status and validation records.
    pub async fn describe_certificate(
        &self,
        t: Target<'_>,
        arn: &str,
    ) -> Result<Certificate, Error> {
        let op = "acm:DescribeCertificate";
        let c = self.clients_in(t, region_of_arn(arn)).await?;
        let result = c
            .acm
            .describe_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map_err(|e| call_error(op, e));
        self.count(op, &result);
        let out = result?;
        let cert = out
            .certificate()
            .ok_or_else(|| unexpected(op, "no certificate"))?;
        let mut records: Vec<RecordSet> = cert
            .domain_validation_options()
            .iter()
            .filter_map(|o| o.resource_record())
            .map(|r| RecordSet {
                name: norm(r.name()),
                rtype: r.r#type().as_str().to_owned(),
                ttl: 300,
                values: vec![r.value().trim_end_matches('.').to_owned()],
            })
            .collect();
        records.sort();
        records.dedup();
        Ok(Certificate {
            arn: arn.to_owned(),
            domain: cert.domain_name().map(norm).unwrap_or_default(),
            status: cert
                .status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            validation_records: records,
            not_after: cert
                .not_after()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        })
    }

    /// Deletes a certificate (already gone is fine; `ResourceInUseException` is retryable:
    /// the load balancer has not let go of it yet).
    pub async fn delete_certificate(&self, t: Target<'_>, arn: &str) -> Result<(), Error> {
        let c = self.clients_in(t, region_of_arn(arn)).await?;
        let result = c
            .acm
            .delete_certificate()
            .certificate_arn(arn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| call_error("acm:DeleteCertificate", e));
        self.count("acm:DeleteCertificate", &result);
        match result {
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            other => other,
        }
    }
}
