//! The command line: one clap tree for every subcommand, shared groups flattened.

use super::*;

#[derive(Parser)]
#[command(
    name = "cplane",
    version = cplane_reconciler::version(),
    about = "Declarative GitOps control plane for BYOC regions, workspaces and stacks",
    after_help = EXIT_CODES
)]
pub(super) struct Cli {
    /// Colour in logs: `auto` (only on a terminal, and not when NO_COLOR is set), `always`,
    /// `never`.
    #[arg(
        long,
        env = "CPLANE_COLOR",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub(super) color: Color,
    /// Log format on stderr: `text`, or `json` (one object per line, for machines).
    #[arg(
        long,
        env = "CPLANE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub(super) log_format: LogFormat,
    #[command(subcommand)]
    pub(super) command: Command,
}

/// `--color`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether logs on stderr get ANSI colours.
    pub(super) fn ansi(self) -> bool {
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
pub(super) fn default_database(repo: &Path) -> String {
    format!(
        "sqlite://{}",
        repo.join(".cplane").join("cplane.db").display()
    )
}

/// `--database`, or the default database of the current directory.
pub(super) fn database_or_default(database: Option<&str>) -> String {
    database.map_or_else(|| default_database(Path::new(".")), str::to_owned)
}

/// HTTPS and agents' client certificates (mTLS) for `serve`.
#[derive(clap::Args)]
pub(super) struct TlsArgs {
    /// PEM certificate chain: serve HTTPS instead of HTTP.
    #[arg(long, env = "CPLANE_TLS_CERT", requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CPLANE_TLS_KEY", requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// PEM CA that agents' client certificates chain to; a verified certificate's URI SAN
    /// `spiffe://cplane/cluster/<id>` authenticates as cluster `<id>` (instead of a token).
    /// Needs `--tls-cert` (direct mTLS) or `--client-cert-header` (behind a load balancer).
    #[arg(long, env = "CPLANE_CLIENT_CA")]
    pub(super) client_ca: Option<PathBuf>,
    /// CRL of the client CA (PEM or DER; repeatable): certificates it revokes authenticate
    /// nothing. Read at start.
    #[arg(
        long = "client-crl",
        env = "CPLANE_CLIENT_CRLS",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub(super) client_crls: Vec<PathBuf>,
    /// Header in which a load balancer that terminates TLS forwards the client's certificate
    /// (URL-encoded PEM, leaf first), e.g. `X-Amzn-Mtls-Clientcert` (AWS ALB mTLS). Verified
    /// against `--client-ca` like a direct one, and believed only from `--trusted-proxy`.
    #[arg(long, env = "CPLANE_CLIENT_CERT_HEADER", requires_all = ["client_ca", "trusted_proxies"])]
    pub(super) client_cert_header: Option<String>,
    /// Address or network (CIDR) of a proxy whose `--client-cert-header` is believed
    /// (repeatable); the header from any other peer is ignored.
    #[arg(long = "trusted-proxy", env = "CPLANE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub(super) trusted_proxies: Vec<ipnet::IpNet>,
}

/// An address (a network of one) or a CIDR network.
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR network"))
}

/// What `TlsArgs` configure: HTTPS, and client certificates forwarded by a load balancer.
pub(super) type TlsSettings = (
    Option<cplane_reconciler::tls::Settings>,
    Option<cplane_reconciler::tls::ForwardedSettings>,
);

impl TlsArgs {
    pub(super) fn settings(self) -> anyhow::Result<TlsSettings> {
        let Self {
            tls_cert,
            tls_key,
            client_ca,
            client_crls,
            client_cert_header,
            trusted_proxies,
        } = self;
        if client_ca.is_some() && tls_cert.is_none() && client_cert_header.is_none() {
            anyhow::bail!(
                "--client-ca needs --tls-cert (agents' mTLS to this server) or --client-cert-header (mTLS ended by a load balancer)"
            );
        }
        let forwarded = match (client_cert_header, &client_ca) {
            (Some(header), Some(ca)) => Some(cplane_reconciler::tls::ForwardedSettings {
                header,
                trusted_proxies,
                client_ca: ca.clone(),
                client_crls: client_crls.clone(),
            }),
            _ => None,
        };
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(cplane_reconciler::tls::Settings {
                cert,
                key,
                client_ca,
                client_crls,
            }),
            _ => None,
        };
        Ok((tls, forwarded))
    }
}

