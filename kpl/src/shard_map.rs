//! The shard map: which open shard owns which hash key range, from ListShards.

use std::sync::Arc;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{ShardFilter, ShardFilterType};
use aws_sdk_kinesis::Client;
use kinesis_errors::ErrorKind;

/// Shards asked for per ListShards page (the service's maximum).
const LIST_SHARDS_PAGE: i32 = 1_000;

/// Whether a ListShards error means the endpoint does not take `ShardFilter` (older
/// emulators and compatible services answer with a validation error).
fn filter_rejected(code: &str) -> bool {
    matches!(
        code,
        "InvalidArgumentException" | "ValidationException" | "SerializationException"
    )
}

use crate::{HashKey, StreamId};

/// An open shard and the hash keys it owns, `start..=end`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardRange {
    /// Shard id, e.g. `shardId-000000000000`.
    pub id: Arc<str>,
    /// Lowest hash key of the shard.
    pub start: HashKey,
    /// Highest hash key of the shard.
    pub end: HashKey,
}

impl ShardRange {
    /// The hash key in the middle of the shard's range.
    pub fn midpoint(&self) -> HashKey {
        HashKey(self.start.0 + (self.end.0 - self.start.0) / 2)
    }
}

/// Open shards sorted by their ending hash key, for binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<ShardRange>,
}

/// Why the shard map could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardMapError {
    /// ListShards failed. [`ShardMapError::kind`] (or `code`: `ResourceNotFoundException`,
    /// `AccessDeniedException`, ...) tells why; `source` is the SDK's error.
    #[error("ListShards failed: {}", code_and_message(.code.as_deref(), .message))]
    #[non_exhaustive]
    ListShards {
        /// The service's error code, if the service answered.
        code: Option<String>,
        /// The service's message, or what failed on the way (no answer, the refused
        /// connection, the credentials).
        message: String,
        /// What kind of failure it was, by the consumer's rule too.
        kind: ErrorKind,
        /// The SDK's error, when there was one.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
    /// A shard's hash key range could not be read.
    #[error("shard {shard} has an invalid hash key range")]
    BadRange {
        /// The shard.
        shard: String,
    },
}

/// `Code: message`, or the message alone when it already starts with the code.
fn code_and_message(code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) if !message.starts_with(code) => format!("{code}: {message}"),
        _ => message.to_owned(),
    }
}

impl ShardMapError {
    /// What kind of failure it was ([`ErrorKind`], the consumer's too): a shard with an
    /// unreadable hash key range is [`ErrorKind::Other`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            ShardMapError::ListShards { kind, .. } => *kind,
            ShardMapError::BadRange { .. } => ErrorKind::Other,
        }
    }

    /// Whether retrying cannot help: the stream does not exist, access is denied, the
    /// request is invalid ([`ErrorKind::is_permanent`]), or a shard's range is unreadable.
    pub fn is_permanent(&self) -> bool {
        match self {
            ShardMapError::ListShards { kind, .. } => kind.is_permanent(),
            ShardMapError::BadRange { .. } => true,
        }
    }

    pub(crate) fn list_shards<E, R>(error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        ShardMapError::ListShards {
            code: error.code().map(str::to_owned),
            message: kinesis_errors::sdk_error_message(&error),
            kind: ErrorKind::of_sdk_error(&error),
            source: Some(Arc::new(error)),
        }
    }
}

impl ShardMap {
    /// A map of these open shards (any order).
    pub fn new(mut shards: Vec<ShardRange>) -> Self {
        shards.sort_by_key(|s| s.end);
        ShardMap { shards }
    }

    /// Loads the open shards of a stream with ListShards, following pagination. It asks
    /// only for the open shards (`ShardFilter` `AT_LATEST`, 1,000 per page) so a refresh
    /// does not page through every closed shard still in retention; where the endpoint
    /// rejects the filter, it lists every shard and keeps the open ones.
    pub async fn load(client: &Client, stream: &StreamId) -> Result<Self, ShardMapError> {
        match Self::load_pages(client, stream, true).await {
            Err(ShardMapError::ListShards {
                code: Some(code), ..
            }) if filter_rejected(&code) => Self::load_pages(client, stream, false).await,
            loaded => loaded,
        }
    }

