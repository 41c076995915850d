//! The Kafka source (SPEC §4): the partitions of the transactions topic, assigned to the
//! workers of all processes deterministically, read with `assign` (no consumer-group
//! rebalancing, no auto-commit) and merged into one non-decreasing stream of arrival
//! times per worker.
//!
//! * `t` = the record timestamp made non-decreasing per partition, in offset order; the
//!   source position is (partition, offset).
//! * A partition that has reached its end (partition EOF) and holds nothing buffered would
//!   otherwise stall every other partition's time. Its time advances with the wall clock
//!   minus `idle_slack_ms`; a message that arrives later with an older timestamp has its
//!   `t` raised to that time, and is counted in [`KafkaStats::raised`].
//! * Buffering is bounded: each partition has its own librdkafka queue, and a partition
//!   whose buffer here is full is not polled until it drains; librdkafka then stops
//!   fetching it once its own queue holds `queued.max.messages.kbytes`. The operator
//!   upstream stops polling altogether while the graph is behind. (librdkafka's
//!   pause/resume is not used: against tansu it lost and repeated messages.)
//! * A source position seen again (offset below the next expected one) is dropped.
//! * Broker outages (SPEC §10 "no clock stops a partition", and none runs ahead of what
//!   the broker holds): an idle partition's time follows the wall clock only while the
//!   broker answers. When librdkafka reports the broker gone, idle floors stop where they
//!   were; a probe thread asks the broker for its watermarks until it answers; after it
//!   is back, floors stay put for as long as the outage lasted (at most
//!   `outage_grace_ms`), so producers that buffered records meanwhile deliver them before
//!   any idle partition's time passes their timestamps (else they would come back late).
//! * Clock guard (SPEC §4): a record stamped more than `max_clock_skew_ms` ahead of the
//!   wall clock when it is read is not trusted. It is decided `invalid` ("record timestamp
//!   ahead of the clock") at its partition's previous `t` (the wall clock if there is
//!   none), does not move the partition's `t`, and is counted in [`KafkaStats::guarded`]:
//!   one producer with a wrong clock cannot hold a partition's time a year ahead.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use vtpga_dataflow::graph::{Body, Incoming};
use vtpga_dataflow::{now_us, SourcePos, Time};

use crate::replay::owner;
use crate::source::{Feed, Polled};

/// Where a partition starts when no stored offset is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest offset the broker still holds.
    Earliest,
    /// The end of the partition: only records produced from then on.
    Latest,
}

impl std::str::FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            _ => Err(format!("expected `earliest` or `latest`, not {s:?}")),
        }
    }
}

/// How a worker's consumer is set up.
#[derive(Clone, Debug)]
pub struct KafkaSourceConfig {
    /// librdkafka client settings (bootstrap.servers, group.id and any `-X key=value`).
    pub client: Vec<(String, String)>,
    /// The transactions topic (SPEC §3 `transacoes` by default).
    pub topic: String,
    /// The control topic (SPEC §11 `transacoes-controle`), if live changes are read.
    pub control_topic: Option<String>,
    /// The next offset to read per control partition, where known.
    pub control_offsets: HashMap<i32, i64>,
    /// The last arrival time given per control partition before a restart.
    pub control_last_t: HashMap<i32, Time>,
    /// Where a partition without a stored offset starts.
    pub start: StartFrom,
    /// The next offset to read per partition, where known (stored offsets win over `start`).
    pub offsets: HashMap<i32, i64>,
    /// The last arrival time given per partition before a restart (the SPEC §4 clamp).
    pub last_t: HashMap<i32, Time>,
    /// Every message gets at least this arrival time: after a restart, one past the
    /// committed cut (all earlier times are closed and recorded).
    pub min_t: Time,
    /// How far behind the wall clock an idle, caught-up partition's time is held.
    pub idle_slack_ms: u64,
    /// End the feed once every assigned partition has reached its end (tests, backfills).
    pub exit_at_eof: bool,
    /// How many offsets before a stored offset a resumed partition starts reading (the
    /// records before the stored offset are dropped as re-deliveries). Zero is right for
    /// Apache Kafka; tansu answers a fetch from inside a record batch with the NEXT batch,
    /// so resuming exactly at a stored offset would skip the rest of its batch.
    pub resume_rewind: i64,
    /// Messages buffered per partition before it is no longer polled.
    pub max_buffered: usize,
    /// After a broker outage, idle partitions' times stay where they were for as long
    /// as the outage lasted, at most this (producers' buffered records land first).
    pub outage_grace_ms: u64,
    /// The clock guard (SPEC §4): a record timestamp more than this ahead of the wall
    /// clock is not trusted.
    pub max_clock_skew_ms: u64,
}

