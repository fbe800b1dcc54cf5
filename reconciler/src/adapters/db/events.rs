//! The events outbox (migration 0012, [`crate::events`]): appending an event inside the
//! transaction of the change that causes it, reading them in order, pruning old ones.
//!
//! # Guarantees
//! - [`append`] runs on the caller's transaction: the event commits or rolls back with the
//!   change.
//! - Positions are visible in order: [`append`] takes the position from the `#all` counter
//!   row with an `UPDATE`, whose row lock is held until the transaction ends, so two writers
//!   take positions in the order they commit; a reader that has seen position `n` has seen
//!   every event below `n` (on PostgreSQL at READ COMMITTED, as on single-writer SQLite).
//!   Writers call [`append`] last in their transaction to hold that lock briefly.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;
use crate::events::{CloudEvent, EventType, NewEvent, StoredEvent};

/// The counter row every event takes its position from.
const ALL: &str = "#all";

/// How long events are kept: older ones are deleted (unless a sink still has to deliver
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRetention {
    /// Events older than this are deleted.
    pub max_age: std::time::Duration,
}

impl Default for EventRetention {
    /// Seven days.
    fn default() -> Self {
        Self {
            max_age: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only these types; empty: every type.
    pub types: Vec<EventType>,
    /// Only events concerning this workspace.
    pub workspace: Option<String>,
}

/// Takes the next number of counter `stream`.
async fn next(conn: &mut sqlx::AnyConnection, stream: &str) -> Result<i64, Error> {
    let row = sqlx::query(
        "INSERT INTO event_counters (stream, last) VALUES ($1, 1)
         ON CONFLICT (stream) DO UPDATE SET last = event_counters.last + 1
         RETURNING last",
    )
    .bind(stream)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("last")?)
}

/// Appends `new` to the outbox on `conn` (a transaction's connection), in `new`'s stream or
/// `default_stream`. Returns its position.
pub(super) async fn append(
    conn: &mut sqlx::AnyConnection,
    default_stream: &str,
    new: &NewEvent,
) -> Result<i64, Error> {
    let stream = new.stream.as_deref().unwrap_or(default_stream);
    // The position first, always: every writer locks `#all` before its stream's row, so two
    // writers never wait on each other's rows in opposite orders.
    let position = next(conn, ALL).await?;
    let sequence = next(conn, stream).await?;
    let now = now_ms();
    let event = CloudEvent::build(new, stream, sequence, now);
    sqlx::query(
        "INSERT INTO events (position, stream, sequence, id, kind, workspace, created_at, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(position)
    .bind(stream)
    .bind(sequence)
    .bind(&event.id)
    .bind(&event.kind)
    .bind(new.workspace.as_deref().unwrap_or(""))
    .bind(now)
    .bind(serde_json::to_string(&event).expect("events serialize"))
    .execute(&mut *conn)
    .await?;
    Ok(position)
}

pub(super) fn stored(row: &AnyRow) -> Result<StoredEvent, Error> {
    let workspace: String = row.try_get("workspace")?;
    Ok(StoredEvent {
        position: row.try_get("position")?,
        workspace: (!workspace.is_empty()).then_some(workspace),
        event: cloud_event(row)?,
    })
}

/// The CloudEvent in the `body` column of an `events` row.
pub(super) fn cloud_event(row: &AnyRow) -> Result<CloudEvent, Error> {
    let body: String = row.try_get("body")?;
    serde_json::from_str(&body).map_err(|e| Error::Corrupt(format!("event body: {e}")))
}

impl Db {
    /// The stream of facts about the whole fleet this control plane writes (commits,
    /// rollouts): its scope's label. `*` unless set.
    pub fn with_event_stream(mut self, stream: &str) -> Self {
        self.event_stream = stream.into();
        self
    }

    /// The stream of fleet-wide facts ([`Db::with_event_stream`]).
    pub fn event_stream(&self) -> &str {
        &self.event_stream
    }

    /// Says that this process committed events (after the transaction that appended them):
    /// wakes [`Db::watch_events`]' watchers.
    pub(super) fn events_committed(&self) {
        self.events_committed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A watch that changes whenever this process (this `Db` or a clone) commits events: what
    /// the notification sinks wait on instead of polling. Events committed by other processes
    /// (replicas on PostgreSQL) do not move it.
    pub fn watch_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_committed.subscribe()
    }

    /// Writes `events` in one transaction of their own (facts that change nothing else:
    /// a drift check's findings). Returns their positions.
    pub async fn record_events(&self, events: &[NewEvent]) -> Result<Vec<i64>, Error> {
        let mut tx = self.pool.begin().await?;
        let mut positions = Vec::with_capacity(events.len());
        for e in events {
            positions.push(append(&mut tx, &self.event_stream, e).await?);
        }
        tx.commit().await?;
        self.events_committed();
        Ok(positions)
    }

    /// Up to `limit` events after `position`, oldest first, that `filter` wants.
    pub async fn events_after(
        &self,
        position: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut sql =
            String::from("SELECT position, workspace, body FROM events WHERE position > $1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(ws) = &filter.workspace {
            binds.push(ws.clone());
            sql.push_str(&format!(" AND workspace = ${}", binds.len() + 1));
        }
        if !filter.types.is_empty() {
            let mut list = Vec::new();
            for t in &filter.types {
                binds.push(t.as_str().to_owned());
                list.push(format!("${}", binds.len() + 1));
            }
            sql.push_str(&format!(" AND kind IN ({})", list.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY position LIMIT ${}", binds.len() + 2));
        let mut q = sqlx::query(&sql).bind(position);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(stored).collect()
    }

    /// The position of the newest event (0 when there is none).
    pub async fn last_event_position(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT last FROM event_counters WHERE stream = $1")
            .bind(ALL)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("last")).transpose()?.unwrap_or(0))
    }

    /// Deletes the events older than `retention` allows, except those a sink has yet to
    /// deliver. Returns how many.
    pub async fn prune_events(&self, retention: EventRetention) -> Result<u64, Error> {
        let before = now_ms()
            .saturating_sub(i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX));
        let done = sqlx::query(
            "DELETE FROM events WHERE created_at < $1
               AND position NOT IN (SELECT position FROM event_deliveries WHERE state = 'pending')",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    //! The outbox on both engines: SQLite in a temporary file, PostgreSQL in a fresh database
    //! (see `journal.rs`'s tests for the server used).

    use super::*;
    use crate::events::EventType;
    use crate::plan::{Status, StepKind};
    use serde_json::json;

    fn provisioned(ws: &str, region: &str) -> NewEvent {
        NewEvent::new(
            EventType::WorkspaceProvisioned,
            format!("workspace/{ws}"),
            json!({ "workspace": ws }),
        )
        .in_stream(region, "prod")
        .of_workspace(ws)
    }

    /// Positions increase across streams, sequences per stream; filters select by type and
    /// workspace; a rolled back transaction leaves no event and takes no number.
    async fn order_and_filters(db: &Db) {
        let db = db.clone().with_event_stream("*");
        let p = db
            .record_events(&[
                provisioned("acme", "sgp-1"),
                provisioned("hooli", "fra-1"),
                provisioned("initech", "sgp-1"),
                NewEvent::new(EventType::CommitApplied, "commit/c1", json!({})),
            ])
            .await
            .expect("record");
        assert_eq!(p, vec![1, 2, 3, 4]);
        let all = db
            .events_after(0, &EventFilter::default(), 100)
            .await
            .expect("read");
        let ids: Vec<&str> = all.iter().map(|e| e.event.id.as_str()).collect();
        assert_eq!(ids, ["sgp-1/prod:1", "fra-1/prod:1", "sgp-1/prod:2", "*:1"]);
        assert_eq!(all[2].event.sequence, "2");
        assert_eq!(all[2].workspace.as_deref(), Some("initech"));
        assert_eq!(all[3].workspace, None);

        // Rolled back with its change: no event, no number taken.
        let mut tx = db.pool().begin().await.expect("begin");
        append(&mut tx, "*", &provisioned("x", "sgp-1"))
            .await
            .expect("append");
        tx.rollback().await.expect("rollback");
        assert_eq!(db.last_event_position().await.expect("last"), 4);
        db.record_events(&[provisioned("umbrella", "sgp-1")])
            .await
            .expect("record");
        let after = db
            .events_after(4, &EventFilter::default(), 100)
            .await
            .expect("read");
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].position, 5);
        assert_eq!(after[0].event.id, "sgp-1/prod:3");

        let by_ws = db
            .events_after(
                0,
                &EventFilter {
                    types: vec![],
                    workspace: Some("hooli".into()),
                },
                100,
            )
            .await
            .expect("read");
        assert_eq!(by_ws.len(), 1);
        assert_eq!(by_ws[0].event.id, "fra-1/prod:1");
        let by_type = db
            .events_after(
                0,
                &EventFilter {
                    types: vec![EventType::CommitApplied, EventType::RolloutPaused],
                    workspace: None,
                },
                100,
            )
            .await
            .expect("read");
        assert_eq!(by_type.len(), 1);
        assert_eq!(by_type[0].event.kind, "io.cplane.commit.applied");
        let limited = db
            .events_after(1, &EventFilter::default(), 2)
            .await
            .expect("read");
        assert_eq!(
            limited.iter().map(|e| e.position).collect::<Vec<_>>(),
            [2, 3]
        );

        // Retention: nothing is old enough; with no age allowed, everything goes.
        assert_eq!(
            db.prune_events(EventRetention::default())
                .await
                .expect("prune"),
            0
        );
        sqlx::query("UPDATE events SET created_at = created_at - 1000")
            .execute(db.pool())
            .await
            .expect("age");
        assert_eq!(
            db.prune_events(EventRetention {
                max_age: std::time::Duration::ZERO
            })
            .await
            .expect("prune"),
            5
        );
        // Numbers are never reused after a prune.
        assert_eq!(
            db.record_events(&[provisioned("acme", "sgp-1")])
                .await
                .expect("record"),
            vec![6]
        );
    }

    /// Concurrent writers on PostgreSQL: positions come out dense and in commit order, and a
    /// reader polling while they write never sees a position before a smaller one.
    async fn concurrent_writers_commit_in_order(db: &Db) {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        let region = if (w + i) % 2 == 0 { "sgp-1" } else { "fra-1" };
                        db.record_events(&[provisioned(&format!("w{w}-{i}"), region)])
                            .await
                            .expect("record");
                    }
                })
            })
            .collect();
        let mut seen = 0i64;
        let mut reads = 0;
        while seen < 200 {
            let page = db
                .events_after(seen, &EventFilter::default(), 1000)
                .await
                .expect("read");
            for e in page {
                assert_eq!(
                    e.position,
                    seen + 1,
                    "a gap: a later position was visible first"
                );
                seen = e.position;
            }
            reads += 1;
            assert!(reads < 100_000, "the writers stalled");
        }
        for w in writers {
            w.await.expect("writer");
        }
        // Sequences per stream are dense too.
        for stream in ["sgp-1/prod", "fra-1/prod"] {
            let rows =
                sqlx::query("SELECT sequence FROM events WHERE stream = $1 ORDER BY position")
                    .bind(stream)
                    .fetch_all(db.pool())
                    .await
                    .expect("rows");
            let seqs: Vec<i64> = rows.iter().map(|r| r.get("sequence")).collect();
            assert_eq!(seqs, (1..=100).collect::<Vec<i64>>(), "{stream}");
        }
    }

    /// The types written since position `after`, and the new position.
    async fn written(db: &Db, after: &mut i64) -> Vec<String> {
        let new = db
            .events_after(*after, &EventFilter::default(), 1000)
            .await
            .expect("read");
        if let Some(last) = new.last() {
            *after = last.position;
        }
        new.into_iter()
            .map(|e| e.event.kind.trim_start_matches("io.cplane.").to_owned())
            .collect()
    }

    /// The writers of lifecycle changes write their events, once per change, not per call.
    async fn changes_write_their_events(db: &Db) {
        let db = db.clone().with_event_stream("sgp-1/prod");
        let mut at = 0;
        let ws = super::super::test_support::acme();
        db.write_workspace(&ws, 1, Status::Provisioning, "c1")
            .await
            .expect("write");
        assert!(written(&db, &mut at).await.is_empty());
        db.journal_begin("acme", StepKind::CreateZone, "k")
            .await
            .expect("begin");
        for _ in 0..2 {
            db.journal_failed("acme", StepKind::CreateZone, "throttled")
                .await
                .expect("failed");
        }
        db.journal_failed("acme", StepKind::CreateZone, "access denied")
            .await
            .expect("failed");
        assert_eq!(
            written(&db, &mut at).await,
            [
                "workspace.provisioning_failed",
                "workspace.provisioning_failed"
            ],
            "a repeated failure is told once"
        );
        let failed = db
            .events_after(0, &EventFilter::default(), 10)
            .await
            .expect("read");
        assert_eq!(failed[0].event.data["step"], "create_zone");
        assert_eq!(failed[0].event.data["error"], "throttled");
        assert_eq!(failed[0].event.source, "/cplane/sgp-1/prod");
        assert_eq!(failed[0].workspace.as_deref(), Some("acme"));
        for _ in 0..2 {
            db.write_workspace(&ws, 1, Status::Active, "c2")
                .await
                .expect("write");
        }
        db.write_workspace(&ws, 1, Status::Deleted, "c3")
            .await
            .expect("write");
        assert_eq!(
            written(&db, &mut at).await,
            ["workspace.provisioned", "workspace.deprovisioned"]
        );

        for _ in 0..2 {
            db.set_applied_revision("sgp-1/prod", "c1")
                .await
                .expect("applied");
        }
        db.record_run(
            "r1",
            "c2",
            "sgp-1/prod",
            &json!(null),
            "refused",
            &["e".into()],
            now_ms(),
            1,
        )
        .await
        .expect("run");
        db.record_run(
            "r2",
            "c2",
            "sgp-1/prod",
            &json!(null),
            "refused",
            &["e".into()],
            now_ms(),
            1,
        )
        .await
        .expect("run");
        assert_eq!(
            written(&db, &mut at).await,
            ["commit.applied", "commit.refused"]
        );

        for _ in 0..2 {
            db.point_cluster("w-acme", "tenant", "sgp-1", "prod", "sha256:a")
                .await
                .expect("point");
        }
        db.point_cluster("w-acme", "tenant", "sgp-1", "prod", "sha256:b")
            .await
            .expect("point");
        assert_eq!(
            written(&db, &mut at).await,
            ["bundle.published", "bundle.published"]
        );

        let report = |healthy| ClusterReport {
            digest: "sha256:b".into(),
            generation: 2,
            healthy,
            message: if healthy {
                ""
            } else {
                "Deployment bff: 0/3 ready"
            }
            .into(),
            objects: json!([]),
            agent_version: String::new(),
        };
        db.report_cluster_status("w-acme", &report(true))
            .await
            .expect("report");
        db.report_cluster_status("w-acme", &report(false))
            .await
            .expect("report");
        db.report_cluster_status("w-acme", &report(false))
            .await
            .expect("report");
        db.report_cluster_status("w-acme", &report(true))
            .await
            .expect("report");
        assert_eq!(
            written(&db, &mut at).await,
            ["agent.failing", "agent.recovered"]
        );
        assert!(db
            .mark_agents_offline(std::time::Duration::from_secs(60))
            .await
            .expect("offline")
            .is_empty());
        sqlx::query("UPDATE cluster_status SET reported_at = reported_at - 120000")
            .execute(db.pool())
            .await
            .expect("age");
        for _ in 0..2 {
            db.mark_agents_offline(std::time::Duration::from_secs(60))
                .await
                .expect("offline");
        }
        db.report_cluster_status("w-acme", &report(true))
            .await
            .expect("report");
        assert_eq!(written(&db, &mut at).await, ["agent.offline", "agent.back"]);
        let all = db
            .events_after(0, &EventFilter::default(), 100)
            .await
            .expect("read");
        assert!(all
            .iter()
            .filter(|e| e.event.kind.contains(".agent.") || e.event.kind.contains(".bundle."))
            .all(|e| e.workspace.as_deref() == Some("acme")
                && e.event.source == "/cplane/sgp-1/prod"));
    }

    #[tokio::test]
    async fn sqlite_changes_write_their_events() {
        let (_dir, db) = super::super::test_support::sqlite().await;
        changes_write_their_events(&db).await;
    }

    #[tokio::test]
    async fn postgres_changes_write_their_events() {
        super::super::test_support::with_postgres(|db| async move {
            changes_write_their_events(&db).await
        })
        .await;
    }

    #[tokio::test]
    async fn sqlite_orders_filters_and_prunes_events() {
        let (_dir, db) = super::super::test_support::sqlite().await;
        order_and_filters(&db).await;
    }

    #[tokio::test]
    async fn postgres_orders_filters_and_prunes_events() {
        super::super::test_support::with_postgres(|db| async move { order_and_filters(&db).await })
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_concurrent_writers_commit_in_order() {
        super::super::test_support::with_postgres(|db| async move {
            concurrent_writers_commit_in_order(&db).await
        })
        .await;
    }
}
