//! Conversions every binding module shares: errors, int64 buffers, Python scalars.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

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
