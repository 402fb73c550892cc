//! `OnlineCore`: the stream worker's native online state (see `skewless_core::online`),
//! and `online_values`, the online reader's window evaluation from Redis hash bytes.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use skewless_core::agg::{Agg, Func};
use skewless_core::columns::{Batch, Column, ColumnData};
use skewless_core::online::{
    evaluate, key_slot, script_chunks, slot_chunks, CacheKey, Events, GroupColumns, OnlineCore,
    OnlineGroup, OnlineView, SlotChunk, Write,
};
use skewless_core::tiles::Layout;
use skewless_core::value::{Kind, Value};

use crate::columns::PyColumns;
use crate::convert::{err, fed_column, i64s};
use crate::kernel::value_to_py;
use crate::logwrite::arrow_column;

pub fn codec_err(py: Python<'_>, e: impl std::fmt::Display) -> PyErr {
    match py
        .import("engine.errors")
        .and_then(|m| m.getattr("CodecError"))
    {
        Ok(cls) => match cls.call1((e.to_string(),)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(x) => x,
        },
        Err(x) => x,
    }
}

/// `(function, kind, n, window_ms, hop_ms)` of one aggregation.
pub type AggArgs = (String, String, Option<u32>, Option<i64>, Option<i64>);

/// A tile layout from aggregation specs.
pub fn layout_of(functions: Vec<AggArgs>) -> PyResult<Layout> {
    let mut aggs = Vec::new();
    let mut windows = Vec::new();
    let mut hops = Vec::new();
    for (name, kind, n, window, hop) in functions {
        let func = Func::parse(&name, n)
            .ok_or_else(|| err(format!("unknown aggregation function {name:?}")))?;
        let kind =
            Kind::parse(&kind).ok_or_else(|| err(format!("unknown column kind {kind:?}")))?;
        aggs.push(Agg::new(func, kind).map_err(err)?);
        windows.push(window);
        hops.push(hop);
    }
    Layout::new(aggs, windows, hops).map_err(err)
}

/// A view spec: `(fingerprint, aggregations, group, input per aggregation, lateness)`.
type ViewArgs = (String, Vec<AggArgs>, usize, Vec<usize>, Option<i64>);

fn view_of(args: ViewArgs) -> PyResult<OnlineView> {
    let (fingerprint, functions, group, inputs, lateness) = args;
    Ok(OnlineView {
        fingerprint,
        layout: layout_of(functions)?,
        group,
        inputs,
        allowed_lateness_ms: lateness,
    })
}

/// The bytes of a `bytes` (memcpy) or `str` (UTF-8) hash field or value.
fn bytes_of(x: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = x.cast::<PyBytes>() {
        Ok(b.as_bytes().to_vec())
    } else if let Ok(s) = x.extract::<&str>() {
        Ok(s.as_bytes().to_vec())
    } else {
        Err(err(format!(
            "a hash field or value must be bytes or str, got {}",
            x.get_type()
        )))
    }
}

pub fn fields_of(hash: &Bound<'_, PyDict>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::with_capacity(hash.len());
    for (k, v) in hash.iter() {
        let k = bytes_of(&k)?;
        let v = bytes_of(&v)?;
        out.push((k, v));
    }
    Ok(out)
}

/// `(key, {field: bytes}, [deleted fields], expire_at_ms | None, expect | None)`.
fn write_to_py<'py>(py: Python<'py>, w: &Write) -> PyResult<Bound<'py, PyTuple>> {
    let fields = PyDict::new(py);
    for (name, bytes) in &w.fields {
        fields.set_item(name, PyBytes::new(py, bytes))?;
    }
    let expect = match &w.expect {
        None => py.None().into_bound(py),
        Some((f, v)) => (f.as_str(), v.as_ref().map(|b| PyBytes::new(py, b)))
            .into_pyobject(py)?
            .into_any(),
    };
    PyTuple::new(
        py,
        [
            w.key.as_str().into_pyobject(py)?.into_any(),
            fields.into_any(),
            PyList::new(py, &w.delete)?.into_any(),
            w.expire_at_ms.into_pyobject(py)?.into_any(),
            expect,
        ],
    )
}

