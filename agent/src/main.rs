//! `cplane-agent`: see the library docs and `cplane-agent --help`.
#![forbid(unsafe_code)]

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // kube and the TLS client share one rustls provider; install it before any client exists.
    cplane_agent::install_crypto();
    tracing_subscriber::fmt()
        .with_env_filter(cplane_agent::log_filter())
        .with_writer(std::io::stderr)
        .init();
    let args = cplane_agent::Args::parse();

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
    std::process::ExitCode::from(cplane_agent::main_with(args, shutdown).await.code())
}