    async fn load_pages(
        client: &Client,
        stream: &StreamId,
        open_only: bool,
    ) -> Result<Self, ShardMapError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // A continuation names neither the stream nor the filter: the token does.
            let request = match next_token.take() {
                Some(token) => client.list_shards().next_token(token),
                None if open_only => stream.list_shards(client).shard_filter(
                    ShardFilter::builder()
                        .r#type(ShardFilterType::AtLatest)
                        .build()
                        .map_err(|e| ShardMapError::ListShards {
                            code: None,
                            message: e.to_string(),
                            kind: ErrorKind::InvalidRequest,
                            source: Some(Arc::new(e)),
                        })?,
                ),
                None => stream.list_shards(client),
            };
            let page = request
                .max_results(LIST_SHARDS_PAGE)
                .send()
                .await
                .map_err(ShardMapError::list_shards)?;
            for shard in page.shards() {
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                if closed {
                    continue;
                }
                let bad = || ShardMapError::BadRange {
                    shard: shard.shard_id().to_owned(),
                };
                let range = shard.hash_key_range().ok_or_else(bad)?;
                shards.push(ShardRange {
                    id: Arc::from(shard.shard_id()),
                    start: range.starting_hash_key().parse().map_err(|_| bad())?,
                    end: range.ending_hash_key().parse().map_err(|_| bad())?,
                });
            }
            next_token = page.next_token().map(str::to_owned);
            if next_token.is_none() {
                return Ok(ShardMap::new(shards));
            }
        }
    }

    /// The open shard owning `key`, if the map covers it.
    pub fn shard_for(&self, key: HashKey) -> Option<&ShardRange> {
        let i = self.shards.partition_point(|s| s.end < key);
        self.shards.get(i).filter(|s| s.start <= key)
    }

    /// Where in [`shards`](Self::shards) the open shard owning `key` is, if the map
    /// covers it.
    pub(crate) fn position_for(&self, key: HashKey) -> Option<usize> {
        let i = self.shards.partition_point(|s| s.end < key);
        self.shards.get(i).filter(|s| s.start <= key).map(|_| i)
    }

    /// The shard with this id, if open.
    pub fn get(&self, id: &str) -> Option<&ShardRange> {
        self.shards.iter().find(|s| &*s.id == id)
    }

    /// The open shards, by ending hash key.
    pub fn shards(&self) -> &[ShardRange] {
        &self.shards
    }

    /// Whether no shard is known.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: &str, start: u128, end: u128) -> ShardRange {
        ShardRange {
            id: Arc::from(id),
            start: HashKey(start),
            end: HashKey(end),
        }
    }

    #[test]
    fn finds_the_owning_shard_at_every_boundary() {
        let quarter = u128::MAX / 4;
        let map = ShardMap::new(vec![
            range("d", 3 * quarter + 3, u128::MAX),
            range("a", 0, quarter),
            range("c", 2 * quarter + 2, 3 * quarter + 2),
            range("b", quarter + 1, 2 * quarter + 1),
        ]);
        let id = |k: u128| map.shard_for(HashKey(k)).map(|s| s.id.to_string());
        assert_eq!(id(0).as_deref(), Some("a"));
        assert_eq!(id(quarter).as_deref(), Some("a"));
        assert_eq!(id(quarter + 1).as_deref(), Some("b"));
        assert_eq!(id(3 * quarter + 2).as_deref(), Some("c"));
        assert_eq!(id(3 * quarter + 3).as_deref(), Some("d"));
        assert_eq!(id(u128::MAX).as_deref(), Some("d"));
    }

    #[test]
    fn gaps_and_empty_maps_predict_nothing() {
        let map = ShardMap::new(vec![range("a", 0, 10), range("b", 20, 30)]);
        assert!(map.shard_for(HashKey(15)).is_none());
        assert!(map.shard_for(HashKey(31)).is_none());
        assert!(ShardMap::default().shard_for(HashKey(1)).is_none());
    }

    #[test]
    fn midpoint_is_inside_the_range() {
        let r = range("a", 0, u128::MAX);
        assert_eq!(r.midpoint(), HashKey(u128::MAX / 2));
        let r = range("b", 10, 11);
        assert_eq!(r.midpoint(), HashKey(10));
    }
}
