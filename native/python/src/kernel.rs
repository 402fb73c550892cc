//! The aggregation kernel's bridge calls: fold a batch of Python values into partial states,
//! merge them in a given order and finalize — the parity surface against functions.py.
//!
//! Values are converted once per call; the hot paths (tiles, sweep) take columns instead.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub use crate::convert::value_to_py;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyList, PyString};
use skewless_core::agg::{Agg, Input, State};
use skewless_core::error::KernelError;
use skewless_core::value::Order;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fold_finalize, m)?)?;
    m.add_function(wrap_pyfunction!(fold_merge_finalize, m)?)?;
    Ok(())
}

/// A kernel error as `engine.errors.DefinitionError` (a `ValueError`); a plain `ValueError`
/// if the engine package cannot be imported.
pub fn kernel_err(py: Python<'_>, err: KernelError) -> PyErr {
    let text = err.to_string();
    match py
        .import("engine.errors")
        .and_then(|m| m.getattr("DefinitionError"))
        .and_then(|cls| cls.call1((vec![text.clone()],)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyValueError::new_err(text),
    }
}

/// An input cell owned for the duration of a call.
enum Owned {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

impl Owned {
    fn extract(i: usize, v: &Bound<'_, PyAny>) -> PyResult<Owned> {
        Ok(if v.is_none() {
            Owned::Null
        } else if v.is_instance_of::<PyBool>() {
            Owned::Bool(v.extract()?)
        } else if v.is_instance_of::<PyInt>() {
            Owned::Int(v.extract().map_err(|_| {
                PyValueError::new_err(format!("values[{i}]: int {v} does not fit in 64 bits"))
            })?)
        } else if v.is_instance_of::<PyFloat>() {
            Owned::Float(v.extract()?)
        } else if v.is_instance_of::<PyString>() {
            Owned::Str(v.extract()?)
        } else if v.is_instance_of::<PyBytes>() {
            Owned::Bytes(v.extract()?)
        } else {
            return Err(PyValueError::new_err(format!(
                "values[{i}]: expected None, bool, int, float, str or bytes, got {}",
                v.get_type().name()?
            )));
        })
    }

    fn input(&self) -> Input<'_> {
        match self {
            Owned::Null => Input::Null,
            Owned::Int(x) => Input::Int(*x),
            Owned::Float(x) => Input::Float(*x),
            Owned::Str(s) => Input::Str(s),
            Owned::Bool(b) => Input::Bool(*b),
            Owned::Bytes(b) => Input::Bytes(b),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run<'py>(
    py: Python<'py>,
    function: &str,
    kind: &str,
    n: Option<u32>,
    values: &Bound<'py, PyList>,
    orders: Vec<Order>,
    parts: Vec<usize>,
    merge_order: Option<Vec<usize>>,
) -> PyResult<Bound<'py, PyAny>> {
    let agg = Agg::parse(function, kind, n).map_err(|e| kernel_err(py, e))?;
    if values.len() != orders.len() || values.len() != parts.len() {
        return Err(PyValueError::new_err(format!(
            "values, orders and parts must have one entry per event: got {}, {} and {}",
            values.len(),
            orders.len(),
            parts.len()
        )));
    }
    let owned = values
        .iter()
        .enumerate()
        .map(|(i, v)| Owned::extract(i, &v))
        .collect::<PyResult<Vec<Owned>>>()?;
    let used: std::collections::BTreeSet<usize> = parts.iter().copied().collect();
    let merge_order = match merge_order {
        None => used.iter().copied().collect(),
        Some(order) => {
            let given: std::collections::BTreeSet<usize> = order.iter().copied().collect();
            if given.len() != order.len() || !used.is_subset(&given) {
                return Err(PyValueError::new_err(format!(
                    "merge_order must list each part id once and every id in parts: got {order:?} for parts {used:?}"
                )));
            }
            order
        }
    };
    let size = merge_order.iter().max().map_or(0, |m| m + 1);
    let value = py.detach(|| {
        let mut states: Vec<State> = (0..size).map(|_| agg.init()).collect();
        for ((v, &order), &p) in owned.iter().zip(&orders).zip(&parts) {
            agg.add(&mut states[p], v.input(), order);
        }
        let mut acc = agg.init();
        for &p in &merge_order {
            agg.merge(&mut acc, &states[p]);
        }
        agg.finalize(&acc)
    });
    value_to_py(py, &value)
}

/// Fold `values[i]` (at `orders[i]`) into partial state `parts[i]`, merge the partial
/// states in ascending part order into an empty state, and finalize.
#[pyfunction]
#[pyo3(signature = (function, kind, n, values, orders, parts))]
fn fold_finalize<'py>(
    py: Python<'py>,
    function: &str,
    kind: &str,
    n: Option<u32>,
    values: &Bound<'py, PyList>,
    orders: Vec<Order>,
    parts: Vec<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    run(py, function, kind, n, values, orders, parts, None)
}

/// As `fold_finalize`, merging the partial states in `merge_order` (a list of distinct
/// part ids covering every id in `parts`).
#[pyfunction]
#[pyo3(signature = (function, kind, n, values, orders, parts, merge_order))]
#[allow(clippy::too_many_arguments)]
fn fold_merge_finalize<'py>(
    py: Python<'py>,
    function: &str,
    kind: &str,
    n: Option<u32>,
    values: &Bound<'py, PyList>,
    orders: Vec<Order>,
    parts: Vec<usize>,
    merge_order: Vec<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    run(
        py,
        function,
        kind,
        n,
        values,
        orders,
        parts,
        Some(merge_order),
    )
}
