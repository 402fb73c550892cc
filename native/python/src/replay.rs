//! `Replay`: rebuild-online's replay of one event-log partition (see
//! `skewless_core::replay`); its entity writes come back as `Writes`, like the worker's.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use skewless_core::online::{OnlineGroup, OnlineView, Write};
use skewless_core::replay::{Replay, Taken};

use crate::columns::PyColumns;
use crate::convert::{err, i64s};
use crate::online::{fed_columns, group_columns, layout_of, null_column, AggArgs, PyWrites};

/// A view spec: `(fingerprint, aggregations, group, input per aggregation, lateness)`.
type ViewArgs = (String, Vec<AggArgs>, usize, Vec<usize>, Option<i64>);

fn views_of(views: Vec<ViewArgs>) -> PyResult<Vec<OnlineView>> {
    views
        .into_iter()
        .map(|(fingerprint, functions, group, inputs, lateness)| {
            Ok(OnlineView {
                fingerprint,
                layout: layout_of(functions)?,
                group,
                inputs,
                allowed_lateness_ms: lateness,
            })
        })
        .collect()
}

/// `(view, Writes)` per run of one view's writes, at most `chunk` writes each.
fn chunked<'py>(
    py: Python<'py>,
    writes: Vec<(u32, Write)>,
    chunk: usize,
) -> PyResult<Bound<'py, PyList>> {
    let chunk = chunk.max(1);
    let out = PyList::empty(py);
    let mut current: Option<(u32, Vec<Write>)> = None;
    for (v, w) in writes {
        match &mut current {
            Some((cv, ws)) if *cv == v && ws.len() < chunk => ws.push(w),
            _ => {
                if let Some((cv, ws)) = current.take() {
                    out.append((cv, Bound::new(py, PyWrites::new(ws))?))?;
                }
                current = Some((v, vec![w]));
            }
        }
    }
    if let Some((cv, ws)) = current {
        out.append((cv, Bound::new(py, PyWrites::new(ws))?))?;
    }
    Ok(out)
}

/// The replay of one source partition for the views of one source (`engine.rebuild`).
#[pyclass(module = "engine._native", name = "Replay", frozen)]
pub struct PyReplay {
    inner: std::sync::Mutex<Replay>,
    timestamp_field: String,
    divisor: i64,
}

impl PyReplay {
    fn with<T>(&self, f: impl FnOnce(&mut Replay) -> PyResult<T>) -> PyResult<T> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| err("a Replay call panicked earlier"))?;
        f(&mut guard)
    }
}

#[pymethods]
impl PyReplay {
    /// `views` and `groups` as `OnlineCore` takes them; `partition` the source partition;
    /// the payload's event time is `timestamp_field // divisor` (ms).
    #[new]
    fn new(
        views: Vec<ViewArgs>,
        groups: Vec<(Vec<String>, Vec<String>)>,
        partition: i32,
        timestamp_field: String,
        divisor: i64,
    ) -> PyResult<Self> {
        let views = views_of(views)?;
        if views.iter().any(|v| v.group >= groups.len()) {
            return Err(err("Replay: a view names a group that does not exist"));
        }
        let groups = groups
            .into_iter()
            .map(|(key_fields, input_fields)| OnlineGroup {
                key_fields,
                input_fields,
            })
            .collect();
        Ok(PyReplay {
            inner: std::sync::Mutex::new(Replay::new(views, groups, partition)),
            timestamp_field,
            divisor,
        })
    }

    /// Mark the views of slots `views` merge-on-write (one tile set per entity for every
    /// partition folded; `writes` gives each entity's entity and marks writes).
    fn set_merged(&self, views: Vec<u32>) -> PyResult<()> {
        self.with(|r| {
            r.set_merged(&views);
            Ok(())
        })
    }

    /// Fold source partition `partition` next (a replay of merged views: every partition
    /// in turn into one tile set per entity); the newest event times start again.
    fn set_partition(&self, partition: i32) -> PyResult<()> {
        self.with(|r| {
            r.set_partition(partition);
            Ok(())
        })
    }

    /// Per view: the newest event time folded so far (None: none admitted).
    fn newest_event_ms(&self) -> PyResult<Vec<Option<i64>>> {
        self.with(|r| Ok(r.newest_event_ms()))
    }

    /// Decode and fold one event-log file's records above offset `high` (GIL released; no
    /// group may run user code). `(records taken, highest offset taken | None)`, or None
    /// when the file must be folded through `fold` instead (a column the native path does
    /// not read as the Python one does). Raises `ValueError` on a corrupt file.
    fn fold_file(
        &self,
        py: Python<'_>,
        data: &[u8],
        high: i64,
        now_ms: i64,
        upto: i64,
    ) -> PyResult<Option<(usize, Option<i64>)>> {
        let (field, divisor) = (self.timestamp_field.as_str(), self.divisor);
        let taken = self.with(|r| {
            py.detach(|| r.fold_file(data, high, upto, field, divisor, now_ms))
                .map_err(err)
        })?;
        Ok(match taken {
            Taken::Folded { records, last } => Some((records, last)),
            Taken::Unsupported => None,
        })
    }

    /// Fold a batch of records (int64 buffers: offsets, event times, logged processed_at):
    /// `payload` gives the columns of groups not in `fed` (by field name);
    /// `fed[g] = (key columns, input columns)` as lists (after a transform), as
    /// `OnlineCore.prepare` takes them.
    #[pyo3(signature = (offsets, event_time, processed_at, payload, fed, now_ms))]
    #[allow(clippy::too_many_arguments)]
    fn fold<'py>(
        &self,
        py: Python<'py>,
        offsets: Vec<u8>,
        event_time: Vec<u8>,
        processed_at: Vec<u8>,
        payload: Option<PyRef<'py, PyColumns>>,
        fed: &Bound<'py, PyDict>,
        now_ms: i64,
    ) -> PyResult<()> {
        let offset = i64s(&offsets, "offsets")?;
        let event_time = i64s(&event_time, "event times")?;
        let processed = i64s(&processed_at, "processed_at")?;
        let n = offset.len();
        if event_time.len() != n || processed.len() != n {
            return Err(err(
                "fold: offsets, event times and processed_at differ in length",
            ));
        }
        let groups: Vec<OnlineGroup> = self.with(|r| Ok(r.groups().to_vec()))?;
        let owned = fed_columns(fed, groups.len(), n, "fold")?;
        let batch = payload.as_ref().map(|p| p.batch.clone());
        let null_col = null_column(n);
        let cols = group_columns(&groups, &owned, batch.as_deref(), &null_col, n, "fold")?;
        self.with(|r| {
            py.detach(|| r.fold(&offset, &event_time, &processed, &cols, now_ms));
            Ok(())
        })
    }

    /// `(view, writes)` per view with writes, in chunks of at most `chunk` writes: one
    /// write per entity (every tile, fence, write time, journal), in entity order; with
    /// `drop_expired` the writes whose key would expire at once are left out. Empties the
    /// replay.
    fn writes<'py>(
        &self,
        py: Python<'py>,
        now_ms: i64,
        drop_expired: bool,
        chunk: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let writes = self.with(|r| Ok(py.detach(|| r.writes(now_ms, drop_expired))))?;
        chunked(py, writes, chunk)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReplay>()?;
    Ok(())
}
