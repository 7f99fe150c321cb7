//! The pipeline task: owns every stage (aggregator, limiter, collector, retrier, shard
//! map) and moves records between them. PutRecords calls and shard map refreshes run as
//! their own tasks and report back here, so no stage needs a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, PutRecordsResultEntry};
use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use crate::aggregator::Aggregator;
use crate::call_size::CallSize;
use crate::call_timeout::CallTimeouts;
use crate::collector::{Collector, MIN_BUFFER_TIME};
use crate::concurrency::{CallTicket, ConcurrencyLimit};
use crate::config::ProducerConfig;
use crate::inbox::{Command, Inbox};
use crate::key_cache::HashKeyCache;
use crate::lanes::Lanes;
use crate::limiter::Limiter;
use crate::metrics::{self, Metrics};
use crate::pending::{Admitted, Carried, Outgoing, Pending};
use crate::receipt::{Attempt, AttemptError, Delivered, Outcome, RecordError};
use crate::request::FastPathRefused;
use crate::retrier::{request_error, Backoff, RetryQueue};
use crate::shard_map::{ShardMap, ShardMapError};
use crate::spread::Spreader;
use crate::stats::{LoadTracker, Released, Shared, Tracker};
use crate::{HashKey, Record, StreamId};

/// Longest wait between two shard map refreshes after failures.
const MAX_REFRESH_BACKOFF: Duration = Duration::from_secs(30);
/// Error code of an attempt whose aggregate landed on a shard that does not hold all of
/// its user records.
const WRONG_SHARD: &str = "WrongShard";

/// A PutRecords call about to start.
#[derive(Clone, Copy, Debug)]
struct Call {
    ticket: CallTicket,
    bytes: usize,
    /// Its attempt timeout (see `call_timeout`).
    timeout: Duration,
}

/// The outcome of one PutRecords call.
struct PutDone {
    batch: Vec<Outgoing>,
    call: Call,
    started: SystemTime,
    duration: Duration,
    result: Result<Vec<PutRecordsResultEntry>, Arc<AttemptError>>,
}

/// An aggregate that reached a shard the map did not predict and does not know: whether
/// it is delivered waits for the next map.
struct Landed {
    record: Outgoing,
    shard: Arc<str>,
    sequence: Arc<str>,
    attempt: Attempt,
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
    /// Whether PutRecords bodies are written by the producer (see `request`); turned off
    /// for good the first time the SDK builds a request of another shape.
    fast_path: Arc<AtomicBool>,
    config: ProducerConfig,
    client: Client,
    stream: StreamId,
    metrics: Metrics,
    shared: Arc<Shared>,
    map: ShardMap,
    /// Hash ranges of every shard seen in any map (a shard id never changes its range).
    known_ranges: HashMap<Arc<str>, (HashKey, HashKey)>,
    aggregator: Aggregator,
    limiter: Limiter,
    collector: Collector,
    retries: RetryQueue,
    backoff: Backoff,
    spreader: Option<Spreader>,
    /// Kinesis records leaving the aggregator (or re-entering after a backoff), bound
    /// for the limiter.
    staged: Vec<Outgoing>,
    /// User records to route again (survivors of a partly expired aggregate, records
    /// of an aggregate that landed where they do not belong, buffered records after a
    /// map change).
    rerouted: Vec<Pending>,
    /// User records waiting for the next shard map: the map does not cover their hash
    /// key (no shard given), or their aggregate landed on a shard the map does not hold
    /// (that shard given: unless the next map holds it, prediction cannot be trusted and
    /// they go out unaggregated).
    awaiting_map: Vec<(Pending, Option<Arc<str>>)>,
    /// Aggregates that landed on a shard the map does not know.
    landed_unknown: Vec<Landed>,
    in_flight: usize,
    in_flight_bytes: usize,
    max_in_flight_bytes: usize,
    connections: ConcurrencyLimit,
    /// Each call's timeout, from the latency of recent calls.
    timeouts: CallTimeouts,
    /// Bytes per call, lowered while calls are slow.
    call_size: CallSize,
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
    /// Buffer space of completed records, given back in bulk once per round.
    released: Released,
    inbox: Arc<Inbox>,
    /// Hash keys of recent partition keys.
    hash_keys: HashKeyCache,
    /// Ordered mode: the per-shard lanes between the aggregator and the limiter, and
    /// whether they wait for the calls in flight (after records were predicted again).
    lanes: Option<Lanes>,
    lanes_wait_for_calls: bool,
}

