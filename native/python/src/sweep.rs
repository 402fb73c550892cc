//! `Sweep`: the backfill's native sweep (see `skewless_core::sweep`), driven from
//! `engine.backfill`. Files and columns go in once per file or chunk; the GIL is released
//! while the core decodes and sweeps.

use std::sync::RwLock;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use skewless_core::agg::{Agg, Func};
use skewless_core::columns::{Column, ColumnData};
use skewless_core::sweep::{
    decode_log_file, GroupSpec, KeyBuf, KeyTable, Mode, RequestSpec, Sweep, ViewSpec,
};
use skewless_core::tiles::Layout;
use skewless_core::value::Kind;

use crate::convert::{err, i64s, scalar};
use crate::kernel::value_to_py;

/// One label-table key (a tuple of str/int) into the key encoding the core matches.
fn encode_key(key: &Bound<'_, PyAny>, buf: &mut KeyBuf) -> PyResult<()> {
    buf.clear();
    let parts = key
        .cast::<PyTuple>()
        .map_err(|_| err("an entity key must be a tuple"))?;
    for part in parts.iter() {
        if let Ok(s) = part.extract::<&str>() {
            buf.push_str(s);
        } else if let Ok(i) = part.extract::<i64>() {
            buf.push_int(i);
        } else {
            return Err(err(format!(
                "entity key part {part} is neither a str nor an int64"
            )));
        }
    }
    Ok(())
}

/// A column from a Python list (None = null) of the given kind.
fn column_from_list(kind: &str, values: &Bound<'_, PyList>) -> PyResult<Column> {
    let n = values.len();
    let mut valid = Vec::with_capacity(n);
    let data = match kind {
        "int" => {
            let mut v = Vec::with_capacity(n);
            for x in values.iter() {
                valid.push(!x.is_none());
                v.push(if x.is_none() { 0 } else { x.extract::<i64>()? });
            }
            ColumnData::Int(v)
        }
        "float" => {
            let mut v = Vec::with_capacity(n);
            for x in values.iter() {
                valid.push(!x.is_none());
                v.push(if x.is_none() {
                    0.0
                } else {
                    x.extract::<f64>()?
                });
            }
            ColumnData::Float(v)
        }
        "bool" => {
            let mut v = Vec::with_capacity(n);
            for x in values.iter() {
                valid.push(!x.is_none());
                v.push(!x.is_none() && x.extract::<bool>()?);
            }
            ColumnData::Bool(v)
        }
        "str" | "bytes" => {
            let mut offsets = Vec::with_capacity(n + 1);
            offsets.push(0i64);
            let mut data = Vec::new();
            for x in values.iter() {
                valid.push(!x.is_none());
                if !x.is_none() {
                    if kind == "str" {
                        data.extend_from_slice(x.extract::<&str>()?.as_bytes());
                    } else {
                        data.extend_from_slice(x.extract::<&[u8]>()?);
                    }
                }
                offsets.push(data.len() as i64);
            }
            if kind == "str" {
                ColumnData::Str { offsets, data }
            } else {
                ColumnData::Bytes { offsets, data }
            }
        }
        "any" => {
            let mut v = Vec::with_capacity(n);
            for x in values.iter() {
                valid.push(!x.is_none());
                v.push(scalar(&x));
            }
            ColumnData::Value(v)
        }
        other => return Err(err(format!("unknown column kind {other:?}"))),
    };
    Ok(Column {
        data,
        valid: Some(valid),
    })
}

/// The sweep behind a lock: files decode in parallel (GIL released, no lock held), then
/// each decoded batch is kept under the lock.
/// `(function, kind, n, window_ms, hop_ms)` of one aggregation.
type AggArgs = (String, String, Option<u32>, Option<i64>, Option<i64>);
/// `(group, aggregations, input per aggregation, allowed lateness ms)` of one view.
type ViewArgs = (usize, Vec<AggArgs>, Vec<usize>, Option<i64>);

#[pyclass(module = "engine._native", name = "Sweep")]
pub struct PySweep {
    inner: RwLock<Option<Sweep>>,
}

impl PySweep {
    fn with<T>(&self, f: impl FnOnce(&mut Sweep) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self
            .inner
            .write()
            .map_err(|_| err("a sweep call panicked earlier"))?;
        f(guard
            .as_mut()
            .ok_or_else(|| err("this sweep has finished"))?)
    }

    /// Shared access: calls that only read (selecting a file's records) run at once.
    fn read<T>(&self, f: impl FnOnce(&Sweep) -> PyResult<T>) -> PyResult<T> {
        let guard = self
            .inner
            .read()
            .map_err(|_| err("a sweep call panicked earlier"))?;
        f(guard
            .as_ref()
            .ok_or_else(|| err("this sweep has finished"))?)
    }
}

