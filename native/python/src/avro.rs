//! Avro decoding into columns: `read_container` (object container files) and
//! `decode_datums` (schemaless datums). The GIL is released while the core decodes; typed
//! columns cross as owned numpy buffers and become pyarrow arrays in
//! `engine.native_columns.assemble`, `Value` columns as lists of plain Python objects.

use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::value_to_py;
use pyo3::types::{PyBytes, PyDict, PyList};
use skewless_core::avro::{self, AvroError, DatumDecoder, Schema};
use skewless_core::columns::{Batch, ColumnData};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_container, m)?)?;
    m.add_function(wrap_pyfunction!(decode_datums, m)?)?;
    Ok(())
}

/// The core's error as `engine.errors.DecodeError` (a `ValueError`) with its message.
fn decode_error(py: Python<'_>, e: &AvroError) -> PyErr {
    let msg = e.to_string();
    match py
        .import("engine.errors")
        .and_then(|m| m.getattr("DecodeError"))
        .and_then(|cls| cls.call1((msg.clone(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyValueError::new_err(msg),
    }
}

/// Validity as an Arrow bitmap (LSB first); `None` when every cell is valid.
fn bitmap<'py>(py: Python<'py>, bits: &[bool]) -> Bound<'py, PyBytes> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        out[i >> 3] |= u8::from(b) << (i & 7);
    }
    PyBytes::new(py, &out)
}

/// The batch's columns as a dict (pyarrow arrays; lists for `Value` columns).
fn columns_to_py(py: Python<'_>, batch: Batch) -> PyResult<Bound<'_, PyAny>> {
    let specs = PyList::empty(py);
    for (name, col) in batch.names.into_iter().zip(batch.columns) {
        let validity = col.valid.as_deref().map(|v| bitmap(py, v));
        let (kind, buffers): (&str, Bound<'_, PyAny>) = match col.data {
            ColumnData::Int(v) => ("int", (v.into_pyarray(py),).into_pyobject(py)?.into_any()),
            ColumnData::Float(v) => ("float", (v.into_pyarray(py),).into_pyobject(py)?.into_any()),
            ColumnData::Bool(v) => ("bool", (bitmap(py, &v),).into_pyobject(py)?.into_any()),
            ColumnData::Str { offsets, data } => (
                "str",
                (offsets.into_pyarray(py), data.into_pyarray(py))
                    .into_pyobject(py)?
                    .into_any(),
            ),
            ColumnData::Bytes { offsets, data } => (
                "bytes",
                (offsets.into_pyarray(py), data.into_pyarray(py))
                    .into_pyobject(py)?
                    .into_any(),
            ),
            ColumnData::Value(cells) => {
                let list = PyList::empty(py);
                for cell in &cells {
                    list.append(value_to_py(py, cell)?)?;
                }
                ("value", list.into_any())
            }
        };
        specs.append((name, kind, validity, buffers))?;
    }
    py.import("engine.native_columns")?
        .getattr("assemble")?
        .call1((batch.rows, specs))
}

/// Decode an Avro object container file (codec null or deflate) whose schema is a record.
///
/// Returns `(columns, metadata)`: columns by name (record fields flattened one level into
/// `<field>.<sub>`), as pyarrow arrays or, for nested and mixed types, lists; and the header
/// metadata. Raises `engine.errors.DecodeError` naming the block, field and byte offset.
#[pyfunction]
#[pyo3(signature = (data, projection=None))]
fn read_container<'py>(
    py: Python<'py>,
    data: &[u8],
    projection: Option<Vec<String>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
    let proj: Option<Vec<&str>> = projection
        .as_ref()
        .map(|p| p.iter().map(String::as_str).collect());
    let result = py.detach(|| avro::read_container(data, proj.as_deref()));
    let (batch, meta) = result.map_err(|e| decode_error(py, &e))?;
    let metadata = PyDict::new(py);
    for (k, v) in meta {
        metadata.set_item(k, PyBytes::new(py, &v))?;
    }
    Ok((columns_to_py(py, batch)?, metadata))
}

/// Columns plus `(index, reason)` of each datum that failed.
type Decoded<'py> = (Bound<'py, PyAny>, Vec<(usize, String)>);

/// Decode schemaless datums of record schema `schema_json` into columns.
///
/// Returns `(columns, errors)`: a datum that fails adds no row and is listed in `errors`
/// as `(index, reason)`. A schema or projection that cannot be used raises `DecodeError`.
#[pyfunction]
#[pyo3(signature = (schema_json, datums, projection=None))]
fn decode_datums<'py>(
    py: Python<'py>,
    schema_json: &str,
    datums: Vec<Bound<'py, PyBytes>>,
    projection: Option<Vec<String>>,
) -> PyResult<Decoded<'py>> {
    let proj: Option<Vec<&str>> = projection
        .as_ref()
        .map(|p| p.iter().map(String::as_str).collect());
    let slices: Vec<&[u8]> = datums.iter().map(|d| d.as_bytes()).collect();
    let result = py.detach(|| -> Result<_, AvroError> {
        let schema = Schema::parse(schema_json)?;
        let mut decoder = DatumDecoder::new(&schema, proj.as_deref())?;
        let mut errors = Vec::new();
        for (i, d) in slices.iter().enumerate() {
            if let Err(e) = decoder.push(d) {
                errors.push((i, e.to_string()));
            }
        }
        Ok((decoder.finish(), errors))
    });
    let (batch, errors) = result.map_err(|e| decode_error(py, &e))?;
    Ok((columns_to_py(py, batch)?, errors))
}