impl Pipeline {
    pub fn new(
        config: ProducerConfig,
        client: Client,
        stream: StreamId,
        map: ShardMap,
        shared: Arc<Shared>,
        inbox: Arc<Inbox>,
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
        let min_buffer = MIN_BUFFER_TIME.min(config.record_max_buffered_time / 2);
        let call_size = CallSize::new(
            config.collection_max_size,
            config.request_timeout,
            config.adaptive_request_timeout,
        );
        let config_ordered = config.ordered;
        let mut pipeline = Pipeline {
            metrics: Metrics::new(stream.as_str(), config.metrics_granularity),
            aggregator: Aggregator::new(config.aggregation_max_count, config.aggregation_max_size),
            limiter: Limiter::new(config.rate_limit),
            collector: Collector::new(config.collection_max_count, call_size.get(), min_buffer),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            spreader: config
                .hot_key_spread
                .clone()
                .map(|s| Spreader::new(s, config.aggregation_enabled, now)),
            retries: RetryQueue::default(),
            known_ranges: HashMap::new(),
            staged: Vec::new(),
            rerouted: Vec::new(),
            awaiting_map: Vec::new(),
            landed_unknown: Vec::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            max_in_flight_bytes: max_in_flight_bytes(&config),
            connections: ConcurrencyLimit::new(
                config.max_connections,
                config.adaptive_request_timeout,
            ),
            timeouts: CallTimeouts::new(
                config.request_timeout,
                config.record_ttl,
                config.adaptive_request_timeout,
            ),
            call_size,
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
            released: Released::default(),
            fast_path: Arc::new(AtomicBool::new(config.put_records_fast_path)),
            config,
            client,
            stream,
            map: ShardMap::default(),
            shared,
            inbox,
            hash_keys: HashKeyCache::default(),
            lanes: config_ordered.then(Lanes::default),
            lanes_wait_for_calls: false,
        };
        pipeline.set_map(map);
        pipeline
    }

