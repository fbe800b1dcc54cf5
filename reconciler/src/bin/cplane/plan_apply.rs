//! `plan`, `apply` and `status`: a run against the database (and the cloud), and what the
//! database records of runs.

use super::*;

/// What [`reconcile`] does.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// `cplane plan`: observe and print the plan; writes nothing. With `true`
    /// (`--detailed-exitcode`), exit [`EXIT_CHANGES`] when anything would change.
    Plan(Format, bool),
    /// `cplane apply`.
    Apply(Format),
}

/// `plan` or `apply`. With `--format json`, stdout holds exactly one JSON object, also when
/// the revision cannot be read or is invalid (`{"error": …, "errors": […]}`).
pub(super) fn reconcile(args: &RunArgs, mode: Mode) -> anyhow::Result<u8> {
    let json = matches!(
        mode,
        Mode::Plan(Format::Json, _) | Mode::Apply(Format::Json)
    );
    match reconcile_inner(args, mode) {
        Err(err) if json => {
            let out = serde_json::json!({ "error": describe(&err), "errors": [] });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(exit_code_of(&err))
        }
        other => other,
    }
}

/// `db`, with the `tenants` rows read and written at the primary region when
/// `PRIMARY_CPLANE_API_URL` is set (this is another region's control plane).
fn with_primary(db: Db, primary: &cplane_reconciler::auth::RegionArgs) -> anyhow::Result<Db> {
    let token = primary.service_token()?;
    let url = primary
        .primary_cplane_api_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty());
    let Some(url) = url else { return Ok(db) };
    let Some(token) = token else {
        anyhow::bail!(InvalidInput(
            "--inter-region-service-token (INTER_REGION_SERVICE_TOKEN): required with PRIMARY_CPLANE_API_URL".into()
        ));
    };
    let remote = cplane_reconciler::adapters::primary::RemoteTenants::new(
        url,
        &token,
        cplane_reconciler::auth::jwks::HttpClient::new(),
    )?;
    Ok(db.with_tenant_store(std::sync::Arc::new(remote)))
}

