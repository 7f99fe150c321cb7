//! An HTTP fault proxy for the AWS JSON protocols: put it between a client and kinesis-mock
//! or dynalite, and it forwards every request unless a [`FaultRule`] picks it for a
//! [`Fault`].
//!
//! Rules select calls by operation (the `X-Amz-Target` header, e.g. `PutRecords` or
//! `DynamoDB_20120810.UpdateItem`), by a fraction of the matching calls, by a time window
//! and by a maximum count. The faults are what a network and a service do in production:
//! an error answer in the service's own awsJson shape (throttling, 500, 503, any code), a
//! stalled answer, a late request, an answer lost after the request was applied, a reset
//! before it was, and an endpoint that refuses connections
//! ([`FaultProxy::refuse_connections`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use kinesis_emulator::fault_proxy::{Fault, FaultProxy, FaultRule};
//!
//! let proxy = FaultProxy::start("http://127.0.0.1:4567", 7).await?;
//! // A third of PutRecords calls throttled, the next 10 s.
//! let rule = proxy.add(
//!     FaultRule::new(Fault::Throttle)
//!         .target("PutRecords")
//!         .fraction(0.33)
//!         .for_duration(Duration::from_secs(10)),
//! );
//! // Point the client at proxy.endpoint() ...
//! # let _ = rule; Ok(()) }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to a call a rule picked.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answers HTTP 400 `ProvisionedThroughputExceededException` in the service's shape
    /// (Kinesis and DynamoDB both use this code); the request never reaches the server.
    Throttle,
    /// Answers HTTP 400 `ThrottlingException` (DynamoDB's control-plane and account-level
    /// throttling; Kinesis answers `LimitExceededException`, use [`Fault::Error`]).
    ThrottlingException,
    /// Answers this HTTP status with the service's error for it: 500 `InternalFailure`
    /// (DynamoDB `InternalServerError`), 503 `ServiceUnavailable`, anything else
    /// `InternalFailure`. The request never reaches the server.
    Status(u16),
    /// Answers an arbitrary error, e.g. 400 `AccessDeniedException` or
    /// `ResourceNotFoundException`.
    Error {
        /// HTTP status.
        status: u16,
        /// The error code (`__type`), without namespace.
        code: String,
    },
    /// Forwards the request at once and holds the server's answer this long before
    /// passing it on (a client timeout in between loses it).
    Stall(Duration),
    /// Holds the request this long, then forwards it: the server applies it late.
    Delay(Duration),
    /// Forwards the request, waits for the server's answer, then closes the connection
    /// without answering: the request was applied, its answer is lost.
    DropResponse,
    /// Closes the connection without forwarding or answering: the request was not
    /// applied, the client cannot know.
    Reset,
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Throttle => "throttle",
            Fault::ThrottlingException => "throttling-exception",
            Fault::Status(_) => "status",
            Fault::Error { .. } => "error",
            Fault::Stall(_) => "stall",
            Fault::Delay(_) => "delay",
            Fault::DropResponse => "drop-response",
            Fault::Reset => "reset",
        }
    }
}

/// When a [`Fault`] applies. Built with [`FaultRule::new`] and its setters; by default
/// it applies to every call, always, without limit.
#[derive(Clone, Debug)]
pub struct FaultRule {
    fault: Fault,
    target: Option<String>,
    fraction: f64,
    from: Option<Instant>,
    until: Option<Instant>,
    times: Option<u64>,
}

impl FaultRule {
    /// A rule injecting `fault` into every call.
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            fault,
            target: None,
            fraction: 1.0,
            from: None,
            until: None,
            times: None,
        }
    }

    /// Only calls whose `X-Amz-Target` is `target` or ends with `.target` (so
    /// `PutRecords` matches `Kinesis_20131202.PutRecords`).
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Only this share of the matching calls (0.0 ..= 1.0), drawn from the proxy's
    /// seeded random generator.
    pub fn fraction(mut self, fraction: f64) -> Self {
        self.fraction = fraction.clamp(0.0, 1.0);
        self
    }

    /// Only from `from` until `until`.
    pub fn window(mut self, from: Instant, until: Instant) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }

    /// Only from now for `duration`.
    pub fn for_duration(self, duration: Duration) -> Self {
        let now = Instant::now();
        self.window(now, now + duration)
    }

    /// At most `times` injections.
    pub fn times(mut self, times: u64) -> Self {
        self.times = Some(times);
        self
    }

    fn matches(&self, target: &str, now: Instant) -> bool {
        let target_matches = match &self.target {
            None => true,
            Some(wanted) => {
                target == wanted
                    || target
                        .strip_suffix(wanted.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            }
        };
        target_matches
            && self.from.is_none_or(|from| now >= from)
            && self.until.is_none_or(|until| now < until)
    }
}

/// Identifies a rule added to a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

