//! The Java MultiLangDaemon's properties file: its syntax (`java.util.Properties`) and the
//! keys `kinesis multilang` understands.

use std::time::{Duration, SystemTime};

/// Parses the text of a `.properties` file as `java.util.Properties::load` does: `key =
/// value`, `key: value` or `key value`; `#` and `!` comment lines; a line ending in an odd
/// number of backslashes continues on the next; `\t`, `\n`, `\r`, `\f`, `\uXXXX` and `\x`
/// escapes. Values are trimmed at both ends (Java keeps trailing blanks, which only
/// matter to no key here). Returns the entries in file order with their line numbers; a
/// key given twice keeps its last value, as in Java.
pub fn parse(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let first = line.trim_start();
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        let mut logical = String::new();
        let mut current = first.to_owned();
        loop {
            let trailing = current.chars().rev().take_while(|c| *c == '\\').count();
            if trailing % 2 == 1 {
                current.pop();
                logical.push_str(&current);
                match lines.next() {
                    Some((_, next)) => current = next.trim_start().to_owned(),
                    None => break,
                }
            } else {
                logical.push_str(&current);
                break;
            }
        }
        let (key, value) = split_key(&logical);
        let key = unescape(&key);
        let value = unescape(value.trim_start()).trim().to_owned();
        entries.retain(|entry| entry.key != key);
        entries.push(Entry {
            line: index + 1,
            key,
            value,
        });
    }
    entries
}

/// One `key = value` of a properties file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The line it starts on (1-based).
    pub line: usize,
    /// The key, unescaped.
    pub key: String,
    /// The value, unescaped and trimmed.
    pub value: String,
}

/// Splits a logical line at the first unescaped `=`, `:` or blank (blanks around the
/// separator belong to it).
fn split_key(line: &str) -> (String, &str) {
    let mut key = String::new();
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        if escaped {
            key.push('\\');
            key.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => return (key, &line[at + 1..]),
            c if c.is_whitespace() => {
                let rest = line[at..].trim_start();
                let rest = rest
                    .strip_prefix('=')
                    .or_else(|| rest.strip_prefix(':'))
                    .unwrap_or(rest);
                return (key, rest);
            }
            c => key.push(c),
        }
    }
    (key, "")
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) if hex.len() == 4 => out.push(decoded),
                    _ => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Where a shard without a checkpoint starts (`initialPositionInStream`,
/// `initialPositionInStreamExtended`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// `TRIM_HORIZON`: the oldest record.
    TrimHorizon,
    /// `LATEST` (the Java daemon's default): records written from now on.
    Latest,
    /// `AT_TIMESTAMP`, given by `initialPositionInStreamExtended` in epoch seconds.
    AtTimestamp(SystemTime),
}

/// How records are read (`retrievalMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retrieval {
    /// `POLLING` or `DEFAULT`: GetRecords.
    Polling,
    /// `FANOUT`: enhanced fan-out.
    FanOut,
}

