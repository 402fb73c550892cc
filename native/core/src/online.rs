//! The stream worker's online state, natively: entity tiles cached per (view, entity,
//! source partition), folded a batch at a time, and the Redis hash writes they produce.
//!
//! The layout is `engine/online.py`'s (DESIGN §4): one hash per (view fingerprint, entity)
//!
//! ```text
//! key   sk:<fingerprint>:{<entity>}     (braces: the Redis Cluster hash tag)
//! t:<p>:<hop_ms>:<k>   tile k of a hop group from source partition p (codec v2)
//! l:<p>                lifetime accumulators from partition p
//! f:<p>                fence: last source offset of p applied (decimal text)
//! u:<p>                processed_at (ms) of the newest write from p (decimal text)
//! j:<p>                journal: msgpack [[fence, processed_at], ...] of p's last writes
//! ```
//!
//! A merge-on-write view (`OnlineCore::set_merged`) keeps one entry per entity for every
//! source partition: its tiles, lifetime state, write version and write time as slot 0
//! (`t:0:…`, `l:0`, `f:0`, `u:0`), every partition's fence and journal in a marks hash
//! `sk:fm:<fingerprint>:{<entity>}` written in the same script call ([`LINKED`]).
//!
//! A batch runs in two calls: [`OnlineCore::prepare`] extracts every view's entity from
//! the batch's columns and lists the cache entries to load from Redis; after
//! [`OnlineCore::load`] of those hashes, [`OnlineCore::apply`] skips what fences say the
//! store already holds (recovering an earlier attempt's processed_at from the journal),
//! admits by lateness, folds, and returns one write per touched entity. Semantics are those
//! of the Python batch core this replaces, bit for bit.

use std::collections::HashMap;

use rayon::prelude::*;
use rustc_hash::FxBuildHasher;

use crate::agg::{Agg, Input};
use crate::codec::{decode_tile, encode_tile, CodecError};
use crate::columns::{Column, ColumnData};
use crate::tiles::{window_end, EntityTiles, Layout};
use crate::value::Value;

/// No offset applied yet (below every offset: imported history has negative offsets).
pub const NO_FENCE: i64 = i64::MIN;
/// Journal entries kept per (entity, partition).
pub const JOURNAL_ENTRIES: usize = 8;
/// A time no tile reaches.
pub const NEVER_MS: i64 = 1 << 62;
/// Whether [`OnlineCore::prepare`], [`OnlineCore::apply`] and [`script_chunks`] use the
/// rayon pool by default (from [`PARALLEL_PAIRS`] pairs / [`PARALLEL_WRITES`] writes on).
/// On: a backlog drain leaves part of a core idle (Redis and Kafka take ~0.3 of one), and
/// with them the median of a 2M-event drain was 8–14 % faster in each of 3 runs (5 of 6
/// paired drains), at 5–20 % more worker CPU (docs/benchmarks.md); `cargo bench --bench
/// online` measures both paths. Live batches stay below the thresholds.
pub const PARALLEL_BY_DEFAULT: bool = true;
/// The batch size (event, view pairs) from which `prepare` and `apply` are meant to use
/// the pool when on: below it a batch is too short to repay waking it.
pub const PARALLEL_PAIRS: usize = 16_384;
/// The number of writes from which [`script_chunks`] packs its chunks in parallel when on.
pub const PARALLEL_WRITES: usize = 4_096;

const fn by_default(at: usize) -> usize {
    if PARALLEL_BY_DEFAULT {
        at
    } else {
        usize::MAX
    }
}

/// Views that see the same rows: same join keys and transform.
#[derive(Clone, Debug)]
pub struct OnlineGroup {
    pub key_fields: Vec<String>,
    pub input_fields: Vec<String>,
}

/// One view of the source.
#[derive(Clone, Debug)]
pub struct OnlineView {
    pub fingerprint: String,
    pub layout: Layout,
    pub group: usize,
    /// Per aggregation: index into the group's inputs.
    pub inputs: Vec<usize>,
    pub allowed_lateness_ms: Option<i64>,
}

/// What one source partition contributed to one entity of one view.
#[derive(Clone, Debug)]
pub struct Entry {
    pub tiles: EntityTiles,
    pub fence: i64,
    pub updated_ms: i64,
    /// When the oldest tile becomes stale (0: not known yet).
    pub evict_at_ms: i64,
    pub journal: Vec<(i64, i64)>,
    /// Merged views only: every source partition's fence and journal (`fence` above is
    /// then the hash's write version, `updated_ms` the newest write of any partition).
    pub parts: Vec<PartMarks>,
    used: u64,
}

/// What a merged view's entity hash records of one source partition (its marks hash).
#[derive(Clone, Debug)]
pub struct PartMarks {
    pub partition: i32,
    pub fence: i64,
    pub journal: Vec<(i64, i64)>,
    /// Applied an event in the batch being folded.
    touched: bool,
}

impl Entry {
    fn new(layout: &Layout) -> Entry {
        Entry {
            tiles: EntityTiles::new(layout),
            fence: NO_FENCE,
            updated_ms: 0,
            evict_at_ms: 0,
            journal: Vec::new(),
            parts: Vec::new(),
            used: 0,
        }
    }

    /// The fence of source partition `p` (merged entries).
    fn part_fence(&self, p: i32) -> i64 {
        self.parts
            .iter()
            .find(|m| m.partition == p)
            .map_or(NO_FENCE, |m| m.fence)
    }

    fn part_journal(&self, p: i32) -> &[(i64, i64)] {
        self.parts
            .iter()
            .find(|m| m.partition == p)
            .map_or(&[], |m| &m.journal[..])
    }

    fn part_mut(&mut self, p: i32) -> &mut PartMarks {
        let at = match self.parts.iter().position(|m| m.partition == p) {
            Some(at) => at,
            None => {
                self.parts.push(PartMarks {
                    partition: p,
                    fence: NO_FENCE,
                    journal: Vec::new(),
                    touched: false,
                });
                self.parts.len() - 1
            }
        };
        &mut self.parts[at]
    }
}

/// The cache-key partition of a merged view's entries: one entry per entity for every
/// source partition (never kept across batches: other workers write the same hash).
pub const MERGED: i32 = -1;
/// The field slot a merged view's tiles, lifetime state, version and write time use in the
/// entity hash (`t:0:<hop_ms>:<k>`, `l:0`, `f:0`, `u:0`): the one tile set a read merges.
pub const MERGED_SLOT: i32 = 0;
/// The check of a write that lands iff the write before it in the same script call landed
/// (a merged view's marks hash rides with its entity hash).
pub const LINKED: &str = "&";
/// Low bits of a merged hash's write version holding the writer's lowest partition.
const VERSION_PARTITION_BITS: u32 = 20;

/// A cache key: (view, source partition, entity text).
pub type CacheKey = (u32, i32, Box<str>);

/// One entity hash update (see `engine.ports.StateWrite`).
#[derive(Clone, Debug, Default)]
pub struct Write {
    pub key: String,
    pub fields: Vec<(String, Vec<u8>)>,
    pub delete: Vec<String>,
    pub expire_at_ms: Option<i64>,
    /// Compare-and-set: (field, the value it must hold; None = absent).
    pub expect: Option<(String, Option<Vec<u8>>)>,
}

/// What `apply` did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub writes: Vec<Write>,
    pub applied: u64,
    pub late: u64,
    pub fenced: u64,
    /// (view, partition) → event time of the newest event applied.
    pub newest: Vec<((u32, i32), i64)>,
    /// event row → processed_at of the earlier attempt that applied it.
    pub recovered: Vec<(u32, i64)>,
}

/// One (event, view) pair of a prepared batch.
#[derive(Clone, Copy, Debug)]
struct Pair {
    row: u32,
    view: u32,
    /// Index into `prepared_keys`.
    key: u32,
}

/// The per-event envelope columns of a batch.
#[derive(Clone, Debug, Default)]
pub struct Events {
    pub partition: Vec<i32>,
    pub offset: Vec<i64>,
    pub event_time: Vec<i64>,
}

/// Per group: its key and input columns for the batch's rows.
pub struct GroupColumns<'a> {
    pub keys: Vec<&'a Column>,
    pub inputs: Vec<Option<&'a Column>>,
}

/// The worker's native online state for one source.
pub struct OnlineCore {
    views: Vec<OnlineView>,
    groups: Vec<OnlineGroup>,
    /// Per view: its entities' tiles are merged across source partitions on write.
    merged: Vec<bool>,
    /// Merged entries stay cached across batches (the worker owns every source partition;
    /// see [`OnlineCore::set_keep_merged`]).
    keep_merged: bool,
    cache: HashMap<CacheKey, Entry, FxBuildHasher>,
    capacity: usize,
    /// Spill mode (a local tier behind the cache): `apply` does not trim; the caller
    /// trims with [`OnlineCore::spill`] once the batch is durable and keeps what it evicts.
    spill: bool,
    tick: u64,
    // the prepared batch
    pairs: Vec<Pair>,
    prepared_keys: Vec<CacheKey>,
    events: Events,
    inputs: Vec<Vec<Option<Column>>>, // per group: its input columns (owned copies)
    /// `apply_logged`: each event's logged processed_at (admission by it, not the batch's).
    logged: Option<Vec<i64>>,
    /// `apply` folds entries in parallel from this many (event, view) pairs on.
    parallel_pairs: usize,
}