struct ArmedRule {
    id: RuleId,
    rule: FaultRule,
    injected: u64,
}

/// What a proxy saw: calls per operation, faults injected per rule.
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    /// Calls received, per `X-Amz-Target` (without the service prefix).
    pub calls: HashMap<String, u64>,
    /// Calls forwarded to the server (including stalled, delayed and dropped ones).
    pub forwarded: u64,
    /// Faults injected, per kind (`throttle`, `status`, `error`, `stall`, `delay`,
    /// `drop-response`, `reset`, ...).
    pub injected: HashMap<&'static str, u64>,
    /// Open connections cut by [`FaultProxy::refuse_connections`] (connections refused
    /// afterwards are refused by the operating system and not counted).
    pub connections_cut: u64,
}

struct State {
    upstream: SocketAddr,
    rules: Mutex<Vec<ArmedRule>>,
    next_rule: Mutex<u64>,
    rng: Mutex<StdRng>,
    stats: Mutex<ProxyStats>,
    /// Bumped when connections must be cut; every connection task watches it.
    epoch: watch::Sender<u64>,
}

impl State {
    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the call and picks the fault of the first rule that applies.
    fn pick(&self, target: &str) -> Option<Fault> {
        let now = Instant::now();
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        *Self::lock(&self.stats).calls.entry(operation).or_default() += 1;
        let mut rules = Self::lock(&self.rules);
        let mut rng = Self::lock(&self.rng);
        for armed in rules.iter_mut() {
            if !armed.rule.matches(target, now)
                || armed.rule.times.is_some_and(|max| armed.injected >= max)
            {
                continue;
            }
            if armed.rule.fraction < 1.0 && rng.random::<f64>() >= armed.rule.fraction {
                continue;
            }
            armed.injected += 1;
            *Self::lock(&self.stats)
                .injected
                .entry(armed.rule.fault.kind())
                .or_default() += 1;
            return Some(armed.rule.fault.clone());
        }
        None
    }
}

/// A running fault proxy on a loopback port. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.state.upstream)
            .finish_non_exhaustive()
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why the proxy closes a connection without answering.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("fault injected: connection closed without an answer")]
    Injected,
    #[error("upstream: {0}")]
    Upstream(String),
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`
    /// (`http://host:port`). `seed` drives the random choice of [`FaultRule::fraction`].
    pub async fn start(upstream: &str, seed: u64) -> std::io::Result<FaultProxy> {
        let upstream = parse_endpoint(upstream)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream,
            rules: Mutex::new(Vec::new()),
            next_rule: Mutex::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: Mutex::new(ProxyStats::default()),
            epoch: watch::channel(0).0,
        });
        let proxy = FaultProxy {
            addr,
            state: state.clone(),
            acceptor: Mutex::new(None),
        };
        proxy.spawn_acceptor(listener);
        Ok(proxy)
    }

    /// `http://127.0.0.1:<port>`: give this to the client instead of the server's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule; rules are tried in the order they were added, the first that applies
    /// wins.
    pub fn add(&self, rule: FaultRule) -> RuleId {
        let id = {
            let mut next = State::lock(&self.state.next_rule);
            *next += 1;
            RuleId(*next)
        };
        State::lock(&self.state.rules).push(ArmedRule {
            id,
            rule,
            injected: 0,
        });
        id
    }

    /// Removes a rule.
    pub fn remove(&self, id: RuleId) {
        State::lock(&self.state.rules).retain(|r| r.id != id);
    }

    /// Removes every rule: everything is forwarded again.
    pub fn clear(&self) {
        State::lock(&self.state.rules).clear();
    }

    /// How many calls a rule has injected its fault into so far.
    pub fn injected(&self, id: RuleId) -> u64 {
        State::lock(&self.state.rules)
            .iter()
            .find(|r| r.id == id)
            .map_or(0, |r| r.injected)
    }

    /// Calls seen and faults injected so far.
    pub fn stats(&self) -> ProxyStats {
        State::lock(&self.state.stats).clone()
    }

    /// Stops listening (new connections are refused by the operating system) and cuts
    /// every open connection, as a dead endpoint does.
    pub fn refuse_connections(&self) {
        if let Some(acceptor) = State::lock(&self.acceptor).take() {
            acceptor.abort();
        }
        self.state.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Listens again on the same port after [`refuse_connections`](Self::refuse_connections).
    pub async fn accept_connections(&self) -> std::io::Result<()> {
        if State::lock(&self.acceptor).is_some() {
            return Ok(());
        }
        // The aborted acceptor drops its listener asynchronously: retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.spawn_acceptor(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("cannot listen again")))
    }

    fn spawn_acceptor(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, state.clone()));
            }
        });
        *State::lock(&self.acceptor) = Some(task);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.refuse_connections();
    }
}

