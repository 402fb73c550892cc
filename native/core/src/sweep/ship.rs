//! The kept records of a sweep as bytes, split into entity shards: what the distributed
//! backfill (`engine/backfill_dask.py`) moves from the tasks that read log partitions to
//! the tasks that sweep entity shards.
//!
//! A reading task builds a [`Sweep`] over every label (so it keeps exactly the records the
//! local run keeps), reads its partition's files and hands its records over with
//! [`Sweep::take_shards`]: shard `s` holds the records of the entities whose code in their
//! group's table is `s` modulo the shard count. A sweeping task builds a sweep over the
//! same tables and views and the labels of its shard only, adds every reading task's
//! blob of that shard with [`Sweep::add_shard`] and finishes: an entity's records from
//! every partition meet in one sweep, as they do locally, so the values are the same.
//!
//! Blob layout (little-endian): `SKSH1`, the group count (u32), then per group: the row
//! count (u64), the carry flags (u8: 1 processing time, 2 partition and offset, 4 mask),
//! the codes (u32), event times (i64), the carried columns, the input count (u32) and each
//! input's cells (a tag byte, then its values; strings and bytes as a dictionary of the
//! shard's distinct values and a u32 id per row).

use super::rows::{Carry, Cells, Interner, NULL_ID};
use super::Sweep;
use crate::columns::{Column, ColumnData};
use crate::error::KernelError;
use crate::value::Value;

const MAGIC: &[u8; 5] = b"SKSH1";

const CELLS_ABSENT: u8 = 0;
const CELLS_INT: u8 = 1;
const CELLS_FLOAT: u8 = 2;
const CELLS_BOOL: u8 = 3;
const CELLS_STR: u8 = 4;
const CELLS_BYTES: u8 = 5;
const CELLS_VALUE: u8 = 6;