#[pymethods]
impl PySweep {
    /// See `engine/_native.pyi`.
    #[new]
    #[pyo3(signature = (mode, include_late, tables, groups, views, requests))]
    fn new(
        mode: &str,
        include_late: bool,
        tables: &Bound<'_, PyList>,
        groups: &Bound<'_, PyList>,
        views: &Bound<'_, PyList>,
        requests: &Bound<'_, PyList>,
    ) -> PyResult<PySweep> {
        let mode = match mode {
            "event_time" => Mode::EventTime,
            "processing_time" => Mode::ProcessingTime,
            other => return Err(err(format!("unknown mode {other:?}"))),
        };
        let mut buf = KeyBuf::default();
        let mut key_tables = Vec::with_capacity(tables.len());
        for table in tables.iter() {
            let mut t = KeyTable::default();
            for key in table.cast::<PyList>()?.iter() {
                encode_key(&key, &mut buf)?;
                t.insert(&buf.0);
            }
            key_tables.push(t);
        }
        let mut group_specs = Vec::new();
        for g in groups.iter() {
            let (source, table, key_fields, input_fields, native): (
                String,
                usize,
                Vec<String>,
                Vec<String>,
                bool,
            ) = g.extract()?;
            group_specs.push(GroupSpec {
                source,
                table,
                key_fields,
                input_fields,
                native,
            });
        }
        let mut view_specs = Vec::new();
        for v in views.iter() {
            let (group, functions, inputs, lateness): ViewArgs = v.extract()?;
            let mut aggs = Vec::new();
            let mut windows = Vec::new();
            let mut hops = Vec::new();
            for (name, kind, n, window, hop) in functions {
                let func = Func::parse(&name, n)
                    .ok_or_else(|| err(format!("unknown aggregation function {name:?}")))?;
                let kind = Kind::parse(&kind)
                    .ok_or_else(|| err(format!("unknown column kind {kind:?}")))?;
                aggs.push(Agg::new(func, kind).map_err(err)?);
                windows.push(window);
                hops.push(hop);
            }
            let layout = Layout::new(aggs, windows, hops).map_err(err)?;
            view_specs.push(ViewSpec {
                group,
                layout,
                inputs,
                allowed_lateness_ms: lateness,
            });
        }
        let mut request_specs = Vec::new();
        for r in requests.iter() {
            let (view, codes, times, indices): (usize, Vec<u8>, Vec<u8>, Vec<usize>) =
                r.extract()?;
            let codes = i64s(&codes, "entity codes")?
                .into_iter()
                .map(|c| u32::try_from(c).map_err(|_| err(format!("entity code {c} out of range"))))
                .collect::<PyResult<Vec<u32>>>()?;
            let times_ms = i64s(&times, "label times")?;
            request_specs.push(RequestSpec {
                view,
                codes,
                times_ms,
                indices,
            });
        }
        let sweep = Sweep::new(
            mode,
            include_late,
            key_tables,
            group_specs,
            view_specs,
            request_specs,
        )
        .map_err(err)?;
        Ok(PySweep {
            inner: RwLock::new(Some(sweep)),
        })
    }

    /// Container column names the natively read groups of `source` need.
    fn projection(&self, source: &str, ts_field: &str) -> PyResult<Vec<String>> {
        self.with(|s| Ok(s.projection(source, ts_field)))
    }

    /// Decode one event-log file of `source` (GIL released, in parallel with other calls)
    /// and keep what its native groups need: records above `after_offset` and at most
    /// `upto` (the listing's limit of the file); returns `(highest offset taken, records
    /// taken)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (source, partition, data, after_offset, ts_field, divisor, upto=i64::MAX))]
    fn add_log_file(
        &self,
        py: Python<'_>,
        source: &str,
        partition: i32,
        data: &Bound<'_, PyBytes>,
        after_offset: i64,
        ts_field: &str,
        divisor: i64,
        upto: i64,
    ) -> PyResult<(i64, u64)> {
        let projection = self.with(|s| Ok(s.projection(source, ts_field)))?;
        let bytes = data.as_bytes();
        let batch = py
            .detach(|| decode_log_file(bytes, &projection))
            .map_err(err)?;
        // selecting (key lookups) under the shared lock, appending under the exclusive one
        let selection = py.detach(|| {
            self.read(|s| {
                s.select_log_batch(source, &batch, after_offset, upto, ts_field, divisor)
                    .map_err(err)
            })
        })?;
        py.detach(|| {
            self.with(|s| {
                s.add_selection(partition, &batch, &selection, ts_field)
                    .map_err(err)
            })
        })
    }

