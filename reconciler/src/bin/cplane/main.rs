//! `cplane`: the command line of the cplane control plane. See DESIGN.md, "CLI (contract)".
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cplane_reconciler::apply::Outcome;
use cplane_reconciler::check::{check, check_keeping, validate as validate_files, Checked};
use cplane_reconciler::db::Db;
use cplane_reconciler::plan::{Options, Step};
use cplane_reconciler::preview::Preview;
use cplane_reconciler::reconcile::{Request, RunResult};
use cplane_reconciler::render::object_key;
use cplane_reconciler::status::RunOutcome;
use cplane_reconciler::{init, source};
use cplane_schema::Diagnostic;
use std::sync::Arc;

mod admin;
mod args;
mod events;
mod offline;
mod plan_apply;
mod up;

use admin::*;
use args::*;
use events::*;
use offline::*;
use plan_apply::*;
use up::*;

/// Rendering a large repo allocates and frees millions of small YAML/JSON nodes across threads;
/// mimalloc cuts the time glibc's allocator spends on that (see the validate benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code of an error: a failed run or step, an unreachable database, git or cloud.
const EXIT_ERROR: u8 = 1;
/// Exit code of refused or invalid input: an invalid revision, bad flags, no such repo,
/// revision or cluster (clap's usage errors exit 2 as well).
const EXIT_INVALID: u8 = 2;
/// Exit code of a plan held for confirmation (more deletions than `--max-deletions`).
const EXIT_HELD: u8 = 3;
/// Exit code of `apply` when work is still under way outside cplane (e.g. certificate
/// validation): run it again.
const EXIT_CONVERGING: u8 = 4;
/// Exit code of `plan --detailed-exitcode` when applying the revision would change something
/// (a step, a refusal, or a cluster's objects): like `apply`'s converging, not yet there.
const EXIT_CHANGES: u8 = 4;

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "Exit codes:
  0  done (valid, converged, printed)
  1  error (a step or run failed; database, git or cloud unreachable)
  2  refused or invalid input (invalid revision, bad flags, unknown repo, revision or cluster)
  3  held for confirmation (more workspace deletions than --max-deletions)
  4  converging (apply: work under way outside cplane, e.g. certificate validation; run again);
     changes pending (plan --detailed-exitcode: applying the revision would change something)";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Serve { .. } | Command::Up { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        logs.json().init();
    } else {
        logs.with_ansi(cli.color.ansi()).init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::from(exit_code_of(&err))
        }
    }
}

/// An error and its causes in one line, each said once: a cause whose text the message
/// already carries (libgit2's, say) is not repeated.
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        // libgit2's own text (with its class and code) stays out: a git error of ours says
        // what happened in words.
        // Ours, with the cause already said in words.
        let complete = matches!(
            cause.downcast_ref::<cplane_reconciler::serve::Error>(),
            Some(cplane_reconciler::serve::Error::Listen { .. })
        );
        if let Some(g) = cause.downcast_ref::<git2::Error>() {
            if !out.contains(g.message()) && out.is_empty() {
                out.push_str(g.message());
            }
            break;
        }
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if complete {
            break;
        }
    }
    out
}

/// Invalid input (a repository, revision or directory that is not what the command needs)
/// exits [`EXIT_INVALID`]; everything else [`EXIT_ERROR`].
fn exit_code_of(err: &anyhow::Error) -> u8 {
    let invalid = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<source::Error>(),
            Some(source::Error::Open { .. } | source::Error::Rev { .. })
        ) || matches!(
            c.downcast_ref::<init::Error>(),
            Some(init::Error::NotEmpty(_))
        ) || c.downcast_ref::<InvalidInput>().is_some()
    });
    if invalid {
        EXIT_INVALID
    } else {
        EXIT_ERROR
    }
}

