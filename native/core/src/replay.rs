//! Rebuild-online's replay (`engine.rebuild`): one source partition of the event log folded
//! into every view's entity state, as the workers computed it, then one write per entity.
//!
//! The same fold as [`OnlineCore::replay`](crate::online::OnlineCore::replay) — each record
//! admitted by its *logged* `processed_at`, no fences checked (the log holds each offset
//! once), the tiles stale at the rebuild's `now_ms` dropped after each batch — and the same
//! writes as [`OnlineCore::replay_writes`](crate::online::OnlineCore::replay_writes) (every
//! tile, the fence, the write time and a one-entry journal, built by [`entity_write`]), but
//! built for a whole partition at once:
//!
//! - entities are interned once per row and row group (not once per row and view), and a
//!   view's entries are a vector indexed by the interned entity: no key is copied or hashed
//!   per (row, view);
//! - [`Replay::fold_file`] decodes an event-log file itself (the Avro container, the
//!   "each offset once" rule of `engine.log_files`) when no view of the replay runs user
//!   code, so a partition is replayed without the GIL and partitions run in parallel;
//! - the writes come out ready for the store's write script ([`crate::online::script_chunks`]);
//! - a replay of merge-on-write views ([`Replay::set_merged`]) folds every partition in turn
//!   ([`Replay::set_partition`]) into one tile set per entity, exactly as the workers' merged
//!   path (`OnlineCore::apply_logged`, one batch at a time, partition after partition) leaves
//!   the entity and marks hashes: per batch that admits a record of an entity, the tiles it
//!   folds into are decoded from their encodings (as loaded from the store), folded, and
//!   encoded again (as written), the version chained, the partition's fence and journal
//!   moved on. The decode/encode round trip is kept because a `count_distinct` set is
//!   encoded in its hash set's order, which depends on how the set was built: only the same
//!   steps give the same bytes.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxBuildHasher;

use crate::agg::Agg;
use crate::avro::{read_container, AvroError};
use crate::codec::{decode_tile, encode_tile};
use crate::columns::{Batch, Column, ColumnData};
use crate::online::{
    entity_text, entity_write, escape, input_at, next_version, parse_partition,
    rebuilt_merged_writes, CacheKey, Entry, GroupColumns, OnlineGroup, OnlineView, PartitionMarks,
    Write, JOURNAL_ENTRIES, NO_FENCE,
};
use crate::tiles::EntityTiles;
use crate::tiles::{window_end, Layout};
use crate::value::Value;

/// One entity's state in one view, and the batch that last visited it.
struct Slot {
    entry: Entry,
    seen: u64,
    /// The batch that last admitted a record into it.
    admitted: u64,
    /// Merged views only: the entity as the store would hold it between batches.
    merged: Option<Box<Stored>>,
}

/// A merged entity between batches, as the workers' merged path leaves its hashes: the
/// tiles encoded (`entry.tiles` holds them decoded only while a batch folds into them).
struct Stored {
    tiles: BTreeMap<(usize, i64), Vec<u8>>,
    lifetime: Option<Vec<u8>>,
    /// The write version (`f:0`).
    version: i64,
    /// Per source partition that applied an event: its fence and journal (the marks hash).
    parts: Vec<PartitionMarks>,
}

impl Stored {
    fn new() -> Stored {
        Stored {
            tiles: BTreeMap::new(),
            lifetime: None,
            version: NO_FENCE,
            parts: Vec::new(),
        }
    }

    /// The lifetime accumulators decoded into `tiles`, as the workers' merged path loads
    /// them at the start of a batch.
    fn load_lifetime(&self, layout: &crate::tiles::Layout, tiles: &mut EntityTiles) {
        if let Some(bytes) = &self.lifetime {
            let aggs: Vec<&Agg> = layout.lifetime.iter().map(|&i| &layout.aggs[i]).collect();
            tiles.set_lifetime(decode_tile(&aggs, bytes).expect("a tile encoded here"));
        }
    }

    /// Every group's tile of event time `t` decoded into `tiles`, unless there already: the
    /// workers' merged path decodes every tile at the start of a batch, but only the ones
    /// the batch folds into are written again (the others keep their bytes), so only those
    /// are decoded here.
    /// `oldest[g]` is group g's oldest tile live at the rebuild's `now`: every tile stored
    /// is live then (the batches evict at that `now` before storing), so an older one is
    /// never looked up.
    #[inline]
    fn load_tiles(
        &self,
        layout: &crate::tiles::Layout,
        tiles: &mut EntityTiles,
        t: i64,
        oldest: &[i64],
    ) {
        if self.tiles.is_empty() {
            return;
        }
        for (g, group) in layout.groups.iter().enumerate() {
            let k = t.div_euclid(group.hop_ms);
            if k < oldest[g] || tiles.tile(g, k).is_some() {
                continue;
            }
            if let Some(bytes) = self.tiles.get(&(g, k)) {
                let aggs: Vec<&Agg> = group.members.iter().map(|&i| &layout.aggs[i]).collect();
                tiles.insert_tile(
                    g,
                    k,
                    decode_tile(&aggs, bytes).expect("a tile encoded here"),
                );
            }
        }
    }