impl OnlineCore {
    /// A core for `views` (grouped by `groups`) caching at most `capacity` entries.
    pub fn new(views: Vec<OnlineView>, groups: Vec<OnlineGroup>, capacity: usize) -> OnlineCore {
        let merged = vec![false; views.len()];
        OnlineCore {
            views,
            groups,
            merged,
            keep_merged: false,
            cache: HashMap::default(),
            capacity: capacity.max(1),
            spill: false,
            tick: 0,
            pairs: Vec::new(),
            prepared_keys: Vec::new(),
            events: Events::default(),
            inputs: Vec::new(),
            logged: None,
            parallel_pairs: by_default(PARALLEL_PAIRS),
        }
    }

    /// List and fold a batch on the rayon pool when it holds at least `pairs` (event, view)
    /// pairs (0: always, `usize::MAX`: never; the default: [`PARALLEL_PAIRS`] if
    /// [`PARALLEL_BY_DEFAULT`], else never). The writes are the same either way.
    pub fn set_parallel_pairs(&mut self, pairs: usize) {
        self.parallel_pairs = pairs;
    }

    pub fn views(&self) -> &[OnlineView] {
        &self.views
    }

    pub fn groups(&self) -> &[OnlineGroup] {
        &self.groups
    }

    /// Merge the tiles of `views` across source partitions on write (one tile set per
    /// entity; see [`OnlineCore::load_merged`]).
    pub fn set_merged(&mut self, views: &[u32]) {
        for &v in views {
            if let Some(m) = self.merged.get_mut(v as usize) {
                *m = true;
            }
        }
    }

    /// Whether view `v` merges its tiles on write.
    pub fn is_merged(&self, v: u32) -> bool {
        self.merged.get(v as usize).copied().unwrap_or(false)
    }

    /// Entries cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Spill mode on or off (see [`OnlineCore::spill`]).
    pub fn set_spill(&mut self, on: bool) {
        self.spill = on;
    }

    /// Spill mode: evict the least recently used entries over the capacity (every entry
    /// when `all`) and return them encoded ([`encode_entry`]) with their local-store key
    /// ([`local_key`]). Call it only when every cached entry is what the store holds (after
    /// a batch's write): a spilled entry must never be ahead of the store.
    pub fn spill(&mut self, all: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let victims = if all {
            self.cache.drain().collect()
        } else {
            self.trim()
        };
        // a merged entry is never spilled: it is loaded from Redis only (with its marks)
        victims
            .into_iter()
            .filter(|(ck, _)| ck.1 != MERGED)
            .map(|(ck, entry)| {
                let view = &self.views[ck.0 as usize];
                let key = local_key(ck.1, &redis_key_of(view, &ck.2));
                (key, encode_entry(&view.layout, ck.1, &entry))
            })
            .collect()
    }

    /// Cache an entry kept in the local store (`value`, from [`OnlineCore::spill`]) if its
    /// fence and journal are the ones the store holds now (`fence`, `journal`: the store's
    /// `f:<p>` and `j:<p>`, None where absent); returns false (nothing cached) otherwise.
    pub fn load_spilled(
        &mut self,
        ck: CacheKey,
        value: &[u8],
        fence: Option<&[u8]>,
        journal: Option<&[u8]>,
    ) -> Result<bool, CodecError> {
        let fields = decode_entry(value)?;
        let view = &self.views[ck.0 as usize];
        let mark = |kind: u8| {
            fields
                .iter()
                .find(|(name, _)| {
                    matches!(field_name(name), Some((k, p, _, _)) if k == kind && p == ck.1)
                })
                .map(|(_, v)| &v[..])
        };
        if mark(b'f') != fence || mark(b'j') != journal {
            return Ok(false);
        }
        let refs: Vec<(&[u8], &[u8])> = fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let mut entry = parse_partition(view, ck.1, &refs)?;
        entry.used = self.tick;
        self.cache.insert(ck, entry);
        Ok(true)
    }

    /// Extract every group's entities from the batch; returns the cache keys not yet
    /// cached (their hashes must be loaded with [`OnlineCore::load`] before `apply`).
    /// `groups[g]` holds group g's key and input columns (after its transform), one cell
    /// per event; a null or missing key means the view drops the event.
    pub fn prepare(&mut self, events: Events, groups: &[GroupColumns<'_>]) -> Vec<CacheKey> {
        let n = events.offset.len();
        // a group's entries never meet another's (each view has one group): groups list
        // their pairs and keys apart, in batch order, and are concatenated in group order
        let members: Vec<Vec<u32>> = (0..groups.len())
            .map(|g| {
                (0..self.views.len() as u32)
                    .filter(|&v| self.views[v as usize].group == g)
                    .collect()
            })
            .collect();
        let list = |g: usize| group_pairs(&groups[g], &members[g], &self.merged, &events);
        let copy = |cols: &GroupColumns<'_>| -> Vec<Option<Column>> {
            cols.inputs
                .iter()
                .map(|c| c.map(|c| (*c).clone()))
                .collect()
        };
        let pairs_in_batch: usize = n * members.iter().map(Vec::len).sum::<usize>();
        let (lists, inputs): (Vec<GroupPairs>, Vec<Vec<Option<Column>>>) =
            if pairs_in_batch >= self.parallel_pairs {
                rayon::join(
                    || (0..groups.len()).into_par_iter().map(list).collect(),
                    || groups.par_iter().map(copy).collect(),
                )
            } else {
                (
                    (0..groups.len()).map(list).collect(),
                    groups.iter().map(copy).collect(),
                )
            };
        self.pairs.clear();
        self.prepared_keys.clear();
        self.pairs
            .reserve(lists.iter().map(|l| l.pairs.len()).sum());
        self.prepared_keys
            .reserve(lists.iter().map(|l| l.keys.len()).sum());
        for list in lists {
            let base = self.prepared_keys.len() as u32;
            self.pairs.extend(list.pairs.into_iter().map(|mut pair| {
                pair.key += base;
                pair
            }));
            self.prepared_keys.extend(list.keys);
        }
        self.inputs = inputs;
        self.events = events;
        self.tick += 1;
        let tick = self.tick;
        let mut missing = Vec::new();
        for ck in &self.prepared_keys {
            match self.cache.get_mut(ck) {
                Some(entry) => entry.used = tick,
                None => missing.push(ck.clone()),
            }
        }
        missing
    }

    /// The Redis key of a cache key.
    pub fn redis_key(&self, ck: &CacheKey) -> String {
        redis_key_of(&self.views[ck.0 as usize], &ck.2)
    }

    /// Cache the state `fields` (a loaded hash) holds for `ck`'s partition.
    pub fn load(&mut self, ck: CacheKey, fields: &[(&[u8], &[u8])]) -> Result<(), CodecError> {
        let view = &self.views[ck.0 as usize];
        let mut entry = parse_partition(view, ck.1, fields)?;
        entry.used = self.tick;
        self.cache.insert(ck, entry);
        Ok(())
    }

    /// The Redis key of a merged entry's marks hash (see [`marks_key`]).
    pub fn marks_key(&self, ck: &CacheKey) -> String {
        marks_key(&self.views[ck.0 as usize], &ck.2)
    }

    /// Cache a merged entry from its entity hash (tiles, version, write time) and its marks
    /// hash (every partition's fence and journal).
    pub fn load_merged(
        &mut self,
        ck: CacheKey,
        fields: &[(&[u8], &[u8])],
        marks: &[(&[u8], &[u8])],
    ) -> Result<(), CodecError> {
        let view = &self.views[ck.0 as usize];
        let mut entry = parse_partition(view, MERGED_SLOT, fields)?;
        entry.journal.clear();
        for &(name, value) in marks {
            let Some((kind, p, _, _)) = field_name(name) else {
                continue;
            };
            match kind {
                b'f' => entry.part_mut(p).fence = parse_int(value)?,
                b'j' => entry.part_mut(p).journal = unpack_journal(value)?,
                _ => {}
            }
        }
        entry.used = self.tick;
        self.cache.insert(ck, entry);
        Ok(())
    }

    /// Keep merged entries cached across batches (`on`), or drop them after each batch and
    /// now (the default: other partitions' workers write the same hashes). Kept entries
    /// carry the version they were written or read at, and their next write is still the
    /// strict compare-and-set on it: a refused write is discarded and reloaded as before.
    pub fn set_keep_merged(&mut self, on: bool) {
        self.keep_merged = on;
        if !on {
            self.cache.retain(|k, _| k.1 != MERGED);
        }
    }

    /// Whether merged entries stay cached across batches.
    pub fn keeps_merged(&self) -> bool {
        self.keep_merged
    }

    /// Forget the cache entries the prepared batch touched (after a failed write: they
    /// may hold half-applied effects and are loaded again next time).
    pub fn discard_prepared(&mut self) {
        for ck in &self.prepared_keys {
            self.cache.remove(ck);
        }
    }

    /// Forget the entries of `partitions` (revoked from this worker).
    pub fn forget_partitions(&mut self, partitions: &[i32]) {
        self.cache.retain(|k, _| !partitions.contains(&k.1));
    }

    /// Forget the entries of some views in one partition (rebuilt from the log).
    pub fn forget_views(&mut self, views: &[u32], partition: i32) {
        self.cache
            .retain(|k, _| !(k.1 == partition && views.contains(&k.0)));
    }

    /// Forget everything.
    pub fn forget_all(&mut self) {
        self.cache.clear();
    }