    /// Runs until shut down (or until every handle is dropped) and everything accepted
    /// has completed.
    pub async fn run(mut self) {
        let mut handles_gone = false;
        let mut commands = Vec::new();
        loop {
            let now = Instant::now();
            self.advance(now);
            if (self.closing || handles_gone) && self.is_idle() {
                if self.take_commands(&mut commands, now) {
                    continue;
                }
                break;
            }
            let wake = self.next_wake(now);
            let inbox = self.inbox.clone();
            tokio::select! {
                () = inbox.wait(), if !handles_gone => {
                    handles_gone = self.inbox.take(&mut commands).handles_gone;
                    let now = Instant::now();
                    for command in commands.drain(..) {
                        self.handle(command, now);
                    }
                }
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

    /// Handles whatever the inbox holds; whether it held anything.
    fn take_commands(&mut self, commands: &mut Vec<Command>, now: Instant) -> bool {
        self.inbox.take(commands);
        let any = !commands.is_empty();
        for command in commands.drain(..) {
            self.handle(command, now);
        }
        any
    }

    /// `now`: when the batch holding the command was taken from the inbox, the arrival
    /// time of its records (one clock read per batch, not per record).
    fn handle(&mut self, command: Command, now: Instant) {
        match command {
            Command::Record(record) => self.accept(record, now),
            Command::Flush(reply) => self.flushes.push((self.tracker.next_id(), reply)),
            Command::Shutdown(reply) => {
                debug!(
                    stream = self.stream.as_str(),
                    aggregating = self.aggregator.len(),
                    rate_limited = self.limiter.len(),
                    collecting = self.collector.len(),
                    backing_off = self.retries.len(),
                    in_lanes = self.lanes.as_ref().map_or(0, Lanes::len),
                    in_flight = self.in_flight,
                    "producer shutting down: draining"
                );
                self.closing = true;
                self.shutdowns.push(reply);
            }
        }
    }

    fn accept(&mut self, record: Admitted, now: Instant) {
        let mut record = record.accept(self.tracker.add(now), now, &mut self.hash_keys);
        self.metrics.received();
        if let Some(spreader) = &mut self.spreader {
            if !record.user_hash_key {
                let size = record.size();
                if let Some(key) = spreader.route(&record.partition_key, size, record.arrived) {
                    record.set_explicit_hash_key(Some(key));
                }
            }
            let spread = spreader.take_newly_spread();
            if !spread.is_empty() {
                self.respread(&spread);
            }
        }
        self.route(record, false);
    }

    /// Spreads the buffered records of keys that just started being spread: those
    /// queued for their hot shard would otherwise keep it over its limits.
    fn respread(&mut self, keys: &std::collections::HashSet<String>) {
        let mut records = self.aggregator.drain_records();
        for queued in self.limiter.drain_all() {
            records.extend(queued.into_records());
        }
        let (spread, kept): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| keys.contains(&r.partition_key));
        let mut records = self.respread_records(spread);
        records.extend(kept);
        records.sort_by_key(|r| r.id);
        self.rerouted.extend(records);
    }

    /// Gives the records of spread keys their next target hash key.
    fn respread_records(&mut self, mut records: Vec<Pending>) -> Vec<Pending> {
        let Some(spreader) = &mut self.spreader else {
            return records;
        };
        for record in &mut records {
            if record.user_hash_key || !spreader.is_spread(&record.partition_key) {
                continue;
            }
            let target = spreader.next_target(&record.partition_key);
            record.set_explicit_hash_key(target);
        }
        records
    }

    /// Predicts the record's shard and hands it to the aggregator (or, unaggregated, to
    /// the limiter). A record the map cannot place waits for a fresh map; after one
    /// (`map_refreshed`) it goes out alone, through the limiter's shared queue.
    fn route(&mut self, record: Pending, map_refreshed: bool) {
        let deadline = record.arrived + self.config.record_max_buffered_time;
        match self.map.position_for(record.hash_key) {
            Some(slot) if self.config.aggregation_enabled => {
                let shard = &self.map.shards()[slot].id;
                self.aggregator
                    .add(slot, shard, record, deadline, &mut self.staged)
            }
            Some(slot) => {
                let shard = self.map.shards()[slot].id.clone();
                self.staged
                    .push(Outgoing::single(Some(shard), record, deadline))
            }
            None if map_refreshed => self.staged.push(Outgoing::single(None, record, deadline)),
            None => {
                self.want_refresh();
                self.awaiting_map.push((record, None));
            }
        }
    }

    /// Records below this id are forced out by a pending flush (everything when
    /// closing).
    fn force_before(&self) -> u64 {
        if self.closing {
            return u64::MAX;
        }
        self.flushes.iter().map(|(id, _)| *id).max().unwrap_or(0)
    }

    /// Moves records through every stage as far as they may go now.
    fn advance(&mut self, now: Instant) {
        if self.lanes.is_some() && !self.rerouted.is_empty() {
            self.predict_everything_again();
        }
        for record in std::mem::take(&mut self.rerouted) {
            self.route(record, false);
        }
        let force_before = self.force_before();
        // When an aggregate's buffering time is up a request goes out: the other open
        // aggregates ride along instead of each making its own request later.
        let deadline_hit = self.aggregator.next_deadline().is_some_and(|d| d <= now);
        self.aggregator
            .flush(now, force_before, deadline_hit, &mut self.staged);
        let mut retried = Vec::new();
        self.retries.pop_ready(now, &mut retried);
        for record in retried {
            if let Some(record) = self.expire(record, now) {
                self.staged.push(record);
            }
        }
        let staged = self.through_lanes(now);
        let mut allowed = Vec::new();
        for record in staged {
            self.limiter.push(record, now, &mut allowed);
        }
        self.limiter.drain(now, &mut allowed);
        for record in allowed {
            self.collector.push(record, now);
        }
        if deadline_hit {
            self.collector.send_now();
        }
        self.dispatch(now, force_before);
        self.maybe_refresh(now);

        // Buffer space first: a flush answered now must find it given back.
        self.shared.release(&mut self.released);
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

    /// Ordered mode: queues the staged records in their lanes and returns what the
    /// lanes release (without lanes: the staged records).
    fn through_lanes(&mut self, now: Instant) -> Vec<Outgoing> {
        let staged = std::mem::take(&mut self.staged);
        let Some(lanes) = &mut self.lanes else {
            return staged;
        };
        for record in staged {
            lanes.push(record);
        }
        if !self.lanes_may_release() {
            return Vec::new();
        }
        self.lanes_wait_for_calls = false;
        let mut released = Vec::new();
        if let Some(lanes) = &mut self.lanes {
            lanes.release(now, &mut released);
        }
        let mut kept = Vec::with_capacity(released.len());
        for record in released {
            let shard = record.shard.clone();
            match self.expire(record, now) {
                Some(record) => kept.push(record),
                None => {
                    if let Some(lanes) = &mut self.lanes {
                        lanes.returned(&shard);
                    }
                }
            }
        }
        kept
    }

    /// Ordered mode: whether lanes may release now. Not while a prediction failed and
    /// waits for a fresh map (an aggregate's landing is unresolved, or records wait to be
    /// predicted again: they are older than what the lanes hold), nor, after records were
    /// predicted again, while calls made with the old prediction are in flight (a record
    /// of theirs could land after a newer one).
    fn lanes_may_release(&self) -> bool {
        self.landed_unknown.is_empty()
            && self.awaiting_map.is_empty()
            && !(self.lanes_wait_for_calls && self.in_flight > 0)
    }

    /// Ordered mode: records must be predicted again (a reshard, an aggregate that
    /// landed where its records do not belong, survivors of an expiry). Everything not
    /// in flight is taken back and predicted again in arrival order, and the lanes wait
    /// for the calls in flight.
    fn predict_everything_again(&mut self) {
        let mut records = std::mem::take(&mut self.rerouted);
        records.extend(self.aggregator.drain_records());
        let released = self.limiter.drain_all().into_iter();
        for queued in released.chain(self.collector.drain_all()) {
            if let Some(lanes) = &mut self.lanes {
                lanes.returned(&queued.shard);
            }
            records.extend(queued.into_records());
        }
        if let Some(lanes) = &mut self.lanes {
            for waiting in lanes.drain_waiting() {
                records.extend(waiting.into_records());
            }
        }
        for staged in std::mem::take(&mut self.staged) {
            records.extend(staged.into_records());
        }
        records.sort_by_key(|r| r.id);
        self.rerouted = records;
        self.lanes_wait_for_calls = true;
    }

    fn can_dispatch(&self) -> bool {
        self.in_flight < self.connections.get()
            && (self.in_flight == 0 || self.in_flight_bytes < self.max_in_flight_bytes)
    }

    /// When the pipeline must look again, absent any message.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if !self.rerouted.is_empty() || !self.staged.is_empty() {
            return Some(now);
        }
        let refresh = (self.refresh.wanted && !self.refresh.running).then(|| self.next_refresh());
        let load = (self.tracker.len() > 0).then(|| self.load.window_end());
        let lanes = self.lanes.as_ref().and_then(|lanes| {
            if !self.lanes_may_release() {
                None
            } else if lanes.has_ready(now) {
                Some(now)
            } else {
                lanes.next_ready()
            }
        });
        let collector = self
            .can_dispatch()
            .then(|| self.collector.next_due())
            .flatten();
        [
            self.aggregator.next_deadline(),
            collector,
            self.limiter.next_ready(now),
            self.retries.next_ready(),
            refresh,
            load,
            lanes,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Fails the expired user records of `record`; returns it if none expired. Survivors
    /// of a partly expired aggregate are routed again.
    fn expire(&mut self, mut record: Outgoing, now: Instant) -> Option<Outgoing> {
        let ttl = self.config.record_ttl;
        if record.oldest + ttl > now {
            return Some(record);
        }
        let (expired, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut record.records)
            .into_iter()
            .partition(|r| record.arrival_of(r) + ttl <= now);
        self.metrics.expired(expired.len());
        self.shared.count_failed(expired.len());
        for mut user in expired {
            let attempts = user.all_attempts(&record.attempts);
            warn!(
                stream = self.stream.as_str(),
                partition_key = record.key_of(&user),
                attempts = attempts.len(),
                "user record expired"
            );
            self.metrics
                .completed(record.shard.as_ref(), attempts.len().saturating_sub(1));
            self.tracker.complete(user.id);
            let failed = RecordError::Expired {
                attempts,
                record: record.user_record(&user),
            };
            user.complete(Outcome::Failed(failed), &mut self.released);
        }
        record.records = alive;
        self.rerouted.extend(record.into_records());
        None
    }

    fn dispatch(&mut self, now: Instant, force_before: u64) {
        while self.can_dispatch() && self.collector.is_due(now, force_before) {
            let mut batch = Vec::new();
            for record in self.collector.take() {
                let shard = record.shard.clone();
                match self.expire(record, now) {
                    Some(record) => batch.push(record),
                    None => {
                        if let Some(lanes) = &mut self.lanes {
                            lanes.returned(&shard);
                        }
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let mut bytes = 0;
            for record in &batch {
                bytes += record.size();
                if record.attempts.is_empty() {
                    for user in record.records.iter().filter(|u| u.is_fresh()) {
                        self.metrics
                            .first_attempt(now.saturating_duration_since(record.arrival_of(user)));
                    }
                }
            }
            let call = Call {
                ticket: self.connections.started(),
                bytes,
                timeout: self.timeouts.timeout(bytes),
            };
            self.in_flight += 1;
            self.in_flight_bytes += bytes;
            self.shared.count_call();
            let client = self.client.clone();
            let stream = self.stream.clone();
            let fast_path = self.fast_path.clone();
            let done = self.done_tx.clone();
            let span = tracing::debug_span!(
                "put_records",
                stream = stream.as_str(),
                records = batch.len()
            );
            tokio::spawn(
                async move {
                    let outcome = put_records(&client, &stream, batch, call, &fast_path).await;
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
        self.in_flight_bytes -= done.call.bytes;
        let user_records = done.batch.iter().map(|r| r.records.len()).sum();
        if let Some(lanes) = &mut self.lanes {
            for record in &done.batch {
                lanes.returned(&record.shard);
            }
        }
        self.metrics
            .request(done.batch.len(), user_records, done.duration);
        self.learn(&done, user_records);
        let attempt = |error: Option<Arc<AttemptError>>| Attempt {
            started: done.started,
            duration: done.duration,
            error,
        };
        match done.result {
            Err(error) => {
                if !is_timeout(&error) {
                    warn!(
                        connections = self.connections.get(),
                        stream = self.stream.as_str(),
                        code = error.code.as_str(),
                        error = error.message.as_str(),
                        records = done.batch.len(),
                        "PutRecords failed"
                    );
                }
                for record in done.batch {
                    self.failed(record, attempt(Some(error.clone())), now);
                }
            }
            Ok(entries) => {
                let mut entries = entries.into_iter();
                // Records of one call that fail alike share one error.
                let mut last_error: Option<Arc<AttemptError>> = None;
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
                            self.succeeded(record, shard, sequence, attempt(None))
                        }
                        (code, _, _) => {
                            let code = code.unwrap_or("MissingResult");
                            let message = entry
                                .as_ref()
                                .and_then(|e| e.error_message())
                                .unwrap_or("PutRecords returned no result for the record");
                            let error = match &last_error {
                                Some(e) if e.code == code && e.message == message => e.clone(),
                                _ => AttemptError::new(code, message),
                            };
                            last_error = Some(error.clone());
                            self.failed(record, attempt(Some(error)), now);
                        }
                    }
                }
            }
        }
    }

    /// Adapts the calls in flight, their timeouts and their size to how a call went:
    /// answered (success or per-record errors) after its latency, or timed out (logged
    /// and counted). Other failures (throttling, errors the endpoint answered at once,
    /// broken connections) say nothing of its latency.
    fn learn(&mut self, done: &PutDone, user_records: usize) {
        let Call {
            ticket,
            bytes,
            timeout,
        } = done.call;
        let next = self.connections.next_ticket();
        match &done.result {
            Ok(_) => {
                if self.config.adaptive_request_timeout
                    && done.duration > self.config.request_timeout / 2
                {
                    self.connections.answered_slowly(ticket);
                } else {
                    self.connections.answered();
                }
                self.timeouts.answered(bytes, done.duration);
                self.call_size.answered(ticket, next, done.duration);
            }
            Err(error) if is_timeout(error) => {
                let estimate = self.timeouts.estimate(bytes);
                self.connections.timed_out(ticket);
                self.timeouts.timed_out(bytes, timeout);
                self.call_size.timed_out(ticket, next);
                self.metrics.timeout();
                self.shared.count_timeout();
                warn!(
                    stream = self.stream.as_str(),
                    bytes,
                    kinesis_records = done.batch.len(),
                    user_records,
                    timeout = ?timeout,
                    latency_estimate = ?estimate,
                    next_timeout = ?self.timeouts.timeout(bytes),
                    connections = self.connections.get(),
                    call_size = self.call_size.get(),
                    "PutRecords timed out; retrying its records (they may have landed)"
                );
            }
            Err(_) => return,
        }
        self.collector.set_max_size(self.call_size.get());
    }

    /// Whether every user record of `record` lies in the hash range of `shard`, if the
    /// range is known.
    fn all_inside(&self, record: &Outgoing, shard: &str) -> Option<bool> {
        let (start, end) = *self.known_ranges.get(shard)?;
        Some(
            record
                .records
                .iter()
                .all(|r| (start..=end).contains(&record.hash_key_of(r))),
        )
    }

    fn succeeded(
        &mut self,
        record: Outgoing,
        shard: Arc<str>,
        sequence: Arc<str>,
        attempt: Attempt,
    ) {
        if record.shard.as_ref().is_some_and(|p| *p != shard) {
            self.want_refresh();
            if record.is_aggregate() {
                match self.all_inside(&record, &shard) {
                    Some(true) => {}
                    Some(false) => return self.resend(record, &shard, &sequence, attempt),
                    None => {
                        self.landed_unknown.push(Landed {
                            record,
                            shard,
                            sequence,
                            attempt,
                        });
                        return;
                    }
                }
            }
        }
        self.deliver(record, shard, sequence, attempt);
    }

    /// Completes the user records of a Kinesis record that reached `shard`.
    fn deliver(
        &mut self,
        mut record: Outgoing,
        shard: Arc<str>,
        sequence: Arc<str>,
        attempt: Attempt,
    ) {
        record.attempts.push(attempt);
        let aggregated = record.is_aggregate();
        let size = record.size();
        let user_bytes = record.records.iter().map(Carried::size).sum();
        self.load.put(&shard, record.records.len(), size);
        if let Some(spreader) = &mut self.spreader {
            spreader.put(&shard, size);
        }
        self.metrics
            .kinesis_record_put(&shard, record.records.len(), user_bytes, size);
        self.shared.count_put(record.records.len());
        // One outcome for the user records that made every attempt together.
        let delivered = Arc::new(Delivered {
            shard_id: shard.clone(),
            sequence_number: sequence,
            aggregated,
            attempts: Arc::from(record.attempts.as_slice()),
        });
        let retries = record.attempts.len() - 1;
        for (index, mut user) in record.records.drain(..).enumerate() {
            self.tracker.complete(user.id);
            // Below 2^32: an aggregate is at most 10 MiB.
            let sub_sequence_number = if aggregated { index as u32 } else { 0 };
            let delivered = if user.is_fresh() {
                self.metrics.completed(Some(&shard), retries);
                delivered.clone()
            } else {
                let attempts = user.all_attempts(&record.attempts);
                self.metrics.completed(Some(&shard), attempts.len() - 1);
                Arc::new(Delivered {
                    shard_id: delivered.shard_id.clone(),
                    sequence_number: delivered.sequence_number.clone(),
                    aggregated,
                    attempts: Arc::from(attempts),
                })
            };
            user.complete(
                Outcome::Delivered(delivered, sub_sequence_number),
                &mut self.released,
            );
        }
    }

    /// An aggregate landed on `shard`, which does not hold all its user records:
    /// consumers drop it whole, so every user record of it is sent again, predicted,
    /// aggregated and rate limited like a new one.
    fn resend(&mut self, mut record: Outgoing, shard: &Arc<str>, sequence: &str, attempt: Attempt) {
        warn!(
            stream = self.stream.as_str(),
            predicted = record.shard.as_deref().unwrap_or(""),
            actual = &**shard,
            "aggregate landed on a shard that does not hold all its records; resending them"
        );
        let error = AttemptError::new(
            WRONG_SHARD,
            format!(
                "aggregate predicted for {} landed on {shard} ({sequence}), whose hash range \
                 does not hold all its user records: consumers drop it",
                record.shard.as_deref().unwrap_or("")
            ),
        );
        self.metrics.error(Some(shard), WRONG_SHARD);
        self.shared.count_failed_attempt();
        record.attempts.push(Attempt {
            error: Some(error),
            ..attempt
        });
        self.reroute_after_wrong_shard(record.into_records(), shard);
    }

    /// Routes again the records of an aggregate that landed on `shard`: at once when the
    /// map holds that shard (it is up to date), else after the next map.
    fn reroute_after_wrong_shard(&mut self, records: Vec<Pending>, shard: &Arc<str>) {
        if self.map.get(shard).is_some() {
            self.rerouted.extend(records);
        } else {
            self.want_refresh();
            self.awaiting_map
                .extend(records.into_iter().map(|r| (r, Some(shard.clone()))));
        }
    }

    fn failed(&mut self, mut record: Outgoing, attempt: Attempt, now: Instant) {
        let Some(error) = attempt.error.clone() else {
            return;
        };
        self.shared.count_failed_attempt();
        self.metrics.error(record.shard.as_ref(), &error.code);
        let throttled = error.kind() == kinesis_errors::ErrorKind::Throttled;
        if throttled {
            if let Some(shard) = &record.shard {
                self.load.throttled(shard);
                if let Some(spreader) = &mut self.spreader {
                    spreader.throttled(shard);
                }
            }
        }
        record.attempts.push(attempt);
        if error.kind().is_permanent() && !self.config.retry_permanent_errors {
            return self.fail(record, |attempts, record| RecordError::Rejected {
                attempts,
                record,
            });
        }
        if throttled && self.config.fail_if_throttled {
            return self.fail(record, |attempts, record| RecordError::Throttled {
                attempts,
                record,
            });
        }
        if throttled && self.holds_spread_keys(&record) {
            // A spread key's records go wherever the spread sends them now rather than
            // back to the shard that throttled them.
            let records = record.into_records();
            let records = self.respread_records(records);
            self.rerouted.extend(records);
            return;
        }
        record.failures += 1;
        let expires = record.oldest + self.config.record_ttl;
        let at = (now + self.backoff.delay(record.failures)).min(expires);
        match &mut self.lanes {
            // First in its lane again: nothing newer of its shard goes before it.
            Some(lanes) => lanes.push_retry(record, at),
            None => self.retries.push(at, record),
        }
    }

    /// Whether `record` carries records of a key being spread (and not placed by the
    /// user's own hash key).
    fn holds_spread_keys(&self, record: &Outgoing) -> bool {
        self.spreader.as_ref().is_some_and(|spreader| {
            record
                .records
                .iter()
                .any(|r| !r.user_hash_key() && spreader.is_spread(record.key_of(r)))
        })
    }

    /// Fails every user record of `record` with the error `make` builds from its
    /// attempts and the record given back.
    fn fail(
        &mut self,
        mut record: Outgoing,
        make: impl Fn(Vec<Attempt>, Box<Record>) -> RecordError,
    ) {
        self.shared.count_failed(record.records.len());
        for mut user in std::mem::take(&mut record.records) {
            self.tracker.complete(user.id);
            let attempts = user.all_attempts(&record.attempts);
            self.metrics
                .completed(record.shard.as_ref(), attempts.len().saturating_sub(1));
            let failed = make(attempts, record.user_record(&user));
            user.complete(Outcome::Failed(failed), &mut self.released);
        }
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

    /// Adopts a map; returns whether it differs from the current one.
    fn set_map(&mut self, map: ShardMap) -> bool {
        for shard in map.shards() {
            self.known_ranges
                .entry(shard.id.clone())
                .or_insert((shard.start, shard.end));
        }
        if map == self.map {
            return false;
        }
        if let Some(spreader) = &mut self.spreader {
            spreader.set_map(&map);
        }
        self.map = map;
        true
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
                if self.set_map(map) {
                    debug!(
                        stream = self.stream.as_str(),
                        shards = self.map.shards().len(),
                        "shard map updated"
                    );
                    // Buffered records were predicted with the old map: predict them again.
                    let mut records = self.aggregator.drain_records();
                    for queued in self.limiter.drain_all() {
                        if let Some(lanes) = &mut self.lanes {
                            lanes.returned(&queued.shard);
                        }
                        records.extend(queued.into_records());
                    }
                    records.sort_by_key(|r| r.id);
                    self.rerouted.extend(records);
                }
            }
            Err(error) => {
                self.refresh.failures += 1;
                self.refresh.wanted = true;
                warn!(stream = self.stream.as_str(), %error, "shard map refresh failed");
            }
        }
        // Aggregates that landed on a shard unknown before: delivered if the shard holds
        // all their records, resent otherwise (also when the shard is still unknown).
        for landed in std::mem::take(&mut self.landed_unknown) {
            let Landed {
                mut record,
                shard,
                sequence,
                attempt,
            } = landed;
            if self.all_inside(&record, &shard) == Some(true) {
                self.deliver(record, shard, sequence, attempt);
                continue;
            }
            let error = AttemptError::new(
                WRONG_SHARD,
                format!(
                    "aggregate landed on {shard} ({sequence}), a shard whose hash range is \
                     unknown or does not hold all its user records: consumers drop it"
                ),
            );
            self.metrics.error(Some(&shard), WRONG_SHARD);
            self.shared.count_failed_attempt();
            record.attempts.push(Attempt {
                error: Some(error),
                ..attempt
            });
            for user in record.into_records() {
                self.awaiting_map.push((user, Some(shard.clone())));
            }
        }
        for (record, landed) in std::mem::take(&mut self.awaiting_map) {
            if self.lanes.is_some() {
                // Ordered mode: predicted again with everything held, in arrival order,
                // once the map knows the shard they landed on (else a newer record could
                // overtake them); until then the lanes wait.
                match landed {
                    Some(shard) if self.map.get(&shard).is_none() => {
                        self.want_refresh();
                        self.awaiting_map.push((record, Some(shard)));
                    }
                    _ => self.rerouted.push(record),
                }
                continue;
            }
            match landed {
                None => self.route(record, true),
                Some(shard) if self.map.get(&shard).is_some() => self.route(record, false),
                // The map still does not know the shard the stream put them on: send them
                // alone, where Kinesis routes each by its own hash key.
                Some(_) => {
                    let deadline = record.arrived + self.config.record_max_buffered_time;
                    self.staged.push(Outgoing::single(None, record, deadline));
                }
            }
        }
    }
}

/// Data that PutRecords calls in flight may carry at once. A call's body is written in
/// chunks as it is sent (the fast path, see `request`), but through the SDK's serializer
/// (fast path off or refused) a call holds a copy of its payloads and a base64 JSON body
/// on top of `max_outstanding_bytes`: an eighth of it (at least one full call) bounds
/// that cost either way.
fn max_in_flight_bytes(config: &ProducerConfig) -> usize {
    (config.max_outstanding_bytes / 8).max(config.collection_max_size)
}

impl Drop for Pipeline {
    /// However the pipeline ends (a panic included), `send` must not wait for buffer
    /// space that records it drops will never give back, and records left in the inbox
    /// are abandoned.
    fn drop(&mut self) {
        self.shared.close();
        self.inbox.close();
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a call failed because it timed out.
fn is_timeout(error: &AttemptError) -> bool {
    error.code == "Timeout"
}

/// The per-call part of the client's configuration: the call's attempt timeout (the
/// orchestrator merges it over the client's timeout settings, connect timeout included).
fn call_config(timeout: Duration) -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(timeout)
            .build(),
    )
}

/// Whether an SDK error is the fast path's refusal of a request shape it does not know.
fn fast_path_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    kinesis_errors::causes(error).any(|e| e.downcast_ref::<FastPathRefused>().is_some())
}

/// The PutRecords call through the SDK's serializer (the fast path off or refused).
async fn put_records_serialized(
    client: &Client,
    stream: &StreamId,
    batch: &[Outgoing],
    timeout: Duration,
) -> Result<Vec<PutRecordsResultEntry>, Arc<AttemptError>> {
    let entries = batch
        .iter()
        .map(|record| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(record.encoded.data.to_vec()))
                .partition_key(&record.encoded.partition_key)
                .set_explicit_hash_key(record.encoded.explicit_hash_key.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AttemptError::new("Construction", e.to_string()))?;
    stream
        .put_records(client)
        .set_records(Some(entries))
        .customize()
        .config_override(call_config(timeout))
        .send()
        .await
        .map(|output| output.records)
        .map_err(|e| request_error(&e))
}

async fn put_records(
    client: &Client,
    stream: &StreamId,
    batch: Vec<Outgoing>,
    call: Call,
    fast_path: &AtomicBool,
) -> PutDone {
    let started = SystemTime::now();
    let clock = Instant::now();
    let result = if fast_path.load(Ordering::Relaxed) {
        let body = crate::request::PutRecordsBody::new(stream, &batch);
        // The SDK serializes an empty record list; the producer's body replaces it before
        // signing (see `request`), if the request is the one it is written for.
        let sent = stream
            .put_records(client)
            .set_records(Some(Vec::new()))
            .customize()
            .config_override(call_config(call.timeout))
            .interceptor(crate::request::UseBody::new(body))
            .send()
            .await;
        match sent {
            Err(error) if fast_path_refused(&error) => {
                // Nothing was sent: every later call goes through the SDK's serializer.
                if fast_path.swap(false, Ordering::Relaxed) {
                    metrics::fast_path_fallback(stream.as_str());
                    tracing::debug!(
                        stream = stream.as_str(),
                        error = %kinesis_errors::ErrorChain::new(&error).verbose(),
                        "PutRecords fast path off: the SDK's serializer writes the calls"
                    );
                }
                put_records_serialized(client, stream, &batch, call.timeout).await
            }
            sent => sent
                .map(|output| output.records)
                .map_err(|e| request_error(&e)),
        }
    } else {
        put_records_serialized(client, stream, &batch, call.timeout).await
    };
    PutDone {
        batch,
        call,
        started,
        duration: clock.elapsed(),
        result,
    }
}
