//! What more than one test file of `kinesis` needs.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use kinesis_emulator::fault_proxy::FaultProxy;
use kinesis_emulator::Emulator;

/// `kinesis <subcommand...>` with the emulators' endpoints in its environment.
pub async fn kinesis(subcommand: &[&str]) -> Command {
    let emulator = Emulator::shared().await.unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kinesis"));
    command.args(subcommand);
    if let Some(endpoint) = emulator.kinesis_endpoint() {
        command.env("AWS_ENDPOINT_URL_KINESIS", endpoint);
    }
    if let Some(endpoint) = emulator.dynamodb_endpoint() {
        command.env("AWS_ENDPOINT_URL_DYNAMODB", endpoint);
    }
    if emulator.is_local() {
        command
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test");
    }
    command
}

/// `prefix` made unique to this process and moment (stream and application names).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The IAM actions documented per subcommand in the README's `iam-actions` table.
pub fn documented_actions() -> HashMap<String, BTreeSet<String>> {
    let readme = include_str!("../../README.md");
    let table = readme.split_once("<!-- iam-actions -->").unwrap().1;
    table
        .lines()
        .skip(3)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let actions = cells[2]
                .split('`')
                .filter(|part| part.contains(':'))
                .map(str::to_owned)
                .collect();
            (cells[1].trim_matches('`').to_owned(), actions)
        })
        .collect()
}

/// Proxies that record every call, in front of the emulators' `kinesis` and `dynamodb`
/// endpoints.
pub struct RecordingProxies {
    pub kinesis: FaultProxy,
    pub dynamodb: FaultProxy,
}

impl RecordingProxies {
    /// `None` with endpoints of the environment's own: nothing to put a proxy in front of.
    pub async fn start() -> Option<RecordingProxies> {
        let emulator = Emulator::shared().await.unwrap();
        let kinesis = emulator.kinesis_endpoint()?;
        let dynamodb = emulator.dynamodb_endpoint()?;
        Some(RecordingProxies {
            kinesis: FaultProxy::start(&kinesis, 1).await.unwrap(),
            dynamodb: FaultProxy::start(&dynamodb, 2).await.unwrap(),
        })
    }

    /// The IAM action (`service:Operation`) of every call seen so far, and how many.
    pub fn actions(&self) -> HashMap<String, u64> {
        let mut actions = HashMap::new();
        for (service, proxy) in [("kinesis", &self.kinesis), ("dynamodb", &self.dynamodb)] {
            for (operation, calls) in proxy.stats().calls {
                actions.insert(format!("{service}:{operation}"), calls);
            }
        }
        actions
    }
}