/// The edge front door's endpoints (`/v1/public/route`, `/v1/public/tls-authorize`).
#[derive(clap::Args)]
pub(super) struct EdgeArgs {
    /// Upstream of a workspace's public hosts, for the edge proxy: `{workspace}` (`w-acme`),
    /// `{zone}` and `{bff}` (the workspace's BFF host) are replaced.
    #[arg(long, env = "CPLANE_EDGE_UPSTREAM", default_value = cplane_reconciler::serve::edge::DEFAULT_UPSTREAM)]
    pub(super) edge_upstream: String,
    /// Requests per second one source address may make to the front door's endpoints (a
    /// burst of twice as many; `429` beyond).
    #[arg(long, env = "CPLANE_EDGE_RATE_LIMIT", default_value_t = std::num::NonZeroU32::new(cplane_reconciler::serve::edge::DEFAULT_RATE).expect("not zero"))]
    pub(super) edge_rate_limit: std::num::NonZeroU32,
}

impl EdgeArgs {
    pub(super) fn settings(self) -> cplane_reconciler::serve::edge::Settings {
        let Self {
            edge_upstream,
            edge_rate_limit,
        } = self;
        cplane_reconciler::serve::edge::Settings {
            upstream: edge_upstream,
            rate_per_second: edge_rate_limit,
        }
    }
}

/// The per-source rate limit of `POST /v1/webhooks/git` (a token bucket per source address).
#[derive(clap::Args, Clone, Copy)]
pub(super) struct WebhookLimitArgs {
    /// Webhook deliveries one source address may send at once (`429` with `Retry-After` above).
    #[arg(long, env = "CPLANE_WEBHOOK_BURST", default_value_t = 30)]
    pub(super) webhook_burst: u32,
    /// Webhook deliveries per minute one source address may send after its burst; `0` turns
    /// the limit off.
    #[arg(long, env = "CPLANE_WEBHOOK_RATE", default_value_t = 60)]
    pub(super) webhook_rate: u32,
}

impl WebhookLimitArgs {
    pub(super) fn rate(self) -> Option<cplane_webhook::RateLimit> {
        let Self {
            webhook_burst,
            webhook_rate,
        } = self;
        (webhook_rate > 0).then_some(cplane_webhook::RateLimit {
            burst: webhook_burst.max(1),
            per_minute: webhook_rate,
        })
    }
}

/// The forge hosting the state repo (`cplane serve`): pull-request plans are posted there and
/// `?mode=pr` opens pull requests on it. The token is given by reference, never as a value.
#[derive(clap::Args, Clone)]
pub(super) struct ForgeArgs {
    /// The forge: `github`, `gitlab` or `gitea` (Forgejo too).
    #[arg(long, env = "CPLANE_FORGE", value_enum)]
    pub(super) forge: Option<cplane_reconciler::adapters::forge::Kind>,
    /// Its REST API (default `https://api.github.com` for GitHub, `https://gitlab.com/api/v4`
    /// for GitLab; required for Gitea, e.g. `https://gitea.example/api/v1`).
    #[arg(long, env = "CPLANE_FORGE_API_URL", requires = "forge")]
    pub(super) forge_api_url: Option<String>,
    /// The state repo's project: `owner/name` (GitHub, Gitea), `group/name` (GitLab).
    #[arg(long, env = "CPLANE_FORGE_REPO", requires = "forge")]
    pub(super) forge_repo: Option<String>,
    /// Environment variable holding the forge's API token.
    #[arg(
        long,
        env = "CPLANE_FORGE_TOKEN_ENV",
        requires = "forge",
        conflicts_with = "forge_token_file"
    )]
    pub(super) forge_token_env: Option<String>,
    /// File holding the forge's API token (read at each call: rotation needs no restart).
    #[arg(long, env = "CPLANE_FORGE_TOKEN_FILE", requires = "forge")]
    pub(super) forge_token_file: Option<PathBuf>,
    /// This server's URL as the forge's users reach it, for the links of commit statuses
    /// (default: `http(s)://` and the listen address).
    #[arg(long, env = "CPLANE_PUBLIC_URL")]
    pub(super) public_url: Option<String>,
}

