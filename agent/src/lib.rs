//! `cplane-agent`: the in-cluster half of cplane (DESIGN.md "Agent protocol"). It long-polls its
//! cluster's bundle from the control plane (outbound only), applies it by server-side apply,
//! prunes what left it, re-applies it on a drift interval, and reports status.
//!
//! - [`bundle`]: the verified bundle (digest = SHA-256 of the body) and object identities.
//! - [`client`]: the HTTP client of the agent endpoints (token or mTLS, gzip, long-poll).
//! - [`apply`]: one apply run (Namespaces and CRDs first, then the rest; prune; health).
//! - [`inventory`]: what the agent applied, and the prune rules (Guarantees / Assumptions /
//!   Errors are documented there).
//! - [`store`]: the last applied bundle on disk (atomic writes).
//! - [`run`]: the loop (poll, drift timer, backoff, clean shutdown), and `--once`.
//! - [`dry_run`]: `--dry-run` (server-side dry run of a bundle; writes nothing).
//!
//! The fake Kubernetes API server its tests run against is in the test crate `cplane-e2e`
//! (`tests/src/kube_apiserver.rs`), not here.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod bundle;
pub mod client;
pub mod dry_run;
pub mod health;
pub mod inventory;
pub mod run;
pub mod store;

use std::path::PathBuf;
use std::time::Duration;

/// Field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "cplane";

/// The git commit this build was made from (`git describe --always --dirty`), or `unknown`
/// when it was built outside a git checkout.
pub const GIT_COMMIT: &str = git_version::git_version!(
    args = ["--always", "--abbrev=12", "--dirty=-modified"],
    fallback = "unknown"
);

/// What `cplane-agent --version` prints after the name, and what the agent reports to the
/// server with its status: the package version and the git commit.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| format!("{} (commit {GIT_COMMIT})", env!("CARGO_PKG_VERSION")))
}

/// Command-line arguments of `cplane-agent` (every flag has a `CPLANE_AGENT_*` env equivalent).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "cplane-agent",
    version = version(),
    about = "Pulls this cluster's bundle from cplane and applies it (server-side apply, safe prune, drift correction, status)",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Control plane URL (`https://…`; `http://` for local tries).
    #[arg(long, env = "CPLANE_AGENT_SERVER")]
    pub server: String,
    /// This cluster's id (`w-acme`, `prod-sgp-1`, …).
    #[arg(long, env = "CPLANE_AGENT_CLUSTER")]
    pub cluster: String,
    /// File holding the cluster token (`cplane cluster token create ID`); read for every request.
    #[arg(
        long,
        env = "CPLANE_AGENT_TOKEN_FILE",
        required_unless_present = "client_cert"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM client certificate for mTLS (instead of a token).
    #[arg(
        long,
        env = "CPLANE_AGENT_CLIENT_CERT",
        requires = "client_key",
        conflicts_with = "token_file"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "CPLANE_AGENT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// PEM CA bundle the server's certificate must chain to (default: the system's roots).
    #[arg(long, env = "CPLANE_AGENT_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
    /// Where the last applied bundle is kept.
    #[arg(
        long,
        env = "CPLANE_AGENT_STATE_DIR",
        default_value = "/var/lib/cplane-agent"
    )]
    pub state_dir: PathBuf,
    /// Period of re-applying the stored bundle (drift correction), jittered ±20 %.
    #[arg(long, env = "CPLANE_AGENT_DRIFT_INTERVAL", default_value = "5m", value_parser = parse_interval)]
    pub drift_interval: Duration,
    /// Long-poll duration (the server caps it at 300 s).
    #[arg(long, env = "CPLANE_AGENT_WAIT", default_value = "60s", value_parser = parse_interval)]
    pub wait: Duration,
    /// Kubeconfig file (default: in-cluster config, then $KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "CPLANE_AGENT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the agent's inventory ConfigMap (created when missing).
    #[arg(long, env = "CPLANE_AGENT_NAMESPACE", default_value = "cplane-system")]
    pub namespace: String,
    /// How long to wait for an applied CRD to become Established.
    #[arg(long, env = "CPLANE_AGENT_CRD_TIMEOUT", default_value = "60s", value_parser = parse_interval)]
    pub crd_timeout: Duration,
    /// Longest pause between retries after errors.
    #[arg(long, env = "CPLANE_AGENT_MAX_BACKOFF", default_value = "5m", value_parser = parse_interval)]
    pub max_backoff: Duration,
    /// One pass, then exit: fetch the bundle without waiting, apply it (prune as usual), report
    /// status, exit with the result (see the exit codes below). With the server unreachable, a
    /// stored bundle is re-applied without prune, and the exit code is 1.
    #[arg(long, env = "CPLANE_AGENT_ONCE")]
    pub once: bool,
    /// Print what an apply would change (server-side dry run) and exit; writes nothing: no
    /// object, no inventory, no stored bundle, no status report. Implies one pass.
    #[arg(long, env = "CPLANE_AGENT_DRY_RUN")]
    pub dry_run: bool,
}

/// The end of `--help`: exit codes and logging.
const AFTER_HELP: &str = "\
Exit codes (--once and --dry-run; the long-running agent exits 0 on SIGTERM/Ctrl-C):
  0  --once: every object applied, is healthy, and the status was reported;
     --dry-run: nothing would change
  1  the poll or the apply failed, an object failed, or the status was not delivered;
     --dry-run: the server would refuse an object, or the dry run failed
  2  usage or configuration error (bad flag, server URL, TLS files, kubeconfig);
     a bad kubeconfig is also reported to the server as a failed apply (not with --dry-run)
  3  --once: everything applied, but not every object is healthy yet
  4  --dry-run: changes pending (something would be created, changed or pruned)