/// `(write order, [(slot, elements, first, count, keys RESP, arguments RESP)])` of
/// `skewless_core::online::slot_chunks`, for the Redis Cluster store.
pub fn slot_chunks_to_py<'py>(
    py: Python<'py>,
    writes: &[Write],
    max_args: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    let (order, chunks) = py.detach(|| slot_chunks(writes, max_args));
    let out = PyList::empty(py);
    for SlotChunk {
        slot,
        elements,
        first,
        count,
        keys,
        args,
    } in chunks
    {
        out.append((
            slot,
            elements,
            first,
            count,
            PyBytes::new(py, &keys),
            PyBytes::new(py, &args),
        ))?;
    }
    (PyList::new(py, order)?, out).into_pyobject(py)
}

/// The Redis Cluster slot of `key` (CRC16 of its hash tag, as Redis computes it).
#[pyfunction(name = "key_slot")]
fn py_key_slot(key: &[u8]) -> u16 {
    key_slot(key)
}

/// `(key, {field: bytes}, [deleted fields], expire_at_ms | None, expect | None)`.
type WriteArgs<'py> = (
    String,
    Bound<'py, PyDict>,
    Vec<String>,
    Option<i64>,
    Option<(String, Option<Vec<u8>>)>,
);

/// A write from `(key, {field: bytes}, [deleted fields], expire_at_ms | None, expect | None)`.
fn write_from_py(item: &Bound<'_, PyAny>) -> PyResult<Write> {
    let (key, fields, delete, expire_at_ms, expect): WriteArgs<'_> = item.extract()?;
    let mut named = Vec::with_capacity(fields.len());
    for (k, v) in fields.iter() {
        named.push((k.extract::<String>()?, bytes_of(&v)?));
    }
    Ok(Write {
        key,
        fields: named,
        delete,
        expire_at_ms,
        expect,
    })
}

/// A batch's entity writes, held natively: packed into script calls by the core
/// (`script_chunks`), or turned into Python tuples for other stores (`to_list`).
#[pyclass(module = "engine._native", name = "Writes", frozen)]
pub struct PyWrites {
    writes: Vec<Write>,
}

impl PyWrites {
    /// Writes built natively (the worker's `apply`, rebuild-online's replay).
    pub(crate) fn new(writes: Vec<Write>) -> Self {
        Self { writes }
    }
}

#[pymethods]
impl PyWrites {
    /// Writes from `to_list`'s tuples (benchmarks and tests: the worker's writes come from
    /// `OnlineCore.apply`).
    #[staticmethod]
    fn from_list(items: &Bound<'_, PyList>) -> PyResult<Self> {
        let writes = items
            .iter()
            .map(|item| write_from_py(&item))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { writes })
    }

    fn __len__(&self) -> usize {
        self.writes.len()
    }

    /// `(key, {field: bytes}, [deleted fields], expire_at_ms | None, expect | None)` each.
    fn to_list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for w in &self.writes {
            out.append(write_to_py(py, w)?)?;
        }
        Ok(out)
    }

    /// The Redis key of write `i`.
    fn key(&self, i: usize) -> PyResult<String> {
        self.writes
            .get(i)
            .map(|w| w.key.clone())
            .ok_or_else(|| err(format!("no write {i}")))
    }

    /// `(elements, first write, writes, RESP body)` per script call of about `max_args`
    /// arguments (see `skewless_core::online::script_chunks`).
    fn script_chunks<'py>(&self, py: Python<'py>, max_args: usize) -> PyResult<Bound<'py, PyList>> {
        let chunks = py.detach(|| script_chunks(&self.writes, max_args));
        let out = PyList::empty(py);
        for c in chunks {
            out.append((c.elements, c.first, c.count, PyBytes::new(py, &c.body)))?;
        }
        Ok(out)
    }

    /// The writes grouped by Redis Cluster slot into script calls (`slot_chunks_to_py`).
    fn slot_chunks<'py>(&self, py: Python<'py>, max_args: usize) -> PyResult<Bound<'py, PyTuple>> {
        slot_chunks_to_py(py, &self.writes, max_args)
    }
}

