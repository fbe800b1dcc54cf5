//! `cplane`: the command line of the cplane control plane. See DESIGN.md, "CLI (contract)".
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cplane_reconciler::apply::Outcome;
use cplane_reconciler::check::{check, check_keeping, Checked};
use cplane_reconciler::db::Db;
use cplane_reconciler::plan::{Options, Plan, Step};
use cplane_reconciler::reconcile::{Request, RunResult};
use cplane_reconciler::render::object_key;
use cplane_reconciler::{init, source};
use cplane_schema::Diagnostic;
use std::sync::Arc;

/// Rendering a large repo allocates and frees millions of small YAML/JSON nodes across threads;
/// mimalloc cuts the time glibc's allocator spends on that (see the validate benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Opts a long-running server out of transparent huge pages.
///
/// mimalloc asks the kernel for huge pages (`madvise(MADV_HUGEPAGE)`) on its arenas, and the
/// kernel then backs every 2 MiB region the heap touches with a whole huge page. For a batch
/// command that is a speed-up; for `cplane serve`, whose heap is mostly many small, scattered
/// allocations (one parked long-poll per agent), it made 394 of 505 MiB of anonymous memory
/// huge pages in the `agent_polls` benchmark (10,000 long-polls held): the RSS measured
/// memory the process never used. `PR_SET_THP_DISABLE` turns huge pages off for this process
/// (whatever the system setting), before the server allocates anything of note.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay enabled");
    }
}

/// Sets up libgit2 for a command that only reads a local repository (`validate`, `render`,
/// `clusters`); call it before anything touches git, while the process has one thread.
///
/// - libgit2 builds its TLS context when it starts, and OpenSSL then parses the whole system
///   CA bundle (`SSL_CERT_FILE`): about 50 ms, a twentieth of `cplane validate` on 10,000
///   workspaces, for connections these commands never open. Pointing `SSL_CERT_FILE` at an
///   empty file for this process makes that load free; these commands make no network
///   connection at all, so no trust decision depends on it.
/// - libgit2 hashes every object it reads to check it against its id. `git cat-file` (the
///   benchmark's reference) does not; zlib's checksum of each object's data still catches a
///   corrupt pack or loose object. Off for these commands.
fn local_reads_only() {
    std::env::set_var("SSL_CERT_FILE", "/dev/null");
    git2::opts::strict_hash_verification(false);
}

/// Exit code of a revision that fails validation.
const EXIT_INVALID: u8 = 1;
/// Exit code of a usage error (bad flags, no such repo or revision).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "cplane",
    version,
    about = "Declarative GitOps control plane for BYOC regions, workspaces and stacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// HTTPS and agents' client certificates (mTLS) for `serve`.
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM certificate chain: serve HTTPS instead of HTTP.
    #[arg(long, env = "CPLANE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CPLANE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that agents' client certificates chain to; a verified certificate's URI SAN
    /// `spiffe://cplane/cluster/<id>` authenticates as cluster `<id>` (instead of a token).
    #[arg(long, env = "CPLANE_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

impl TlsArgs {
    fn settings(self) -> Option<cplane_reconciler::tls::Settings> {
        let Self {
            tls_cert,
            tls_key,
            client_ca,
        } = self;
        Some(cplane_reconciler::tls::Settings {
            cert: tls_cert?,
            key: tls_key?,
            client_ca,
        })
    }
}

/// How many reconcile runs the database keeps.
#[derive(clap::Args, Clone, Copy)]
struct RetentionArgs {
    /// Reconcile runs kept in the database per region × environment (the newest).
    #[arg(long, env = "CPLANE_KEEP_RUNS", default_value_t = 1000)]
    keep_runs: u32,
    /// Reconcile runs older than this are deleted (e.g. `30d`, `12h`).
    #[arg(long, env = "CPLANE_KEEP_RUNS_FOR", default_value = "30d", value_parser = parse_interval)]
    keep_runs_for: std::time::Duration,
}

impl RetentionArgs {
    fn retention(self) -> cplane_reconciler::db::Retention {
        let Self {
            keep_runs,
            keep_runs_for,
        } = self;
        cplane_reconciler::db::Retention {
            keep: keep_runs,
            max_age: keep_runs_for,
        }
    }
}