    /// Fold the prepared batch at `batch_p` (the batch's processed_at) and build its writes.
    ///
    /// Works entry by entry: the pairs are grouped by cache entry (a stable counting sort,
    /// so each entry still folds its events in batch order), each entry is looked up once
    /// and written while its tiles are in cache; the writes are then put back in the order
    /// the entries were first folded, as the one-pass fold listed them. Entries are
    /// disjoint: a batch of at least [`OnlineCore::set_parallel_pairs`] pairs (off by
    /// default) folds them on the rayon pool in runs of consecutive entries and
    /// concatenates the runs' writes in entry order, so the result is the same, byte for
    /// byte.
    pub fn apply(&mut self, batch_p: i64) -> Result<Applied, CodecError> {
        let mut out = Applied::default();
        let nkeys = self.prepared_keys.len();
        // pass 1: what the store already holds, and when an earlier attempt applied it
        let order = group_by_key(&self.pairs, nkeys);
        let mut recovered: HashMap<u32, i64, FxBuildHasher> = HashMap::default();
        let mut entries: Vec<EntryPtr> = Vec::with_capacity(nkeys);
        for (k, ck) in self.prepared_keys.iter().enumerate() {
            let Some(entry) = self.cache.get_mut(ck) else {
                return Err(CodecError(format!(
                    "entry {ck:?} was not loaded before apply"
                )));
            };
            let merged = ck.1 == MERGED;
            for &i in order.of(k) {
                let row = self.pairs[i as usize].row;
                let offset = self.events.offset[row as usize];
                let (fence, journal) = if merged {
                    let p = self.events.partition[row as usize];
                    (entry.part_fence(p), entry.part_journal(p))
                } else {
                    (entry.fence, &entry.journal[..])
                };
                if offset <= fence {
                    out.fenced += 1;
                    if let Some(first) = journal_lookup(journal, offset) {
                        let held = recovered.entry(row).or_insert(first);
                        *held = (*held).min(first);
                    }
                }
            }
            entries.push(EntryPtr(entry as *mut Entry));
        }
        // pass 2: fold what is new, entry by entry, and write each touched entry
        let fold = EntryFold {
            views: &self.views,
            inputs: &self.inputs,
            events: &self.events,
            pairs: &self.pairs,
            order: &order,
            recovered: &recovered,
            logged: self.logged.as_deref(),
            batch_p,
        };
        let keys = &self.prepared_keys;
        let runs: Vec<Folded> = if self.pairs.len() >= self.parallel_pairs && nkeys > 1 {
            let run = nkeys.div_ceil(rayon::current_num_threads() * 8).max(256);
            entries
                .par_chunks(run)
                .enumerate()
                .map(|(r, chunk)| {
                    let mut done = Folded::default();
                    for (j, ptr) in chunk.iter().enumerate() {
                        let k = r * run + j;
                        // SAFETY: see `EntryPtr`: each pointer is used by this run alone
                        let entry = unsafe { &mut *ptr.0 };
                        fold.entry(k, &keys[k], entry, &mut done);
                    }
                    done
                })
                .collect()
        } else {
            let mut done = Folded::default();
            for (k, ptr) in entries.iter().enumerate() {
                // SAFETY: see `EntryPtr`
                let entry = unsafe { &mut *ptr.0 };
                fold.entry(k, &keys[k], entry, &mut done);
            }
            vec![done]
        };
        drop(entries);
        let total: usize = runs.iter().map(|r| r.writes.len()).sum();
        let mut runs = runs.into_iter();
        let head = runs.next().unwrap_or_default();
        let (mut writes, mut newest) = (head.writes, head.newest);
        writes.reserve(total - writes.len());
        (out.applied, out.late) = (head.applied, head.late);
        for run in runs {
            out.applied += run.applied;
            out.late += run.late;
            writes.extend(run.writes);
            newest.extend(run.newest);
        }
        // stable: a merged entity's marks write stays right after its entity write
        writes.sort_by_key(|w| w.0);
        out.writes = writes.into_iter().map(|w| w.1).collect();
        // merged entries are not kept unless this worker writes every partition of them:
        // other partitions' workers write the same hashes
        if !self.keep_merged && self.merged.iter().any(|&m| m) {
            self.cache.retain(|k, _| k.1 != MERGED);
        }
        newest.sort_unstable();
        newest.dedup_by(|b, a| {
            // equal (view, partition): keep the later event time in `a` (the one kept)
            if a.0 == b.0 {
                a.1 = a.1.max(b.1);
                true
            } else {
                false
            }
        });
        out.newest = newest;
        let mut rec: Vec<(u32, i64)> = recovered.into_iter().collect();
        rec.sort_unstable();
        out.recovered = rec;
        if !self.spill {
            self.trim();
        }
        Ok(out)
    }

    /// [`OnlineCore::apply`] of records already in the event log (rebuilding a
    /// merge-on-write view, `engine.rebuild`): each admitted by its logged `processed_at`
    /// (one per event of the prepared batch) instead of the batch's; fences skip what the
    /// store holds; `now_ms` is the write time (evictions, journal).
    pub fn apply_logged(
        &mut self,
        processed_at: &[i64],
        now_ms: i64,
    ) -> Result<Applied, CodecError> {
        if processed_at.len() != self.events.offset.len() {
            return Err(CodecError(format!(
                "apply_logged: {} processed_at for {} events",
                processed_at.len(),
                self.events.offset.len()
            )));
        }
        self.logged = Some(processed_at.to_vec());
        let out = self.apply(now_ms);
        self.logged = None;
        out
    }

    /// Rebuild mode (`engine.rebuild`): fold the prepared batch as the workers did, each
    /// record admitted by its *logged* `processed_at`; no fences are checked (the log holds
    /// each offset once). Entries not cached start empty; tiles of the touched entries that
    /// are stale at `now_ms` (the rebuild's write time) are dropped as the replay goes, so
    /// memory holds the live tiles only. Nothing is trimmed: call
    /// [`OnlineCore::replay_writes`] at the end of the partition.
    pub fn replay(&mut self, processed_at: &[i64], now_ms: i64) {
        for ck in &self.prepared_keys {
            if !self.cache.contains_key(ck) {
                let entry = Entry::new(&self.views[ck.0 as usize].layout);
                self.cache.insert(ck.clone(), entry);
            }
        }
        for pair in &self.pairs {
            let row = pair.row as usize;
            let view = &self.views[pair.view as usize];
            let (et, pt) = (self.events.event_time[row], processed_at[row]);
            if let Some(late) = view.allowed_lateness_ms {
                if et < pt.saturating_sub(late) {
                    continue;
                }
            }
            let entry = self
                .cache
                .get_mut(&self.prepared_keys[pair.key as usize])
                .expect("added");
            let partition = self.events.partition[row];
            let offset = self.events.offset[row];
            let inputs = &self.inputs[view.group];
            entry
                .tiles
                .fold(&view.layout, et, (et, partition, offset), |i| {
                    input_at(inputs[view.inputs[i]].as_ref(), row)
                });
            entry.fence = offset;
            entry.updated_ms = entry.updated_ms.max(pt);
        }
        for ck in &self.prepared_keys {
            let layout = &self.views[ck.0 as usize].layout;
            if let Some(entry) = self.cache.get_mut(ck) {
                entry.tiles.evict_stale(layout, now_ms);
            }
        }
    }

    /// Rebuild mode: one write per cached entry (every tile, the fence, the write time and
    /// a one-entry journal), evicting what is stale at `now_ms`; empties the cache.
    pub fn replay_writes(&mut self, now_ms: i64) -> Vec<(u32, Write)> {
        let mut keys: Vec<CacheKey> = self.cache.keys().cloned().collect();
        keys.sort_unstable();
        let mut out = Vec::with_capacity(keys.len());
        for ck in keys {
            let mut entry = self.cache.remove(&ck).expect("listed");
            let view = &self.views[ck.0 as usize];
            let touched: Vec<(usize, i64)> = (0..view.layout.groups.len())
                .flat_map(|g| entry.tiles.keys(g).into_iter().map(move |k| (g, k)))
                .collect();
            entry.journal = vec![(entry.fence, entry.updated_ms)];
            let key = self.redis_key(&ck);
            out.push((
                ck.0,
                entity_write(view, &ck, key, &mut entry, &touched, now_ms, None),
            ));
        }
        out
    }