    /// The batch's write: the touched tiles (after eviction at `now_ms`) and the lifetime
    /// accumulators encoded, the evicted tiles dropped, the version chained and the
    /// partition's fence and journal moved on, as `OnlineCore::apply` and `entity_write`
    /// do for a merged entry.
    fn store(&mut self, tiles: &EntityTiles, p: i32, fence: i64, now_ms: i64) {
        // the tiles the batch loaded or folded into (after eviction): a tile is only ever
        // in `tiles` because a record of the batch had its event time, so these are the
        // batch's touched tiles still live, as the workers' merged path encodes them
        for (g, k, tile) in tiles.iter_tiles() {
            let bytes = self.tiles.entry((g, k)).or_default();
            bytes.clear();
            encode_tile(tile, bytes);
        }
        // (a tile stored is live at `now_ms`, the one time of the rebuild: none is evicted)
        if let Some(lifetime) = tiles.lifetime_tile() {
            let bytes = self.lifetime.get_or_insert_with(Vec::new);
            bytes.clear();
            encode_tile(lifetime, bytes);
        }
        self.version = next_version(self.version, p, now_ms, &[(p, fence)]);
        let at = match self.parts.iter().position(|m| m.0 == p) {
            Some(at) => at,
            None => {
                self.parts.push((p, NO_FENCE, Vec::new()));
                self.parts.len() - 1
            }
        };
        let marks = &mut self.parts[at];
        marks.1 = fence;
        marks.2.push((fence, now_ms));
        let over = marks.2.len().saturating_sub(JOURNAL_ENTRIES);
        marks.2.drain(..over);
    }
}

/// What [`Replay::fold_file`] took from one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// `records` folded; `last` is the highest offset among them (None: none above `high`).
    Folded { records: usize, last: Option<i64> },
    /// The file holds a column the native path does not read the way the Python path does
    /// (not a plain int/float/bool/str/bytes column, or a null offset, time or
    /// processed_at): nothing was folded; fold it with [`Replay::fold`] instead.
    Unsupported,
}

/// The replay of one source partition for the views of one source.
pub struct Replay {
    views: Vec<OnlineView>,
    groups: Vec<OnlineGroup>,
    members: Vec<Vec<u32>>,
    partition: i32,
    /// Per group: entity text → interned id, and the texts by id.
    ids: Vec<HashMap<Box<str>, u32, FxBuildHasher>>,
    texts: Vec<Vec<Box<str>>>,
    /// Per view: its entities' state by the interned id of the view's group.
    slots: Vec<Vec<Option<Slot>>>,
    /// Per view: the ids visited by the current batch.
    visited: Vec<Vec<u32>>,
    /// Per view: the newest event time folded (admitted), `i64::MIN` before any.
    newest: Vec<i64>,
    /// Per view: merge-on-write (one tile set per entity for every partition folded).
    merged: Vec<bool>,
    batch: u64,
    /// Per view, for the `now_ms` they were made for: the layouts records fold with.
    live: Option<(i64, Vec<LiveLayouts>)>,
    /// Scratch of [`Replay::fold`]: a batch's row → interned entity, rows by entity.
    row_ids: Vec<u32>,
    counts: Vec<u32>,
    order: Vec<u32>,
}

/// A row without an entity in [`Replay::fold`] (a null or missing key).
const NO_ENTITY: u32 = u32::MAX;

/// `order`: the rows of `row_ids` (interned entities below `entities`, or [`NO_ENTITY`],
/// left out) grouped by entity in ascending id order, each entity's rows ascending — a
/// stable counting sort.
fn by_entity(row_ids: &[u32], entities: usize, counts: &mut Vec<u32>, order: &mut Vec<u32>) {
    counts.clear();
    counts.resize(entities + 1, 0);
    for &id in row_ids {
        if id != NO_ENTITY {
            counts[id as usize + 1] += 1;
        }
    }
    for i in 1..counts.len() {
        counts[i] += counts[i - 1];
    }
    order.clear();
    order.resize(counts[entities] as usize, 0);
    for (row, &id) in row_ids.iter().enumerate() {
        if id != NO_ENTITY {
            let at = &mut counts[id as usize];
            order[*at as usize] = row as u32;
            *at += 1;
        }
    }
}

