//! Fault injection at the HTTP layer, in front of the real emulators: an SDK HTTP client
//! that, per operation (`GetRecords`, `SubscribeToShard`, `UpdateItem`, ...), for a
//! fraction of calls, a number of calls or a time window, delays a call, hangs it,
//! applies it and loses the answer, answers throttling or a 5xx, or lets the response
//! start and then stalls its body (a silent event stream).
//!
//! The lease store has its own wrapper, `kinesis_consumer::test_util::FaultyLeaseStore`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// What an injected fault does to an HTTP call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFault {
    /// Waits this long, then sends the request.
    Delay(Duration),
    /// Never answers.
    Hang,
    /// Sends the request, then loses the answer (a connector timeout).
    LoseAnswer,
    /// Answers HTTP 400 `ProvisionedThroughputExceededException` without sending.
    Throttle,
    /// Answers HTTP 400 `LimitExceededException` without sending.
    LimitExceeded,
    /// Answers HTTP 500 `InternalFailure` without sending.
    ServerError,
    /// Sends the request and passes the response on, but its body stops after this long
    /// (nothing more arrives, the connection stays open): a stalled event stream.
    StallBodyAfter(Duration),
}

/// When an HTTP fault applies.
#[derive(Clone, Debug)]
pub struct HttpFaultRule {
    /// Operation names (the part of `x-amz-target` after the dot); empty: every one.
    pub operations: Vec<String>,
    /// The fault.
    pub fault: HttpFault,
    /// Fraction of matching calls hit.
    pub probability: f64,
    /// At most this many calls.
    pub remaining: Option<u64>,
    /// Only from this time on.
    pub from: Option<Instant>,
    /// Only before this time.
    pub until: Option<Instant>,
}

impl HttpFaultRule {
    /// `fault` on every call of `operations` (empty: every operation).
    pub fn new(operations: &[&str], fault: HttpFault) -> Self {
        HttpFaultRule {
            operations: operations.iter().map(|o| (*o).to_owned()).collect(),
            fault,
            probability: 1.0,
            remaining: None,
            from: None,
            until: None,
        }
    }

    /// Only a fraction of the matching calls.
    pub fn probability(mut self, probability: f64) -> Self {
        self.probability = probability.clamp(0.0, 1.0);
        self
    }

    /// Only the next `n` matching calls.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Only during `[from, until)`.
    pub fn window(mut self, from: Instant, until: Instant) -> Self {
        self.from = Some(from);
        self.until = Some(until);
        self
    }
}

#[derive(Debug)]
struct State {
    rules: Vec<HttpFaultRule>,
    rng: StdRng,
    calls: BTreeMap<String, u64>,
    injected: BTreeMap<String, u64>,
}

/// An SDK HTTP client that injects [`HttpFault`]s; give it to a client with
/// [`kinesis_client`](Self::kinesis_client) or [`dynamodb_client`](Self::dynamodb_client).
#[derive(Clone, Debug)]
pub struct FaultyHttpClient {
    inner: SharedHttpClient,
    state: Arc<Mutex<State>>,
}

impl Default for FaultyHttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyHttpClient {
    /// A plain-HTTP client (the emulators) with no fault yet.
    pub fn new() -> Self {
        FaultyHttpClient {
            inner: aws_smithy_http_client::Builder::new().build_http(),
            state: Arc::new(Mutex::new(State {
                rules: Vec::new(),
                rng: StdRng::seed_from_u64(11),
                calls: BTreeMap::new(),
                injected: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a rule; the first matching rule decides a call's fault.
    pub fn inject(&self, rule: HttpFaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// Calls per operation so far.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.lock().calls.clone()
    }

    /// Faulted calls per operation so far.
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.lock().injected.clone()
    }

    /// A Kinesis client of `config` going through this HTTP client.
    pub fn kinesis_client(&self, config: &SdkConfig) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(config)
                .http_client(self.clone())
                .build(),
        )
    }

    /// A DynamoDB client of `config` going through this HTTP client.
    pub fn dynamodb_client(&self, config: &SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(config)
                .http_client(self.clone())
                .build(),
        )
    }

    fn fault_for(&self, operation: &str) -> Option<HttpFault> {
        let now = Instant::now();
        let mut state = self.lock();
        *state.calls.entry(operation.to_owned()).or_default() += 1;
        let State { rules, rng, .. } = &mut *state;
        let mut hit = None;
        for rule in rules.iter_mut() {
            let matches =
                rule.operations.is_empty() || rule.operations.iter().any(|o| o == operation);
            let in_window = rule.from.is_none_or(|from| now >= from)
                && rule.until.is_none_or(|until| now < until);
            if !matches || !in_window || rule.remaining == Some(0) {
                continue;
            }
            if !rng.random_bool(rule.probability) {
                continue;
            }
            if let Some(n) = &mut rule.remaining {
                *n -= 1;
            }
            hit = Some(rule.fault);
            break;
        }
        if hit.is_some() {
            *state.injected.entry(operation.to_owned()).or_default() += 1;
        }
        hit
    }
}

impl HttpClient for FaultyHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            client: self.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    client: FaultyHttpClient,
}

fn error_response(
    status: u16,
    code: &str,
) -> aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    let body = format!(r#"{{"__type":"{code}","message":"injected fault"}}"#);
    // Both statuses used here are valid.
    let status = StatusCode::try_from(status).expect("a valid HTTP status");
    let mut response = Response::new(status, SdkBody::from(body));
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
        .headers_mut()
        .insert("x-amzn-errortype", code.to_owned());
    response
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or_default()
            .to_owned();
        let fault = self.client.fault_for(&operation);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            match fault {
                None => inner.call(request).await,
                Some(HttpFault::Delay(delay)) => {
                    tokio::time::sleep(delay).await;
                    inner.call(request).await
                }
                Some(HttpFault::Hang) => std::future::pending().await,
                Some(HttpFault::LoseAnswer) => {
                    let _ = inner.call(request).await;
                    Err(ConnectorError::timeout(
                        format!("injected: the answer to {operation} was lost").into(),
                    ))
                }
                Some(HttpFault::Throttle) => Ok(error_response(
                    400,
                    "ProvisionedThroughputExceededException",
                )),
                Some(HttpFault::LimitExceeded) => Ok(error_response(400, "LimitExceededException")),
                Some(HttpFault::ServerError) => Ok(error_response(500, "InternalFailure")),
                Some(HttpFault::StallBodyAfter(after)) => {
                    let mut response = inner.call(request).await?;
                    let body = std::mem::replace(response.body_mut(), SdkBody::taken());
                    *response.body_mut() = SdkBody::from_body_1_x(StallingBody {
                        inner: body,
                        stall_at: Instant::now() + after,
                    });
                    Ok(response)
                }
            }
        })
    }
}

/// Passes a body's frames on until `stall_at`, then never yields again.
struct StallingBody {
    inner: SdkBody,
    stall_at: Instant,
}

impl http_body::Body for StallingBody {
    type Data = bytes::Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if Instant::now() >= self.stall_at {
            return Poll::Pending;
        }
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if Instant::now() >= self.stall_at {
            // Swallow what arrives after the stall.
            return Poll::Pending;
        }
        frame
    }
}