pub(super) fn reconcile_inner(args: &RunArgs, mode: Mode) -> anyhow::Result<u8> {
    let RunArgs {
        repo,
        database,
        cloud,
        regions,
        environments,
        max_deletions,
        confirm_deletions,
        delete_foreign_records,
        deep_drift,
        every: _,
        primary,
    } = args;
    let (dry_run, format, detailed) = match mode {
        Mode::Plan(f, detailed) => (true, f, detailed),
        Mode::Apply(f) => (false, f, false),
    };
    let json = matches!(format, Format::Json);
    let git = source::open(&repo.repo)?;
    let database = database
        .clone()
        .unwrap_or_else(|| default_database(git.workdir().unwrap_or_else(|| git.path())));
    let snapshot = source::read(&git, &repo.rev)?;
    let commit = snapshot.commit.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Fleet-wide events (commits, rollouts) go to the scope's stream, as `serve` writes them.
        let stream = cplane_reconciler::plan::Scope {
            regions: regions.clone(),
            environments: environments.clone(),
        }
        .label();
        let db = with_primary(Db::connect(&database).await?, primary)?.with_event_stream(&stream);
        let aws = match cloud {
            Cloud::Aws => Some(cplane_reconciler::aws::Aws::from_env().await),
            Cloud::None => None,
        };
        let request = Request {
            scope: cplane_reconciler::plan::Scope {
                regions: regions.clone(),
                environments: environments.clone(),
            },
            options: Options {
                max_deletions: *max_deletions,
                confirmed: *confirm_deletions,
                delete_foreign_records: *delete_foreign_records,
            },
            dry_run,
            drift: if *deep_drift {
                cplane_reconciler::aws::observe::Sample::All
            } else {
                cplane_reconciler::aws::observe::Sample::HOURLY
            },
            memo: None,
        };
        let progress: cplane_reconciler::apply::Progress = Arc::new(move |step: &Step, outcome: &Outcome| {
            if json {
                return;
            }
            let detail = match outcome {
                Outcome::Done(d) | Outcome::Skipped(d) | Outcome::Waiting(d) | Outcome::Failed(d) => d,
            };
            println!("  {}: {} {} ... {} ({detail})", step.workspace, step.action.symbol(), step.action, outcome.label());
        });
        if !dry_run && !json {
            println!("cplane apply: commit {} ({})", &commit[..12], cplane_reconciler::db::redact(&database));
        }
        let result = cplane_reconciler::reconcile::run(snapshot, &db, aws, request, progress).await?;
        let code = match result {
            RunResult::Refused(errors) => {
                let message = format!("commit {} is invalid ({} errors); nothing was {}", &commit[..12], errors.len(), if dry_run { "planned" } else { "applied" });
                if json {
                    let out = serde_json::json!({ "commit": commit, "outcome": RunOutcome::Refused, "error": message, "errors": errors });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("error: {message}");
                }
                EXIT_INVALID
            }
            RunResult::Planned {
                plan,
                report,
                published,
                notes,
                clusters,
                ..
            } => {
                if !json {
                    for n in &notes {
                        eprintln!("note: {n}");
                    }
                }
                if dry_run {
                    let preview = Preview::new(commit.clone(), plan, *cloud == Cloud::Aws, clusters, notes);
                    return print_preview(&preview, format, detailed);
                }
                let report = report.expect("applied");
                let outcome = cplane_reconciler::status::outcome(&plan, &report);
                if json {
                    let steps: Vec<_> = plan.steps.iter().zip(&report.outcomes).map(|(step, o)| {
                        let detail = match o {
                            Outcome::Done(d) | Outcome::Skipped(d) | Outcome::Waiting(d) | Outcome::Failed(d) => d,
                        };
                        serde_json::json!({
                            "workspace": step.workspace, "action": step.action.to_string(),
                            "symbol": step.action.symbol().to_string(), "outcome": o.label(), "detail": detail,
                        })
                    }).collect();
                    let bundles: Vec<_> = published.iter().map(|(cluster, digest, generation)| {
                        serde_json::json!({ "cluster": cluster, "digest": digest, "generation": generation })
                    }).collect();
                    let out = serde_json::json!({
                        "commit": commit, "outcome": outcome, "steps": steps, "published": bundles,
                        "errors": cplane_reconciler::status::errors(&plan, &report), "notes": notes,
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                } else {
                    for (cluster, digest, generation) in &published {
                        println!("  bundle {cluster}: {digest} (generation {generation})");
                    }
                    for r in &plan.refused {
                        eprintln!("refused: {}", r.message);
                    }
                    if let Some(h) = &plan.held {
                        eprintln!("held: {h}");
                    }
                    let (add, change, destroy) = plan.counts();
                    println!("Apply: {outcome} ({} steps: {add} to add, {change} to change, {destroy} to destroy; {} bundles published).", plan.steps.len(), published.len());
                }
                match outcome {
                    RunOutcome::Converged => 0,
                    RunOutcome::Converging => EXIT_CONVERGING,
                    RunOutcome::Held => EXIT_HELD,
                    RunOutcome::Refused => EXIT_INVALID,
                    RunOutcome::Failed | RunOutcome::Error => EXIT_ERROR,
                }
            }
        };
        Ok(code)
    })
}

