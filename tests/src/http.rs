//! The tests' HTTP client: one HTTP/1.1 request to `127.0.0.1:<port>` over a fresh connection
//! (hyper's client connection), blocking, with the whole answer read.
//!
//! ```no_run
//! # let (port, token) = (3000, "cpt_x");
//! use cplane_e2e::http::Request;
//! let r = Request::get(port, "/v1/clusters/w-acme/bundle")
//!     .bearer(token)
//!     .send()
//!     .expect("GET bundle");
//! assert_eq!(r.status, 200, "{r:?}");
//! let etag = r.header("etag");
//! ```
//!
//! Every request carries `Host: 127.0.0.1:<port>`, `Connection: close` and `Content-Length`, as
//! the hand-written clients the tests used before did. A request that gets no complete answer within
//! [`TIMEOUT`] fails. The calls block; they may be made from inside a tokio runtime as well
//! (the request then runs on a thread of its own).

use std::future::Future;
use std::io;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;

/// The longest a request may take, answer included (long-polls in the tests wait up to 30 s).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// One request, built up and then sent with [`Request::send`] (or [`Request::start`]).
#[derive(Debug, Clone)]
pub struct Request {
    port: u16,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// `method path` (path and query, e.g. `/v1/plan?x=1`) to `127.0.0.1:port`.
    pub fn new(port: u16, method: &str, path: &str) -> Self {
        Self {
            port,
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `GET path`.
    pub fn get(port: u16, path: &str) -> Self {
        Self::new(port, "GET", path)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Adds the headers `(name, value)`.
    pub fn headers<'a>(mut self, headers: impl IntoIterator<Item = &'a (&'a str, String)>) -> Self {
        for (name, value) in headers {
            self.headers.push(((*name).to_owned(), value.clone()));
        }
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    /// The request body (sent with its `Content-Length`).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the request and reads the whole answer.
    ///
    /// # Errors
    /// When nothing listens on the port (`ConnectionRefused`), the connection fails or is closed
    /// before a complete answer, or the answer takes longer than [`TIMEOUT`] (`TimedOut`).
    pub fn send(self) -> io::Result<Response> {
        block_on(self.send_async())
    }

    /// Sends the request on a thread of its own and returns at once: the request is in flight
    /// until [`InFlight::wait`]; dropping the [`InFlight`] closes the connection, as a client
    /// that goes away does.
    pub fn start(self) -> InFlight {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            block_on(async move {
                tokio::select! {
                    r = self.send_async() => Some(r),
                    _ = cancelled => None,
                }
            })
        });
        InFlight {
            cancel: Some(cancel),
            thread: Some(thread),
        }
    }

    async fn send_async(self) -> io::Result<Response> {
        let port = self.port;
        tokio::time::timeout(TIMEOUT, self.exchange())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from 127.0.0.1:{port} within {TIMEOUT:?}"),
                )
            })?
    }

    async fn exchange(self) -> io::Result<Response> {
        let Self {
            port,
            method,
            path,
            headers,
            body,
        } = self;
        let mut request = hyper::Request::builder()
            .method(Method::from_bytes(method.as_bytes()).map_err(io::Error::other)?)
            .uri(&path)
            .header("Host", format!("127.0.0.1:{port}"))
            .header("Connection", "close")
            .header("Content-Length", body.len());
        for (name, value) in &headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes()).map_err(io::Error::other)?,
                HeaderValue::from_str(value).map_err(io::Error::other)?,
            );
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(io::Error::other)?;

        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        let connection = tokio::spawn(connection);
        let answer = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let (parts, body) = answer.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        connection.abort();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.to_vec(),
        })
    }
}

/// A request sent by [`Request::start`].
#[derive(Debug)]
pub struct InFlight {
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<io::Result<Response>>>>,
}

impl InFlight {
    /// Waits for the answer (see [`Request::send`]).
    pub fn wait(mut self) -> io::Result<Response> {
        let thread = self.thread.take().expect("waited once");
        thread
            .join()
            .expect("the request's thread panicked")
            .expect("not cancelled while waited for")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An answer: status, headers, and the body (de-chunked; not decompressed).
#[derive(Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers (names in lowercase).
    pub headers: HeaderMap,
    /// The body's bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (the first, if repeated), when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The status line and the headers, one per line, as text: `HTTP/1.1 200 OK` then
    /// `name: value` lines (for assertion messages, and tests that look into the head).
    pub fn head(&self) -> String {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut head = format!("HTTP/1.1 {} {reason}", self.status);
        for (name, value) in &self.headers {
            head.push_str("\r\n");
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        head
    }
}

impl std::fmt::Debug for Response {
    /// The head and the body as text, so that `assert_eq!(r.status, 200, "{r:?}")` shows them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\r\n\r\n{}", self.head(), self.text())
    }
}

/// Runs `future` to completion on a runtime of its own; on a thread of its own when called
/// from inside a tokio runtime (which cannot block on another).
fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the request")
            .block_on(future)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().expect("the request's thread panicked"))
    } else {
        run()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// A server of one connection: reads the request head (then sends on `head_read`), answers
    /// `answer` (raw bytes), then reads until the client closes; returns the head it read and
    /// whether the client closed.
    fn serve_once(
        answer: &'static [u8],
    ) -> (
        u16,
        std::sync::mpsc::Receiver<()>,
        std::thread::JoinHandle<(String, bool)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (head_read, on_head) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read head");
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let _ = head_read.send(());
            reader.get_mut().write_all(answer).expect("answer");
            let closed = reader.read(&mut [0; 1]).map(|n| n == 0).unwrap_or(true);
            (head, closed)
        });
        (port, on_head, server)
    }

    #[test]
    fn sends_host_connection_close_and_length_and_reads_a_chunked_answer() {
        let (port, _, server) = serve_once(
            b"HTTP/1.1 201 Created\r\nX-Thing: a b\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let r = Request::new(port, "POST", "/x?y=1")
            .bearer("t0k")
            .body("{}")
            .send()
            .expect("send");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x-thing"), Some("a b"));
        assert_eq!(r.text(), "abcde");
        assert!(r.head().starts_with("HTTP/1.1 201 Created\r\n"), "{r:?}");
        let (head, _) = server.join().expect("server");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /x?y=1 http/1.1\r\n"), "{head}");
        for line in [
            format!("host: 127.0.0.1:{port}"),
            "connection: close".into(),
            "content-length: 2".into(),
            "authorization: bearer t0k".into(),
        ] {
            assert!(head.contains(&line), "{line} missing in {head}");
        }
    }

    #[test]
    fn nothing_listening_is_connection_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let e = Request::get(port, "/").send().expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn dropping_a_request_in_flight_closes_its_connection() {
        let (port, on_head, server) = serve_once(b"");
        let in_flight = Request::get(port, "/wait").start();
        on_head.recv().expect("the request arrives");
        drop(in_flight);
        let (head, closed) = server.join().expect("server");
        assert!(head.starts_with("GET /wait "), "{head}");
        assert!(closed, "the connection is closed");
    }

    #[test]
    fn works_from_inside_a_runtime() {
        let (port, _, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let status = rt.block_on(async { Request::get(port, "/").send().expect("send").status });
        assert_eq!(status, 204);
        server.join().expect("server");
    }
}