/// A view's layout as records of different ages fold into it: a hop group whose tile of
/// the record is stale at `now_ms` (evicted at the end of the batch, so never written) has
/// no members in the layout that record folds with — its tile is left empty, not filled
/// and dropped. `starts` are the groups' first live event times, descending;
/// `layouts[j]` empties the groups of the first `j` of them.
struct LiveLayouts {
    starts: Vec<i64>,
    layouts: Vec<Layout>,
    /// Per group: its oldest tile index live at `now_ms`.
    oldest: Vec<i64>,
}

impl LiveLayouts {
    fn new(layout: &Layout, now_ms: i64) -> LiveLayouts {
        // tile k of a group is stale at now_ms when k < window_end(hop, now) - span, i.e.
        // for event times below (window_end - span) * hop (`EntityTiles::evict_stale`)
        let mut order: Vec<(i64, usize)> = layout
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let oldest = window_end(group.hop_ms, now_ms) - group.span;
                (oldest.saturating_mul(group.hop_ms), g)
            })
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut layouts = vec![layout.clone()];
        for &(_, g) in &order {
            let mut next = layouts.last().expect("one").clone();
            next.groups[g].members.clear();
            layouts.push(next);
        }
        LiveLayouts {
            starts: order.iter().map(|&(t, _)| t).collect(),
            layouts,
            oldest: layout
                .groups
                .iter()
                .map(|group| window_end(group.hop_ms, now_ms) - group.span)
                .collect(),
        }
    }

    #[inline]
    fn at(&self, event_time_ms: i64) -> &Layout {
        let j = self
            .starts
            .iter()
            .take_while(|&&t| event_time_ms < t)
            .count();
        &self.layouts[j]
    }
}

