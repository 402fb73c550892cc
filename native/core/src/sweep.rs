//! The backfill's point-in-time sweep: replayed log records and labels in, feature values out.
//!
//! Records are added partition by partition (decoded natively from event-log files, or as
//! columns a caller extracted after a Python transform). Only records of labelled entities
//! that some label can still see are kept, as compact columns per row group (views sharing
//! a key and a transform). `finish` then sorts each group's records by (entity, clock) and
//! each request's labels by (entity, time) and sweeps every entity on its own, in parallel:
//! before a label at `t` exactly the admitted records with clock `< t` are folded (clock:
//! event time or processing time, by mode), and the label reads its windows as of `t`
//! (DESIGN §3). Entities are independent, so the result does not depend on the thread
//! count, the partitioning or the order records were added in.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::agg::Input;
use crate::avro::read_container;
use crate::columns::{Batch, Column, ColumnData};
use crate::error::KernelError;
use crate::tiles::{EntityTiles, Layout};
use crate::value::Value;

/// Which clock decides what a label at `t` sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    EventTime,
    ProcessingTime,
}

/// Entity keys of the labels: key bytes → code. Keys are encoded by [`KeyBuf`].
#[derive(Clone, Debug, Default)]
pub struct KeyTable {
    codes: HashMap<Box<[u8]>, u32>,
}

impl KeyTable {
    /// The code of `key`, added if new.
    pub fn insert(&mut self, key: &[u8]) -> u32 {
        let next = self.codes.len() as u32;
        *self.codes.entry(key.into()).or_insert(next)
    }

    /// The code of `key`, if a label has it.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        self.codes.get(key).copied()
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// `true` when no key was added.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
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
        self.0.push(b's');
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
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

/// Records kept for one group, as columns.
#[derive(Debug, Default)]
struct Rows {
    code: Vec<u32>,
    event_time: Vec<i64>,
    processed_at: Vec<i64>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    inputs: Vec<Option<Column>>,
    /// Per input: rows kept before its first file that had the field (nulls to prepend).
    pending_nulls: Vec<usize>,
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

