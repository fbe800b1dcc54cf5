//! Notification deliveries (migration 0012, [`crate::notify`]): each sink's cursor over the
//! outbox, its deliveries still to make, claimed by one replica at a time.
//!
//! # Guarantees
//! - **At least once**: a delivery row is written for every event a sink's routes select
//!   (the cursor moves only past positions that are committed, see [`Db::expand_deliveries`])
//!   and deleted only after the sink accepted it.
//! - **One replica at a time**: a replica claims a row with a lease ([`Db::claim_deliveries`]:
//!   a conditional `UPDATE`, with `FOR UPDATE SKIP LOCKED` on PostgreSQL so replicas do not
//!   queue on each other's rows); another may take it only once the lease ran out (its holder
//!   died), which is the one case an event reaches a sink twice — receivers de-duplicate by
//!   the CloudEvents `id`.

use sqlx::Row;

use super::*;
use crate::events::{EventType, StoredEvent};

/// How a sink's deliveries stand (`/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SinkBacklog {
    /// The sink.
    pub sink: String,
    /// Events waiting (or being retried).
    pub pending: i64,
    /// Events given up on (dead letters).
    pub dead: i64,
    /// An error of its failing or dead deliveries, if any.
    pub last_error: Option<String>,
}

impl Db {
    /// Adds a delivery to `sink` for every event of `types` after its cursor (at most `page`
    /// events read), and moves the cursor. A sink seen for the first time starts at the
    /// newest event. Idempotent and safe on every replica at once. Returns how many
    /// deliveries were added.
    pub async fn expand_deliveries(
        &self,
        sink: &str,
        types: &[EventType],
        page: u32,
    ) -> Result<usize, Error> {
        let cursor = sqlx::query("SELECT position FROM event_cursors WHERE sink = $1")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<i64, _>("position"))
            .transpose()?;
        // Every position up to `head` has committed (positions become visible in order):
        // a page shorter than `page` read all of them.
        let head = self.last_event_position().await?;
        let Some(cursor) = cursor else {
            self.move_cursor(sink, head).await?;
            return Ok(0);
        };
        let filter = super::EventFilter {
            types: types.to_vec(),
            workspace: None,
        };
        let events = self.events_after(cursor, &filter, page).await?;
        let to = match events.last() {
            Some(last) if events.len() == page as usize => last.position,
            Some(last) => last.position.max(head),
            None => head,
        };
        let now = now_ms();
        let mut added = 0;
        if events.is_empty() {
            if to > cursor {
                self.move_cursor(sink, to).await?;
            }
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for e in &events {
            let done = sqlx::query(
                "INSERT INTO event_deliveries (sink, position, state, attempts, next_at, leased_by, lease_until, last_error)
                 VALUES ($1, $2, 'pending', 0, $3, '', 0, '') ON CONFLICT (sink, position) DO NOTHING",
            )
            .bind(sink)
            .bind(e.position)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            added += usize::try_from(done.rows_affected()).unwrap_or(0);
        }
        tx.commit().await?;
        if to > cursor {
            self.move_cursor(sink, to).await?;
        }
        Ok(added)
    }

    async fn move_cursor(&self, sink: &str, to: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO event_cursors (sink, position) VALUES ($1, $2)
             ON CONFLICT (sink) DO UPDATE SET position = CASE WHEN excluded.position > event_cursors.position
               THEN excluded.position ELSE event_cursors.position END",
        )
        .bind(sink)
        .bind(to)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` of `sink`'s due deliveries for `replica` until `lease_ms` from
    /// now, oldest first: (position, attempts so far).
    pub async fn claim_deliveries(
        &self,
        sink: &str,
        replica: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<(i64, i64)>, Error> {
        let now = now_ms();
        let lock = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE event_deliveries SET leased_by = $1, lease_until = $2
             WHERE sink = $3 AND position IN (
               SELECT position FROM event_deliveries
               WHERE sink = $3 AND state = 'pending' AND next_at <= $4 AND lease_until < $4
               ORDER BY position LIMIT $5{lock})
             RETURNING position, attempts"
        );
        let rows = sqlx::query(&sql)
            .bind(replica)
            .bind(now + lease_ms)
            .bind(sink)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut out: Vec<(i64, i64)> = rows
            .iter()
            .map(|r| Ok((r.try_get("position")?, r.try_get("attempts")?)))
            .collect::<Result<_, Error>>()?;
        out.sort_unstable();
        Ok(out)
    }

    /// The event at `position` (`None`: pruned).
    pub async fn event_at(&self, position: i64) -> Result<Option<StoredEvent>, Error> {
        let mut found = self
            .events_after(position - 1, &super::EventFilter::default(), 1)
            .await?;
        Ok(found.pop().filter(|e| e.position == position))
    }

    /// The events at `positions` that are still retained, by position: one query for a
    /// claimed batch.
    pub async fn events_at(
        &self,
        positions: &[i64],
    ) -> Result<std::collections::HashMap<i64, StoredEvent>, Error> {
        if positions.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let list: Vec<String> = (1..=positions.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT position, workspace, body FROM events WHERE position IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for p in positions {
            q = q.bind(*p);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| super::events::stored(r).map(|e| (e.position, e)))
            .collect()
    }

    /// `sink` accepted the events at `positions` (or they were pruned): their deliveries are
    /// done. One statement for a batch.
    pub async fn delivered(&self, sink: &str, positions: &[i64]) -> Result<(), Error> {
        if positions.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = (2..positions.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "DELETE FROM event_deliveries WHERE sink = $1 AND position IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(sink);
        for p in positions {
            q = q.bind(*p);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// Delivering the event at `position` to `sink` failed (attempt number `attempts`):
    /// retried at `next_at` (unix millis), or given up on (`dead`).
    pub async fn delivery_failed(
        &self,
        sink: &str,
        position: i64,
        attempts: i64,
        next_at: i64,
        error: &str,
        dead: bool,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE event_deliveries SET state = $1, attempts = $2, next_at = $3, last_error = $4,
               leased_by = '', lease_until = 0
             WHERE sink = $5 AND position = $6",
        )
        .bind(if dead { "dead" } else { "pending" })
        .bind(attempts)
        .bind(next_at)
        .bind(error)
        .bind(sink)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every sink's pending and dead deliveries, by sink.
    pub async fn sink_backlogs(&self) -> Result<Vec<SinkBacklog>, Error> {
        let rows = sqlx::query(
            "SELECT sink,
                    CAST(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS BIGINT) AS pending,
                    CAST(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS BIGINT) AS dead,
                    MAX(last_error) AS last_error
             FROM event_deliveries GROUP BY sink ORDER BY sink",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let last: Option<String> = r.try_get("last_error")?;
                Ok(SinkBacklog {
                    sink: r.try_get("sink")?,
                    pending: r.try_get("pending")?,
                    dead: r.try_get("dead")?,
                    last_error: last.filter(|e| !e.is_empty()),
                })
            })
            .collect()
    }
}
