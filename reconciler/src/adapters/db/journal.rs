//! The journal: a row with each cloud call's deterministic key before the call, its result
//! after (see `crate::apply`).

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

    /// Journal: records the result after the call.
    pub async fn journal_done(
        &self,
        workspace: &str,
        step: StepKind,
        external_id: Option<&str>,
        result: &serde_json::Value,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE journal SET state = 'done', external_id = $1, result = $2, last_error = NULL, updated_at = $3 WHERE workspace_id = $4 AND step = $5")
            .bind(external_id)
            .bind(result.to_string())
            .bind(now_ms())
            .bind(workspace)
            .bind(step.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Journal: records a failed attempt (the step is retried on a later run).
    pub async fn journal_failed(
        &self,
        workspace: &str,
        step: StepKind,
        error: &str,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE journal SET state = 'failed', last_error = $1, updated_at = $2 WHERE workspace_id = $3 AND step = $4")
            .bind(error)
            .bind(now_ms())
            .bind(workspace)
            .bind(step.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored result of a step (`None` unless done).
    pub async fn journal_result(
        &self,
        workspace: &str,
        step: StepKind,
    ) -> Result<Option<serde_json::Value>, Error> {
        let row = sqlx::query(
            "SELECT result FROM journal WHERE workspace_id = $1 AND step = $2 AND state = 'done'",
        )
        .bind(workspace)
        .bind(step.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let text: Option<String> = row.try_get("result")?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }
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
    Ok((
        (id, kind),
        JournalEntry {
            state,
            result: row.try_get("result")?,
        },
    ))
}
