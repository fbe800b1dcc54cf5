//! Route53: hosted zones (by name and CallerReference, create, delete) and record sets (list,
//! UPSERT, DELETE in one change batch).

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use super::client::{call_error, invalid_request, unexpected};
use super::{norm, Aws, Error, HostedZone, RecordSet, Target};

impl Aws {
    /// The zone named `name` created with `caller_reference`, if any. Matches the exact name and
    /// the CallerReference (never the name alone: a name may have several zones).
    pub async fn zone_by_caller_reference(
        &self,
        t: Target<'_>,
        name: &str,
        caller_reference: &str,
    ) -> Result<Option<HostedZone>, Error> {
        let zones = self.zones_by_name(t, name).await?;
        match zones
            .into_iter()
            .find(|z| z.caller_reference == caller_reference)
        {
            Some(z) => Ok(Some(self.with_name_servers(t, z).await?)),
            None => Ok(None),
        }
    }

    /// Every zone with exactly this name (ListHostedZonesByName, which real AWS lists *from*
    /// the name on and moto filters *by* it: both handled by matching ourselves).
    pub async fn zones_by_name(&self, t: Target<'_>, name: &str) -> Result<Vec<HostedZone>, Error> {
        let c = self.clients(t).await?;
        let want = norm(name);
        let mut out = Vec::new();
        let mut next: Option<(String, Option<String>)> = Some((format!("{want}."), None));
        while let Some((dns, zone_id)) = next.take() {
            let result = c
                .route53
                .list_hosted_zones_by_name()
                .dns_name(dns)
                .set_hosted_zone_id(zone_id)
                .max_items(100)
                .send()
                .await
                .map_err(|e| call_error("route53:ListHostedZonesByName", e));
            self.count("route53:ListHostedZonesByName", &result);
            let page = result?;
            let mut past = false;
            for z in page.hosted_zones() {
                if norm(z.name()) == want {
                    out.push(HostedZone {
                        id: bare_zone_id(z.id()),
                        name: want.clone(),
                        caller_reference: z.caller_reference().to_owned(),
                        name_servers: Vec::new(),
                    });
                } else if !out.is_empty() || norm(z.name()) > want {
                    past = true;
                }
            }
            if page.is_truncated() && !past {
                next = page
                    .next_dns_name()
                    .map(|n| (n.to_owned(), page.next_hosted_zone_id().map(str::to_owned)));
            }
        }
        Ok(out)
    }

