//! The online reader's native face: `ReadKernel` (feature values of many entities' hashes
//! as of `t`, see `skewless_core::read`) and `RespReplies` (Redis replies indexed in the one
//! buffer the socket filled, so no field becomes a Python object on the uncached path).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFrozenSet, PyList, PyTuple};

use skewless_core::read::{hash_fields, Evaluated, ReadSpec, Replies, Reply};

use crate::kernel::value_to_py;
use crate::online::{codec_err, fields_of, layout_of, AggArgs};
use skewless_core::value::Value;

/// Aggregations `indices` of a view's layout, read from raw hashes.
#[pyclass(frozen, module = "engine._native")]
pub struct ReadKernel {
    spec: ReadSpec,
}

/// A value's pattern code, as `engine.online_eval` derives it from the Python value: 0 for
/// None, 1 for a value equal to 0 (`0`, `0.0`, `-0.0`, `False`), 2 for any other.
fn pattern_code(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(false) | Value::Int(0) | Value::Wide(0) => 1,
        Value::Float(x) if *x == 0.0 => 1,
        _ => 2,
    }
}

/// Per entity `(values, updated or None, seen)`; `keyed`: the third element is instead the
/// row's status key, per requested position `2 × pattern code + seen`.
fn rows<'py>(
    py: Python<'py>,
    results: Vec<Result<Evaluated, String>>,
    keyed: bool,
) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    let mut key = Vec::new();
    for r in results {
        let e = r.map_err(|e| codec_err(py, e))?;
        let row = PyList::empty(py);
        for v in &e.values {
            row.append(value_to_py(py, v)?)?;
        }
        let updated = (e.updated_ms > 0).then_some(e.updated_ms);
        let third = if keyed {
            key.clear();
            key.extend(
                e.values
                    .iter()
                    .zip(&e.seen)
                    .map(|(v, &seen)| 2 * pattern_code(v) + seen),
            );
            PyBytes::new(py, &key)
        } else {
            PyBytes::new(py, &e.seen)
        };
        out.append((row, updated, third))?;
    }
    Ok(out)
}

#[pymethods]
impl ReadKernel {
    #[new]
    fn new(functions: Vec<AggArgs>, indices: Vec<usize>) -> PyResult<ReadKernel> {
        let spec = ReadSpec::new(layout_of(functions)?, indices).map_err(PyValueError::new_err)?;
        Ok(ReadKernel { spec })
    }

    /// Per hash (a dict of field → bytes): `(values, newest write time or None, seen)`,
    /// `seen[i]` 1 when a tile of requested aggregation i's window exists. Raises
    /// CodecError for a corrupt tile a requested window covers.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        hashes: Vec<Bound<'py, PyDict>>,
        t_ms: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let all: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
            hashes.iter().map(fields_of).collect::<PyResult<_>>()?;
        let spec = &self.spec;
        let results = py.detach(|| {
            let mut at = spec.at(t_ms);
            all.iter()
                .map(|f| {
                    at.evaluate(f.iter().map(|(k, v)| (&k[..], &v[..])))
                        .map_err(|e| e.0)
                })
                .collect()
        });
        rows(py, results, false)
    }

    /// `evaluate` of the hash replies `slots` of `replies`; `keyed`: each row's third element
    /// is its status key (per requested position `2 × pattern code + seen`, the pattern code
    /// 0 for None, 1 for a value equal to 0, 2 for any other) instead of `seen`.
    #[pyo3(signature = (replies, slots, t_ms, keyed = false))]
    fn evaluate_replies<'py>(
        &self,
        py: Python<'py>,
        replies: PyRef<'_, RespReplies>,
        slots: Vec<usize>,
        t_ms: i64,
        keyed: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut hashes = Vec::with_capacity(slots.len());
        for &s in &slots {
            match replies.inner.replies.get(s) {
                Some(Reply::Hash(pairs)) => hashes.push(&pairs[..]),
                _ => return Err(PyValueError::new_err(format!("reply {s} is not a hash"))),
            }
        }
        let spec = &self.spec;
        let buf = &replies.inner.buf[..];
        let results = py.detach(|| {
            let mut at = spec.at(t_ms);
            hashes
                .iter()
                .map(|pairs| at.evaluate(hash_fields(buf, pairs)).map_err(|e| e.0))
                .collect()
        });
        rows(py, results, keyed)
    }
}

/// `count` RESP replies, fed as the socket receives them and indexed in place.
#[pyclass(module = "engine._native")]
pub struct RespReplies {
    inner: Replies,
}

#[pymethods]
impl RespReplies {
    #[new]
    fn new(count: usize) -> RespReplies {
        RespReplies {
            inner: Replies::new(count),
        }
    }

    /// Append received bytes; how many replies are still missing. Raises ValueError for
    /// bytes that are not RESP or that follow the last reply.
    fn feed(&mut self, chunk: &[u8]) -> PyResult<usize> {
        self.inner.feed(chunk).map_err(PyValueError::new_err)
    }

    fn __len__(&self) -> usize {
        self.inner.replies.len()
    }

    /// Per reply: the number of fields of a hash reply (0: an empty or nil one), -1 for
    /// an integer, -2 for an error, -3 for any other reply.
    fn shape(&self) -> Vec<i64> {
        self.inner
            .replies
            .iter()
            .map(|r| match r {
                Reply::Hash(p) => p.len() as i64,
                Reply::Int(_) => -1,
                Reply::Error(..) => -2,
                Reply::Other => -3,
            })
            .collect()
    }

    /// The value of integer reply `i` (None: not an integer).
    fn int_at(&self, i: usize) -> Option<i64> {
        match self.inner.replies.get(i) {
            Some(Reply::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// The text of error reply `i` (None: not an error).
    fn error_at(&self, i: usize) -> Option<String> {
        match self.inner.replies.get(i) {
            Some(Reply::Error(a, b)) => Some(
                String::from_utf8_lossy(&self.inner.buf[*a as usize..*b as usize]).into_owned(),
            ),
            _ => None,
        }
    }

    /// The `(name, value)` pairs of hash reply `i` whose names start with a byte of
    /// `kinds`, as a frozenset.
    fn marks<'py>(
        &self,
        py: Python<'py>,
        i: usize,
        kinds: &[u8],
    ) -> PyResult<Bound<'py, PyFrozenSet>> {
        let mut items: Vec<Bound<'py, PyTuple>> = Vec::new();
        if let Some(Reply::Hash(pairs)) = self.inner.replies.get(i) {
            for (name, value) in hash_fields(&self.inner.buf, pairs) {
                if name.first().is_some_and(|b| kinds.contains(b)) {
                    items.push(PyTuple::new(
                        py,
                        [PyBytes::new(py, name), PyBytes::new(py, value)],
                    )?);
                }
            }
        }
        PyFrozenSet::new(py, &items)
    }

    /// Hash reply `i` as a dict of bytes (None: not a hash).
    fn hash<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(Reply::Hash(pairs)) = self.inner.replies.get(i) else {
            return Ok(None);
        };
        let out = PyDict::new(py);
        for (name, value) in hash_fields(&self.inner.buf, pairs) {
            out.set_item(PyBytes::new(py, name), PyBytes::new(py, value))?;
        }
        Ok(Some(out))
    }

    /// The bytes of the complete replies from reply `i` on, to parse them another way
    /// (empty past the last one).
    fn tail<'py>(&self, py: Python<'py>, i: usize) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.tail(i))
    }

    /// The whole buffer (to parse it another way).
    fn raw<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.buf)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReadKernel>()?;
    m.add_class::<RespReplies>()?;
    Ok(())
}
