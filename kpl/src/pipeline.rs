//! The pipeline task: owns every stage (aggregator, limiter, collector, retrier, shard
//! map) and moves records between them. PutRecords calls and shard map refreshes run as
//! their own tasks and report back here, so no stage needs a lock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, PutRecordsResultEntry};
use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use crate::aggregator::Aggregator;
use crate::collector::Collector;
use crate::concurrency::ConcurrencyLimit;
use crate::config::ProducerConfig;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::pending::{Outgoing, Pending};
use crate::receipt::{Attempt, AttemptError, RecordError, RecordResult};
use crate::retrier::{request_error, Backoff, RetryQueue, THROTTLED};
use crate::shard_map::{ShardMap, ShardMapError};
use crate::spread::Spreader;
use crate::stats::{LoadTracker, Shared, Tracker};
use crate::StreamId;

/// Longest wait between two shard map refreshes after failures.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);
/// Commands handled before the stages advance, so bursts are processed in bulk.
const COMMAND_BATCH: usize = 4_096;

/// What the producer handles ask of the pipeline.
#[derive(Debug)]
pub(crate) enum Command {
    /// A validated user record, holding its buffer permit.
    Record(Box<Pending>),
    /// Answer once every record sent before this is complete.
    Flush(oneshot::Sender<()>),
    /// Complete everything, answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// The outcome of one PutRecords call.
struct PutDone {
    batch: Vec<Outgoing>,
    duration: Duration,
    result: Result<Vec<PutRecordsResultEntry>, AttemptError>,
}

#[derive(Debug)]
struct RefreshState {
    running: bool,
    wanted: bool,
    /// When the last refresh (or the initial load) finished.
    last: Instant,
    failures: u32,
}

pub(crate) struct Pipeline {
    config: ProducerConfig,
    client: Client,
    stream: StreamId,
    metrics: Metrics,
    shared: Arc<Shared>,
    map: ShardMap,
    aggregator: Aggregator,
    limiter: Limiter,
    collector: Collector,
    retries: RetryQueue,
    backoff: Backoff,
    spreader: Option<Spreader>,
    /// Kinesis records leaving the aggregator (or re-entering after a backoff), bound
    /// for the limiter.
    staged: Vec<Outgoing>,
    /// User records to route again (survivors of a partly expired aggregate).
    rerouted: Vec<Pending>,
    /// PutRecords requests waiting for a free connection.
    ready: VecDeque<Vec<Outgoing>>,
    in_flight: usize,
    connections: ConcurrencyLimit,
    done_tx: mpsc::UnboundedSender<PutDone>,
    done_rx: mpsc::UnboundedReceiver<PutDone>,
    map_tx: mpsc::UnboundedSender<Result<ShardMap, ShardMapError>>,
    map_rx: mpsc::UnboundedReceiver<Result<ShardMap, ShardMapError>>,
    refresh: RefreshState,
    tracker: Tracker,
    load: LoadTracker,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    shutdowns: Vec<oneshot::Sender<()>>,
    closing: bool,
}

impl Pipeline {
    pub fn new(
        config: ProducerConfig,
        client: Client,
        stream: StreamId,
        map: ShardMap,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (map_tx, map_rx) = mpsc::unbounded_channel();
        let refresh = RefreshState {
            running: false,
            wanted: map.is_empty(),
            last: now,
            failures: 0,
        };
        Pipeline {
            metrics: Metrics::new(stream.as_str()),
            aggregator: Aggregator::new(config.aggregation_max_count, config.aggregation_max_size),
            limiter: Limiter::new(config.rate_limit),
            collector: Collector::new(config.collection_max_count, config.collection_max_size),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            spreader: config.hot_key_spread.clone().map(|s| {
                let mut spreader = Spreader::new(s, now);
                spreader.set_map(&map);
                spreader
            }),
            retries: RetryQueue::default(),
            staged: Vec::new(),
            rerouted: Vec::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            connections: ConcurrencyLimit::new(config.max_connections),
            done_tx,
            done_rx,
            map_tx,
            map_rx,
            refresh,
            tracker: Tracker::default(),
            load: LoadTracker::new(now),
            flushes: Vec::new(),
            shutdowns: Vec::new(),
            closing: false,
            config,
            client,
            stream,
            map,
            shared,
        }
    }

