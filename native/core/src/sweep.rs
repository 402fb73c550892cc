//! The backfill's point-in-time sweep: replayed log records and labels in, feature values out.
//!
//! Records are added partition by partition (decoded natively from event-log files, or as
//! columns a caller extracted after a Python transform). Only records of labelled entities
//! that some label can still see, and that some view admits, are kept, as compact columns per
//! row group (views sharing a key and a transform; [`rows`]). `finish` then orders each
//! group's records by (entity, clock) and each request's labels by (entity, time) — counting
//! sorts over the entity codes — and sweeps every entity on its own, in parallel ([`entity`]):
//! a label at `t` sees exactly the admitted records with clock `< t` (clock: event time or
//! processing time, by mode) and reads its windows as of `t` (DESIGN §3). In event-time mode
//! a window is one run of the entity's records and is folded by a sliding fold ([`sliding`]);
//! in processing-time mode records go into the kernel's tiles. Entities are independent and
//! every aggregation is a monoid, so the result does not depend on the thread count, the
//! partitioning or the order records were added in.

mod entity;
mod out;
mod rows;
mod ship;
mod sliding;

use rayon::prelude::*;

use crate::agg::Func;
use crate::avro::read_container;
use crate::columns::{Batch, Column, ColumnData};
use crate::error::KernelError;
use crate::tiles::Layout;
use crate::value::Value;
use entity::{EntitySweep, LabelOrder, Plan};
use out::{Objects, Slots};
use rows::{Carry, Interner, Rows};

/// Which clock decides what a label at `t` sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    EventTime,
    ProcessingTime,
}

/// Entity keys of the labels: key bytes → code (in order of insertion). Keys are encoded by
/// [`KeyBuf`].
#[derive(Clone, Debug, Default)]
pub struct KeyTable {
    codes: Interner,
}

impl KeyTable {
    /// The code of `key`, added if new.
    pub fn insert(&mut self, key: &[u8]) -> u32 {
        self.codes.intern(key)
    }

    /// The code of `key`, if a label has it.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        self.codes.find(key)
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// `true` when no key was added.
    pub fn is_empty(&self) -> bool {
        self.codes.len() == 0
    }
}

/// A reusable buffer encoding a composite entity key: per part a tag, then the value.
#[derive(Default)]
pub struct KeyBuf(pub Vec<u8>);

impl KeyBuf {
    pub fn clear(&mut self) {
        self.0.clear();
    }
    pub fn push_str(&mut self, s: &str) {
        // the length as LEB128: short keys stay short (the table's footprint is its speed)
        self.0.push(b's');
        let mut n = s.len();
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub fn push_int(&mut self, i: i64) {
        self.0.push(b'i');
        self.0.extend_from_slice(&i.to_le_bytes());
    }
    /// Append cell `i` of a key column; `false` for a null or non-key cell.
    pub fn push_cell(&mut self, col: &Column, i: usize) -> bool {
        if !col.is_valid(i) {
            return false;
        }
        match &col.data {
            ColumnData::Int(v) => self.push_int(v[i]),
            ColumnData::Str { .. } => match col.str_at(i) {
                Some(s) => self.push_str(s),
                None => return false,
            },
            ColumnData::Value(v) => match &v[i] {
                Value::Int(n) => self.push_int(*n),
                Value::Str(s) => self.push_str(s),
                _ => return false,
            },
            _ => return false,
        }
        true
    }
}

/// Views that see the same rows and entity: same join keys, same transform.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// The source whose records the group reads.
    pub source: String,
    /// Index of the [`KeyTable`] of the group's entity.
    pub table: usize,
    /// Payload fields of the join keys (natively read groups).
    pub key_fields: Vec<String>,
    /// Payload fields the group's views aggregate (natively read groups).
    pub input_fields: Vec<String>,
    /// `true` when records come straight from log files (no transform or filter).
    pub native: bool,
}

/// One view: its layout, the group input each aggregation reads, its lateness.
#[derive(Clone, Debug)]
pub struct ViewSpec {
    pub group: usize,
    pub layout: Layout,
    /// Per aggregation: index into the group's inputs.
    pub inputs: Vec<usize>,
    /// `None`: every event is admitted (lifetime-only views).
    pub allowed_lateness_ms: Option<i64>,
}

/// Labels of one view and the aggregations wanted for them.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub view: usize,
    /// Per label: entity code in the view's group table.
    pub codes: Vec<u32>,
    pub times_ms: Vec<i64>,
    pub indices: Vec<usize>,
}

/// One feature's values in label order: a kind byte and 8 value bits per label, objects
/// aside (the layout `engine.backfill` turns into numpy arrays).
#[derive(Debug, Default)]
pub struct OutColumn {
    /// 0: None, 1: int64 in `bits`, 2: float64 in `bits`, 3: object (in `objects`).
    pub kinds: Vec<u8>,
    pub bits: Vec<i64>,
    pub objects: Vec<(u32, Value)>,
}

pub const OUT_NONE: u8 = 0;
pub const OUT_INT: u8 = 1;
pub const OUT_FLOAT: u8 = 2;
pub const OUT_OBJECT: u8 = 3;

impl OutColumn {
    fn new(n: usize) -> OutColumn {
        OutColumn {
            kinds: vec![OUT_NONE; n],
            bits: vec![0; n],
            objects: Vec::new(),
        }
    }
}

/// How a view decides which kept records it admits (DESIGN §3, admission).
#[derive(Clone, Copy, Debug)]
enum Admit {
    /// Every kept record (`include_late`, or a view without a finite lateness).
    All,
    /// Records whose mask has this bit.
    Mask(u8),
    /// Records with `event_time >= processed_at - lateness` (more lateness classes in the
    /// group than mask bits: the processing time is kept).
    Late(i64),
}