fn carry_flags(carry: Carry) -> u8 {
    u8::from(carry.processed_at) | (u8::from(carry.order) << 1) | (u8::from(carry.mask) << 2)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i64s(out: &mut Vec<u8>, v: impl ExactSizeIterator<Item = i64>) {
    out.reserve(8 * v.len());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Value::Int(i) => {
            out.push(2);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(3);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Str(s) => {
            out.push(4);
            put_bytes(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(5);
            put_bytes(out, b);
        }
        Value::Wide(w) => {
            out.push(6);
            out.extend_from_slice(&w.to_le_bytes());
        }
        Value::List(items) => {
            out.push(7);
            put_u32(out, items.len() as u32);
            for item in items {
                put_value(out, item);
            }
        }
        Value::Map(entries) => {
            out.push(8);
            put_u32(out, entries.len() as u32);
            for (k, item) in entries {
                put_bytes(out, k.as_bytes());
                put_value(out, item);
            }
        }
    }
}

/// Cells `idx` of `cells` (dictionary cells: the shard's distinct values, re-numbered).
fn put_cells(out: &mut Vec<u8>, cells: &Cells, idx: &[usize]) {
    match cells {
        Cells::Absent(_) => out.push(CELLS_ABSENT),
        Cells::Int(v, valid) => {
            out.push(CELLS_INT);
            put_i64s(out, idx.iter().map(|&i| v[i]));
            match valid {
                Some(ok) => {
                    out.push(1);
                    out.extend(idx.iter().map(|&i| u8::from(ok[i])));
                }
                None => out.push(0),
            }
        }
        Cells::Float(v) => {
            out.push(CELLS_FLOAT);
            put_i64s(out, idx.iter().map(|&i| v[i].to_bits() as i64));
        }
        Cells::Bool(v) => {
            out.push(CELLS_BOOL);
            out.extend(idx.iter().map(|&i| v[i]));
        }
        Cells::Str(v, dict) | Cells::Bytes(v, dict) => {
            out.push(if matches!(cells, Cells::Str(..)) {
                CELLS_STR
            } else {
                CELLS_BYTES
            });
            // the shard's distinct values, numbered in order of first use
            let mut local: Vec<u32> = vec![NULL_ID; dict.len()];
            let mut order: Vec<u32> = Vec::new();
            let ids: Vec<u32> = idx
                .iter()
                .map(|&i| match v[i] {
                    NULL_ID => NULL_ID,
                    id => {
                        let slot = &mut local[id as usize];
                        if *slot == NULL_ID {
                            *slot = order.len() as u32;
                            order.push(id);
                        }
                        *slot
                    }
                })
                .collect();
            put_u32(out, order.len() as u32);
            for &id in &order {
                put_bytes(out, dict.get(id));
            }
            out.reserve(4 * ids.len());
            for id in ids {
                put_u32(out, id);
            }
        }
        Cells::Value(v) => {
            out.push(CELLS_VALUE);
            for &i in idx {
                put_value(out, &v[i]);
            }
        }
    }
}

/// A cursor over a blob; every read fails cleanly on a short blob.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

fn short() -> KernelError {
    KernelError::Sweep("shard blob ends early".into())
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KernelError> {
        let end = self.pos.checked_add(n).ok_or_else(short)?;
        let got = self.data.get(self.pos..end).ok_or_else(short)?;
        self.pos = end;
        Ok(got)
    }

    fn u8(&mut self) -> Result<u8, KernelError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, KernelError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| short())?,
        ))
    }

    fn u64(&mut self) -> Result<u64, KernelError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| short())?,
        ))
    }

    fn i64(&mut self) -> Result<i64, KernelError> {
        Ok(self.u64()? as i64)
    }

    fn count(&mut self, n: usize, size: usize) -> Result<&'a [u8], KernelError> {
        self.take(n.checked_mul(size).ok_or_else(short)?)
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, KernelError> {
        Ok(self
            .count(n, 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn i64s(&mut self, n: usize) -> Result<Vec<i64>, KernelError> {
        Ok(self
            .count(n, 8)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    fn bytes(&mut self) -> Result<&'a [u8], KernelError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<Box<str>, KernelError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(Into::into)
            .map_err(|_| KernelError::Sweep("shard blob holds a string that is not UTF-8".into()))
    }

    fn value(&mut self, depth: usize) -> Result<Value, KernelError> {
        if depth > 64 {
            return Err(KernelError::Sweep(
                "shard blob nests values too deep".into(),
            ));
        }
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::Int(self.i64()?),
            3 => Value::Float(f64::from_bits(self.u64()?)),
            4 => Value::Str(self.str()?),
            5 => Value::Bytes(self.bytes()?.into()),
            6 => Value::Wide(i128::from_le_bytes(
                self.take(16)?.try_into().map_err(|_| short())?,
            )),
            7 => {
                let n = self.u32()? as usize;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::List(items)
            }
            8 => {
                let n = self.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let k = self.str()?;
                    entries.push((k, self.value(depth + 1)?));
                }
                Value::Map(entries)
            }
            tag => return Err(KernelError::Sweep(format!("shard blob: value tag {tag}"))),
        })
    }

    /// `n` cells as a column (`None`: absent, nulls); strings and bytes are read by
    /// [`add_dictionary_cells`].
    fn cells(&mut self, n: usize) -> Result<Option<Column>, KernelError> {
        let (data, valid) = match self.u8()? {
            CELLS_ABSENT => return Ok(None),
            CELLS_INT => {
                let v = self.i64s(n)?;
                let valid = match self.u8()? {
                    0 => None,
                    _ => Some(self.count(n, 1)?.iter().map(|&b| b != 0).collect()),
                };
                (ColumnData::Int(v), valid)
            }
            CELLS_FLOAT => {
                let v = self.i64s(n)?;
                (
                    ColumnData::Float(v.into_iter().map(|b| f64::from_bits(b as u64)).collect()),
                    None,
                )
            }
            CELLS_BOOL => {
                let v = self.count(n, 1)?;
                (
                    ColumnData::Bool(v.iter().map(|&b| b == 1).collect()),
                    Some(v.iter().map(|&b| b != 2).collect()),
                )
            }
            CELLS_VALUE => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(0)?);
                }
                (ColumnData::Value(v), None)
            }
            tag => return Err(KernelError::Sweep(format!("shard blob: cells tag {tag}"))),
        };
        Ok(Some(Column { data, valid }))
    }
}

