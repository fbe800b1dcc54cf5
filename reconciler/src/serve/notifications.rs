//! The notification sinks of the applied revision's `cplane.yaml`, each delivered by a task
//! of its own ([`crate::notify::run_sink`]), on every replica (deliveries are claimed, so
//! each event goes out once). When the applied revision changes the sinks are read again
//! and their tasks restarted; reconciling never waits on them.
//!
//! Before a sink's task runs, its cursor is started: a sink the applied revision introduces
//! starts at the first event of the run that applied it (so it hears of the commit that added
//! it, and of nothing before); a sink already known keeps its cursor, whatever changed in its
//! configuration; a sink no longer routed to is forgotten ([`start_cursors`]).

use super::*;

/// What `/v1/status` shows of notifications: the sinks configured and problems reading them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(super) struct NotifyState {
    /// Names of the sinks being delivered to.
    pub(super) sinks: Vec<String>,
    /// Why a declared sink is not (a secret that cannot be read, an unreadable document).
    pub(super) problems: Vec<String>,
}

/// `spec.notifications` of `cplane.yaml` at `commit` in the mirror (`None`: none declared).
fn notifications_at(
    mirror: &Path,
    commit: &str,
) -> Result<Option<cplane_schema::notifications::NotificationsSpec>, String> {
    let repo = git2::Repository::open_bare(mirror).map_err(|e| e.to_string())?;
    let oid = git2::Oid::from_str(commit).map_err(|e| e.to_string())?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|e| e.to_string())?;
    let entry = tree
        .get_path(Path::new("cplane.yaml"))
        .map_err(|e| e.to_string())?;
    let blob = repo.find_blob(entry.id()).map_err(|e| e.to_string())?;
    let platform: cplane_schema::model::Platform =
        serde_yaml::from_slice(blob.content()).map_err(|e| format!("cplane.yaml: {e}"))?;
    Ok(platform.spec.notifications.map(|n| *n))
}

/// The sinks `spec` routes events to (those kept across a commit, whether or not their secret
/// can be read now).
fn routed_sinks(spec: &cplane_schema::notifications::NotificationsSpec) -> Vec<String> {
    spec.sinks
        .iter()
        .filter(|s| spec.routes.iter().any(|r| r.sink == s.name))
        .map(|s| s.name.clone())
        .collect()
}

/// Starts the cursors of `commit`'s sinks that have none (a sink `commit` introduces starts
/// at the first event of the run that applied it: [`crate::db::Db::sink_start_for_commit`])
/// and forgets the sinks no longer routed to; only on the newest applied revision
/// ([`crate::db::Db::newest_applied_commit`]): a replica behind another leaves the cursors to
/// it (its sink tasks deliver by them all the same).
async fn start_cursors(
    db: &crate::db::Db,
    commit: &str,
    routed: &[String],
) -> Result<(), crate::db::Error> {
    if db
        .newest_applied_commit()
        .await?
        .is_some_and(|newest| newest != commit)
    {
        return Ok(());
    }
    for name in db.forget_sinks_except(routed).await? {
        tracing::info!(sink = %name, "notification sink removed: its cursor and deliveries are dropped");
    }
    if routed.is_empty() {
        return Ok(());
    }
    let start = db.sink_start_for_commit(commit).await?;
    for name in routed {
        let at = db.start_sink(name, start).await?;
        tracing::debug!(sink = %name, after = at, "notification sink cursor");
    }
    Ok(())
}

/// Follows the applied revision and keeps one delivery task per configured sink.
pub(super) async fn notifier(shared: Arc<Shared>) {
    let replica = format!("{:016x}", rand::random::<u64>());
    let mut tasks = tokio::task::JoinSet::new();
    let mut seen = String::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let commit = shared.applied.lock().expect("applied").clone();
        if commit.is_empty() || commit == seen {
            continue;
        }
        let mirror = shared.settings.mirror.clone();
        let at = commit.clone();
        let spec = tokio::task::spawn_blocking(move || notifications_at(&mirror, &at))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let mut state = NotifyState::default();
        // The old tasks end before new ones start, which take over their claims
        // (`run_sink`): no two tasks of this replica deliver to one sink.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        match spec {
            Ok(spec) => {
                let routed = spec.as_ref().map(routed_sinks).unwrap_or_default();
                if let Err(e) = start_cursors(&shared.db, &commit, &routed).await {
                    // Tried again on the next tick; no sink runs without its cursor.
                    tracing::warn!(error = %e, "starting the notification sinks");
                    continue;
                }
                if let Some(spec) = spec {
                    let (sinks, problems) = crate::notify::sinks_from_spec(&spec);
                    for p in &problems {
                        tracing::warn!(problem = %p, "notification sink left out");
                    }
                    state.problems = problems;
                    for sink in sinks {
                        state.sinks.push(sink.name.clone());
                        tasks.spawn(crate::notify::run_sink(
                            shared.db.clone(),
                            replica.clone(),
                            sink,
                        ));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the notification sinks");
                state.problems.push(e);
            }
        }
        seen = commit;
        *shared.notify.lock().expect("notify") = state;
    }
}
