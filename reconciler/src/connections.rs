//! The HTTP/1.1 connections of `cplane serve`, plain or TLS ([`crate::tls`]).
//!
//! Every agent keeps a connection open, and nearly all the time that connection is parked in a
//! long-poll (`GET /v1/clusters/{id}/bundle?wait=`, [`crate::serve`]): what one parked
//! connection costs, times the number of agents, is most of the server's memory. Connections are
//! therefore driven by hyper's HTTP/1 connection directly rather than by `axum::serve`: with the
//! same router, `axum::serve` (hyper-util's protocol-sniffing `auto` builder with upgrade
//! support, neither of which is needed here: only HTTP/1.1 is offered, as before) holds more
//! resident memory per parked long-poll (the figures are in the `agent_polls` benchmark's docs).
//!
//! # Guarantees
//! - A verified client certificate's cluster is added to every request of its connection as a
//!   [`ClientCluster`] extension; nothing a client sends can set it, except a certificate
//!   forwarded by a trusted load balancer ([`ForwardedCerts`]), which is verified alike. So is
//!   the peer's address, as axum's `ConnectInfo<SocketAddr>` (the per-source rate limits of
//!   the webhook and the edge endpoints key on it).
//! - While a request is in flight, hyper keeps reading its connection (no half-close): a client
//!   that goes away has its request dropped at once, a parked long-poll included.
//! - On shutdown, no new connection is accepted and the requests in flight are finished.
//! - A client that does not finish sending a request's head within the header-read timeout
//!   (from the moment the server waits for it: a new connection, or a kept-alive one between
//!   requests) is disconnected, and so is a TLS client that does not finish its handshake in
//!   that time: a slow or silent client holds a connection for that long at most (slowloris).
//!   A parked long-poll is not affected: its head was read, it waits for its answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};

use crate::tls::{ClientCluster, ForwardedCerts};

/// How long a client has to send a request's head, and to finish a TLS handshake, unless
/// configured otherwise (`cplane serve --header-read-timeout`).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` — over TLS with `tls` — until `shutdown` resolves, then lets the
/// requests in flight finish. A client has `header_timeout` to finish its TLS handshake, and
/// the same to send each request's head. With `forwarded`, a trusted proxy's forwarded client
/// certificate authenticates the request like a direct one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    forwarded: Option<Arc<ForwardedCerts>>,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Most likely out of file descriptors: wait for some to be closed
                        // instead of spinning on the error.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let forwarded = forwarded.clone();
        let watcher = graceful.watcher();
        // Two spawn sites, so that a plain connection's task is not sized for a TLS stream.
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(
                    tcp,
                    app,
                    Peer {
                        addr: peer,
                        cluster: None,
                        forwarded,
                    },
                    header_timeout,
                    watcher,
                ));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(
                                %peer,
                                timeout_ms = header_timeout.as_millis(),
                                "TLS handshake timed out"
                            );
                            return;
                        }
                    };
                    let cluster = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(crate::tls::cluster_of)
                        .map(ClientCluster);
                    let peer = Peer {
                        addr: peer,
                        cluster,
                        forwarded,
                    };
                    serve_connection(tls, app, peer, header_timeout, watcher).await;
                });
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// Errors of `accept` that concern one connection only (the next accept may well succeed).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Who is at the other end of a connection.
struct Peer {
    addr: std::net::SocketAddr,
    /// The cluster of the connection's verified client certificate.
    cluster: Option<ClientCluster>,
    /// Certificates forwarded by trusted proxies, when configured.
    forwarded: Option<Arc<ForwardedCerts>>,
}

/// Serves the requests of one connection with `app`; the connection's verified client
/// certificate's cluster (or, per request, a trusted proxy's forwarded one) is added to every
/// request. A request head not received within `header_timeout` closes the connection.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    peer: Peer,
    header_timeout: Duration,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        // The TCP peer, for handlers that limit by source address (`ConnectInfo`).
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer.addr));
        let forwarded = peer
            .forwarded
            .as_ref()
            .and_then(|f| f.take(peer.addr.ip(), req.headers_mut()));
        if let Some(c) = peer.cluster.clone().or(forwarded) {
            req.extensions_mut().insert(c);
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %addr, error = %e, "connection");
    }
}
