//! The journal: a row with each cloud call's deterministic key before the call, its result
//! after (see `crate::apply`).
//!
//! Results are [`StepResult`]s, stored as tagged JSON in the `result` column; rows written
//! before the tag existed load by the row's `step` (see [`StepResult::from_stored`]). A result
//! that does not load is an error ([`Error::JournalResult`]), never taken for "no result".

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;

impl Db {
    /// Removes every journal entry of a workspace (a new generation starts clean).
    pub async fn clear_journal(&self, workspace: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM journal WHERE workspace_id = $1")
            .bind(workspace)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A step begun and not done (`started`, or `failed`: its outcome may be unknown): the key
    /// it was begun with, and the resource its last done result named (`external_id` is kept
    /// until the step is done again), so a retry resumes exactly the call that was begun.
    pub async fn journal_pending(
        &self,
        workspace: &str,
        step: StepKind,
    ) -> Result<Option<(String, Option<String>)>, Error> {
        let row = sqlx::query(
            "SELECT idempotency_key, external_id FROM journal WHERE workspace_id = $1 AND step = $2 AND state <> 'done'",
        )
        .bind(workspace)
        .bind(step.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("idempotency_key")?, r.try_get("external_id")?)))
            .transpose()
    }

    /// Removes one step's journal entry (a delegation made again after its removal).
    pub async fn journal_forget(&self, workspace: &str, step: StepKind) -> Result<(), Error> {
        sqlx::query("DELETE FROM journal WHERE workspace_id = $1 AND step = $2")
            .bind(workspace)
            .bind(step.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Journal: records the deterministic key *before* the call it guards. Returns the attempt
    /// number (1 on the first try; more means an earlier attempt's outcome is unknown).
    pub async fn journal_begin(
        &self,
        workspace: &str,
        step: StepKind,
        key: &str,
    ) -> Result<i64, Error> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO journal (workspace_id, step, idempotency_key, state, attempts, created_at, updated_at) VALUES ($1, $2, $3, 'started', 1, $4, $4)
             ON CONFLICT (workspace_id, step) DO UPDATE SET idempotency_key = excluded.idempotency_key, state = 'started',
               attempts = journal.attempts + 1, updated_at = excluded.updated_at",
        )
        .bind(workspace)
        .bind(step.as_str())
        .bind(key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT attempts FROM journal WHERE workspace_id = $1 AND step = $2")
            .bind(workspace)
            .bind(step.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("attempts")?)
    }

    /// Journal: records the result after the call, in the row of its step
    /// ([`StepResult::kind`]), with the resource it names as `external_id`.
    pub async fn journal_done(&self, workspace: &str, result: &StepResult) -> Result<(), Error> {
        sqlx::query("UPDATE journal SET state = 'done', external_id = $1, result = $2, last_error = NULL, updated_at = $3 WHERE workspace_id = $4 AND step = $5")
            .bind(result.external_id())
            .bind(result.to_stored())
            .bind(now_ms())
            .bind(workspace)
            .bind(result.kind().as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Journal: records a failed attempt (the step is retried on a later run). A step that
    /// starts failing, or fails with another error than last time, writes
    /// `io.cplane.workspace.provisioning_failed` (with the step and the error) in the same
    /// transaction; retries failing the same way do not repeat it.
    pub async fn journal_failed(
        &self,
        workspace: &str,
        step: StepKind,
        error: &str,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let before = sqlx::query(
            "SELECT j.state, j.last_error, j.attempts, w.region, w.environment, w.account
             FROM journal j LEFT JOIN workspaces w ON w.id = j.workspace_id
             WHERE j.workspace_id = $1 AND j.step = $2",
        )
        .bind(workspace)
        .bind(step.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("UPDATE journal SET state = 'failed', last_error = $1, updated_at = $2 WHERE workspace_id = $3 AND step = $4")
            .bind(error)
            .bind(now_ms())
            .bind(workspace)
            .bind(step.as_str())
            .execute(&mut *tx)
            .await?;
        if let Some(row) = before {
            let state: String = row.try_get("state")?;
            let last: Option<String> = row.try_get("last_error")?;
            let region: Option<String> = row.try_get("region")?;
            let environment: Option<String> = row.try_get("environment")?;
            let account: Option<String> = row.try_get("account")?;
            let attempts: i64 = row.try_get("attempts")?;
            if state != "failed" || last.as_deref() != Some(error) {
                let mut event = crate::events::NewEvent::new(
                    crate::events::EventType::WorkspaceProvisioningFailed,
                    format!("workspace/{workspace}"),
                    serde_json::json!({
                        "workspace": workspace,
                        "account": account,
                        "step": step.as_str(),
                        "attempt": attempts,
                        "error": error,
                    }),
                )
                .of_workspace(workspace);
                if let (Some(r), Some(e)) = (region, environment) {
                    event = event.in_stream(&r, &e);
                }
                super::events::append(&mut tx, &self.event_stream, &event).await?;
            }
        }
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    /// Every journal entry of a workspace, in the order the steps were first begun: what
    /// the workspace page shows of its provisioning.
    pub async fn journal_steps(&self, workspace: &str) -> Result<Vec<StepRow>, Error> {
        let rows = sqlx::query(
            "SELECT step, state, external_id, attempts, last_error, updated_at FROM journal WHERE workspace_id = $1 ORDER BY created_at, step",
        )
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StepRow {
                    step: r.try_get("step")?,
                    state: r.try_get("state")?,
                    resource: r.try_get("external_id")?,
                    attempts: r.try_get("attempts")?,
                    error: r.try_get("last_error")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// The stored result of a step (`None` unless done).
    pub async fn journal_result(
        &self,
        workspace: &str,
        step: StepKind,
    ) -> Result<Option<StepResult>, Error> {
        let row = sqlx::query(
            "SELECT result FROM journal WHERE workspace_id = $1 AND step = $2 AND state = 'done'",
        )
        .bind(workspace)
        .bind(step.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text: Option<String> = row.try_get("result")?;
        text.map(|t| decode(workspace, step, &t)).transpose()
    }
}

/// One journal entry as the API shows it ([`Db::journal_steps`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepRow {
    /// The step (`create_zone`, `delegate_zone`, ...).
    pub step: String,
    /// `started`, `done` or `failed`.
    pub state: String,
    /// The cloud resource its last done result named (a zone id, a certificate ARN, ...).
    pub resource: Option<String>,
    /// Attempts so far.
    pub attempts: i64,
    /// The last failure's message, if it failed.
    pub error: Option<String>,
    /// When the entry last changed (unix millis).
    pub updated_at: i64,
}

pub(super) fn journal_row(row: &AnyRow) -> Result<((String, StepKind), JournalEntry), Error> {
    let id: String = row.try_get("workspace_id")?;
    let step: String = row.try_get("step")?;
    let kind =
        StepKind::parse(&step).ok_or_else(|| Error::Corrupt(format!("journal step `{step}`")))?;
    let state: String = row.try_get("state")?;
    let state = match state.as_str() {
        "started" => JournalState::Started,
        "done" => JournalState::Done,
        "failed" => JournalState::Failed,
        other => return Err(Error::Corrupt(format!("journal state `{other}`"))),
    };
    let result = row
        .try_get::<Option<String>, _>("result")?
        .map(|t| decode(&id, kind, &t))
        .transpose()?;
    Ok(((id, kind), JournalEntry { state, result }))
}

fn decode(workspace: &str, step: StepKind, stored: &str) -> Result<StepResult, Error> {
    StepResult::from_stored(step, stored).map_err(|source| Error::JournalResult {
        workspace: workspace.to_owned(),
        step: step.as_str(),
        source,
    })
}

#[cfg(test)]
mod tests {
    //! The journal's results on both engines: SQLite in a temporary file, PostgreSQL in a fresh
    //! database on the server of `CPLANE_TEST_PG` (default: the local one at 127.0.0.1:5432).

    use super::super::test_support::{sqlite, with_postgres};
    use super::*;
    use crate::plan::RecordSet;

    fn results() -> Vec<StepResult> {
        let cname = RecordSet {
            name: "_x1.w-acme.sgp-1.cogrion.com".into(),
            rtype: "CNAME".into(),
            ttl: 300,
            values: vec!["_y1.acm-validations.aws".into()],
        };
        vec![
            StepResult::CreateZone {
                zone_id: "Z1".into(),
                name_servers: vec!["ns-1.example".into(), "ns-2.example".into()],
            },
            StepResult::DelegateZone {
                parent_zone_id: "ZP".into(),
                record: RecordSet {
                    name: "w-acme.sgp-1.cogrion.com".into(),
                    rtype: "NS".into(),
                    ttl: 300,
                    values: vec!["ns-1.example".into(), "ns-2.example".into()],
                },
            },
            StepResult::RequestCertificate {
                arn: "arn:aws:acm:us-east-1:111111111111:certificate/a".into(),
            },
            StepResult::ValidationRecords {
                records: vec![cname],
            },
            StepResult::AwaitCertificate {
                arn: Some("arn:aws:acm:us-east-1:111111111111:certificate/a".into()),
                status: "ISSUED".into(),
            },
            StepResult::RemoveDelegation { removed: 1 },
            StepResult::DeleteCertificate { arn: None },
            StepResult::DeleteValidationRecords { removed: 1 },
            StepResult::DeleteZone {
                zone_id: Some("Z1".into()),
            },
        ]
    }

    /// Every variant written by `journal_done` comes back from `journal_result` and `observe`,
    /// with its resource in `external_id`.
    async fn results_round_trip(db: &Db) {
        db.write_workspace(
            &super::super::test_support::acme(),
            1,
            Status::Provisioning,
            "c1",
        )
        .await
        .expect("workspace");
        for r in results() {
            db.journal_begin("acme", r.kind(), "key")
                .await
                .expect("begin");
            assert_eq!(
                db.journal_result("acme", r.kind()).await.expect("open"),
                None
            );
            db.journal_done("acme", &r).await.expect("done");
            assert_eq!(
                db.journal_result("acme", r.kind()).await.expect("result"),
                Some(r.clone())
            );
            let row = sqlx::query("SELECT external_id FROM journal WHERE step = $1")
                .bind(r.kind().as_str())
                .fetch_one(db.pool())
                .await
                .expect("row");
            let external: Option<String> = row.try_get("external_id").expect("external_id");
            assert_eq!(external.as_deref(), r.external_id(), "{r:?}");
        }
        let observed = db
            .observe(&crate::plan::Scope::all())
            .await
            .expect("observe");
        for r in results() {
            let entry = &observed.journal[&("acme".to_owned(), r.kind())];
            assert_eq!(entry.state, JournalState::Done);
            assert_eq!(entry.result, Some(r));
        }
    }

    /// Rows as the code before `StepResult` wrote them (untagged `json!` objects) load, through
    /// both readers.
    async fn old_rows_load(db: &Db) {
        db.write_workspace(&super::super::test_support::acme(), 1, Status::Active, "c1")
            .await
            .expect("workspace");
        let old = [
            (
                "create_zone",
                Some("Z1"),
                r#"{"name_servers":["ns-1.example","ns-2.example"],"zone_id":"Z1"}"#,
            ),
            (
                "delegate_zone",
                None,
                r#"{"parent_zone_id":"ZP","record":{"name":"w-acme.sgp-1.cogrion.com","rtype":"NS","ttl":300,"values":["ns-1.example","ns-2.example"]}}"#,
            ),
            (
                "request_certificate",
                Some("arn:aws:acm:us-east-1:111111111111:certificate/a"),
                r#"{"arn":"arn:aws:acm:us-east-1:111111111111:certificate/a"}"#,
            ),
            (
                "validation_records",
                None,
                r#"{"records":[{"name":"_x1.w-acme.sgp-1.cogrion.com","rtype":"CNAME","ttl":300,"values":["_y1.acm-validations.aws"]}]}"#,
            ),
            (
                "await_certificate",
                Some("arn:aws:acm:us-east-1:111111111111:certificate/a"),
                r#"{"status":"ISSUED"}"#,
            ),
            ("remove_delegation", None, r#"{"removed":1}"#),
            ("delete_certificate", None, r#"{"arn":null}"#),
            ("delete_validation_records", None, r#"{"removed":1}"#),
            ("delete_zone", Some("Z1"), r#"{"zone_id":"Z1"}"#),
        ];
        for (step, external, result) in old {
            sqlx::query("INSERT INTO journal (workspace_id, step, idempotency_key, state, external_id, result, attempts, created_at, updated_at) VALUES ('acme', $1, 'key', 'done', $2, $3, 1, 0, 0)")
                .bind(step)
                .bind(external)
                .bind(result)
                .execute(db.pool())
                .await
                .expect("old row");
        }
        let mut want = results();
        // The old code did not record the ARN of an issued certificate.
        want[4] = StepResult::AwaitCertificate {
            arn: None,
            status: "ISSUED".into(),
        };
        let observed = db
            .observe(&crate::plan::Scope::all())
            .await
            .expect("observe");
        for r in want {
            assert_eq!(
                db.journal_result("acme", r.kind()).await.expect("result"),
                Some(r.clone())
            );
            assert_eq!(
                observed.journal[&("acme".to_owned(), r.kind())].result,
                Some(r)
            );
        }
    }

    /// A result cplane does not write is an error naming the row, not "no result".
    async fn unreadable_results_are_errors(db: &Db) {
        db.write_workspace(&super::super::test_support::acme(), 1, Status::Active, "c1")
            .await
            .expect("workspace");
        sqlx::query("INSERT INTO journal (workspace_id, step, idempotency_key, state, result, attempts, created_at, updated_at) VALUES ('acme', 'create_zone', 'key', 'done', $1, 1, 0, 0)")
            .bind(r#"{"zone_id":"Z1"}"#)
            .execute(db.pool())
            .await
            .expect("row");
        let err = db
            .journal_result("acme", StepKind::CreateZone)
            .await
            .expect_err("a zone without name servers");
        assert_eq!(
            err.to_string(),
            "journal of workspace acme, step create_zone: unreadable result: missing field `name_servers`"
        );
        assert!(matches!(err, Error::JournalResult { .. }));
        assert!(!err.is_retryable());
        assert!(
            std::error::Error::source(&err).is_some(),
            "the serde error is kept"
        );
        let err = db
            .observe(&crate::plan::Scope::all())
            .await
            .expect_err("observe reads the same row");
        assert!(matches!(err, Error::JournalResult { .. }), "{err}");
    }

    #[tokio::test]
    async fn sqlite_results_round_trip() {
        let (_dir, db) = sqlite().await;
        results_round_trip(&db).await;
    }

    #[tokio::test]
    async fn sqlite_loads_rows_of_the_old_format() {
        let (_dir, db) = sqlite().await;
        old_rows_load(&db).await;
    }

    #[tokio::test]
    async fn sqlite_refuses_unreadable_results() {
        let (_dir, db) = sqlite().await;
        unreadable_results_are_errors(&db).await;
    }

    #[tokio::test]
    async fn postgres_results_round_trip() {
        with_postgres(|db| async move { results_round_trip(&db).await }).await;
    }

    #[tokio::test]
    async fn postgres_loads_rows_of_the_old_format() {
        with_postgres(|db| async move { old_rows_load(&db).await }).await;
    }

    #[tokio::test]
    async fn postgres_refuses_unreadable_results() {
        with_postgres(|db| async move { unreadable_results_are_errors(&db).await }).await;
    }
}