/// `cplane status`: what the database records of the control plane of `scope`.
pub(super) async fn status_command(
    database: &str,
    scope: cplane_reconciler::plan::Scope,
    runs: u32,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let db = Db::connect(database).await?;
    let label = scope.label();
    let applied = db.applied_revision(&label).await?;
    let runs = db.runs(&label, runs).await?;
    let conditions = db.conditions("platform", &label).await?;
    let regions = db.conditions_of_kind("region").await?;
    let condition_json = |(name, (status, reason, message)): (&String, &(bool, String, String))| {
        serde_json::json!({
            "type": name, "status": if *status { "True" } else { "False" }, "reason": reason, "message": message,
        })
    };
    match format {
        Format::Json => {
            let out = serde_json::json!({
                "scope": label,
                "applied": applied,
                "runs": runs.iter().map(|(id, commit, outcome, errors)| serde_json::json!({
                    "id": id, "commit": commit, "outcome": outcome, "errors": errors,
                })).collect::<Vec<_>>(),
                "conditions": conditions.iter().map(condition_json).collect::<Vec<_>>(),
                "regions": regions.iter().map(|(id, cs)| serde_json::json!({
                    "id": id, "conditions": cs.iter().map(condition_json).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            println!(
                "scope {label}: applied {}",
                applied.as_deref().unwrap_or("nothing yet")
            );
            for (name, (status, reason, message)) in &conditions {
                println!(
                    "  {name}={} ({reason}): {message}",
                    if *status { "True" } else { "False" }
                );
            }
            for (region, cs) in &regions {
                for (name, (status, reason, message)) in cs {
                    println!(
                        "  region {region}: {name}={} ({reason}): {message}",
                        if *status { "True" } else { "False" }
                    );
                }
            }
            for (id, commit, outcome, errors) in &runs {
                println!(
                    "  run {id}: {outcome} at {}",
                    &commit[..12.min(commit.len())]
                );
                for e in errors {
                    println!("      {e}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a plan (`--format json`: the [`Preview`] object) and returns the exit code: held
/// ([`EXIT_HELD`]) first; with `detailed`, [`EXIT_CHANGES`] when anything would change; else 0.
pub(super) fn print_preview(
    preview: &Preview,
    format: Format,
    detailed: bool,
) -> anyhow::Result<u8> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(preview)?),
        Format::Text => print!("{}", preview.text()),
    }
    Ok(if preview.plan.held.is_some() {
        EXIT_HELD
    } else if detailed && preview.changes {
        EXIT_CHANGES
    } else {
        0
    })
}

/// `cplane plan --server URL`: asks a running control plane for the plan of `--rev` (resolved
/// to a commit in `--repo` when that is a git repository, else sent as given) against what it
/// has applied and observed, and prints it as a local plan would be printed.
pub(super) fn plan_remote(
    args: &RunArgs,
    remote: &RemotePlanArgs,
    server: &str,
    format: Format,
    detailed: bool,
) -> anyhow::Result<u8> {
    let RemotePlanArgs {
        server: _,
        token_file,
        git_ref,
    } = remote;
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("--token-file {}", path.display()))?
            .trim()
            .to_owned(),
        None => std::env::var("CPLANE_TOKEN")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    if token.is_empty() {
        anyhow::bail!(InvalidInput(
            "--server needs a token: --token-file FILE (CPLANE_TOKEN_FILE) or CPLANE_TOKEN".into()
        ));
    }
    let rev = source::open(&args.repo.repo)
        .ok()
        .and_then(|repo| source::resolve(&repo, &args.repo.rev).ok())
        .map_or_else(|| args.repo.rev.clone(), |oid| oid.to_string());
    let mut body = serde_json::json!({ "rev": rev });
    if let Some(r) = git_ref {
        body["ref"] = serde_json::json!(r);
    }
    let url = format!("{}/v1/plan", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, bytes) = runtime.block_on(async {
        cplane_reconciler::auth::jwks::HttpClient::new()
            .send(
                axum::http::Method::POST,
                &url,
                Some(&token),
                Some(serde_json::to_vec(&body).expect("JSON serializes")),
            )
            .await
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{url}: answered {status} with a body that is not JSON"))?;
    if status.as_u16() == 422 {
        // The revision does not validate: every error, as a local plan prints them.
        let errors: Vec<String> = value["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| match serde_json::from_value::<Diagnostic>(e.clone()) {
                        Ok(d) => d.to_string(),
                        Err(_) => e.as_str().map_or_else(|| e.to_string(), str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let commit = value["commit"].as_str().unwrap_or(&rev);
        let message = format!(
            "commit {} is invalid ({} errors); nothing was planned",
            &commit[..12.min(commit.len())],
            errors.len()
        );
        match format {
            Format::Json => {
                let out = serde_json::json!({ "commit": commit, "outcome": RunOutcome::Refused, "error": message, "errors": errors });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Format::Text => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("error: {message}");
            }
        }
        return Ok(EXIT_INVALID);
    }
    if !status.is_success() {
        let message = value["error"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        if status.as_u16() == 400 || status.as_u16() == 404 {
            anyhow::bail!(InvalidInput(format!("{url}: {status}: {message}")));
        }
        anyhow::bail!("{url}: {status}: {message}");
    }
    let preview: Preview = serde_json::from_value(value)
        .with_context(|| format!("{url}: the answer is not a plan"))?;
    if matches!(format, Format::Text) {
        for n in &preview.notes {
            eprintln!("note: {n}");
        }
    }
    print_preview(&preview, format, detailed)
}

/// `cplane rollout …`: reads and controls rollouts in the database directly.
pub(super) async fn rollout_command(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    use cplane_reconciler::rollout::{control, Control, ControlError};
    let (action, id, args, format) = match command {
        RolloutCommand::Status {
            id,
            control,
            format,
        } => (None, id, control, format),
        RolloutCommand::Pause { id, control } => {
            (Some(Control::Pause), Some(id), control, Format::Text)
        }
        RolloutCommand::Resume { id, control } => {
            (Some(Control::Resume), Some(id), control, Format::Text)
        }
        RolloutCommand::Promote { id, control } => {
            (Some(Control::Promote), Some(id), control, Format::Text)
        }
        RolloutCommand::Abort { id, control } => {
            (Some(Control::Abort), Some(id), control, Format::Text)
        }
    };
    let RolloutArgs { database, actor } = args;
    let db = Db::connect(&database_or_default(database.as_deref())).await?;
    let now = cplane_reconciler::db::now_ms();
    if let (Some(action), Some(id)) = (action, &id) {
        let actor = actor.unwrap_or_else(|| {
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            )
        });
        return match control(&db, id, action, &actor).await {
            Ok(r) => {
                println!("{} {}: {} (wave {})", action.label(), r.id, r.state, r.wave);
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ (ControlError::NotFound(_) | ControlError::Conflict { .. })) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
            Err(e) => Err(e.into()),
        };
    }
    let out = match &id {
        Some(id) => {
            let Some(r) = db.rollout(id).await? else {
                eprintln!("error: no rollout {id}");
                return Ok(ExitCode::from(2));
            };
            cplane_reconciler::rollout::status(
                &db,
                &r,
                now,
                cplane_reconciler::rollout::OFFLINE_AFTER,
            )
            .await?
        }
        None => serde_json::json!({"rollouts": db.rollouts(false, 20).await?}),
    };
    match format {
        Format::Json => println!("{out}"),
        Format::Text => match &id {
            None => {
                for r in out["rollouts"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<11} wave {}  {}  {}",
                        r["id"].as_str().unwrap_or_default(),
                        r["state"].as_str().unwrap_or_default(),
                        r["wave"],
                        r["stacks"],
                        r["reason"].as_str().unwrap_or_default()
                    );
                }
            }
            Some(_) => {
                println!(
                    "{}  {}  wave {} ({}s in wave)  {}",
                    out["id"].as_str().unwrap_or_default(),
                    out["state"].as_str().unwrap_or_default(),
                    out["wave_name"].as_str().unwrap_or_default(),
                    out["seconds_in_wave"],
                    out["reason"].as_str().unwrap_or_default()
                );
                for w in out["waves"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<12} {} clusters: {} done, {} published, {} pending, {} failed, {} skipped",
                        w["name"].as_str().unwrap_or_default(),
                        w["clusters"], w["done"], w["published"], w["pending"], w["failed"], w["skipped"]
                    );
                    for c in w["members"].as_array().into_iter().flatten() {
                        if c["state"] == "failed" || c["state"] == "held" {
                            println!(
                                "    {} {}: {}",
                                c["cluster"].as_str().unwrap_or_default(),
                                c["state"].as_str().unwrap_or_default(),
                                c["message"].as_str().unwrap_or_default()
                            );
                        }
                    }
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
