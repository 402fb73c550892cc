//! `Columns`: a decoded batch held natively, handed between native calls without copying
//! (decode → fold → log append) and turned into Python objects only on the slow path.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use rustc_hash::FxBuildHasher;

use skewless_core::columns::{Batch, Column, ColumnData};
use skewless_core::value::Value;

use crate::convert::scalar;
use crate::kernel::value_to_py;

/// A batch of rows as named columns (`skewless_core::columns::Batch`), immutable.
#[pyclass(module = "engine._native", name = "Columns", frozen)]
pub struct PyColumns {
    pub batch: Arc<Batch>,
}

impl PyColumns {
    pub fn new(batch: Batch) -> PyColumns {
        PyColumns {
            batch: Arc::new(batch),
        }
    }
}

/// A typed column from one field of many row dicts (a missing key or None is null; a
/// value of another type than `kind` raises TypeError naming the field).
fn column_from_rows(name: &str, kind: Option<&str>, rows: &Bound<'_, PyList>) -> PyResult<Column> {
    let n = rows.len();
    let mut valid = Vec::with_capacity(n);
    let key = pyo3::types::PyString::new(rows.py(), name);
    let cells: Vec<Option<Bound<'_, PyAny>>> = rows
        .iter()
        .map(|row| {
            let row = row
                .cast_into::<PyDict>()
                .map_err(|_| pyo3::exceptions::PyTypeError::new_err("rows must be dicts"))?;
            Ok(row.get_item(&key)?.filter(|v| !v.is_none()))
        })
        .collect::<PyResult<_>>()?;
    let wrong = |v: &Bound<'_, PyAny>| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "field {name:?}: expected {}, got {}",
            kind.unwrap_or("a value"),
            v.get_type()
                .name()
                .map(|s| s.to_string())
                .unwrap_or_default()
        ))
    };
    let data = match kind {
        Some("int") => {
            let mut v = Vec::with_capacity(n);
            for c in &cells {
                valid.push(c.is_some());
                v.push(match c {
                    Some(x) => x.extract::<i64>().map_err(|_| wrong(x))?,
                    None => 0,
                });
            }
            ColumnData::Int(v)
        }
        Some("float") => {
            let mut v = Vec::with_capacity(n);
            for c in &cells {
                valid.push(c.is_some());
                v.push(match c {
                    Some(x) => x.extract::<f64>().map_err(|_| wrong(x))?,
                    None => 0.0,
                });
            }
            ColumnData::Float(v)
        }
        Some("bool") => {
            let mut v = Vec::with_capacity(n);
            for c in &cells {
                valid.push(c.is_some());
                v.push(match c {
                    Some(x) => x.extract::<bool>().map_err(|_| wrong(x))?,
                    None => false,
                });
            }
            ColumnData::Bool(v)
        }
        Some("str") | Some("bytes") => {
            let mut offsets = Vec::with_capacity(n + 1);
            offsets.push(0i64);
            let mut data = Vec::new();
            for c in &cells {
                valid.push(c.is_some());
                if let Some(x) = c {
                    if kind == Some("str") {
                        data.extend_from_slice(
                            x.extract::<&str>().map_err(|_| wrong(x))?.as_bytes(),
                        );
                    } else {
                        data.extend_from_slice(x.extract::<&[u8]>().map_err(|_| wrong(x))?);
                    }
                }
                offsets.push(data.len() as i64);
            }
            if kind == Some("str") {
                ColumnData::Str { offsets, data }
            } else {
                ColumnData::Bytes { offsets, data }
            }
        }
        _ => {
            let mut v = Vec::with_capacity(n);
            for c in &cells {
                valid.push(c.is_some());
                v.push(match c {
                    None => Value::Null,
                    Some(x) => scalar(x),
                });
            }
            ColumnData::Value(v)
        }
    };
    Ok(Column {
        data,
        valid: Some(valid),
    })
}