/// Where the desired state comes from.
#[derive(clap::Args)]
struct RepoArgs {
    /// State repo (a working copy or a bare repository).
    #[arg(long, env = "CPLANE_REPO", default_value = ".")]
    repo: PathBuf,
    /// Revision to read: a commit, branch, tag or expression like HEAD~1. The working tree is
    /// never read.
    #[arg(long, env = "CPLANE_REV", default_value = "HEAD")]
    rev: String,
}

/// Arguments shared by `plan` and `apply`.
#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Database: `sqlite://PATH` (created when missing) or `postgres://…`.
    #[arg(
        long,
        env = "CPLANE_DATABASE_URL",
        default_value = "sqlite://cplane.db"
    )]
    database: String,
    /// `aws` calls AWS (standard credential chain; AWS_ENDPOINT_URL honoured); `none` touches
    /// only the database.
    #[arg(long, env = "CPLANE_CLOUD", value_enum, default_value = "none")]
    cloud: Cloud,
    /// Regions to reconcile (repeatable); default: every live region.
    #[arg(long = "region", env = "CPLANE_REGIONS", value_delimiter = ',')]
    regions: Vec<String>,
    /// Environments to reconcile (repeatable); default: every environment.
    #[arg(
        long = "environment",
        env = "CPLANE_ENVIRONMENTS",
        value_delimiter = ','
    )]
    environments: Vec<String>,
    /// Most workspaces one revision may remove without confirmation.
    #[arg(long, env = "CPLANE_MAX_DELETIONS", default_value_t = 5)]
    max_deletions: usize,
    /// Confirm removing more workspaces than --max-deletions.
    #[arg(long)]
    confirm_deletions: bool,
    /// Drift check reads every tenant zone (default: a rotating 1-in-800 slice per run, so a
    /// run stays within N/100 + 5 reads; the parent zones are always read in full).
    #[arg(long)]
    deep_drift: bool,
    /// apply only: run again every INTERVAL (e.g. `3m`, `90s`), jittered by ±20 %, until
    /// interrupted — the periodic drift check of a one-shot installation.
    #[arg(long, env = "CPLANE_EVERY", value_parser = parse_interval)]
    every: Option<std::time::Duration>,
}

/// `90s`, `3m`, `1h`, or plain seconds.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not an interval like 90s, 3m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Cluster tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for cluster ID and print it once (only its hash is stored).
    Create {
        /// Cluster id, e.g. `w-acme` or `prod-sgp-1`.
        id: String,
        /// Database.
        #[arg(
            long,
            env = "CPLANE_DATABASE_URL",
            default_value = "sqlite://cplane.db"
        )]
        database: String,
    },
    /// Revoke every token of cluster ID.
    Revoke {
        /// Cluster id.
        id: String,
        /// Database.
        #[arg(
            long,
            env = "CPLANE_DATABASE_URL",
            default_value = "sqlite://cplane.db"
        )]
        database: String,
    },
}

/// The database and region of the principal commands.
#[derive(clap::Args)]
struct PrincipalDb {
    /// Database: `sqlite://PATH` or `postgres://…`.
    #[arg(
        long,
        env = "CPLANE_DATABASE_URL",
        default_value = "sqlite://cplane.db"
    )]
    database: String,
    #[command(flatten)]
    region: cplane_reconciler::auth::RegionArgs,
}

#[derive(Subcommand)]
enum PrincipalCommand {
    /// Give EMAIL the system role `admin` (writes everything); creates the principal when they
    /// have not signed in yet.
    GrantAdmin {
        /// The principal's email.
        email: String,
        #[command(flatten)]
        db: PrincipalDb,
    },
    /// Take the system role `admin` from EMAIL.
    RevokeAdmin {
        /// The principal's email.
        email: String,
        #[command(flatten)]
        db: PrincipalDb,
    },
}