/// Append `n` dictionary cells (after their tag) to `cells`: `false` when `cells` hold
/// another type.
fn add_dictionary_cells(
    r: &mut Reader<'_>,
    cells: &mut Cells,
    utf8: bool,
    n: usize,
) -> Result<bool, KernelError> {
    if let Cells::Absent(nulls) = *cells {
        *cells = if utf8 {
            Cells::Str(Vec::new(), Interner::default())
        } else {
            Cells::Bytes(Vec::new(), Interner::default())
        };
        cells.push_nulls(nulls);
    }
    let (ids, dict) = match (cells, utf8) {
        (Cells::Str(ids, dict), true) | (Cells::Bytes(ids, dict), false) => (ids, dict),
        _ => return Ok(false),
    };
    let distinct = r.u32()? as usize;
    let mut remap: Vec<u32> = Vec::with_capacity(distinct.min(1 << 20));
    for _ in 0..distinct {
        let s = r.bytes()?;
        if utf8 && std::str::from_utf8(s).is_err() {
            return Err(KernelError::Sweep(
                "shard blob holds a string that is not UTF-8".into(),
            ));
        }
        remap.push(dict.intern(s));
    }
    let local = r.u32s(n)?;
    ids.reserve(n);
    for id in local {
        ids.push(match id {
            NULL_ID => NULL_ID,
            id => *remap
                .get(id as usize)
                .ok_or_else(|| KernelError::Sweep(format!("shard blob: string id {id} unknown")))?,
        });
    }
    Ok(true)
}

impl Sweep {
    /// Hand over every kept record, split into `shards` blobs by entity code modulo
    /// `shards` (see the module docs); the sweep keeps none afterwards.
    pub fn take_shards(&mut self, shards: usize) -> Vec<Vec<u8>> {
        let shards = shards.max(1);
        let mut out: Vec<Vec<u8>> = (0..shards)
            .map(|_| {
                let mut b = MAGIC.to_vec();
                put_u32(&mut b, self.rows.len() as u32);
                b
            })
            .collect();
        for rows in self.rows.iter_mut() {
            let mut of_shard: Vec<Vec<usize>> = vec![Vec::new(); shards];
            for (i, &code) in rows.code.iter().enumerate() {
                of_shard[code as usize % shards].push(i);
            }
            for (blob, idx) in out.iter_mut().zip(&of_shard) {
                blob.extend_from_slice(&(idx.len() as u64).to_le_bytes());
                blob.push(carry_flags(rows.carry));
                blob.reserve(12 * idx.len());
                for &i in idx {
                    put_u32(blob, rows.code[i]);
                }
                put_i64s(blob, idx.iter().map(|&i| rows.event_time[i]));
                if rows.carry.processed_at {
                    put_i64s(blob, idx.iter().map(|&i| rows.processed_at[i]));
                }
                if rows.carry.order {
                    for &i in idx {
                        blob.extend_from_slice(&rows.partition[i].to_le_bytes());
                    }
                    put_i64s(blob, idx.iter().map(|&i| rows.offset[i]));
                }
                if rows.carry.mask {
                    blob.extend(idx.iter().map(|&i| rows.mask[i]));
                }
                put_u32(blob, rows.inputs.len() as u32);
                for cells in &rows.inputs {
                    put_cells(blob, cells, idx);
                }
            }
            let inputs = rows.inputs.len();
            *rows = super::rows::Rows::new(rows.carry, inputs);
        }
        out
    }

