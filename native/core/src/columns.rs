//! Typed columns with validity: the unit every batch call carries across the boundary.
//!
//! Strings and bytes use the Arrow "large" layout (`offsets.len() == rows + 1`, `i64`
//! offsets into one `data` buffer), so the binding can hand them to pyarrow without a
//! Python object per cell.

use crate::value::Value;

/// The cells of one column.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnData {
    Int(Vec<i64>),
    Float(Vec<f64>),
    Bool(Vec<bool>),
    Str {
        offsets: Vec<i64>,
        data: Vec<u8>,
    },
    Bytes {
        offsets: Vec<i64>,
        data: Vec<u8>,
    },
    /// Nested or mixed types (records, arrays, maps, unions of several non-null types).
    Value(Vec<Value>),
}

/// One column: cells plus validity (`None`: every cell is valid; a null cell holds a
/// placeholder — 0, 0.0, false, an empty string or `Value::Null`).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub data: ColumnData,
    pub valid: Option<Vec<bool>>,
}

impl ColumnData {
    /// Number of cells.
    pub fn len(&self) -> usize {
        match self {
            ColumnData::Int(v) => v.len(),
            ColumnData::Float(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
            ColumnData::Str { offsets, .. } | ColumnData::Bytes { offsets, .. } => {
                offsets.len().saturating_sub(1)
            }
            ColumnData::Value(v) => v.len(),
        }
    }

    /// `true` when the column has no cells.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Column {
    /// Number of cells.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// `true` when the column has no cells.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whether cell `i` holds a value.
    #[inline]
    pub fn is_valid(&self, i: usize) -> bool {
        self.valid.as_ref().is_none_or(|v| v[i])
    }

    /// The string at `i` of a `Str` column (`None` for other columns or null cells).
    #[inline]
    pub fn str_at(&self, i: usize) -> Option<&str> {
        match &self.data {
            ColumnData::Str { offsets, data } if self.is_valid(i) => {
                let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                // SAFETY: every producer of a Str column writes valid UTF-8 between offsets
                // (the Avro decoder validates strings; the binding takes Python str).
                Some(unsafe { std::str::from_utf8_unchecked(&data[a..b]) })
            }
            _ => None,
        }
    }

    /// Cell `i` as a `Value` (`Value::Null` for a null cell).
    pub fn value_at(&self, i: usize) -> Value {
        if !self.is_valid(i) {
            return Value::Null;
        }
        match &self.data {
            ColumnData::Int(v) => Value::Int(v[i]),
            ColumnData::Float(v) => Value::Float(v[i]),
            ColumnData::Bool(v) => Value::Bool(v[i]),
            ColumnData::Str { offsets, data } => {
                let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                Value::Str(String::from_utf8_lossy(&data[a..b]).into())
            }
            ColumnData::Bytes { offsets, data } => {
                let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                Value::Bytes(data[a..b].into())
            }
            ColumnData::Value(v) => v[i].clone(),
        }
    }
}

/// Named columns of equal length: a decoded batch or a slice of the event log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub rows: usize,
}

impl Batch {
    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.columns[i])
    }
}

impl Column {
    /// A string column of `cells`, with a validity vector (None: a null cell, stored empty).
    pub fn from_strs<S: AsRef<str>>(cells: &[Option<S>]) -> Column {
        let mut offsets = Vec::with_capacity(cells.len() + 1);
        offsets.push(0i64);
        let mut data = Vec::new();
        for cell in cells {
            if let Some(s) = cell {
                data.extend_from_slice(s.as_ref().as_bytes());
            }
            offsets.push(data.len() as i64);
        }
        Column {
            data: ColumnData::Str { offsets, data },
            valid: Some(cells.iter().map(Option::is_some).collect()),
        }
    }

    /// An empty column of the same cell type as `like`, with a validity vector.
    pub fn empty_like(like: &ColumnData) -> Column {
        let data = match like {
            ColumnData::Int(_) => ColumnData::Int(Vec::new()),
            ColumnData::Float(_) => ColumnData::Float(Vec::new()),
            ColumnData::Bool(_) => ColumnData::Bool(Vec::new()),
            ColumnData::Str { .. } => ColumnData::Str {
                offsets: vec![0],
                data: Vec::new(),
            },
            ColumnData::Bytes { .. } => ColumnData::Bytes {
                offsets: vec![0],
                data: Vec::new(),
            },
            ColumnData::Value(_) => ColumnData::Value(Vec::new()),
        };
        Column {
            data,
            valid: Some(Vec::new()),
        }
    }

    /// Append the cells `idx` of `src`, whose cell type must be this column's.
    /// Returns `false` (and appends nothing) when the cell types differ.
    pub fn extend_gather(&mut self, src: &Column, idx: &[usize]) -> bool {
        match (&mut self.data, &src.data) {
            (ColumnData::Int(d), ColumnData::Int(s)) => d.extend(idx.iter().map(|&i| s[i])),
            (ColumnData::Float(d), ColumnData::Float(s)) => d.extend(idx.iter().map(|&i| s[i])),
            (ColumnData::Bool(d), ColumnData::Bool(s)) => d.extend(idx.iter().map(|&i| s[i])),
            (
                ColumnData::Str { offsets, data },
                ColumnData::Str {
                    offsets: so,
                    data: sd,
                },
            )
            | (
                ColumnData::Bytes { offsets, data },
                ColumnData::Bytes {
                    offsets: so,
                    data: sd,
                },
            ) => {
                for &i in idx {
                    data.extend_from_slice(&sd[so[i] as usize..so[i + 1] as usize]);
                    offsets.push(data.len() as i64);
                }
            }
            (ColumnData::Value(d), ColumnData::Value(s)) => {
                d.extend(idx.iter().map(|&i| s[i].clone()))
            }
            _ => return false,
        }
        let valid = self.valid.get_or_insert_with(Vec::new);
        match &src.valid {
            None => valid.extend(std::iter::repeat_n(true, idx.len())),
            Some(v) => valid.extend(idx.iter().map(|&i| v[i])),
        }
        true
    }
}

impl Column {
    /// Append `n` null cells.
    pub fn push_nulls(&mut self, n: usize) {
        match &mut self.data {
            ColumnData::Int(v) => v.extend(std::iter::repeat_n(0, n)),
            ColumnData::Float(v) => v.extend(std::iter::repeat_n(0.0, n)),
            ColumnData::Bool(v) => v.extend(std::iter::repeat_n(false, n)),
            ColumnData::Str { offsets, data } | ColumnData::Bytes { offsets, data } => {
                let end = data.len() as i64;
                offsets.extend(std::iter::repeat_n(end, n));
            }
            ColumnData::Value(v) => v.extend(std::iter::repeat_n(Value::Null, n)),
        }
        let len = self.data.len();
        let valid = self.valid.get_or_insert_with(|| vec![true; len - n]);
        valid.extend(std::iter::repeat_n(false, n));
    }
}
