//! The KCL MultiLang protocol's messages, as AWS's Java MultiLangDaemon and its client
//! libraries (amazon-kclpy, aws-kcl for Node.js) exchange them: one JSON object a line,
//! `"action"` naming the message.
//!
//! To the child: `initialize`, `processRecords` (records with base64 `data`), `leaseLost`,
//! `shardEnded`, `shutdownRequested` (version 3 of the protocol, the Java KCL 2 and 3
//! daemons), the older `shutdown` with a `reason` (`TERMINATE` or `ZOMBIE`, the Java KCL 1
//! daemon), and `checkpoint` answers. From the child: `status` (`responseFor` the action it
//! finished) and `checkpoint` requests.

use kinesis_consumer::{CheckpointError, ExtendedSequenceNumber, KinesisClientRecord};
use serde::{Deserialize, Serialize};

/// A message to the child.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action")]
pub enum ToChild {
    /// The first message: the shard and the checkpoint it resumes from.
    #[serde(rename = "initialize", rename_all = "camelCase")]
    Initialize {
        /// The shard the child processes.
        shard_id: String,
        /// The checkpoint (a sequence number or a sentinel such as `TRIM_HORIZON`).
        sequence_number: Option<String>,
        /// The checkpoint's sub-sequence number.
        sub_sequence_number: Option<u64>,
    },
    /// A batch of records.
    #[serde(rename = "processRecords", rename_all = "camelCase")]
    ProcessRecords {
        /// The records, deaggregated.
        records: Vec<Record>,
        /// How far behind the tip of the shard the read was.
        millis_behind_latest: Option<i64>,
    },
    /// Another worker has the shard: stop, no checkpoint is possible.
    #[serde(rename = "leaseLost")]
    LeaseLost,
    /// Every record of the shard was delivered: checkpoint (`SHARD_END`) and stop.
    #[serde(rename = "shardEnded")]
    ShardEnded,
    /// The worker stops gracefully: a last chance to checkpoint.
    #[serde(rename = "shutdownRequested")]
    ShutdownRequested,
    /// Version 2 of the protocol: the end of the shard (`TERMINATE`, checkpoint) or the loss
    /// of its lease (`ZOMBIE`, do not checkpoint).
    #[serde(rename = "shutdown")]
    Shutdown {
        /// `TERMINATE` or `ZOMBIE`.
        reason: ShutdownReason,
    },
    /// The answer to a checkpoint request.
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        /// The sequence number asked for (null: the last record delivered).
        sequence_number: Option<String>,
        /// The sub-sequence number asked for.
        sub_sequence_number: Option<u64>,
        /// The name of the Java exception the Java daemon would answer with; null when the
        /// checkpoint was written.
        error: Option<String>,
    },
}

/// Why a version 2 child is shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ShutdownReason {
    /// The shard ended: checkpoint to let its children start.
    #[serde(rename = "TERMINATE")]
    Terminate,
    /// The lease was lost: do not checkpoint.
    #[serde(rename = "ZOMBIE")]
    Zombie,
}

impl ToChild {
    /// The action name, which the child's `status` must name in `responseFor`.
    pub fn action(&self) -> &'static str {
        match self {
            ToChild::Initialize { .. } => "initialize",
            ToChild::ProcessRecords { .. } => "processRecords",
            ToChild::LeaseLost => "leaseLost",
            ToChild::ShardEnded => "shardEnded",
            ToChild::ShutdownRequested => "shutdownRequested",
            ToChild::Shutdown { .. } => "shutdown",
            ToChild::Checkpoint { .. } => "checkpoint",
        }
    }

    /// The `initialize` message of a shard resuming from `checkpoint`.
    pub fn initialize(shard_id: &str, checkpoint: &ExtendedSequenceNumber) -> ToChild {
        ToChild::Initialize {
            shard_id: shard_id.to_owned(),
            sequence_number: Some(checkpoint.position.as_str().to_owned()),
            sub_sequence_number: Some(checkpoint.sub_sequence_number),
        }
    }

    /// The `processRecords` message of a batch.
    pub fn process_records(
        records: &[KinesisClientRecord],
        millis_behind_latest: Option<i64>,
    ) -> ToChild {
        ToChild::ProcessRecords {
            records: records.iter().map(Record::from).collect(),
            millis_behind_latest,
        }
    }

    /// The message as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these types cannot fail: string keys, no maps, no non-finite floats.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// One record of a `processRecords` message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Always `"record"`: the client libraries decode every object by its action.
    pub action: &'static str,
    /// The payload, base64.
    pub data: String,
    /// The user record's partition key.
    pub partition_key: String,
    /// The Kinesis record's sequence number.
    pub sequence_number: String,
    /// The position inside a KPL aggregate (0 for a plain record).
    pub sub_sequence_number: u64,
    /// When Kinesis received the record, milliseconds since the epoch.
    pub approximate_arrival_timestamp: Option<u64>,
}