/// What `kinesis multilang` takes from the properties file. Every field but the executable,
/// the stream and the application is optional: unset, the consumer's default applies.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DaemonProperties {
    /// `executableName`, split on spaces as the Java daemon splits it (no shell, no quotes).
    pub executable: Vec<String>,
    /// `streamArn` (it wins, as in Java) or `streamName`.
    pub stream: Option<String>,
    /// `applicationName`: the lease table's name and the workers' group.
    pub application_name: Option<String>,
    /// `tableName`: the lease table when not named after the application.
    pub table_name: Option<String>,
    /// `workerId`.
    pub worker_id: Option<String>,
    /// `initialPositionInStream` / `initialPositionInStreamExtended`.
    pub initial_position: Option<InitialPosition>,
    /// `regionName`.
    pub region: Option<String>,
    /// `kinesisEndpoint`.
    pub kinesis_endpoint: Option<String>,
    /// `dynamoDBEndpoint`.
    pub dynamodb_endpoint: Option<String>,
    /// `maxRecords`: most records per GetRecords call.
    pub max_records: Option<i32>,
    /// `idleTimeBetweenReadsInMillis`.
    pub idle_time_between_reads: Option<Duration>,
    /// `failoverTimeMillis`.
    pub failover_time: Option<Duration>,
    /// `processingLanguage` (logged, as the Java daemon adds it to its user agent).
    pub processing_language: Option<String>,
    /// `timeoutInSeconds`: how long to wait for each message from a child.
    pub timeout: Option<Duration>,
    /// `logWarningForTaskAfterMillis`: when to warn that a child has not answered yet.
    pub warn_after: Option<Duration>,
    /// `shutdownGraceMillis`: how long a graceful stop may take.
    pub shutdown_grace: Option<Duration>,
    /// `maxLeasesForWorker`.
    pub max_leases_for_worker: Option<usize>,
    /// `maxLeasesToStealAtOneTime`.
    pub max_leases_to_steal_at_one_time: Option<usize>,
    /// `shardSyncIntervalMillis`.
    pub shard_sync_interval: Option<Duration>,
    /// `parentShardPollIntervalMillis`.
    pub parent_shard_poll_interval: Option<Duration>,
    /// `callProcessRecordsEvenForEmptyRecordList`.
    pub call_process_records_even_for_empty_list: Option<bool>,
    /// `taskBackoffTimeMillis`: the first pause before a failed shard is retried.
    pub task_backoff_time: Option<Duration>,
    /// `gracefulLeaseHandoffTimeoutMillis`.
    pub graceful_lease_handoff_timeout: Option<Duration>,
    /// `isGracefulLeaseHandoffEnabled`.
    pub graceful_lease_handoff_enabled: Option<bool>,
    /// `retrievalMode`.
    pub retrieval: Option<Retrieval>,
    /// `AWSCredentialsProvider` (any spelling of the key, as in Java).
    pub credentials_provider: Option<String>,
    /// Keys the Java daemon knows that have no effect here (metrics, thread pools, ...).
    pub without_effect: Vec<String>,
    /// Keys neither this command nor the Java daemon knows.
    pub unknown: Vec<String>,
}

/// Keys of the Java daemon that configure what this consumer does its own way, or not at
/// all: accepted, listed once in the log.
const WITHOUT_EFFECT: &[&str] = &[
    "maxActiveThreads",
    "metricsLevel",
    "metricsEnabledDimensions",
    "metricsBufferTimeMillis",
    "metricsMaxQueueSize",
    "cleanupLeasesUponShardCompletion",
    "ignoreUnexpectedChildShards",
    "maxLeaseRenewalThreads",
    "leaseTableScanTotalSegments",
    "listShardsBackoffTimeInMillis",
    "maxListShardsRetryAttempts",
    "skipShardSyncAtWorkerInitializationIfLeasesExist",
    "schedulerInitializationBackoffTimeMillis",
    "shardPrioritization",
    "validateSequenceNumberBeforeCheckpointing",
    "initialLeaseTableReadCapacity",
    "initialLeaseTableWriteCapacity",
    "leaseAssignmentIntervalMillis",
    "enablePriorityLeaseAssignment",
    "leaseTableDeletionProtectionEnabled",
    "leaseTablePitrEnabled",
    "clientVersionConfig",
    "migrateAllEntitiesToLeaseTable",
    "tableMigrationCompleteBakeTimeSeconds",
    "retryGetRecordsInSeconds",
    "maxGetRecordsThreadPool",
    "millisBehindLatestThresholdForReducedTps",
    "cloudWatchEndpoint",
    "AWSCredentialsProviderDynamoDB",
    "AWSCredentialsProviderCloudWatch",
    "userAgent",
];

/// Credentials providers that mean the standard chain, which `kinesis` always uses.
const STANDARD_CHAIN: &[&str] = &[
    "DefaultCredentialsProvider",
    "DefaultAWSCredentialsProviderChain",
    "EnvironmentVariableCredentialsProvider",
    "ProfileCredentialsProvider",
];