/// Counters shared by all workers of a process, read by the status line.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Messages whose time had to be raised above their clamped record timestamp because
    /// their partition's time had advanced with the wall clock while it was idle.
    pub raised: AtomicU64,
    /// Consumer lag (high watermark of the latest fetch − next offset to take), summed over
    /// partitions, per local worker.
    pub lag: Vec<AtomicI64>,
    /// Times a partition was held (not polled) because its buffer was full.
    pub paused: AtomicU64,
    /// Records dropped because their source position had already been taken.
    pub redelivered: AtomicU64,
    /// Offsets the broker skipped: a record arrived beyond the next expected offset.
    pub skipped: AtomicU64,
    /// Records decided `invalid` by the clock guard (timestamp too far ahead, SPEC §4).
    pub guarded: AtomicU64,
}

impl KafkaStats {
    /// Zeroed counters, with a lag slot (unknown, −1) for each of `workers` local workers.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(KafkaStats {
            lag: (0..workers).map(|_| AtomicI64::new(-1)).collect(),
            ..KafkaStats::default()
        })
    }

    /// Total consumer lag over this process's workers: `None` until a fetch has reported a
    /// high watermark, and for sources that have no lag (the generator).
    pub fn total_lag(&self) -> Option<i64> {
        let mut known = false;
        let mut sum = 0;
        for l in &self.lag {
            let v = l.load(Ordering::Relaxed);
            if v >= 0 {
                known = true;
                sum += v;
            }
        }
        known.then_some(sum)
    }
}

/// The consumer's context: partition EOF is expected, not an error worth logging.
pub struct LagContext {
    health: Arc<BrokerHealth>,
}

/// Whether the broker answers, as librdkafka's errors and the outage probe tell.
#[derive(Debug, Default)]
pub struct BrokerHealth {
    /// Wall-clock ms since which the broker has not answered; 0 while it does.
    down_since_ms: AtomicU64,
    /// Idle floors may not pass this (ms) before `hold_until_ms`: set when an outage ends.
    hold_at_ms: AtomicU64,
    hold_until_ms: AtomicU64,
    /// Outages seen (status line).
    pub outages: AtomicU64,
}

impl BrokerHealth {
    fn went_down(&self, now: Time) {
        if self
            .down_since_ms
            .compare_exchange(0, now.max(1), Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.outages.fetch_add(1, Ordering::Relaxed);
            log::warn!("kafka: the broker is unreachable; idle partitions' times are held");
        }
    }

    fn came_back(&self, now: Time, grace_ms: u64) {
        let since = self.down_since_ms.swap(0, Ordering::SeqCst);
        if since > 0 {
            let lasted = now.saturating_sub(since);
            self.hold_at_ms.store(since, Ordering::SeqCst);
            self.hold_until_ms
                .store(now + lasted.min(grace_ms), Ordering::SeqCst);
            log::warn!("kafka: the broker answers again after {lasted} ms");
        }
    }

    /// The latest time an idle partition's floor may take now, given `wanted`.
    fn floor_limit(&self, now: Time, wanted: Time) -> Time {
        let since = self.down_since_ms.load(Ordering::SeqCst);
        if since > 0 {
            return wanted.min(since.saturating_sub(1));
        }
        if now < self.hold_until_ms.load(Ordering::SeqCst) {
            return wanted.min(self.hold_at_ms.load(Ordering::SeqCst).saturating_sub(1));
        }
        wanted
    }

    /// Whether the broker is currently unreachable (an outage has begun and not ended).
    pub fn is_down(&self) -> bool {
        self.down_since_ms.load(Ordering::SeqCst) > 0
    }
}