fn parse_endpoint(endpoint: &str) -> std::io::Result<SocketAddr> {
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an http://host:port endpoint: {endpoint}"),
        )
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{port}").parse().map_err(|_| invalid())
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let mut epoch = state.epoch.subscribe();
    let handler = state.clone();
    let service = hyper::service::service_fn(move |request| handle(request, handler.clone()));
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = epoch.changed() => {
            State::lock(&state.stats).connections_cut += 1;
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<ProxyBody>, Closed> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fault = state.pick(&target);
    match fault {
        None => forward(request, &state).await,
        Some(Fault::Throttle) => Ok(error_response(
            &target,
            400,
            "ProvisionedThroughputExceededException",
        )),
        Some(Fault::ThrottlingException) => Ok(error_response(&target, 400, "ThrottlingException")),
        Some(Fault::Status(status)) => {
            let code = match (status, is_dynamodb(&target)) {
                (503, _) => "ServiceUnavailable",
                (_, true) => "InternalServerError",
                (_, false) => "InternalFailure",
            };
            Ok(error_response(&target, status, code))
        }
        Some(Fault::Error { status, code }) => Ok(error_response(&target, status, &code)),
        Some(Fault::Stall(duration)) => {
            let response = forward(request, &state).await?;
            // Read the whole answer first, so it is complete when it is finally sent.
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Closed::Upstream(e.to_string()))?
                .to_bytes();
            tokio::time::sleep(duration).await;
            Ok(Response::from_parts(parts, full(body)))
        }
        Some(Fault::Delay(duration)) => {
            tokio::time::sleep(duration).await;
            forward(request, &state).await
        }
        Some(Fault::DropResponse) => {
            let response = forward(request, &state).await?;
            let _ = response.into_body().collect().await;
            Err(Closed::Injected)
        }
        Some(Fault::Reset) => Err(Closed::Injected),
    }
}

fn is_dynamodb(target: &str) -> bool {
    target.starts_with("DynamoDB")
}

/// An error answer in the awsJson shape of the service the target names.
fn error_response(target: &str, status: u16, code: &str) -> Response<ProxyBody> {
    let (content_type, error_type) = if is_dynamodb(target) {
        let namespace = match code {
            "ThrottlingException" | "ServiceUnavailable" => "com.amazon.coral.availability",
            _ => "com.amazonaws.dynamodb.v20120810",
        };
        ("application/x-amz-json-1.0", format!("{namespace}#{code}"))
    } else {
        ("application/x-amz-json-1.1", code.to_owned())
    };
    let body = format!(r#"{{"__type":"{error_type}","message":"injected by the fault proxy"}}"#);
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(code) {
        headers.insert("x-amzn-errortype", value);
    }
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends the request to the server on a new connection and streams its answer back
/// (event streams such as SubscribeToShard included).
async fn forward(request: Request<Incoming>, state: &State) -> Result<Response<ProxyBody>, Closed> {
    State::lock(&state.stats).forwarded += 1;
    let upstream = TcpStream::connect(state.upstream)
        .await
        .map_err(|e| Closed::Upstream(e.to_string()))?;
    let _ = upstream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| Closed::Upstream(e.to_string()))?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Closed::Upstream(e.to_string()))?;
    Ok(response.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_by_operation() {
        let rule = FaultRule::new(Fault::Throttle).target("PutRecords");
        let now = Instant::now();
        assert!(rule.matches("Kinesis_20131202.PutRecords", now));
        assert!(rule.matches("PutRecords", now));
        assert!(!rule.matches("Kinesis_20131202.PutRecord", now));
        assert!(!rule.matches("Kinesis_20131202.XPutRecords", now));
        assert!(FaultRule::new(Fault::Reset).matches("anything", now));
    }

    #[test]
    fn windows_limit_a_rule() {
        let now = Instant::now();
        let later = FaultRule::new(Fault::Reset)
            .window(now + Duration::from_secs(5), now + Duration::from_secs(6));
        assert!(!later.matches("x", now));
        assert!(later.matches("x", now + Duration::from_millis(5500)));
        assert!(!later.matches("x", now + Duration::from_secs(6)));
    }

    #[test]
    fn errors_have_the_services_shape() {
        let dynamodb = error_response("DynamoDB_20120810.UpdateItem", 400, "ThrottlingException");
        assert_eq!(
            dynamodb.headers()[hyper::header::CONTENT_TYPE],
            "application/x-amz-json-1.0"
        );
        let kinesis = error_response(
            "Kinesis_20131202.PutRecords",
            400,
            "ProvisionedThroughputExceededException",
        );
        assert_eq!(
            kinesis.headers()[hyper::header::CONTENT_TYPE],
            "application/x-amz-json-1.1"
        );
        assert_eq!(
            parse_endpoint("http://localhost:4567").ok(),
            "127.0.0.1:4567".parse().ok()
        );
        assert!(parse_endpoint("http://nowhere").is_err());
    }
}
