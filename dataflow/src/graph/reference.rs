//! The reference data (users, regions) as arrangements replicated on every worker, and
//! [`RefIndex`], a worker's hash index over one of them for the operators that read it.

use compact_str::CompactString;

// Per-worker maps keyed by ids: a fast hasher (their iteration order is never used).
use foldhash::{HashMap, HashMapExt};

use differential_dataflow::operators::arrange::arrangement::arrange_core;
use differential_dataflow::trace::cursor::Cursor;
use differential_dataflow::trace::implementations::{ValBatcher, ValSpine};
use differential_dataflow::trace::SpanOf;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Broadcast;
use timely::progress::frontier::Antichain;

use crate::model::Time;

use super::*;

/// Arranges the reference data: regions by id, and users joined with their home region
/// by id. A user whose home region is unknown is not in the arrangement (SPEC §6 needs it).
pub fn arrange_reference<'s>(
    regions: VecCollection<'s, Time, RegionRow, i64>,
    users: VecCollection<'s, Time, UserRow, i64>,
) -> (RefArranged<'s, RegionVal>, RefArranged<'s, UserVal>) {
    // Reference data is small and read by every message, so every worker arranges all of
    // it: `Decide` reads payer, payee and region where the payer's state is, with no
    // exchange, and a keyed collection joined with it (the analyses' region tallies)
    // still meets each key exactly once.
    let regions = replicated(regions, "ArrangeRegions");
    let users_by_region = replicated(
        users.map(|(id, region, balance, limit)| (region, (id, balance, limit))),
        "ArrangeUsersByRegion",
    );
    let users =
        users_by_region.join_core(regions.clone(), |_region, (id, balance, limit), home| {
            Some((
                id.clone(),
                UserVal {
                    home: home.geo,
                    balance_cents: *balance,
                    credit_limit_cents: *limit,
                },
            ))
        });
    // The join ran on every worker over all the data: arrange its output where it is.
    let users = arrange_core::<
        _,
        _,
        ValBatcher<String, UserVal, Time, i64>,
        ValSpine<String, UserVal, Time, i64>,
    >(users.inner, Pipeline, "ArrangeUsers", ValBatcher::new);
    (regions, users)
}

/// Arranges a keyed collection in full on every worker.
pub(super) fn replicated<'s, V: differential_dataflow::ExchangeData>(
    collection: VecCollection<'s, Time, (String, V), i64>,
    name: &str,
) -> RefArranged<'s, V> {
    arrange_core::<_, _, ValBatcher<String, V, Time, i64>, ValSpine<String, V, Time, i64>>(
        collection.inner.broadcast(),
        Pipeline,
        name,
        ValBatcher::new,
    )
}

/// A cursor over all of a reference trace's batches, with the batches it reads.
pub(super) type RefCursor<V> = (
    differential_dataflow::trace::cursor::CursorList<
        <<RefTrace<V> as TraceReader>::Batch as differential_dataflow::trace::Navigable>::Cursor,
    >,
    Vec<<RefTrace<V> as TraceReader>::Batch>,
);

/// A key's entry in a [`RefIndex`]: its current reference value, if it has one, and the
/// runtime state the reading operator keeps for it (users: balance and credit).
pub(super) struct Slot<V, S> {
    val: Option<V>,
    state: S,
}

/// A worker's view of a replicated reference arrangement: a hash index of its contents
/// (refreshed whenever the arrangement publishes updates) for queries at or after its
/// latest update, and the trace itself for older queries (only possible while reference
/// data is changing). Each key's slot also holds the operator's state for that key, so
/// one probe finds both; refreshing the values keeps the states.
pub(super) struct RefIndex<V: differential_dataflow::ExchangeData, S = ()> {
    trace: RefTrace<V>,
    /// Ids up to 24 bytes are stored inline, so a probe compares keys without a pointer chase.
    index: HashMap<CompactString, Slot<V, S>>,
    latest: Option<Time>,
    stale: bool,
    /// The reader will ask nothing more: the trace is released, and no longer read.
    released: bool,
}

impl<V: differential_dataflow::ExchangeData, S: Default> RefIndex<V, S> {
    pub(super) fn new(trace: RefTrace<V>) -> Self {
        RefIndex {
            trace,
            index: HashMap::new(),
            latest: None,
            stale: true,
            released: false,
        }
    }