impl DaemonProperties {
    /// Reads the entries of a properties file (see [`parse`]). `file` names it in errors,
    /// which are one line: the file, the line, the key and what is wrong.
    pub fn from_entries(file: &str, entries: &[Entry]) -> Result<DaemonProperties, String> {
        let mut properties = DaemonProperties::default();
        let mut extended_position = None;
        for entry in entries {
            let bad = |expected: &str| {
                format!(
                    "{file}:{}: {} = {:?}: expected {expected}",
                    entry.line, entry.key, entry.value
                )
            };
            let number = || {
                entry
                    .value
                    .parse::<u64>()
                    .map_err(|_| bad("a whole number"))
            };
            let millis = || number().map(Duration::from_millis);
            let boolean = || match entry.value.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad("true or false")),
            };
            let text = || (!entry.value.is_empty()).then(|| entry.value.clone());
            let key = entry.key.as_str();
            if key.eq_ignore_ascii_case("awscredentialsprovider") {
                properties.credentials_provider = text();
                continue;
            }
            match key {
                "executableName" => {
                    properties.executable = entry
                        .value
                        .split(' ')
                        .filter(|part| !part.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "streamName" => {
                    if properties
                        .stream
                        .as_deref()
                        .is_none_or(|s| !s.starts_with("arn:"))
                    {
                        properties.stream = text();
                    }
                }
                "streamArn" => {
                    if !entry.value.is_empty() {
                        if !entry.value.starts_with("arn:") || !entry.value.contains(":stream/") {
                            return Err(bad(
                                "a stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)",
                            ));
                        }
                        properties.stream = text();
                    }
                }
                "applicationName" => properties.application_name = text(),
                "tableName" => properties.table_name = text(),
                "workerId" => properties.worker_id = text(),
                "initialPositionInStream" => {
                    properties.initial_position = Some(match entry.value.as_str() {
                        "TRIM_HORIZON" => InitialPosition::TrimHorizon,
                        "LATEST" => InitialPosition::Latest,
                        "AT_TIMESTAMP" => InitialPosition::AtTimestamp(SystemTime::UNIX_EPOCH),
                        _ => return Err(bad("TRIM_HORIZON, LATEST or AT_TIMESTAMP")),
                    });
                }
                "initialPositionInStreamExtended" => {
                    let seconds = entry
                        .value
                        .parse::<u64>()
                        .map_err(|_| bad("a time in epoch seconds (AT_TIMESTAMP)"))?;
                    extended_position = Some(InitialPosition::AtTimestamp(
                        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
                    ));
                }
                "regionName" => properties.region = text(),
                "kinesisEndpoint" => properties.kinesis_endpoint = text().map(endpoint),
                "dynamoDBEndpoint" => properties.dynamodb_endpoint = text().map(endpoint),
                "maxRecords" => {
                    let max = entry
                        .value
                        .parse::<i32>()
                        .ok()
                        .filter(|max| (1..=10_000).contains(max))
                        .ok_or_else(|| bad("a number from 1 to 10000"))?;
                    properties.max_records = Some(max);
                }
                "idleTimeBetweenReadsInMillis" => {
                    properties.idle_time_between_reads = Some(millis()?);
                }
                "failoverTimeMillis" => properties.failover_time = Some(millis()?),
                "processingLanguage" => properties.processing_language = text(),
                "timeoutInSeconds" => {
                    let seconds = number()?;
                    if seconds == 0 {
                        return Err(bad("a number of seconds above 0"));
                    }
                    properties.timeout = Some(Duration::from_secs(seconds));
                }
                "shutdownGraceMillis" => properties.shutdown_grace = Some(millis()?),
                "logWarningForTaskAfterMillis" => properties.warn_after = Some(millis()?),
                "maxLeasesForWorker" => {
                    properties.max_leases_for_worker = Some(number_usize(number()?, &bad)?);
                }
                "maxLeasesToStealAtOneTime" => {
                    properties.max_leases_to_steal_at_one_time =
                        Some(number_usize(number()?, &bad)?);
                }
                "shardSyncIntervalMillis" => properties.shard_sync_interval = Some(millis()?),
                "parentShardPollIntervalMillis" => {
                    properties.parent_shard_poll_interval = Some(millis()?);
                }
                "callProcessRecordsEvenForEmptyRecordList" => {
                    properties.call_process_records_even_for_empty_list = Some(boolean()?);
                }
                "taskBackoffTimeMillis" => properties.task_backoff_time = Some(millis()?),
                "gracefulLeaseHandoffTimeoutMillis" => {
                    properties.graceful_lease_handoff_timeout = Some(millis()?);
                }
                "isGracefulLeaseHandoffEnabled" => {
                    properties.graceful_lease_handoff_enabled = Some(boolean()?);
                }
                "retrievalMode" => {
                    properties.retrieval = Some(match entry.value.to_ascii_uppercase().as_str() {
                        "POLLING" | "DEFAULT" => Retrieval::Polling,
                        "FANOUT" => Retrieval::FanOut,
                        _ => return Err(bad("POLLING, FANOUT or DEFAULT")),
                    });
                }
                key if WITHOUT_EFFECT
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(key)) =>
                {
                    properties.without_effect.push(key.to_owned());
                }
                key => properties.unknown.push(key.to_owned()),
            }
        }
        match (properties.initial_position, extended_position) {
            (_, Some(at)) => properties.initial_position = Some(at),
            (Some(InitialPosition::AtTimestamp(_)), None) => {
                return Err(format!(
                    "{file}: initialPositionInStream = AT_TIMESTAMP needs \
                     initialPositionInStreamExtended = <epoch seconds>"
                ));
            }
            _ => {}
        }
        if let Some(provider) = &properties.credentials_provider {
            if !provider
                .split([',', '|'])
                .all(|p| STANDARD_CHAIN.iter().any(|s| p.trim().ends_with(s)))
            {
                return Err(format!(
                    "{file}: AWSCredentialsProvider = {provider}: only the standard chain is \
                     supported (DefaultCredentialsProvider; use AWS_PROFILE, --profile or the \
                     AWS environment variables)"
                ));
            }
        }
        Ok(properties)
    }
}

