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
use cplane_reconciler::status::RunOutcome;
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
/// allocations (one parked long-poll per agent), it made most of its anonymous memory huge
/// pages (figures in the `agent_polls` benchmark's docs): the RSS measured memory the process
/// never used. `PR_SET_THP_DISABLE` turns huge pages off for this process
/// (whatever the system setting), before the server allocates anything of note.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay enabled");
    }
}

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

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "Exit codes:
  0  done (valid, converged, printed)
  1  error (a step or run failed; database, git or cloud unreachable)
  2  refused or invalid input (invalid revision, bad flags, unknown repo, revision or cluster)
  3  held for confirmation (more workspace deletions than --max-deletions)
  4  converging (apply: work under way outside cplane, e.g. certificate validation; run again)";

#[derive(Parser)]
#[command(
    name = "cplane",
    version,
    about = "Declarative GitOps control plane for BYOC regions, workspaces and stacks",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Colour in logs: `auto` (only on a terminal, and not when NO_COLOR is set), `always`,
    /// `never`.
    #[arg(
        long,
        env = "CPLANE_COLOR",
        value_enum,
        default_value = "auto",
        global = true
    )]
    color: Color,
    /// Log format on stderr: `text`, or `json` (one object per line, for machines).
    #[arg(
        long,
        env = "CPLANE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--color`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether logs on stderr get ANSI colours.
    fn ansi(self) -> bool {
        use std::io::IsTerminal as _;
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stderr().is_terminal()
            }
        }
    }
}

/// The database of a repository when `--database` is not given: `REPO/.cplane/cplane.db`,
/// the folder `cplane up` also uses (`.cplane/`, ignored by git). Every command reads the
/// same default, so a token created here is the one `serve` checks.
fn default_database(repo: &Path) -> String {
    format!(
        "sqlite://{}",
        repo.join(".cplane").join("cplane.db").display()
    )
}

/// `--database`, or the default database of the current directory.
fn database_or_default(database: Option<&str>) -> String {
    database.map_or_else(|| default_database(Path::new(".")), str::to_owned)
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
    /// Database: `sqlite://PATH` (created when missing) or `postgres://…` (default: SQLite in
    /// REPO/.cplane/cplane.db).
    #[arg(long, env = "CPLANE_DATABASE_URL")]
    database: Option<String>,
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

/// A duration like `90s`, `3m`, `1h`, `30d` or `1h 30m` (humantime), or plain seconds.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("`{s}` is not a duration like 90s, 3m, 1h or 30d ({e})"))?,
    };
    if d.is_zero() {
        return Err("the interval must be positive".into());
    }
    Ok(d)
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
        /// Cluster id, e.g. `w-acme` or `prod-sgp-1`: one that cplane has rendered and
        /// published (`cplane clusters`).
        id: String,
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Revoke every token of cluster ID.
    Revoke {
        /// Cluster id.
        id: String,
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
}