    async fn with_name_servers(
        &self,
        t: Target<'_>,
        mut zone: HostedZone,
    ) -> Result<HostedZone, Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .get_hosted_zone()
            .id(&zone.id)
            .send()
            .await
            .map_err(|e| call_error("route53:GetHostedZone", e));
        self.count("route53:GetHostedZone", &result);
        let out = result?;
        zone.name_servers = name_servers(
            out.delegation_set()
                .map(|d| d.name_servers())
                .unwrap_or_default(),
        );
        Ok(zone)
    }

    /// Creates the zone. A `HostedZoneAlreadyExists` (real AWS, on a reused CallerReference
    /// after a lost answer) is resolved by lookup, never by creating again.
    pub async fn create_zone(
        &self,
        t: Target<'_>,
        name: &str,
        caller_reference: &str,
    ) -> Result<HostedZone, Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .create_hosted_zone()
            .name(norm(name))
            .caller_reference(caller_reference)
            .send()
            .await
            .map_err(|e| call_error("route53:CreateHostedZone", e));
        self.count("route53:CreateHostedZone", &result);
        match result {
            Ok(out) => {
                let z = out
                    .hosted_zone()
                    .ok_or_else(|| unexpected("route53:CreateHostedZone", "no hosted zone"))?;
                Ok(HostedZone {
                    id: bare_zone_id(z.id()),
                    name: norm(z.name()),
                    caller_reference: z.caller_reference().to_owned(),
                    name_servers: name_servers(
                        out.delegation_set()
                            .map(|d| d.name_servers())
                            .unwrap_or_default(),
                    ),
                })
            }
            Err(e) if e.code() == Some("HostedZoneAlreadyExists") => self
                .zone_by_caller_reference(t, name, caller_reference)
                .await?
                .ok_or_else(|| {
                    unexpected(
                        "route53:CreateHostedZone",
                        "HostedZoneAlreadyExists, but no zone has this CallerReference",
                    )
                }),
            Err(e) => Err(e),
        }
    }

    /// Deletes a zone (already gone is fine). The caller deletes its records first.
    pub async fn delete_zone(&self, t: Target<'_>, zone_id: &str) -> Result<(), Error> {
        let c = self.clients(t).await?;
        let result = c
            .route53
            .delete_hosted_zone()
            .id(zone_id)
            .send()
            .await
            .map_err(|e| call_error("route53:DeleteHostedZone", e));
        self.count("route53:DeleteHostedZone", &result);
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchHostedZone") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every record set of a zone, all pages (300 per page): the batched read of drift checks.
    pub async fn list_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
    ) -> Result<Vec<RecordSet>, Error> {
        let c = self.clients(t).await?;
        let mut out = Vec::new();
        let mut start: Option<(String, RrType)> = None;
        loop {
            let mut req = c
                .route53
                .list_resource_record_sets()
                .hosted_zone_id(zone_id)
                .max_items(300);
            if let Some((name, rtype)) = start.take() {
                req = req.start_record_name(name).start_record_type(rtype);
            }
            let result = req
                .send()
                .await
                .map_err(|e| call_error("route53:ListResourceRecordSets", e));
            self.count("route53:ListResourceRecordSets", &result);
            let page = result?;
            for r in page.resource_record_sets() {
                let mut values: Vec<String> = r
                    .resource_records()
                    .iter()
                    .map(|v| v.value().trim_end_matches('.').to_owned())
                    .collect();
                values.sort();
                out.push(RecordSet {
                    name: norm(r.name()),
                    rtype: r.r#type().as_str().to_owned(),
                    ttl: r.ttl().unwrap_or(0),
                    values,
                });
            }
            match (
                page.is_truncated(),
                page.next_record_name(),
                page.next_record_type(),
            ) {
                (true, Some(name), Some(rtype)) => start = Some((name.to_owned(), rtype.clone())),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn change(
        &self,
        t: Target<'_>,
        zone_id: &str,
        action: ChangeAction,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let op = "route53:ChangeResourceRecordSets";
        let mut batch = ChangeBatch::builder();
        for r in records {
            let mut set = ResourceRecordSet::builder()
                .name(format!("{}.", r.name))
                .r#type(RrType::from(r.rtype.as_str()))
                .ttl(r.ttl);
            for v in &r.values {
                set = set.resource_records(
                    ResourceRecord::builder()
                        .value(v)
                        .build()
                        .map_err(invalid_request(op))?,
                );
            }
            let change = Change::builder()
                .action(action.clone())
                .resource_record_set(set.build().map_err(invalid_request(op))?)
                .build()
                .map_err(invalid_request(op))?;
            batch = batch.changes(change);
        }
        let c = self.clients(t).await?;
        let result = c
            .route53
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch.build().map_err(invalid_request(op))?)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| call_error(op, e));
        self.count(op, &result);
        result
    }

    /// UPSERTs the records in one change batch.
    pub async fn upsert_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        self.change(t, zone_id, ChangeAction::Upsert, records).await
    }

    /// DELETEs the records in one change batch; records already gone are fine (real AWS answers
    /// `InvalidChangeBatch` "not found", moto `InvalidInput`).
    pub async fn delete_records(
        &self,
        t: Target<'_>,
        zone_id: &str,
        records: &[RecordSet],
    ) -> Result<(), Error> {
        match self.change(t, zone_id, ChangeAction::Delete, records).await {
            Err(Error::Call { code, message, .. })
                if (code == "InvalidChangeBatch" || code == "InvalidInput")
                    && message.to_ascii_lowercase().contains("not found") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

fn bare_zone_id(id: &str) -> String {
    id.trim_start_matches("/hostedzone/").to_owned()
}

fn name_servers(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|n| norm(n)).collect();
    v.sort();
    v
}