    /// Runs until shut down (or until every handle is dropped) and everything accepted
    /// has completed.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut commands_open = true;
        loop {
            let now = Instant::now();
            self.advance(now);
            if (self.closing || !commands_open) && self.is_idle() {
                match commands.try_recv() {
                    Ok(command) => {
                        self.handle(command);
                        continue;
                    }
                    Err(_) => break,
                }
            }
            let wake = self.next_wake(now);
            tokio::select! {
                command = commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.handle(command);
                        for _ in 0..COMMAND_BATCH {
                            match commands.try_recv() {
                                Ok(command) => self.handle(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => commands_open = false,
                },
                Some(done) = self.done_rx.recv() => self.on_put_done(done),
                Some(map) = self.map_rx.recv() => self.on_shard_map(map),
                () = sleep_until(wake) => {}
            }
        }
        self.shared.set_oldest(None);
        self.metrics.pending(0);
        for (_, flush) in self.flushes.drain(..) {
            let _ = flush.send(());
        }
        for shutdown in self.shutdowns.drain(..) {
            let _ = shutdown.send(());
        }
        debug!(stream = self.stream.as_str(), "producer pipeline stopped");
    }

    fn is_idle(&self) -> bool {
        self.tracker.len() == 0 && self.in_flight == 0
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Record(record) => self.accept(*record),
            Command::Flush(reply) => self.flushes.push((self.tracker.next_id(), reply)),
            Command::Shutdown(reply) => {
                debug!(
                    stream = self.stream.as_str(),
                    aggregating = self.aggregator.len(),
                    rate_limited = self.limiter.len(),
                    collecting = self.collector.len(),
                    backing_off = self.retries.len(),
                    in_flight = self.in_flight,
                    "producer shutting down: draining"
                );
                self.closing = true;
                self.shutdowns.push(reply);
            }
        }
    }

    fn accept(&mut self, mut record: Pending) {
        record.id = self.tracker.add(record.arrived);
        if record.explicit_hash_key.is_none() {
            if let Some(spreader) = &mut self.spreader {
                record.explicit_hash_key = spreader.route(&record.partition_key, record.arrived);
            }
        }
        self.route(record);
    }

    /// Predicts the record's shard and hands it to the aggregator (or, unaggregated, to
    /// the limiter).
    fn route(&mut self, record: Pending) {
        let deadline = record.arrived + self.config.record_max_buffered_time;
        let shard = self.map.shard_for(record.hash_key()).map(|s| s.id.clone());
        match shard {
            Some(shard) if self.config.aggregation_enabled => {
                self.aggregator
                    .add(shard, record, deadline, &mut self.staged)
            }
            shard => self.staged.push(Outgoing::single(shard, record, deadline)),
        }
    }

    /// Moves records through every stage as far as they may go now.
    fn advance(&mut self, now: Instant) {
        for record in std::mem::take(&mut self.rerouted) {
            self.route(record);
        }
        let flushing = self.closing || !self.flushes.is_empty();
        self.aggregator.flush(now, flushing, &mut self.staged);
        let mut retried = Vec::new();
        self.retries.pop_ready(now, &mut retried);
        for record in retried {
            if let Some(record) = self.expire(record, now) {
                self.staged.push(record);
            }
        }
        let mut allowed = Vec::new();
        for record in std::mem::take(&mut self.staged) {
            self.limiter.push(record, now, &mut allowed);
        }
        self.limiter.drain(now, &mut allowed);
        let mut requests = Vec::new();
        for record in allowed {
            self.collector.push(record, &mut requests);
        }
        self.collector.flush(now, flushing, &mut requests);
        self.ready.extend(requests);
        self.dispatch(now);
        self.maybe_refresh(now);

        let tracker = &self.tracker;
        for (_, flush) in self
            .flushes
            .extract_if(.., |(id, _)| tracker.done_before(*id))
        {
            let _ = flush.send(());
        }
        self.shared.set_oldest(self.tracker.oldest());
        self.metrics.pending(self.tracker.len());
        self.load.publish(now, &self.shared);
    }