    /// Notes batches the arrangement published.
    pub(super) fn observe(&mut self, spans: &[SpanOf<RefTrace<V>>]) {
        self.stale |= spans.iter().any(|span| span.has_updates());
    }

    pub(super) fn cursor(&mut self) -> RefCursor<V> {
        let mut upper = Antichain::new();
        self.trace.read_upper(&mut upper);
        let batches = self
            .trace
            .batches_through(upper.borrow())
            .unwrap_or_default();
        differential_dataflow::trace::cursor::cursor_list(batches)
    }

    /// Reloads the current values if the arrangement changed since the last load.
    pub(super) fn refresh(&mut self) {
        // A released trace may not be read (differential asserts it), and nothing would
        // read the values: the reference data can still be arriving when the reader is
        // done (its message input closed first).
        if !self.stale || self.released {
            return;
        }
        for slot in self.index.values_mut() {
            slot.val = None;
        }
        self.latest = None;
        let (mut cursor, storage) = self.cursor();
        while let Some(k) = cursor.get_key(&storage) {
            while let Some(v) = cursor.get_val(&storage) {
                let mut count = 0i64;
                let latest = &mut self.latest;
                cursor.map_times(&storage, |time, diff| {
                    count += *diff;
                    *latest = (*latest).max(Some(*time));
                });
                if count > 0 {
                    match self.index.get_mut(k.as_str()) {
                        Some(slot) => slot.val = Some(v.clone()),
                        None => {
                            self.index.insert(
                                CompactString::from(k.as_str()),
                                Slot {
                                    val: Some(v.clone()),
                                    state: S::default(),
                                },
                            );
                        }
                    }
                }
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        self.stale = false;
    }

    /// The value of `key` as of time `t`, read from the trace (for `t` before the latest
    /// update, when the index's current values do not apply).
    pub(super) fn value_at(&mut self, key: &str, t: Time) -> Option<V> {
        let (mut cursor, storage) = self.cursor();
        let key = key.to_owned();
        cursor.seek_key(&storage, &key);
        if cursor.get_key(&storage) != Some(&key) {
            return None;
        }
        while let Some(v) = cursor.get_val(&storage) {
            let mut count = 0i64;
            cursor.map_times(&storage, |time, diff| {
                if *time <= t {
                    count += *diff;
                }
            });
            if count > 0 {
                return Some(v.clone());
            }
            cursor.step_val(&storage);
        }
        None
    }

    /// `read` of the value of `key` as of time `t`; the caller has seen the arrangement's
    /// frontier pass `t`.
    pub(super) fn get<R>(&mut self, key: &str, t: Time, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.refresh();
        if self.latest.is_none_or(|latest| latest <= t) {
            return self.index.get(key)?.val.as_ref().map(read);
        }
        self.value_at(key, t).as_ref().map(read)
    }

    /// The value of `key` as of time `t` with the state kept for it: one probe when the
    /// current values apply. `None` (and no slot made) for a key without a value at `t`.
    pub(super) fn get_with_state(&mut self, key: &str, t: Time) -> Option<(V, &mut S)>
    where
        V: Copy,
    {
        self.refresh();
        if self.latest.is_none_or(|latest| latest <= t) {
            let slot = self.index.get_mut(key)?;
            return Some((slot.val?, &mut slot.state));
        }
        let val = self.value_at(key, t)?;
        Some((val, self.state_of(key)))
    }

    /// The state kept for `key`, whether or not it has a value now.
    pub(super) fn state_of(&mut self, key: &str) -> &mut S {
        if !self.index.contains_key(key) {
            self.index.insert(
                CompactString::from(key),
                Slot {
                    val: None,
                    state: S::default(),
                },
            );
        }
        &mut self.index.get_mut(key).expect("slot just ensured").state
    }

    /// No query will ask about a time before `least`; none at all if `None`.
    pub(super) fn compact(&mut self, least: Option<Time>) {
        if self.released {
            return;
        }
        self.released = least.is_none();
        self.trace
            .set_logical_compaction(Antichain::from_iter(least).borrow());
    }
}