impl Replay {
    /// A replay of source partition `partition` for `views` (grouped by `groups`).
    pub fn new(views: Vec<OnlineView>, groups: Vec<OnlineGroup>, partition: i32) -> Replay {
        let members = (0..groups.len())
            .map(|g| {
                (0..views.len() as u32)
                    .filter(|&v| views[v as usize].group == g)
                    .collect()
            })
            .collect();
        let n = views.len();
        let ng = groups.len();
        Replay {
            views,
            groups,
            members,
            partition,
            ids: (0..ng).map(|_| HashMap::default()).collect(),
            texts: vec![Vec::new(); ng],
            slots: (0..n).map(|_| Vec::new()).collect(),
            visited: vec![Vec::new(); n],
            newest: vec![i64::MIN; n],
            merged: vec![false; n],
            batch: 0,
            live: None,
            row_ids: Vec::new(),
            counts: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Mark `views` merge-on-write: one tile set per entity for every partition folded
    /// (see the module docs); [`Replay::writes`] gives their entity and marks hashes.
    pub fn set_merged(&mut self, views: &[u32]) {
        for &v in views {
            if let Some(m) = self.merged.get_mut(v as usize) {
                *m = true;
            }
        }
    }

    /// Fold source partition `partition` next (the entities' states carry on; the newest
    /// event times start again). For replays of merged views: partitions in the order the
    /// workers' merged path replayed them.
    pub fn set_partition(&mut self, partition: i32) {
        self.partition = partition;
        self.newest.fill(i64::MIN);
    }

    pub fn groups(&self) -> &[OnlineGroup] {
        &self.groups
    }

    /// Per view: the newest event time folded so far (None: no record was admitted), the
    /// `e:<partition>` a worker writes to the view's stats hash.
    pub fn newest_event_ms(&self) -> Vec<Option<i64>> {
        self.newest
            .iter()
            .map(|&t| (t != i64::MIN).then_some(t))
            .collect()
    }

    /// Fold one batch of the partition's records, in offset order: `groups[g]` holds
    /// group g's key and input columns (one cell per record; a null or missing key drops
    /// the record for the group's views). Entities the batch names start empty; a record
    /// later than a view's allowed lateness at its logged `processed_at` still creates
    /// the view's entry (as `OnlineCore::replay` does) but is not folded. The tiles of
    /// the visited entries that are stale at `now_ms` are dropped at the end.
    pub fn fold(
        &mut self,
        offsets: &[i64],
        event_time: &[i64],
        processed_at: &[i64],
        groups: &[GroupColumns<'_>],
        now_ms: i64,
    ) {
        self.batch += 1;
        let batch = self.batch;
        if self.live.as_ref().is_none_or(|(at, _)| *at != now_ms) {
            let layouts = self
                .views
                .iter()
                .map(|v| LiveLayouts::new(&v.layout, now_ms))
                .collect();
            self.live = Some((now_ms, layouts));
        }
        let live = &self.live.as_ref().expect("made above").1;
        let partition = self.partition;
        let mut text = String::new();
        for (g, cols) in groups.iter().enumerate() {
            let members = &self.members[g];
            if members.is_empty() {
                continue;
            }
            let ids = &mut self.ids[g];
            let texts = &mut self.texts[g];
            // every row's entity first (interned in row order), then the rows folded entity
            // by entity, each entity's in row (offset) order: an entity's state only sees
            // its own records, in the same order, so the result is the row-order fold's,
            // and its tiles stay in cache while its records fold
            let row_ids = &mut self.row_ids;
            row_ids.clear();
            for row in 0..offsets.len() {
                if !entity_text(&cols.keys, row, &mut text) {
                    row_ids.push(NO_ENTITY);
                    continue;
                }
                let id = match ids.get(text.as_str()) {
                    Some(&id) => id,
                    None => {
                        let id = texts.len() as u32;
                        let boxed: Box<str> = text.as_str().into();
                        texts.push(boxed.clone());
                        ids.insert(boxed, id);
                        id
                    }
                };
                row_ids.push(id);
            }
            by_entity(row_ids, texts.len(), &mut self.counts, &mut self.order);
            for &row in &self.order {
                let row = row as usize;
                let id = self.row_ids[row] as usize;
                let (offset, et, pt) = (offsets[row], event_time[row], processed_at[row]);
                for &v in members {
                    let view = &self.views[v as usize];
                    let slots = &mut self.slots[v as usize];
                    if slots.len() <= id {
                        slots.resize_with(id + 1, || None);
                    }
                    let slot = slots[id].get_or_insert_with(|| Slot {
                        entry: parse_partition(view, partition, &[]).expect("no fields to parse"),
                        seen: 0,
                        admitted: 0,
                        merged: None,
                    });
                    if slot.seen != batch {
                        slot.seen = batch;
                        self.visited[v as usize].push(id as u32);
                    }
                    if let Some(late) = view.allowed_lateness_ms {
                        if et < pt.saturating_sub(late) {
                            continue;
                        }
                    }
                    if self.merged[v as usize] {
                        let stored = slot.merged.get_or_insert_with(|| Box::new(Stored::new()));
                        if slot.admitted != batch {
                            // its first record in the batch: loaded as the store holds it
                            stored.load_lifetime(&view.layout, &mut slot.entry.tiles);
                        }
                        let oldest = &live[v as usize].oldest;
                        stored.load_tiles(&view.layout, &mut slot.entry.tiles, et, oldest);
                    }
                    slot.admitted = batch;
                    let inputs = &cols.inputs;
                    let entry = &mut slot.entry;
                    let layout = live[v as usize].at(et);
                    entry.tiles.fold(layout, et, (et, partition, offset), |i| {
                        input_at(inputs[view.inputs[i]], row)
                    });
                    entry.fence = offset;
                    entry.updated_ms = entry.updated_ms.max(pt);
                    let newest = &mut self.newest[v as usize];
                    *newest = (*newest).max(et);
                }
            }
        }
        for (v, visited) in self.visited.iter_mut().enumerate() {
            let layout = &self.views[v].layout;
            let merged = self.merged[v];
            for id in visited.drain(..) {
                if let Some(slot) = self.slots[v][id as usize].as_mut() {
                    slot.entry.tiles.evict_stale(layout, now_ms);
                    if merged && slot.admitted == batch {
                        let stored = slot.merged.as_mut().expect("set when admitted");
                        let tiles = &slot.entry.tiles;
                        stored.store(tiles, self.partition, slot.entry.fence, now_ms);
                        slot.entry.tiles = EntityTiles::new(layout);
                    }
                }
            }
        }
    }

    /// Decode event-log file `data` (an Avro container of envelopes) and fold its records
    /// whose offset is above `high` and above every earlier record of the file (each
    /// offset once, as `engine.log_files.read_partition` wants) and at most `upto` (the
    /// listing's limit of the file: a fenced owner's rolling file past the next epoch's
    /// start). Only for replays whose
    /// groups all read their keys and inputs from the payload (no user code):
    /// `timestamp_field` is the payload's event-time field, `divisor` its unit per ms.
    pub fn fold_file(
        &mut self,
        data: &[u8],
        high: i64,
        upto: i64,
        timestamp_field: &str,
        divisor: i64,
        now_ms: i64,
    ) -> Result<Taken, String> {
        // decode only the payload fields the groups read (a file whose schema lacks one of
        // them is decoded whole: the missing field is null for every record)
        let ts_name = format!("payload.{timestamp_field}");
        let mut wanted: Vec<String> = vec!["offset".into(), "processed_at".into(), ts_name.clone()];
        for group in &self.groups {
            for f in group.key_fields.iter().chain(&group.input_fields) {
                let name = format!("payload.{f}");
                if !wanted.contains(&name) {
                    wanted.push(name);
                }
            }
        }
        let projection: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let (batch, _) = match read_container(data, Some(&projection)) {
            Err(AvroError::Projection(_)) => {
                read_container(data, Some(&["offset", "processed_at", "payload"]))
            }
            got => got,
        }
        .map_err(|e| e.to_string())?;
        let Some(offsets) = ints(&batch, "offset") else {
            return Ok(Taken::Unsupported);
        };
        if offsets.is_empty() {
            return Ok(Taken::Folded {
                records: 0,
                last: None,
            });
        }
        let mut keep = Vec::with_capacity(offsets.len());
        let mut before = high;
        for (i, &o) in offsets.iter().enumerate() {
            if o > before && o <= upto {
                keep.push(i);
            }
            before = before.max(o);
        }
        if keep.is_empty() {
            return Ok(Taken::Folded {
                records: 0,
                last: None,
            });
        }
        let (Some(processed), Some(raw_ts)) =
            (ints(&batch, "processed_at"), ints(&batch, &ts_name))
        else {
            return Ok(Taken::Unsupported);
        };
        if divisor <= 0 {
            return Err(format!("timestamp divisor {divisor} is not positive"));
        }
        let kept_offsets: Vec<i64> = keep.iter().map(|&i| offsets[i]).collect();
        let event_time: Vec<i64> = keep
            .iter()
            .map(|&i| raw_ts[i].div_euclid(divisor))
            .collect();
        let processed: Vec<i64> = keep.iter().map(|&i| processed[i]).collect();
        // the payload columns the groups read, restricted to the kept records
        let mut names: Vec<&str> = Vec::new();
        for group in &self.groups {
            for f in group.key_fields.iter().chain(&group.input_fields) {
                if !names.contains(&f.as_str()) {
                    names.push(f);
                }
            }
        }
        let mut gathered = Batch {
            names: Vec::new(),
            columns: Vec::new(),
            rows: keep.len(),
        };
        let all = keep.len() == offsets.len();
        for name in &names {
            let name = format!("payload.{name}");
            let Some(col) = batch.column(&name) else {
                continue; // a missing field: null for every record
            };
            if matches!(col.data, ColumnData::Value(_)) {
                return Ok(Taken::Unsupported);
            }
            if !all {
                let mut out = Column::empty_like(&col.data);
                out.extend_gather(col, &keep);
                gathered.names.push(name);
                gathered.columns.push(out);
            }
        }
        let kept = if all { &batch } else { &gathered };
        let column = |f: &str| kept.column(&format!("payload.{f}"));
        let null_col = Column {
            data: ColumnData::Value(vec![Value::Null; keep.len()]),
            valid: Some(vec![false; keep.len()]),
        };
        let cols: Vec<GroupColumns<'_>> = self
            .groups
            .iter()
            .map(|group| GroupColumns {
                keys: group
                    .key_fields
                    .iter()
                    .map(|f| column(f).unwrap_or(&null_col))
                    .collect(),
                inputs: group.input_fields.iter().map(|f| column(f)).collect(),
            })
            .collect();
        self.fold(&kept_offsets, &event_time, &processed, &cols, now_ms);
        Ok(Taken::Folded {
            records: keep.len(),
            last: kept_offsets.iter().copied().max(),
        })
    }

    /// One write per entity of every view (as `OnlineCore::replay_writes`: every tile, the
    /// fence, the write time and a one-entry journal, stale tiles evicted at `now_ms`), in
    /// (view, entity) order, as `(view, write)`; empties the replay. `drop_expired`: leave
    /// out the writes whose key would expire at once (`expire_at_ms <= now_ms`).
    /// A merged view's entity gives its entity write (`t:0:…`, `l:0`, `f:0`, `u:0`, the
    /// expiry) then its marks write (every partition's `f:<p>`, `j:<p>`), unchecked (a
    /// rebuild writes into an emptied keyspace).
    pub fn writes(&mut self, now_ms: i64, drop_expired: bool) -> Vec<(u32, Write)> {
        let mut out = Vec::new();
        for v in 0..self.views.len() {
            let view = &self.views[v];
            if self.merged[v] {
                let texts = &self.texts[view.group];
                let mut held: Vec<(u32, i64, Box<Stored>)> = std::mem::take(&mut self.slots[v])
                    .into_iter()
                    .enumerate()
                    .filter_map(|(id, s)| {
                        let s = s?;
                        Some((id as u32, s.entry.updated_ms, s.merged?))
                    })
                    .collect();
                held.sort_unstable_by(|a, b| texts[a.0 as usize].cmp(&texts[b.0 as usize]));
                out.reserve(2 * held.len());
                for (id, updated_ms, stored) in held {
                    let tiles: Vec<_> = stored.tiles.into_iter().collect();
                    let (w, marks) = rebuilt_merged_writes(
                        view,
                        &texts[id as usize],
                        &tiles,
                        stored.lifetime.as_deref(),
                        stored.version,
                        updated_ms,
                        &stored.parts,
                    );
                    if drop_expired && w.expire_at_ms.is_some_and(|at| at <= now_ms) {
                        continue;
                    }
                    out.push((v as u32, w));
                    out.push((v as u32, marks));
                }
                continue;
            }
            let texts = &self.texts[view.group];
            let mut held: Vec<(u32, Entry)> = std::mem::take(&mut self.slots[v])
                .into_iter()
                .enumerate()
                .filter_map(|(id, s)| s.map(|s| (id as u32, s.entry)))
                .collect();
            held.sort_unstable_by(|a, b| texts[a.0 as usize].cmp(&texts[b.0 as usize]));
            out.reserve(held.len());
            for (id, mut entry) in held {
                let touched: Vec<(usize, i64)> = (0..view.layout.groups.len())
                    .flat_map(|g| entry.tiles.keys(g).into_iter().map(move |k| (g, k)))
                    .collect();
                entry.journal = vec![(entry.fence, entry.updated_ms)];
                let text = &texts[id as usize];
                let key = format!("sk:{}:{{{}}}", view.fingerprint, escape(text));
                let ck: CacheKey = (v as u32, self.partition, text.clone());
                let w = entity_write(view, &ck, key, &mut entry, &touched, now_ms, None);
                if drop_expired && w.expire_at_ms.is_some_and(|at| at <= now_ms) {
                    continue;
                }
                out.push((v as u32, w));
            }
        }
        for g in 0..self.groups.len() {
            self.ids[g].clear();
            self.texts[g].clear();
        }
        out
    }
}

/// A non-null int64 column of the batch (None: missing, not ints, or holding a null).
fn ints<'a>(batch: &'a Batch, name: &str) -> Option<&'a [i64]> {
    let col = batch.column(name)?;
    if col.valid.as_ref().is_some_and(|v| v.iter().any(|&ok| !ok)) {
        return None;
    }
    match &col.data {
        ColumnData::Int(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::{Agg, Func};
    use crate::online::{Events, OnlineCore};
    use crate::value::Kind;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    fn view(fingerprint: &str, group: usize, lifetime: bool, lateness: Option<i64>) -> OnlineView {
        let mut aggs = vec![
            Agg::new(Func::Sum, Kind::Float).unwrap(),
            Agg::new(Func::Count, Kind::Float).unwrap(),
            Agg::new(Func::Max, Kind::Float).unwrap(),
            Agg::new(Func::CountDistinct, Kind::Str).unwrap(),
            Agg::new(Func::ApproxCountDistinct, Kind::Str).unwrap(),
        ];
        let mut windows = vec![
            Some(30 * DAY),
            Some(HOUR),
            Some(DAY),
            Some(7 * DAY),
            Some(DAY),
        ];
        let mut hops = vec![
            Some(DAY),
            Some(5 * 60_000),
            Some(HOUR),
            Some(DAY),
            Some(HOUR),
        ];
        let mut inputs = vec![0, 0, 0, 1, 1];
        if lifetime {
            aggs.push(Agg::new(Func::Last, Kind::Float).unwrap());
            windows.push(None);
            hops.push(None);
            inputs.push(0);
        }
        OnlineView {
            fingerprint: fingerprint.into(),
            layout: Layout::new(aggs, windows, hops).unwrap(),
            group,
            inputs,
            allowed_lateness_ms: lateness,
        }
    }

    #[test]
    fn rows_are_ordered_by_entity_each_in_row_order() {
        let ids = [2, 0, NO_ENTITY, 2, 1, 0, 2, NO_ENTITY];
        let (mut counts, mut order) = (Vec::new(), vec![9]);
        by_entity(&ids, 3, &mut counts, &mut order);
        assert_eq!(order, vec![1, 5, 4, 0, 3, 6]);
        by_entity(&[], 0, &mut counts, &mut order);
        assert!(order.is_empty());
    }

    /// Writes of the same records through `OnlineCore::replay` and through `Replay`,
    /// batch by batch: equal, field for field.
    #[test]
    fn replay_writes_equal_the_online_cores() {
        let now = 1_800_000_000_000;
        let views = vec![
            view("a", 0, true, None),
            view("b", 0, false, Some(2 * HOUR)),
            view("c", 1, false, None),
        ];
        let groups = vec![
            OnlineGroup {
                key_fields: vec!["customer".into()],
                input_fields: vec!["amount".into(), "merchant".into()],
            },
            OnlineGroup {
                key_fields: vec!["merchant".into(), "customer".into()],
                input_fields: vec!["amount".into(), "country".into()],
            },
        ];
        let p = 3;
        let mut core = OnlineCore::new(views.clone(), groups.clone(), 1 << 40);
        let mut replay = Replay::new(views, groups, p);
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut offset = -50_000i64;
        for _ in 0..4 {
            let n = 3_000;
            let mut offsets = Vec::new();
            let mut et = Vec::new();
            let mut pt = Vec::new();
            let (mut customer, mut merchant, mut amount, mut country) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                offset += 1 + (next() % 3) as i64;
                offsets.push(offset);
                let t = now - (next() % (40 * DAY as u64)) as i64;
                et.push(t);
                pt.push(t + (next() % (4 * HOUR as u64)) as i64);
                customer.push((next() % 50 != 0).then(|| format!("c{}", next() % 300)));
                merchant.push(Some(format!("m{}", next() % 40)));
                amount.push((next() % 10) as f64 * 1.25);
                country.push(Some(["DE", "FR", "{x}"][(next() % 3) as usize].to_string()));
            }
            let customer = Column::from_strs(&customer);
            let merchant = Column::from_strs(&merchant);
            let country = Column::from_strs(&country);
            let amount = Column {
                data: ColumnData::Float(amount),
                valid: None,
            };
            let cols = vec![
                GroupColumns {
                    keys: vec![&customer],
                    inputs: vec![Some(&amount), Some(&merchant)],
                },
                GroupColumns {
                    keys: vec![&merchant, &customer],
                    inputs: vec![Some(&amount), Some(&country)],
                },
            ];
            let events = Events {
                partition: vec![p; n],
                offset: offsets.clone(),
                event_time: et.clone(),
            };
            core.prepare(events, &cols);
            core.replay(&pt, now);
            replay.fold(&offsets, &et, &pt, &cols, now);
        }
        let expected = core.replay_writes(now);
        let got = replay.writes(now, false);
        assert!(expected.len() > 500);
        assert_eq!(got.len(), expected.len());
        for ((ev, e), (gv, g)) in expected.iter().zip(&got) {
            assert_eq!(ev, gv);
            assert_eq!(e.key, g.key);
            assert_eq!(e.fields, g.fields);
            assert_eq!(e.delete, g.delete);
            assert_eq!(e.expire_at_ms, g.expire_at_ms);
            assert_eq!(e.expect, g.expect);
        }
        assert!(got
            .iter()
            .any(|(_, w)| w.key.contains("%7Bx%7D") || w.key.contains('[')));
        // dropping the expired ones leaves the others as they are
        assert!(replay.writes(now, true).is_empty()); // emptied
    }

    /// Every partition's records folded into merged views by `Replay` (one tile set per
    /// entity, `set_partition` between partitions) leave the same hashes, byte for byte, as
    /// the workers' merged path: per batch the entities loaded from the store, folded by
    /// `OnlineCore::apply_logged` and written back, partition after partition.
    #[test]
    fn merged_replay_writes_equal_the_merged_paths() {
        use std::collections::BTreeMap;
        type Hash = BTreeMap<String, Vec<u8>>;
        let now = 1_800_000_000_000;
        let views = vec![
            view("a", 0, true, None),
            view("c", 1, false, Some(2 * HOUR)),
        ];
        let groups = vec![
            OnlineGroup {
                key_fields: vec!["merchant".into()],
                input_fields: vec!["amount".into(), "country".into()],
            },
            OnlineGroup {
                key_fields: vec!["merchant".into()],
                input_fields: vec!["amount".into(), "country".into()],
            },
        ];
        let mut core = OnlineCore::new(views.clone(), groups.clone(), 1 << 40);
        core.set_merged(&[0, 1]);
        let mut replay = Replay::new(views, groups, 0);
        replay.set_merged(&[0, 1]);
        // the store the merged path writes: key -> (fields, expiry)
        let mut store: HashMap<String, (Hash, Option<i64>)> = HashMap::new();
        let mut seed = 11u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut newest = Vec::new();
        for p in [2, 0, 5] {
            replay.set_partition(p);
            let mut offset = 100i64;
            for _ in 0..12 {
                let n = 400;
                let (mut offsets, mut et, mut pt) = (Vec::new(), Vec::new(), Vec::new());
                let (mut merchant, mut amount, mut country) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..n {
                    offset += 1 + (next() % 3) as i64;
                    offsets.push(offset);
                    let t = now - (next() % (40 * DAY as u64)) as i64;
                    et.push(t);
                    pt.push(t + (next() % (4 * HOUR as u64)) as i64);
                    merchant.push((next() % 30 != 0).then(|| format!("m{}", next() % 40)));
                    amount.push((next() % 10) as f64 * 1.25);
                    let c = ["DE", "FR", "GB", "US", "JP", "BR", "{x}"][(next() % 7) as usize];
                    country.push(Some(c.to_string()));
                }
                let merchant = Column::from_strs(&merchant);
                let country = Column::from_strs(&country);
                let amount = Column {
                    data: ColumnData::Float(amount),
                    valid: None,
                };
                let cols = vec![
                    GroupColumns {
                        keys: vec![&merchant],
                        inputs: vec![Some(&amount), Some(&country)],
                    },
                    GroupColumns {
                        keys: vec![&merchant],
                        inputs: vec![Some(&amount), Some(&country)],
                    },
                ];
                // the merged path: load, fold, write back
                let events = Events {
                    partition: vec![p; n],
                    offset: offsets.clone(),
                    event_time: et.clone(),
                };
                for ck in core.prepare(events, &cols) {
                    let key = format!(
                        "sk:{}:{{{}}}",
                        if ck.0 == 0 { "a" } else { "c" },
                        escape(&ck.2)
                    );
                    let marks = core.marks_key(&ck);
                    let as_pairs = |k: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
                        store.get(k).map_or(Vec::new(), |(h, _)| {
                            h.iter()
                                .map(|(f, v)| (f.as_bytes().to_vec(), v.clone()))
                                .collect()
                        })
                    };
                    let (fields, marks) = (as_pairs(&key), as_pairs(&marks));
                    let fields: Vec<(&[u8], &[u8])> =
                        fields.iter().map(|(f, v)| (&f[..], &v[..])).collect();
                    let marks: Vec<(&[u8], &[u8])> =
                        marks.iter().map(|(f, v)| (&f[..], &v[..])).collect();
                    core.load_merged(ck, &fields, &marks).unwrap();
                }
                let applied = core.apply_logged(&pt, now).unwrap();
                for w in applied.writes {
                    let (hash, expiry) = store.entry(w.key).or_default();
                    for (f, v) in w.fields {
                        hash.insert(f, v);
                    }
                    for f in &w.delete {
                        hash.remove(f);
                    }
                    if let Some(at) = w.expire_at_ms {
                        *expiry = Some(expiry.map_or(at, |e| e.max(at)));
                    }
                }
                replay.fold(&offsets, &et, &pt, &cols, now);
            }
            newest.push(replay.newest_event_ms());
        }
        let mut rebuilt: HashMap<String, (Hash, Option<i64>)> = HashMap::new();
        for (_, w) in replay.writes(now, false) {
            assert!(w.expect.is_none() && w.delete.is_empty());
            let fields: Hash = w.fields.into_iter().collect();
            assert!(rebuilt.insert(w.key, (fields, w.expire_at_ms)).is_none());
        }
        assert!(store.len() > 100);
        assert_eq!(rebuilt.len(), store.len());
        for (key, held) in &store {
            assert_eq!(rebuilt.get(key), Some(held), "{key}");
        }
        // entities spanning the partitions, with journals cut at 8 batches
        let spanning = store
            .iter()
            .filter(|(k, (h, _))| k.starts_with("sk:fm:") && h.len() == 6)
            .count();
        assert!(spanning > 50);
        let longest = store
            .iter()
            .filter(|(k, _)| k.starts_with("sk:fm:"))
            .flat_map(|(_, (h, _))| h.iter().filter(|(f, _)| f.starts_with("j:")))
            .map(|(_, v)| crate::online::unpack_journal(v).unwrap().len())
            .max();
        assert_eq!(longest, Some(JOURNAL_ENTRIES));
        assert!(newest.iter().all(|n| n.iter().all(Option::is_some)));
    }
}
