//! Event-log files written natively: `write_log_file` encodes one Avro container file of
//! envelopes from columns (GIL released), `columns_from_arrays` holds pyarrow/numpy arrays
//! as a native `Columns` batch so several files can select rows of it without copying.
//!
//! Arrays cross as their Arrow buffers (one copy into the core's column layout, no Python
//! object per cell); nested Arrow types (lists, structs, maps) cross cell by cell through
//! `to_pylist` — the slow path.

use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use skewless_core::avro::write::{
    header_len, write_container, Codec, EnvelopeColumns, FileOptions, Partition,
};
use skewless_core::avro::{AvroError, Schema};
use skewless_core::columns::{Batch, Column, ColumnData};
use skewless_core::value::Value;

use crate::columns::PyColumns;
use crate::logappend::append_one;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_log_file, m)?)?;
    m.add_function(wrap_pyfunction!(append_log_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(columns_from_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(kafka_partitions, m)?)?;
    Ok(())
}

/// The core's error as `engine.errors.EventLogError` (an `OSError`) with its message.
fn log_error(py: Python<'_>, e: &AvroError) -> PyErr {
    let msg = e.to_string();
    match py
        .import("engine.errors")
        .and_then(|m| m.getattr("EventLogError"))
        .and_then(|cls| cls.call1((msg.clone(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyValueError::new_err(msg),
    }
}

/// `f` applied to the bytes of a buffer-protocol object (bytes, pyarrow.Buffer, bytearray;
/// items of one byte, signed or not).
fn with_bytes<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    match PyBuffer::<u8>::get(obj) {
        Ok(buf) => with_buffer(obj, &buf, f),
        Err(_) => with_buffer(obj, &PyBuffer::<i8>::get(obj)?, f),
    }
}

fn with_buffer<T: pyo3::buffer::Element + Copy, R>(
    obj: &Bound<'_, PyAny>,
    buf: &PyBuffer<T>,
    f: impl FnOnce(&[u8]) -> R,
) -> PyResult<R> {
    if !buf.is_c_contiguous() {
        let items = buf.to_vec(obj.py())?;
        // SAFETY: T is a one-byte integer (u8 or i8), so its items are bytes.
        let s = unsafe { std::slice::from_raw_parts(items.as_ptr() as *const u8, items.len()) };
        return Ok(f(s));
    }
    // SAFETY: the buffer is C-contiguous with one-byte items (checked by `PyBuffer::get`
    // and above); `buf` keeps the exporter's memory alive and unmoved until it drops after
    // `f`, and nothing writes to it while the GIL is held here.
    let s = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(f(s))
}

/// The bytes of a buffer-protocol object, copied.
fn buffer_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    with_bytes(obj, <[u8]>::to_vec)
}

/// int64 values from bytes (native order) or a numpy int64 array.
fn i64s(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(arr) = obj.extract::<PyReadonlyArray1<'_, i64>>() {
        return Ok(arr.as_array().iter().copied().collect());
    }
    let bytes = buffer_bytes(obj).map_err(|_| {
        PyTypeError::new_err(format!(
            "{what}: expected bytes of int64 or a numpy int64 array"
        ))
    })?;
    if bytes.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: {} bytes is not a whole number of int64",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Row indexes from a numpy integer array or bytes of int64.
fn indexes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let v = i64s(obj, "rows")?;
    v.into_iter()
        .map(|i| {
            usize::try_from(i)
                .map_err(|_| PyValueError::new_err(format!("rows: negative row index {i}")))
        })
        .collect()
}

/// A Python value (None, bool, int, float, str, bytes, list/tuple, dict) as a `Value`.
fn py_value(x: &Bound<'_, PyAny>) -> PyResult<Value> {
    Ok(if x.is_none() {
        Value::Null
    } else if x.is_instance_of::<PyBool>() {
        Value::Bool(x.extract::<bool>()?)
    } else if x.is_instance_of::<PyInt>() {
        match x.extract::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => {
                Value::Wide(x.extract::<i128>().map_err(|_| {
                    PyValueError::new_err(format!("integer {x} is beyond 128 bits"))
                })?)
            }
        }
    } else if x.is_instance_of::<PyFloat>() {
        Value::Float(x.extract::<f64>()?)
    } else if let Ok(s) = x.cast::<PyString>() {
        Value::Str(s.to_str()?.into())
    } else if let Ok(b) = x.cast::<PyBytes>() {
        Value::Bytes(b.as_bytes().into())
    } else if let Ok(d) = x.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let k = k.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!("map/record keys must be str, got {k:?}"))
            })?;
            entries.push((k.to_str()?.into(), py_value(&v)?));
        }
        Value::Map(entries)
    } else if x.is_instance_of::<PyList>() || x.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in x.try_iter()? {
            items.push(py_value(&item?)?);
        }
        Value::List(items)
    } else if let Ok(b) = x.extract::<Vec<u8>>() {
        Value::Bytes(b.into())
    } else {
        // numpy scalars and the like: their plain Python value
        let plain = x.call_method0("item").map_err(|_| {
            PyTypeError::new_err(format!(
                "cannot write a {} value",
                x.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        py_value(&plain)?
    })
}

/// Validity bits of an Arrow array (`None` when it has no nulls).
fn arrow_validity(
    arr: &Bound<'_, PyAny>,
    offset: usize,
    len: usize,
) -> PyResult<Option<Vec<bool>>> {
    if arr.getattr("null_count")?.extract::<usize>()? == 0 {
        return Ok(None);
    }
    let buffers = arr.call_method0("buffers")?;
    Ok(Some(with_bytes(&buffers.get_item(0)?, |bitmap| {
        (offset..offset + len)
            .map(|i| bitmap[i >> 3] >> (i & 7) & 1 == 1)
            .collect()
    })?))
}

/// One column from a pyarrow Array / ChunkedArray, numpy array or pandas Series (through
/// its Arrow buffers), or a list of Python objects (a `Value` column, cell by cell).
pub(crate) fn arrow_column<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Column> {
    let pa = py.import("pyarrow")?;
    let types = pa.getattr("types")?;
    if let Ok(list) = obj.cast::<PyList>() {
        // Plain Python objects: a Value column, each cell as it is (maps stay maps).
        let cells = list
            .iter()
            .map(|x| py_value(&x))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Column {
            data: ColumnData::Value(cells),
            valid: None,
        });
    }
    let mut arr = obj.clone();
    if !arr.is_instance(&pa.getattr("Array")?)? {
        if arr.is_instance(&pa.getattr("ChunkedArray")?)? {
            arr = arr.call_method0("combine_chunks")?;
        } else {
            let kwargs = PyDict::new(py);
            kwargs.set_item("from_pandas", true)?;
            arr = pa.getattr("array")?.call((arr,), Some(&kwargs))?;
        }
    }
    let is = |name: &str, ty: &Bound<'_, PyAny>| -> PyResult<bool> {
        types.getattr(name)?.call1((ty,))?.extract::<bool>()
    };
    let mut ty = arr.getattr("type")?;
    if is("is_dictionary", &ty)? {
        arr = arr.call_method1("cast", (ty.getattr("value_type")?,))?;
        ty = arr.getattr("type")?;
    }
    let cast = |arr: &Bound<'py, PyAny>, to: &str| -> PyResult<Bound<'py, PyAny>> {
        arr.call_method1("cast", (pa.getattr(to)?.call0()?,))
    };
    let kind = if is("is_integer", &ty)?
        || is("is_timestamp", &ty)?
        || is("is_date64", &ty)?
        || is("is_duration", &ty)?
        || is("is_time64", &ty)?
    {
        arr = if is("is_int64", &ty)? {
            arr
        } else {
            cast(&arr, "int64")?
        };
        "int"
    } else if is("is_date32", &ty)? || is("is_time32", &ty)? {
        arr = cast(&cast(&arr, "int32")?, "int64")?;
        "int"
    } else if is("is_floating", &ty)? {
        arr = if is("is_float64", &ty)? {
            arr
        } else {
            cast(&arr, "float64")?
        };
        "float"
    } else if is("is_boolean", &ty)? {
        "bool"
    } else if is("is_string", &ty)? || is("is_large_string", &ty)? || is("is_string_view", &ty)? {
        arr = if is("is_large_string", &ty)? {
            arr
        } else {
            cast(&arr, "large_string")?
        };
        "str"
    } else if is("is_binary", &ty)?
        || is("is_large_binary", &ty)?
        || is("is_fixed_size_binary", &ty)?
        || is("is_binary_view", &ty)?
    {
        arr = if is("is_large_binary", &ty)? {
            arr
        } else {
            cast(&arr, "large_binary")?
        };
        "bytes"
    } else {
        "value"
    };
    let len = arr.len()?;
    let offset = arr.getattr("offset")?.extract::<usize>()?;
    let valid = arrow_validity(&arr, offset, len)?;
    let buffers = arr.call_method0("buffers")?;
    let data = match kind {
        "int" => ColumnData::Int(with_bytes(&buffers.get_item(1)?, |raw| {
            raw[offset * 8..(offset + len) * 8]
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        })?),
        "float" => ColumnData::Float(with_bytes(&buffers.get_item(1)?, |raw| {
            raw[offset * 8..(offset + len) * 8]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        })?),
        "bool" => ColumnData::Bool(with_bytes(&buffers.get_item(1)?, |raw| {
            (offset..offset + len)
                .map(|i| raw[i >> 3] >> (i & 7) & 1 == 1)
                .collect()
        })?),
        "str" | "bytes" => {
            let offs: Vec<i64> = with_bytes(&buffers.get_item(1)?, |raw| {
                raw[offset * 8..(offset + len + 1) * 8]
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            })?;
            let (lo, hi) = (offs[0] as usize, offs[len] as usize);
            let body = buffers.get_item(2)?;
            let data = if body.is_none() || lo == hi {
                Vec::new()
            } else {
                with_bytes(&body, |b| b[lo..hi].to_vec())?
            };
            let offsets = offs.iter().map(|&o| o - lo as i64).collect();
            if kind == "str" {
                ColumnData::Str { offsets, data }
            } else {
                ColumnData::Bytes { offsets, data }
            }
        }
        _ => {
            let cells = arr.call_method0("to_pylist")?;
            let mut out = Vec::with_capacity(len);
            for cell in cells.try_iter()? {
                out.push(py_value(&cell?)?);
            }
            return Ok(Column {
                data: ColumnData::Value(out),
                valid: None,
            });
        }
    };
    Ok(Column { data, valid })
}