impl From<&KinesisClientRecord> for Record {
    fn from(record: &KinesisClientRecord) -> Self {
        Record {
            action: "record",
            data: base64_simd::STANDARD.encode_to_string(&record.data),
            partition_key: record.partition_key.to_string(),
            sequence_number: record.sequence_number.to_string(),
            sub_sequence_number: record.sub_sequence_number,
            approximate_arrival_timestamp: record.approximate_arrival_timestamp.and_then(|time| {
                time.duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .and_then(|since| u64::try_from(since.as_millis()).ok())
            }),
        }
    }
}

/// A message from the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromChild {
    /// The child finished the message whose action it names.
    Status {
        /// The action it answers.
        response_for: String,
    },
    /// The child asks for a checkpoint.
    Checkpoint {
        /// Where; none: at the last record delivered (`SHARD_END` at the shard's end).
        sequence_number: Option<String>,
        /// The sub-sequence number; none: 0 with a sequence number, as the Java daemon does.
        sub_sequence_number: Option<u64>,
    },
}

/// What one line of the child's standard output holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// An empty line (amazon-kclpy and aws-kcl write one before and after each message).
    Blank,
    /// A message.
    Message(FromChild),
    /// Anything else: not JSON, not an object, an action the daemon does not take from a
    /// child, fields of the wrong type. The Java daemon skips such lines.
    Garbage(String),
}

#[derive(Deserialize)]
#[serde(tag = "action")]
enum Incoming {
    #[serde(rename = "status", rename_all = "camelCase")]
    Status { response_for: Option<String> },
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        #[serde(default, deserialize_with = "string_or_number")]
        sequence_number: Option<String>,
        #[serde(default)]
        sub_sequence_number: Option<u64>,
    },
}

/// A sequence number as a string, or as a JSON number (Jackson takes both).
fn string_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(
        Option::<Either>::deserialize(deserializer)?.map(|either| match either {
            Either::Text(text) => text,
            Either::Number(number) => number.to_string(),
        }),
    )
}

/// Parses one line of the child's standard output (its newline already removed).
pub fn parse_line(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Line::Blank;
    }
    match serde_json::from_str::<Incoming>(trimmed) {
        Ok(Incoming::Status {
            response_for: Some(response_for),
        }) => Line::Message(FromChild::Status { response_for }),
        Ok(Incoming::Status { response_for: None }) => Line::Garbage(line.to_owned()),
        Ok(Incoming::Checkpoint {
            sequence_number,
            sub_sequence_number,
        }) => Line::Message(FromChild::Checkpoint {
            sequence_number,
            sub_sequence_number,
        }),
        Err(_) => Line::Garbage(line.to_owned()),
    }
}

/// The name of the Java exception the Java daemon answers a failed checkpoint with.
pub fn error_name(error: &CheckpointError) -> &'static str {
    match error {
        CheckpointError::LeaseLost(_) => "ShutdownException",
        CheckpointError::Throttled(_) => "ThrottlingException",
        CheckpointError::InvalidSequence { .. } => "IllegalArgumentException",
        _ => "KinesisClientLibDependencyException",
    }
}