/// What a group keeps besides codes, event times and inputs, and why.
#[derive(Clone, Debug)]
struct GroupPlan {
    carry: Carry,
    /// Distinct finite lateness of the group's views: mask bit `b` is class `b`.
    classes: Vec<i64>,
    /// A record no view admits (late for the most lenient view) is not kept.
    drop_late: Option<i64>,
}

/// Masks hold at most this many lateness classes.
const MASK_BITS: usize = 8;

/// The sweep: specs, label tables, and the records kept so far.
pub struct Sweep {
    mode: Mode,
    tables: Vec<KeyTable>,
    /// Per table, per code: the latest label time (records at or after it serve no label).
    last_label: Vec<Vec<i64>>,
    groups: Vec<GroupSpec>,
    plans: Vec<GroupPlan>,
    views: Vec<ViewSpec>,
    admits: Vec<Admit>,
    requests: Vec<RequestSpec>,
    rows: Vec<Rows>,
    read: u64,
}

/// What one event-log file gives the native groups: per group its kept rows and their
/// entity codes; the highest offset seen and the records taken.
#[derive(Debug)]
pub struct Selection {
    groups: Vec<(usize, Vec<usize>, Vec<u32>)>,
    high: i64,
    records: u64,
    divisor: i64,
}

/// The envelope layout this core reads (`connectors/eventlog.py`, file header metadata).
pub const ENVELOPE_VERSION: &str = "1";
const ENVELOPE_VERSION_KEY: &str = "skewless.envelope_version";

const ENVELOPE: [&str; 4] = ["partition", "offset", "event_time", "processed_at"];

impl Sweep {
    /// A sweep over `tables` (the labels' distinct entity keys, as codes) for `requests`.
    pub fn new(
        mode: Mode,
        include_late: bool,
        tables: Vec<KeyTable>,
        groups: Vec<GroupSpec>,
        views: Vec<ViewSpec>,
        requests: Vec<RequestSpec>,
    ) -> Result<Sweep, KernelError> {
        let mut last_label: Vec<Vec<i64>> =
            tables.iter().map(|t| vec![i64::MIN; t.len()]).collect();
        for (r, req) in requests.iter().enumerate() {
            let view = views
                .get(req.view)
                .ok_or_else(|| KernelError::Sweep(format!("request {r}: no view {}", req.view)))?;
            let group = &groups[view.group];
            if req.codes.len() != req.times_ms.len() {
                return Err(KernelError::Sweep(format!(
                    "request {r}: {} entity codes but {} times",
                    req.codes.len(),
                    req.times_ms.len()
                )));
            }
            if req.codes.len() > u32::MAX as usize {
                return Err(KernelError::Sweep(format!(
                    "request {r}: {} labels (at most 2^32 - 1 per call)",
                    req.codes.len()
                )));
            }
            let last = &mut last_label[group.table];
            for (&c, &t) in req.codes.iter().zip(&req.times_ms) {
                let slot = last.get_mut(c as usize).ok_or_else(|| {
                    KernelError::Sweep(format!("request {r}: entity code {c} outside its table"))
                })?;
                *slot = (*slot).max(t);
            }
            if let Some(&i) = req.indices.iter().find(|&&i| i >= view.layout.aggs.len()) {
                return Err(KernelError::Sweep(format!(
                    "request {r}: no aggregation {i}"
                )));
            }
        }
        for (v, view) in views.iter().enumerate() {
            if view.group >= groups.len() {
                return Err(KernelError::Sweep(format!(
                    "view {v}: no group {}",
                    view.group
                )));
            }
            let inputs = groups[view.group].input_fields.len();
            if view.inputs.len() != view.layout.aggs.len()
                || view.inputs.iter().any(|&c| c >= inputs)
            {
                return Err(KernelError::Sweep(format!(
                    "view {v}: inputs {:?} for {} aggregations over {inputs} group inputs",
                    view.inputs,
                    view.layout.aggs.len()
                )));
            }
        }
        let mut plans = Vec::with_capacity(groups.len());
        let mut admits = vec![Admit::All; views.len()];
        for g in 0..groups.len() {
            let members: Vec<usize> = (0..views.len()).filter(|&v| views[v].group == g).collect();
            let mut classes: Vec<i64> = Vec::new();
            let mut lenient = false; // a view admits every record
            for &v in &members {
                match views[v].allowed_lateness_ms {
                    Some(late) if !include_late => {
                        if !classes.contains(&late) {
                            classes.push(late);
                        }
                    }
                    _ => lenient = true,
                }
            }
            let masked = !classes.is_empty() && classes.len() <= MASK_BITS;
            for &v in &members {
                admits[v] = match views[v].allowed_lateness_ms {
                    Some(late) if !include_late => match classes.iter().position(|&c| c == late) {
                        Some(b) if masked => Admit::Mask(1 << b),
                        _ => Admit::Late(late),
                    },
                    _ => Admit::All,
                };
            }
            let order = members.iter().any(|&v| {
                views[v].layout.aggs.iter().any(|a| {
                    matches!(
                        a.func,
                        Func::First | Func::Last | Func::FirstN(_) | Func::LastN(_)
                    )
                })
            });
            let carry = Carry {
                processed_at: mode == Mode::ProcessingTime || classes.len() > MASK_BITS,
                order,
                mask: masked,
            };
            let drop_late = if lenient {
                None
            } else {
                classes.iter().copied().max()
            };
            plans.push(GroupPlan {
                carry,
                classes,
                drop_late,
            });
        }
        let rows = groups
            .iter()
            .zip(&plans)
            .map(|(g, plan)| Rows::new(plan.carry, g.input_fields.len()))
            .collect();
        Ok(Sweep {
            mode,
            tables,
            last_label,
            groups,
            plans,
            views,
            admits,
            requests,
            rows,
            read: 0,
        })
    }