impl ForgeArgs {
    /// The forge settings (`None` without `--forge`) and the public URL.
    pub(super) fn settings(
        self,
    ) -> anyhow::Result<(
        Option<cplane_reconciler::adapters::forge::Settings>,
        Option<String>,
    )> {
        use cplane_reconciler::adapters::forge::{Kind, Settings};
        let Self {
            forge,
            forge_api_url,
            forge_repo,
            forge_token_env,
            forge_token_file,
            public_url,
        } = self;
        let Some(kind) = forge else {
            return Ok((None, public_url));
        };
        let api_url = match (forge_api_url, kind) {
            (Some(url), _) => url,
            (None, Kind::GitHub) => "https://api.github.com".to_owned(),
            (None, Kind::GitLab) => "https://gitlab.com/api/v4".to_owned(),
            (None, Kind::Gitea) => {
                anyhow::bail!("--forge-api-url (CPLANE_FORGE_API_URL): required with --forge gitea")
            }
        };
        let Some(repo) = forge_repo else {
            anyhow::bail!("--forge-repo (CPLANE_FORGE_REPO): required with --forge");
        };
        if forge_token_env.is_none() && forge_token_file.is_none() {
            anyhow::bail!(
                "--forge-token-env or --forge-token-file: the forge's API token, by reference, is required with --forge"
            );
        }
        let token = cplane_schema::model::SecretRef {
            env: forge_token_env,
            file: forge_token_file.map(|f| f.display().to_string()),
        };
        Ok((
            Some(Settings {
                kind,
                api_url,
                repo,
                token,
            }),
            public_url,
        ))
    }
}

/// How many reconcile runs the database keeps.
#[derive(clap::Args, Clone, Copy)]
pub(super) struct RetentionArgs {
    /// Reconcile runs kept in the database per region × environment (the newest).
    #[arg(long, env = "CPLANE_KEEP_RUNS", default_value_t = 1000)]
    pub(super) keep_runs: u32,
    /// Reconcile runs older than this are deleted (e.g. `30d`, `12h`).
    #[arg(long, env = "CPLANE_KEEP_RUNS_FOR", default_value = "30d", value_parser = parse_interval)]
    pub(super) keep_runs_for: std::time::Duration,
    /// Finished rollouts kept in the database per stack (the newest; older ones are deleted
    /// when a new rollout starts, except an aborted one that still holds clusters back).
    #[arg(long, env = "CPLANE_KEEP_ROLLOUTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) keep_rollouts: u32,
}

impl RetentionArgs {
    pub(super) fn retention(self) -> cplane_reconciler::db::Retention {
        let Self {
            keep_runs,
            keep_runs_for,
            keep_rollouts,
        } = self;
        cplane_reconciler::db::Retention {
            keep: keep_runs,
            max_age: keep_runs_for,
            rollouts: keep_rollouts,
        }
    }
}

/// Lifecycle events (`GET /v1/events`, notifications).
#[derive(clap::Args, Clone, Copy)]
pub(super) struct EventArgs {
    /// Events older than this are deleted from the outbox (e.g. `7d`, `12h`), unless a
    /// notification sink has yet to receive them.
    #[arg(long, env = "CPLANE_KEEP_EVENTS_FOR", default_value = "7d", value_parser = parse_interval)]
    pub(super) keep_events_for: std::time::Duration,
}

impl EventArgs {
    /// The event settings; `agent_offline_after` is `serve`'s `--agent-offline-after`, which
    /// also decides when an agent counts as offline in cluster and rollout status.
    pub(super) fn settings(
        self,
        agent_offline_after: std::time::Duration,
    ) -> cplane_reconciler::serve::EventSettings {
        let Self { keep_events_for } = self;
        cplane_reconciler::serve::EventSettings {
            retention: cplane_reconciler::db::EventRetention {
                max_age: keep_events_for,
            },
            agent_offline_after,
        }
    }
}

/// Where the desired state comes from.
#[derive(clap::Args)]
pub(super) struct RepoArgs {
    /// State repo (a working copy or a bare repository).
    #[arg(long, env = "CPLANE_REPO", default_value = ".")]
    pub(super) repo: PathBuf,
    /// Revision to read: a commit, branch, tag or expression like HEAD~1. The working tree is
    /// never read.
    #[arg(long, env = "CPLANE_REV", default_value = "HEAD")]
    pub(super) rev: String,
}

