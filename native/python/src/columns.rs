//! `Columns`: a decoded batch held natively, handed between native calls without copying
//! (decode → fold → log append) and turned into Python objects only on the slow path.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use skewless_core::columns::Batch;

use crate::kernel::value_to_py;

/// A batch of rows as named columns (`skewless_core::columns::Batch`), immutable.
#[pyclass(module = "engine._native", name = "Columns", frozen)]
pub struct PyColumns {
    pub batch: Arc<Batch>,
}

impl PyColumns {
    pub fn new(batch: Batch) -> PyColumns {
        PyColumns { batch: Arc::new(batch) }
    }
}

#[pymethods]
impl PyColumns {
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
        let col = self.batch.column(name).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!("no column {name:?}"))
        })?;
        let out = PyList::empty(py);
        for i in 0..self.batch.rows {
            out.append(value_to_py(py, &col.value_at(i))?)?;
        }
        Ok(out)
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyColumns>()?;
    Ok(())
}
