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

/// Arranges the reference data: regions by id, and users by id with their home region's
/// id (read as of each message's time from the regions: SPEC §6 needs the home region
/// known).
pub fn arrange_reference<'s>(
    regions: VecCollection<'s, Time, RegionRow, i64>,
    users: VecCollection<'s, Time, UserRow, i64>,
) -> (RefArranged<'s, RegionVal>, RefArranged<'s, UserVal>) {
    // Reference data is small and read by every message, so every worker arranges all of
    // it: `Decide` reads payer, payee and regions where the payer's state is, with no
    // exchange, and a keyed collection joined with it (the analyses' region tallies)
    // still meets each key exactly once. Users are not joined with their regions: a
    // region's change (SPEC §11) would change every user living there (a thousand
    // updates for one), and every worker would read them all again.
    let regions = replicated(regions, "ArrangeRegions");
    let users = replicated(
        users.map(|(id, region, balance, limit)| {
            (
                id,
                UserVal {
                    home: Id::from(region),
                    opening: Opening::new(balance, limit),
                },
            )
        }),
        "ArrangeUsers",
    );
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

/// A key's values over time: `(τ, value from τ on)`, in time order.
type Timeline<V> = Vec<(Time, Option<V>)>;

/// A worker's view of a replicated reference arrangement: a hash index of its current
/// contents, and for the keys that changed at a time a query may still ask before, their
/// timeline. The index is built once from the whole trace; after that only the keys of
/// the batches the arrangement publishes are read again (live changes, SPEC §11, cost per
/// change, not per reference row). A query for a key without a timeline is one probe
/// whatever its time. Each key's slot also holds the operator's state for that key, so
/// one probe finds both; refreshing the values keeps the states.
pub(super) struct RefIndex<V: differential_dataflow::ExchangeData, S = ()> {
    trace: RefTrace<V>,
    /// Ids up to 24 bytes are stored inline, so a probe compares keys without a pointer chase.
    index: HashMap<CompactString, Slot<V, S>>,
    /// Keys whose value changed after the compaction frontier.
    history: HashMap<CompactString, Timeline<V>>,
    /// Keys of the batches observed since the last refresh.
    changed: Vec<String>,
    /// The index holds the whole trace (after the first refresh).
    built: bool,
    stale: bool,
    /// No query asks about a time before this.
    least: Time,
    /// The reader will ask nothing more: the trace is released, and no longer read.
    released: bool,
}

impl<V: differential_dataflow::ExchangeData, S: Default> RefIndex<V, S> {
    pub(super) fn new(trace: RefTrace<V>) -> Self {
        RefIndex {
            trace,
            index: HashMap::new(),
            history: HashMap::new(),
            changed: Vec::new(),
            built: false,
            stale: true,
            least: 0,
            released: false,
        }
    }

    /// Notes batches the arrangement published, and which keys they change.
    pub(super) fn observe(&mut self, spans: &[SpanOf<RefTrace<V>>]) {
        use differential_dataflow::trace::Navigable;
        for batch in spans.iter().filter_map(|span| span.inner.as_ref()) {
            self.stale = true;
            if self.built {
                let mut cursor = batch.cursor();
                while let Some(k) = cursor.get_key(batch) {
                    self.changed.push(k.clone());
                    cursor.step_key(batch);
                }
            }
        }
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

    /// The timeline of the key the cursor is at.
    fn timeline(
        cursor: &mut <RefCursor<V> as CursorPair>::C,
        storage: &<RefCursor<V> as CursorPair>::St,
    ) -> Timeline<V> {
        let mut updates: Vec<(Time, V, i64)> = Vec::new();
        while let Some(v) = cursor.get_val(storage) {
            cursor.map_times(storage, |time, diff| {
                updates.push((*time, v.clone(), *diff))
            });
            cursor.step_val(storage);
        }
        let mut times: Vec<Time> = updates.iter().map(|u| u.0).collect();
        times.sort_unstable();
        times.dedup();
        let mut timeline: Timeline<V> = Vec::with_capacity(times.len());
        for tau in times {
            // The value as of τ: the one whose updates up to τ sum to a positive count.
            let mut counts: Vec<(&V, i64)> = Vec::new();
            for (time, v, diff) in &updates {
                if *time <= tau {
                    match counts.iter_mut().find(|(w, _)| *w == v) {
                        Some((_, c)) => *c += diff,
                        None => counts.push((v, *diff)),
                    }
                }
            }
            let value = counts
                .into_iter()
                .find(|(_, c)| *c > 0)
                .map(|(v, _)| v.clone());
            if timeline.last().is_none_or(|(_, last)| *last != value) {
                timeline.push((tau, value));
            }
        }
        timeline
    }

    /// Records `key`'s timeline: its current value in the index, and the timeline itself
    /// while a query may still ask about a time before its last change.
    fn record(&mut self, key: &str, timeline: Timeline<V>) {
        let current = timeline.last().and_then(|(_, v)| v.clone());
        match self.index.get_mut(key) {
            Some(slot) => slot.val = current,
            None => {
                if current.is_some() {
                    self.index.insert(
                        CompactString::from(key),
                        Slot {
                            val: current,
                            state: S::default(),
                        },
                    );
                }
            }
        }
        if timeline.last().is_some_and(|(tau, _)| *tau > self.least) {
            self.history.insert(CompactString::from(key), timeline);
        } else {
            self.history.remove(key);
        }
    }

    /// Reloads what changed since the last load: everything the first time, then the
    /// keys of the batches observed.
    pub(super) fn refresh(&mut self) {
        // A released trace may not be read (differential asserts it), and nothing would
        // read the values: the reference data can still be arriving when the reader is
        // done (its message input closed first).
        if !self.stale || self.released {
            return;
        }
        let (mut cursor, storage) = self.cursor();
        if !self.built {
            while let Some(k) = cursor.get_key(&storage) {
                let key = k.clone();
                let timeline = Self::timeline(&mut cursor, &storage);
                self.record(&key, timeline);
                cursor.step_key(&storage);
            }
            self.built = true;
        } else {
            let mut changed = std::mem::take(&mut self.changed);
            changed.sort_unstable();
            changed.dedup();
            for key in changed {
                cursor.seek_key(&storage, &key);
                let timeline = if cursor.get_key(&storage) == Some(&key) {
                    Self::timeline(&mut cursor, &storage)
                } else {
                    Vec::new()
                };
                self.record(&key, timeline);
            }
        }
        self.stale = false;
    }

    /// `read` of the value of `key` as of time `t` (updates at `t` included); the caller
    /// has seen the arrangement's frontier pass `t`.
    pub(super) fn get<R>(&mut self, key: &str, t: Time, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.refresh();
        if let Some(timeline) = self.history.get(key) {
            return as_of(timeline, t).map(read);
        }
        self.index.get(key)?.val.as_ref().map(read)
    }

    /// The value of `key` as of time `t` with the state kept for it: one probe when the
    /// key has no recent change. `None` for a key without a value at `t`.
    pub(super) fn get_with_state(&mut self, key: &str, t: Time) -> Option<(&V, &mut S)> {
        self.refresh();
        if let Some(timeline) = self.history.get(key) {
            let val = as_of(timeline, t)?;
            return Some((val, &mut slot_of(&mut self.index, key).state));
        }
        let slot = self.index.get_mut(key)?;
        Some((slot.val.as_ref()?, &mut slot.state))
    }

    /// The state kept for `key`, whether or not it has a value now.
    pub(super) fn state_of(&mut self, key: &str) -> &mut S {
        &mut slot_of(&mut self.index, key).state
    }

    /// No query will ask about a time before `least`; none at all if `None`.
    pub(super) fn compact(&mut self, least: Option<Time>) {
        if self.released {
            return;
        }
        self.released = least.is_none();
        if let Some(least) = least {
            if least > self.least {
                self.least = least;
                if !self.history.is_empty() {
                    self.history
                        .retain(|_, timeline| timeline.last().is_some_and(|(tau, _)| *tau > least));
                }
            }
        }
        self.trace
            .set_logical_compaction(Antichain::from_iter(least).borrow());
    }
}

/// The value a timeline gives as of `t` (changes at `t` included).
fn as_of<V>(timeline: &Timeline<V>, t: Time) -> Option<&V> {
    let i = timeline.partition_point(|(tau, _)| *tau <= t);
    timeline[i.checked_sub(1)?].1.as_ref()
}

/// `key`'s slot in `index`, made without a value if it has none.
fn slot_of<'a, V, S: Default>(
    index: &'a mut HashMap<CompactString, Slot<V, S>>,
    key: &str,
) -> &'a mut Slot<V, S> {
    if !index.contains_key(key) {
        index.insert(
            CompactString::from(key),
            Slot {
                val: None,
                state: S::default(),
            },
        );
    }
    index.get_mut(key).expect("slot just ensured")
}

/// The cursor and storage types of a [`RefCursor`].
pub(super) trait CursorPair {
    /// The cursor.
    type C;
    /// What it reads.
    type St;
}

impl<C, St> CursorPair for (C, St) {
    type C = C;
    type St = St;
}