    /// Add the records of one blob of [`Sweep::take_shards`] from a sweep of the same
    /// tables and views; returns the records added.
    pub fn add_shard(&mut self, blob: &[u8]) -> Result<u64, KernelError> {
        let mut r = Reader { data: blob, pos: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(KernelError::Sweep("not a shard blob (bad magic)".into()));
        }
        let groups = r.u32()? as usize;
        if groups != self.rows.len() {
            return Err(KernelError::Sweep(format!(
                "shard blob of {groups} groups for a sweep of {}",
                self.rows.len()
            )));
        }
        let mut added = 0u64;
        for g in 0..groups {
            let n = usize::try_from(r.u64()?).map_err(|_| short())?;
            let rows = &mut self.rows[g];
            if r.u8()? != carry_flags(rows.carry) {
                return Err(KernelError::Sweep(format!(
                    "shard blob: group {g} carries other columns than this sweep's"
                )));
            }
            let table = self.tables[self.groups[g].table].len();
            let codes = r.u32s(n)?;
            if let Some(&c) = codes.iter().find(|&&c| c as usize >= table) {
                return Err(KernelError::Sweep(format!(
                    "shard blob: entity code {c} outside its table"
                )));
            }
            let event_time = r.i64s(n)?;
            let processed_at = if rows.carry.processed_at {
                r.i64s(n)?
            } else {
                Vec::new()
            };
            let (partition, offset) = if rows.carry.order {
                let p: Vec<i32> = r
                    .count(n, 4)?
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (p, r.i64s(n)?)
            } else {
                (Vec::new(), Vec::new())
            };
            let mask = if rows.carry.mask {
                r.count(n, 1)?.to_vec()
            } else {
                Vec::new()
            };
            let inputs = r.u32()? as usize;
            if inputs != rows.inputs.len() {
                return Err(KernelError::Sweep(format!(
                    "shard blob: group {g} has {inputs} inputs, this sweep {}",
                    rows.inputs.len()
                )));
            }
            let all: Vec<usize> = (0..n).collect();
            for c in 0..inputs {
                // strings and bytes: each distinct value interned once, the ids renumbered
                let tag = r.data.get(r.pos).copied();
                if tag == Some(CELLS_STR) || tag == Some(CELLS_BYTES) {
                    r.pos += 1;
                    if !add_dictionary_cells(
                        &mut r,
                        &mut rows.inputs[c],
                        tag == Some(CELLS_STR),
                        n,
                    )? {
                        return Err(KernelError::Sweep(format!(
                            "payload field {:?} changed type between event-log partitions",
                            self.groups[g]
                                .input_fields
                                .get(c)
                                .map_or("?", String::as_str)
                        )));
                    }
                    continue;
                }
                let col = r.cells(n)?;
                if !rows.inputs[c].extend(col.as_ref(), &all) {
                    return Err(KernelError::Sweep(format!(
                        "payload field {:?} changed type between event-log partitions",
                        self.groups[g]
                            .input_fields
                            .get(c)
                            .map_or("?", String::as_str)
                    )));
                }
            }
            rows.code.extend_from_slice(&codes);
            rows.event_time.extend_from_slice(&event_time);
            rows.processed_at.extend_from_slice(&processed_at);
            rows.partition.extend_from_slice(&partition);
            rows.offset.extend_from_slice(&offset);
            rows.mask.extend_from_slice(&mask);
            added += n as u64;
        }
        if r.pos != blob.len() {
            return Err(KernelError::Sweep(
                "shard blob: bytes after its last group".into(),
            ));
        }
        Ok(added)
    }
}

impl Sweep {
    /// Keep, in every request, only the labels of entities with kept records in the
    /// request's group, and return each request's kept label positions (ascending): what a
    /// sweep over some log partitions can finish alone when no other partition holds records
    /// of those entities (the distributed backfill's partition tasks, `engine/backfill_dask.py`).
    /// [`Sweep::finish`] then gives values for the kept labels only, in that order.
    pub fn keep_present_labels(&mut self) -> Vec<Vec<u32>> {
        let present: Vec<Vec<bool>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(g, rows)| {
                let mut seen = vec![false; self.tables[self.groups[g].table].len()];
                for &code in &rows.code {
                    seen[code as usize] = true;
                }
                seen
            })
            .collect();
        let mut out = Vec::with_capacity(self.requests.len());
        for req in &mut self.requests {
            let seen = &present[self.views[req.view].group];
            let at: Vec<u32> = (0..req.codes.len() as u32)
                .filter(|&l| seen[req.codes[l as usize] as usize])
                .collect();
            if at.len() != req.codes.len() {
                req.codes = at.iter().map(|&l| req.codes[l as usize]).collect();
                req.times_ms = at.iter().map(|&l| req.times_ms[l as usize]).collect();
            }
            out.push(at);
        }
        out
    }
}
