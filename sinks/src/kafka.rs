//! Decisions back to the bank's applications (SPEC §8 record as JSON on the decisions
//! topic, keyed by transaction id) and invalid messages to the dead-letter topic (the raw
//! payload as value; the error, source partition and offset as headers).
//!
//! Each record carries a `decided_us` header: the wall-clock µs when its batch reached the
//! producer, so a reader can measure decision latency from the source record's timestamp.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use vtpga_dataflow::graph::Decision;
use vtpga_dataflow::Status;

use crate::monitor::now_us;
use crate::Batch;
use vtpga_dataflow::graph::{ControlOutcome, OutcomeKind};
use vtpga_dataflow::record::DecisionRecord;

/// The `topic` header of a control record's dead letter (SPEC §11): the dead-letter
/// topic holds both transaction messages (no `topic` header) and control records.
pub const CONTROL_TOPIC_HEADER: &str = "transacoes-controle";

/// Delivery outcomes, counted by librdkafka's delivery callbacks.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Records (decisions and dead letters) the broker acknowledged.
    pub delivered: AtomicU64,
    /// Records whose delivery failed for good (the first ten are logged).
    pub failed: AtomicU64,
}

/// The batch number of records nobody waits for.
const UNTRACKED: usize = usize::MAX;

/// Records handed to librdkafka and not yet delivered (or failed for good), by the
/// sequence number of the batch they belong to.
#[derive(Debug, Default)]
struct Outstanding {
    by_batch: Mutex<BTreeMap<u64, u64>>,
    settled: Condvar,
}

/// The producer's context: counts deliveries in [`DeliveryStats`] and settles the batches
/// that [`DecisionProducer::wait_delivered`] waits for.
pub struct DeliveryContext {
    stats: Arc<DeliveryStats>,
    outstanding: Arc<Outstanding>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// The sequence number of the record's batch.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, batch: usize) {
        if batch != UNTRACKED {
            let mut by_batch = self.outstanding.by_batch.lock().expect("outstanding");
            if let Some(n) = by_batch.get_mut(&(batch as u64)) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_batch.remove(&(batch as u64));
                    self.outstanding.settled.notify_all();
                }
            }
        }
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.stats.failed.fetch_add(1, Ordering::Relaxed) < 10 {
                    log::error!("producing a decision failed: {e}");
                }
            }
        }
    }
}

/// Topic names for the outputs.
#[derive(Clone, Debug)]
pub struct OutputTopics {
    /// The decisions topic: one SPEC §8 decision record per message, keyed by transaction id.
    pub decisions: String,
    /// The dead-letter topic: the raw payload of each invalid message.
    pub dlq: String,
}

/// Produces every batch's decisions and dead letters to the [`OutputTopics`].
pub struct DecisionProducer {
    producer: ThreadedProducer<DeliveryContext>,
    topics: OutputTopics,
    /// Delivery outcomes so far.
    pub stats: Arc<DeliveryStats>,
    outstanding: Arc<Outstanding>,
}

impl DecisionProducer {
    /// A producer with the settings of `config`, plus the defaults the outputs need
    /// (no delivery timeout, 1 ms linger, 10 MB messages) where `config` does not set them.
    pub fn new(config: ClientConfig, topics: OutputTopics) -> Result<Self, KafkaError> {
        let config = producer_defaults(config);
        let stats = Arc::new(DeliveryStats::default());
        let outstanding = Arc::new(Outstanding::default());
        let producer = config.create_with_context(DeliveryContext {
            stats: stats.clone(),
            outstanding: outstanding.clone(),
        })?;
        Ok(DecisionProducer {
            producer,
            topics,
            stats,
            outstanding,
        })
    }