/// A batch from `{name: array}` (pyarrow arrays, numpy arrays, lists).
fn batch_from_dict(py: Python<'_>, arrays: &Bound<'_, PyDict>) -> PyResult<Batch> {
    let mut batch = Batch::default();
    for (name, arr) in arrays.iter() {
        let name: String = name.extract()?;
        let col = arrow_column(py, &arr)
            .map_err(|e| PyTypeError::new_err(format!("payload column {name:?}: {e}")))?;
        if !batch.columns.is_empty() && col.len() != batch.rows {
            return Err(PyValueError::new_err(format!(
                "payload column {name:?} has {} rows, the others {}",
                col.len(),
                batch.rows
            )));
        }
        batch.rows = col.len();
        batch.names.push(name);
        batch.columns.push(col);
    }
    Ok(batch)
}

fn payload_batch(py: Python<'_>, payload: &Bound<'_, PyAny>) -> PyResult<Arc<Batch>> {
    if let Ok(cols) = payload.cast::<PyColumns>() {
        return Ok(cols.get().batch.clone());
    }
    let dict = payload.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err("payload must be engine._native.Columns or a dict of arrays")
    })?;
    Ok(Arc::new(batch_from_dict(py, dict)?))
}

/// The key column: a list of bytes/None, or a pyarrow binary/string array.
fn key_column(py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Column> {
    if let Ok(list) = keys.cast::<PyList>() {
        let mut offsets = Vec::with_capacity(list.len() + 1);
        offsets.push(0i64);
        let mut data = Vec::new();
        let mut valid = Vec::with_capacity(list.len());
        for k in list.iter() {
            if k.is_none() {
                valid.push(false);
            } else {
                let b = k.cast::<PyBytes>().map_err(|_| {
                    PyTypeError::new_err(format!("keys: expected bytes or None, got {k:?}"))
                })?;
                data.extend_from_slice(b.as_bytes());
                valid.push(true);
            }
            offsets.push(data.len() as i64);
        }
        let all = valid.iter().all(|&v| v);
        return Ok(Column {
            data: ColumnData::Bytes { offsets, data },
            valid: (!all).then_some(valid),
        });
    }
    let col = arrow_column(py, keys)?;
    match col.data {
        ColumnData::Bytes { .. } | ColumnData::Str { .. } => Ok(col),
        _ => Err(PyTypeError::new_err(
            "keys: expected a list of bytes/None or a binary/string array",
        )),
    }
}

/// Hold `{name: array}` (pyarrow or numpy arrays, lists) natively as a `Columns` batch.
#[pyfunction]
fn columns_from_arrays(py: Python<'_>, arrays: &Bound<'_, PyDict>) -> PyResult<PyColumns> {
    Ok(PyColumns::new(batch_from_dict(py, arrays)?))
}

/// Encode one event-log file (an Avro object container of envelopes) from columns.
///
/// `schema_json` is the envelope schema as the header carries it (`avro.schema`); the
/// header holds `metadata` in order, then `avro.codec`, then `avro.schema` (as fastavro
/// writes it). `codec` is `"null"` or `"deflate"` (raw DEFLATE at `level`). Record `i` is
/// partition `partition`, offset `offsets[i]`, key `keys[i]`, event time `event_time[i]`,
/// processed at `processed_at[i]` and payload row `rows[i]` (row `i` when `rows` is None).
/// Raises `EventLogError` naming the field and row a value cannot be written to.
#[pyfunction]
#[pyo3(signature = (schema_json, metadata, codec, level, partition, offsets, keys, event_time, processed_at, payload, *, rows=None, sync=None, block_bytes=65536))]
#[allow(clippy::too_many_arguments)]
fn write_log_file<'py>(
    py: Python<'py>,
    schema_json: &str,
    metadata: &Bound<'py, PyDict>,
    codec: &str,
    level: i32,
    partition: i32,
    offsets: &Bound<'py, PyAny>,
    keys: Option<&Bound<'py, PyAny>>,
    event_time: &Bound<'py, PyAny>,
    processed_at: &Bound<'py, PyAny>,
    payload: &Bound<'py, PyAny>,
    rows: Option<&Bound<'py, PyAny>>,
    sync: Option<&[u8]>,
    block_bytes: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let codec = parse_codec(codec, level)?;
    let meta = header_metadata(metadata, codec, schema_json)?;
    let sync: [u8; 16] = match sync {
        Some(s) => sync_marker(s)?,
        None => py
            .import("os")?
            .call_method1("urandom", (16,))?
            .extract::<Vec<u8>>()?
            .try_into()
            .expect("16 bytes"),
    };
    let offsets = i64s(offsets, "offsets")?;
    let event_time = i64s(event_time, "event_time")?;
    let processed_at = i64s(processed_at, "processed_at")?;
    let keys = keys.map(|k| key_column(py, k)).transpose()?;
    let batch = payload_batch(py, payload)?;
    let rows = rows.map(indexes).transpose()?;
    let result = py.detach(|| -> Result<Vec<u8>, AvroError> {
        let schema = Schema::parse(schema_json)?;
        let envelope = EnvelopeColumns {
            partition: Partition::One(partition),
            offset: &offsets,
            key: keys.as_ref(),
            event_time: &event_time,
            processed_at: &processed_at,
        };
        let file = FileOptions {
            codec,
            sync,
            block_bytes,
        };
        write_container(&schema, &meta, file, envelope, &batch, rows.as_deref())
    });
    let bytes = result.map_err(|e| log_error(py, &e))?;
    Ok(PyBytes::new(py, &bytes))
}