impl ClientContext for LagContext {
    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure};
        if matches!(
            error.rdkafka_error_code(),
            Some(AllBrokersDown | BrokerTransportFailure)
        ) {
            self.health.went_down(now_ms());
        }
        // End of partition is expected (it is how an idle partition is recognised).
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            log::error!("kafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for LagContext {}

/// A librdkafka client configuration holding exactly `settings`, in order.
pub fn client_config(settings: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in settings {
        config.set(k, v);
    }
    config
}

/// The number of partitions of `topic`, from the broker's metadata.
pub fn partition_count(
    settings: &[(String, String)],
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = client_config(settings).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let topic_md =
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            ))?;
    if let Some(e) = topic_md.error() {
        return Err(KafkaError::MetadataFetch(e.into()));
    }
    Ok(topic_md.partitions().len() as i32)
}

/// The partitions worker `index` of `peers` reads: the same rule as replay's.
pub fn partitions_for(partitions: i32, index: usize, peers: usize) -> Vec<i32> {
    (0..partitions)
        .filter(|&p| owner(p, peers) == index)
        .collect()
}

fn now_ms() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Time)
        .unwrap_or(0)
}

struct PartitionState {
    partition: i32,
    /// A partition of the control topic (its records are control records, SPEC §11).
    control: bool,
    /// The last `t` given to a message of this partition (the SPEC §4 clamp).
    last_t: Time,
    /// The time promised while idle: no later message gets a `t` below it.
    floor: Time,
    buffer: VecDeque<Incoming>,
    /// The partition has been read to its end (partition EOF, or the high watermark of
    /// the latest fetch reached).
    eof: bool,
    held: bool,
    /// The offset after the last message taken (−1 before the first).
    next_offset: i64,
    queue: Option<rdkafka::consumer::base_consumer::PartitionQueue<LagContext>>,
}

impl PartitionState {
    /// No future message of this partition will have a smaller `t`.
    fn frontier(&self) -> Time {
        match self.buffer.front() {
            Some(m) => m.t,
            None => self.last_t.max(self.floor),
        }
    }
}

/// The settings of a worker's consumer: the operator's, with what the source relies on.
fn consumer_config(config: &KafkaSourceConfig) -> ClientConfig {
    let mut cc = client_config(&config.client);
    // An offset out of range (a rewind below the log start) reads from the start.
    if cc.get("auto.offset.reset").is_none() {
        cc.set("auto.offset.reset", "earliest");
    }
    cc.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    // A caught-up consumer must hear of new records at once: a fetch that waits for data
    // holds the partition's time back for as long as it waits.
    if cc.get("fetch.wait.max.ms").is_none() {
        cc.set("fetch.wait.max.ms", "5");
    }
    if cc.get("group.id").is_none() {
        cc.set("group.id", "vtpga");
    }
    cc
}

/// Creates (and drops) a consumer with the workers' settings: a setting librdkafka
/// refuses is reported here, before the workers start, rather than in a worker.
pub fn check_consumer_settings(config: &KafkaSourceConfig) -> Result<(), KafkaError> {
    let _consumer: BaseConsumer = consumer_config(config).create()?;
    Ok(())
}

/// One worker's share of the topic.
pub struct KafkaFeed {
    consumer: Option<Arc<BaseConsumer<LagContext>>>,
    topic: String,
    control_topic: String,
    parts: Vec<PartitionState>,
    idle_slack_ms: u64,
    exit_at_eof: bool,
    max_buffered: usize,
    max_clock_skew_ms: u64,
    health: Arc<BrokerHealth>,
    /// Ends the outage probe thread when the feed goes.
    probe_stop: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<KafkaStats>,
    /// This worker's slot in `stats.lag`.
    slot: usize,
}