    /// Evict the least recently used entries down to 90 % of the capacity (amortised) when
    /// over it; returns them in spill mode (dropped otherwise).
    fn trim(&mut self) -> Vec<(CacheKey, Entry)> {
        if self.cache.len() <= self.capacity {
            return Vec::new();
        }
        let keep = self.capacity * 9 / 10;
        let mut ages: Vec<u64> = self.cache.values().map(|e| e.used).collect();
        let drop = ages.len() - keep;
        ages.select_nth_unstable(drop - 1);
        let cutoff = ages[drop - 1];
        let mut left = drop;
        if !self.spill {
            self.cache.retain(|_, e| {
                if left > 0 && e.used <= cutoff {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
            return Vec::new();
        }
        let victims: Vec<CacheKey> = self
            .cache
            .iter()
            .filter(|(_, e)| e.used <= cutoff)
            .take(left)
            .map(|(k, _)| k.clone())
            .collect();
        victims
            .into_iter()
            .map(|k| {
                let e = self.cache.remove(&k).expect("listed");
                (k, e)
            })
            .collect()
    }
}

/// One group's (event, view) pairs of a batch, keyed by the group's own entry numbers, and
/// its cache keys in the order their first pairs come.
#[derive(Default)]
struct GroupPairs {
    pairs: Vec<Pair>,
    keys: Vec<CacheKey>,
}

/// The pairs of group `cols` (whose views are `members`) in a batch of `events`.
fn group_pairs(
    cols: &GroupColumns<'_>,
    members: &[u32],
    merged: &[bool],
    events: &Events,
) -> GroupPairs {
    let mut out = GroupPairs::default();
    if members.is_empty() {
        return out;
    }
    // entity text → its number, then (view, partition, entity number) → key: a text is
    // hashed once per row and copied once per batch
    let mut entities: HashMap<Box<str>, u32, FxBuildHasher> = HashMap::default();
    let mut index: HashMap<(u32, i32, u32), u32, FxBuildHasher> = HashMap::default();
    let mut text = String::new();
    for row in 0..events.offset.len() {
        if !entity_text(&cols.keys, row, &mut text) {
            continue;
        }
        let partition = events.partition[row];
        let entity = match entities.get(text.as_str()) {
            Some(&e) => e,
            None => {
                let e = entities.len() as u32;
                entities.insert(text.as_str().into(), e);
                e
            }
        };
        for &v in members {
            let next = out.keys.len() as u32;
            let slot = if merged[v as usize] {
                MERGED
            } else {
                partition
            };
            let key = *index.entry((v, slot, entity)).or_insert_with(|| {
                out.keys.push((v, slot, text.as_str().into()));
                next
            });
            out.pairs.push(Pair {
                row: row as u32,
                view: v,
                key,
            });
        }
    }
    out
}

/// A cache entry of the prepared batch, for `apply`'s pass 2.
///
/// SAFETY (of every dereference): the pointers are taken from `OnlineCore::cache` by
/// `apply`'s pass 1, one per prepared key; prepared keys are distinct (`prepare` numbers
/// each (view, slot, entity) once), so the pointers are to distinct entries; the map is
/// not touched (no insert, remove or rehash) until pass 2 is over and the pointers are
/// dropped; and each pointer is dereferenced by one run (one thread) only.
struct EntryPtr(*mut Entry);

// SAFETY: an `Entry` is plain owned data (`Send`); see `EntryPtr` for why no two threads
// reach the same one.
unsafe impl Send for EntryPtr {}
// SAFETY: as above; a shared `EntryPtr` is only read to find its entry.
unsafe impl Sync for EntryPtr {}

/// What `apply`'s pass 2 reads of the prepared batch (shared by every run of entries).
struct EntryFold<'a> {
    views: &'a [OnlineView],
    inputs: &'a [Vec<Option<Column>>],
    events: &'a Events,
    pairs: &'a [Pair],
    order: &'a ByKey,
    recovered: &'a HashMap<u32, i64, FxBuildHasher>,
    logged: Option<&'a [i64]>,
    batch_p: i64,
}

/// What a run of consecutive entries of `apply`'s pass 2 produced (writes keyed by the
/// entry's first applied pair), with the run's scratch buffers.
#[derive(Default)]
struct Folded {
    writes: Vec<(u32, Write)>,
    newest: Vec<((u32, i32), i64)>,
    applied: u64,
    late: u64,
    times: Vec<i64>,
    tiles: Vec<(usize, i64)>,
}

impl EntryFold<'_> {
    /// Fold prepared entry `k` (`ck`) with what is new of its pairs, and write it if touched.
    fn entry(&self, k: usize, ck: &CacheKey, entry: &mut Entry, out: &mut Folded) {
        let batch_p = self.batch_p;
        let view = &self.views[ck.0 as usize];
        let inputs = &self.inputs[view.group];
        let prior = entry.fence;
        let merged = ck.1 == MERGED;
        let mut first: Option<u32> = None;
        let mut latest = i64::MIN;
        let mut part_latest: Vec<(i32, i64)> = Vec::new();
        let times = &mut out.times;
        times.clear();
        for &i in self.order.of(k) {
            let row = self.pairs[i as usize].row as usize;
            let offset = self.events.offset[row];
            let fence = if merged {
                entry.part_fence(self.events.partition[row])
            } else {
                entry.fence
            };
            if offset <= fence {
                continue;
            }
            let p_e = if let Some(logged) = self.logged {
                logged[row]
            } else if self.recovered.is_empty() {
                batch_p
            } else {
                self.recovered
                    .get(&(row as u32))
                    .copied()
                    .unwrap_or(batch_p)
            };
            let et = self.events.event_time[row];
            if let Some(late) = view.allowed_lateness_ms {
                if et < p_e.saturating_sub(late) {
                    out.late += 1;
                    continue;
                }
            }
            first.get_or_insert(i);
            let partition = self.events.partition[row];
            entry
                .tiles
                .fold(&view.layout, et, (et, partition, offset), |a| {
                    input_at(inputs[view.inputs[a]].as_ref(), row)
                });
            if merged {
                let marks = entry.part_mut(partition);
                marks.fence = offset;
                marks.touched = true;
                match part_latest.iter_mut().find(|x| x.0 == partition) {
                    Some(x) => x.1 = x.1.max(et),
                    None => part_latest.push((partition, et)),
                }
            } else {
                entry.fence = offset;
            }
            if p_e > entry.updated_ms {
                entry.updated_ms = p_e;
            }
            times.push(et);
            out.applied += 1;
            latest = latest.max(et);
        }
        let Some(first) = first else { return };
        if merged {
            for &(p, et) in &part_latest {
                out.newest.push(((ck.0, p), et));
            }
            let lowest = part_latest.iter().map(|x| x.0).min().unwrap_or(0);
            let mut fences: Vec<(i32, i64)> = entry
                .parts
                .iter()
                .filter(|m| m.touched)
                .map(|m| (m.partition, m.fence))
                .collect();
            fences.sort_unstable();
            entry.fence = next_version(entry.fence, lowest, batch_p, &fences);
            for marks in entry.parts.iter_mut().filter(|m| m.touched) {
                marks.journal.push((marks.fence, batch_p));
                if marks.journal.len() > JOURNAL_ENTRIES {
                    let cut = marks.journal.len() - JOURNAL_ENTRIES;
                    marks.journal.drain(..cut);
                }
            }
        } else {
            // every pair of an entry has the entry's view and partition
            out.newest.push(((ck.0, ck.1), latest));
            entry.journal.push((entry.fence, batch_p));
            if entry.journal.len() > JOURNAL_ENTRIES {
                let cut = entry.journal.len() - JOURNAL_ENTRIES;
                entry.journal.drain(..cut);
            }
        }
        let tiles = &mut out.tiles;
        tiles.clear();
        for (g, group) in view.layout.groups.iter().enumerate() {
            tiles.extend(times.iter().map(|&t| (g, t.div_euclid(group.hop_ms))));
        }
        tiles.sort_unstable();
        tiles.dedup();
        let key = redis_key_of(view, &ck.2);
        if merged {
            let mut w = entity_write(view, ck, key, entry, tiles, batch_p, Some(prior));
            let marks = marks_write(view, &ck.2, entry, w.expire_at_ms);
            for m in entry.parts.iter_mut() {
                m.touched = false;
            }
            // the version is a compare-and-set on the entity hash: absent, or as read
            w.expect = Some((
                part_field('f', MERGED_SLOT),
                (prior != NO_FENCE).then(|| decimal(prior)),
            ));
            out.writes.push((first, w));
            out.writes.push((first, marks));
        } else {
            out.writes.push((
                first,
                entity_write(view, ck, key, entry, tiles, batch_p, Some(prior)),
            ));
        }
    }
}

/// The local-store key of an entry: `<partition>:<redis key>`.
pub fn local_key(p: i32, redis_key: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(redis_key.len() + 8);
    key.extend_from_slice(crate::hll::int_bytes(p as i64, &mut [0u8; 20]));
    key.push(b':');
    key.extend_from_slice(redis_key.as_bytes());
    key
}

/// Version byte of [`encode_entry`]'s format.
pub const LOCAL_FORMAT: u8 = 1;

/// One partition's state of an entity as the hash fields the store holds for it (every
/// tile, the lifetime accumulators, `f`, `u` and `j` where set), packed: a version byte,
/// then per field `u16 LE name length, name, u32 LE value length, value`.
pub fn encode_entry(layout: &Layout, p: i32, entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(LOCAL_FORMAT);
    let mut put = |name: &str, value: &[u8]| {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    };
    let mut bytes = Vec::new();
    for (g, group) in layout.groups.iter().enumerate() {
        for k in entry.tiles.keys(g) {
            if let Some(tile) = entry.tiles.tile(g, k) {
                bytes.clear();
                encode_tile(tile, &mut bytes);
                put(&tile_field(p, group.hop_ms, k), &bytes);
            }
        }
    }
    if let Some(lifetime) = entry.tiles.lifetime_tile() {
        bytes.clear();
        encode_tile(lifetime, &mut bytes);
        put(&part_field('l', p), &bytes);
    }
    if entry.fence != NO_FENCE {
        put(&part_field('f', p), &decimal(entry.fence));
    }
    if entry.updated_ms != 0 {
        put(&part_field('u', p), &decimal(entry.updated_ms));
    }
    if !entry.journal.is_empty() {
        put(&part_field('j', p), &pack_journal(&entry.journal));
    }
    out
}

/// Hash fields as `(name, value)` bytes.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The fields of an [`encode_entry`] value.
pub fn decode_entry(value: &[u8]) -> Result<Fields, CodecError> {
    let bad = || CodecError(format!("not a local entry (format {LOCAL_FORMAT})"));
    let (&version, mut buf) = value.split_first().ok_or_else(bad)?;
    if version != LOCAL_FORMAT {
        return Err(bad());
    }
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Some(head)
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let len = take(&mut buf, 2).ok_or_else(bad)?;
        let name = take(&mut buf, u16::from_le_bytes([len[0], len[1]]) as usize)
            .ok_or_else(bad)?
            .to_vec();
        let len = take(&mut buf, 4).ok_or_else(bad)?;
        let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        out.push((name, take(&mut buf, n).ok_or_else(bad)?.to_vec()));
    }
    Ok(out)
}

