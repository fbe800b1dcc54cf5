//! `kube-fake`: the test Kubernetes API server the agent's tests run against
//! (`cplane_e2e::kube_apiserver`) as a program, to see `cplane-agent` work without a cluster.
//!
//! ```text
//! cargo run -p cplane-e2e --example kube-fake -- \
//!     --listen 127.0.0.1:6443 --kubeconfig-out /tmp/kube-fake.yaml
//! ```
//!
//! It is NOT a real API server: objects live in memory (gone when it stops), there are no
//! controllers (a Deployment never gets Pods, so it never becomes healthy), no watch, no
//! authentication. See the `kube_apiserver` module docs for what it emulates and what not. It
//! listens on loopback only, and prints the objects it holds whenever they change.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;

/// Serves the fake Kubernetes API server on loopback and writes a kubeconfig for it.
#[derive(Debug, clap::Parser)]
#[command(name = "kube-fake")]
struct Args {
    /// Loopback address to listen on (the fake has no authentication).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at it (default: print it to stdout).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Seconds before a CustomResourceDefinition becomes Established.
    #[arg(long, default_value_t = 0)]
    crd_delay: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let server = cplane_e2e::kube_apiserver::ApiServer::new()
        .with_crd_delay(Duration::from_secs(args.crd_delay));
    let served = match server.serve_on(args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-fake: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    match &args.kubeconfig_out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, served.kubeconfig()) {
                eprintln!("kube-fake: writing {}: {e}", path.display());
                return std::process::ExitCode::from(2);
            }
            eprintln!(
                "kube-fake: fake Kubernetes API server on {}; kubeconfig in {}",
                served.url,
                path.display()
            );
        }
        None => {
            eprintln!("kube-fake: fake Kubernetes API server on {}", served.url);
            print!("{}", served.kubeconfig());
        }
    }
    eprintln!("kube-fake: not a real API server (in memory, no controllers); Ctrl-C stops it");
    let mut shown = server.inventory();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let now = server.inventory();
                if now != shown {
                    eprintln!("kube-fake: {} objects:", now.len());
                    for o in &now {
                        eprintln!("  {o}");
                    }
                    shown = now;
                }
            }
        }
    }
    drop(served);
    std::process::ExitCode::SUCCESS
}