/// Owned key and input columns of one group.
pub(crate) type FedColumns = (Vec<Column>, Vec<Column>);

/// The columns a group was fed after a transform (`fed[g] = (key columns, input columns)`),
/// owned, per group; `None` for a group read from the payload. A list is turned into a
/// column by `fed_column` (typed when its cells allow); anything else is a pyarrow array
/// read from its buffers (`arrow_column`: a batch transform's typed result, no Python
/// object per cell). `what` names the call in errors.
pub(crate) fn fed_columns(
    fed: &Bound<'_, PyDict>,
    groups: usize,
    n: usize,
    what: &str,
) -> PyResult<Vec<Option<FedColumns>>> {
    let py = fed.py();
    let one = |c: &Bound<'_, PyAny>| -> PyResult<Column> {
        match c.cast::<PyList>() {
            Ok(list) => Ok(fed_column(list)),
            Err(_) => arrow_column(py, c),
        }
    };
    let mut owned = Vec::with_capacity(groups);
    for g in 0..groups {
        match fed.get_item(g)? {
            Some(spec) => {
                let (keys, inputs): (Vec<Bound<'_, PyAny>>, Vec<Bound<'_, PyAny>>) =
                    spec.extract()?;
                let keys: Vec<Column> = keys.iter().map(one).collect::<PyResult<_>>()?;
                let inputs: Vec<Column> = inputs.iter().map(one).collect::<PyResult<_>>()?;
                if keys.iter().chain(&inputs).any(|c| c.len() != n) {
                    return Err(err(format!("{what}: group {g}'s columns are not {n} long")));
                }
                owned.push(Some((keys, inputs)));
            }
            None => owned.push(None),
        }
    }
    Ok(owned)
}

/// A column of `n` nulls: the key column of a field the payload lacks.
pub(crate) fn null_column(n: usize) -> Column {
    Column {
        data: ColumnData::Value(vec![Value::Null; n]),
        valid: Some(vec![false; n]),
    }
}

/// Each group's key and input columns: the fed ones, else the payload's by field name
/// (a missing key field reads as `null_col`). `what` names the call in errors.
pub(crate) fn group_columns<'a>(
    groups: &[OnlineGroup],
    owned: &'a [Option<FedColumns>],
    batch: Option<&'a Batch>,
    null_col: &'a Column,
    n: usize,
    what: &str,
) -> PyResult<Vec<GroupColumns<'a>>> {
    if let Some(b) = batch {
        if b.rows != n {
            return Err(err(format!(
                "{what}: payload has {} rows for {n} records",
                b.rows
            )));
        }
    }
    let mut cols = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        if let Some((keys, inputs)) = &owned[g] {
            cols.push(GroupColumns {
                keys: keys.iter().collect(),
                inputs: inputs.iter().map(Some).collect(),
            });
        } else {
            let Some(b) = batch else {
                return Err(err(format!(
                    "{what}: group {g} has neither payload columns nor fed columns"
                )));
            };
            cols.push(GroupColumns {
                keys: group
                    .key_fields
                    .iter()
                    .map(|f| b.column(f).unwrap_or(null_col))
                    .collect(),
                inputs: group.input_fields.iter().map(|f| b.column(f)).collect(),
            });
        }
    }
    Ok(cols)
}

/// `(view, partition, entity, local value, store's fence, store's journal)`.
type SpilledEntry = (u32, i32, String, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

fn applied_to_py<'py>(
    py: Python<'py>,
    applied: skewless_core::online::Applied,
) -> PyResult<Bound<'py, PyTuple>> {
    let writes = Bound::new(
        py,
        PyWrites {
            writes: applied.writes,
        },
    )?;
    let newest = PyDict::new(py);
    for ((v, p), ms) in &applied.newest {
        newest.set_item((v, p), ms)?;
    }
    let recovered = PyDict::new(py);
    for (row, pt) in &applied.recovered {
        recovered.set_item(row, pt)?;
    }
    PyTuple::new(
        py,
        [
            writes.into_any(),
            applied.applied.into_pyobject(py)?.into_any(),
            applied.late.into_pyobject(py)?.into_any(),
            applied.fenced.into_pyobject(py)?.into_any(),
            newest.into_any(),
            recovered.into_any(),
        ],
    )
}