/// The write of one entity's partition state (`engine.online.entity_write`): evicts tiles
/// stale at `now_ms`, encodes the touched tiles that remain, the lifetime accumulators,
/// fence, write time and journal, and the key's expiry; `expect`: the fence the writer read.
pub fn entity_write(
    view: &OnlineView,
    ck: &CacheKey,
    redis_key: String,
    entry: &mut Entry,
    touched: &[(usize, i64)],
    now_ms: i64,
    expect: Option<i64>,
) -> Write {
    let layout = &view.layout;
    let p = if ck.1 == MERGED { MERGED_SLOT } else { ck.1 };
    let mut evict_at = if entry.evict_at_ms == 0 {
        NEVER_MS
    } else {
        entry.evict_at_ms
    };
    if entry.evict_at_ms == 0 {
        evict_at = next_stale_ms(layout, &entry.tiles);
    }
    for &(g, k) in touched {
        let group = &layout.groups[g];
        let at = stale_at_ms(group.hop_ms, group.span, k);
        if at < evict_at {
            evict_at = at;
        }
    }
    let mut stale = Vec::new();
    if now_ms >= evict_at {
        stale = entry.tiles.evict_stale(layout, now_ms);
        evict_at = next_stale_ms(layout, &entry.tiles);
    }
    entry.evict_at_ms = evict_at;
    let mut fields = Vec::with_capacity(touched.len() + 4);
    ENCODED.with_borrow_mut(|bytes| {
        for &(g, k) in touched {
            if let Some(tile) = entry.tiles.tile(g, k) {
                bytes.clear();
                encode_tile(tile, bytes);
                fields.push((tile_field(p, layout.groups[g].hop_ms, k), bytes.to_vec()));
            }
        }
        if let Some(lifetime) = entry.tiles.lifetime_tile() {
            bytes.clear();
            encode_tile(lifetime, bytes);
            fields.push((part_field('l', p), bytes.to_vec()));
        }
    });
    fields.push((part_field('f', p), decimal(entry.fence)));
    fields.push((part_field('u', p), decimal(entry.updated_ms)));
    if ck.1 != MERGED {
        fields.push((part_field('j', p), pack_journal(&entry.journal)));
    }
    Write {
        key: redis_key,
        fields,
        delete: stale
            .iter()
            .map(|&(g, k)| tile_field(p, layout.groups[g].hop_ms, k))
            .collect(),
        expire_at_ms: expire_at_ms(layout, &entry.tiles),
        expect: expect.map(|fence| {
            (
                part_field('f', p),
                if fence == NO_FENCE {
                    None
                } else {
                    Some(decimal(fence))
                },
            )
        }),
    }
}

