//! `kinesis multilang`: runs KCL MultiLang applications (AWS's amazon-kclpy for Python,
//! aws-kcl for Node.js, or any program speaking the protocol) on this consumer, in place of
//! the Java MultiLangDaemon: same properties file, same child processes, no JVM.
//!
//! A worker of the application's group (the lease table is shared with other `kinesis
//! multilang` or `kinesis consume` workers, and with Java workers: the table's format is
//! the Java KCL's). For each shard lease it starts the properties' `executableName` (split
//! on spaces and run without a shell, as the Java daemon runs it) and talks to it over its
//! standard input and output ([`protocol`], [`child`]). The child's standard error goes to
//! the log, one line at a time with the shard id.
//!
//! When a child fails, the Java daemon exits (`System.exit(1)`, or a JVM halt on a
//! timeout) and every shard of the worker moves to other workers or waits for a restart.
//! Here only that shard stops: its child is killed, and the shard starts again from its
//! last checkpoint with a new child after a backoff (`taskBackoffTimeMillis`, default 1 s,
//! doubling up to 5 minutes, reset once a checkpoint is made); the records after the last
//! checkpoint are delivered again (at least once). A child fails when it:
//!
//! - exits or crashes (its standard output closes) before answering a message;
//! - sends no message within `timeoutInSeconds` (unset: it may take forever, as in Java);
//! - answers a message with the `status` of another.
//!
//! Lines of standard output that are not messages (a stray `print`, half a line, a JSON
//! object of another kind) are skipped and logged, as the Java daemon skips them; blank
//! lines are skipped silently. An exception raised in a Python processor is caught by
//! amazon-kclpy itself: it prints the traceback (to our log) and answers the message as
//! done, so the batch counts as processed, as under the Java daemon; the checkpoints the
//! processor made are all that is kept.
//!
//! Ctrl-C or SIGTERM stops gracefully: each child gets `shutdownRequested` (its last
//! chance to checkpoint), its standard input is closed, and the leases are handed over or
//! released as `kinesis consume` does; a second signal aborts at once.

pub mod child;
pub mod properties;
pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;
use kinesis_consumer::{InitialPosition, Scheduler};

use crate::consume::From;
use crate::{parse_duration, Error};
use child::{ChildSession, ChildSettings, ProtocolVersion};
use properties::{DaemonProperties, Retrieval};

/// Runs a KCL MultiLang application from the Java MultiLangDaemon's properties file.
#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// The Java MultiLangDaemon's properties file (executableName, streamName or streamArn,
    /// applicationName, ...). The flags below override it.
    #[arg(long, value_name = "FILE")]
    pub properties: PathBuf,
    /// The program run for each shard, split on spaces (overrides executableName).
    #[arg(long, value_name = "COMMAND")]
    pub executable: Option<String>,
    /// Stream name or ARN (overrides streamName and streamArn).
    #[arg(long)]
    pub stream: Option<String>,
    /// The application name: the lease table and the workers' group (overrides
    /// applicationName).
    #[arg(long)]
    pub app: Option<String>,
    /// This worker's id (overrides workerId).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Where shards without a checkpoint start: `trim-horizon`, `latest`,
    /// `at-timestamp=<RFC 3339 or epoch seconds>` (overrides initialPositionInStream;
    /// default LATEST, as the Java daemon's).
    #[arg(long, value_name = "POSITION", value_parser = From::parse)]
    pub from: Option<From>,
    /// Lease failover time (overrides failoverTimeMillis).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub failover: Option<Duration>,
    /// Pause between GetRecords calls per shard (overrides idleTimeBetweenReadsInMillis).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_between_reads: Option<Duration>,
    /// Most records per GetRecords call (overrides maxRecords).
    #[arg(long, value_name = "N")]
    pub max_records: Option<i32>,
    /// How long to wait for each message of a child before killing it and restarting its
    /// shard (overrides timeoutInSeconds; default: no limit).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The end-of-lease messages children understand: 3 (`leaseLost`, `shardEnded`; the
    /// Java KCL 2 and 3 daemons) or 2 (`shutdown` with a reason; the Java KCL 1 daemon).
    #[arg(long, value_name = "VERSION", value_parser = ["2", "3"], default_value = "3")]
    pub protocol_version: String,
    /// Serve the consumer's metrics in the Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// How long a child may take to exit once its standard input was closed after its last
