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
//! - [`run`]: the loop (poll, drift timer, backoff, clean shutdown).
//! - `apiserver` (feature `test-apiserver`): a fake Kubernetes API server for tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod bundle;
pub mod client;
pub mod health;
pub mod inventory;
pub mod run;
pub mod store;

#[cfg(feature = "test-apiserver")]
pub mod apiserver;

use std::path::PathBuf;
use std::time::Duration;

/// Field manager of every server-side apply the agent makes.
pub const FIELD_MANAGER: &str = "cplane";

/// Command-line arguments of `cplane-agent` (every flag has a `CPLANE_AGENT_*` env equivalent).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "cplane-agent",
    version,
    about = "Pulls this cluster's bundle from cplane and applies it (server-side apply, safe prune, drift correction, status)"
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
}

/// `250ms`, `90s`, `3m`, `1h`, or plain seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not an interval like 90s, 5m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{s}`: unit must be ms, s, m or h")),
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

/// Runs the agent with `args` against `client` until `shutdown` turns true.
pub async fn run_with(
    args: Args,
    client: kube::Client,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    let Args {
        server,
        cluster,
        token_file,
        client_cert,
        client_key,
        server_ca,
        state_dir,
        drift_interval,
        wait,
        kubeconfig: _, // already used to build `client`
        namespace,
        crd_timeout,
        max_backoff,
    } = args;
    let credentials = match (token_file, client_cert, client_key) {
        (Some(t), _, _) => client::Credentials::TokenFile(t),
        (None, Some(cert), Some(key)) => client::Credentials::ClientCert { cert, key },
        _ => {
            return Err(Error::Client(client::Error::Tls {
                message: "give --token-file, or --client-cert with --client-key".into(),
                source: None,
            }))
        }
    };
    let server = client::ServerClient::new(&server, &cluster, credentials, server_ca.as_ref())?;
    match client.apiserver_version().await {
        Ok(v) => tracing::info!(kubernetes = %v.git_version, cluster = %cluster, "connected"),
        Err(e) => tracing::warn!(error = %e, "Kubernetes API not reachable yet; will retry"),
    }
    let agent = run::Agent {
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
    };
    run::run(agent, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("7"), Ok(Duration::from_secs(7)));
        assert!(parse_interval("5d").is_err());
    }
}