thread_local! {
    /// The tile encoder's buffer, reused: each encoded tile is copied out at its size.
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A merged hash's next write version: bits mixed from what the write is made of — the
/// version it was folded from, the writer's processed_at and each touched partition's new
/// fence — above the writer's lowest source partition in the low bits; never `prior`.
/// Two workers that read the same version never write the same one (their partitions
/// differ) and a retried write sets the same, as with a counter; but a write made again
/// on a state Redis reverted to (a failover that lost writes) carries another version
/// unless it is the same write, where a counter would repeat the lost one and let a
/// worker that read the lost version pass its compare-and-set on other content.
pub fn next_version(prior: i64, lowest_partition: i32, batch_p: i64, fences: &[(i32, i64)]) -> i64 {
    fn mix(h: u64, x: u64) -> u64 {
        // splitmix64's finalizer over the running state and the next input
        let mut z = h ^ x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut h = mix(mix(0, prior as u64), batch_p as u64);
    for &(p, fence) in fences {
        h = mix(mix(h, p as u64), fence as u64);
    }
    let low = i64::from(lowest_partition) & ((1 << VERSION_PARTITION_BITS) - 1);
    loop {
        let version =
            (((h >> (VERSION_PARTITION_BITS + 1)) as i64) << VERSION_PARTITION_BITS) | low;
        if version != prior {
            return version;
        }
        h = mix(h, 1);
    }
}

/// The marks write of a merged entity: the fence and journal of each partition that
/// applied an event, linked to the entity write before it ([`LINKED`]).
fn marks_write(view: &OnlineView, entity: &str, entry: &Entry, expire: Option<i64>) -> Write {
    let mut fields = Vec::new();
    for m in entry.parts.iter().filter(|m| m.touched) {
        fields.push((part_field('f', m.partition), decimal(m.fence)));
        fields.push((part_field('j', m.partition), pack_journal(&m.journal)));
    }
    Write {
        key: marks_key(view, entity),
        fields,
        delete: Vec::new(),
        expire_at_ms: expire,
        expect: Some((LINKED.to_string(), None)),
    }
}

/// One source partition's marks in a merged entity rebuilt from the log: `(partition,
/// fence, journal)`.
pub type PartitionMarks = (i32, i64, Vec<(i64, i64)>);

/// The writes of a merged entity rebuilt from the log (`crate::replay`): its entity write
/// — the tiles and lifetime accumulators as encoded, `f:0` the write version, `u:0` the
/// newest write time, the expiry [`expire_at_ms`] gives for those tiles — and its marks
/// write (`f:<p>`, `j:<p>` of every partition, the same expiry); both unchecked.
pub fn rebuilt_merged_writes(
    view: &OnlineView,
    entity: &str,
    tiles: &[((usize, i64), Vec<u8>)],
    lifetime: Option<&[u8]>,
    version: i64,
    updated_ms: i64,
    parts: &[PartitionMarks],
) -> (Write, Write) {
    let layout = &view.layout;
    let mut fields = Vec::with_capacity(tiles.len() + 3);
    let mut horizon = 0;
    for ((g, k), bytes) in tiles {
        let group = &layout.groups[*g];
        fields.push((tile_field(MERGED_SLOT, group.hop_ms, *k), bytes.clone()));
        horizon = horizon.max((k + 1) * group.hop_ms + group.span * group.hop_ms);
    }
    if let Some(bytes) = lifetime {
        fields.push((part_field('l', MERGED_SLOT), bytes.to_vec()));
    }
    fields.push((part_field('f', MERGED_SLOT), decimal(version)));
    fields.push((part_field('u', MERGED_SLOT), decimal(updated_ms)));
    let expire = (layout.lifetime.is_empty() && horizon != 0).then_some(horizon);
    let mut marks = Vec::with_capacity(2 * parts.len());
    for (p, fence, journal) in parts {
        marks.push((part_field('f', *p), decimal(*fence)));
        marks.push((part_field('j', *p), pack_journal(journal)));
    }
    let entity_write = Write {
        key: redis_key_of(view, entity),
        fields,
        delete: Vec::new(),
        expire_at_ms: expire,
        expect: None,
    };
    let marks_write = Write {
        key: marks_key(view, entity),
        fields: marks,
        delete: Vec::new(),
        expire_at_ms: expire,
        expect: None,
    };
    (entity_write, marks_write)
}

/// The marks hash of a merged view's entity: `sk:fm:<fingerprint>:{<entity>}` (same hash
/// tag as the entity hash, outside the view's `sk:<fingerprint>:*` keyspace).
pub fn marks_key(view: &OnlineView, entity: &str) -> String {
    let entity = escape(entity);
    let mut key = String::with_capacity(view.fingerprint.len() + entity.len() + 8);
    key.push_str("sk:fm:");
    key.push_str(&view.fingerprint);
    key.push_str(":{");
    key.push_str(&entity);
    key.push('}');
    key
}

/// `x` in decimal ASCII.
#[inline]
fn decimal(x: i64) -> Vec<u8> {
    crate::hll::int_bytes(x, &mut [0u8; 20]).to_vec()
}

#[inline]
fn push_decimal(out: &mut String, x: i64) {
    let mut buf = [0u8; 20];
    // SAFETY: int_bytes writes ASCII digits and '-' only
    out.push_str(unsafe { std::str::from_utf8_unchecked(crate::hll::int_bytes(x, &mut buf)) });
}

/// The field `t:<p>:<hop_ms>:<k>` of a tile.
fn tile_field(p: i32, hop_ms: i64, k: i64) -> String {
    let mut name = String::with_capacity(40);
    name.push_str("t:");
    push_decimal(&mut name, p as i64);
    name.push(':');
    push_decimal(&mut name, hop_ms);
    name.push(':');
    push_decimal(&mut name, k);
    name
}

/// The field `<kind>:<p>` of a partition's lifetime state, fence, write time or journal.
fn part_field(kind: char, p: i32) -> String {
    let mut name = String::with_capacity(8);
    name.push(kind);
    name.push(':');
    push_decimal(&mut name, p as i64);
    name
}

/// The first time at which tile `k` of a hop group spanning `span` tiles is stale.
pub fn stale_at_ms(hop_ms: i64, span: i64, k: i64) -> i64 {
    (k + span) * hop_ms + 1
}

/// When the first held tile becomes stale (`NEVER_MS` when none can).
pub fn next_stale_ms(layout: &Layout, tiles: &EntityTiles) -> i64 {
    let mut earliest = NEVER_MS;
    for (g, group) in layout.groups.iter().enumerate() {
        if let Some(k) = tiles.oldest(g) {
            earliest = earliest.min(stale_at_ms(group.hop_ms, group.span, k));
        }
    }
    earliest
}

/// When no window can use any held tile any more (`None`: lifetime state never expires).
pub fn expire_at_ms(layout: &Layout, tiles: &EntityTiles) -> Option<i64> {
    if !layout.lifetime.is_empty() {
        return None;
    }
    let mut horizon = 0;
    for (g, group) in layout.groups.iter().enumerate() {
        if let Some(k) = tiles.newest(g) {
            horizon = horizon.max((k + 1) * group.hop_ms + group.span * group.hop_ms);
        }
    }
    (horizon != 0).then_some(horizon)
}

/// One script call's worth of entity writes, as the `_WRITE_LUA` script of
/// `connectors/redis_store.py` takes them: `body` is the RESP bulk strings of `numkeys`, the
/// keys, then per write its field count, delete count, expiry, check, checked field and
/// value, field/value pairs and deleted fields; `elements` counts them.
#[derive(Clone, Debug)]
pub struct ScriptChunk {
    pub elements: usize,
    pub first: usize,
    pub count: usize,
    pub body: Vec<u8>,
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut buf = [0u8; 20];
    out.push(b'$');
    out.extend_from_slice(crate::hll::int_bytes(bytes.len() as i64, &mut buf));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

fn bulk_int(out: &mut Vec<u8>, x: i64) {
    bulk(out, crate::hll::int_bytes(x, &mut [0u8; 20]));
}

/// Digits of `x` in decimal (`x >= 0`).
#[inline]
fn digits(x: usize) -> usize {
    x.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The RESP size of a bulk string of `n` bytes.
#[inline]
fn bulk_len(n: usize) -> usize {
    n + digits(n) + 5
}

fn int_len(x: i64) -> usize {
    bulk_len(digits(x.unsigned_abs() as usize) + usize::from(x < 0))
}

/// The RESP size of one write's arguments in a script call (its key apart).
fn write_len(w: &Write) -> usize {
    let mut n = int_len(w.fields.len() as i64) + int_len(w.delete.len() as i64);
    n += w.expire_at_ms.map_or(bulk_len(0), int_len);
    n += match &w.expect {
        None => 3 * bulk_len(0),
        Some((field, None)) if field == LINKED => 2 * bulk_len(0) + bulk_len(1),
        Some((field, value)) => {
            bulk_len(1) + bulk_len(field.len()) + bulk_len(value.as_ref().map_or(0, Vec::len))
        }
    };
    for (name, value) in &w.fields {
        n += bulk_len(name.len()) + bulk_len(value.len());
    }
    for name in &w.delete {
        n += bulk_len(name.len());
    }
    n
}

fn is_linked(w: &Write) -> bool {
    matches!(&w.expect, Some((f, None)) if f == LINKED)
}

/// Group `writes` into script calls of about `max_args` arguments (a call starts a new
/// chunk once the current one holds `max_args` or more, as the Python packer does). With
/// [`PARALLEL_BY_DEFAULT`], from [`PARALLEL_WRITES`] writes on the chunks' bodies are
/// packed on the rayon pool.
pub fn script_chunks(writes: &[Write], max_args: usize) -> Vec<ScriptChunk> {
    script_chunks_from(writes, max_args, by_default(PARALLEL_WRITES))
}

/// [`script_chunks`], packing in parallel from `parallel_writes` writes on (the same bytes
/// either way).
pub fn script_chunks_from(
    writes: &[Write],
    max_args: usize,
    parallel_writes: usize,
) -> Vec<ScriptChunk> {
    // the chunks' bounds and sizes first (cheap), then their bodies
    let mut bounds: Vec<(usize, usize, usize)> = Vec::new();
    let mut start = 0;
    while start < writes.len() {
        let mut size = 0;
        let mut end = start;
        let mut bytes = 0;
        while end < writes.len() && (size < max_args || is_linked(&writes[end])) {
            let w = &writes[end];
            size += 7 + 2 * w.fields.len() + w.delete.len();
            bytes += bulk_len(w.key.len()) + write_len(w);
            end += 1;
        }
        bounds.push((start, end, bytes + int_len((end - start) as i64)));
        start = end;
    }
    let pack = |&(start, end, bytes): &(usize, usize, usize)| {
        let chunk = &writes[start..end];
        let mut body = Vec::with_capacity(bytes);
        bulk_int(&mut body, chunk.len() as i64);
        for w in chunk {
            bulk(&mut body, w.key.as_bytes());
        }
        let mut elements = 1 + chunk.len();
        for w in chunk {
            elements += pack_args(&mut body, w);
        }
        debug_assert_eq!(body.len(), bytes, "the body's size is computed exactly");
        ScriptChunk {
            elements,
            first: start,
            count: chunk.len(),
            body,
        }
    };
    if writes.len() >= parallel_writes && bounds.len() > 1 {
        bounds.par_iter().map(pack).collect()
    } else {
        bounds.iter().map(pack).collect()
    }
}

/// One write's arguments of a script call (its key apart) appended to `out`; how many.
fn pack_args(out: &mut Vec<u8>, w: &Write) -> usize {
    bulk_int(out, w.fields.len() as i64);
    bulk_int(out, w.delete.len() as i64);
    match w.expire_at_ms {
        None => bulk(out, b""),
        Some(at) => bulk_int(out, at),
    }
    match &w.expect {
        None => {
            bulk(out, b"");
            bulk(out, b"");
            bulk(out, b"");
        }
        Some((field, None)) if field == LINKED => {
            bulk(out, b"&");
            bulk(out, b"");
            bulk(out, b"");
        }
        Some((field, None)) => {
            bulk(out, b"0");
            bulk(out, field.as_bytes());
            bulk(out, b"");
        }
        Some((field, Some(value))) => {
            bulk(out, b"1");
            bulk(out, field.as_bytes());
            bulk(out, value);
        }
    }
    for (name, value) in &w.fields {
        bulk(out, name.as_bytes());
        bulk(out, value);
    }
    for name in &w.delete {
        bulk(out, name.as_bytes());
    }
    6 + 2 * w.fields.len() + w.delete.len()
}

/// Slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16: [u16; 256] = crc16_table();

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the bytes between the
/// first `{` and the next `}` when that is not empty — else of the whole key, mod 16,384.
pub fn key_slot(key: &[u8]) -> u16 {
    let mut hashed = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                hashed = &key[open + 1..open + 1 + len];
            }
        }
    }
    let mut crc: u16 = 0;
    for &b in hashed {
        crc = (crc << 8) ^ CRC16[usize::from(((crc >> 8) as u8) ^ b)];
    }
    crc % CLUSTER_SLOTS
}

/// One write-script call of a Redis Cluster: writes of one slot only. `keys` is the RESP
/// bulk strings of the writes' keys, `args` those of their arguments (as `ScriptChunk`'s
/// body, without `numkeys`: the caller adds the slot's fence hash between the two);
/// `elements` counts both; the writes are `order[first..first + count]`.
#[derive(Clone, Debug)]
pub struct SlotChunk {
    pub slot: u16,
    pub elements: usize,
    pub first: usize,
    pub count: usize,
    pub keys: Vec<u8>,
    pub args: Vec<u8>,
}

/// `writes` grouped by cluster slot (their order kept within a slot, so a linked write
/// stays after the write it depends on), each slot's writes chunked as `script_chunks`
/// does. Returns the write indices in the chunks' order and the chunks, by slot.
pub fn slot_chunks(writes: &[Write], max_args: usize) -> (Vec<usize>, Vec<SlotChunk>) {
    let slots: Vec<u16> = writes.iter().map(|w| key_slot(w.key.as_bytes())).collect();
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| slots[i]); // stable
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let slot = slots[order[start]];
        let mut size = 0;
        let mut end = start;
        while end < order.len()
            && slots[order[end]] == slot
            && (size < max_args || is_linked(&writes[order[end]]))
        {
            let w = &writes[order[end]];
            size += 7 + 2 * w.fields.len() + w.delete.len();
            end += 1;
        }
        let chunk = &order[start..end];
        let mut keys =
            Vec::with_capacity(chunk.iter().map(|&i| bulk_len(writes[i].key.len())).sum());
        let mut args = Vec::with_capacity(chunk.iter().map(|&i| write_len(&writes[i])).sum());
        let mut elements = chunk.len();
        for &i in chunk {
            bulk(&mut keys, writes[i].key.as_bytes());
            elements += pack_args(&mut args, &writes[i]);
        }
        out.push(SlotChunk {
            slot,
            elements,
            first: start,
            count: chunk.len(),
            keys,
            args,
        });
        start = end;
    }
    (order, out)
}

/// The state partition `p` holds in a loaded hash (an empty entry when it holds none).
pub fn parse_partition(
    view: &OnlineView,
    p: i32,
    fields: &[(&[u8], &[u8])],
) -> Result<Entry, CodecError> {
    let layout = &view.layout;
    let mut entry = Entry::new(layout);
    for &(name, value) in fields {
        let Some((kind, part, hop, k)) = field_name(name) else {
            continue;
        };
        if part != p {
            continue;
        }
        match kind {
            b't' => {
                let Some(g) = layout.groups.iter().position(|g| g.hop_ms == hop) else {
                    continue;
                };
                let aggs: Vec<&Agg> = layout.groups[g]
                    .members
                    .iter()
                    .map(|&i| &layout.aggs[i])
                    .collect();
                entry.tiles.insert_tile(g, k, decode_tile(&aggs, value)?);
            }
            b'l' => {
                let aggs: Vec<&Agg> = layout.lifetime.iter().map(|&i| &layout.aggs[i]).collect();
                entry.tiles.set_lifetime(decode_tile(&aggs, value)?);
            }
            b'f' => entry.fence = parse_int(value)?,
            b'u' => entry.updated_ms = parse_int(value)?,
            b'j' => entry.journal = unpack_journal(value)?,
            _ => {}
        }
    }
    Ok(entry)
}

/// Every partition's state in a loaded hash, by partition.
pub fn parse_all(
    view: &OnlineView,
    fields: &[(&[u8], &[u8])],
) -> Result<Vec<(i32, Entry)>, CodecError> {
    let mut parts: Vec<i32> = fields
        .iter()
        .filter_map(|(name, _)| field_name(name).map(|f| f.1))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    parts
        .into_iter()
        .map(|p| Ok((p, parse_partition(view, p, fields)?)))
        .collect()
}