Logging: CPLANE_LOG (tracing filter, e.g. `info`, `cplane_agent=debug`) like the server;
RUST_LOG is read only when CPLANE_LOG is unset; default `info`. Logs go to stderr, the
results of --once and --dry-run to stdout.";

/// How a pass ends: the process exit code (see `cplane-agent --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: applied and healthy (dry run: no changes); or a clean stop of the loop.
    Success,
    /// 1: the poll or the apply failed, or an object failed.
    Failed,
    /// 2: usage or configuration error.
    Config,
    /// 3: applied, but not every object is healthy yet.
    Unhealthy,
    /// 4: dry run: changes pending.
    Changes,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Failed => 1,
            Self::Config => 2,
            Self::Unhealthy => 3,
            Self::Changes => 4,
        }
    }
}

/// The log filter: `CPLANE_LOG`, else `RUST_LOG`, else `info`.
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("CPLANE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// A duration like `250ms`, `90s`, `5m`, `1h 30m` (humantime, as `cplane` reads them), or
/// plain seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("`{s}` is not a duration like 90s, 5m or 1h ({e})")),
    }
}

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server client could not be built.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// No usable Kubernetes configuration.
    #[error("Kubernetes configuration: {message}")]
    Kube {
        /// What failed.
        message: String,
        /// kube's error.
        #[source]
        source: Option<kube::Error>,
    },
    /// The loop stopped on an error.
    #[error(transparent)]
    Run(#[from] run::Error),
}

/// Installs the process-wide rustls CryptoProvider (aws-lc-rs); harmless when already done.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The Kubernetes client from `--kubeconfig`, or `Config::infer()` (in-cluster, then
/// $KUBECONFIG / ~/.kube/config).
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kube {
                message: format!("{}: {e}", path.display()),
                source: None,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kube {
                    message: format!("{}: {e}", path.display()),
                    source: None,
                })?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kube {
            message: e.to_string(),
            source: None,
        })?,
    };
    kube::Client::try_from(config).map_err(|e| Error::Kube {
        message: "building the client".into(),
        source: Some(e),
    })
}

fn server_client(args: &Args) -> Result<client::ServerClient, client::Error> {
    let credentials = match (&args.token_file, &args.client_cert, &args.client_key) {
        (Some(t), _, _) => client::Credentials::TokenFile(t.clone()),
        (None, Some(cert), Some(key)) => client::Credentials::ClientCert {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            return Err(client::Error::Tls {
                message: "give --token-file, or --client-cert with --client-key".into(),
                source: None,
            })
        }
    };
    client::ServerClient::new(
        &args.server,
        &args.cluster,
        credentials,
        args.server_ca.as_ref(),
    )
}

fn agent(args: Args, server: client::ServerClient, client: kube::Client) -> run::Agent {
    let Args {
        cluster,
        state_dir,
        drift_interval,
        wait,
        namespace,
        crd_timeout,
        max_backoff,
        ..
    } = args;
    run::Agent {
        server,
        target: apply::Target {
            client,
            cluster,
            namespace,
            crd_timeout,
        },
        store: store::Store::new(state_dir),
        timing: run::Timing {
            wait,
            drift: drift_interval,
            min_backoff: Duration::from_secs(1).min(drift_interval),
            max_backoff,
        },
    }
}

async fn log_connected(client: &kube::Client, cluster: &str) {
    match client.apiserver_version().await {
        Ok(v) => tracing::info!(kubernetes = %v.git_version, cluster = %cluster, "connected"),
        Err(e) => tracing::warn!(error = %e, "Kubernetes API not reachable yet; will retry"),
    }
}

/// Runs the agent's loop with `args` against `client` until `shutdown` turns true
/// (`--once` and `--dry-run` are not looked at: see [`once_with`]).
pub async fn run_with(
    args: Args,
    client: kube::Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    let server = server_client(&args)?;
    log_connected(&client, &args.cluster).await;
    run::run(agent(args, server, client), shutdown).await?;
    Ok(())
}

/// One pass with `args` against `client`: `--dry-run` if set, else `--once`.
pub async fn once_with(args: Args, client: kube::Client) -> Exit {
    let server = match server_client(&args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "configuration");
            println!("configuration: {e}");
            return Exit::Config;
        }
    };
    let dry = args.dry_run;
    let agent = agent(args, server, client);
    if dry {
        run::dry_run(&agent).await
    } else {
        run::once(&agent).await
    }
}

/// What `cplane-agent` does with `args`: builds the clients, then one pass (`--once`,
/// `--dry-run`) or the loop until `shutdown` turns true. A Kubernetes configuration that cannot
/// be used is reported to the server as a failed apply (except with `--dry-run`), then ends the
/// agent with [`Exit::Config`].
pub async fn main_with(args: Args, shutdown: tokio::sync::watch::Receiver<bool>) -> Exit {
    let server = match server_client(&args) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "configuration");
            return Exit::Config;
        }
    };
    let client = match kube_client(args.kubeconfig.as_ref()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no usable Kubernetes configuration");
            if !args.dry_run {
                let store = store::Store::new(args.state_dir.clone());
                run::report_setup_failure(&server, &store, &format!("apply failed: {e}")).await;
            }
            return Exit::Config;
        }
    };
    if args.once || args.dry_run {
        return once_with(args, client).await;
    }
    log_connected(&client, &args.cluster).await;
    match run::run(agent(args, server, client), shutdown).await {
        Ok(()) => Exit::Success,
        Err(e) => {
            tracing::error!(error = %e, "agent stopped");
            Exit::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_interval("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_interval("5x").is_err());
    }
}