/// `"null"` or `"deflate"` (raw DEFLATE at `level`).
fn parse_codec(codec: &str, level: i32) -> PyResult<Codec> {
    match codec {
        "null" => Ok(Codec::Null),
        "deflate" => Ok(Codec::Deflate(level)),
        other => Err(PyValueError::new_err(format!(
            "codec must be 'null' or 'deflate', got {other:?}"
        ))),
    }
}

fn sync_marker(s: &[u8]) -> PyResult<[u8; 16]> {
    s.try_into()
        .map_err(|_| PyValueError::new_err(format!("sync must be 16 bytes, got {}", s.len())))
}

/// The header's metadata in fastavro's order: the caller's entries, then avro.codec,
/// then avro.schema.
fn header_metadata(
    metadata: &Bound<'_, PyDict>,
    codec: Codec,
    schema_json: &str,
) -> PyResult<Vec<(String, Vec<u8>)>> {
    let mut meta: Vec<(String, Vec<u8>)> = Vec::with_capacity(metadata.len() + 2);
    for (k, v) in metadata.iter() {
        let k: String = k.extract()?;
        let v = if let Ok(s) = v.cast::<PyString>() {
            s.to_str()?.as_bytes().to_vec()
        } else {
            buffer_bytes(&v).map_err(|_| {
                PyTypeError::new_err(format!("metadata {k:?}: expected str or bytes"))
            })?
        };
        meta.push((k, v));
    }
    // fastavro's order: the caller's entries, then avro.codec, then avro.schema.
    if !meta.iter().any(|(k, _)| k == "avro.codec") {
        meta.push(("avro.codec".into(), codec.name().as_bytes().to_vec()));
    }
    if !meta.iter().any(|(k, _)| k == "avro.schema") {
        meta.push(("avro.schema".into(), schema_json.as_bytes().to_vec()));
    }
    Ok(meta)
}