#[derive(Subcommand)]
enum MembershipCommand {
    /// Make EMAIL a member of ACCOUNT (a workspace's `spec.account`) in this region.
    Add {
        /// The principal's email.
        email: String,
        /// The account.
        account: String,
        /// `member` writes the account's workspaces; `viewer` only reads.
        #[arg(long, default_value = "member")]
        role: String,
        #[command(flatten)]
        db: PrincipalDb,
    },
    /// Remove EMAIL from ACCOUNT in this region.
    Remove {
        /// The principal's email.
        email: String,
        /// The account.
        account: String,
        #[command(flatten)]
        db: PrincipalDb,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Cloud {
    None,
    Aws,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RenderFormat {
    Yaml,
    Json,
}

#[derive(Subcommand)]
// Parsed once per process and moved straight into `run`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Create a new state repo from the built-in template, with a first commit.
    Init {
        /// Directory to create (must be new or empty).
        dir: PathBuf,
    },
    /// Validate a revision: schema, cross references, and rendering of every cluster.
    /// Exit 0 valid, 1 invalid, 2 usage.
    Validate {
        #[command(flatten)]
        repo: RepoArgs,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Render one cluster's bundle as multi-document YAML (stdout) or files (--out).
    Render {
        /// Cluster id: `{env}-{region}` (platform) or `w-{id}` (tenant).
        #[arg(long)]
        cluster: String,
        #[command(flatten)]
        repo: RepoArgs,
        /// Write one YAML file per object into this directory instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// stdout format: `yaml` (multi-document) or `json` (the canonical JSON Lines bundle
        /// whose SHA-256 is the digest).
        #[arg(long, value_enum, default_value = "yaml")]
        format: RenderFormat,
    },
    /// Show what `apply` would do: workspaces against the database and (with --cloud aws) AWS.
    Plan {
        #[command(flatten)]
        run: RunArgs,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Reconcile once: provision, repair and deprovision workspaces, publish bundles.
    /// Exit 0 converged, 3 converging (e.g. waiting for certificate validation), 1 failed.
    Apply {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the control plane of a region: follow the state repo's remote (webhook + jittered
    /// poll), reconcile continuously, serve the read API, lookup and metrics.
    Serve {
        /// Remote of the state repo: any URL libgit2 fetches (file://, git://, a path).
        #[arg(long, env = "CPLANE_REPO_URL")]
        repo_url: String,
        /// Branch to follow (default: the remote's default branch, its HEAD).
        #[arg(long, env = "CPLANE_BRANCH")]
        branch: Option<String>,
        /// Local bare mirror of the remote.
        #[arg(long, env = "CPLANE_MIRROR", default_value = ".cplane-mirror")]
        mirror: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "CPLANE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Database: `sqlite://PATH` or `postgres://…`.
        #[arg(
            long,
            env = "CPLANE_DATABASE_URL",
            default_value = "sqlite://cplane.db"
        )]
        database: String,
        /// `aws` or `none`.
        #[arg(long, env = "CPLANE_CLOUD", value_enum, default_value = "none")]
        cloud: Cloud,
        /// Regions to reconcile (default: every live region); the reference docs' REGION works too.
        #[arg(long = "region", env = "REGION", value_delimiter = ',')]
        regions: Vec<String>,
        /// Environments to reconcile (default: every environment); the reference docs'
        /// ENVIRONMENT works too. One control plane per region × environment in production.
        #[arg(long = "environment", env = "ENVIRONMENT", value_delimiter = ',')]
        environments: Vec<String>,
        /// Poll interval when no webhook arrives (jittered ±20 %).
        #[arg(long, env = "CPLANE_POLL", default_value = "3m", value_parser = parse_interval)]
        poll: std::time::Duration,
        /// Secret for `POST /v1/webhooks/git`; without it the endpoint is not served.
        #[arg(long, env = "CPLANE_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
        /// Most workspaces one revision may remove without confirmation.
        #[arg(long, env = "CPLANE_MAX_DELETIONS", default_value_t = 5)]
        max_deletions: usize,
        /// Log format on stderr.
        #[arg(long, env = "CPLANE_LOG_FORMAT", value_enum, default_value = "text")]
        log_format: LogFormat,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        auth: cplane_reconciler::auth::Args,
    },
    /// Try cplane locally in one command: a state repo in DIR/state (from the template when
    /// absent), SQLite at DIR/cplane.db, `serve` on ADDR with the file watch on, `--cloud none`
    /// unless AWS credentials are configured. Runs until interrupted.
    Up {
        /// Working directory.
        #[arg(long, env = "CPLANE_DIR", default_value = ".cplane")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "CPLANE_LISTEN", default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
    },
    /// Manage clusters' bearer tokens (agents and BFFs authenticate with them).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Principals (API users): system roles. Run against the primary region's database.
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
    },
    /// Account memberships: members write their account's workspaces.
    Membership {
        #[command(subcommand)]
        command: MembershipCommand,
    },
    /// List every cluster with its bundle digest.
    Clusters {
        #[command(flatten)]
        repo: RepoArgs,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (default_filter, json) = match &cli.command {
        Command::Serve { log_format, .. } => ("info", *log_format == LogFormat::Json),
        Command::Up { .. } => ("info", false),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

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
        Command::Validate { repo, format } => {
            local_reads_only();
            validate(&repo, format)
        }
        Command::Render {
            cluster,
            repo,
            out,
            format,
        } => {
            local_reads_only();
            render(&repo, &cluster, out.as_deref(), format)
        }
        Command::Clusters { repo, format } => {
            local_reads_only();
            clusters(&repo, format)
        }
        Command::Plan { run, format } => reconcile(&run, Some(format)),
        Command::Up { dir, listen } => {
            disable_huge_pages();
            up(&dir, listen)
        }
        Command::Cluster {
            command: ClusterCommand::Token { command },
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                match command {
                    TokenCommand::Create { id, database } => {
                        let db = Db::connect(&database).await?;
                        let token = db.create_cluster_token(&id).await?;
                        eprintln!("token for cluster {id} (shown once; store it in the cluster's secret):");
                        println!("{token}");
                    }
                    TokenCommand::Revoke { id, database } => {
                        let db = Db::connect(&database).await?;
                        let n = db.revoke_cluster_tokens(&id).await?;
                        println!("revoked {n} token(s) of cluster {id}");
                    }
                }
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Principal { command } => principal_command(command),
        Command::Membership { command } => membership_command(command),
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
            max_deletions,
            log_format: _,
            retention,
            tls,
            auth,
        } => {
            disable_huge_pages();
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
                max_deletions,
                retention: retention.retention(),
                tls: tls.settings(),
                auth: auth.into_config()?,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
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
        Command::Apply { run } => match run.every {
            None => reconcile(&run, None),
            Some(every) => loop {
                let code = reconcile(&run, None)?;
                let jitter = rand::random_range(0.8..1.2);
                let pause = every.mul_f64(jitter);
                eprintln!(
                    "next run in {:.0}s (--every {}s ± 20%)",
                    pause.as_secs_f64(),
                    every.as_secs()
                );
                let _ = code;
                std::thread::sleep(pause);
            },
        },
    }
}

fn load(args: &RepoArgs, keep: Option<&str>) -> anyhow::Result<(String, Checked)> {
    let RepoArgs { repo, rev } = args;
    let repo = source::open(repo)?;
    let snapshot = source::read(&repo, rev)?;
    let checked = match keep {
        None => check(snapshot.files),
        Some(id) => check_keeping(snapshot.files, |c, _| c.id == id),
    };
    Ok((snapshot.commit, checked))
}

fn print_errors(diags: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}

fn validate(args: &RepoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let (commit, checked) = load(args, None)?;
    let valid = checked.is_valid();
    match format {
        Format::Json => {
            let errors: Vec<_> = checked
                .diagnostics
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "file": d.file, "line": d.line, "column": d.column,
                        "message": d.message, "path": d.path,
                    })
                })
                .collect();
            let out = serde_json::json!({ "valid": valid, "commit": commit, "errors": errors });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            print_errors(&checked.diagnostics);
            let short = &commit[..12.min(commit.len())];
            if valid {
                let model = checked.model.as_ref().expect("valid implies a model");
                println!(
                    "valid: commit {short}: {} regions, {} workspaces, {} stacks, {} clusters rendered",
                    model.regions.len(),
                    model.workspaces.len(),
                    model.stacks.len(),
                    checked.clusters.len()
                );
            } else {
                let n = checked.diagnostics.len();
                println!(
                    "invalid: commit {short}: {n} error{}",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }
    // The process ends here: freeing a 10,000-workspace model object by object would only add
    // to the command's time.
    std::mem::forget(checked);
    Ok(ExitCode::from(if valid { 0 } else { EXIT_INVALID }))
}

fn render(
    args: &RepoArgs,
    cluster: &str,
    out: Option<&Path>,
    format: RenderFormat,
) -> anyhow::Result<ExitCode> {
    let (_, checked) = load(args, Some(cluster))?;
    if !checked.is_valid() {
        print_errors(&checked.diagnostics);
        eprintln!("error: the revision is invalid; nothing rendered");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let Some(bundle) = checked.clusters.iter().find_map(|r| r.bundle.as_ref()) else {
        let known: Vec<&str> = checked
            .clusters
            .iter()
            .map(|r| r.cluster.id.as_str())
            .collect();
        anyhow::bail!("no cluster `{cluster}`; clusters are: {}", known.join(", "));
    };
    match out {
        None => match format {
            RenderFormat::Yaml => print!("{}", bundle.to_yaml()),
            RenderFormat::Json => print!("{}", bundle.canonical()),
        },
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (i, object) in bundle.objects.iter().enumerate() {
                let (_, kind, ns, name, _) = object_key(&object.value);
                let stem = [kind.to_lowercase(), ns, name]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("-");
                let path = dir.join(format!("{:03}-{stem}.yaml", i + 1));
                let text = serde_yaml::to_string(&object.value)?;
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!(
                "{} objects written to {}",
                bundle.objects.len(),
                dir.display()
            );
        }
    }
    eprintln!("cluster {cluster}: {}", bundle.digest);
    Ok(ExitCode::SUCCESS)
}

fn clusters(args: &RepoArgs, format: Format) -> anyhow::Result<ExitCode> {
    let (_, checked) = load(args, None)?;
    if !checked.is_valid() {
        print_errors(&checked.diagnostics);
        eprintln!("error: the revision is invalid");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    match format {
        Format::Json => {
            let list: Vec<_> = checked
                .clusters
                .iter()
                .map(|r| {
                    let c = &r.cluster;
                    serde_json::json!({
                        "id": c.id, "kind": c.kind, "region": c.region,
                        "environment": c.environment, "digest": r.digest,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Format::Text => {
            println!(
                "{:<24} {:<9} {:<8} {:<12} DIGEST",
                "ID", "KIND", "REGION", "ENVIRONMENT"
            );
            for r in &checked.clusters {
                let c = &r.cluster;
                let kind = match c.kind {
                    cplane_reconciler::render::ClusterKind::Platform => "platform",
                    cplane_reconciler::render::ClusterKind::Tenant => "tenant",
                };
                println!(
                    "{:<24} {:<9} {:<8} {:<12} {}",
                    c.id, kind, c.region, c.environment, r.digest
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `apply` when work is still under way (e.g. certificate validation).
const EXIT_CONVERGING: u8 = 3;

/// `plan` (format given) or `apply` (no format).
fn reconcile(args: &RunArgs, plan_format: Option<Format>) -> anyhow::Result<ExitCode> {
    let RunArgs {
        repo,
        database,
        cloud,
        regions,
        environments,
        max_deletions,
        confirm_deletions,
        deep_drift,
        every: _,
    } = args;
    let dry_run = plan_format.is_some();
    let git = source::open(&repo.repo)?;
    let snapshot = source::read(&git, &repo.rev)?;
    let commit = snapshot.commit.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let db = Db::connect(database).await?;
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
            },
            dry_run,
            drift: if *deep_drift {
                cplane_reconciler::apply::Sample::All
            } else {
                cplane_reconciler::apply::Sample::OneIn(800)
            },
            memo: None,
        };
        let progress: cplane_reconciler::apply::Progress = Arc::new(|step: &Step, outcome: &Outcome| {
            let detail = match outcome {
                Outcome::Done(d) | Outcome::Skipped(d) | Outcome::Waiting(d) | Outcome::Failed(d) => d,
            };
            println!("  {}: {} {} ... {} ({detail})", step.workspace, step.action.symbol(), step.action, outcome.label());
        });
        if !dry_run {
            println!("cplane apply: commit {} ({})", &commit[..12], cplane_reconciler::db::redact(database));
        }
        let result = cplane_reconciler::reconcile::run(snapshot, &db, aws, request, progress).await?;
        let code = match result {
            RunResult::Refused(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("error: commit {} is invalid ({} errors); nothing was applied", &commit[..12], errors.len());
                ExitCode::from(EXIT_INVALID)
            }
            RunResult::Planned {
                plan,
                report,
                published,
                notes,
                ..
            } => {
                for n in &notes {
                    eprintln!("note: {n}");
                }
                if let Some(Format::Json) = plan_format {
                    let out = serde_json::json!({ "commit": commit, "plan": plan, "notes": notes });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    return Ok(ExitCode::SUCCESS);
                }
                if dry_run {
                    print_plan(&commit, &plan);
                    return Ok(ExitCode::SUCCESS);
                }
                for (cluster, digest, generation) in &published {
                    println!("  bundle {cluster}: {digest} (generation {generation})");
                }
                let report = report.expect("applied");
                for r in &plan.refused {
                    eprintln!("refused: {}", r.message);
                }
                if let Some(h) = &plan.held {
                    eprintln!("held: {h}");
                }
                let result = cplane_reconciler::status::summarize(&plan, &report).label();
                let (add, change, destroy) = plan.counts();
                println!("Apply: {result} ({} steps: {add} to add, {change} to change, {destroy} to destroy; {} bundles published).", plan.steps.len(), published.len());
                match result {
                    "converged" => ExitCode::SUCCESS,
                    "converging" => ExitCode::from(EXIT_CONVERGING),
                    _ => ExitCode::from(EXIT_INVALID),
                }
            }
        };
        Ok(code)
    })
}

/// Terraform-like plan output: `+` create, `~` change, `-` destroy, grouped by workspace.
fn print_plan(commit: &str, plan: &Plan) {
    println!("cplane plan: commit {}", &commit[..12.min(commit.len())]);
    if plan.is_empty() {
        println!("\nNo changes. The database and cloud match the revision.");
        return;
    }
    let mut current = "";
    for step in &plan.steps {
        if step.workspace != current {
            current = &step.workspace;
            println!("\n  workspace {current} ({})", step.reason);
        }
        println!("    {} {}", step.action.symbol(), step.action);
    }
    for r in &plan.refused {
        println!("\n  ! workspace {}: refused: {}", r.workspace, r.message);
    }
    if let Some(h) = &plan.held {
        println!("\n  ! held: {h}");
    }
    let (add, change, destroy) = plan.counts();
    println!("\nPlan: {add} to add, {change} to change, {destroy} to destroy.");
}

/// `cplane up`: see the subcommand's help.
fn up(dir: &Path, listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let state = dir.join("state");
    if !state.join(".git").exists() {
        let commit = init::init(&state)?;
        println!(
            "Created the state repo {} from the template (commit {})",
            state.display(),
            &commit[..12]
        );
    }
    let branch = git2::Repository::open(&state)?
        .head()?
        .shorthand()
        .unwrap_or("main")
        .to_owned();
    let aws_configured = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some());
    // The built-in development issuer: its key stays in DIR (never in the state repo), its
    // JWKS is served by this same server at the Keycloak path, and it is the only issuer.
    keep_out_of_git(dir)?;
    let host = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    let issuer_url = format!(
        "http://{}{}",
        std::net::SocketAddr::new(host, listen.port()),
        cplane_reconciler::auth::dev::PATH
    );
    let dev = cplane_reconciler::auth::dev::DevIssuer::load_or_create(
        &dir.join("dev-issuer.p8"),
        &issuer_url,
    )?;
    let admin_token = dev.token(
        UP_AUDIENCE,
        "cplane-up-admin",
        UP_ADMIN_EMAIL,
        "cplane up admin",
        std::time::Duration::from_secs(12 * 3600),
    )?;
    let settings = cplane_reconciler::serve::Settings {
        repo_url: std::fs::canonicalize(&state)?.display().to_string(),
        branch: Some(branch.clone()),
        mirror: dir.join("mirror.git"),
        listen,
        scope: cplane_reconciler::plan::Scope::all(),
        poll: std::time::Duration::from_secs(180),
        webhook_secret: None,
        max_deletions: 5,
        retention: cplane_reconciler::db::Retention::default(),
        tls: None,
        auth: cplane_reconciler::auth::Config {
            issuers: vec![issuer_url.clone()],
            audience: Some(UP_AUDIENCE.to_owned()),
            dev_issuer: Some(dev),
            ..cplane_reconciler::auth::Config::default()
        },
    };
    let database = format!("sqlite://{}", dir.join("cplane.db").display());
    println!(
        "cplane up: state repo {} (branch {branch}, watched: commit to reconcile)",
        state.display()
    );
    println!("  database  {database}");
    println!(
        "  cloud     {}",
        if aws_configured {
            "aws (credentials found in the environment)"
        } else {
            "none (set AWS credentials to provision for real)"
        }
    );
    println!("  status    http://{listen}/v1/status");
    let token_file = dir.join("admin.token");
    write_private(&token_file, admin_token.as_bytes())?;
    println!("  API       http://{listen}/v1/workspaces   (bearer token below)");
    println!(
        "  issuer    {issuer_url}   (development issuer, key in {})",
        dir.join("dev-issuer.p8").display()
    );
    println!(
        "  admin     {UP_ADMIN_EMAIL}, token valid 12 h (also in {}):",
        token_file.display()
    );
    println!("  token     {admin_token}");
    println!(
        "  try       curl -H \"Authorization: Bearer $(cat {})\" http://{listen}/v1/me",
        token_file.display()
    );
    println!("  lookup    http://{listen}/lookup/w-acme");
    println!("  metrics   http://{listen}/metrics");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let db = Db::connect(&database).await?;
        cplane_reconciler::auth::principals::set_role(
            &db,
            UP_ADMIN_EMAIL,
            cplane_reconciler::auth::principals::ROLE_ADMIN,
            true,
        )
        .await?;
        let aws = if aws_configured {
            Some(cplane_reconciler::aws::Aws::from_env().await)
        } else {
            None
        };
        cplane_reconciler::serve::serve(settings, db, aws).await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// Audience of `cplane up`'s development tokens.
const UP_AUDIENCE: &str = "cplane";
/// The admin principal `cplane up` grants and prints a token for.
const UP_ADMIN_EMAIL: &str = "admin@cplane.localhost";

/// Writes `DIR/.gitignore` (`*`) when missing, so the key and token in DIR never land in an
/// enclosing git repository.
fn keep_out_of_git(dir: &Path) -> anyhow::Result<()> {
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# cplane up: keys, tokens and databases; never commit them\n*\n",
        )
        .with_context(|| format!("writing {}", ignore.display()))?;
    }
    Ok(())
}

/// Writes a secret readable by the owner only (mode 0600).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The authenticator of the principal commands.
async fn command_auth(db: &PrincipalDb) -> anyhow::Result<cplane_reconciler::auth::Auth> {
    let config = cplane_reconciler::auth::Args {
        region: db.region.clone(),
        ..cplane_reconciler::auth::Args::default()
    }
    .into_config()?;
    let pool = Db::connect(&db.database).await?;
    Ok(cplane_reconciler::auth::Auth::for_commands(config, pool))
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `cplane principal …`.
fn principal_command(command: PrincipalCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        let (email, db, grant) = match &command {
            PrincipalCommand::GrantAdmin { email, db } => (email, db, true),
            PrincipalCommand::RevokeAdmin { email, db } => (email, db, false),
        };
        let auth = command_auth(db).await?;
        let p = auth.set_admin(email, grant).await?;
        println!(
            "principal {} (uid {}): system roles [{}]",
            p.email,
            p.uid,
            p.system_roles.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `cplane membership …`.
fn membership_command(command: MembershipCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        match command {
            MembershipCommand::Add {
                email,
                account,
                role,
                db,
            } => {
                let auth = command_auth(&db).await?;
                let uid = auth.add_membership(&email, &account, &role).await?;
                println!("{email} (uid {uid}) is now {role} of account {account}");
            }
            MembershipCommand::Remove { email, account, db } => {
                let auth = command_auth(&db).await?;
                if auth.remove_membership(&email, &account).await? {
                    println!("{email} is no longer a member of account {account}");
                } else {
                    println!("{email} was not a member of account {account}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
