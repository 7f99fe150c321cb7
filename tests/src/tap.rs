//! An SDK HTTP client that lets a test see (and adjust) every request before it goes to
//! the emulators: what `iam_policies` records and what `producer_protocol` rewrites.

use std::sync::Arc;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// What a [`Tap`] does to each request.
pub type TapFn = dyn Fn(&mut HttpRequest) + Send + Sync;

/// A plain-HTTP client (the emulators) that calls a function on every request first.
#[derive(Clone)]
pub struct Tap(Arc<TapFn>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

impl Tap {
    /// A client calling `tap` on every request.
    pub fn new(tap: impl Fn(&mut HttpRequest) + Send + Sync + 'static) -> Self {
        Tap(Arc::new(tap))
    }
}

#[derive(Debug)]
struct TapConnector {
    inner: SharedHttpConnector,
    tap: Tap,
}

impl HttpClient for Tap {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let inner = aws_smithy_http_client::Builder::new()
            .build_http()
            .http_connector(settings, components);
        SharedHttpConnector::new(TapConnector {
            inner,
            tap: self.clone(),
        })
    }
}

impl HttpConnector for TapConnector {
    fn call(&self, mut request: HttpRequest) -> HttpConnectorFuture {
        (self.tap.0)(&mut request);
        self.inner.call(request)
    }
}
