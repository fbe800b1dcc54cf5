//! The adapters of the [`crate::global::LookupSink`] port (step 8): the global tenant →
//! region map as reference doc 001 designs it (Cloudflare Workers KV, [`CloudflareKv`]) and
//! its AWS-only alternative ([`DynamoDb`]). Both store `w-{id}` → `{"region", "bff_url"}`,
//! the shape the lookup Worker (or Lambda) answers.

mod cloudflare;
mod dynamodb;

pub use cloudflare::CloudflareKv;
pub use dynamodb::DynamoDb;

use std::sync::Arc;

use cplane_schema::model::TenantLookupSpec;

use crate::global::LookupSink;

/// The sink `spec.tenantLookup` configures. DynamoDB uses `aws` (the control plane's AWS
/// configuration; its region unless the spec names one).
pub fn from_spec(
    spec: &TenantLookupSpec,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<Arc<dyn LookupSink>, crate::global::Error> {
    if let Some(kv) = &spec.cloudflare_kv {
        return Ok(Arc::new(CloudflareKv::new(kv)));
    }
    match (&spec.dynamodb, aws) {
        (Some(d), Some(aws)) => Ok(Arc::new(DynamoDb::new(d, aws))),
        (Some(_), None) => Err(crate::global::Error::Config(
            "spec.tenantLookup.dynamodb needs the AWS configuration (--cloud aws)".into(),
        )),
        (None, _) => Err(crate::global::Error::Config(
            "spec.tenantLookup names no sink".into(),
        )),
    }
}