    /// Rows a caller extracted (after a transform) for a group.
    #[allow(clippy::too_many_arguments)]
    fn add_rows(
        &self,
        group: usize,
        partition: i32,
        offsets: Vec<u8>,
        event_time: Vec<u8>,
        processed_at: Vec<u8>,
        keys: Vec<(String, Bound<'_, PyList>)>,
        inputs: Vec<(String, Bound<'_, PyList>)>,
    ) -> PyResult<()> {
        let offsets = i64s(&offsets, "offsets")?;
        let event_time = i64s(&event_time, "event times")?;
        let processed_at = i64s(&processed_at, "processed_at")?;
        let keys = keys
            .iter()
            .map(|(k, v)| column_from_list(k, v))
            .collect::<PyResult<Vec<_>>>()?;
        let inputs = inputs
            .iter()
            .map(|(k, v)| column_from_list(k, v))
            .collect::<PyResult<Vec<_>>>()?;
        self.with(|s| {
            s.add_rows(
                group,
                partition,
                &offsets,
                &event_time,
                &processed_at,
                &keys,
                &inputs,
            )
            .map_err(err)
        })
    }

    /// Count records read by the caller (for progress and totals).
    fn note_read(&self, records: u64) -> PyResult<()> {
        self.with(|s| {
            s.note_read(records);
            Ok(())
        })
    }

    /// Records read so far.
    #[getter]
    fn records_read(&self) -> PyResult<u64> {
        self.with(|s| Ok(s.records_read()))
    }

    /// Hand over every kept record as `shards` blobs, by entity code modulo `shards` (the
    /// distributed backfill's exchange; GIL released). The sweep keeps none afterwards.
    fn take_shards<'py>(
        &self,
        py: Python<'py>,
        shards: usize,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let blobs = py.detach(|| self.with(|s| Ok(s.take_shards(shards))))?;
        Ok(blobs.iter().map(|b| PyBytes::new(py, b)).collect())
    }

    /// Add one blob of another sweep's `take_shards` (same tables and views); returns the
    /// records added (GIL released).
    fn add_shard(&self, py: Python<'_>, blob: &Bound<'_, PyBytes>) -> PyResult<u64> {
        let bytes = blob.as_bytes();
        py.detach(|| self.with(|s| s.add_shard(bytes).map_err(err)))
    }

    /// Keep, in every request, only the labels of entities with kept records in its group;
    /// per request, the kept labels' positions as uint32 bytes (ascending). `finish` then
    /// covers those labels only, in that order (GIL released).
    fn keep_present_labels<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let kept = py.detach(|| self.with(|s| Ok(s.keep_present_labels())))?;
        Ok(kept
            .iter()
            .map(|at| {
                let bytes: Vec<u8> = at.iter().flat_map(|i| i.to_le_bytes()).collect();
                PyBytes::new(py, &bytes)
            })
            .collect())
    }

    /// Sweep; per request, per wanted aggregation: `(kinds, bits, objects)` where `kinds`
    /// (uint8 bytes: 0 None, 1 int64, 2 float64, 3 object) and `bits` (int64 bytes) cover
    /// every label and `objects` lists `(label, value)` for kind 3. `threads`: the sweep's
    /// threads (default: the process's pool, one per core).
    #[pyo3(signature = (threads=None))]
    fn finish<'py>(
        &self,
        py: Python<'py>,
        threads: Option<usize>,
    ) -> PyResult<Vec<Vec<Bound<'py, PyTuple>>>> {
        let taken = self
            .inner
            .write()
            .map_err(|_| err("a sweep call panicked earlier"))?
            .take();
        let sweep = taken.ok_or_else(|| err("this sweep has finished"))?;
        let results = py.detach(move || match threads {
            Some(n) => sweep.finish_on(n).map_err(err),
            None => Ok(sweep.finish()),
        })?;
        let mut out = Vec::with_capacity(results.len());
        for request in results {
            let mut cols = Vec::with_capacity(request.len());
            for col in request {
                let kinds = PyBytes::new(py, &col.kinds);
                let bits: Vec<u8> = col.bits.iter().flat_map(|b| b.to_ne_bytes()).collect();
                let bits = PyBytes::new(py, &bits);
                let objects = PyList::empty(py);
                for (i, v) in &col.objects {
                    objects.append((*i, value_to_py(py, v)?))?;
                }
                cols.push(PyTuple::new(
                    py,
                    [kinds.into_any(), bits.into_any(), objects.into_any()],
                )?);
            }
            out.push(cols);
        }
        Ok(out)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySweep>()?;
    Ok(())
}