    fn put(&mut self, i: usize, value: Value) {
        match value {
            Value::Null => self.kinds[i] = OUT_NONE,
            Value::Int(v) => {
                self.kinds[i] = OUT_INT;
                self.bits[i] = v;
            }
            Value::Float(v) => {
                self.kinds[i] = OUT_FLOAT;
                self.bits[i] = v.to_bits() as i64;
            }
            other => {
                self.kinds[i] = OUT_OBJECT;
                self.objects.push((i as u32, other));
            }
        }
    }
}

/// The sweep: specs, label tables, and the records kept so far.
pub struct Sweep {
    mode: Mode,
    include_late: bool,
    tables: Vec<KeyTable>,
    /// Per table, per code: the latest label time (records at or after it serve no label).
    last_label: Vec<Vec<i64>>,
    groups: Vec<GroupSpec>,
    views: Vec<ViewSpec>,
    requests: Vec<RequestSpec>,
    rows: Vec<Rows>,
    read: u64,
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
        let rows = groups
            .iter()
            .map(|g| Rows {
                inputs: vec![None; g.input_fields.len()],
                pending_nulls: vec![0; g.input_fields.len()],
                ..Rows::default()
            })
            .collect();
        Ok(Sweep {
            mode,
            include_late,
            tables,
            last_label,
            groups,
            views,
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

    /// Keep what the native groups of `source` need from one decoded event-log file of
    /// `partition` ([`decode_log_file`]). Records at or below `after_offset` are skipped
    /// (already read from another file). The event time is the payload's `ts_field`
    /// floored by `divisor` to milliseconds. Returns the highest offset seen (or
    /// `after_offset`) and the number of records taken.
    pub fn add_log_batch(
        &mut self,
        source: &str,
        partition: i32,
        batch: &Batch,
        after_offset: i64,
        ts_field: &str,
        divisor: i64,
    ) -> Result<(i64, u64), KernelError> {
        let need = |name: &str| {
            batch
                .column(name)
                .ok_or_else(|| KernelError::Sweep(format!("event-log file has no column {name:?}")))
        };
        let offsets = int_column(need("offset")?, "offset")?;
        let mut keep: Vec<usize> = Vec::with_capacity(batch.rows);
        let mut high = after_offset;
        for (i, &o) in offsets.iter().enumerate() {
            if o > high {
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
        let event_time: Vec<i64> = raw_ts.iter().map(|&t| t.div_euclid(divisor)).collect();
        let processed_at = int_column(need("processed_at")?, "processed_at")?;
        for g in 0..self.groups.len() {
            if !self.groups[g].native || self.groups[g].source != source {
                continue;
            }
            let group = self.groups[g].clone();
            let keys: Vec<Option<&Column>> = group
                .key_fields
                .iter()
                .map(|f| batch.column(&format!("payload.{f}")))
                .collect();
            let inputs: Vec<Option<&Column>> = group
                .input_fields
                .iter()
                .map(|f| batch.column(&format!("payload.{f}")))
                .collect();
            self.keep_rows(
                g,
                partition,
                &keep,
                &keys,
                &inputs,
                |i| offsets[i],
                |i| event_time[i],
                |i| processed_at[i],
            )?;
        }
        self.read += keep.len() as u64;
        Ok((high, keep.len() as u64))
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
        let table = &self.tables[self.groups[g].table];
        let last = &self.last_label[self.groups[g].table];
        let by_event_time = self.mode == Mode::EventTime;
        let rows = &mut self.rows[g];
        let mut buf = KeyBuf::default();
        let mut kept: Vec<usize> = Vec::new();
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
            kept.push(i);
            rows.code.push(code);
            rows.event_time.push(et);
            rows.processed_at.push(pt);
            rows.partition.push(partition);
            rows.offset.push(offset(i));
        }
        for (c, src) in inputs.iter().enumerate() {
            let slot = &mut rows.inputs[c];
            match (slot.as_mut(), src) {
                (Some(col), Some(src)) => {
                    if !col.extend_gather(src, &kept) {
                        return Err(KernelError::Sweep(format!(
                            "payload field {:?} changed type between event-log files",
                            self.groups[g]
                                .input_fields
                                .get(c)
                                .map_or("?", String::as_str)
                        )));
                    }
                }
                (Some(col), None) => col.push_nulls(kept.len()),
                (None, Some(src)) => {
                    let mut col = Column::empty_like(&src.data);
                    col.push_nulls(std::mem::take(&mut rows.pending_nulls[c]));
                    col.extend_gather(src, &kept);
                    *slot = Some(col);
                }
                // the field is absent from this file (an older schema): nulls
                (None, None) => rows.pending_nulls[c] += kept.len(),
            }
        }
        Ok(())
    }

    /// Sweep every request; per request, one [`OutColumn`] per wanted aggregation.
    pub fn finish(mut self) -> Vec<Vec<OutColumn>> {
        let by_event_time = self.mode == Mode::EventTime;
        // each group's records physically sorted by (entity, clock): the sweep then reads
        // them in order, without an indirection per record
        let rows = std::mem::take(&mut self.rows);
        self.rows = rows
            .into_par_iter()
            .map(|r| sorted(r, by_event_time))
            .collect();
        self.requests
            .iter()
            .map(|req| {
                let view = &self.views[req.view];
                self.sweep_request(req, view, &self.rows[view.group])
            })
            .collect()
    }

    fn sweep_request(&self, req: &RequestSpec, view: &ViewSpec, rows: &Rows) -> Vec<OutColumn> {
        let n = req.codes.len();
        let mut labels: Vec<(u32, i64, u32)> = (0..n)
            .map(|i| (req.codes[i], req.times_ms[i], i as u32))
            .collect();
        labels.par_sort_unstable();
        // chunks of whole entities, a few per thread so threads stay busy
        let target = (n / (rayon::current_num_threads() * 16)).max(1024);
        let mut bounds = vec![0usize];
        let mut at = target;
        while at < n {
            let code = labels[at].0;
            while at < n && labels[at].0 == code {
                at += 1;
            }
            if at < n {
                bounds.push(at);
            }
            at += target;
        }
        bounds.push(n);
        let mut out: Vec<OutColumn> = req.indices.iter().map(|_| OutColumn::new(n)).collect();
        let chunks: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        // a wave of chunks at a time bounds the values held before they are scattered
        for wave in chunks.chunks(rayon::current_num_threads() * 4) {
            let results: Vec<Vec<(u32, Vec<Value>)>> = wave
                .par_iter()
                .map(|&(lo, hi)| self.sweep_chunk(req, view, rows, &labels[lo..hi]))
                .collect();
            for chunk in results {
                for (label, values) in chunk {
                    for (col, value) in out.iter_mut().zip(values) {
                        col.put(label as usize, value);
                    }
                }
            }
        }
        out
    }

    /// Labels (sorted by entity, then time) of whole entities.
    fn sweep_chunk(
        &self,
        req: &RequestSpec,
        view: &ViewSpec,
        rows: &Rows,
        labels: &[(u32, i64, u32)],
    ) -> Vec<(u32, Vec<Value>)> {
        let layout = &view.layout;
        let clock = if self.mode == Mode::EventTime {
            &rows.event_time
        } else {
            &rows.processed_at
        };
        let lateness = if self.include_late {
            None
        } else {
            view.allowed_lateness_ms
        };
        let inputs: Vec<Option<&Column>> = view
            .inputs
            .iter()
            .map(|&c| rows.inputs[c].as_ref())
            .collect();
        let mut out = Vec::with_capacity(labels.len());
        let mut l = 0;
        while l < labels.len() {
            let code = labels[l].0;
            let mut end = l;
            while end < labels.len() && labels[end].0 == code {
                end += 1;
            }
            // this entity's records: a contiguous run (rows are sorted by code)
            let lo = rows.code.partition_point(|&c| c < code);
            let hi = lo + rows.code[lo..].partition_point(|&c| c == code);
            let mut tiles = EntityTiles::new(layout);
            let mut r = lo;
            for &(_, t, label) in &labels[l..end] {
                while r < hi && clock[r] < t {
                    let row = r;
                    r += 1;
                    let (et, pt) = (rows.event_time[row], rows.processed_at[row]);
                    if let Some(late) = lateness {
                        if et < pt.saturating_sub(late) {
                            continue;
                        }
                    }
                    let order = (et, rows.partition[row], rows.offset[row]);
                    tiles.fold(layout, et, order, |i| input_at(inputs[i], row));
                }
                tiles.evict(layout, t);
                let values = req
                    .indices
                    .iter()
                    .map(|&i| tiles.value(layout, i, t))
                    .collect();
                out.push((label, values));
            }
            l = end;
        }
        out
    }
}

/// `rows` reordered by (entity code, clock).
fn sorted(rows: Rows, by_event_time: bool) -> Rows {
    let clock = if by_event_time {
        &rows.event_time
    } else {
        &rows.processed_at
    };
    let mut keys: Vec<(u32, i64, u32)> = (0..rows.code.len())
        .map(|i| (rows.code[i], clock[i], i as u32))
        .collect();
    keys.par_sort_unstable();
    let idx: Vec<usize> = keys.iter().map(|k| k.2 as usize).collect();
    drop(keys);
    let gather = |v: &[i64]| idx.iter().map(|&i| v[i]).collect::<Vec<i64>>();
    let inputs = rows
        .inputs
        .iter()
        .zip(&rows.pending_nulls)
        .map(|(col, &pending)| {
            col.as_ref().map(|col| {
                let mut out = Column::empty_like(&col.data);
                out.extend_gather(col, &idx);
                debug_assert_eq!(pending, 0);
                out
            })
        })
        .collect();
    Rows {
        code: idx.iter().map(|&i| rows.code[i]).collect(),
        event_time: gather(&rows.event_time),
        processed_at: gather(&rows.processed_at),
        partition: idx.iter().map(|&i| rows.partition[i]).collect(),
        offset: gather(&rows.offset),
        inputs,
        pending_nulls: vec![0; rows.pending_nulls.len()],
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

#[inline]
fn input_at(col: Option<&Column>, row: usize) -> Input<'_> {
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
        ColumnData::Value(v) => match &v[row] {
            Value::Int(i) => Input::Int(*i),
            Value::Float(f) => Input::Float(*f),
            Value::Bool(b) => Input::Bool(*b),
            Value::Str(s) => Input::Str(s),
            Value::Bytes(b) => Input::Bytes(b),
            _ => Input::Null,
        },
    }
}

fn int_column<'a>(col: &'a Column, name: &str) -> Result<&'a [i64], KernelError> {
    match &col.data {
        ColumnData::Int(v) => Ok(v),
        _ => Err(KernelError::Sweep(format!(
            "envelope field {name:?} is not a long"
        ))),
    }
}