impl KafkaFeed {
    /// Assigns `partitions` of the topic, and `control_partitions` of the control topic,
    /// to a new consumer for local worker `slot`.
    pub fn new(
        config: &KafkaSourceConfig,
        partitions: &[i32],
        control_partitions: &[i32],
        stats: Arc<KafkaStats>,
        slot: usize,
    ) -> Result<Self, KafkaError> {
        let control_topic = config.control_topic.clone().unwrap_or_default();
        let state = |partition: i32, control: bool| {
            let (offsets, last_t) = if control {
                (&config.control_offsets, &config.control_last_t)
            } else {
                (&config.offsets, &config.last_t)
            };
            PartitionState {
                partition,
                control,
                last_t: last_t.get(&partition).copied().unwrap_or(0),
                floor: config.min_t,
                buffer: VecDeque::new(),
                eof: false,
                held: false,
                next_offset: offsets.get(&partition).copied().unwrap_or(-1),
                queue: None,
            }
        };
        let controls = if config.control_topic.is_some() {
            control_partitions
        } else {
            &[]
        };
        let mut parts: Vec<PartitionState> = partitions
            .iter()
            .map(|&p| state(p, false))
            .chain(controls.iter().map(|&p| state(p, true)))
            .collect();
        let health = Arc::new(BrokerHealth::default());
        let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let consumer = if parts.is_empty() {
            None
        } else {
            let consumer: BaseConsumer<LagContext> =
                consumer_config(config).create_with_context(LagContext {
                    health: health.clone(),
                })?;
            let mut tpl = TopicPartitionList::new();
            let topic_of = |p: &PartitionState| {
                if p.control {
                    control_topic.clone()
                } else {
                    config.topic.clone()
                }
            };
            for p in &parts {
                let stored = if p.control {
                    &config.control_offsets
                } else {
                    &config.offsets
                };
                let offset = match stored.get(&p.partition) {
                    Some(&o) => Offset::Offset((o - config.resume_rewind.max(0)).max(0)),
                    None => match config.start {
                        StartFrom::Earliest => Offset::Beginning,
                        StartFrom::Latest => Offset::End,
                    },
                };
                tpl.add_partition_offset(&topic_of(p), p.partition, offset)?;
            }
            consumer.assign(&tpl)?;
            let consumer = Arc::new(consumer);
            for p in &mut parts {
                let topic = topic_of(p);
                p.queue = consumer.split_partition_queue(&topic, p.partition);
                if p.queue.is_none() {
                    return Err(KafkaError::Subscription(format!(
                        "no queue for partition {} of {}",
                        p.partition, topic
                    )));
                }
            }
            spawn_outage_probe(
                consumer.clone(),
                topic_of(&parts[0]),
                parts[0].partition,
                health.clone(),
                config.outage_grace_ms,
                probe_stop.clone(),
            );
            Some(consumer)
        };
        Ok(KafkaFeed {
            consumer,
            topic: config.topic.clone(),
            control_topic,
            parts,
            idle_slack_ms: config.idle_slack_ms,
            exit_at_eof: config.exit_at_eof,
            max_buffered: config.max_buffered.max(1),
            max_clock_skew_ms: config.max_clock_skew_ms,
            health,
            probe_stop,
            stats,
            slot,
        })
    }

    /// Takes what librdkafka has fetched into the partition buffers, polling each
    /// partition's own queue unless its buffer is full.
    fn fill(&mut self, budget: usize) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        // Serves the client's events (statistics, errors); messages go to partition queues.
        while let Some(event) = consumer.poll(Duration::ZERO) {
            if let Err(e) = event {
                log::warn!("kafka consumer: {e}");
            }
        }
        let share = (budget / self.parts.len()).max(1);
        let mut lag = 0i64;
        for part in &mut self.parts {
            if part.buffer.len() >= self.max_buffered {
                if !part.held {
                    part.held = true;
                    self.stats.paused.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            part.held = false;
            let room = share.min(self.max_buffered - part.buffer.len());
            let Some(queue) = part.queue.take() else {
                continue;
            };
            for _ in 0..room {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(msg)) => take(
                        part,
                        Record {
                            offset: msg.offset(),
                            timestamp: msg.timestamp().to_millis(),
                            payload: msg.payload(),
                        },
                        Guard {
                            now_ms: now_ms(),
                            max_skew_ms: self.max_clock_skew_ms,
                        },
                        &self.stats,
                    ),
                    Some(Err(KafkaError::PartitionEOF(_))) => part.eof = true,
                    Some(Err(e)) => {
                        log::warn!("kafka partition {}: {e}", part.partition);
                        break;
                    }
                }
            }
            part.queue = Some(queue);
            // A partition whose messages have all been taken, up to the high watermark
            // its latest fetch reported, is caught up now: waiting for librdkafka's
            // partition-EOF event would cost another (empty) fetch round trip.
            let topic = if part.control {
                &self.control_topic
            } else {
                &self.topic
            };
            if let Some(high) = cached_high_watermark(consumer, topic, part.partition) {
                if part.next_offset >= 0 {
                    lag += (high - part.next_offset).max(0);
                    if part.next_offset >= high {
                        part.eof = true;
                    }
                }
            }
        }
        if let Some(slot) = self.stats.lag.get(self.slot) {
            slot.store(lag, Ordering::Relaxed);
        }
    }
}

