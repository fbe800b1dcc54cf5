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
    /// Where a sink that `commit` introduces starts: the position just before the first
    /// event of the run that applied `commit` (so the run's events — its workspaces', its
    /// bundles', its `commit.applied` — reach the sink, and nothing from before the run).
    /// That run is the last one recorded for `commit` that started before its
    /// `commit.applied` event; when the run record is gone (retention), the sink starts at
    /// that `commit.applied` event; when that event is gone too (or `commit` was never
    /// applied), at the newest event. Never the beginning of history.
    pub async fn sink_start_for_commit(&self, commit: &str) -> Result<i64, Error> {
        let head = self.last_event_position().await?;
        let applied = EventType::CommitApplied.as_str();
        // The newest `commit.applied` events, newest first: the commit's is among the last few
        // (commits are applied one after another; one per scope at most).
        let rows = sqlx::query(
            "SELECT position, created_at, body FROM events WHERE kind = $1
             ORDER BY position DESC LIMIT 200",
        )
        .bind(applied)
        .fetch_all(&self.pool)
        .await?;
        let mut found = None;
        for r in &rows {
            let event = super::events::cloud_event(r)?;
            if event.data["commit"].as_str() == Some(commit) {
                let scope = event.data["scope"].as_str().unwrap_or_default().to_owned();
                found = Some((
                    r.try_get::<i64, _>("position")?,
                    r.try_get::<i64, _>("created_at")?,
                    scope,
                ));
                break;
            }
        }
        let Some((position, created_at, scope)) = found else {
            return Ok(head);
        };
        let run = sqlx::query(
            "SELECT started_at FROM reconcile_runs WHERE commit_id = $1 AND scope = $2 AND started_at <= $3
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(commit)
        .bind(&scope)
        .bind(created_at)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get::<i64, _>("started_at"))
        .transpose()?;
        let Some(started_at) = run else {
            return Ok(position - 1);
        };
        let first: Option<i64> = sqlx::query(
            "SELECT MIN(position) AS first FROM events WHERE created_at >= $1 AND position <= $2",
        )
        .bind(started_at)
        .bind(position)
        .fetch_one(&self.pool)
        .await?
        .try_get("first")?;
        Ok(first.unwrap_or(position).min(position) - 1)
    }

    /// The commit of the newest `commit.applied` event (`None`: none retained): the revision
    /// the replicas sharing this database applied last. A replica still on an older one must
    /// not start or forget sinks by its older `cplane.yaml`, or it would undo what a newer one
    /// did (drop a sink's cursor that is then started again, delivering its events twice).
    pub async fn newest_applied_commit(&self) -> Result<Option<String>, Error> {
        let row =
            sqlx::query("SELECT body FROM events WHERE kind = $1 ORDER BY position DESC LIMIT 1")
                .bind(EventType::CommitApplied.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(super::events::cloud_event(&row)?.data["commit"]
            .as_str()
            .map(str::to_owned))
    }

    /// Starts `sink`'s cursor after `position` unless it has one already (a sink keeps its
    /// cursor across restarts and changes of its configuration). Safe on every replica at
    /// once: the first to start it wins. Returns the cursor in force.
    pub async fn start_sink(&self, sink: &str, position: i64) -> Result<i64, Error> {
        sqlx::query(
            "INSERT INTO event_cursors (sink, position) VALUES ($1, $2) ON CONFLICT (sink) DO NOTHING",
        )
        .bind(sink)
        .bind(position)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT position FROM event_cursors WHERE sink = $1")
            .bind(sink)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("position")?)
    }

    /// Forgets every sink but `keep`: their cursors, pending deliveries and dead letters (a
    /// sink removed from `cplane.yaml`; added again later, it starts afresh). Returns the
    /// sinks forgotten.
    pub async fn forget_sinks_except(&self, keep: &[String]) -> Result<Vec<String>, Error> {
        let mut known: Vec<String> =
            sqlx::query("SELECT sink FROM event_cursors UNION SELECT sink FROM event_deliveries")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get("sink"))
                .collect::<Result<_, _>>()?;
        known.retain(|s| !keep.contains(s));
        known.sort();
        for sink in &known {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM event_deliveries WHERE sink = $1")
                .bind(sink)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM event_cursors WHERE sink = $1")
                .bind(sink)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(known)
    }

    /// Adds a delivery to `sink` for every event of `types` after its cursor (at most `page`
    /// events read), and moves the cursor. A sink without a cursor ([`Db::start_sink`]: not
    /// started, or forgotten since) gets nothing. Idempotent and safe on every replica at
    /// once. Returns how many deliveries were added.
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
        // Only forwards, and never bringing back a cursor forgotten meanwhile (the sink was
        // removed while this replica was still delivering to it).
        sqlx::query("UPDATE event_cursors SET position = $1 WHERE sink = $2 AND position < $1")
            .bind(to)
            .bind(sink)
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

    /// Hands back every claim `replica` holds on `sink`'s deliveries, due at once: a sink task
    /// starting after another of the same replica was stopped (its configuration changed, or
    /// a new revision was applied) takes over what that one had claimed and not delivered,
    /// rather than waiting out its lease. A delivery the stopped task had in flight goes out
    /// again (at least once; receivers de-duplicate by id).
    pub async fn release_claims(&self, sink: &str, replica: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE event_deliveries SET leased_by = '', lease_until = 0
             WHERE sink = $1 AND leased_by = $2 AND state = 'pending'",
        )
        .bind(sink)
        .bind(replica)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Hands back `replica`'s claim of `positions` of `sink`, to be claimed again from
    /// `until` (unix millis): the rest of a batch after a delivery failed, due when the failed
    /// one's retry is, so they go out after it, in order, instead of waiting for their lease.
    pub async fn hold_deliveries(
        &self,
        sink: &str,
        replica: &str,
        positions: &[i64],
        until: i64,
    ) -> Result<(), Error> {
        if positions.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = (4..positions.len() + 4).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE event_deliveries SET leased_by = '', lease_until = $1
             WHERE sink = $2 AND leased_by = $3 AND position IN ({})",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(until).bind(sink).bind(replica);
        for p in positions {
            q = q.bind(*p);
        }
        q.execute(&self.pool).await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    //! Sink cursors on both engines: where a sink starts, that it keeps its place, and that a
    //! forgotten sink gets nothing.

    use super::*;
    use crate::events::NewEvent;
    use serde_json::json;

    async fn pause() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    async fn sink_cursors(db: &Db) {
        let scope = "sgp-1/prod";
        let mut committed = db.watch_events();
        // Before the sink: a commit applied, a drift finding.
        db.set_applied_revision(scope, "c0").await.expect("applied");
        db.record_events(&[NewEvent::new(
            EventType::DriftFound,
            "workspace/acme",
            json!({"workspace": "acme", "repairs": []}),
        )])
        .await
        .expect("record");
        assert!(
            committed.has_changed().expect("watch"),
            "commits wake watchers"
        );
        committed.borrow_and_update();
        pause().await;
        // The run applying c1 (which adds the sink): a bundle, the run, commit.applied.
        let started = now_ms();
        pause().await;
        db.point_cluster("w-acme", "tenant", "sgp-1", "prod", "sha256:a")
            .await
            .expect("point");
        let bundle = db.last_event_position().await.expect("head");
        db.record_run(
            "r1",
            "c1",
            scope,
            &json!(null),
            "converged",
            &[],
            started,
            1,
        )
        .await
        .expect("run");
        db.set_applied_revision(scope, "c1").await.expect("applied");
        assert!(committed.has_changed().expect("watch"));
        let head = db.last_event_position().await.expect("head");
        assert_eq!(head, bundle + 1);

        let start = db.sink_start_for_commit("c1").await.expect("start");
        assert_eq!(start, bundle - 1, "just before the run's first event");
        assert_eq!(db.start_sink("ops", start).await.expect("start"), start);
        assert_eq!(
            db.start_sink("ops", head).await.expect("start"),
            start,
            "a known sink keeps its cursor"
        );
        assert_eq!(
            db.expand_deliveries("ops", &EventType::ALL, 100)
                .await
                .expect("expand"),
            2,
            "the run's bundle and commit.applied, not the earlier events"
        );
        let claimed = db
            .claim_deliveries("ops", "r", 30_000, 10)
            .await
            .expect("claim");
        assert_eq!(claimed, vec![(bundle, 0), (head, 0)]);
        let events = db.events_at(&[bundle, head]).await.expect("events");
        assert_eq!(events[&head].event.kind, "io.cplane.commit.applied");
        assert_eq!(events[&bundle].event.kind, "io.cplane.bundle.published");

        // Unknown commits start at the newest event; a commit whose run is no longer recorded
        // at its commit.applied.
        assert_eq!(db.sink_start_for_commit("nope").await.expect("start"), head);
        db.set_applied_revision(scope, "c2").await.expect("applied");
        let c2 = db.last_event_position().await.expect("head");
        assert_eq!(db.sink_start_for_commit("c2").await.expect("start"), c2 - 1);

        // Forgotten: no cursor, no deliveries, and nothing more for it.
        assert_eq!(
            db.forget_sinks_except(&["other".into()])
                .await
                .expect("forget"),
            vec!["ops".to_owned()]
        );
        assert!(db.sink_backlogs().await.expect("backlogs").is_empty());
        assert_eq!(
            db.expand_deliveries("ops", &EventType::ALL, 100)
                .await
                .expect("expand"),
            0
        );
        assert!(db
            .claim_deliveries("ops", "r", 30_000, 10)
            .await
            .expect("claim")
            .is_empty());
    }

    #[tokio::test]
    async fn sqlite_sink_cursors() {
        let (_dir, db) = super::super::test_support::sqlite().await;
        sink_cursors(&db).await;
    }

    #[tokio::test]
    async fn postgres_sink_cursors() {
        super::super::test_support::with_postgres(|db| async move { sink_cursors(&db).await })
            .await;
    }
}