#[pyclass(module = "engine._native", name = "OnlineCore")]
pub struct PyOnlineCore {
    inner: std::sync::Mutex<OnlineCore>,
}

impl PyOnlineCore {
    fn with<T>(&self, f: impl FnOnce(&mut OnlineCore) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| err("an OnlineCore call panicked earlier"))?;
        f(&mut guard)
    }
}

#[pymethods]
impl PyOnlineCore {
    #[new]
    fn new(
        views: Vec<ViewArgs>,
        groups: Vec<(Vec<String>, Vec<String>)>,
        capacity: usize,
    ) -> PyResult<Self> {
        let views = views
            .into_iter()
            .map(view_of)
            .collect::<PyResult<Vec<_>>>()?;
        let groups = groups
            .into_iter()
            .map(|(key_fields, input_fields)| OnlineGroup {
                key_fields,
                input_fields,
            })
            .collect();
        Ok(PyOnlineCore {
            inner: std::sync::Mutex::new(OnlineCore::new(views, groups, capacity)),
        })
    }

    /// Merge the tiles of these views (slots) across source partitions on write.
    fn set_merged(&self, views: Vec<u32>) -> PyResult<()> {
        self.with(|c| {
            c.set_merged(&views);
            Ok(())
        })
    }

    /// Cache loaded merged entries: `(view, entity, entity hash, marks hash)` per entry
    /// `prepare` listed with partition -1.
    #[allow(clippy::type_complexity)]
    fn load_merged(
        &self,
        py: Python<'_>,
        entries: Vec<(u32, String, Bound<'_, PyDict>, Bound<'_, PyDict>)>,
    ) -> PyResult<()> {
        for (view, entity, hash, marks) in entries {
            let fields = fields_of(&hash)?;
            let marks = fields_of(&marks)?;
            let refs: Vec<(&[u8], &[u8])> = fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let mrefs: Vec<(&[u8], &[u8])> = marks.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let ck: CacheKey = (view, skewless_core::online::MERGED, entity.into());
            self.with(|c| {
                c.load_merged(ck, &refs, &mrefs)
                    .map_err(|e| codec_err(py, e))
            })?;
        }
        Ok(())
    }

    /// Entries cached now.
    #[getter]
    fn cached(&self) -> PyResult<usize> {
        self.with(|c| Ok(c.cached()))
    }