/// While the broker is reported down, asks it for a partition's watermarks every 200 ms
/// (a broker round trip, on a thread of its own so the worker never blocks); the first
/// answer ends the outage.
fn spawn_outage_probe(
    consumer: Arc<BaseConsumer<LagContext>>,
    topic: String,
    partition: i32,
    health: Arc<BrokerHealth>,
    grace_ms: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let spawned = std::thread::Builder::new()
        .name("kafka-outage-probe".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if health.is_down()
                    && consumer
                        .fetch_watermarks(&topic, partition, Duration::from_secs(1))
                        .is_ok()
                {
                    health.came_back(now_ms(), grace_ms);
                }
            }
        });
    if let Err(e) = spawned {
        // Without the probe an outage is never seen to end: floors would stay held.
        log::error!("kafka: cannot start the outage probe: {e}");
    }
}

impl Drop for KafkaFeed {
    fn drop(&mut self) {
        self.probe_stop.store(true, Ordering::Relaxed);
    }
}

/// What [`take`] needs of a consumed record (a librdkafka message, or a test's).
struct Record<'a> {
    offset: i64,
    /// The record timestamp in ms, if it has one.
    timestamp: Option<i64>,
    /// The value; `None` for a record without one (decided `invalid`, SPEC §9).
    payload: Option<&'a [u8]>,
}

/// The clock guard's view of the wall clock when a record is read (SPEC §4).
#[derive(Clone, Copy)]
struct Guard {
    now_ms: Time,
    max_skew_ms: u64,
}

/// The error of a record the clock guard refuses (SPEC §4).
pub const CLOCK_GUARD_ERROR: &str = "record timestamp ahead of the clock";

