//! Naming a stream by name or by ARN.

use aws_sdk_kinesis::operation::describe_stream_summary::builders::DescribeStreamSummaryFluentBuilder;
use aws_sdk_kinesis::operation::list_shards::builders::ListShardsFluentBuilder;
use aws_sdk_kinesis::operation::put_records::builders::PutRecordsFluentBuilder;
use aws_sdk_kinesis::Client;

/// A stream, by name or by ARN (`arn:aws:kinesis:region:account:stream/name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamId {
    /// The stream's name, in the client's account and region.
    Name(String),
    /// The stream's ARN.
    Arn(String),
}

impl StreamId {
    /// A stream id from a name, or from an ARN if the string starts with `arn:`.
    pub fn new(name_or_arn: impl Into<String>) -> Self {
        let s = name_or_arn.into();
        if s.starts_with("arn:") {
            StreamId::Arn(s)
        } else {
            StreamId::Name(s)
        }
    }

    /// The name or ARN as given.
    pub fn as_str(&self) -> &str {
        match self {
            StreamId::Name(s) | StreamId::Arn(s) => s,
        }
    }

    pub(crate) fn list_shards(&self, client: &Client) -> ListShardsFluentBuilder {
        match self {
            StreamId::Name(name) => client.list_shards().stream_name(name),
            StreamId::Arn(arn) => client.list_shards().stream_arn(arn),
        }
    }

    pub(crate) fn describe_stream_summary(
        &self,
        client: &Client,
    ) -> DescribeStreamSummaryFluentBuilder {
        match self {
            StreamId::Name(name) => client.describe_stream_summary().stream_name(name),
            StreamId::Arn(arn) => client.describe_stream_summary().stream_arn(arn),
        }
    }

    pub(crate) fn put_records(&self, client: &Client) -> PutRecordsFluentBuilder {
        match self {
            StreamId::Name(name) => client.put_records().stream_name(name),
            StreamId::Arn(arn) => client.put_records().stream_arn(arn),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_told_from_names() {
        assert_eq!(StreamId::new("orders"), StreamId::Name("orders".into()));
        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
        assert_eq!(StreamId::new(arn), StreamId::Arn(arn.into()));
        assert_eq!(StreamId::new(arn).to_string(), arn);
    }
}
