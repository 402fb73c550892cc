//! The records a sweep keeps for one row group, as compact columns, and their reordering by
//! (entity, clock) before the sweep.
//!
//! Per record: the entity code (until the sort replaces it by per-entity ranges), the event
//! time, the processing time only where it is the clock or decides admission, partition and
//! offset only where an aggregation orders by them (first/last), an admission mask, and the
//! input cells: numbers as numbers (a null float as NaN, which every aggregation treats as a
//! null), strings and bytes as 4-byte ids into a per-column dictionary.

use std::hash::{BuildHasher, Hasher};

use rayon::prelude::*;
use rustc_hash::FxHasher;

use crate::agg::Input;
use crate::columns::{Column, ColumnData};
use crate::value::Value;

/// Distinct strings (or byte strings) of a column, each stored once; rows hold their ids.
/// Also the labels' entity keys ([`super::KeyTable`]): one flat table, so a lookup among
/// many keys costs few cache misses.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    bytes: Vec<u8>,
    /// `ends[id]`: where string `id` ends in `bytes` (it starts where `id - 1` ends).
    ends: Vec<usize>,
    /// Open addressing (linear probing, at most 3/4 full), 0 for a free slot, else the
    /// hash's high half and `id + 1`; the length is a power of two.
    slots: Vec<u64>,
}

/// The id of a null cell.
pub(crate) const NULL_ID: u32 = u32::MAX;

impl Interner {
    #[inline]
    fn hash(s: &[u8]) -> u64 {
        let mut h = KeyHash.build_hasher();
        h.write(s);
        h.finish()
    }