/// The database and region of the principal commands.
#[derive(clap::Args)]
struct PrincipalDb {
    /// Database: `sqlite://PATH` or `postgres://…` (default: SQLite in ./.cplane/cplane.db).
    #[arg(long, env = "CPLANE_DATABASE_URL")]
    database: Option<String>,
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
    /// Exit 0 valid, 2 invalid (or a usage error), 1 when the repository cannot be read.
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
    /// Exit 0 converged, 4 converging (e.g. waiting for certificate validation), 3 held,
    /// 2 refused, 1 failed.
    Apply {
        #[command(flatten)]
        run: RunArgs,
        /// Output format: `json` prints one object with every step's outcome at the end.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// The recorded state of the control plane in the database: the applied revision, the
    /// last runs and the platform's conditions.
    Status {
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Regions (default: every region, the scope `serve` and `apply` use by default).
        #[arg(long = "region", env = "CPLANE_REGIONS", value_delimiter = ',')]
        regions: Vec<String>,
        /// Environments (default: every environment).
        #[arg(
            long = "environment",
            env = "CPLANE_ENVIRONMENTS",
            value_delimiter = ','
        )]
        environments: Vec<String>,
        /// How many runs to show.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
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
        #[arg(long, env = "CPLANE_MIRROR", default_value = ".cplane/mirror.git")]
        mirror: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "CPLANE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Database: `sqlite://PATH` or `postgres://…` (default: SQLite in
        /// ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
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
        /// How long a client has to send a request's head (and to finish the TLS handshake)
        /// before it is disconnected.
        #[arg(long, env = "CPLANE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
        header_read_timeout: std::time::Duration,
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
        Command::Plan { run, format } => reconcile(&run, Mode::Plan(format)),
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
            header_read_timeout,
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
                header_read_timeout,
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
            None => reconcile(&run, Mode::Apply(format)),
            Some(every) => loop {
                let code = reconcile(&run, Mode::Apply(format))?;
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
        return Err(InvalidInput(format!(
            "no cluster `{cluster}`; clusters are: {}",
            known.join(", ")
        ))
        .into());
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

/// What [`reconcile`] does.
#[derive(Clone, Copy)]
enum Mode {
    /// `cplane plan`: observe and print the plan; writes nothing.
    Plan(Format),
    /// `cplane apply`.
    Apply(Format),
}

/// `plan` or `apply`. With `--format json`, stdout holds exactly one JSON object, also when
/// the revision cannot be read or is invalid (`{"error": …, "errors": […]}`).
fn reconcile(args: &RunArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let json = matches!(mode, Mode::Plan(Format::Json) | Mode::Apply(Format::Json));
    match reconcile_inner(args, mode) {
        Err(err) if json => {
            let out = serde_json::json!({ "error": describe(&err), "errors": [] });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::from(exit_code_of(&err)))
        }
        other => other,
    }
}

fn reconcile_inner(args: &RunArgs, mode: Mode) -> anyhow::Result<ExitCode> {
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
    let (dry_run, format) = match mode {
        Mode::Plan(f) => (true, f),
        Mode::Apply(f) => (false, f),
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
        let db = Db::connect(&database).await?;
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
                ExitCode::from(EXIT_INVALID)
            }
            RunResult::Planned {
                plan,
                report,
                published,
                notes,
                ..
            } => {
                if !json {
                    for n in &notes {
                        eprintln!("note: {n}");
                    }
                }
                if dry_run {
                    if json {
                        let skipped = skipped_steps(&plan, *cloud == Cloud::Aws);
                        let skipped: Vec<usize> = (0..plan.steps.len()).filter(|i| skipped[*i]).collect();
                        let out = serde_json::json!({ "commit": commit, "plan": plan, "skipped": skipped, "notes": notes });
                        println!("{}", serde_json::to_string_pretty(&out)?);
                    } else {
                        print_plan(&commit, &plan, *cloud == Cloud::Aws);
                    }
                    return Ok(ExitCode::from(if plan.held.is_some() { EXIT_HELD } else { 0 }));
                }
                let report = report.expect("applied");
                let outcome = cplane_reconciler::status::summarize(&plan, &report);
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
                ExitCode::from(match outcome {
                    RunOutcome::Converged => 0,
                    RunOutcome::Converging => EXIT_CONVERGING,
                    RunOutcome::Held => EXIT_HELD,
                    RunOutcome::Refused => EXIT_INVALID,
                    RunOutcome::Failed | RunOutcome::Error => EXIT_ERROR,
                })
            }
        };
        Ok(code)
    })
}

