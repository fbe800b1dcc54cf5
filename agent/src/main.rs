//! `cplane-agent`: see the library docs and `cplane-agent --help`.
#![forbid(unsafe_code)]

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // kube and the TLS client share one rustls provider; install it before any client exists.
    cplane_agent::install_crypto();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = cplane_agent::Args::parse();
    let client = cplane_agent::kube_client(args.kubeconfig.as_ref()).await?;

    // SIGTERM or Ctrl-C: finish the apply in progress, then stop.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("stopping after the current apply");
        let _ = stop.send(true);
    });
    cplane_agent::run_with(args, client, shutdown).await?;
    Ok(())
}
