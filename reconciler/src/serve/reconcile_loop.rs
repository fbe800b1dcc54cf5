//! The reconcile loop: the state repo's mirror, the file watch, the lease, and one run after
//! another, each followed by the [`Action`] its outcome calls for.

use super::*;

/// A snapshot of the last reconcile.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastRun {
    /// Commit reconciled (or refused).
    pub commit: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Errors (validation, refusals, failed steps).
    pub errors: Vec<String>,
    /// Steps planned.
    pub steps: usize,
    /// Unix millis at the end of the run.
    pub finished_at: i64,
    /// `full` or `incremental`.
    pub mode: &'static str,
}

/// Opens (or creates) the bare mirror with `origin` pointing at `url`.
pub(super) fn open_mirror(path: &Path, url: &str) -> Result<git2::Repository, git2::Error> {
    let repo = match git2::Repository::open_bare(path) {
        Ok(r) => r,
        Err(_) => git2::Repository::init_bare(path)?,
    };
    if repo.find_remote("origin").is_err() {
        repo.remote("origin", url)?;
    } else {
        repo.remote_set_url("origin", url)?;
    }
    Ok(repo)
}

/// The branch to follow: `wanted`, or the remote's default branch (`HEAD`) when `None`; an
/// error in words when the remote cannot be read or has no such branch.
pub(super) fn resolve_branch(
    repo: &git2::Repository,
    url: &str,
    wanted: Option<&str>,
) -> Result<String, String> {
    let mut remote = repo
        .find_remote("origin")
        .map_err(|e| e.message().to_owned())?;
    let connection = remote
        .connect_auth(
            git2::Direction::Fetch,
            Some(crate::remote::callbacks()),
            None,
        )
        .map_err(|e| format!("cannot read the state repo {url}: {}", e.message()))?;
    let heads: Vec<String> = connection
        .list()
        .map_err(|e| format!("cannot list the branches of {url}: {}", e.message()))?
        .iter()
        .filter_map(|h| h.name().strip_prefix("refs/heads/").map(str::to_owned))
        .collect();
    let branch = match wanted {
        Some(b) => b.to_owned(),
        None => {
            let default = connection.default_branch().ok();
            match default.as_ref().and_then(|d| d.as_str().ok()) {
                Some(d) => d.trim_start_matches("refs/heads/").to_owned(),
                None => {
                    return Err(format!(
                        "the state repo {url} has no default branch; name one with --branch"
                    ))
                }
            }
        }
    };
    if heads.contains(&branch) {
        Ok(branch)
    } else if heads.is_empty() {
        Err(format!(
            "the state repo {url} has no branches yet: push a first commit"
        ))
    } else {
        Err(format!(
            "the state repo {url} has no branch `{branch}` (it has: {}); choose one with --branch",
            heads.join(", ")
        ))
    }
}

/// Fetches the branch; returns the mirrored ref name.
pub(super) fn fetch(repo: &git2::Repository, branch: &str) -> Result<String, git2::Error> {
    let mut remote = repo.find_remote("origin")?;
    let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(crate::remote::callbacks());
    remote.fetch(&[spec.as_str()], Some(&mut options), None)?;
    Ok(format!("refs/remotes/origin/{branch}"))
}

/// Quiet time after the last ref change before a watched repository triggers a run: a
/// `git commit` or `git pull` moves several files, and they make one run.
pub(super) const WATCH_DEBOUNCE: Duration = Duration::from_millis(150);

/// Whether a file-system event in a watched repository's git directory moves a branch or
/// `HEAD`. Only writes count: reading a ref (which every fetch of the reconciler does) makes
/// access events that must not trigger another fetch; lock files, reflogs and the index are
/// git's own bookkeeping.
pub(super) fn moves_a_ref(git_dir: &Path, event: &notify::Event) -> bool {
    use notify::event::{EventKind, ModifyKind};
    let writes = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    };
    writes
        && event.paths.iter().any(|p| {
            let Ok(rel) = p.strip_prefix(git_dir) else {
                return false;
            };
            let lock = p.extension().is_some_and(|e| e == "lock");
            !lock
                && (rel.starts_with("refs/heads")
                    || rel == Path::new("packed-refs")
                    || rel == Path::new("HEAD"))
        })
}

