//! Rollouts over HTTP (`GET /v1/rollouts`, `GET /v1/rollouts/{id}`, `POST
//! /v1/rollouts/{id}/{pause|resume|promote|abort}`, behind the users' authentication layer)
//! and the driver that moves them ([`crate::rollout::advance`]) on the lease holder.

use super::*;
use crate::auth::authz::{self, Action, Grants};
use crate::rollout::{Control, ControlError};
use axum::routing::post;
use axum::Extension;

/// The rollout routes (mounted behind the users' authentication layer).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/rollouts", get(list))
        .route("/v1/rollouts/{id}", get(one))
        .route("/v1/rollouts/{id}/{action}", post(act))
        .with_state(shared)
}

/// Every rollout, newest first (the last 100), with its state and wave: operators only (a
/// rollout names every tenant's cluster).
async fn list(State(sh): State<Arc<Shared>>, Extension(grants): Extension<Grants>) -> Response {
    if !authz::allows(&grants, Action::Operate) {
        return api_error(StatusCode::FORBIDDEN, "rollouts are for operators").into_response();
    }
    match sh.db.rollouts(false, 100).await {
        Ok(rows) => Json(json!({
            "rollouts": rows.iter().map(|r| json!({
                "id": r.id, "commit": r.commit, "stacks": r.stacks, "state": r.state,
                "wave": r.wave, "waves": r.policy.waves.len(), "reason": r.reason,
                "created_at": r.created_at, "updated_at": r.updated_at,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// One rollout's truthful status ([`crate::rollout::status`]).
async fn one(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if !authz::allows(&grants, Action::Operate) {
        return api_error(StatusCode::FORBIDDEN, "rollouts are for operators").into_response();
    }
    let row = match sh.db.rollout(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return api_error(StatusCode::NOT_FOUND, format!("no rollout {id}")).into_response()
        }
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    match crate::rollout::status(
        &sh.db,
        &row,
        crate::db::now_ms(),
        sh.settings.agent_offline_after,
    )
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `pause`, `resume`, `promote` or `abort`: admins only, recorded with the caller's email.
async fn act(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    principal: Option<Extension<crate::auth::Principal>>,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> Response {
    let Some(action) = Control::parse(&action) else {
        return api_error(
            StatusCode::NOT_FOUND,
            format!("no action {action}: pause, resume, promote or abort"),
        )
        .into_response();
    };
    let Some(Extension(principal)) = principal.filter(|_| grants.admin) else {
        return api_error(
            StatusCode::FORBIDDEN,
            "controlling rollouts needs the admin role",
        )
        .into_response();
    };
    let actor = if principal.email.is_empty() {
        principal.subject.clone()
    } else {
        principal.email.clone()
    };
    match crate::rollout::control(&sh.db, &id, action, &actor).await {
        Ok(r) => {
            sh.rollout_wake.notify_one();
            Json(json!({"id": r.id, "state": r.state, "wave": r.wave, "reason": r.reason}))
                .into_response()
        }
        Err(ControlError::NotFound(_)) => {
            api_error(StatusCode::NOT_FOUND, format!("no rollout {id}")).into_response()
        }
        Err(e @ ControlError::Conflict { .. }) => {
            api_error(StatusCode::CONFLICT, e).into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Moves active rollouts while this replica holds the reconcile lease: every
/// [`crate::rollout::TICK`] while one progresses or bakes, every [`crate::rollout::IDLE_TICK`]
/// otherwise, and at once when an agent reports, an operator acts or a run ends. Wakes the
/// long-polls of the clusters it published (other replicas hear of it by `NOTIFY`).
pub(super) async fn driver(shared: Arc<Shared>) {
    let mut stopped = shared.stopped.clone();
    let mut moving = true;
    let mut judged = crate::rollout::Judged::default();
    let mut counted: Option<Instant> = None;
    loop {
        let tick = if moving {
            crate::rollout::TICK
        } else {
            crate::rollout::IDLE_TICK
        };
        tokio::select! {
            () = stop_requested(&mut stopped) => return,
            () = shared.rollout_wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
        if !shared.leader.load(Ordering::SeqCst) {
            moving = false;
            continue;
        }
        let started = Instant::now();
        match crate::rollout::advance_remembering(&shared.db, crate::db::now_ms(), &mut judged)
            .await
        {
            Ok(done) => {
                if !done.published.is_empty() {
                    if let Err(e) = shared.store.refresh(None).await {
                        tracing::warn!(error = %e, "reading bundle heads");
                    }
                    tracing::info!(clusters = done.published.len(), "rollout published");
                }
                if !done.gates_passed.is_empty() {
                    shared
                        .metrics
                        .wave_wake
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => tracing::warn!(error = %e, "advancing rollouts"),
        }
        // Counting reads every cluster of every active rollout: at most once a tick, not after
        // each of the thousands of advances a wave's reports wake (on SQLite that read holds
        // the one connection the next wave's publish and long-polls wait for).
        if counted.is_some_and(|t| t.elapsed() < crate::rollout::TICK) {
            // Look again within a tick, counting then.
            moving = true;
            continue;
        }
        counted = Some(Instant::now());
        if let Ok(counts) = shared.db.rollout_counts().await {
            // Paused rollouts wait for an operator, who wakes the driver.
            moving = counts.iter().any(|(state, _, _)| {
                cplane_core::rollout::RolloutState::parse(state).is_some_and(|s| {
                    s.is_active() && s != cplane_core::rollout::RolloutState::Paused
                })
            });
            shared.metrics.rollout_clusters.clear();
            for (rollout_state, cluster_state, n) in counts {
                shared
                    .metrics
                    .rollout_clusters
                    .get_or_create(&RolloutLabel {
                        rollout_state,
                        cluster_state,
                    })
                    .set(n);
            }
        }
    }
}