/// `cplane cluster token …`. Tokens are only made for clusters cplane has published a bundle
/// for: a typo would otherwise make a token no agent can use.
async fn token_command(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create {
            id,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let known: Vec<String> = db
                .cluster_heads(None)
                .await?
                .into_iter()
                .map(|(id, _, _)| id)
                .collect();
            if !known.contains(&id) {
                let hint = if known.is_empty() {
                    "no cluster has been published in this database yet: run `cplane apply` or `cplane serve` (or `cplane up`) first, or pass the right --database".to_owned()
                } else {
                    let close: Vec<&str> = known
                        .iter()
                        .map(String::as_str)
                        .filter(|k| {
                            k.contains(id.trim_start_matches("w-"))
                                || id.contains(k.trim_start_matches("w-"))
                        })
                        .collect();
                    let list = if close.is_empty() {
                        known
                            .iter()
                            .take(10)
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    } else {
                        close.join(", ")
                    };
                    format!("known clusters include: {list} (`cplane clusters` lists them)")
                };
                return Err(InvalidInput(format!(
                    "cluster `{id}` is not in the rendered state; {hint}"
                ))
                .into());
            }
            let token = db.create_cluster_token(&id).await?;
            match format {
                Format::Json => {
                    println!("{}", serde_json::json!({ "cluster": id, "token": token }))
                }
                Format::Text => {
                    eprintln!(
                        "token for cluster {id} (shown once; store it in the cluster's secret):"
                    );
                    println!("{token}");
                }
            }
        }
        TokenCommand::Revoke {
            id,
            database,
            format,
        } => {
            let db = Db::connect(&database_or_default(database.as_deref())).await?;
            let n = db.revoke_cluster_tokens(&id).await?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "cluster": id, "revoked": n })),
                Format::Text => println!("revoked {n} token(s) of cluster {id}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cplane status`: what the database records of the control plane of `scope`.
async fn status_command(
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
    match format {
        Format::Json => {
            let out = serde_json::json!({
                "scope": label,
                "applied": applied,
                "runs": runs.iter().map(|(id, commit, outcome, errors)| serde_json::json!({
                    "id": id, "commit": commit, "outcome": outcome, "errors": errors,
                })).collect::<Vec<_>>(),
                "conditions": conditions.iter().map(|(name, (status, reason, message))| serde_json::json!({
                    "type": name, "status": if *status { "True" } else { "False" }, "reason": reason, "message": message,
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

/// Which steps of `plan` a run without a cloud (`--cloud none`) skips: every cloud step, and
/// every step after a skipped one. They stay in the journal for a run with a cloud.
fn skipped_steps(plan: &Plan, cloud: bool) -> Vec<bool> {
    let mut skipped = vec![false; plan.steps.len()];
    if !cloud {
        for (i, step) in plan.steps.iter().enumerate() {
            skipped[i] = step.action.is_cloud() || step.after.iter().any(|a| skipped[*a]);
        }
    }
    skipped
}

/// Terraform-like plan output: `+` create, `~` change, `-` destroy, grouped by workspace.
/// Without a cloud, the steps it would skip are listed apart and not counted as changes.
fn print_plan(commit: &str, plan: &Plan, cloud: bool) {
    println!("cplane plan: commit {}", &commit[..12.min(commit.len())]);
    let skipped = skipped_steps(plan, cloud);
    let pending = skipped.iter().filter(|s| !**s).count();
    let mut current = "";
    for (step, _) in plan.steps.iter().zip(&skipped).filter(|(_, s)| !**s) {
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
    let not_done = plan.steps.len() - pending;
    if not_done > 0 {
        let workspaces: std::collections::BTreeSet<&str> = plan
            .steps
            .iter()
            .zip(&skipped)
            .filter(|(_, s)| **s)
            .map(|(step, _)| step.workspace.as_str())
            .collect();
        println!(
            "\n  {not_done} cloud step(s) of {} workspace(s) skipped: --cloud none (run with --cloud aws to apply them)",
            workspaces.len()
        );
    }
    if pending == 0 && plan.refused.is_empty() && plan.held.is_none() {
        println!(
            "\nNo changes. The database{} matches the revision.",
            if cloud { " and cloud" } else { "" }
        );
        return;
    }
    let count = |c| {
        plan.steps
            .iter()
            .zip(&skipped)
            .filter(|(step, s)| !**s && step.action.symbol() == c)
            .count()
    };
    println!(
        "\nPlan: {} to add, {} to change, {} to destroy.",
        count('+'),
        count('~'),
        count('-')
    );
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
        header_read_timeout: cplane_reconciler::connections::DEFAULT_HEADER_READ_TIMEOUT,
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
    let pool = Db::connect(&database_or_default(db.database.as_deref())).await?;
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