/// Watches a local repository's branches (loose refs under `refs/heads`, `packed-refs`,
/// `HEAD`) and triggers a reconcile when one moves, debounced ([`WATCH_DEBOUNCE`]). Nothing
/// else is watched: the reconciler's own writes (its mirror, database and `.cplane` folder)
/// live elsewhere, and its reads of the repository are not writes ([`moves_a_ref`]).
pub(super) fn watch_local(
    path: &Path,
    shared: Arc<Shared>,
) -> Result<notify::RecommendedWatcher, Box<dyn std::error::Error>> {
    use notify::{RecursiveMode, Watcher};
    let git_dir = std::fs::canonicalize(git2::Repository::open(path)?.path())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched = git_dir.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| moves_a_ref(&watched, &e)) {
            let _ = tx.send(());
        }
    })?;
    std::fs::create_dir_all(git_dir.join("refs/heads"))?;
    watcher.watch(&git_dir.join("refs/heads"), RecursiveMode::Recursive)?;
    watcher.watch(&git_dir, RecursiveMode::NonRecursive)?;
    // The debounce: after a change, wait until the repository is quiet, then trigger once.
    // Ends when the watcher (and with it `tx`) is dropped.
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            shared.metrics.pending.set(1);
            loop {
                tokio::select! {
                    more = rx.recv() => if more.is_none() { return },
                    () = tokio::time::sleep(WATCH_DEBOUNCE) => break,
                }
            }
            shared.trigger.notify_one();
        }
    });
    tracing::info!(path = %git_dir.display(), "watching the local repository's branches");
    Ok(watcher)
}

/// Reconciles while this replica holds the lease ([`crate::lease`]); stands by otherwise.
/// Returns when the server shuts down.
pub(super) async fn reconcile_loop(shared: Arc<Shared>) {
    let scope = shared.settings.scope.label();
    let mut stopped = shared.stopped.clone();
    loop {
        let mut lease = tokio::select! {
            lease = Lease::acquire(shared.db.url(), &scope) => lease,
            () = standby(&shared, &scope) => unreachable!("standby returns only by cancellation"),
            () = stop_requested(&mut stopped) => return,
        };
        tracing::info!(scope, "holding the reconcile lease");
        shared.leader.store(true, Ordering::SeqCst);
        let lost = lead(&shared, &mut lease).await;
        shared.leader.store(false, Ordering::SeqCst);
        if !lost {
            return;
        }
        tracing::warn!(scope, "lost the reconcile lease; standing by");
    }
}

/// What the loop does after a run: the shape of kube-runtime's `Action`, decided from the
/// run's outcome by [`next_action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Run again after this long (converging: soon; errors: with growing backoff), or
    /// earlier on a trigger.
    Requeue(Duration),
    /// Nothing to retry: wait for the branch to move (a trigger) or the periodic poll.
    AwaitChange,
}

