//! The notification sinks of the applied revision's `cplane.yaml`, each delivered by a task
//! of its own ([`crate::notify::run_sink`]), on every replica (deliveries are claimed, so
//! each event goes out once). When the applied revision changes the sinks are read again
//! and their tasks restarted; reconciling never waits on them.

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
        seen = commit.clone();
        let mirror = shared.settings.mirror.clone();
        let spec = tokio::task::spawn_blocking(move || notifications_at(&mirror, &commit))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let mut state = NotifyState::default();
        tasks.abort_all();
        match spec {
            Ok(None) => {}
            Ok(Some(spec)) => {
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
            Err(e) => {
                tracing::warn!(error = %e, "reading the notification sinks");
                state.problems.push(e);
            }
        }
        *shared.notify.lock().expect("notify") = state;
    }
}