    /// Extract the batch's entities; returns `(redis key, view, partition, entity)` of every
    /// entry to load. `payload` gives the columns of groups not in `fed` (by field name);
    /// `fed[g] = (key columns, input columns)` as lists (after a transform).
    #[pyo3(signature = (partitions, offsets, event_time, payload, fed))]
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        partitions: Vec<u8>,
        offsets: Vec<u8>,
        event_time: Vec<u8>,
        payload: Option<PyRef<'py, PyColumns>>,
        fed: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let partition: Vec<i32> = i64s(&partitions, "partitions")?
            .into_iter()
            .map(|p| p as i32)
            .collect();
        let offset = i64s(&offsets, "offsets")?;
        let event_time = i64s(&event_time, "event times")?;
        let n = offset.len();
        if partition.len() != n || event_time.len() != n {
            return Err(err(
                "prepare: partitions, offsets and event times differ in length",
            ));
        }
        let groups: Vec<OnlineGroup> = self.with(|c| Ok(c.groups().to_vec()))?;
        let owned = fed_columns(fed, groups.len(), n, "prepare")?;
        let batch = payload.as_ref().map(|p| p.batch.clone());
        let null_col = null_column(n);
        let cols = group_columns(&groups, &owned, batch.as_deref(), &null_col, n, "prepare")?;
        let events = Events {
            partition,
            offset,
            event_time,
        };
        let missing = self.with(|c| Ok(py.detach(|| c.prepare(events, &cols))))?;
        let out = PyList::empty(py);
        for ck in missing {
            let key = self.with(|c| Ok(c.redis_key(&ck)))?;
            out.append((key, ck.0, ck.1, &*ck.2))?;
        }
        Ok(out)
    }

    /// Cache loaded hashes: `(view, partition, entity, fields)` per entry `prepare` listed.
    fn load(
        &self,
        py: Python<'_>,
        entries: Vec<(u32, i32, String, Bound<'_, PyDict>)>,
    ) -> PyResult<()> {
        for (view, partition, entity, hash) in entries {
            let fields = fields_of(&hash)?;
            let refs: Vec<(&[u8], &[u8])> = fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let ck: CacheKey = (view, partition, entity.into());
            self.with(|c| c.load(ck, &refs).map_err(|e| codec_err(py, e)))?;
        }
        Ok(())
    }

    /// Keep merged entries cached across batches (this worker owns every source
    /// partition), or drop them after each batch and now (the default).
    fn set_keep_merged(&self, on: bool) -> PyResult<()> {
        self.with(|c| {
            c.set_keep_merged(on);
            Ok(())
        })
    }

    /// Whether merged entries stay cached across batches.
    #[getter]
    fn keeps_merged(&self) -> PyResult<bool> {
        self.with(|c| Ok(c.keeps_merged()))
    }

    /// Spill mode: `apply` no longer evicts; `spill` does, once the batch is durable.
    fn set_spill(&self, on: bool) -> PyResult<()> {
        self.with(|c| {
            c.set_spill(on);
            Ok(())
        })
    }

    /// Spill mode: evict the least recently used entries over the capacity (every entry
    /// when `all`); returns `(keys, values)` for the local store: keys
    /// `<partition>:<redis key>`, values the entries' hash fields packed
    /// (`skewless_core::online::encode_entry`).
    #[pyo3(signature = (all = false))]
    fn spill<'py>(
        &self,
        py: Python<'py>,
        all: bool,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let spilled = self.with(|c| Ok(py.detach(|| c.spill(all))))?;
        let keys = PyList::empty(py);
        let values = PyList::empty(py);
        for (k, v) in &spilled {
            keys.append(PyBytes::new(py, k))?;
            values.append(PyBytes::new(py, v))?;
        }
        Ok((keys, values))
    }

    /// Cache entries from the local store: `(view, partition, entity, value, fence,
    /// journal)` each, `fence`/`journal` the store's `f:<p>`/`j:<p>` now (None: absent).
    /// An entry whose marks differ is not cached; returns the indices of those.
    fn load_spilled(&self, py: Python<'_>, entries: Vec<SpilledEntry>) -> PyResult<Vec<usize>> {
        self.with(|c| {
            let mut refused = Vec::new();
            for (i, (view, partition, entity, value, fence, journal)) in
                entries.into_iter().enumerate()
            {
                let ck: CacheKey = (view, partition, entity.into());
                let ok = c
                    .load_spilled(ck, &value, fence.as_deref(), journal.as_deref())
                    .map_err(|e| codec_err(py, e))?;
                if !ok {
                    refused.push(i);
                }
            }
            Ok(refused)
        })
    }

    /// Fold the prepared batch; returns `(writes, applied, late, fenced, newest, recovered)`:
    /// writes as `(key, {field: bytes}, [deleted fields], expire_at_ms|None, expect|None)`,
    /// newest as `{(view, partition): event_ms}`, recovered as `{event row: processed_at}`.
    fn apply<'py>(&self, py: Python<'py>, batch_p: i64) -> PyResult<Bound<'py, PyTuple>> {
        let applied =
            self.with(|c| py.detach(|| c.apply(batch_p)).map_err(|e| codec_err(py, e)))?;
        applied_to_py(py, applied)
    }

    /// `apply` admitting each event by its logged processed_at (int64 buffer, one per
    /// event of the prepared batch); writes at `now_ms`. Returns what `apply` returns.
    fn apply_logged<'py>(
        &self,
        py: Python<'py>,
        processed_at: Vec<u8>,
        now_ms: i64,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let pt = i64s(&processed_at, "processed_at")?;
        let applied = self.with(|c| {
            py.detach(|| c.apply_logged(&pt, now_ms))
                .map_err(|e| codec_err(py, e))
        })?;
        applied_to_py(py, applied)
    }

    /// Rebuild mode: fold the prepared batch admitting each record by its logged
    /// processed_at (int64 buffer, one per event).
    fn replay(&self, py: Python<'_>, processed_at: Vec<u8>, now_ms: i64) -> PyResult<()> {
        let pt = i64s(&processed_at, "processed_at")?;
        self.with(|c| {
            py.detach(|| c.replay(&pt, now_ms));
            Ok(())
        })
    }

    /// Rebuild mode: `(view, write)` per cached entry, writes as in `apply`; empties the cache.
    fn replay_writes<'py>(&self, py: Python<'py>, now_ms: i64) -> PyResult<Bound<'py, PyList>> {
        let writes = self.with(|c| Ok(py.detach(|| c.replay_writes(now_ms))))?;
        let out = PyList::empty(py);
        for (v, w) in &writes {
            out.append((v, write_to_py(py, w)?))?;
        }
        Ok(out)
    }

    /// Forget the entries the prepared batch touched (after a failed write).
    fn discard_prepared(&self) -> PyResult<()> {
        self.with(|c| {
            c.discard_prepared();
            Ok(())
        })
    }

    fn forget_partitions(&self, partitions: Vec<i32>) -> PyResult<()> {
        self.with(|c| {
            c.forget_partitions(&partitions);
            Ok(())
        })
    }

    fn forget_views(&self, views: Vec<u32>, partition: i32) -> PyResult<()> {
        self.with(|c| {
            c.forget_views(&views, partition);
            Ok(())
        })
    }

    fn forget_all(&self) -> PyResult<()> {
        self.with(|c| {
            c.forget_all();
            Ok(())
        })
    }
}