/// How soon a converging run (e.g. a certificate waiting for DNS validation) runs again.
pub(super) const REQUEUE_CONVERGING: Duration = Duration::from_secs(15);
/// The first retry after an error; it doubles per consecutive error up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between retries of a run that keeps failing.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The requeue after a run that ended with `outcome`; `failures` counts consecutive errors
/// (reset by any other outcome). Errors back off exponentially with full jitter (half to all
/// of the step, so replicas and restarts spread out); a refused or held commit is never
/// retried: it waits for the branch to change.
pub(super) fn next_action(outcome: RunOutcome, failures: &mut u32, jitter: f64) -> Action {
    match outcome {
        RunOutcome::Failed | RunOutcome::Error => {
            let step = BACKOFF_FIRST
                .saturating_mul(1 << (*failures).min(16))
                .min(BACKOFF_MAX);
            *failures = failures.saturating_add(1);
            Action::Requeue(step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
        }
        RunOutcome::Converging => {
            *failures = 0;
            Action::Requeue(REQUEUE_CONVERGING.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
        }
        RunOutcome::Converged | RunOutcome::Refused | RunOutcome::Held => {
            *failures = 0;
            Action::AwaitChange
        }
    }
}

/// Why [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// A webhook, the file watch or an API write: run if the branch moved.
    Trigger,
    /// The poll or a requeue: a full run (which also checks drift).
    Full,
}

/// Runs reconciles until the lease is lost (`true`) or the server stops (`false`). The first
/// run, polls and requeues are full runs (they also check drift); triggers run
/// incrementally, and not at all when the branch did not move. A commit that was refused (or
/// held) is not run again: the loop waits for the branch to move.
pub(super) async fn lead(shared: &Arc<Shared>, lease: &mut Lease) -> bool {
    let mut wake = Wake::Full;
    let mut failures = 0u32;
    let mut requeue: Option<tokio::time::Instant> = None;
    // The head commit whose run is final until the branch moves (refused or held).
    let mut settled: Option<String> = None;
    loop {
        if *shared.stopped.borrow() {
            return false;
        }
        if !lease.check().await {
            return true;
        }
        shared.metrics.pending.set(0);
        let started = Instant::now();
        if let Some(outcome) = run_once(shared, wake == Wake::Full, settled.as_deref()).await {
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            shared
                .metrics
                .record_run(outcome.outcome, started.elapsed());
            match outcome.outcome {
                RunOutcome::Refused => tracing::warn!(
                    commit = %outcome.commit,
                    errors = outcome.errors.len(),
                    "commit refused, nothing of it applied; waiting for the next commit: {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Held => tracing::warn!(
                    commit = %outcome.commit,
                    "commit held, waiting for a confirming commit: {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Error | RunOutcome::Failed => tracing::warn!(
                    commit = %outcome.commit,
                    outcome = %outcome.outcome,
                    ms,
                    "run failed (retried with backoff): {}",
                    outcome.errors.join("; ")
                ),
                RunOutcome::Converged | RunOutcome::Converging => tracing::info!(
                    commit = %outcome.commit,
                    outcome = %outcome.outcome,
                    mode = outcome.mode,
                    ms,
                    "reconciled"
                ),
            }
            settled = matches!(outcome.outcome, RunOutcome::Refused | RunOutcome::Held)
                .then(|| outcome.commit.clone());
            if !matches!(outcome.outcome, RunOutcome::Refused | RunOutcome::Error) {
                shared
                    .applied
                    .lock()
                    .expect("applied")
                    .clone_from(&outcome.commit);
            }
            let action = next_action(outcome.outcome, &mut failures, rand::random());
            requeue = match action {
                Action::Requeue(after) => Some(tokio::time::Instant::now() + after),
                Action::AwaitChange => None,
            };
            *shared.last.lock().expect("last") = Some(outcome);
            // The run may have started or superseded a rollout.
            shared.rollout_wake.notify_one();
            // Wake the long-polls of clusters whose bundle changed (other replicas hear of it
            // by NOTIFY).
            if let Err(e) = shared.store.refresh(None).await {
                tracing::warn!(error = %e, "reading bundle heads");
            }
        }
        wake = match wait(shared, lease, requeue).await {
            Some(wake) => wake,
            None => return !*shared.stopped.borrow(),
        };
        if wake == Wake::Full {
            requeue = None;
        }
    }
}

/// A standby's duties, until cancelled: keep the mirror and the applied revision current (from
/// the holder's record in the database) so that the read API answers on every replica.
pub(super) async fn standby(shared: &Shared, scope: &str) {
    loop {
        match shared.db.applied_revision(scope).await {
            Ok(Some(commit)) => {
                let s = &shared.settings;
                let fetched = tokio::task::block_in_place(|| {
                    let repo = open_mirror(&s.mirror, &s.repo_url)?;
                    fetch(&repo, &shared.branch)?;
                    // The holder may have applied a commit this mirror has not fetched yet.
                    repo.find_commit(git2::Oid::from_str(&commit)?).map(|_| ())
                });
                match fetched {
                    Ok(()) => {
                        *shared.applied.lock().expect("applied") = commit;
                        shared.ready.store(true, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "standby: applied commit not mirrored yet")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "standby: reading the applied revision"),
        }
        tokio::select! {
            () = shared.trigger.notified() => {}
            () = tokio::time::sleep(STANDBY_REFRESH) => {}
        }
    }
}

/// How often a standby re-reads the applied revision.
pub(super) const STANDBY_REFRESH: Duration = Duration::from_secs(2);

/// How often the holder checks its lease while it waits.
pub(super) const LEASE_CHECK: Duration = Duration::from_secs(5);

/// Waits for a trigger, the jittered poll or the requeue deadline; triggers during a run
/// coalesce. `None` when the lease was lost or the server stops meanwhile.
pub(super) async fn wait(
    shared: &Shared,
    lease: &mut Lease,
    requeue: Option<tokio::time::Instant>,
) -> Option<Wake> {
    let poll = tokio::time::sleep(shared.settings.poll.mul_f64(rand::random_range(0.8..1.2)));
    tokio::pin!(poll);
    let mut stopped = shared.stopped.clone();
    loop {
        let requeued = async {
            match requeue {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop_requested(&mut stopped) => return None,
            () = shared.trigger.notified() => return Some(Wake::Trigger),
            () = &mut poll => return Some(Wake::Full),
            () = requeued => return Some(Wake::Full),
            () = tokio::time::sleep(LEASE_CHECK) => {
                if !lease.check().await {
                    return None;
                }
            }
        }
    }
}

pub(super) fn progress() -> crate::apply::Progress {
    Arc::new(|step, outcome| {
        tracing::info!(workspace = %step.workspace, action = %step.action, outcome = outcome.label(), "step");
    })
}

pub(super) fn summary(
    commit: String,
    plan: &crate::plan::Plan,
    report: &crate::apply::Report,
) -> LastRun {
    LastRun {
        commit,
        outcome: crate::status::outcome(plan, report),
        errors: crate::status::errors(plan, report),
        steps: plan.steps.len(),
        finished_at: crate::db::now_ms(),
        mode: "full",
    }
}

pub(super) fn error_run(commit: String, error: impl std::fmt::Display) -> LastRun {
    LastRun {
        commit,
        outcome: RunOutcome::Error,
        errors: vec![error.to_string()],
        finished_at: crate::db::now_ms(),
        ..LastRun::default()
    }
}

/// One run: incremental when the new commit only touches `workspaces/` (re-validate, render,
/// plan and apply just those), full otherwise (and on the first run, and on a poll with no new
/// commit, which is when drift is checked).
///
/// `None` when there is nothing to run: triggered but the branch did not move, or the head is
/// `settled` (a refused or held commit, final until the branch moves).
pub(super) async fn run_once(
    shared: &Shared,
    periodic: bool,
    settled: Option<&str>,
) -> Option<LastRun> {
    let s = &shared.settings;
    let options = Options {
        max_deletions: s.max_deletions,
        confirmed: false,
        delete_foreign_records: s.delete_foreign_records,
    };
    let scope = s.scope.label();
    let started = Instant::now();
    let started_at = crate::db::now_ms();
    let mut state = shared.state.lock().await;

    // Git work is synchronous and stays in this block (a Repository is not Send).
    type Fetched = (String, Option<Prepared>, Option<source::Snapshot>);
    let fetched = tokio::task::block_in_place(|| -> Result<Fetched, String> {
        let repo = open_mirror(&s.mirror, &s.repo_url).map_err(|e| e.to_string())?;
        shared.metrics.fetches.inc();
        let rev = fetch(&repo, &shared.branch)
            .map_err(|e| format!("fetching {}: {}", s.repo_url, e.message()))?;
        let commit = source::resolve(&repo, &rev)
            .map_err(|e| e.to_string())?
            .to_string();
        if settled == Some(commit.as_str()) {
            return Ok((commit, None, None));
        }
        if !periodic && state.as_ref().is_some_and(|inc| inc.commit() == commit) {
            return Ok((commit, None, None));
        }
        if let Some(inc) = state.as_mut() {
            if let Ok(Some(ids)) = inc.incremental_ids(&repo, &rev) {
                if !ids.is_empty() {
                    let prepared = inc.prepare(&repo, &rev).map_err(|e| e.to_string())?;
                    return Ok((commit, Some(prepared), None));
                }
            }
        }
        let snapshot = source::read(&repo, &rev).map_err(|e| e.to_string())?;
        Ok((commit, None, Some(snapshot)))
    });
    let (commit, prepared, snapshot) = match fetched {
        Ok((_, None, None)) => return None, // the branch did not move, or its head is settled
        Ok(f) => f,
        Err(e) => return Some(error_run(String::new(), e)),
    };
    let run_id = format!("{started_at}-{}", &commit[..12.min(commit.len())]);
    let run = Run {
        db: &shared.db,
        commit: &commit,
        scope: &scope,
        run_id: &run_id,
        started,
        started_at,
        rollout: None,
    };

    match prepared {
        Some(Prepared::Refused(r)) => {
            let errors: Vec<String> = r.diagnostics.iter().map(ToString::to_string).collect();
            if let Err(e) = record_refusal(run, &errors).await {
                return Some(error_run(commit, e));
            }
            return Some(LastRun {
                commit,
                outcome: RunOutcome::Refused,
                errors,
                steps: 0,
                finished_at: crate::db::now_ms(),
                mode: "incremental",
            });
        }
        Some(Prepared::Staged(staged)) => {
            let inc = state.as_mut().expect("staged implies a state");
            // Steps 8 and 9 as a full run has them (they need a cloud, like every outside call).
            let ports = match &shared.aws {
                Some(aws) => {
                    let mut notes = Vec::new();
                    let global = GlobalPorts::FromConfig(Some(Box::new(aws.sdk_config().clone())));
                    let ports = reconcile::global_ports(inc.model(), global, &mut notes);
                    for note in notes {
                        tracing::warn!("{note}");
                    }
                    *shared.global_lookup.write().expect("global lookup lock") =
                        ports.lookup_sink.clone();
                    ports
                }
                None => Ports::default(),
            };
            let r = match inc.finish(staged, &shared.db, options, &ports).await {
                Ok(r) => r,
                Err(e) => return Some(error_run(commit, e)),
            };
            let cloud = shared
                .aws
                .clone()
                .map(|a| std::sync::Arc::new(a) as std::sync::Arc<dyn crate::cloud::Cloud>);
            let input = crate::rollout::Input::from_model(inc.model());
            let run = Run {
                rollout: Some(&input),
                ..run
            };
            return Some(
                match apply_and_record_ports(
                    run,
                    cloud,
                    ports,
                    &r.plan,
                    r.desired,
                    r.observed,
                    r.bundles,
                    progress(),
                )
                .await
                {
                    Ok((report, _)) => LastRun {
                        mode: "incremental",
                        ..summary(commit, &r.plan, &report)
                    },
                    Err(e) => error_run(commit, e),
                },
            );
        }
        Some(Prepared::NeedsFull(_)) | None => {}
    }

    let Some(snapshot) = snapshot else {
        return Some(error_run(commit, "no snapshot for a full run"));
    };
    let request = Request {
        scope: s.scope.clone(),
        options,
        dry_run: false,
        drift: Sample::HOURLY,
        memo: Some(shared.render_memo.clone()),
    };
    Some(
        match reconcile::run(
            snapshot,
            &shared.db,
            shared.aws.clone(),
            request,
            progress(),
        )
        .await
        {
            Err(e) => error_run(commit, e),
            Ok(RunResult::Refused(errors)) => LastRun {
                commit,
                outcome: RunOutcome::Refused,
                errors,
                steps: 0,
                finished_at: crate::db::now_ms(),
                mode: "full",
            },
            Ok(RunResult::Planned {
                plan,
                report,
                model,
                ..
            }) => {
                shared.ready.store(true, Ordering::SeqCst);
                if let Some(model) = model {
                    if let Some(aws) = &shared.aws {
                        let global =
                            GlobalPorts::FromConfig(Some(Box::new(aws.sdk_config().clone())));
                        let ports = reconcile::global_ports(&model, global, &mut Vec::new());
                        *shared.global_lookup.write().expect("global lookup lock") =
                            ports.lookup_sink;
                    }
                    *state = Some(Incremental::from_model(
                        commit.clone(),
                        *model,
                        s.scope.clone(),
                    ));
                }
                summary(commit, &plan, &report.unwrap_or_default())
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_writes_to_branches_and_head_move_a_ref() {
        let git = Path::new("/repo/.git");
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(moves_a_ref(
            git,
            &event(rename, "/repo/.git/refs/heads/main")
        ));
        assert!(moves_a_ref(
            git,
            &event(
                EventKind::Create(CreateKind::File),
                "/repo/.git/refs/heads/topic/x"
            )
        ));
        assert!(moves_a_ref(git, &event(write, "/repo/.git/packed-refs")));
        assert!(moves_a_ref(git, &event(write, "/repo/.git/HEAD")));
        // Reads (what a fetch of the repository does) and git's bookkeeping do not.
        for kind in [
            EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read)),
            EventKind::Access(AccessKind::Close(notify::event::AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        ] {
            assert!(!moves_a_ref(git, &event(kind, "/repo/.git/HEAD")));
        }
        for path in [
            "/repo/.git/refs/heads/main.lock",
            "/repo/.git/index",
            "/repo/.git/FETCH_HEAD",
            "/repo/.git/logs/HEAD",
            "/repo/.git/refs/remotes/origin/main",
            "/repo/workspaces/acme.yaml",
        ] {
            assert!(!moves_a_ref(git, &event(write, path)), "{path}");
        }
    }

    #[test]
    fn errors_back_off_with_jitter_and_settled_runs_wait_for_a_change() {
        let mut failures = 0;
        let steps: Vec<Action> = (0..12)
            .map(|_| next_action(RunOutcome::Error, &mut failures, 1.0))
            .collect();
        assert_eq!(steps[0], Action::Requeue(Duration::from_secs(1)));
        assert_eq!(steps[1], Action::Requeue(Duration::from_secs(2)));
        assert_eq!(steps[4], Action::Requeue(Duration::from_secs(16)));
        assert_eq!(steps[11], Action::Requeue(BACKOFF_MAX));
        // Full jitter: at least half the step.
        let mut f = 3;
        assert_eq!(
            next_action(RunOutcome::Failed, &mut f, 0.0),
            Action::Requeue(Duration::from_secs(4))
        );
        // Any other outcome resets the count.
        assert_eq!(
            next_action(RunOutcome::Refused, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(failures, 0);
        assert_eq!(
            next_action(RunOutcome::Held, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(
            next_action(RunOutcome::Converged, &mut failures, 0.5),
            Action::AwaitChange
        );
        assert_eq!(
            next_action(RunOutcome::Converging, &mut failures, 0.5),
            Action::Requeue(REQUEUE_CONVERGING)
        );
    }
}