/// Buffers one record of `part` at its arrival time.
fn take(part: &mut PartitionState, msg: Record<'_>, guard: Guard, stats: &KafkaStats) {
    if msg.offset < part.next_offset {
        stats.redelivered.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if part.next_offset >= 0 && msg.offset > part.next_offset {
        // Legitimate after compaction or transaction markers; data loss otherwise.
        let gap = (msg.offset - part.next_offset) as u64;
        if stats.skipped.fetch_add(gap, Ordering::Relaxed) == 0 {
            log::warn!(
                "partition {}: the broker skipped offsets {}..{}",
                part.partition,
                part.next_offset,
                msg.offset
            );
        }
    }
    let record_ts = msg.timestamp.map(|ms| ms.max(0) as Time).unwrap_or(0);
    let pos = SourcePos {
        partition: part.partition,
        offset: msg.offset,
    };
    part.eof = false;
    part.next_offset = msg.offset + 1;
    if record_ts > guard.now_ms.saturating_add(guard.max_skew_ms) {
        // Decided at the partition's previous t (the wall clock if there is none); the
        // partition's own t stays where it was. The floor keeps this partition's times
        // non-decreasing for the merge.
        stats.guarded.fetch_add(1, Ordering::Relaxed);
        let previous = if part.last_t > 0 {
            part.last_t
        } else {
            guard.now_ms
        };
        let t = previous.max(part.floor);
        part.floor = t;
        let raw = msg.payload.unwrap_or_default().to_vec();
        let error = CLOCK_GUARD_ERROR.to_owned();
        part.buffer.push_back(Incoming {
            pos,
            t,
            ingest_us: now_us(),
            body: if part.control {
                Body::ControlRefused { raw, error }
            } else {
                Body::Refused { raw, error }
            },
        });
        return;
    }
    let clamped = record_ts.max(part.last_t);
    let t = clamped.max(part.floor);
    if t > clamped {
        stats.raised.fetch_add(1, Ordering::Relaxed);
    }
    part.last_t = t;
    part.buffer.push_back(Incoming {
        pos,
        t,
        ingest_us: now_us(),
        body: match (msg.payload, part.control) {
            (Some(payload), false) => Body::Raw(payload.to_vec()),
            (Some(payload), true) => Body::Control(payload.to_vec()),
            // As replay decides a capture line whose payload is null.
            (None, false) => Body::Refused {
                raw: Vec::new(),
                error: crate::capture::NO_VALUE.to_owned(),
            },
            (None, true) => Body::ControlRefused {
                raw: Vec::new(),
                error: crate::capture::NO_VALUE.to_owned(),
            },
        },
    });
}

/// The high watermark librdkafka cached from the latest fetch response of a partition
/// (no broker round trip), if it knows one.
fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime; the topic is a
    // NUL-terminated string that outlives the call; low and high are valid out-pointers.
    // rd_kafka_get_watermark_offsets only reads librdkafka's own cached state.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Idle partitions (read to their end, nothing buffered) promise no message below
/// `idle_floor` from now on.
fn raise_idle_floors(parts: &mut [PartitionState], idle_floor: Time) {
    for part in parts {
        if part.eof && part.buffer.is_empty() && idle_floor > part.floor {
            part.floor = idle_floor;
        }
    }
}

/// Moves up to `max` buffered messages to `out` in non-decreasing `t` across partitions:
/// a message goes once no partition can still deliver anything earlier (a partition with
/// nothing buffered bounds the others by its frontier). Returns how many went.
fn merge(parts: &mut [PartitionState], out: &mut Vec<Incoming>, max: usize) -> usize {
    let mut given = 0;
    while given < max {
        let mut best: Option<(Time, usize)> = None;
        let mut bound = Time::MAX;
        for (i, part) in parts.iter().enumerate() {
            match part.buffer.front() {
                Some(m) => {
                    if best.is_none_or(|(t, _)| m.t < t) {
                        best = Some((m.t, i));
                    }
                }
                None => bound = bound.min(part.frontier()),
            }
        }
        let Some((t, i)) = best else { break };
        if t > bound {
            break;
        }
        let part = &mut parts[i];
        while given < max {
            match part.buffer.front() {
                Some(m) if m.t == t => {
                    out.push(part.buffer.pop_front().expect("front exists"));
                    given += 1;
                }
                _ => break,
            }
        }
    }
    given
}

impl Feed for KafkaFeed {
    fn poll(&mut self, out: &mut Vec<Incoming>, max: usize) -> Polled {
        if self.parts.is_empty() {
            return Polled::Done;
        }
        self.fill(max.max(1));
        // Idle partitions that have caught up follow the wall clock, minus the slack, while
        // the broker answers (and not past an outage until its producers caught up).
        let now = now_ms();
        let idle_floor = self
            .health
            .floor_limit(now, now.saturating_sub(self.idle_slack_ms));
        raise_idle_floors(&mut self.parts, idle_floor);
        let given = merge(&mut self.parts, out, max);
        if self.exit_at_eof && self.parts.iter().all(|p| p.eof && p.buffer.is_empty()) {
            return Polled::Done;
        }
        let frontier = self
            .parts
            .iter()
            .map(PartitionState::frontier)
            .min()
            .unwrap_or(0);
        Polled::Open {
            frontier,
            idle: given == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_spread_over_all_workers() {
        let mut seen: Vec<i32> = (0..3).flat_map(|w| partitions_for(8, w, 3)).collect();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert_eq!(partitions_for(8, 1, 3), vec![1, 4, 7]);
        assert!(partitions_for(2, 3, 4).is_empty());
    }

    fn partition(last_t: Time) -> PartitionState {
        PartitionState {
            partition: 3,
            control: false,
            last_t,
            floor: 0,
            buffer: VecDeque::new(),
            eof: true,
            held: false,
            next_offset: -1,
            queue: None,
        }
    }

    /// A buffered message of partition `p` at offset `o` and time `t`.
    fn buffered(p: i32, o: i64, t: Time) -> Incoming {
        Incoming {
            pos: SourcePos {
                partition: p,
                offset: o,
            },
            t,
            ingest_us: 0,
            body: Body::Raw(Vec::new()),
        }
    }

    /// Partitions with these buffered (offset, t), none at its end.
    fn parts(buffers: &[&[(i64, Time)]]) -> Vec<PartitionState> {
        buffers
            .iter()
            .enumerate()
            .map(|(p, msgs)| {
                let mut part = partition(0);
                part.partition = p as i32;
                part.eof = false;
                part.buffer = msgs
                    .iter()
                    .map(|&(o, t)| buffered(p as i32, o, t))
                    .collect();
                if let Some(&(o, t)) = msgs.last() {
                    part.last_t = t;
                    part.next_offset = o + 1;
                }
                part
            })
            .collect()
    }

    fn given(out: &[Incoming]) -> Vec<(i32, i64, Time)> {
        out.iter()
            .map(|m| (m.pos.partition, m.pos.offset, m.t))
            .collect()
    }

    /// SPEC §4's ledger order needs the feed's messages in non-decreasing `t` across its
    /// partitions; each partition's keep their offset order.
    #[test]
    fn merge_gives_messages_in_time_order_across_partitions() {
        let mut ps = parts(&[&[(0, 5), (1, 9), (2, 9)], &[(0, 3), (1, 9), (2, 12)]]);
        let mut out = Vec::new();
        assert_eq!(merge(&mut ps, &mut out, 100), 5);
        assert_eq!(
            given(&out),
            vec![(1, 0, 3), (0, 0, 5), (0, 1, 9), (0, 2, 9), (1, 1, 9)]
        );
        // t = 12 waits: partition 0, not at its end, may still send t = 9.
        ps[0].last_t = 12;
        assert_eq!(merge(&mut ps, &mut out, 100), 1);
        assert_eq!(given(&out)[5], (1, 2, 12));
    }

    /// A message waits while a partition with nothing buffered could still deliver an
    /// earlier one; an idle partition at its end raised to the idle floor lets it go.
    #[test]
    fn merge_waits_for_a_partition_that_could_deliver_earlier() {
        let mut ps = parts(&[&[(0, 10), (1, 20)], &[]]);
        ps[1].last_t = 4;
        let mut out = Vec::new();
        assert_eq!(
            merge(&mut ps, &mut out, 100),
            0,
            "partition 1 may still send t = 4"
        );
        ps[1].last_t = 15;
        assert_eq!(merge(&mut ps, &mut out, 100), 1);
        assert_eq!(given(&out), vec![(0, 0, 10)]);
        // Read to its end: the wall-clock floor (minus the slack) raises it, unless it
        // still has messages buffered.
        ps[1].eof = true;
        raise_idle_floors(&mut ps, 25);
        assert_eq!(ps[1].floor, 25);
        assert_eq!(
            ps[0].floor, 0,
            "a partition with messages buffered keeps its floor"
        );
        raise_idle_floors(&mut ps, 20);
        assert_eq!(ps[1].floor, 25, "a floor never moves back");
        assert_eq!(merge(&mut ps, &mut out, 100), 1);
        assert_eq!(given(&out), vec![(0, 0, 10), (0, 1, 20)]);
    }

    /// At most `max` per call; the rest stays buffered, in order, for the next.
    #[test]
    fn merge_gives_at_most_max() {
        let mut ps = parts(&[&[(0, 1), (1, 1), (2, 1)], &[(0, 2)]]);
        let mut out = Vec::new();
        assert_eq!(merge(&mut ps, &mut out, 2), 2);
        assert_eq!(merge(&mut ps, &mut out, 2), 1);
        // Partition 0 is empty now and may still send t = 1: t = 2 waits for its end.
        assert_eq!(merge(&mut ps, &mut out, 2), 0);
        ps[0].eof = true;
        raise_idle_floors(&mut ps, 2);
        assert_eq!(merge(&mut ps, &mut out, 2), 1);
        assert_eq!(
            given(&out),
            vec![(0, 0, 1), (0, 1, 1), (0, 2, 1), (1, 0, 2)]
        );
    }

    fn record(offset: i64, ts: i64) -> Record<'static> {
        Record {
            offset,
            timestamp: Some(ts),
            payload: Some(b"{}"),
        }
    }

    const GUARD: Guard = Guard {
        now_ms: 1_000_000,
        max_skew_ms: 60_000,
    };

    /// SPEC §4 clock guard: a record a year ahead is refused at the partition's previous
    /// t and does not move it; the next ordinary record is clamped as if it had not come.
    #[test]
    fn clock_guard_refuses_a_record_far_ahead_without_moving_the_partition() {
        let stats = KafkaStats::default();
        let mut part = partition(0);
        take(&mut part, record(0, 999_000), GUARD, &stats);
        let year = 365 * 24 * 3_600_000;
        take(&mut part, record(1, 1_000_000 + year), GUARD, &stats);
        take(&mut part, record(2, 999_500), GUARD, &stats);
        // Exactly at the allowed skew is still trusted.
        take(&mut part, record(3, 1_060_000), GUARD, &stats);
        let got: Vec<(i64, Time, bool)> = part
            .buffer
            .iter()
            .map(|m| (m.pos.offset, m.t, matches!(m.body, Body::Refused { .. })))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 999_000, false),
                (1, 999_000, true),
                (2, 999_500, false),
                (3, 1_060_000, false)
            ]
        );
        assert_eq!(stats.guarded.load(Ordering::Relaxed), 1);
        assert_eq!(stats.raised.load(Ordering::Relaxed), 0);
        match &part.buffer[1].body {
            Body::Refused { error, raw } => {
                assert_eq!(error, CLOCK_GUARD_ERROR);
                assert_eq!(raw, b"{}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A guarded record with no earlier record in its partition is decided at the wall
    /// clock (SPEC §4), and later records are not given an earlier t.
    #[test]
    fn clock_guard_without_a_previous_t_uses_the_wall_clock() {
        let stats = KafkaStats::default();
        let mut part = partition(0);
        take(&mut part, record(0, i64::MAX), GUARD, &stats);
        take(&mut part, record(1, 999_990), GUARD, &stats);
        let times: Vec<Time> = part.buffer.iter().map(|m| m.t).collect();
        assert_eq!(times, vec![1_000_000, 1_000_000]);
        assert_eq!(part.last_t, 1_000_000);
        assert_eq!(stats.raised.load(Ordering::Relaxed), 1);
    }

    /// SPEC §10 / issue 12 item 7: while the broker is down, idle floors stay where they
    /// were; after it is back they stay there for as long as the outage lasted (at most the
    /// grace), then follow the wall clock again.
    #[test]
    fn idle_floors_hold_while_the_broker_is_away_and_for_its_grace() {
        let h = BrokerHealth::default();
        assert_eq!(h.floor_limit(1_000, 995), 995);
        h.went_down(1_000);
        h.went_down(1_500);
        assert!(h.is_down());
        assert_eq!(h.floor_limit(5_000, 4_995), 999);
        assert_eq!(h.outages.load(Ordering::Relaxed), 1);
        h.came_back(5_000, 10_000);
        assert!(!h.is_down());
        // The outage lasted 4 s: floors are held until 9 s.
        assert_eq!(h.floor_limit(8_999, 8_994), 999);
        assert_eq!(h.floor_limit(9_000, 8_995), 8_995);
        // A long outage is held for the grace only.
        h.went_down(10_000);
        h.came_back(100_000, 2_000);
        assert_eq!(h.floor_limit(101_999, 101_994), 9_999);
        assert_eq!(h.floor_limit(102_000, 101_995), 101_995);
    }

    #[test]
    fn start_from_parses() {
        assert_eq!("earliest".parse::<StartFrom>(), Ok(StartFrom::Earliest));
        assert_eq!("latest".parse::<StartFrom>(), Ok(StartFrom::Latest));
        assert!("newest".parse::<StartFrom>().is_err());
    }
}