/// The answer to a checkpoint request made where no checkpoint is possible (during
/// `initialize` or `leaseLost`), as the Java daemon gives it.
pub const NO_CHECKPOINTER: &str = "InvalidStateException";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn value(message: &ToChild) -> Value {
        let line = message.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert!(!line[..line.len() - 1].contains(&b'\n'), "one line");
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn messages_to_the_child_are_the_java_daemons() {
        let checkpoint = ExtendedSequenceNumber::trim_horizon();
        assert_eq!(
            value(&ToChild::initialize("shardId-000000000001", &checkpoint)),
            json!({"action": "initialize", "shardId": "shardId-000000000001",
                   "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0})
        );
        let mut record = KinesisClientRecord::new("4959", "key", &b"\xffhello"[..]);
        record.sub_sequence_number = 3;
        record.approximate_arrival_timestamp =
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123));
        assert_eq!(
            value(&ToChild::process_records(&[record], Some(42))),
            json!({"action": "processRecords", "millisBehindLatest": 42, "records": [
                {"action": "record", "data": "/2hlbGxv", "partitionKey": "key",
                 "sequenceNumber": "4959", "subSequenceNumber": 3,
                 "approximateArrivalTimestamp": 1_700_000_000_123_u64}]})
        );
        assert_eq!(value(&ToChild::LeaseLost), json!({"action": "leaseLost"}));
        assert_eq!(value(&ToChild::ShardEnded), json!({"action": "shardEnded"}));
        assert_eq!(
            value(&ToChild::ShutdownRequested),
            json!({"action": "shutdownRequested"})
        );
        assert_eq!(
            value(&ToChild::Shutdown {
                reason: ShutdownReason::Zombie
            }),
            json!({"action": "shutdown", "reason": "ZOMBIE"})
        );
        assert_eq!(
            value(&ToChild::Checkpoint {
                sequence_number: None,
                sub_sequence_number: None,
                error: Some("ShutdownException".into())
            }),
            json!({"action": "checkpoint", "sequenceNumber": null,
                   "subSequenceNumber": null, "error": "ShutdownException"})
        );
        for message in [
            ToChild::LeaseLost,
            ToChild::ShardEnded,
            ToChild::ShutdownRequested,
            ToChild::initialize("s", &checkpoint),
            ToChild::process_records(&[], None),
            ToChild::Shutdown {
                reason: ShutdownReason::Terminate,
            },
        ] {
            assert_eq!(value(&message)["action"], message.action());
        }
    }

    #[test]
    fn lines_from_the_child() {
        assert_eq!(parse_line(""), Line::Blank);
        assert_eq!(parse_line("  \r"), Line::Blank);
        assert_eq!(
            parse_line(r#"{"action": "status", "responseFor": "processRecords"}"#),
            Line::Message(FromChild::Status {
                response_for: "processRecords".into()
            })
        );
        // amazon-kclpy: both keys, null or not.
        assert_eq!(
            parse_line(
                r#"{"action": "checkpoint", "sequenceNumber": null, "subSequenceNumber": null}"#
            ),
            Line::Message(FromChild::Checkpoint {
                sequence_number: None,
                sub_sequence_number: None
            })
        );
        assert_eq!(
            parse_line(
                r#"{"action": "checkpoint", "sequenceNumber": "4959", "subSequenceNumber": 2}"#
            ),
            Line::Message(FromChild::Checkpoint {
                sequence_number: Some("4959".into()),
                sub_sequence_number: Some(2)
            })
        );
        // aws-kcl (Node.js): no sub-sequence number; a number is taken as Jackson takes it.
        assert_eq!(
            parse_line(r#"{"action":"checkpoint","sequenceNumber":4959}"#),
            Line::Message(FromChild::Checkpoint {
                sequence_number: Some("4959".into()),
                sub_sequence_number: None
            })
        );
        for garbage in [
            "hello from print()",
            "{",
            "[1, 2]",
            r#"{"no": "action"}"#,
            r#"{"action": "processRecords", "records": []}"#,
            r#"{"action": "status"}"#,
            r#"{"action": "checkpoint", "subSequenceNumber": "x"}"#,
        ] {
            assert_eq!(
                parse_line(garbage),
                Line::Garbage(garbage.into()),
                "{garbage}"
            );
        }
    }

    #[test]
    fn checkpoint_errors_have_the_java_names() {
        assert_eq!(
            error_name(&CheckpointError::LeaseLost("s".into())),
            "ShutdownException"
        );
        assert_eq!(
            error_name(&CheckpointError::InvalidSequence {
                requested: ExtendedSequenceNumber::new("1", 0),
                reason: "behind".into()
            }),
            "IllegalArgumentException"
        );
    }
}