fn number_usize(value: u64, bad: &dyn Fn(&str) -> String) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| bad("a smaller number"))
}

/// An endpoint as a URL: the Java daemon's properties often give a bare host.
fn endpoint(value: String) -> String {
    if value.contains("://") {
        value
    } else {
        format!("https://{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &str) -> Result<DaemonProperties, String> {
        DaemonProperties::from_entries("app.properties", &parse(text))
    }

    #[test]
    fn java_properties_syntax() {
        let text = "# comment\n  ! also a comment\n\nexecutableName = python3  app.py \n\
                    key2:value2\nkey3 value3\nkey4\\ spaced = a\\tb\\u0041\n\
                    long = one, \\\n    two\nkey2 = again\nempty=\n   indented=x\n";
        let entries = parse(text);
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("executableName", "python3  app.py"),
                ("key3", "value3"),
                ("key4 spaced", "a\tbA"),
                ("long", "one, two"),
                ("key2", "again"),
                ("empty", ""),
                ("indented", "x"),
            ]
        );
        assert_eq!(entries[0].line, 4);
        assert_eq!(entries[3].line, 8);
    }

    /// AWS's sample properties file (amazon-kclpy's samples/sample.properties, comments
    /// left out).
    #[test]
    fn the_sample_file_of_amazon_kclpy() {
        let properties = props(
            "executableName = sample_kclpy_app.py\n\
             streamArn = arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample\n\
             streamName = kclpysample\n\
             applicationName = PythonKCLSample\n\
             AwsCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = python/3.8\n\
             initialPositionInStream = TRIM_HORIZON\n\
             regionName = us-east-1\n",
        )
        .unwrap();
        assert_eq!(properties.executable, ["sample_kclpy_app.py"]);
        assert_eq!(
            properties.stream.as_deref(),
            Some("arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample"),
            "the ARN wins, whatever the order"
        );
        assert_eq!(
            properties.application_name.as_deref(),
            Some("PythonKCLSample")
        );
        assert_eq!(
            properties.initial_position,
            Some(InitialPosition::TrimHorizon)
        );
        assert_eq!(properties.region.as_deref(), Some("us-east-1"));
        assert_eq!(
            properties.processing_language.as_deref(),
            Some("python/3.8")
        );
        assert!(properties.unknown.is_empty());
    }

    #[test]
    fn every_understood_key() {
        let properties = props(
            "executableName=python3 -u  app.py --flag\nstreamName=orders\napplicationName=app\n\
             tableName=table\nworkerId=w1\ninitialPositionInStream=AT_TIMESTAMP\n\
             initialPositionInStreamExtended=1700000000\nkinesisEndpoint=localhost:4567\n\
             dynamoDBEndpoint=http://localhost:4568\nmaxRecords=500\n\
             idleTimeBetweenReadsInMillis=250\nfailoverTimeMillis=3000\ntimeoutInSeconds=7\n\
             shutdownGraceMillis=9000\nlogWarningForTaskAfterMillis=1500\nmaxLeasesForWorker=4\nmaxLeasesToStealAtOneTime=2\n\
             shardSyncIntervalMillis=1000\nparentShardPollIntervalMillis=500\n\
             callProcessRecordsEvenForEmptyRecordList=true\ntaskBackoffTimeMillis=100\n\
             gracefulLeaseHandoffTimeoutMillis=4000\nisGracefulLeaseHandoffEnabled=false\n\
             retrievalMode=FANOUT\nmaxActiveThreads=8\nmetricsLevel=NONE\nfrobnicate=yes\n",
        )
        .unwrap();
        assert_eq!(properties.executable, ["python3", "-u", "app.py", "--flag"]);
        assert_eq!(properties.stream.as_deref(), Some("orders"));
        assert_eq!(properties.table_name.as_deref(), Some("table"));
        assert_eq!(properties.worker_id.as_deref(), Some("w1"));
        assert_eq!(
            properties.initial_position,
            Some(InitialPosition::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
            ))
        );
        assert_eq!(
            properties.kinesis_endpoint.as_deref(),
            Some("https://localhost:4567")
        );
        assert_eq!(
            properties.dynamodb_endpoint.as_deref(),
            Some("http://localhost:4568")
        );
        assert_eq!(properties.max_records, Some(500));
        assert_eq!(
            properties.idle_time_between_reads,
            Some(Duration::from_millis(250))
        );
        assert_eq!(properties.failover_time, Some(Duration::from_secs(3)));
        assert_eq!(properties.timeout, Some(Duration::from_secs(7)));
        assert_eq!(properties.shutdown_grace, Some(Duration::from_secs(9)));
        assert_eq!(properties.warn_after, Some(Duration::from_millis(1500)));
        assert_eq!(properties.max_leases_for_worker, Some(4));
        assert_eq!(properties.max_leases_to_steal_at_one_time, Some(2));
        assert_eq!(properties.shard_sync_interval, Some(Duration::from_secs(1)));
        assert_eq!(
            properties.parent_shard_poll_interval,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            properties.call_process_records_even_for_empty_list,
            Some(true)
        );
        assert_eq!(
            properties.task_backoff_time,
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            properties.graceful_lease_handoff_timeout,
            Some(Duration::from_secs(4))
        );
        assert_eq!(properties.graceful_lease_handoff_enabled, Some(false));
        assert_eq!(properties.retrieval, Some(Retrieval::FanOut));
        assert_eq!(
            properties.without_effect,
            ["maxActiveThreads", "metricsLevel"]
        );
        assert_eq!(properties.unknown, ["frobnicate"]);
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_file_line_and_key() {
        for (text, expected) in [
            (
                "failoverTimeMillis = soon",
                "app.properties:1: failoverTimeMillis = \"soon\": expected a whole number",
            ),
            (
                "\nmaxRecords=0",
                "app.properties:2: maxRecords = \"0\": expected a number from 1 to 10000",
            ),
            (
                "initialPositionInStream=OLDEST",
                "expected TRIM_HORIZON, LATEST or AT_TIMESTAMP",
            ),
            (
                "initialPositionInStream=AT_TIMESTAMP",
                "needs initialPositionInStreamExtended",
            ),
            ("streamArn=orders", "expected a stream ARN"),
            ("timeoutInSeconds=0", "above 0"),
            (
                "isGracefulLeaseHandoffEnabled=yes",
                "expected true or false",
            ),
            (
                "AWSCredentialsProvider=StsAssumeRoleCredentialsProvider|arn",
                "only the standard chain",
            ),
        ] {
            let error = props(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        assert!(props("awsCredentialsProvider = DefaultCredentialsProvider").is_ok());
    }
}