    /// Records read so far (each record once, whatever the number of groups).
    pub fn records_read(&self) -> u64 {
        self.read
    }

    /// The container columns the natively read groups of `source` need (envelope fields,
    /// the payload's timestamp field `ts_field`, keys and inputs as `payload.<field>`).
    pub fn projection(&self, source: &str, ts_field: &str) -> Vec<String> {
        let mut out: Vec<String> = ENVELOPE.iter().map(|s| s.to_string()).collect();
        out.push(format!("payload.{ts_field}"));
        for g in self
            .groups
            .iter()
            .filter(|g| g.native && g.source == source)
        {
            for f in g.key_fields.iter().chain(&g.input_fields) {
                let name = format!("payload.{f}");
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// What the native groups of `source` keep of one decoded event-log file of
    /// `partition` ([`decode_log_file`]); read-only (see [`Sweep::add_selection`]).
    /// Records at or below `after_offset` are skipped (already read from another file),
    /// and so are records above `upto`: the listing's upper limit of the file (a rolling
    /// file an owner fenced by a later owner epoch kept appending to; `i64::MAX`: none).
    /// The event time is the payload's `ts_field` floored by `divisor` to milliseconds.
    #[allow(clippy::too_many_arguments)]
    pub fn select_log_batch(
        &self,
        source: &str,
        batch: &Batch,
        after_offset: i64,
        upto: i64,
        ts_field: &str,
        divisor: i64,
    ) -> Result<Selection, KernelError> {
        let need = |name: &str| {
            batch
                .column(name)
                .ok_or_else(|| KernelError::Sweep(format!("event-log file has no column {name:?}")))
        };
        let offsets = int_column(need("offset")?, "offset")?;
        let mut keep: Vec<usize> = Vec::with_capacity(batch.rows);
        let mut high = after_offset;
        for (i, &o) in offsets.iter().enumerate() {
            if o > high && o <= upto {
                keep.push(i);
                high = o;
            }
        }
        let ts_name = format!("payload.{ts_field}");
        let ts = need(&ts_name)?;
        let raw_ts = int_column(ts, &ts_name)?;
        if ts
            .valid
            .as_ref()
            .is_some_and(|v| keep.iter().any(|&i| !v[i]))
        {
            return Err(KernelError::Sweep(format!(
                "event-log file holds a record whose timestamp field {ts_field:?} is null"
            )));
        }
        let divisor = divisor.max(1);
        let processed_at = int_column(need("processed_at")?, "processed_at")?;
        let mut groups = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            if !group.native || group.source != source {
                continue;
            }
            let keys: Vec<Option<&Column>> = group
                .key_fields
                .iter()
                .map(|f| batch.column(&format!("payload.{f}")))
                .collect();
            let (rows, codes) = self.select_rows(
                g,
                &keep,
                &keys,
                |i| raw_ts[i].div_euclid(divisor),
                |i| processed_at[i],
            );
            groups.push((g, rows, codes));
        }
        Ok(Selection {
            groups,
            high,
            records: keep.len() as u64,
            divisor,
        })
    }

    /// Append what [`Sweep::select_log_batch`] selected of `batch` (the same file).
    pub fn add_selection(
        &mut self,
        partition: i32,
        batch: &Batch,
        selection: &Selection,
        ts_field: &str,
    ) -> Result<(i64, u64), KernelError> {
        let need = |name: &str| {
            batch
                .column(name)
                .ok_or_else(|| KernelError::Sweep(format!("event-log file has no column {name:?}")))
        };
        let offsets = int_column(need("offset")?, "offset")?;
        let raw_ts = int_column(need(&format!("payload.{ts_field}"))?, ts_field)?;
        let processed_at = int_column(need("processed_at")?, "processed_at")?;
        let divisor = selection.divisor;
        for (g, rows, codes) in &selection.groups {
            let input_fields = self.groups[*g].input_fields.clone();
            let inputs: Vec<Option<&Column>> = input_fields
                .iter()
                .map(|f| batch.column(&format!("payload.{f}")))
                .collect();
            self.push_rows(
                *g,
                partition,
                rows,
                codes,
                &inputs,
                |i| offsets[i],
                |i| raw_ts[i].div_euclid(divisor),
                |i| processed_at[i],
            )?;
        }
        self.read += selection.records;
        Ok((selection.high, selection.records))
    }

    /// [`Sweep::select_log_batch`] then [`Sweep::add_selection`]: keep what the native
    /// groups of `source` need from one decoded event-log file of `partition`, above
    /// `after_offset` and at most `upto`. Returns the highest offset taken (or
    /// `after_offset`) and the number of records taken.
    #[allow(clippy::too_many_arguments)]
    pub fn add_log_batch(
        &mut self,
        source: &str,
        partition: i32,
        batch: &Batch,
        after_offset: i64,
        upto: i64,
        ts_field: &str,
        divisor: i64,
    ) -> Result<(i64, u64), KernelError> {
        let selection =
            self.select_log_batch(source, batch, after_offset, upto, ts_field, divisor)?;
        self.add_selection(partition, batch, &selection, ts_field)
    }

    /// Keep rows extracted by the caller (after a transform) for group `group`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rows(
        &mut self,
        group: usize,
        partition: i32,
        offsets: &[i64],
        event_time: &[i64],
        processed_at: &[i64],
        keys: &[Column],
        inputs: &[Column],
    ) -> Result<(), KernelError> {
        let n = offsets.len();
        if event_time.len() != n
            || processed_at.len() != n
            || keys.iter().chain(inputs).any(|c| c.len() != n)
        {
            return Err(KernelError::Sweep(format!(
                "group {group}: columns of unequal length (expected {n} rows)"
            )));
        }
        let spec = self
            .groups
            .get(group)
            .ok_or_else(|| KernelError::Sweep(format!("no group {group}")))?;
        if inputs.len() != spec.input_fields.len() {
            return Err(KernelError::Sweep(format!(
                "group {group}: {} input columns, expected {}",
                inputs.len(),
                spec.input_fields.len()
            )));
        }
        let all: Vec<usize> = (0..n).collect();
        let keys: Vec<Option<&Column>> = keys.iter().map(Some).collect();
        let inputs: Vec<Option<&Column>> = inputs.iter().map(Some).collect();
        self.keep_rows(
            group,
            partition,
            &all,
            &keys,
            &inputs,
            |i| offsets[i],
            |i| event_time[i],
            |i| processed_at[i],
        )
    }

    /// Count records read outside `add_log_file` (e.g. by a caller feeding `add_rows`).
    pub fn note_read(&mut self, records: u64) {
        self.read += records;
    }

    /// The rows of `candidates` group `g` keeps, with their entity codes: a labelled
    /// entity, a clock before the entity's last label, admitted by some view. Read-only, so
    /// files decoded on several threads select at once.
    fn select_rows(
        &self,
        g: usize,
        candidates: &[usize],
        keys: &[Option<&Column>],
        event_time: impl Fn(usize) -> i64,
        processed_at: impl Fn(usize) -> i64,
    ) -> (Vec<usize>, Vec<u32>) {
        let table = &self.tables[self.groups[g].table];
        let last = &self.last_label[self.groups[g].table];
        let by_event_time = self.mode == Mode::EventTime;
        let plan = &self.plans[g];
        let mut buf = KeyBuf::default();
        let mut kept: Vec<usize> = Vec::new();
        let mut codes: Vec<u32> = Vec::new();
        'row: for &i in candidates {
            buf.clear();
            for key in keys {
                match key {
                    Some(col) if buf.push_cell(col, i) => {}
                    _ => continue 'row, // a missing or null key: no entity
                }
            }
            let Some(code) = table.get(&buf.0) else {
                continue;
            };
            let (et, pt) = (event_time(i), processed_at(i));
            let clock = if by_event_time { et } else { pt };
            if clock >= last[code as usize] {
                continue; // no label of this entity can see it
            }
            if plan
                .drop_late
                .is_some_and(|late| et < pt.saturating_sub(late))
            {
                continue; // too late for every view of the group
            }
            kept.push(i);
            codes.push(code);
        }
        (kept, codes)
    }