/// message, when `timeoutInSeconds` is not set.
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// Reads and checks the properties file, with the flags applied.
pub fn load(args: &Args) -> Result<DaemonProperties, Error> {
    let file = args.properties.display().to_string();
    let text = std::fs::read_to_string(&args.properties)
        .map_err(|error| format!("cannot read the properties file {file}: {error}"))?;
    let mut properties = DaemonProperties::from_entries(&file, &properties::parse(&text))?;
    if let Some(executable) = &args.executable {
        properties.executable = executable
            .split(' ')
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(stream) = &args.stream {
        properties.stream = Some(stream.clone());
    }
    if let Some(app) = &args.app {
        properties.application_name = Some(app.clone());
    }
    if let Some(worker_id) = &args.worker_id {
        properties.worker_id = Some(worker_id.clone());
    }
    if let Some(from) = &args.from {
        properties.initial_position = Some(match from {
            From::TrimHorizon => properties::InitialPosition::TrimHorizon,
            From::Latest => properties::InitialPosition::Latest,
            From::AtTimestamp(time) => properties::InitialPosition::AtTimestamp(*time),
            From::Sequence(_) => {
                return Err("--from sequence=... is for `consume --shard` only".into())
            }
        });
    }
    if let Some(failover) = args.failover {
        properties.failover_time = Some(failover);
    }
    if let Some(idle) = args.idle_between_reads {
        properties.idle_time_between_reads = Some(idle);
    }
    if let Some(max) = args.max_records {
        properties.max_records = Some(max);
    }
    if let Some(timeout) = args.timeout {
        properties.timeout = Some(timeout);
    }
    if properties.executable.is_empty() {
        return Err(format!("{file}: executableName is required (or --executable)").into());
    }
    if properties.stream.is_none() {
        return Err(format!("{file}: streamName or streamArn is required (or --stream)").into());
    }
    if properties.application_name.is_none() {
        return Err(format!("{file}: applicationName is required (or --app)").into());
    }
    Ok(properties)
}

/// Whether `program` can be started: a path that exists, or a name found on `PATH`.
fn find_program(program: &str) -> bool {
    if program.contains(std::path::MAIN_SEPARATOR) || program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Runs `kinesis multilang` until it stops (see the module documentation).
pub async fn run(args: Args) -> Result<(), Error> {
    let properties = load(&args)?;
    let file = args.properties.display().to_string();
    if !properties.unknown.is_empty() {
        tracing::warn!(
            "{file}: unknown keys, ignored: {}",
            properties.unknown.join(", ")
        );
    }
    if !properties.without_effect.is_empty() {
        tracing::info!(
            "{file}: keys of the Java daemon without effect here: {}",
            properties.without_effect.join(", ")
        );
    }
    let program = properties.executable.first().map_or("", String::as_str);
    if !find_program(program) {
        return Err(format!(
            "{file}: executableName: cannot find the program {program:?} (a path, or a name on PATH)"
        )
        .into());
    }
    crate::metrics::serve(args.metrics_listen)?;
    let config = crate::aws_config_with(properties.region.clone()).await?;
    let explicit_endpoint = crate::aws_options().endpoint_url.is_some();
    let stream = properties.stream.clone().unwrap_or_default();
    let application = properties.application_name.clone().unwrap_or_default();
    let mut builder = Scheduler::builder(&config)
        .stream(&stream)
        .application_name(&application)
        .initial_position(match properties.initial_position {
            Some(properties::InitialPosition::TrimHorizon) => InitialPosition::TrimHorizon,
            Some(properties::InitialPosition::AtTimestamp(time)) => {
                InitialPosition::AtTimestamp(time)
            }
            Some(properties::InitialPosition::Latest) | None => InitialPosition::Latest,
        });
    // The file's endpoints, unless --endpoint-url names one for every service.
    if let (Some(endpoint), false) = (&properties.kinesis_endpoint, explicit_endpoint) {
        let kinesis = aws_sdk_kinesis::config::Builder::from(&config)
            .endpoint_url(endpoint)
            .build();
        builder = builder.kinesis_client(aws_sdk_kinesis::Client::from_conf(kinesis));
    }
    if let (Some(endpoint), false) = (&properties.dynamodb_endpoint, explicit_endpoint) {
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(endpoint)
            .build();
        builder = builder.dynamodb_client(aws_sdk_dynamodb::Client::from_conf(dynamodb));
    }
    if let Some(id) = &properties.worker_id {
        builder = builder.worker_id(id);
    }
    if let Some(table) = &properties.table_name {
        let mut lease_table = kinesis_consumer::LeaseTableConfig::default();
        lease_table.table_name = Some(table.clone());
        builder = builder.lease_table(lease_table);
    }
    if let Some(failover) = properties.failover_time {
        builder = builder.failover_time(failover);
    }
    if let Some(max) = properties.max_leases_for_worker {
        builder = builder.max_leases_per_worker(max);
    }
    if let Some(max) = properties.max_leases_to_steal_at_one_time {
        builder = builder.max_leases_to_steal_at_once(max);
    }
    if let Some(interval) = properties.shard_sync_interval {
        builder = builder.shard_sync_interval(interval);
    }
    if let Some(interval) = properties.parent_shard_poll_interval {
        builder = builder.parent_shard_poll_interval(interval);
    }
    if let Some(call) = properties.call_process_records_even_for_empty_list {
        builder = builder.call_process_records_even_for_empty_list(call);
    }
    if let Some(backoff) = properties.task_backoff_time {
        builder = builder.failure_backoff(backoff, backoff.max(Duration::from_secs(300)));
    }
    if let Some(grace) = properties.shutdown_grace {
        builder = builder.shutdown_timeout(grace);
    }
    match (
        properties.graceful_lease_handoff_enabled,
        properties.graceful_lease_handoff_timeout,
    ) {
        (Some(false), _) => builder = builder.graceful_lease_handoff_timeout(None),
        (_, Some(timeout)) => builder = builder.graceful_lease_handoff_timeout(Some(timeout)),
        _ => {}
    }
    builder = match properties.retrieval {
        Some(Retrieval::FanOut) => builder.fan_out(),
        Some(Retrieval::Polling) | None => {
            if let Some(max) = properties.max_records {
                builder = builder.max_records(max);
            }
            if let Some(idle) = properties.idle_time_between_reads {
                builder = builder.idle_time_between_reads(idle);
            }
            builder
        }
    };
    let settings = Arc::new(ChildSettings {
        command: properties.executable.clone(),
        timeout: properties.timeout,
        warn_after: properties.warn_after,
        exit_wait: properties.timeout.unwrap_or(EXIT_WAIT),
        protocol: if args.protocol_version == "2" {
            ProtocolVersion::V2
        } else {
            ProtocolVersion::V3
        },
    });
    let scheduler = builder
        .processor_factory(move || ChildSession::new(settings.clone()))
        .build()
        .await?;
    tracing::info!(
        worker = scheduler.worker_id(),
        stream = %stream,
        application = %application,
        executable = ?properties.executable,
        processing_language = properties.processing_language.as_deref().unwrap_or("(not given)"),
        "multilang daemon running"
    );
    crate::consume::stop_on_signal(&scheduler.shutdown_handle());
    scheduler.run().await?;
    Ok(())
}