/// Input the command refuses (exit [`EXIT_INVALID`]), in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidInput(String);

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init { dir } => {
            let commit = init::init(&dir)?;
            println!(
                "Initialized state repo in {} (commit {commit})",
                dir.display()
            );
            println!("Next: cplane validate --repo {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { repo, format } => validate(&repo, format),
        Command::Render {
            cluster,
            repo,
            out,
            format,
        } => render(&repo, &cluster, out.as_deref(), format),
        Command::Clusters { repo, format } => clusters(&repo, format),
        Command::Agent {
            command:
                AgentCommand::Install {
                    cluster,
                    server,
                    image,
                    namespace,
                    repo,
                },
        } => agent_install(&repo, cluster, server, image, namespace),
        Command::Deploy {
            command: DeployCommand::Render { values },
        } => deploy_render(&values),
        Command::Plan {
            run,
            format,
            detailed_exitcode,
            remote,
        } => match remote.server.clone() {
            Some(server) => plan_remote(&run, &remote, &server, format, detailed_exitcode),
            None => reconcile(&run, Mode::Plan(format, detailed_exitcode)),
        }
        .map(ExitCode::from),
        Command::Up { dir, listen } => {
            disable_huge_pages();
            up(&dir, listen)
        }
        Command::Cluster {
            command: ClusterCommand::Token { command },
        } => block_on(token_command(command)),
        Command::Status {
            database,
            regions,
            environments,
            runs,
            format,
        } => block_on(status_command(
            &database_or_default(database.as_deref()),
            cplane_reconciler::plan::Scope {
                regions,
                environments,
            },
            runs,
            format,
        )),
        Command::Principal { command } => principal_command(command),
        Command::Membership { command } => membership_command(command),
        Command::Rollout { command } => block_on(rollout_command(command)),
        Command::Events {
            server,
            token_file,
            types,
            workspace,
            after,
            follow,
            format,
        } => events_command(EventsQuery {
            server,
            token_file,
            types,
            workspace,
            after,
            follow,
            format,
        }),
        Command::Serve {
            repo_url,
            branch,
            mirror,
            listen,
            database,
            cloud,
            regions,
            environments,
            poll,
            webhook_secret,
            webhook_limit,
            max_deletions,
            delete_foreign_records,
            header_read_timeout,
            bff_register_ttl,
            agent_offline_after,
            retention,
            events,
            tls,
            edge,
            forge,
            auth,
        } => {
            disable_huge_pages();
            let (tls, forwarded_certs) = tls.settings()?;
            let (forge, public_url) = forge.settings()?;
            let settings = cplane_reconciler::serve::Settings {
                repo_url,
                branch,
                mirror,
                listen,
                scope: cplane_reconciler::plan::Scope {
                    regions,
                    environments,
                },
                poll,
                webhook_secret,
                webhook_rate: webhook_limit.rate(),
                max_deletions,
                delete_foreign_records,
                retention: retention.retention(),
                tls,
                forwarded_certs,
                auth: auth.into_config()?,
                header_read_timeout,
                edge: edge.settings(),
                bff_register_ttl,
                agent_offline_after,
                forge,
                public_url,
                events: events.settings(agent_offline_after),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let database = database_or_default(database.as_deref());
            runtime.block_on(async {
                let db = Db::connect(&database).await?;
                let aws = match cloud {
                    Cloud::Aws => Some(cplane_reconciler::aws::Aws::from_env().await),
                    Cloud::None => None,
                };
                cplane_reconciler::serve::serve(settings, db, aws).await?;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Apply { run, format } => match run.every {
            None => reconcile(&run, Mode::Apply(format)).map(ExitCode::from),
            Some(every) => Ok(ExitCode::from(apply_every(&run, format, every))),
        },
    }
}

/// `cplane apply --every`: runs until Ctrl-C or SIGTERM, pausing `every` (±20 %) between runs.
/// Every run's exit code is logged with the count of failed runs so far, a run that cannot
/// even start (the database down, say) counts as failed instead of ending the loop, and the
/// process exits with the last run's code: a supervisor sees a failure that was not repaired.
fn apply_every(run: &RunArgs, format: Format, every: std::time::Duration) -> u8 {
    let stop = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let (mut runs, mut failed) = (0u64, 0u64);
    loop {
        let code = match reconcile(run, Mode::Apply(format)) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {}", describe(&err));
                exit_code_of(&err)
            }
        };
        runs += 1;
        if !matches!(code, 0 | EXIT_CONVERGING) {
            failed += 1;
        }
        let pause = every.mul_f64(rand::random_range(0.8..1.2));
        eprintln!(
            "run {runs}: exit {code} ({failed} of {runs} runs failed); next run in {:.0}s (--every {} ± 20%)",
            pause.as_secs_f64(),
            humantime::format_duration(every)
        );
        let interrupted = stop.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                () = tokio::time::sleep(pause) => false,
                _ = tokio::signal::ctrl_c() => true,
                Some(()) = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            }
        });
        if interrupted {
            eprintln!("stopping after {runs} runs ({failed} failed); the last exited {code}");
            return code;
        }
    }
}
