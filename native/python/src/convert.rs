//! Conversions every binding module shares: errors, int64 buffers, Python scalars.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use skewless_core::columns::{Column, ColumnData};
use skewless_core::value::Value;

/// A `ValueError` with the message.
pub fn err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Native-endian int64 values from a buffer (`array("q").tobytes()`, `ndarray.tobytes()`).
pub fn i64s(data: &[u8], what: &str) -> PyResult<Vec<i64>> {
    if data.len() % 8 != 0 {
        return Err(err(format!(
            "{what}: {} bytes is not a whole number of int64",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// A Python scalar as a Value: None, bool, int (int64), float, str, bytes; anything else
/// (containers, ints beyond int64) is neither a key nor an aggregation input: Null.
pub fn scalar(x: &Bound<'_, PyAny>) -> Value {
    if x.is_none() {
        Value::Null
    } else if let Ok(b) = x.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if x.is_instance_of::<PyInt>() {
        x.extract::<i64>().map_or(Value::Null, Value::Int)
    } else if let Ok(f) = x.cast::<PyFloat>() {
        Value::Float(f.value())
    } else if let Ok(s) = x.extract::<&str>() {
        Value::Str(s.into())
    } else if let Ok(b) = x.cast::<PyBytes>() {
        Value::Bytes(b.as_bytes().into())
    } else {
        Value::Null
    }
}

/// A Value as a plain Python object (dict for maps and records, list for arrays).
pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(x) => x.into_pyobject(py)?.into_any(),
        Value::Float(x) => PyFloat::new(py, *x).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Wide(x) => x.into_pyobject(py)?.into_any(),
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(entries) => {
            let dict = PyDict::new(py);
            for (k, item) in entries {
                dict.set_item(&**k, value_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A fed (transformed) column from a Python list: typed (`typed_column`) when its cells
/// allow, else a `Value` per cell (`scalar`; a null cell is invalid).
pub fn fed_column(values: &Bound<'_, PyList>) -> Column {
    if let Some(col) = typed_column(values) {
        return col;
    }
    let mut v = Vec::with_capacity(values.len());
    let mut valid = Vec::with_capacity(values.len());
    for x in values.iter() {
        let value = scalar(&x);
        valid.push(!value.is_null());
        v.push(value);
    }
    Column {
        data: ColumnData::Value(v),
        valid: Some(valid),
    }
}

/// A list of only str (or only int64, or only float) cells and None as a typed column: the
/// same inputs and keys as `scalar` gives cell by cell (`Value::Str`/`Int`/`Float`, None
/// invalid), without a `String` or a `Value` per cell. None when another kind of cell is
/// among them.
pub fn typed_column(values: &Bound<'_, PyList>) -> Option<Column> {
    let n = values.len();
    let mut valid = Vec::with_capacity(n);
    let first = values.iter().find(|x| !x.is_none())?;
    if first.cast::<PyString>().is_ok() {
        let mut offsets = Vec::with_capacity(n + 1);
        let mut data = Vec::new();
        offsets.push(0i64);
        for x in values.iter() {
            if x.is_none() {
                valid.push(false);
            } else {
                let s = x.extract::<&str>().ok()?;
                data.extend_from_slice(s.as_bytes());
                valid.push(true);
            }
            offsets.push(data.len() as i64);
        }
        return Some(Column {
            data: ColumnData::Str { offsets, data },
            valid: Some(valid),
        });
    }
    if first.is_instance_of::<PyInt>() && !first.is_instance_of::<PyBool>() {
        // `scalar`'s ints: a bool is `Value::Bool` and an int beyond int64 Null, so either
        // among the cells keeps the column a Value per cell
        let mut v = Vec::with_capacity(n);
        for x in values.iter() {
            if x.is_none() {
                valid.push(false);
                v.push(0);
            } else if x.is_instance_of::<PyInt>() && !x.is_instance_of::<PyBool>() {
                v.push(x.extract::<i64>().ok()?);
                valid.push(true);
            } else {
                return None;
            }
        }
        return Some(Column {
            data: ColumnData::Int(v),
            valid: Some(valid),
        });
    }
    if first.cast::<PyFloat>().is_ok() {
        let mut v = Vec::with_capacity(n);
        for x in values.iter() {
            if x.is_none() {
                valid.push(false);
                v.push(0.0);
            } else {
                v.push(x.cast::<PyFloat>().ok()?.value());
                valid.push(true);
            }
        }
        return Some(Column {
            data: ColumnData::Float(v),
            valid: Some(valid),
        });
    }
    None
}
