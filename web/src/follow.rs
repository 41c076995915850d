//! Standalone mode: a thread that mirrors the Redis cache (key layout at the top of
//! `sinks/src/redis.rs`) into a [`LiveState`], so that the standalone server answers and
//! pushes exactly as the embedded one does.
//!
//! It subscribes to `P:analyses`; each notification names the analyses that changed. The
//! names are collected and applied at most every 100 ms: the changed analysis hashes are
//! read again whole (`HGETALL`), and the recent set from the newest score seen on
//! (`ZREVRANGEBYSCORE … LIMIT 0 500`, then one `HMGET` of the new members' JSON records
//! from `P:tx`). Without notifications it polls `P:time` every second and re-reads everything
//! when it moved (a missed notification, a cache rebuilt while we were away). Any error
//! drops both connections, marks Redis down on the health panel, and retries every second.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisResult};
use serde_json::Value;

use vtpga_dataflow::analyses::{key_from_parts, AnalysisKey, Tally, NAMES};

use crate::state::{LiveState, RECENT_LIMIT};

const COALESCE: Duration = Duration::from_millis(100);
const POLL: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

pub fn spawn(
    state: Arc<LiveState>,
    client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vtpga-web-redis".into())
        .spawn(move || {
            let mut follower = Follower {
                state,
                prefix,
                last_score: None,
                last_time: None,
            };
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = follower.run(&client, &stop) {
                    log::warn!("dashboard: Redis: {e}");
                    follower.state.set_redis(false, Some(e.to_string()));
                    follower.last_score = None;
                    std::thread::sleep(RETRY);
                }
            }
        })
}

struct Follower {
    state: Arc<LiveState>,
    prefix: String,
    /// The newest recent-set score read so far.
    last_score: Option<f64>,
    last_time: Option<u64>,
}

impl Follower {
    fn run(&mut self, client: &Client, stop: &AtomicBool) -> RedisResult<()> {
        let mut conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut sub = client.get_connection_with_timeout(IO_TIMEOUT)?;
        let mut pubsub = sub.as_pubsub();
        pubsub.subscribe(format!("{}:analyses", self.prefix))?;
        pubsub.set_read_timeout(Some(COALESCE))?;
        self.refresh(&mut conn, NAMES.iter().copied().collect())?;
        self.state.set_redis(true, None);
        let mut pending: BTreeSet<&'static str> = BTreeSet::new();
        let mut last_refresh = Instant::now();
        let mut last_poll = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    pending.extend(changed_names(&payload));
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
            if !pending.is_empty() && last_refresh.elapsed() >= COALESCE {
                self.refresh(&mut conn, std::mem::take(&mut pending))?;
                last_refresh = Instant::now();
                last_poll = last_refresh;
            } else if pending.is_empty() && last_poll.elapsed() >= POLL {
                let time: Option<u64> = redis::cmd("GET")
                    .arg(format!("{}:time", self.prefix))
                    .query(&mut conn)?;
                if time != self.last_time {
                    self.refresh(&mut conn, NAMES.iter().copied().collect())?;
                    last_refresh = Instant::now();
                }
                last_poll = Instant::now();
            }
        }
        Ok(())
    }

    /// Re-reads the named analyses, the new recent transactions and the time.
    fn refresh(&mut self, conn: &mut Connection, names: BTreeSet<&'static str>) -> RedisResult<()> {
        for name in names {
            let fields: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(format!("{}:analysis:{name}", self.prefix))
                .query(conn)?;
            let rows: Vec<(AnalysisKey, Tally)> = fields
                .iter()
                .filter_map(|(field, v)| {
                    let (k, minute) = field.rsplit_once('|')?;
                    let key = key_from_parts(name, k, minute.parse().ok()?)?;
                    let row: Value = serde_json::from_str(v).ok()?;
                    Some((key, tally_of(name, &row)))
                })
                .collect();
            self.state.replace_analysis(name, rows);
        }
        let recent = format!("{}:recent", self.prefix);
        let members: Vec<(String, f64)> = match self.last_score {
            None => redis::cmd("ZREVRANGE")
                .arg(&recent)
                .arg(0)
                .arg(RECENT_LIMIT - 1)
                .arg("WITHSCORES")
                .query(conn)?,
            Some(s) => redis::cmd("ZREVRANGEBYSCORE")
                .arg(&recent)
                .arg("+inf")
                .arg(s)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(RECENT_LIMIT)
                .query(conn)?,
        };
        if let Some((_, s)) = members.first() {
            self.last_score = Some(self.last_score.map_or(*s, |l| l.max(*s)));
        }
        if !members.is_empty() {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(format!("{}:tx", self.prefix));
            for (m, _) in members.iter().rev() {
                hmget.arg(m);
            }
            let cached: Vec<Option<String>> = hmget.query(conn)?;
            // A member the sink has just pushed out is gone: skipped.
            let records: Vec<(String, Value)> = members
                .iter()
                .rev()
                .zip(cached)
                .filter_map(|((m, _), json)| Some((m.clone(), serde_json::from_str(&json?).ok()?)))
                .collect();
            self.state.add_records(records);
        }
        let time: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:time", self.prefix))
            .query(conn)?;
        if let Some(t) = time {
            self.state.set_closed_time(t);
        }
        self.last_time = time;
        Ok(())
    }
}

/// The names in a `{"time": t, "changed": [...]}` notification (all ten if unreadable).
fn changed_names(payload: &str) -> Vec<&'static str> {
    let parsed: Option<Vec<String>> = serde_json::from_str::<Value>(payload)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("changed")?.clone()).ok());
    match parsed {
        Some(names) => NAMES
            .iter()
            .copied()
            .filter(|n| names.iter().any(|x| x == n))
            .collect(),
        None => NAMES.to_vec(),
    }
}

/// The tally behind a SPEC row as cached (enough to render the same row again).
pub fn tally_of(name: &str, row: &Value) -> Tally {
    let g = |f: &str| row.get(f).and_then(Value::as_i64).unwrap_or(0);
    // Amount sums are 128-bit (SPEC §7): read from the number's text.
    let sum = |f: &str| -> i128 {
        row.get(f)
            .and_then(|v| v.as_number())
            .and_then(|n| n.to_string().parse().ok())
            .unwrap_or(0)
    };
    match name {
        "status_counts" | "minute_frequency" => Tally {
            count: g("count"),
            ..Tally::default()
        },
        "insufficient_funds" => Tally {
            count: g("count"),
            rejected: g("count"),
            rejected_amount_cents: sum("amount_cents"),
            ..Tally::default()
        },
        _ => Tally {
            count: g("approved") + g("rejected"),
            approved: g("approved"),
            rejected: g("rejected"),
            approved_amount_cents: sum("approved_amount_cents"),
            rejected_amount_cents: sum("rejected_amount_cents"),
        },
    }
}