    /// Produces every decision of the batch (and every invalid message to the DLQ).
    /// Waits while librdkafka's queue is full (backpressure), never drops.
    /// `seq` numbers the batch for [`DecisionProducer::wait_delivered`]; `None` when
    /// nobody will wait for it.
    pub fn send_batch(&self, batch: &Batch, seq: Option<u64>) -> Result<(), KafkaError> {
        let Some(seq) = seq else {
            let mut json = Vec::with_capacity(512);
            let (decided, ts) = Self::decided_now();
            for d in &batch.decisions {
                self.send_decision(d, &decided, ts, UNTRACKED, &mut json)
                    .1?;
            }
            for c in &batch.controls {
                self.send_rejected_control(c, ts, UNTRACKED)?;
            }
            return Ok(());
        };
        let (decided, ts) = Self::decided_now();
        let records = batch.decisions.len()
            + batch
                .decisions
                .iter()
                .filter(|d| d.status == Status::Invalid)
                .count()
            + batch
                .controls
                .iter()
                .filter(|c| matches!(c.kind, OutcomeKind::Rejected { .. }))
                .count();
        if records > 0 {
            *self
                .outstanding
                .by_batch
                .lock()
                .expect("outstanding")
                .entry(seq)
                .or_default() += records as u64;
        }
        let mut json = Vec::with_capacity(512);
        let mut sent = 0;
        let mut result = Ok(());
        for d in &batch.decisions {
            let (n, outcome) = self.send_decision(d, &decided, ts, seq as usize, &mut json);
            sent += n;
            if let Err(e) = outcome {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            for c in &batch.controls {
                match self.send_rejected_control(c, ts, seq as usize) {
                    Ok(n) => sent += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if sent < records {
            // What was not handed over will never be delivered: not waited for.
            let mut by_batch = self.outstanding.by_batch.lock().expect("outstanding");
            if let Some(n) = by_batch.get_mut(&seq) {
                *n = n.saturating_sub((records - sent) as u64);
                if *n == 0 {
                    by_batch.remove(&seq);
                }
            }
            self.outstanding.settled.notify_all();
        }
        result
    }

    /// Waits, however long the broker is away, until every record of the batches numbered
    /// up to `seq` is delivered (or refused for good: counted in `stats.failed`). Called
    /// before the PostgreSQL commit of batch `seq`: once a cut is committed (and so never
    /// decided again after a restart), its decisions and dead letters are on their topics.
    /// Later batches, sent meanwhile, are not waited for.
    pub fn wait_delivered(&self, seq: u64) {
        let mut by_batch = self.outstanding.by_batch.lock().expect("outstanding");
        let mut waited = 0u32;
        while by_batch.first_key_value().is_some_and(|(s, _)| *s <= seq) {
            let (guard, timeout) = self
                .outstanding
                .settled
                .wait_timeout(by_batch, Duration::from_secs(1))
                .expect("outstanding");
            by_batch = guard;
            if timeout.timed_out() {
                waited += 1;
                if waited % 10 == 1 {
                    log::warn!(
                        "waiting for the broker to take {} decision record(s)",
                        self.in_flight()
                    );
                }
            }
        }
    }

    /// The `decided_us` header and record timestamp of a batch: the whole batch was
    /// decided when it reached this thread, so one clock read.
    fn decided_now() -> (String, i64) {
        let now = now_us();
        (now.to_string(), (now / 1000) as i64)
    }

    /// Sends the decision (and its dead letter) as part of batch `seq`; returns how many
    /// records were handed over (also when the dead letter then failed: the decision's
    /// delivery is still awaited) and whether all were.
    fn send_decision(
        &self,
        d: &Decision,
        decided: &str,
        ts: i64,
        seq: usize,
        json: &mut Vec<u8>,
    ) -> (usize, Result<(), KafkaError>) {
        json.clear();
        serde_json::to_writer(&mut *json, &DecisionRecord::of(d))
            .expect("a decision record always serializes");
        let headers = record_headers(&[("decided_us", decided)]);
        let key = d.tx.as_ref().map(|tx| tx.id.as_str());
        let mut record = BaseRecord::with_opaque_to(&self.topics.decisions, seq)
            .payload(&json[..])
            .headers(headers)
            .timestamp(ts);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Err(e) = send_with_backpressure(&self.producer, record) {
            return (0, Err(e));
        }
        if d.status == Status::Invalid {
            let error = d.reason.as_deref().unwrap_or("invalid");
            let partition = d.pos.partition.to_string();
            let offset = d.pos.offset.to_string();
            let t = d.t.to_string();
            let headers = record_headers(&[
                ("error", error),
                ("partition", &partition),
                ("offset", &offset),
                ("t", &t),
            ]);
            let raw: &[u8] = d.raw.as_deref().unwrap_or_default();
            let record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.topics.dlq, seq)
                    .payload(raw)
                    .headers(headers)
                    .timestamp(ts);
            if let Err(e) = send_with_backpressure(&self.producer, record) {
                // The decision was handed over.
                log::error!("producing a dead letter: {e}");
                return (1, Err(e));
            }
            return (2, Ok(()));
        }
        (1, Ok(()))
    }

    /// Sends a control record that changed nothing (SPEC §11) to the dead-letter topic,
    /// with its error, topic, position and arrival time as headers; returns how many
    /// records were handed over (0 for any other outcome).
    fn send_rejected_control(
        &self,
        c: &ControlOutcome,
        ts: i64,
        seq: usize,
    ) -> Result<usize, KafkaError> {
        let OutcomeKind::Rejected { raw, error } = &c.kind else {
            return Ok(0);
        };
        let partition = c.pos.partition.to_string();
        let offset = c.pos.offset.to_string();
        let t = c.t.to_string();
        let headers = record_headers(&[
            ("error", error),
            ("topic", CONTROL_TOPIC_HEADER),
            ("partition", &partition),
            ("offset", &offset),
            ("t", &t),
        ]);
        let record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topics.dlq, seq)
                .payload(&raw[..])
                .headers(headers)
                .timestamp(ts);
        send_with_backpressure(&self.producer, record)?;
        Ok(1)
    }

    /// Waits until everything produced so far is delivered (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Messages handed to librdkafka and not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Record headers with these (key, value) pairs, in order.
fn record_headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs
        .iter()
        .fold(OwnedHeaders::new(), |headers, &(key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// The producer settings the decisions and dead letters need, unless given: see the
/// comments on each.
fn producer_defaults(mut config: ClientConfig) -> ClientConfig {
    if config.get("linger.ms").is_none() {
        config.set("linger.ms", "1");
    }
    // No decision is dropped because a timeout expired (SPEC §10): librdkafka retries
    // delivery until the broker is back, its queue fills and `send_batch` waits
    // (backpressure up to the graph). 0 = no timeout.
    if config.get("message.timeout.ms").is_none() {
        config.set("message.timeout.ms", "0");
    }
    // A DLQ record carries the raw payload, which may be as large as the broker let in.
    if config.get("message.max.bytes").is_none() {
        config.set("message.max.bytes", "10000000");
    }
    config
}

/// Sends `record`, waiting while the local queue is full. Any other error is returned.
pub fn send_with_backpressure<'a, K, P, C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
    C: ProducerContext + 'static,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §10 "nothing is dropped because a timeout expired" (issue 12 item 4): no
    /// delivery timeout unless the operator sets one.
    #[test]
    fn decisions_never_time_out_unless_asked_to() {
        let config = producer_defaults(ClientConfig::new());
        assert_eq!(config.get("message.timeout.ms"), Some("0"));
        let mut given = ClientConfig::new();
        given.set("message.timeout.ms", "5000");
        assert_eq!(
            producer_defaults(given).get("message.timeout.ms"),
            Some("5000")
        );
    }
}