    /// The bytes of `id`.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.bytes[start..self.ends[id]]
    }

    /// The slot holding `s`, or the free slot where it would go.
    #[inline]
    fn probe(&self, s: &[u8], hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let tag = hash & !0xffff_ffff;
        let mut at = hash as usize & mask;
        loop {
            let slot = self.slots[at];
            if slot == 0 || (slot & !0xffff_ffff == tag && self.get((slot as u32) - 1) == s) {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    /// The id of `s`, if it was added.
    #[inline]
    pub(crate) fn find(&self, s: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        match self.slots[self.probe(s, Self::hash(s))] {
            0 => None,
            slot => Some(slot as u32 - 1),
        }
    }

    /// The id of `s`, added if new.
    pub(crate) fn intern(&mut self, s: &[u8]) -> u32 {
        if 4 * (self.ends.len() + 1) > 3 * self.slots.len() {
            self.grow();
        }
        let hash = Self::hash(s);
        let at = self.probe(s, hash);
        match self.slots[at] {
            0 => {
                let id = self.ends.len() as u32;
                self.bytes.extend_from_slice(s);
                self.ends.push(self.bytes.len());
                self.slots[at] = (hash & !0xffff_ffff) | (id as u64 + 1);
                id
            }
            slot => slot as u32 - 1,
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let mut slots = vec![0u64; size];
        let mask = size - 1;
        for id in 0..self.ends.len() as u32 {
            let hash = Self::hash(self.get(id));
            let mut at = hash as usize & mask;
            while slots[at] != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = (hash & !0xffff_ffff) | (id as u64 + 1);
        }
        self.slots = slots;
    }

    /// Number of distinct strings.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Fx hashing with a final avalanche (murmur3's `fmix64`): Fx alone leaves short keys that
/// differ in a few bytes (`"c0012345"`, `"c0012346"`) with related bits, which crowds the
/// buckets of a large table.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHash;

/// The hasher of [`KeyHash`].
#[derive(Default)]
pub(crate) struct KeyHasher(FxHasher);

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0.finish();
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

/// The kept cells of one input field.
#[derive(Debug)]
pub(crate) enum Cells {
    /// No file read so far had the field: that many nulls.
    Absent(usize),
    /// Validity only once a null arrived.
    Int(Vec<i64>, Option<Vec<bool>>),
    /// A null is NaN: every aggregation skips a non-finite float as it skips a null, and
    /// `count` counts both.
    Float(Vec<f64>),
    /// 0 false, 1 true, 2 null.
    Bool(Vec<u8>),
    /// UTF-8 strings (ids into the dictionary; [`NULL_ID`] for a null).
    Str(Vec<u32>, Interner),
    Bytes(Vec<u32>, Interner),
    /// Cells handed over as Python objects (a transform's output): kept as they are.
    Value(Vec<Value>),
}

impl Cells {
    /// Number of cells.
    pub(crate) fn len(&self) -> usize {
        match self {
            Cells::Absent(n) => *n,
            Cells::Int(v, _) => v.len(),
            Cells::Float(v) => v.len(),
            Cells::Bool(v) => v.len(),
            Cells::Str(v, _) | Cells::Bytes(v, _) => v.len(),
            Cells::Value(v) => v.len(),
        }
    }

    /// Empty cells of `like`'s type, then `nulls` nulls.
    fn typed(like: &ColumnData, nulls: usize) -> Cells {
        let mut cells = match like {
            ColumnData::Int(_) => Cells::Int(Vec::new(), None),
            ColumnData::Float(_) => Cells::Float(Vec::new()),
            ColumnData::Bool(_) => Cells::Bool(Vec::new()),
            ColumnData::Str { .. } => Cells::Str(Vec::new(), Interner::default()),
            ColumnData::Bytes { .. } => Cells::Bytes(Vec::new(), Interner::default()),
            ColumnData::Value(_) => Cells::Value(Vec::new()),
        };
        cells.push_nulls(nulls);
        cells
    }

    /// Append `n` nulls.
    pub(crate) fn push_nulls(&mut self, n: usize) {
        match self {
            Cells::Absent(k) => *k += n,
            Cells::Int(v, valid) => {
                let len = v.len();
                valid
                    .get_or_insert_with(|| vec![true; len])
                    .extend(std::iter::repeat_n(false, n));
                v.extend(std::iter::repeat_n(0, n));
            }
            Cells::Float(v) => v.extend(std::iter::repeat_n(f64::NAN, n)),
            Cells::Bool(v) => v.extend(std::iter::repeat_n(2, n)),
            Cells::Str(v, _) | Cells::Bytes(v, _) => v.extend(std::iter::repeat_n(NULL_ID, n)),
            Cells::Value(v) => v.extend(std::iter::repeat_n(Value::Null, n)),
        }
    }

    /// Append cells `idx` of `src` (`None`: the field is absent, nulls). `false` (nothing
    /// appended) when `src` holds another cell type than the cells kept so far.
    pub(crate) fn extend(&mut self, src: Option<&Column>, idx: &[usize]) -> bool {
        let Some(src) = src else {
            self.push_nulls(idx.len());
            return true;
        };
        if let Cells::Absent(n) = *self {
            *self = Cells::typed(&src.data, n);
        }
        let valid = |i: usize| src.valid.as_ref().is_none_or(|v| v[i]);
        match (self, &src.data) {
            (Cells::Int(d, dv), ColumnData::Int(s)) => {
                let start = d.len();
                d.extend(idx.iter().map(|&i| s[i]));
                if dv.is_some() || idx.iter().any(|&i| !valid(i)) {
                    let dv = dv.get_or_insert_with(|| vec![true; start]);
                    dv.extend(idx.iter().map(|&i| valid(i)));
                }
            }
            (Cells::Float(d), ColumnData::Float(s)) => {
                d.extend(idx.iter().map(|&i| if valid(i) { s[i] } else { f64::NAN }))
            }
            (Cells::Bool(d), ColumnData::Bool(s)) => {
                d.extend(idx.iter().map(|&i| if valid(i) { s[i] as u8 } else { 2 }))
            }
            (Cells::Str(d, dict), ColumnData::Str { offsets, data })
            | (Cells::Bytes(d, dict), ColumnData::Bytes { offsets, data }) => {
                d.extend(idx.iter().map(|&i| {
                    if valid(i) {
                        dict.intern(&data[offsets[i] as usize..offsets[i + 1] as usize])
                    } else {
                        NULL_ID
                    }
                }))
            }
            (Cells::Value(d), ColumnData::Value(s)) => {
                d.extend(
                    idx.iter()
                        .map(|&i| if valid(i) { s[i].clone() } else { Value::Null }),
                )
            }
            _ => return false,
        }
        true
    }

    /// Cell `row` as an aggregation input.
    #[inline]
    pub(crate) fn input(&self, row: usize) -> Input<'_> {
        match self {
            Cells::Absent(_) => Input::Null,
            Cells::Int(v, valid) => match valid {
                Some(ok) if !ok[row] => Input::Null,
                _ => Input::Int(v[row]),
            },
            Cells::Float(v) => Input::Float(v[row]),
            Cells::Bool(v) => match v[row] {
                2 => Input::Null,
                b => Input::Bool(b == 1),
            },
            Cells::Str(v, dict) => match v[row] {
                NULL_ID => Input::Null,
                // SAFETY: the dictionary of a Str column holds only bytes taken from Str
                // columns, which are valid UTF-8 (`Column::str_at`'s invariant)
                id => Input::Str(unsafe { std::str::from_utf8_unchecked(dict.get(id)) }),
            },
            Cells::Bytes(v, dict) => match v[row] {
                NULL_ID => Input::Null,
                id => Input::Bytes(dict.get(id)),
            },
            Cells::Value(v) => v[row].as_input(),
        }
    }

    /// The cells in the order `perm`.
    fn gather(self, perm: &[u32]) -> Cells {
        match self {
            Cells::Absent(n) => Cells::Absent(n),
            Cells::Int(v, valid) => Cells::Int(gather(&v, perm), valid.map(|ok| gather(&ok, perm))),
            Cells::Float(v) => Cells::Float(gather(&v, perm)),
            Cells::Bool(v) => Cells::Bool(gather(&v, perm)),
            Cells::Str(v, dict) => Cells::Str(gather(&v, perm), dict),
            Cells::Bytes(v, dict) => Cells::Bytes(gather(&v, perm), dict),
            Cells::Value(v) => Cells::Value(perm.iter().map(|&i| v[i as usize].clone()).collect()),
        }
    }
}

fn gather<T: Copy + Send + Sync>(v: &[T], perm: &[u32]) -> Vec<T> {
    perm.par_iter().map(|&i| v[i as usize]).collect()
}

/// What the kept records carry besides code, event time and inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Carry {
    /// processing time (the clock, or needed to decide admission)
    pub processed_at: bool,
    /// partition and offset (an aggregation orders by them)
    pub order: bool,
    /// an admission mask per record
    pub mask: bool,
}

/// The records kept for one group, as columns.
#[derive(Debug)]
pub(crate) struct Rows {
    pub carry: Carry,
    /// Entity code of each record; emptied by [`Rows::sort`], which fills `starts`.
    pub code: Vec<u32>,
    pub event_time: Vec<i64>,
    pub processed_at: Vec<i64>,
    pub partition: Vec<i32>,
    pub offset: Vec<i64>,
    /// Bit `b`: admitted by lateness class `b` of the group.
    pub mask: Vec<u8>,
    pub inputs: Vec<Cells>,
    /// After the sort: entity `e`'s records are `starts[e]..starts[e + 1]`.
    pub starts: Vec<usize>,
}

impl Rows {
    pub(crate) fn new(carry: Carry, inputs: usize) -> Rows {
        Rows {
            carry,
            code: Vec::new(),
            event_time: Vec::new(),
            processed_at: Vec::new(),
            partition: Vec::new(),
            offset: Vec::new(),
            mask: Vec::new(),
            inputs: (0..inputs).map(|_| Cells::Absent(0)).collect(),
            starts: Vec::new(),
        }
    }

    /// Number of records.
    pub(crate) fn len(&self) -> usize {
        self.event_time.len()
    }

    /// The records of entity `e` (after [`Rows::sort`]).
    #[inline]
    pub(crate) fn of(&self, e: usize) -> std::ops::Range<usize> {
        self.starts[e]..self.starts[e + 1]
    }

    /// Reorder the records by (entity, clock) over `entities` codes; the codes become
    /// `starts`. Records of an entity with equal clocks keep the order they were added in.
    pub(crate) fn sort(&mut self, entities: usize, by_event_time: bool) {
        debug_assert!(self.inputs.iter().all(|c| c.len() == self.len()));
        let code = std::mem::take(&mut self.code);
        let (starts, mut perm) = counting_sort(&code, entities);
        drop(code);
        let clock = if by_event_time {
            &self.event_time
        } else {
            &self.processed_at
        };
        // within each entity, by clock: chunks of whole entities in parallel
        let pieces = split_by_entity(&starts, &mut perm, 1 << 16);
        pieces.into_par_iter().for_each(|piece| {
            for run in piece {
                if !run.is_sorted_by_key(|&i| clock[i as usize]) {
                    run.sort_by_key(|&i| clock[i as usize]);
                }
            }
        });
        self.starts = starts;
        let inputs = std::mem::take(&mut self.inputs);
        self.inputs = inputs.into_iter().map(|c| c.gather(&perm)).collect();
        self.event_time = gather(&self.event_time, &perm);
        if self.carry.processed_at {
            self.processed_at = gather(&self.processed_at, &perm);
        }
        if self.carry.order {
            self.partition = gather(&self.partition, &perm);
            self.offset = gather(&self.offset, &perm);
        }
        if self.carry.mask {
            self.mask = gather(&self.mask, &perm);
        }
    }
}

/// `(starts, perm)`: `perm` lists the positions of `codes` grouped by code, ascending, in
/// their original order within a code; code `c`'s are `perm[starts[c]..starts[c + 1]]`.
pub(crate) fn counting_sort(codes: &[u32], entities: usize) -> (Vec<usize>, Vec<u32>) {
    let mut starts = vec![0usize; entities + 1];
    for &c in codes {
        starts[c as usize + 1] += 1;
    }
    for e in 0..entities {
        starts[e + 1] += starts[e];
    }
    let mut next = starts.clone();
    let mut perm = vec![0u32; codes.len()];
    for (i, &c) in codes.iter().enumerate() {
        let at = &mut next[c as usize];
        perm[*at] = i as u32;
        *at += 1;
    }
    (starts, perm)
}

/// `items` (grouped by entity as `starts` says) cut into pieces of whole entities of about
/// `target` items, each piece a list of per-entity runs, for parallel work on disjoint runs.
pub(crate) fn split_by_entity<'a, T>(
    starts: &[usize],
    items: &'a mut [T],
    target: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut in_piece = 0;
    let mut rest = items;
    for w in starts.windows(2) {
        let (run, tail) = rest.split_at_mut(w[1] - w[0]);
        rest = tail;
        if run.is_empty() {
            continue;
        }
        in_piece += run.len();
        piece.push(run);
        if in_piece >= target {
            pieces.push(std::mem::take(&mut piece));
            in_piece = 0;
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_gives_one_id_per_distinct_string() {
        let mut dict = Interner::default();
        let words: Vec<String> = (0..5000).map(|i| format!("w{}", i % 1234)).collect();
        let ids: Vec<u32> = words.iter().map(|w| dict.intern(w.as_bytes())).collect();
        assert_eq!(dict.len(), 1234);
        for (w, &id) in words.iter().zip(&ids) {
            assert_eq!(dict.get(id), w.as_bytes());
        }
        assert_eq!(dict.intern(b""), 1234);
        assert_eq!(dict.get(1234), b"");
        assert_eq!(dict.intern(b"w7"), ids[7]);
    }

    #[test]
    fn counting_sort_is_stable() {
        let codes = [2, 0, 2, 1, 0, 2];
        let (starts, perm) = counting_sort(&codes, 4);
        assert_eq!(starts, vec![0, 2, 3, 6, 6]);
        assert_eq!(perm, vec![1, 4, 3, 0, 2, 5]);
    }

    #[test]
    fn cells_keep_values_nulls_and_types() {
        let ints = Column {
            data: ColumnData::Int(vec![1, 2, 3]),
            valid: Some(vec![true, false, true]),
        };
        let mut cells = Cells::Absent(0);
        cells.push_nulls(1);
        assert!(cells.extend(Some(&ints), &[2, 1, 0]));
        assert!(cells.extend(None, &[0]));
        let got: Vec<Input> = (0..cells.len()).map(|r| cells.input(r)).collect();
        assert_eq!(
            got,
            [
                Input::Null,
                Input::Int(3),
                Input::Null,
                Input::Int(1),
                Input::Null
            ]
        );
        let floats = Column {
            data: ColumnData::Float(vec![0.5]),
            valid: None,
        };
        assert!(!cells.extend(Some(&floats), &[0]), "another type");
        let strs = Column {
            data: ColumnData::Str {
                offsets: vec![0, 1, 3, 3],
                data: b"abc".to_vec(),
            },
            valid: Some(vec![true, true, false]),
        };
        let mut cells = Cells::Absent(0);
        assert!(cells.extend(Some(&strs), &[0, 1, 2, 1]));
        let cells = cells.gather(&[3, 2, 1, 0]);
        let got: Vec<Input> = (0..4).map(|r| cells.input(r)).collect();
        assert_eq!(
            got,
            [
                Input::Str("bc"),
                Input::Null,
                Input::Str("bc"),
                Input::Str("a")
            ]
        );
    }
}
