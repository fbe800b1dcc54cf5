//! The HTTP/1.1 connections of `cplane serve`, plain or TLS ([`crate::tls`]).
//!
//! Every agent keeps a connection open, and nearly all the time that connection is parked in a
//! long-poll (`GET /v1/clusters/{id}/bundle?wait=`, [`crate::serve`]): what one parked
//! connection costs, times the number of agents (10,000 in the `agent_polls` benchmark), is
//! most of the server's memory. So connections are driven by hyper's HTTP/1 connection directly
//! rather than by `axum::serve` (whose protocol-sniffing `auto` builder and upgrade support are
//! not needed: only HTTP/1.1 is offered, as before), and:
//!
//! - **Request heads are detached from the read buffer** ([`detach_head`]). hyper parses a
//!   request head in place: the header values and the URI are slices of the connection's 8 KiB
//!   read buffer. While the request is in flight, hyper keeps reading the socket to notice a
//!   client that goes away, and since the buffer is still shared with the request, it allocates
//!   a second one — for every parked long-poll. Copying the few bytes of the head out before the
//!   request is handed to the router leaves hyper the sole owner of its buffer, which it then
//!   reuses.
//! - **TLS connections queue the body instead of copying it** (`writev`): rustls streams do not
//!   advertise vectored writes, so hyper would flatten each response into its head buffer and
//!   keep that buffer at the size of the largest bundle it ever sent, per connection.
//!
//! # Guarantees
//! - The requests the router sees are equal to what hyper parsed (method, URI, version, headers
//!   with their sensitivity flags, extensions), and a verified client certificate's cluster is
//!   added as a [`ClientCluster`] extension; nothing a client sends can set it.
//! - On shutdown, no new connection is accepted and the requests in flight are finished.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};

use crate::tls::ClientCluster;

/// Serves `app` on `listener` — over TLS with `tls` — until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
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
        let watcher = graceful.watcher();
        // Two spawn sites, so that a plain connection's task is not sized for a TLS stream.
        match &acceptor {
            None => {
                tokio::spawn(serve_connection(tcp, app, None, false, watcher, peer));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
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
                    serve_connection(tls, app, cluster, true, watcher, peer).await;
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

/// Serves the requests of one connection with `app`; `cluster` is the connection's verified
/// client certificate's cluster, added to every request.
async fn serve_connection<I>(
    io: I,
    app: axum::Router,
    cluster: Option<ClientCluster>,
    queue_writes: bool,
    watcher: Watcher,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = detach_head(req).map(axum::body::Body::new);
        if let Some(c) = &cluster {
            req.extensions_mut().insert(c.clone());
        }
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    if queue_writes {
        http.writev(true);
    }
    let conn = http.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection");
    }
}

/// `req` with its URI and header values copied out of the connection's read buffer (see the
/// module documentation): afterwards nothing the request holds keeps that buffer alive.
pub fn detach_head<B>(req: hyper::Request<B>) -> hyper::Request<B> {
    let (mut parts, body) = req.into_parts();
    // Round-trips exactly: the URI came from these very bytes.
    if let Ok(uri) = parts.uri.to_string().parse() {
        parts.uri = uri;
    }
    for value in parts.headers.values_mut() {
        if let Ok(mut owned) = hyper::header::HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(value.is_sensitive());
            *value = owned;
        }
    }
    hyper::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_heads_are_equal_and_own_their_bytes() {
        // A head parsed the way hyper does: slices of one shared buffer.
        let buffer = bytes_of("/v1/clusters/w-a/bundle?wait=30\"sha256:ab\"");
        let mut req = hyper::Request::builder()
            .uri(hyper::Uri::from_maybe_shared(buffer.slice(0..31)).expect("uri"))
            .body(())
            .expect("request");
        let mut value =
            hyper::header::HeaderValue::from_maybe_shared(buffer.slice(31..)).expect("value");
        value.set_sensitive(true);
        req.headers_mut()
            .insert(hyper::header::IF_NONE_MATCH, value);
        assert!(!buffer.is_unique());

        let req = detach_head(req);
        assert_eq!(req.uri().path(), "/v1/clusters/w-a/bundle");
        assert_eq!(req.uri().query(), Some("wait=30"));
        let value = &req.headers()[hyper::header::IF_NONE_MATCH];
        assert_eq!(value.as_bytes(), b"\"sha256:ab\"");
        assert!(value.is_sensitive());
        // The request no longer points into the buffer: it is the only owner left.
        assert!(buffer.is_unique());
    }

    fn bytes_of(s: &str) -> hyper::body::Bytes {
        hyper::body::Bytes::copy_from_slice(s.as_bytes())
    }
}