/// One partition's part of `append_log_blocks`, converted while holding the GIL.
struct AppendJob {
    path: String,
    partition: i32,
    sync: [u8; 16],
    offsets: Vec<i64>,
    keys: Option<Column>,
    event_time: Vec<i64>,
    processed_at: Vec<i64>,
    rows: Option<Vec<usize>>,
}

/// A job as Python passes it: `(path, partition, sync, offsets, keys, event_time,
/// processed_at, rows)`.
type PyAppendJob<'py> = (
    String,
    i32,
    Vec<u8>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

/// Encode each job's records as blocks ending with its file's `sync` marker (what
/// `write_log_file(..., sync=sync)` gives, less the header) and append them to its open
/// file at `path` (`O_APPEND`), then fsync it — every job on its own thread, the GIL
/// released once for the whole call (a worker's log append then re-takes it once, not
/// after each encode, write and fsync).
///
/// The arguments are `write_log_file`'s, with the per-partition ones in `jobs`:
/// `(path, partition, sync, offsets, keys, event_time, processed_at, rows)`, every job's
/// rows selecting from the one `payload`. Returns one `(bytes, failure)` per job, in
/// order: the bytes appended and None, or `(0, (stage, errno, message))` where `stage` is
/// `"encode"` (nothing written; `errno` 0), `"open"`, `"write"` or `"fsync"` (the chunk may
/// be in the file in part or whole; `errno` 0 when the OS gave none).
#[pyfunction]
#[pyo3(signature = (schema_json, metadata, codec, level, payload, jobs, *, block_bytes=65536))]
#[allow(clippy::too_many_arguments)]
fn append_log_blocks<'py>(
    py: Python<'py>,
    schema_json: &str,
    metadata: &Bound<'py, PyDict>,
    codec: &str,
    level: i32,
    payload: &Bound<'py, PyAny>,
    jobs: Vec<PyAppendJob<'py>>,
    block_bytes: usize,
) -> PyResult<Vec<AppendOutcome>> {
    let codec = parse_codec(codec, level)?;
    let meta = header_metadata(metadata, codec, schema_json)?;
    let batch = payload_batch(py, payload)?;
    let jobs = jobs
        .into_iter()
        .map(
            |(path, partition, sync, offsets, keys, event_time, processed_at, rows)| {
                Ok(AppendJob {
                    path,
                    partition,
                    sync: sync_marker(&sync)?,
                    offsets: i64s(&offsets, "offsets")?,
                    keys: keys.map(|k| key_column(py, &k)).transpose()?,
                    event_time: i64s(&event_time, "event_time")?,
                    processed_at: i64s(&processed_at, "processed_at")?,
                    rows: rows.as_ref().map(indexes).transpose()?,
                })
            },
        )
        .collect::<PyResult<Vec<_>>>()?;
    Ok(py.detach(|| {
        let schema = match Schema::parse(schema_json) {
            Ok(schema) => schema,
            Err(e) => {
                let failed = (0, Some(("encode", 0, e.to_string())));
                return vec![failed; jobs.len()];
            }
        };
        let one =
            |job: &AppendJob| encode_and_append(&schema, &meta, codec, block_bytes, &batch, job);
        if jobs.len() <= 1 {
            return jobs.iter().map(one).collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| scope.spawn(move || one(job)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        (0, Some(("write", 0, "append thread panicked".to_string())))
                    })
                })
                .collect()
        })
    }))
}

