//! A fault-injecting HTTP proxy of ours in front of moto (moto cannot inject faults itself).
//!
//! It forwards every request, counts them by `service:Operation` (so benchmarks and tests count
//! AWS calls at the wire), answers chosen requests with faults in each service's real error
//! format (STS/Route53 XML, ACM JSON with `x-amzn-ErrorType`), and can *swallow* the response
//! of the N-th mutating call after moto has executed it — the moment a crash test kills
//! `cplane`: the change happened, the caller never learned of it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A fault to answer with instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The service's throttling error (STS `Throttling`, Route53 `PriorRequestNotComplete`, ACM
    /// `ThrottlingException`).
    Throttle,
    /// HTTP 500 with the service's internal-error body.
    ServerError,
    /// ACM `LimitExceededException` (a quota).
    LimitExceeded,
}

struct Rule {
    matcher: String,
    fault: Fault,
    remaining: u32,
}

#[derive(Default)]
struct State {
    counts: Mutex<BTreeMap<String, u64>>,
    rules: Mutex<Vec<Rule>>,
    mutations: AtomicU64,
    swallow_at: AtomicU64,
    swallowed: AtomicU64,
    /// A share of all requests throttled before they reach moto ([`FaultProxy::throttle_percent`]).
    random: crate::faults::Faults,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

/// `service:Operation` of an AWS request, and whether it changes anything.
fn classify(
    method: &hyper::Method,
    path: &str,
    target: Option<&str>,
    body: &[u8],
) -> (String, bool) {
    if let Some(t) = target {
        let op = t.rsplit('.').next().unwrap_or(t);
        let mutating = matches!(
            op,
            "RequestCertificate" | "DeleteCertificate" | "AddTagsToCertificate"
        );
        return (format!("acm:{op}"), mutating);
    }
    if let Some(rest) = path.strip_prefix("/2013-04-01/") {
        let get = method == hyper::Method::GET;
        let op = match (method.as_str(), rest) {
            (_, r) if r.starts_with("hostedzonesbyname") => "ListHostedZonesByName",
            ("POST", "hostedzone") => "CreateHostedZone",
            (_, r) if r.starts_with("hostedzone/") && r.contains("/rrset") => {
                if get {
                    "ListResourceRecordSets"
                } else {
                    "ChangeResourceRecordSets"
                }
            }
            ("DELETE", r) if r.starts_with("hostedzone/") => "DeleteHostedZone",
            ("GET", r) if r.starts_with("hostedzone/") => "GetHostedZone",
            ("GET", r) if r.starts_with("hostedzone") => "ListHostedZones",
            ("GET", r) if r.starts_with("change/") => "GetChange",
            _ => "Other",
        };
        return (format!("route53:{op}"), !get);
    }
    let text = String::from_utf8_lossy(body);
    let action = text
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("Other");
    (format!("sts:{action}"), false)
}

fn fault_response(service: &str, fault: Fault) -> Response<Full<Bytes>> {
    let xml = |status: StatusCode, code: &str, ns: &str| {
        let body = format!(
            "<ErrorResponse{ns}><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the test proxy</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
        );
        Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(body)))
            .expect("static response")
    };
    let json = |status: StatusCode, code: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-ErrorType", code)
            .body(Full::new(Bytes::from(format!(
                r#"{{"__type":"{code}","message":"injected by the test proxy"}}"#
            ))))
            .expect("static response")
    };
    let r53 = r#" xmlns="https://route53.amazonaws.com/doc/2013-04-01/""#;
    match (service, fault) {
        ("acm", Fault::Throttle) => json(StatusCode::BAD_REQUEST, "ThrottlingException"),
        ("acm", Fault::LimitExceeded) => json(StatusCode::BAD_REQUEST, "LimitExceededException"),
        ("acm", Fault::ServerError) => json(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
        ("route53", Fault::Throttle) => {
            xml(StatusCode::BAD_REQUEST, "PriorRequestNotComplete", r53)
        }
        ("route53", _) => xml(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", r53),
        (_, Fault::Throttle) => xml(StatusCode::BAD_REQUEST, "Throttling", ""),
        _ => xml(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", ""),
    }
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream` (e.g. moto's endpoint).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State::default());
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        let client = client.clone();
                        let upstream = upstream.clone();
                        async move { Ok::<_, Infallible>(handle(req, &st, &client, &upstream).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, state, task }
    }

    /// Answers the next `times` requests matching `matcher` (`service:Operation`, or
    /// `service:*`) with `fault`.
    pub fn inject(&self, matcher: &str, fault: Fault, times: u32) {
        self.state.rules.lock().expect("rules").push(Rule {
            matcher: matcher.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Answers `percent` % of all requests, chosen by a seeded generator, with the service's
    /// throttling error (or, for some, a 500) before they reach moto: a throttled account.
    pub fn throttle_percent(&self, percent: u32) {
        self.state.random.set_percent(percent);
    }

    /// Requests answered with a fault by [`FaultProxy::throttle_percent`] so far.
    pub fn throttled(&self) -> u64 {
        self.state.random.injected()
    }

    /// Requests seen (including faulted ones), by `service:Operation`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.counts.lock().expect("counts").clone()
    }

    /// Total requests seen.
    pub fn total(&self) -> u64 {
        self.counts().values().sum()
    }

    /// Mutating requests forwarded so far.
    pub fn mutations(&self) -> u64 {
        self.state.mutations.load(Ordering::SeqCst)
    }

    /// Clears the counters.
    pub fn reset_counts(&self) {
        self.state.counts.lock().expect("counts").clear();
    }

    /// After the `n`-th mutating request (counting from now) is executed by moto, never answer
    /// it: the caller hangs as if the network died. `0` turns it off.
    pub fn swallow_mutation(&self, n: u64) {
        self.state.mutations.store(0, Ordering::SeqCst);
        self.state.swallowed.store(0, Ordering::SeqCst);
        self.state.swallow_at.store(n, Ordering::SeqCst);
    }

    /// Whether the swallowed request has happened.
    pub fn swallowed(&self) -> bool {
        self.state.swallowed.load(Ordering::SeqCst) > 0
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    st: &State,
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    upstream: &str,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let (op, mutating) = classify(&parts.method, parts.uri.path(), target, &body);
    *st.counts
        .lock()
        .expect("counts")
        .entry(op.clone())
        .or_insert(0) += 1;
    let service = op.split(':').next().unwrap_or("").to_owned();
    let fault = {
        let mut rules = st.rules.lock().expect("rules");
        rules
            .iter_mut()
            .find(|r| r.remaining > 0 && (r.matcher == op || r.matcher == format!("{service}:*")))
            .map(|r| {
                r.remaining -= 1;
                r.fault
            })
    };
    if let Some(f) = fault {
        return fault_response(&service, f);
    }
    if let Some(f) = st.random.next() {
        let f = match f {
            crate::faults::Fault::Throttle => Fault::Throttle,
            crate::faults::Fault::Unavailable => Fault::ServerError,
        };
        return fault_response(&service, f);
    }
    let uri = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = Request::builder().method(parts.method.clone()).uri(uri);
    for (k, v) in &parts.headers {
        forward = forward.header(k, v);
    }
    let forward = forward.body(Full::new(body)).expect("request");
    let response = match client.request(forward).await {
        Ok(r) => {
            let (p, b) = r.into_parts();
            let bytes = b.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(p, Full::new(bytes))
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::from(e.to_string())))
            .expect("static response"),
    };
    if mutating {
        let n = st.mutations.fetch_add(1, Ordering::SeqCst) + 1;
        if st.swallow_at.load(Ordering::SeqCst) == n {
            st.swallowed.fetch_add(1, Ordering::SeqCst);
            // The change is made; the answer never arrives.
            std::future::pending::<()>().await;
        }
    }
    response
}
