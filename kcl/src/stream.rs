//! The consumed stream, named by name or by ARN (the ARN also reaches streams of other
//! accounts the credentials may read).

use aws_sdk_kinesis::operation::describe_stream_summary::builders::DescribeStreamSummaryFluentBuilder;
use aws_sdk_kinesis::operation::get_shard_iterator::builders::GetShardIteratorFluentBuilder;
use aws_sdk_kinesis::operation::list_shards::builders::ListShardsFluentBuilder;
use aws_sdk_kinesis::Client;

/// A stream as the user named it: an ARN when it starts with `arn:`, else a name in the
/// client's account and region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamRef(String);

impl StreamRef {
    pub(crate) fn new(name_or_arn: impl Into<String>) -> Self {
        StreamRef(name_or_arn.into())
    }

    /// The name or ARN, as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The stream's name: as given, or the name part of an ARN (what the metrics are
    /// labelled with).
    pub(crate) fn name(&self) -> &str {
        if self.is_arn() {
            if let Some((_, name)) = self.0.rsplit_once(":stream/") {
                return name;
            }
        }
        &self.0
    }

    fn is_arn(&self) -> bool {
        self.0.starts_with("arn:")
    }

    pub(crate) fn list_shards(&self, client: &Client) -> ListShardsFluentBuilder {
        let request = client.list_shards();
        if self.is_arn() {
            request.stream_arn(&self.0)
        } else {
            request.stream_name(&self.0)
        }
    }

    pub(crate) fn get_shard_iterator(&self, client: &Client) -> GetShardIteratorFluentBuilder {
        let request = client.get_shard_iterator();
        if self.is_arn() {
            request.stream_arn(&self.0)
        } else {
            request.stream_name(&self.0)
        }
    }

    pub(crate) fn describe_summary(&self, client: &Client) -> DescribeStreamSummaryFluentBuilder {
        let request = client.describe_stream_summary();
        if self.is_arn() {
            request.stream_arn(&self.0)
        } else {
            request.stream_name(&self.0)
        }
    }
}

impl std::fmt::Display for StreamRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::StreamRef;

    #[test]
    fn arns_are_told_from_names() {
        assert!(StreamRef::new("arn:aws:kinesis:eu-west-1:123456789012:stream/orders").is_arn());
        assert!(!StreamRef::new("orders").is_arn());
        assert!(!StreamRef::new("arn-of-a-name").is_arn());
    }

    #[test]
    fn the_name_of_an_arn_is_its_name_part() {
        let arn = StreamRef::new("arn:aws:kinesis:eu-west-1:123456789012:stream/orders");
        assert_eq!(arn.name(), "orders");
        assert_eq!(StreamRef::new("orders").name(), "orders");
    }
}