/// Bytes appended, or where and why an append failed: `(stage, errno, message)`.
type AppendOutcome = (usize, Option<(&'static str, i32, String)>);

fn encode_and_append(
    schema: &Schema,
    meta: &[(String, Vec<u8>)],
    codec: Codec,
    block_bytes: usize,
    batch: &Batch,
    job: &AppendJob,
) -> AppendOutcome {
    let envelope = EnvelopeColumns {
        partition: Partition::One(job.partition),
        offset: &job.offsets,
        key: job.keys.as_ref(),
        event_time: &job.event_time,
        processed_at: &job.processed_at,
    };
    let file = FileOptions {
        codec,
        sync: job.sync,
        block_bytes,
    };
    let encoded = write_container(schema, meta, file, envelope, batch, job.rows.as_deref())
        .and_then(|data| Ok((header_len(meta, codec, job.sync)?, data)));
    let (head, data) = match encoded {
        Ok(got) => got,
        Err(e) => return (0, Some(("encode", 0, e.to_string()))),
    };
    let blocks = &data[head..];
    match append_one(&job.path, blocks) {
        Ok(()) => (blocks.len(), None),
        Err((stage, e)) => (
            0,
            Some((stage.name(), e.raw_os_error().unwrap_or(0), e.to_string())),
        ),
    }
}

/// The Java client's murmur2 of `data` (Kafka's default partitioner hash).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes(c.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of each key as `engine.keys.partition_for` picks it (murmur2, positive,
/// modulo `partitions`), for a pyarrow binary/string array or a list of bytes (a null key
/// gets -1). The same function, batched: tests hold the two equal.
#[pyfunction]
fn kafka_partitions<'py>(
    py: Python<'py>,
    keys: &Bound<'py, PyAny>,
    partitions: u32,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    if partitions == 0 {
        return Err(PyValueError::new_err("partitions must be at least 1"));
    }
    let col = key_column(py, keys)?;
    let (ColumnData::Bytes { offsets, data } | ColumnData::Str { offsets, data }) = &col.data
    else {
        unreachable!("key_column returns bytes or str columns");
    };
    let out: Vec<i64> = py.detach(|| {
        (0..col.len())
            .map(|i| {
                if !col.is_valid(i) {
                    return -1;
                }
                let key = &data[offsets[i] as usize..offsets[i + 1] as usize];
                i64::from((murmur2(key) & 0x7fff_ffff) % partitions)
            })
            .collect()
    });
    Ok(out.into_pyarray(py))
}