#[pymethods]
impl PyColumns {
    /// Columns `names` (of engine column kinds `kinds`: int/float/str/bool/bytes, None for
    /// anything else) from row dicts — the bridge for records decoded in Python.
    #[staticmethod]
    fn from_rows(
        names: Vec<String>,
        kinds: Vec<Option<String>>,
        rows: &Bound<'_, PyList>,
    ) -> PyResult<PyColumns> {
        if names.len() != kinds.len() {
            return Err(pyo3::exceptions::PyValueError::new_err("one kind per name"));
        }
        let columns = names
            .iter()
            .zip(&kinds)
            .map(|(n, k)| column_from_rows(n, k.as_deref(), rows))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyColumns::new(Batch {
            names,
            columns,
            rows: rows.len(),
        }))
    }

    /// Number of rows.
    #[getter]
    fn rows(&self) -> usize {
        self.batch.rows
    }

    /// Column names, in order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.batch.names.clone()
    }

    fn __len__(&self) -> usize {
        self.batch.rows
    }

    /// One column's cells as Python objects (None for nulls): the slow path.
    fn column<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyList>> {
        let col = self
            .batch
            .column(name)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(format!("no column {name:?}")))?;
        if let ColumnData::Str { offsets, data } = &col.data {
            return str_cells(py, col, offsets, data, self.batch.rows);
        }
        let out = PyList::empty(py);
        for i in 0..self.batch.rows {
            out.append(value_to_py(py, &col.value_at(i))?)?;
        }
        Ok(out)
    }

    /// A string column's Arrow `large_string` buffers, `(validity bitmap or None, offsets,
    /// data)` (`pyarrow.Array.from_buffers`), cell for cell what `column` gives: None unless
    /// the column is a string column with a non-null cell, every cell valid UTF-8.
    fn str_buffers<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<StrBuffers<'py>>> {
        let col = self
            .batch
            .column(name)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(format!("no column {name:?}")))?;
        let ColumnData::Str { offsets, data } = &col.data else {
            return Ok(None);
        };
        let rows = self.batch.rows;
        if offsets.len() != rows + 1 || offsets[0] != 0 || (0..rows).all(|i| !col.is_valid(i)) {
            return Ok(None);
        }
        let utf8 = offsets
            .windows(2)
            .all(|w| std::str::from_utf8(&data[w[0] as usize..w[1] as usize]).is_ok());
        if !utf8 {
            return Ok(None); // `column` replaces the invalid bytes
        }
        let validity = col.valid.as_ref().map(|valid| {
            let mut bits = vec![0u8; rows.div_ceil(8)];
            for (i, _) in valid.iter().enumerate().filter(|(_, &v)| v) {
                bits[i / 8] |= 1 << (i % 8);
            }
            PyBytes::new(py, &bits)
        });
        let raw: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        Ok(Some((
            validity,
            PyBytes::new(py, &raw),
            PyBytes::new(py, data),
        )))
    }

    /// Every row as a dict `{name: value}` (the slow path: transforms, fallbacks).
    fn to_pylist<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for i in 0..self.batch.rows {
            let row = PyDict::new(py);
            for (name, col) in self.batch.names.iter().zip(&self.batch.columns) {
                row.set_item(name, value_to_py(py, &col.value_at(i))?)?;
            }
            out.append(row)?;
        }
        Ok(out)
    }
}

/// A string column's Arrow buffers: validity bitmap (None: no null), offsets, data.
type StrBuffers<'py> = (
    Option<Bound<'py, PyBytes>>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
);

/// Distinct strings of one column given one shared `str` object each, at most: past it, a
/// new value gets its own object (a column of unique ids does not grow the table further).
const SHARED_STRS: usize = 1 << 17;

/// A string column's cells as `Columns.column` gives them (`value_at`'s text: invalid
/// UTF-8 replaced; None for nulls), equal cells sharing one `str` object (immutable, so the
/// same values): a batch transform's frame is built from these lists, and a column of a
/// few distinct values (currencies, countries, merchants) then costs no object per row.
fn str_cells<'py>(
    py: Python<'py>,
    col: &Column,
    offsets: &[i64],
    data: &[u8],
    rows: usize,
) -> PyResult<Bound<'py, PyList>> {
    let mut shared: HashMap<&[u8], Bound<'py, PyAny>, FxBuildHasher> = HashMap::default();
    let mut cells: Vec<Bound<'py, PyAny>> = Vec::with_capacity(rows);
    for i in 0..rows {
        if !col.is_valid(i) {
            cells.push(py.None().into_bound(py));
            continue;
        }
        let bytes = &data[offsets[i] as usize..offsets[i + 1] as usize];
        if let Some(s) = shared.get(bytes) {
            cells.push(s.clone());
            continue;
        }
        let s = PyString::new(py, &String::from_utf8_lossy(bytes)).into_any();
        if shared.len() < SHARED_STRS {
            shared.insert(bytes, s.clone());
        }
        cells.push(s);
    }
    PyList::new(py, cells)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyColumns>()?;
    Ok(())
}