/// Feature values as of `t_ms` for many entities of one view, straight from the hashes
/// Redis returned (each a dict of field → bytes; empty for a missing entity): per hash
/// `(values, newest write time or None)`.
#[pyfunction]
fn online_values<'py>(
    py: Python<'py>,
    functions: Vec<AggArgs>,
    hashes: Vec<Bound<'py, PyDict>>,
    t_ms: i64,
    indices: Vec<usize>,
) -> PyResult<Bound<'py, PyList>> {
    let view = OnlineView {
        fingerprint: String::new(),
        layout: layout_of(functions)?,
        group: 0,
        inputs: vec![],
        allowed_lateness_ms: None,
    };
    let all: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
        hashes.iter().map(fields_of).collect::<PyResult<_>>()?;
    let results: Vec<Result<(Vec<Value>, i64), String>> = py.detach(|| {
        all.iter()
            .map(|fields| {
                let refs: Vec<(&[u8], &[u8])> =
                    fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
                let values = evaluate(&view, &refs, t_ms, &indices).map_err(|e| e.0)?;
                Ok((values, newest_write(&refs)))
            })
            .collect()
    });
    let out = PyList::empty(py);
    for r in results {
        let (values, updated) = r.map_err(|e| codec_err(py, e))?;
        let row = PyList::empty(py);
        for v in &values {
            row.append(value_to_py(py, v)?)?;
        }
        let updated = (updated > 0).then_some(updated);
        out.append((row, updated))?;
    }
    Ok(out)
}

/// The newest processed_at any partition wrote (`u:<p>` fields; 0 when none).
fn newest_write(fields: &[(&[u8], &[u8])]) -> i64 {
    fields
        .iter()
        .filter(|(name, _)| name.starts_with(b"u:"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        .max()
        .unwrap_or(0)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyOnlineCore>()?;
    m.add_class::<PyWrites>()?;
    m.add_function(wrap_pyfunction!(online_values, m)?)?;
    m.add_function(wrap_pyfunction!(py_key_slot, m)?)?;
    Ok(())
}