/// `cplane plan --server`: the plan from a running control plane.
#[derive(clap::Args)]
pub(super) struct RemotePlanArgs {
    /// A running control plane's URL (`https://cplane.example.com`): it plans --rev against
    /// what it has applied and observed (`POST /v1/plan`); no database or cloud access needed.
    #[arg(long, env = "CPLANE_SERVER")]
    pub(super) server: Option<String>,
    /// A file holding the bearer token for --server (else `CPLANE_TOKEN`).
    #[arg(long, env = "CPLANE_TOKEN_FILE")]
    pub(super) token_file: Option<PathBuf>,
    /// A ref the server fetches from the state repo's remote when it does not have --rev yet
    /// (a pull request's head: `refs/pull/7/head`, `refs/merge-requests/7/head`, a branch).
    #[arg(long = "ref", env = "CPLANE_REF")]
    pub(super) git_ref: Option<String>,
}

/// Arguments shared by `plan` and `apply`.
#[derive(clap::Args)]
pub(super) struct RunArgs {
    #[command(flatten)]
    pub(super) repo: RepoArgs,
    /// Database: `sqlite://PATH` (created when missing) or `postgres://…` (default: SQLite in
    /// REPO/.cplane/cplane.db).
    #[arg(long, env = "CPLANE_DATABASE_URL")]
    pub(super) database: Option<String>,
    /// `aws` calls AWS (standard credential chain; AWS_ENDPOINT_URL honoured); `none` touches
    /// only the database.
    #[arg(long, env = "CPLANE_CLOUD", value_enum, default_value = "none")]
    pub(super) cloud: Cloud,
    /// Regions to reconcile (repeatable); default: every live region.
    #[arg(long = "region", env = "CPLANE_REGIONS", value_delimiter = ',')]
    pub(super) regions: Vec<String>,
    /// Environments to reconcile (repeatable); default: every environment.
    #[arg(
        long = "environment",
        env = "CPLANE_ENVIRONMENTS",
        value_delimiter = ','
    )]
    pub(super) environments: Vec<String>,
    /// Most workspaces one revision may remove without confirmation.
    #[arg(long, env = "CPLANE_MAX_DELETIONS", default_value_t = 5)]
    pub(super) max_deletions: usize,
    /// Confirm removing more workspaces than --max-deletions.
    #[arg(long)]
    pub(super) confirm_deletions: bool,
    /// Deleting a removed workspace's hosted zone also deletes records cplane did not create
    /// (e.g. external-dns's); without it the deletion waits and lists them.
    #[arg(long, env = "CPLANE_DELETE_FOREIGN_RECORDS")]
    pub(super) delete_foreign_records: bool,
    /// Drift check reads every tenant zone (default: each run reads the tenant zones whose
    /// slot fell since the previous check, so each is read at least once an hour; the parent
    /// zones are always read in full).
    #[arg(long)]
    pub(super) deep_drift: bool,
    /// apply only: run again every INTERVAL (e.g. `3m`, `90s`), jittered by ±20 %, until
    /// interrupted — the periodic drift check of a one-shot installation.
    #[arg(long, env = "CPLANE_EVERY", value_parser = parse_interval)]
    pub(super) every: Option<std::time::Duration>,
    /// The primary region (outside it, the `tenants` rows are read and written there).
    #[command(flatten)]
    pub(super) primary: cplane_reconciler::auth::RegionArgs,
}

