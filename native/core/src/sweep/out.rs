//! Feature values written straight into their label's slot by the threads of a sweep.

use std::marker::PhantomData;

use super::{OutColumn, OUT_FLOAT, OUT_INT, OUT_NONE, OUT_OBJECT};
use crate::value::Value;

/// Writes kinds and bits of one [`OutColumn`] from several threads at once, each label's
/// slot by exactly one thread; objects are collected per thread ([`Objects`]) and appended
/// afterwards.
pub(crate) struct Slots<'a> {
    kinds: *mut u8,
    bits: *mut i64,
    len: usize,
    _column: PhantomData<&'a mut OutColumn>,
}

// SAFETY: a `Slots` only writes through its pointers (`put`), and every caller writes each
// label index from one thread only (the labels of a request are split into disjoint sets of
// whole entities, and each label belongs to one entity); the borrowed column is not touched
// otherwise while the `Slots` lives (it holds the `&mut`).
unsafe impl Send for Slots<'_> {}
unsafe impl Sync for Slots<'_> {}

impl<'a> Slots<'a> {
    pub(crate) fn new(column: &'a mut OutColumn) -> Slots<'a> {
        assert_eq!(column.kinds.len(), column.bits.len());
        Slots {
            kinds: column.kinds.as_mut_ptr(),
            bits: column.bits.as_mut_ptr(),
            len: column.kinds.len(),
            _column: PhantomData,
        }
    }

    /// Write `value` as label `label`'s; an object goes to `objects`.
    ///
    /// Callers write each label from one thread only (see the `Send`/`Sync` note).
    #[inline]
    pub(crate) fn put(&self, label: u32, value: Value, objects: &mut Objects) {
        let i = label as usize;
        assert!(
            i < self.len,
            "label {i} outside the output ({} labels)",
            self.len
        );
        let (kind, bits) = match value {
            Value::Null => (OUT_NONE, 0),
            Value::Int(v) => (OUT_INT, v),
            Value::Float(v) => (OUT_FLOAT, v.to_bits() as i64),
            other => {
                objects.push((label, other));
                (OUT_OBJECT, 0)
            }
        };
        // SAFETY: `i < len` (checked above) is inside both buffers, which the `&mut` in
        // `_column` keeps alive and unaliased; no other thread writes slot `i`.
        unsafe {
            *self.kinds.add(i) = kind;
            *self.bits.add(i) = bits;
        }
    }
}

/// Object values (lists, wide ints, ...) of one column, by label.
pub(crate) type Objects = Vec<(u32, Value)>;