    /// When the pipeline must look again, absent any message.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if !self.rerouted.is_empty() || !self.staged.is_empty() {
            return Some(now);
        }
        let refresh = (self.refresh.wanted && !self.refresh.running).then(|| self.next_refresh());
        let load = (self.tracker.len() > 0).then(|| self.load.window_end());
        [
            self.aggregator.next_deadline(),
            self.collector.next_deadline(),
            self.limiter.next_ready(now),
            self.retries.next_ready(),
            refresh,
            load,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fails the expired user records of `record`; returns it if none expired. Survivors
    /// of a partly expired aggregate are routed again.
    fn expire(&mut self, mut record: Outgoing, now: Instant) -> Option<Outgoing> {
        if record.expires().is_none_or(|e| e > now) {
            return Some(record);
        }
        let (expired, alive): (Vec<_>, Vec<_>) =
            record.records.drain(..).partition(|r| r.expires <= now);
        self.metrics.expired(expired.len());
        self.shared.count_failed(expired.len());
        for mut user in expired {
            let attempts = user.take_attempts();
            warn!(
                stream = self.stream.as_str(),
                partition_key = user.partition_key.as_str(),
                attempts = attempts.len(),
                "user record expired"
            );
            self.tracker.complete(user.id);
            user.complete(Err(RecordError::Expired { attempts }));
        }
        self.rerouted.extend(alive);
        None
    }

    fn dispatch(&mut self, now: Instant) {
        while self.in_flight < self.connections.get() {
            let Some(batch) = self.ready.pop_front() else {
                return;
            };
            let batch: Vec<Outgoing> = batch
                .into_iter()
                .filter_map(|record| self.expire(record, now))
                .collect();
            if batch.is_empty() {
                continue;
            }
            self.in_flight += 1;
            self.shared.count_call();
            let client = self.client.clone();
            let stream = self.stream.clone();
            let done = self.done_tx.clone();
            let span = tracing::debug_span!(
                "put_records",
                stream = stream.as_str(),
                records = batch.len()
            );
            tokio::spawn(
                async move {
                    let outcome = put_records(&client, &stream, batch).await;
                    // The pipeline outlives every call it starts.
                    let _ = done.send(outcome);
                }
                .instrument(span),
            );
        }
    }

    fn on_put_done(&mut self, done: PutDone) {
        let now = Instant::now();
        self.in_flight -= 1;
        self.metrics.request(done.batch.len(), done.duration);
        match done.result {
            Err(error) => {
                if error.code == "Timeout" {
                    self.connections.timed_out();
                }
                warn!(
                    connections = self.connections.get(),
                    stream = self.stream.as_str(),
                    code = error.code.as_str(),
                    error = error.message.as_str(),
                    records = done.batch.len(),
                    "PutRecords failed"
                );
                self.metrics.error(&error.code);
                for record in done.batch {
                    self.failed(record, error.clone(), done.duration, now);
                }
            }
            Ok(entries) => {
                self.connections.answered();
                let mut entries = entries.into_iter();
                for record in done.batch {
                    let entry = entries.next();
                    let shard = entry.as_ref().and_then(|e| e.shard_id());
                    let sequence = entry.as_ref().and_then(|e| e.sequence_number());
                    match (entry.as_ref().and_then(|e| e.error_code()), shard, sequence) {
                        (None, Some(shard), Some(sequence)) => {
                            // Reuse the shard map's id when the prediction held.
                            let shard = match &record.shard {
                                Some(predicted) if &**predicted == shard => predicted.clone(),
                                _ => Arc::from(shard),
                            };
                            let sequence = Arc::from(sequence);
                            self.succeeded(record, shard, sequence, done.duration, now)
                        }
                        (code, _, _) => {
                            let error = AttemptError {
                                code: code.unwrap_or("MissingResult").to_owned(),
                                message: entry
                                    .as_ref()
                                    .and_then(|e| e.error_message())
                                    .unwrap_or("PutRecords returned no result for the record")
                                    .to_owned(),
                            };
                            self.metrics.error(&error.code);
                            self.failed(record, error, done.duration, now);
                        }
                    }
                }
            }
        }
    }

    fn succeeded(
        &mut self,
        mut record: Outgoing,
        shard: Arc<str>,
        sequence: Arc<str>,
        duration: Duration,
        now: Instant,
    ) {
        if record.shard.as_ref().is_some_and(|p| *p != shard) {
            self.want_refresh();
            if record.is_aggregate() {
                // The aggregate went where its first record belongs; the others may not,
                // and consumers drop aggregates that span shards. Send its user records
                // again, alone, where Kinesis routes them.
                warn!(
                    stream = self.stream.as_str(),
                    predicted = record.shard.as_deref().unwrap_or(""),
                    actual = &*shard,
                    "aggregate landed on an unexpected shard; resending its records"
                );
                let error = AttemptError {
                    code: "WrongShard".to_owned(),
                    message: format!(
                        "aggregate predicted for {} landed on {shard} ({sequence})",
                        record.shard.as_deref().unwrap_or("")
                    ),
                };
                self.metrics.error(&error.code);
                for mut user in record.records.drain(..) {
                    user.attempts.push(Attempt {
                        duration,
                        error: Some(error.clone()),
                    });
                    let deadline = now;
                    self.staged.push(Outgoing::single(None, user, deadline));
                }
                return;
            }
        }
        let aggregated = record.is_aggregate();
        self.load.put(&shard, record.records.len(), record.size());
        self.metrics.kinesis_record_put(record.records.len());
        self.shared.count_put(record.records.len());
        for (index, mut user) in record.records.drain(..).enumerate() {
            user.attempts.push(Attempt {
                duration,
                error: None,
            });
            self.metrics.user_record_put(
                now.saturating_duration_since(user.arrived),
                user.attempts.len() - 1,
            );
            self.tracker.complete(user.id);
            let result = RecordResult {
                shard_id: shard.clone(),
                sequence_number: sequence.clone(),
                sub_sequence_number: if aggregated { index as u64 } else { 0 },
                aggregated,
                attempts: user.take_attempts(),
            };
            user.complete(Ok(result));
        }
    }

    fn failed(
        &mut self,
        mut record: Outgoing,
        error: AttemptError,
        duration: Duration,
        now: Instant,
    ) {
        self.shared.count_failed_attempt();
        let throttled = error.code == THROTTLED;
        if throttled {
            if let Some(shard) = &record.shard {
                self.load.throttled(shard);
            }
        }
        for user in &mut record.records {
            user.attempts.push(Attempt {
                duration,
                error: Some(error.clone()),
            });
        }
        if throttled && self.config.fail_if_throttled {
            self.shared.count_failed(record.records.len());
            for mut user in record.records {
                self.tracker.complete(user.id);
                let attempts = user.take_attempts();
                user.complete(Err(RecordError::Throttled { attempts }));
            }
            return;
        }
        record.failures += 1;
        let mut at = now + self.backoff.delay(record.failures);
        if let Some(expires) = record.expires() {
            at = at.min(expires);
        }
        self.retries.push(at, record);
    }

    fn want_refresh(&mut self) {
        self.refresh.wanted = true;
    }

    fn next_refresh(&self) -> Instant {
        let min = self.config.shard_map_min_refresh_interval;
        let wait = min
            .saturating_mul(1 << self.refresh.failures.min(16))
            .min(MAX_REFRESH_BACKOFF.max(min));
        self.refresh.last + wait
    }

    fn maybe_refresh(&mut self, now: Instant) {
        if !self.refresh.wanted || self.refresh.running || now < self.next_refresh() {
            return;
        }
        self.refresh.wanted = false;
        self.refresh.running = true;
        let client = self.client.clone();
        let stream = self.stream.clone();
        let reply = self.map_tx.clone();
        tokio::spawn(async move {
            let _ = reply.send(ShardMap::load(&client, &stream).await);
        });
    }

    fn on_shard_map(&mut self, result: Result<ShardMap, ShardMapError>) {
        self.refresh.running = false;
        self.refresh.last = Instant::now();
        match result {
            Ok(map) => {
                self.refresh.failures = 0;
                if map.is_empty() {
                    self.refresh.wanted = true;
                }
                if map == self.map {
                    return;
                }
                debug!(
                    stream = self.stream.as_str(),
                    shards = map.shards().len(),
                    "shard map updated"
                );
                if let Some(spreader) = &mut self.spreader {
                    spreader.set_map(&map);
                }
                self.map = map;
                // Buffered records were predicted with the old map: predict them again.
                let mut records = self.aggregator.drain_records();
                for queued in self.limiter.drain_all() {
                    records.extend(queued.records);
                }
                records.sort_by_key(|r| r.id);
                self.rerouted.extend(records);
            }
            Err(error) => {
                self.refresh.failures += 1;
                self.refresh.wanted = true;
                warn!(stream = self.stream.as_str(), %error, "shard map refresh failed");
            }
        }
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn put_records(client: &Client, stream: &StreamId, batch: Vec<Outgoing>) -> PutDone {
    let started = Instant::now();
    let entries: Result<Vec<_>, _> = batch
        .iter()
        .map(|record| {
            PutRecordsRequestEntry::builder()
                .partition_key(&record.encoded.partition_key)
                .set_explicit_hash_key(record.encoded.explicit_hash_key.clone())
                .data(Blob::new(record.encoded.data.to_vec()))
                .build()
        })
        .collect();
    let result = match entries {
        Ok(entries) => stream
            .put_records(client)
            .set_records(Some(entries))
            .send()
            .await
            .map(|output| output.records)
            .map_err(|e| request_error(&e)),
        Err(e) => Err(AttemptError {
            code: "Construction".to_owned(),
            message: e.to_string(),
        }),
    };
    PutDone {
        batch,
        duration: started.elapsed(),
        result,
    }
}