/// A duration like `90s`, `3m`, `1h`, `30d` or `1h 30m` (humantime), or plain seconds.
pub(super) fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
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
pub(super) enum ClusterCommand {
    /// Cluster tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token for cluster ID and print it once (only its hash is stored).
    Create {
        /// Cluster id, e.g. `w-acme` or `prod-sgp-1`: one that cplane has rendered and
        /// published (`cplane clusters`).
        id: String,
        #[command(flatten)]
        token: NewTokenArgs,
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Create a new token for cluster ID and scope, print it once, and end the cluster's other
    /// tokens of that scope when the overlap is over (time to hand the new one out).
    Rotate {
        /// Cluster id (one that cplane has published).
        id: String,
        #[command(flatten)]
        token: NewTokenArgs,
        /// How long the old tokens keep working (e.g. `24h`, `30m`; `0` ends them at once).
        #[arg(long, env = "CPLANE_TOKEN_OVERLAP", default_value = "24h", value_parser = parse_overlap)]
        overlap: std::time::Duration,
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Revoke the tokens of cluster ID (of every scope, unless `--scope` names one).
    Revoke {
        /// Cluster id.
        id: String,
        /// Only the tokens of this scope.
        #[arg(long, env = "CPLANE_TOKEN_SCOPE", value_enum)]
        scope: Option<Scope>,
        /// Database (default: SQLite in ./.cplane/cplane.db).
        #[arg(long, env = "CPLANE_DATABASE_URL")]
        database: Option<String>,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// List the tokens of cluster ID: id (a prefix of the token's hash), scope, state, when
    /// created, when it expires or was revoked. Never the token.
    List {
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

/// The scope and lifetime of a new token (`create`, `rotate`).
#[derive(clap::Args)]
pub(super) struct NewTokenArgs {
    /// What the token may do: `agent` (the cluster's bundle and status) or `bff` (the
    /// workspace's config and register).
    #[arg(long, env = "CPLANE_TOKEN_SCOPE", value_enum, default_value = "agent")]
    pub(super) scope: Scope,
    /// The token is refused after this long (e.g. `90d`, `12h`); without it, it never expires.
    #[arg(long, env = "CPLANE_TOKEN_EXPIRES_IN", value_parser = parse_interval)]
    pub(super) expires_in: Option<std::time::Duration>,
}

/// `--scope` of the token commands.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Scope {
    /// The cluster's agent: its bundle and its status.
    Agent,
    /// The workspace's BFF: its config and its registration.
    Bff,
}

impl From<Scope> for cplane_reconciler::db::TokenScope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Agent => Self::Agent,
            Scope::Bff => Self::Bff,
        }
    }
}

/// A duration that may be zero (`--overlap 0`).
pub(super) fn parse_overlap(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_interval(s)
}

/// The database and region of the principal commands.
#[derive(clap::Args)]
pub(super) struct PrincipalDb {
    /// Database: `sqlite://PATH` or `postgres://…` (default: SQLite in ./.cplane/cplane.db).
    #[arg(long, env = "CPLANE_DATABASE_URL")]
    pub(super) database: Option<String>,
    #[command(flatten)]
    pub(super) region: cplane_reconciler::auth::RegionArgs,
}

#[derive(Subcommand)]
pub(super) enum PrincipalCommand {
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
pub(super) enum MembershipCommand {
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
pub(super) enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Cloud {
    None,
    Aws,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum RenderFormat {
    Yaml,
    Json,
}

#[derive(Subcommand)]
// Parsed once per process and moved straight into `run`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Command {
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
    /// Show what `apply` would do: workspaces against the database and (with --cloud aws) AWS,
    /// and each cluster's objects added, changed (with a diff) and removed. With --server, ask
    /// a running control plane instead (only a token needed).
    Plan {
        #[command(flatten)]
        run: RunArgs,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
        /// Exit 4 when applying the revision would change something (0: nothing changes).
        #[arg(long, env = "CPLANE_DETAILED_EXITCODE")]
        detailed_exitcode: bool,
        #[command(flatten)]
        remote: RemotePlanArgs,
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
        #[command(flatten)]
        webhook_limit: WebhookLimitArgs,
        /// Most workspaces one revision may remove without confirmation.
        #[arg(long, env = "CPLANE_MAX_DELETIONS", default_value_t = 5)]
        max_deletions: usize,
        /// Deleting a removed workspace's hosted zone also deletes records cplane did not
        /// create (e.g. external-dns's); without it the deletion waits and lists them.
        #[arg(long, env = "CPLANE_DELETE_FOREIGN_RECORDS")]
        delete_foreign_records: bool,
        /// How long a client has to send a request's head (and to finish the TLS handshake)
        /// before it is disconnected.
        #[arg(long, env = "CPLANE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_interval)]
        header_read_timeout: std::time::Duration,
        /// How long a BFF's registration keeps its workspace's `BffHealthy` condition `True`:
        /// a BFF that does not register again within it turns `False` (`RegistrationExpired`).
        #[arg(long, env = "CPLANE_BFF_REGISTER_TTL", default_value = "5m", value_parser = parse_interval)]
        bff_register_ttl: std::time::Duration,
        /// How long without a report before a cluster's agent counts as `offline` in cluster
        /// and rollout status and in `cplane_clusters{state}`.
        #[arg(long, env = "CPLANE_AGENT_OFFLINE_AFTER", default_value = "10m", value_parser = parse_interval)]
        agent_offline_after: std::time::Duration,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        events: EventArgs,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        forge: ForgeArgs,
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
    /// Manage clusters' bearer tokens: an `agent` token per cluster, a `bff` token per
    /// workspace's BFF.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Principals (API users): system roles. Run against the primary region's database.
    Principal {
        #[command(subcommand)]
        command: PrincipalCommand,
    },
    /// Lifecycle events of a running control plane (`GET /v1/events`, CloudEvents): the
    /// retained ones, then with --follow new ones as they happen, resuming where it stopped
    /// across reconnects, server restarts and replicas.
    Events {
        /// The control plane's URL; several (comma-separated), replicas sharing a database:
        /// a broken stream resumes on the next.
        #[arg(
            long,
            env = "CPLANE_SERVER",
            default_value = "http://127.0.0.1:8080",
            value_delimiter = ','
        )]
        server: Vec<String>,
        /// A file holding the bearer token (else `CPLANE_TOKEN`; none for a server with
        /// `--insecure-open-read`).
        #[arg(long, env = "CPLANE_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Only these types (comma-separated or repeated): `commit.refused`,
        /// `io.cplane.rollout.paused`, `agent.*`.
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only events concerning this workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// Start after this position (`0`: every retained event). Default: every retained
        /// event, or with --follow only new ones.
        #[arg(long)]
        after: Option<i64>,
        /// Keep printing new events as they happen (until interrupted).
        #[arg(long)]
        follow: bool,
        /// Output format: `json` prints each CloudEvent on a line of its own.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Rollouts of stack changes across clusters: status, and the operator's controls
    /// (each recorded with who did it: `--actor`, default `cli:$USER`).
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Account memberships: members write their account's workspaces.
    Membership {
        #[command(subcommand)]
        command: MembershipCommand,
    },
    /// The in-cluster agent: the manifests that install it into a cluster.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Deploy cplane itself: the control plane's manifests for one region × environment.
    Deploy {
        #[command(subcommand)]
        command: DeployCommand,
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

#[derive(Subcommand)]
pub(super) enum AgentCommand {
    /// Print the manifests that install cluster ID's agent (Namespace, ServiceAccount, RBAC
    /// for exactly the kinds its bundle holds, its state volume and Deployment). The token is
    /// never printed: the output's header says how to create its Secret from a file. Re-run
    /// and re-apply to upgrade (a new --image, or RBAC for a bundle that gained kinds).
    Install {
        /// Cluster id: `{env}-{region}` (platform) or `w-{id}` (tenant).
        #[arg(long)]
        cluster: String,
        /// The control plane URL the agent pulls from (`https://cplane.sgp-1.cogrion.com`).
        #[arg(long, env = "CPLANE_SERVER")]
        server: String,
        /// The agent image (default: `cplane-agent:<this cplane's version>`).
        #[arg(long)]
        image: Option<String>,
        /// The agent's namespace (home of its inventory ConfigMap).
        #[arg(long, default_value = "cplane-system")]
        namespace: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum DeployCommand {
    /// Print the control plane's Kubernetes manifests for the region × environment of a
    /// values file (see `deploy/values/`).
    Render {
        /// The values file.
        #[arg(long)]
        values: PathBuf,
    },
}

#[derive(Subcommand)]
pub(super) enum RolloutCommand {
    /// Every recent rollout, or one rollout's waves and clusters (done, pending, failed with
    /// the failing objects' messages), with `ID`.
    Status {
        /// Rollout id (`r-…`); without it, the last 20 rollouts.
        id: Option<String>,
        #[command(flatten)]
        control: RolloutArgs,
        /// Output format.
        #[arg(long, env = "CPLANE_FORMAT", value_enum, default_value = "text")]
        format: Format,
    },
    /// Stop publishing; the current wave's published clusters keep their bundle.
    Pause {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        control: RolloutArgs,
    },
    /// Go on after a pause; the current wave's failed clusters get a fresh health gate.
    Resume {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        control: RolloutArgs,
    },
    /// Pass the current wave's gate by hand and start the next wave.
    Promote {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        control: RolloutArgs,
    },
    /// Stop for good: clusters not yet reached keep their bundle.
    Abort {
        /// Rollout id.
        id: String,
        #[command(flatten)]
        control: RolloutArgs,
    },
}

#[derive(clap::Args)]
pub(super) struct RolloutArgs {
    /// Database (default: SQLite in ./.cplane/cplane.db).
    #[arg(long, env = "CPLANE_DATABASE_URL")]
    pub(super) database: Option<String>,
    /// Who is acting, as recorded (default `cli:$USER`).
    #[arg(long, env = "CPLANE_ACTOR")]
    pub(super) actor: Option<String>,
}
