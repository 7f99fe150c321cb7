#![forbid(unsafe_code)]
//! Local Kinesis Data Streams and DynamoDB endpoints for tests and examples.
//!
//! [`Emulator::start`] gives a program both endpoints:
//!
//! - When the standard AWS configuration names an endpoint (`AWS_ENDPOINT_URL`, or
//!   `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB`), for example LocalStack in
//!   Docker, the emulators of `localstack/start`, or nothing at all for a real account,
//!   that configuration is used as it is.
//! - Otherwise it installs the bundled emulators on first use (`npm ci` against the
//!   lockfile in `localstack/`): kinesis-mock (npm `kinesis-local`) and dynalite, starts
//!   them on free loopback ports, waits until they answer, and stops them when the
//!   [`Emulator`] is dropped (or when the process dies).
//!
//! [`Emulator::sdk_config`] returns an [`SdkConfig`] that points the AWS SDK clients at
//! those endpoints through the SDK's own per-service endpoint configuration, exactly as
//! `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB` would.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kinesis_emulator::EmulatorError> {
//! let emulator = kinesis_emulator::Emulator::start().await?;
//! let config = emulator.sdk_config().await;
//! let kinesis = aws_sdk_kinesis::Client::new(&config);
//! # let _ = kinesis; Ok(()) }
//! ```

#[cfg(feature = "fault-proxy")]
pub mod fault_proxy;
mod install;
mod process;
mod service_config;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use tokio::sync::OnceCell;

pub use process::EmulatorProcess;
pub use stream::{create_stream, wait_stream_active, StreamSetupError};

/// Installs the bundled emulators if they are not installed yet (`npm ci` against the
/// lockfile, once, under a file lock) and returns the folder holding them and the
/// `start` / `stop` scripts.
pub async fn install() -> Result<PathBuf, EmulatorError> {
    install::ensure_installed().await?;
    Ok(install::emulator_dir())
}

/// How long an emulator may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the emulators could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// `node` is not on the PATH.
    #[error("node not found: install Node.js 18+ (the local Kinesis and DynamoDB emulators run on it), or set AWS_ENDPOINT_URL to use another endpoint")]
    NodeNotFound,
    /// `node` is older than the emulators need.
    #[error("node {0} is too old: install Node.js 18+")]
    NodeTooOld(String),
    /// `npm` is not on the PATH.
    #[error("npm not found: install npm (it comes with Node.js 18+)")]
    NpmNotFound,
    /// `npm ci` failed.
    #[error("installing the emulators with `npm ci` in {dir} failed: {output}")]
    Install {
        /// The folder npm ran in.
        dir: PathBuf,
        /// What npm printed.
        output: String,
    },
    /// An emulator did not answer in time or exited.
    #[error("the {service} emulator did not start on port {port}: {reason}; its log: {log}")]
    NotAnswering {
        /// "kinesis" or "dynamodb".
        service: &'static str,
        /// The port it was told to listen on.
        port: u16,
        /// What went wrong.
        reason: String,
        /// The emulator's output so far.
        log: String,
    },
    /// An I/O error while preparing or starting the emulators.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl EmulatorError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| EmulatorError::Io { context, source }
    }
}

/// A Kinesis and a DynamoDB endpoint: local emulators started by this value, or those
/// of the standard AWS configuration.
#[derive(Debug)]
pub struct Emulator {
    kinesis: Option<EmulatorProcess>,
    dynamodb: Option<EmulatorProcess>,
}

static SHARED: OnceCell<Emulator> = OnceCell::const_new();

impl Emulator {
    /// Starts what the standard AWS configuration does not already provide.
    pub async fn start() -> Result<Self, EmulatorError> {
        let kinesis_needed = !endpoint_configured("AWS_ENDPOINT_URL_KINESIS");
        let dynamodb_needed = !endpoint_configured("AWS_ENDPOINT_URL_DYNAMODB");
        if kinesis_needed || dynamodb_needed {
            install::ensure_installed().await?;
        }
        let (kinesis, dynamodb) = tokio::try_join!(
            start_if(kinesis_needed, "kinesis"),
            start_if(dynamodb_needed, "dynamodb"),
        )?;
        Ok(Emulator { kinesis, dynamodb })
    }

    /// One emulator for the whole process, started on first call and never stopped
    /// before the process exits (the emulators then exit by themselves). Convenient for
    /// test binaries: each test uses its own stream and lease table names.
    pub async fn shared() -> Result<&'static Emulator, EmulatorError> {
        SHARED.get_or_try_init(Emulator::start).await
    }

    /// The Kinesis endpoint this value started, if it started one.
    pub fn kinesis_endpoint(&self) -> Option<String> {
        self.kinesis.as_ref().map(EmulatorProcess::endpoint)
    }

    /// The DynamoDB endpoint this value started, if it started one.
    pub fn dynamodb_endpoint(&self) -> Option<String> {
        self.dynamodb.as_ref().map(EmulatorProcess::endpoint)
    }

    /// Whether at least one endpoint is a local emulator started by this value.
    pub fn is_local(&self) -> bool {
        self.kinesis.is_some() || self.dynamodb.is_some()
    }

    /// AWS SDK configuration for these endpoints.
    ///
    /// Loaded from the standard configuration chain (environment, profile, credentials
    /// chain). For local emulators, the per-service endpoints are set as
    /// `AWS_ENDPOINT_URL_<SERVICE>` would set them, and where the environment names no
    /// region or credentials, `us-east-1` and dummy credentials are used.
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if self.is_local() {
            if !env_set("AWS_REGION") && !env_set("AWS_DEFAULT_REGION") {
                loader = loader.region(aws_config::Region::new("us-east-1"));
            }
            if !env_set("AWS_ACCESS_KEY_ID") {
                loader = loader.credentials_provider(aws_credential_types::Credentials::from_keys(
                    "test", "test", None,
                ));
            }
        }
        let config = loader.load().await;
        if !self.is_local() {
            return config;
        }
        let endpoints = service_config::EmulatorEndpoints {
            kinesis: self.kinesis_endpoint(),
            dynamodb: self.dynamodb_endpoint(),
            fallback: config.service_config().map(|_| config.clone()),
        };
        config.into_builder().service_config(endpoints).build()
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether the standard configuration names an endpoint for this service.
fn endpoint_configured(service_variable: &str) -> bool {
    env_set("AWS_ENDPOINT_URL") || env_set(service_variable)
}

async fn start_if(
    needed: bool,
    service: &'static str,
) -> Result<Option<EmulatorProcess>, EmulatorError> {
    if needed {
        EmulatorProcess::start(service, START_TIMEOUT)
            .await
            .map(Some)
    } else {
        Ok(None)
    }
}
