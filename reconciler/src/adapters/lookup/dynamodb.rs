//! DynamoDB as the global tenant → region map (reference doc 001, "Alternatives: Pure AWS
//! Global Layer"): items `{tenant_id: "w-{id}", region, bff_url}` keyed by `tenant_id`.
//!
//! Writes are `PutItem` / `DeleteItem` (both idempotent); the drift check reads with
//! `BatchGetItem`, 100 keys per call, retrying the keys DynamoDB leaves unprocessed. The SDK
//! retries throttling and 5xx (standard mode, 5 attempts).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use cplane_schema::model::DynamoDbSpec;

use crate::global::{Error, GlobalFuture, LookupRow, LookupSink};

/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH: usize = 100;
/// Rounds of retrying unprocessed keys before the read fails.
const UNPROCESSED_ROUNDS: u32 = 8;

/// The adapter.
#[derive(Clone)]
pub struct DynamoDb {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoDb {
    /// From `spec.tenantLookup.dynamodb` and the control plane's AWS configuration.
    pub fn new(spec: &DynamoDbSpec, aws: &aws_config::SdkConfig) -> Self {
        let mut conf = aws_sdk_dynamodb::config::Builder::from(aws);
        if let Some(region) = &spec.aws_region {
            conf = conf.region(aws_config::Region::new(region.clone()));
        }
        Self {
            client: aws_sdk_dynamodb::Client::from_conf(conf.build()),
            table: spec.table.clone(),
        }
    }

    async fn batch_get(&self, keys: &[String]) -> Result<BTreeMap<String, LookupRow>, Error> {
        const OP: &str = "dynamodb:BatchGetItem";
        let mut out = BTreeMap::new();
        for chunk in keys.chunks(BATCH) {
            let mut pending: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|k| HashMap::from([("tenant_id".to_owned(), AttributeValue::S(k.clone()))]))
                .collect();
            let mut round = 0;
            while !pending.is_empty() {
                round += 1;
                if round > UNPROCESSED_ROUNDS {
                    return Err(Error::call(
                        OP,
                        format!("{} keys still unprocessed", pending.len()),
                        true,
                    ));
                }
                if round > 1 {
                    tokio::time::sleep(Duration::from_millis(50 << round.min(6))).await;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| Error::Unexpected {
                        op: OP,
                        message: e.to_string(),
                    })?;
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| sdk_error(OP, e))?;
                for item in resp
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let s = |k: &str| match item.get(k) {
                        Some(AttributeValue::S(v)) => v.clone(),
                        _ => String::new(),
                    };
                    out.insert(
                        s("tenant_id"),
                        LookupRow {
                            region: s("region"),
                            bff_url: s("bff_url"),
                        },
                    );
                }
                if let Some(left) = resp.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                    pending = left.keys().to_vec();
                }
            }
        }
        Ok(out)
    }
}

impl LookupSink for DynamoDb {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    fn put<'a>(&'a self, key: &'a str, row: &'a LookupRow) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("tenant_id", AttributeValue::S(key.to_owned()))
                .item("region", AttributeValue::S(row.region.clone()))
                .item("bff_url", AttributeValue::S(row.bff_url.clone()))
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error("dynamodb:PutItem", e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> GlobalFuture<'a, ()> {
        Box::pin(async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("tenant_id", AttributeValue::S(key.to_owned()))
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error("dynamodb:DeleteItem", e))
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> GlobalFuture<'a, BTreeMap<String, LookupRow>> {
        Box::pin(self.batch_get(keys))
    }
}

fn sdk_error<E>(
    op: &'static str,
    err: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transport = matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    );
    let server = err
        .raw_response()
        .is_some_and(|r| r.status().is_server_error());
    let code = err
        .code()
        .unwrap_or(if transport { "transport" } else { "unknown" });
    let retryable = transport
        || server
        || matches!(
            code,
            "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "InternalServerError"
        );
    let message = format!(
        "{code}: {}",
        err.message()
            .map(str::to_owned)
            .unwrap_or_else(|| aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string())
    );
    Error::Call {
        op,
        message,
        retryable,
        source: Some(Box::new(err)),
    }
}