/// Feature values as of `t_ms` from the tiles of every partition in one hash (an online
/// read): only the tiles a requested window covers (and the lifetime accumulators when a
/// lifetime aggregation is requested) are decoded; partitions merge tile by tile.
pub fn evaluate(
    view: &OnlineView,
    fields: &[(&[u8], &[u8])],
    t_ms: i64,
    indices: &[usize],
) -> Result<Vec<Value>, CodecError> {
    let layout = &view.layout;
    let mut low: Vec<Option<i64>> = vec![None; layout.groups.len()];
    let ends: Vec<i64> = layout
        .groups
        .iter()
        .map(|g| window_end(g.hop_ms, t_ms))
        .collect();
    let mut lifetime = false;
    for &i in indices {
        match layout.slots[i] {
            (None, _) => lifetime = true,
            (Some(g), _) => {
                let hop = layout.groups[g].hop_ms;
                let start = ends[g] - layout.windows_ms[i].unwrap_or(hop) / hop;
                low[g] = Some(low[g].map_or(start, |l: i64| l.min(start)));
            }
        }
    }
    let mut merged = EntityTiles::new(layout);
    for &(name, value) in fields {
        let Some((kind, _, hop, k)) = field_name(name) else {
            continue;
        };
        let named = |e: CodecError| {
            CodecError(format!(
                "field '{}': cannot decode: {}",
                String::from_utf8_lossy(name),
                e.0
            ))
        };
        match kind {
            b't' => {
                let Some(g) = layout.groups.iter().position(|g| g.hop_ms == hop) else {
                    continue;
                };
                match low[g] {
                    Some(l) if l <= k && k < ends[g] => {}
                    _ => continue,
                }
                let aggs: Vec<&Agg> = layout.groups[g]
                    .members
                    .iter()
                    .map(|&i| &layout.aggs[i])
                    .collect();
                let tile = decode_tile(&aggs, value).map_err(named)?;
                merged.merge_tile(layout, g, k, &tile);
            }
            b'l' if lifetime => {
                let aggs: Vec<&Agg> = layout.lifetime.iter().map(|&i| &layout.aggs[i]).collect();
                let tile = decode_tile(&aggs, value).map_err(named)?;
                merged.merge_lifetime(layout, &tile);
            }
            _ => {}
        }
    }
    Ok(indices
        .iter()
        .map(|&i| merged.value(layout, i, t_ms))
        .collect())
}

fn parse_int(v: &[u8]) -> Result<i64, CodecError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CodecError(format!("not a decimal integer: {v:?}")))
}

/// `(kind, partition, hop, k)` of a state field name; `None` for others.
pub fn field_name(name: &[u8]) -> Option<(u8, i32, i64, i64)> {
    let text = std::str::from_utf8(name).ok()?;
    let mut parts = text.split(':');
    let kind = parts.next()?;
    let p: i32 = parts.next()?.parse().ok()?;
    if p < 0 {
        return None;
    }
    match kind {
        "t" => {
            let hop: i64 = parts.next()?.parse().ok()?;
            let k: i64 = parts.next()?.parse().ok()?;
            parts.next().is_none().then_some((b't', p, hop, k))
        }
        "l" | "f" | "u" | "j" => parts
            .next()
            .is_none()
            .then_some((kind.as_bytes()[0], p, 0, 0)),
        _ => None,
    }
}

fn journal_lookup(journal: &[(i64, i64)], offset: i64) -> Option<i64> {
    journal
        .iter()
        .find(|(fence, _)| offset <= *fence)
        .map(|&(_, pt)| pt)
}

/// The pairs of a prepared batch grouped by cache entry: `of(k)` lists entry `k`'s pair
/// indices in batch order.
struct ByKey {
    start: Vec<u32>,
    pairs: Vec<u32>,
}

impl ByKey {
    #[inline]
    fn of(&self, k: usize) -> &[u32] {
        &self.pairs[self.start[k] as usize..self.start[k + 1] as usize]
    }
}

/// A stable counting sort of `pairs` by their cache entry.
fn group_by_key(pairs: &[Pair], nkeys: usize) -> ByKey {
    let mut start = vec![0u32; nkeys + 1];
    for p in pairs {
        start[p.key as usize + 1] += 1;
    }
    for k in 0..nkeys {
        start[k + 1] += start[k];
    }
    let mut next = start.clone();
    let mut sorted = vec![0u32; pairs.len()];
    for (i, p) in pairs.iter().enumerate() {
        let at = &mut next[p.key as usize];
        sorted[*at as usize] = i as u32;
        *at += 1;
    }
    ByKey {
        start,
        pairs: sorted,
    }
}

/// The Redis key of an entity of `view` (see [`OnlineCore::redis_key`]).
fn redis_key_of(view: &OnlineView, entity: &str) -> String {
    let entity = escape(entity);
    let mut key = String::with_capacity(view.fingerprint.len() + entity.len() + 5);
    key.push_str("sk:");
    key.push_str(&view.fingerprint);
    key.push_str(":{");
    key.push_str(&entity);
    key.push('}');
    key
}

/// Escape the hash-tag braces (and `%`) of an entity's text, as `engine.online.entity_text`.
pub fn escape(text: &str) -> String {
    if !text.contains(['%', '{', '}']) {
        return text.to_string();
    }
    text.replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// The entity text of row `row` (`engine.keys.encode_key`): a single key's text, or a
/// compact JSON array of several; `false` when a key is null or not a str/int.
pub fn entity_text(keys: &[&Column], row: usize, out: &mut String) -> bool {
    out.clear();
    if keys.len() == 1 {
        return push_key(keys[0], row, out, false);
    }
    out.push('[');
    for (i, col) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !push_key(col, row, out, true) {
            return false;
        }
    }
    out.push(']');
    true
}

fn push_key(col: &Column, row: usize, out: &mut String, json: bool) -> bool {
    use std::fmt::Write as _;
    if !col.is_valid(row) {
        return false;
    }
    let s: &str = match &col.data {
        ColumnData::Int(v) => {
            let _ = write!(out, "{}", v[row]);
            return true;
        }
        ColumnData::Str { .. } => match col.str_at(row) {
            Some(s) => s,
            None => return false,
        },
        ColumnData::Value(v) => match &v[row] {
            Value::Int(i) => {
                let _ = write!(out, "{i}");
                return true;
            }
            Value::Str(s) => s,
            _ => return false,
        },
        _ => return false,
    };
    if json {
        json_string(s, out);
    } else {
        out.push_str(s);
    }
    true
}

/// A JSON string as Python's `json.dumps(..., ensure_ascii=False)` writes it.
fn json_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An aggregation input cell of a column (the worker's fold and rebuild-online's replay).
#[inline]
pub(crate) fn input_at(col: Option<&Column>, row: usize) -> Input<'_> {
    let Some(col) = col else { return Input::Null };
    if !col.is_valid(row) {
        return Input::Null;
    }
    match &col.data {
        ColumnData::Int(v) => Input::Int(v[row]),
        ColumnData::Float(v) => Input::Float(v[row]),
        ColumnData::Bool(v) => Input::Bool(v[row]),
        ColumnData::Str { .. } => col.str_at(row).map_or(Input::Null, Input::Str),
        ColumnData::Bytes { offsets, data } => {
            Input::Bytes(&data[offsets[row] as usize..offsets[row + 1] as usize])
        }
        ColumnData::Value(v) => v[row].as_input(),
    }
}

// -- the journal's msgpack form: an array of [int, int] -----------------------------------

fn pack_int(x: i64, out: &mut Vec<u8>) {
    if (0..128).contains(&x) {
        out.push(x as u8);
    } else if (-32..0).contains(&x) {
        out.push(x as i8 as u8);
    } else if x >= 0 {
        if x <= u8::MAX as i64 {
            out.push(0xcc);
            out.push(x as u8);
        } else if x <= u16::MAX as i64 {
            out.push(0xcd);
            out.extend_from_slice(&(x as u16).to_be_bytes());
        } else if x <= u32::MAX as i64 {
            out.push(0xce);
            out.extend_from_slice(&(x as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(x as u64).to_be_bytes());
        }
    } else if x >= i8::MIN as i64 {
        out.push(0xd0);
        out.push(x as i8 as u8);
    } else if x >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(x as i16).to_be_bytes());
    } else if x >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(x as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&x.to_be_bytes());
    }
}

/// The journal as msgpack `[[fence, processed_at], ...]` (what `msgpack.packb` writes).
pub fn pack_journal(journal: &[(i64, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + journal.len() * 20);
    out.push(0x90 | journal.len().min(15) as u8);
    for &(a, b) in journal.iter().take(15) {
        out.push(0x92);
        pack_int(a, &mut out);
        pack_int(b, &mut out);
    }
    out
}

fn unpack_int(buf: &mut &[u8]) -> Option<i64> {
    let (&b, rest) = buf.split_first()?;
    *buf = rest;
    let take = |buf: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if buf.len() < n {
            return None;
        }
        let (h, t) = buf.split_at(n);
        *buf = t;
        Some(h.to_vec())
    };
    Some(match b {
        0x00..=0x7f => b as i64,
        0xe0..=0xff => b as i8 as i64,
        0xcc => take(buf, 1)?[0] as i64,
        0xcd => u16::from_be_bytes(take(buf, 2)?.try_into().ok()?) as i64,
        0xce => u32::from_be_bytes(take(buf, 4)?.try_into().ok()?) as i64,
        0xcf => u64::from_be_bytes(take(buf, 8)?.try_into().ok()?) as i64,
        0xd0 => take(buf, 1)?[0] as i8 as i64,
        0xd1 => i16::from_be_bytes(take(buf, 2)?.try_into().ok()?) as i64,
        0xd2 => i32::from_be_bytes(take(buf, 4)?.try_into().ok()?) as i64,
        0xd3 => i64::from_be_bytes(take(buf, 8)?.try_into().ok()?),
        _ => return None,
    })
}