    /// Append the rows `select_rows` kept to group `g`'s columns.
    #[allow(clippy::too_many_arguments)]
    fn push_rows(
        &mut self,
        g: usize,
        partition: i32,
        kept: &[usize],
        codes: &[u32],
        inputs: &[Option<&Column>],
        offset: impl Fn(usize) -> i64,
        event_time: impl Fn(usize) -> i64,
        processed_at: impl Fn(usize) -> i64,
    ) -> Result<(), KernelError> {
        let plan = &self.plans[g];
        let rows = &mut self.rows[g];
        for (&i, &code) in kept.iter().zip(codes) {
            let (et, pt) = (event_time(i), processed_at(i));
            rows.code.push(code);
            rows.event_time.push(et);
            if plan.carry.processed_at {
                rows.processed_at.push(pt);
            }
            if plan.carry.order {
                rows.partition.push(partition);
                rows.offset.push(offset(i));
            }
            if plan.carry.mask {
                let mut mask = 0u8;
                for (b, &late) in plan.classes.iter().enumerate() {
                    if et >= pt.saturating_sub(late) {
                        mask |= 1 << b;
                    }
                }
                rows.mask.push(mask);
            }
        }
        for (c, src) in inputs.iter().enumerate() {
            if !rows.inputs[c].extend(*src, kept) {
                return Err(KernelError::Sweep(format!(
                    "payload field {:?} changed type between event-log files",
                    self.groups[g]
                        .input_fields
                        .get(c)
                        .map_or("?", String::as_str)
                )));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn keep_rows(
        &mut self,
        g: usize,
        partition: i32,
        candidates: &[usize],
        keys: &[Option<&Column>],
        inputs: &[Option<&Column>],
        offset: impl Fn(usize) -> i64,
        event_time: impl Fn(usize) -> i64,
        processed_at: impl Fn(usize) -> i64,
    ) -> Result<(), KernelError> {
        let (kept, codes) = self.select_rows(g, candidates, keys, &event_time, &processed_at);
        self.push_rows(
            g,
            partition,
            &kept,
            &codes,
            inputs,
            offset,
            event_time,
            processed_at,
        )
    }

    /// Sweep every request; per request, one [`OutColumn`] per wanted aggregation.
    pub fn finish(mut self) -> Vec<Vec<OutColumn>> {
        let by_event_time = self.mode == Mode::EventTime;
        // each group's records physically ordered by (entity, clock): an entity's records
        // are then one run, read in order
        for (g, rows) in self.rows.iter_mut().enumerate() {
            rows.sort(self.tables[self.groups[g].table].len(), by_event_time);
        }
        // requests over the same labels (several views of one entity) share their order
        let mut orders: Vec<(usize, std::sync::Arc<LabelOrder>)> = Vec::new();
        let mut out = Vec::with_capacity(self.requests.len());
        for (r, req) in self.requests.iter().enumerate() {
            let view = &self.views[req.view];
            let table = self.groups[view.group].table;
            let same = orders.iter().find(|(o, _)| {
                let other = &self.requests[*o];
                self.groups[self.views[other.view].group].table == table
                    && other.codes == req.codes
                    && other.times_ms == req.times_ms
            });
            let order = match same {
                Some((_, order)) => order.clone(),
                None => {
                    let order = std::sync::Arc::new(LabelOrder::new(
                        &req.codes,
                        &req.times_ms,
                        self.tables[table].len(),
                    ));
                    orders.push((r, order.clone()));
                    order
                }
            };
            out.push(self.sweep_request(req, &order));
        }
        out
    }

    /// [`Sweep::finish`] on a pool of `threads` threads rather than the process's (a
    /// caller that runs several sweeps at once on one machine, e.g. one per Dask worker).
    pub fn finish_on(self, threads: usize) -> Result<Vec<Vec<OutColumn>>, KernelError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| KernelError::Sweep(format!("sweep thread pool: {e}")))?;
        Ok(pool.install(|| self.finish()))
    }

    fn sweep_request(&self, req: &RequestSpec, labels: &LabelOrder) -> Vec<OutColumn> {
        let view = &self.views[req.view];
        let rows = &self.rows[view.group];
        let n = req.codes.len();
        let mut out: Vec<OutColumn> = req.indices.iter().map(|_| OutColumn::new(n)).collect();
        let plan = Plan::new(view, &req.indices);
        let admit = self.admits[req.view];
        // pieces of whole entities, a few per thread so threads stay busy
        let entities = labels.starts.len() - 1;
        let weight = |e: usize| labels.of(e).len() + rows.of(e).len();
        let total: usize = (0..entities).map(weight).sum();
        let target = (total / (rayon::current_num_threads() * 16)).max(4096);
        let mut pieces = Vec::new();
        let (mut from, mut acc) = (0, 0);
        for e in 0..entities {
            acc += weight(e);
            if acc >= target {
                pieces.push(from..e + 1);
                (from, acc) = (e + 1, 0);
            }
        }
        if from < entities {
            pieces.push(from..entities);
        }
        let objects: Vec<Vec<Objects>> = {
            let slots: Vec<Slots> = out.iter_mut().map(Slots::new).collect();
            pieces
                .into_par_iter()
                .map(|piece| {
                    let mut objects: Vec<Objects> = vec![Vec::new(); slots.len()];
                    let mut entity = EntitySweep::new(&plan, view, rows, admit);
                    for e in piece {
                        let labels = labels.entity(e);
                        if labels.times.is_empty() {
                            continue;
                        }
                        let range = rows.of(e);
                        match self.mode {
                            Mode::EventTime => {
                                entity.event_time(range, labels, &slots, &mut objects)
                            }
                            Mode::ProcessingTime => {
                                entity.processing_time(range, labels, &slots, &mut objects)
                            }
                        }
                    }
                    objects
                })
                .collect()
        };
        for piece in objects {
            for (col, objects) in out.iter_mut().zip(piece) {
                col.objects.extend(objects);
            }
        }
        for col in &mut out {
            col.objects.sort_unstable_by_key(|(i, _)| *i);
        }
        out
    }
}

/// Decode an event-log file, materialising only `projection` (see [`Sweep::projection`]);
/// refuses a file whose header names another envelope version.
pub fn decode_log_file(bytes: &[u8], projection: &[String]) -> Result<Batch, KernelError> {
    let names: Vec<&str> = projection.iter().map(String::as_str).collect();
    let (batch, metadata) = read_container(bytes, Some(&names))
        .map_err(|e| KernelError::Sweep(format!("event-log file: {e}")))?;
    let version = metadata
        .iter()
        .find(|(k, _)| k == ENVELOPE_VERSION_KEY)
        .map(|(_, v)| v);
    if version.map(Vec::as_slice) != Some(ENVELOPE_VERSION.as_bytes()) {
        return Err(KernelError::Sweep(format!(
            "envelope version {:?}, this skewless reads {ENVELOPE_VERSION:?}; it was written \
             by another skewless version or is not an event-log file",
            version.map(|v| String::from_utf8_lossy(v).into_owned())
        )));
    }
    Ok(batch)
}

fn int_column<'a>(col: &'a Column, name: &str) -> Result<&'a [i64], KernelError> {
    match &col.data {
        ColumnData::Int(v) => Ok(v),
        _ => Err(KernelError::Sweep(format!(
            "envelope field {name:?} is not a long"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::{Agg, Input};
    use crate::tiles::EntityTiles;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }
    }

    /// A view of every function over a float and a str input, windows of several hops.
    fn layout() -> (Layout, Vec<usize>) {
        let h = 3_600_000;
        // (function, kind, n, window, hop, input)
        type Spec = (
            &'static str,
            &'static str,
            Option<u32>,
            Option<i64>,
            Option<i64>,
            usize,
        );
        let specs: Vec<Spec> = vec![
            ("sum", "float", None, Some(h), Some(h / 12), 0),
            ("sum", "float", None, Some(24 * h), Some(h), 0),
            ("count", "float", None, Some(24 * h), Some(h), 0),
            ("mean", "float", None, Some(7 * 24 * h), Some(24 * h), 0),
            ("variance", "float", None, Some(7 * 24 * h), Some(24 * h), 0),
            ("stddev", "float", None, Some(2 * h), Some(h), 0),
            ("min", "float", None, Some(24 * h), Some(h), 0),
            ("max", "str", None, Some(6 * h), Some(h), 1),
            ("first", "str", None, Some(24 * h), Some(h), 1),
            ("last", "float", None, Some(3 * h), Some(h), 0),
            ("first_n", "float", Some(3), Some(24 * h), Some(h), 0),
            ("last_n", "str", Some(2), Some(7 * 24 * h), Some(24 * h), 1),
            ("count_distinct", "str", None, Some(24 * h), Some(h), 1),
            (
                "approx_count_distinct",
                "str",
                None,
                Some(7 * 24 * h),
                Some(h),
                1,
            ),
            ("count", "float", None, None, None, 0),
            ("last", "str", None, None, None, 1),
            ("sum", "float", None, None, None, 0),
        ];
        let aggs = specs
            .iter()
            .map(|s| Agg::parse(s.0, s.1, s.2).unwrap())
            .collect();
        let layout = Layout::new(
            aggs,
            specs.iter().map(|s| s.3).collect(),
            specs.iter().map(|s| s.4).collect(),
        )
        .unwrap();
        (layout, specs.iter().map(|s| s.5).collect())
    }

    /// The sweep equals a brute force over the kernel's tiles: per label, every admitted
    /// record with clock < t folded into tiles, the window merged as of t.
    #[test]
    fn sweep_equals_tiles_per_label() {
        let mut rng = Rng(11);
        let h = 3_600_000i64;
        for case in 0..200 {
            let mode = if case % 2 == 0 {
                Mode::EventTime
            } else {
                Mode::ProcessingTime
            };
            let include_late = case % 5 == 4;
            let entities = 1 + rng.below(12) as usize;
            let span = [3 * h, 48 * h, 20 * 24 * h][case % 3];
            let (layout, inputs) = layout();
            let lateness = [Some(2 * h), Some(24 * h), None][case % 3];
            let mut table = KeyTable::default();
            let mut buf = KeyBuf::default();
            for e in 0..entities {
                buf.clear();
                buf.push_str(&format!("e{e}"));
                table.insert(&buf.0);
            }
            let labels = 1 + rng.below(60) as usize;
            let codes: Vec<u32> = (0..labels)
                .map(|_| rng.below(entities as u64) as u32)
                .collect();
            // on a coarse grid (and a millisecond off it) so records and labels meet tile
            // and window boundaries exactly
            let grid = h / 4;
            let at = |rng: &mut Rng, from: i64| {
                from + rng.below((span / grid) as u64) as i64 * grid + rng.below(3) as i64 - 1
            };
            let times: Vec<i64> = (0..labels).map(|_| at(&mut rng, -span / 4)).collect();
            let n = rng.below(400) as usize;
            let et: Vec<i64> = (0..n).map(|_| at(&mut rng, -span / 3)).collect();
            let pt: Vec<i64> = et
                .iter()
                .map(|&t| t + rng.below(3 * h as u64) as i64 - h / 2)
                .collect();
            let offsets: Vec<i64> = (0..n as i64).collect();
            let keys: Vec<Option<String>> = (0..n)
                .map(|_| Some(format!("e{}", rng.below(entities as u64 + 1))))
                .collect();
            let amounts: Vec<f64> = (0..n)
                .map(|_| (rng.below(2000) as f64 - 700.0) / 8.0)
                .collect();
            let amount = Column {
                data: ColumnData::Float(amounts.clone()),
                valid: Some((0..n).map(|_| rng.below(10) != 0).collect()),
            };
            let words: Vec<Option<String>> = (0..n)
                .map(|_| (rng.below(8) != 0).then(|| format!("w{}", rng.below(9))))
                .collect();
            let word = Column::from_strs(&words);
            let group = GroupSpec {
                source: "s".into(),
                table: 0,
                key_fields: vec!["k".into()],
                input_fields: vec!["amount".into(), "word".into()],
                native: false,
            };
            let view = ViewSpec {
                group: 0,
                layout: layout.clone(),
                inputs: inputs.clone(),
                allowed_lateness_ms: lateness,
            };
            let wanted: Vec<usize> = (0..layout.aggs.len()).rev().collect();
            let request = RequestSpec {
                view: 0,
                codes: codes.clone(),
                times_ms: times.clone(),
                indices: wanted.clone(),
            };
            let mut sweep = Sweep::new(
                mode,
                include_late,
                vec![table],
                vec![group],
                vec![view],
                vec![request],
            )
            .unwrap();
            // in two chunks, the second from another partition
            let cut = n / 2;
            for (lo, hi, partition) in [(0, cut, 0), (cut, n, 1)] {
                let idx: Vec<usize> = (lo..hi).collect();
                let take = |c: &Column| {
                    let mut cells = Column::empty_like(&c.data);
                    cells.extend_gather(c, &idx);
                    cells
                };
                sweep
                    .add_rows(
                        0,
                        partition,
                        &offsets[lo..hi],
                        &et[lo..hi],
                        &pt[lo..hi],
                        &[Column::from_strs(&keys[lo..hi])],
                        &[take(&amount), take(&word)],
                    )
                    .unwrap();
            }
            let got = sweep.finish().pop().unwrap();
            for (l, (&code, &t)) in codes.iter().zip(&times).enumerate() {
                let mut tiles = EntityTiles::new(&layout);
                for r in 0..n {
                    let clock = if mode == Mode::EventTime {
                        et[r]
                    } else {
                        pt[r]
                    };
                    let late = lateness.filter(|_| !include_late);
                    if keys[r].as_deref() != Some(&format!("e{code}"))
                        || clock >= t
                        || late.is_some_and(|late| et[r] < pt[r] - late)
                    {
                        continue;
                    }
                    let partition = i32::from(r >= cut);
                    tiles.fold(
                        &layout,
                        et[r],
                        (et[r], partition, offsets[r]),
                        |i| match inputs[i] {
                            0 if amount.is_valid(r) => Input::Float(amounts[r]),
                            1 => words[r].as_deref().map_or(Input::Null, Input::Str),
                            _ => Input::Null,
                        },
                    );
                }
                tiles.evict(&layout, t);
                for (j, &i) in wanted.iter().enumerate() {
                    let want = tiles.value(&layout, i, t);
                    let col = &got[j];
                    let have = match col.kinds[l] {
                        OUT_NONE => Value::Null,
                        OUT_INT => Value::Int(col.bits[l]),
                        OUT_FLOAT => Value::Float(f64::from_bits(col.bits[l] as u64)),
                        _ => col
                            .objects
                            .iter()
                            .find(|(at, _)| *at as usize == l)
                            .unwrap()
                            .1
                            .clone(),
                    };
                    let same = match (&have, &want) {
                        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
                        (a, b) => a == b,
                    };
                    assert!(
                        same,
                        "case {case} {mode:?} label {l} (e{code} at {t}) agg {i} \
                         ({:?}): sweep {have:?}, tiles {want:?}",
                        layout.aggs[i].func
                    );
                }
            }
        }
    }

    /// Records read by one sweep per partition and handed over in entity shards
    /// (`take_shards` / `add_shard`) sweep to the same values as one sweep over all.
    #[test]
    fn shards_sweep_like_one_sweep() {
        let mut rng = Rng(5);
        let h = 3_600_000i64;
        for case in 0..40 {
            let mode = if case % 2 == 0 {
                Mode::EventTime
            } else {
                Mode::ProcessingTime
            };
            type Spec = (
                &'static str,
                &'static str,
                Option<u32>,
                Option<i64>,
                Option<i64>,
                usize,
            );
            #[rustfmt::skip]
            let specs: Vec<Spec> = vec![
                ("sum", "float", None, Some(24 * h), Some(h), 0),
                ("count", "float", None, Some(6 * h), Some(h), 0),
                ("mean", "float", None, Some(7 * 24 * h), Some(24 * h), 0),
                ("last", "str", None, Some(24 * h), Some(h), 1),
                ("first", "float", None, Some(24 * h), Some(h), 0),
                ("first_n", "float", Some(3), Some(24 * h), Some(h), 0),
                ("count_distinct", "str", None, Some(24 * h), Some(h), 1),
                ("max", "int", None, Some(24 * h), Some(h), 2),
                ("sum", "int", None, None, None, 2),
                ("last_n", "str", Some(2), None, None, 1),
            ];
            let layout = Layout::new(
                specs
                    .iter()
                    .map(|s| Agg::parse(s.0, s.1, s.2).unwrap())
                    .collect(),
                specs.iter().map(|s| s.3).collect(),
                specs.iter().map(|s| s.4).collect(),
            )
            .unwrap();
            let inputs: Vec<usize> = specs.iter().map(|s| s.5).collect();
            let entities = 1 + rng.below(30) as usize;
            let table = || {
                let mut table = KeyTable::default();
                let mut buf = KeyBuf::default();
                for e in 0..entities {
                    buf.clear();
                    buf.push_str(&format!("e{e}"));
                    table.insert(&buf.0);
                }
                table
            };
            let labels = 1 + rng.below(80) as usize;
            let codes: Vec<u32> = (0..labels)
                .map(|_| rng.below(entities as u64) as u32)
                .collect();
            let times: Vec<i64> = (0..labels)
                .map(|_| rng.below(20 * 24) as i64 * h / 2)
                .collect();
            let n = rng.below(500) as usize;
            let et: Vec<i64> = (0..n).map(|_| rng.below(20 * 24) as i64 * h / 2).collect();
            let pt: Vec<i64> = et
                .iter()
                .map(|&t| t + rng.below(2 * h as u64) as i64)
                .collect();
            let offsets: Vec<i64> = (0..n as i64).collect();
            let keys: Vec<Option<String>> = (0..n)
                .map(|_| Some(format!("e{}", rng.below(entities as u64 + 2))))
                .collect();
            let amount = Column {
                data: ColumnData::Float((0..n).map(|_| rng.below(999) as f64 / 7.0).collect()),
                valid: Some((0..n).map(|_| rng.below(10) != 0).collect()),
            };
            let word = Column::from_strs(
                &(0..n)
                    .map(|_| (rng.below(8) != 0).then(|| format!("w{}", rng.below(9))))
                    .collect::<Vec<_>>(),
            );
            // the int input as objects (what a transform hands over) in odd cases
            let ints: Vec<i64> = (0..n).map(|_| rng.below(1000) as i64 - 500).collect();
            let int_valid: Vec<bool> = (0..n).map(|_| rng.below(6) != 0).collect();
            let count = Column {
                data: if case % 4 < 2 {
                    ColumnData::Int(ints.clone())
                } else {
                    ColumnData::Value(ints.iter().map(|&i| Value::Int(i)).collect())
                },
                valid: Some(int_valid),
            };
            let wanted: Vec<usize> = (0..layout.aggs.len()).collect();
            let sweep = |codes: Vec<u32>, times: Vec<i64>| {
                Sweep::new(
                    mode,
                    case % 3 == 0,
                    vec![table()],
                    vec![GroupSpec {
                        source: "s".into(),
                        table: 0,
                        key_fields: vec!["k".into()],
                        input_fields: vec!["amount".into(), "word".into(), "n".into()],
                        native: false,
                    }],
                    vec![ViewSpec {
                        group: 0,
                        layout: layout.clone(),
                        inputs: inputs.clone(),
                        allowed_lateness_ms: [Some(h / 2), None][case % 2],
                    }],
                    vec![RequestSpec {
                        view: 0,
                        codes,
                        times_ms: times,
                        indices: wanted.clone(),
                    }],
                )
                .unwrap()
            };
            let cut = n / 3;
            let parts = [(0, cut, 0), (cut, n, 1)];
            let feed = |s: &mut Sweep, lo: usize, hi: usize, partition: i32| {
                let idx: Vec<usize> = (lo..hi).collect();
                let take = |c: &Column| {
                    let mut cells = Column::empty_like(&c.data);
                    cells.extend_gather(c, &idx);
                    cells
                };
                s.add_rows(
                    0,
                    partition,
                    &offsets[lo..hi],
                    &et[lo..hi],
                    &pt[lo..hi],
                    &[Column::from_strs(&keys[lo..hi])],
                    &[take(&amount), take(&word), take(&count)],
                )
                .unwrap();
            };
            let mut one = sweep(codes.clone(), times.clone());
            for &(lo, hi, p) in &parts {
                feed(&mut one, lo, hi, p);
            }
            let want = one.finish().pop().unwrap();
            // on a pool of its own (one thread, or three): the same values
            let mut own = sweep(codes.clone(), times.clone());
            for &(lo, hi, p) in &parts {
                feed(&mut own, lo, hi, p);
            }
            let got = own.finish_on(1 + 2 * (case % 2)).unwrap().pop().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (&g.kinds, &g.bits, &g.objects),
                    (&w.kinds, &w.bits, &w.objects)
                );
            }
            let shards = 1 + case % 4;
            let blobs: Vec<Vec<Vec<u8>>> = parts
                .iter()
                .map(|&(lo, hi, p)| {
                    let mut s = sweep(codes.clone(), times.clone());
                    feed(&mut s, lo, hi, p);
                    s.take_shards(shards)
                })
                .collect();
            // a sweep fed the records of some entities only (as a partition task sees a
            // topic-keyed view): its present entities' labels get the one sweep's values
            for parity in 0..2u64 {
                let idx: Vec<usize> = (0..n)
                    .filter(|&i| {
                        keys[i]
                            .as_deref()
                            .is_some_and(|k| k[1..].parse::<u64>().unwrap() % 2 == parity)
                    })
                    .collect();
                let take = |c: &Column| {
                    let mut cells = Column::empty_like(&c.data);
                    cells.extend_gather(c, &idx);
                    cells
                };
                let pick = |v: &[i64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
                let mut s = sweep(codes.clone(), times.clone());
                s.add_rows(
                    0,
                    0,
                    &pick(&offsets),
                    &pick(&et),
                    &pick(&pt),
                    &[Column::from_strs(
                        &idx.iter().map(|&i| keys[i].clone()).collect::<Vec<_>>(),
                    )],
                    &[take(&amount), take(&word), take(&count)],
                )
                .unwrap();
                let present: Vec<bool> = (0..entities)
                    .map(|e| s.rows[0].code.contains(&(e as u32)))
                    .collect();
                let mine = s.keep_present_labels().pop().unwrap();
                let expect: Vec<u32> = (0..labels as u32)
                    .filter(|&l| present[codes[l as usize] as usize])
                    .collect();
                assert_eq!(mine, expect, "case {case}");
                assert!(mine.iter().all(|&l| codes[l as usize] as u64 % 2 == parity));
                let got = s.finish().pop().unwrap();
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.kinds.len(), mine.len());
                    for (k, &l) in mine.iter().enumerate() {
                        let l = l as usize;
                        assert_eq!(g.kinds[k], w.kinds[l], "case {case} agg {j} label {l}");
                        assert_eq!(g.bits[k], w.bits[l], "case {case} agg {j} label {l}");
                        let object = |c: &OutColumn, at: usize| {
                            c.objects
                                .iter()
                                .find(|(i, _)| *i as usize == at)
                                .map(|o| o.1.clone())
                        };
                        assert_eq!(object(g, k), object(w, l), "case {case} agg {j} label {l}");
                    }
                }
            }
            for shard in 0..shards {
                let mine: Vec<usize> = (0..labels)
                    .filter(|&l| codes[l] as usize % shards == shard)
                    .collect();
                let mut s = sweep(
                    mine.iter().map(|&l| codes[l]).collect(),
                    mine.iter().map(|&l| times[l]).collect(),
                );
                for part in &blobs {
                    s.add_shard(&part[shard]).unwrap();
                }
                let got = s.finish().pop().unwrap();
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    for (k, &l) in mine.iter().enumerate() {
                        assert_eq!(g.kinds[k], w.kinds[l], "case {case} agg {j} label {l}");
                        assert_eq!(g.bits[k], w.bits[l], "case {case} agg {j} label {l}");
                        let object = |c: &OutColumn, at: usize| {
                            c.objects
                                .iter()
                                .find(|(i, _)| *i as usize == at)
                                .map(|o| o.1.clone())
                        };
                        assert_eq!(object(g, k), object(w, l), "case {case} agg {j} label {l}");
                    }
                }
            }
        }
    }
}