/// Inverse of [`pack_journal`].
pub fn unpack_journal(bytes: &[u8]) -> Result<Vec<(i64, i64)>, CodecError> {
    let bad = || {
        CodecError(format!(
            "journal field is not msgpack [[int, int], ...]: {bytes:?}"
        ))
    };
    let mut buf = bytes;
    let (&head, rest) = buf.split_first().ok_or_else(bad)?;
    buf = rest;
    let n = match head {
        0x90..=0x9f => (head & 0x0f) as usize,
        0xdc => {
            if buf.len() < 2 {
                return Err(bad());
            }
            let n = u16::from_be_bytes([buf[0], buf[1]]) as usize;
            buf = &buf[2..];
            n
        }
        _ => return Err(bad()),
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (&pair, rest) = buf.split_first().ok_or_else(bad)?;
        buf = rest;
        if pair != 0x92 {
            return Err(bad());
        }
        let a = unpack_int(&mut buf).ok_or_else(bad)?;
        let b = unpack_int(&mut buf).ok_or_else(bad)?;
        out.push((a, b));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_roundtrips_through_msgpack_ints() {
        let j = vec![
            (0, 1),
            (-1, 200),
            (70_000, -40_000),
            (i64::MAX, i64::MIN),
            (5_000_000_000, 1),
        ];
        assert_eq!(unpack_journal(&pack_journal(&j)).unwrap(), j);
        assert!(unpack_journal(b"x").is_err());
    }

    #[test]
    fn field_names() {
        assert_eq!(
            field_name(b"t:3:3600000:12"),
            Some((b't', 3, 3_600_000, 12))
        );
        assert_eq!(field_name(b"f:0"), Some((b'f', 0, 0, 0)));
        assert_eq!(field_name(b"w:0"), None);
        assert_eq!(field_name(b"t:x:1:2"), None);
    }

    #[test]
    fn merged_versions_differ_by_writer_and_content() {
        let first = next_version(NO_FENCE, 3, 1000, &[(3, 17)]);
        assert_eq!(first & ((1 << VERSION_PARTITION_BITS) - 1), 3);
        assert!(first >= 0);
        assert_ne!(first, next_version(NO_FENCE, 5, 1000, &[(5, 17)]));
        assert_eq!(first, next_version(NO_FENCE, 3, 1000, &[(3, 17)])); // a retried write
                                                                        // the same writer from the same prior, made again after Redis lost the first
        assert_ne!(first, next_version(NO_FENCE, 3, 1000, &[(3, 18)]));
        assert_ne!(first, next_version(NO_FENCE, 3, 1001, &[(3, 17)]));
        let second = next_version(first, 5, 1000, &[(5, 2)]);
        assert_ne!(second, first);
        assert_eq!(second & ((1 << VERSION_PARTITION_BITS) - 1), 5);
    }

    #[test]
    fn a_linked_write_never_starts_a_chunk() {
        let w = |key: &str, expect: Option<(String, Option<Vec<u8>>)>| Write {
            key: key.into(),
            fields: vec![("f:0".into(), b"1".to_vec())],
            delete: vec![],
            expire_at_ms: None,
            expect,
        };
        let writes = [
            w("sk:a:{x}", Some(("f:0".into(), None))),
            w("sk:fm:a:{x}", Some((LINKED.into(), None))),
            w("sk:a:{y}", None),
        ];
        let chunks = script_chunks(&writes, 9); // full after the first write
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.first, c.count))
                .collect::<Vec<_>>(),
            [(0, 2), (2, 1)]
        );
        let text = String::from_utf8_lossy(&chunks[0].body).into_owned();
        assert!(text.contains("$11\r\nsk:fm:a:{x}\r\n"));
        assert!(text.contains("$1\r\n&\r\n$0\r\n\r\n$0\r\n\r\n"));
    }

    #[test]
    fn script_chunks_are_resp_bulk_strings() {
        let w = |key: &str, expect, expire| Write {
            key: key.into(),
            fields: vec![
                ("t:0:10000:-3".into(), vec![7; 12]),
                ("f:0".into(), b"-1".to_vec()),
            ],
            delete: vec!["t:0:10000:-9".into()],
            expire_at_ms: expire,
            expect,
        };
        let writes = [
            w("sk:a:{x}", None, None),
            w(
                "sk:a:{y}",
                Some(("f:0".into(), None)),
                Some(123_456_789_012),
            ),
            w(
                "sk:a:{z}",
                Some(("f:0".into(), Some(b"10".to_vec()))),
                Some(-5),
            ),
        ];
        let chunks = script_chunks(&writes, 24);
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].first, chunks[0].count), (0, 2));
        assert_eq!(chunks[0].elements, 1 + 2 + 2 * (6 + 4 + 1));
        let text = String::from_utf8_lossy(&chunks[1].body).into_owned();
        let want = "$1\r\n1\r\n$8\r\nsk:a:{z}\r\n$1\r\n2\r\n$1\r\n1\r\n$2\r\n-5\r\n\
                    $1\r\n1\r\n$3\r\nf:0\r\n$2\r\n10\r\n$12\r\nt:0:10000:-3\r\n\
                    $12\r\n\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\r\n\
                    $3\r\nf:0\r\n$2\r\n-1\r\n$12\r\nt:0:10000:-9\r\n";
        assert_eq!(text, want);
    }

    #[test]
    fn key_slots_follow_redis_cluster() {
        // values of Redis' CLUSTER KEYSLOT
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31C3 % CLUSTER_SLOTS);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}")); // empty tag: whole key
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn slot_chunks_group_by_slot_in_order() {
        let w = |key: &str, expect: Option<(String, Option<Vec<u8>>)>| Write {
            key: key.into(),
            fields: vec![("f:0".into(), b"1".to_vec())],
            delete: vec![],
            expire_at_ms: Some(5),
            expect,
        };
        let linked = || Some((LINKED.to_string(), None));
        let writes = [
            w("sk:a:{x}", None),
            w("sk:a:{y}", None),
            w("sk:m:{x}", linked()),
            w("sk:a:{x}", None),
            w("sk:b:{x}", linked()),
        ];
        let (order, chunks) = slot_chunks(&writes, 18);
        let (sx, sy) = (key_slot(b"x"), key_slot(b"y"));
        assert!(chunks.windows(2).all(|c| c[0].slot <= c[1].slot));
        let x: Vec<&SlotChunk> = chunks.iter().filter(|c| c.slot == sx).collect();
        // 9 arguments each: a new chunk at 18, but a linked write stays with its lead
        assert_eq!(x.iter().map(|c| c.count).collect::<Vec<_>>(), vec![2, 2]);
        let xs: Vec<usize> = x
            .iter()
            .flat_map(|c| order[c.first..c.first + c.count].to_vec())
            .collect();
        assert_eq!(xs, vec![0, 2, 3, 4]);
        let y = chunks.iter().find(|c| c.slot == sy).unwrap();
        assert_eq!((y.count, y.elements), (1, 1 + 8));
        assert_eq!(y.keys, b"$8\r\nsk:a:{y}\r\n");
        // the same argument bytes as script_chunks' body after its numkeys and keys
        let one = script_chunks(&writes[1..2], 100);
        let head = b"$1\r\n1\r\n$8\r\nsk:a:{y}\r\n".len();
        assert_eq!(y.args, one[0].body[head..]);
        assert_eq!(one[0].elements, 1 + y.elements);
    }

    #[test]
    fn local_entries_roundtrip_and_refuse_garbage() {
        assert_eq!(local_key(7, "sk:a:{x}"), b"7:sk:a:{x}");
        let layout = Layout::new(vec![], vec![], vec![]).unwrap();
        let mut entry = Entry::new(&layout);
        assert_eq!(encode_entry(&layout, 3, &entry), vec![LOCAL_FORMAT]);
        entry.fence = 42;
        entry.updated_ms = 1_000;
        entry.journal = vec![(42, 1_000)];
        let fields = decode_entry(&encode_entry(&layout, 3, &entry)).unwrap();
        let names: Vec<&[u8]> = fields.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"f:3"[..], b"u:3", b"j:3"]);
        assert_eq!(fields[2].1, pack_journal(&entry.journal));
        assert!(decode_entry(b"").is_err());
        assert!(decode_entry(&[LOCAL_FORMAT, 3, 0, b'f']).is_err());
        assert!(decode_entry(&[LOCAL_FORMAT + 1]).is_err());
    }

    #[test]
    fn field_names_as_written() {
        assert_eq!(tile_field(3, 3_600_000, -12), "t:3:3600000:-12");
        assert_eq!(part_field('j', 41), "j:41");
        assert_eq!(decimal(i64::MIN), b"-9223372036854775808");
        for x in [0usize, 9, 10, 99, 100, 12345] {
            assert_eq!(digits(x), x.to_string().len());
        }
    }

    #[test]
    fn escaping_and_json_keys() {
        assert_eq!(escape("a{b}%"), "a%7Bb%7D%25");
        let mut s = String::new();
        json_string("q\"\\\n\u{1}é", &mut s);
        assert_eq!(s, "\"q\\\"\\\\\\n\\u0001é\"");
    }
}
