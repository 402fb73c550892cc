//! `SourceDecoder`: a batch of one source's Kafka records decoded into `Columns`, the GIL
//! released while the core decodes; each refused record comes back as `(index, code)`
//! (the reason text is built in Python, `engine.serde.SourceCodec.decode_batch`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use skewless_core::source::{Limits, SourceDecoder, SourceSpec, Wire};

use crate::columns::PyColumns;

/// `(columns, kept input indexes, [(index, reason code)])`.
type Decoded = (PyColumns, Vec<usize>, Vec<(usize, &'static str)>);

/// Decodes batches of one Avro source's records (`skewless_core::source::SourceDecoder`).
#[pyclass(module = "engine._native", name = "SourceDecoder", frozen)]
pub struct PySourceDecoder {
    inner: SourceDecoder,
}

#[pymethods]
impl PySourceDecoder {
    #[new]
    #[pyo3(signature = (
        schema_json, format, wire, schema_id, key_fields, timestamp_field, timestamp_divisor,
        float_fields, max_record_bytes, max_future_ms
    ))]
    #[allow(clippy::too_many_arguments)] // one argument per SourcePlan/DecodeLimits field
    fn new(
        schema_json: &str,
        format: &str,
        wire: &str,
        schema_id: Option<u32>,
        key_fields: Vec<String>,
        timestamp_field: &str,
        timestamp_divisor: i64,
        float_fields: Vec<String>,
        max_record_bytes: u64,
        max_future_ms: i64,
    ) -> PyResult<Self> {
        let wire = match wire {
            "schemaless" => Wire::Schemaless,
            "confluent" => Wire::Confluent,
            other => {
                return Err(PyValueError::new_err(format!(
                    "wire must be 'schemaless' or 'confluent', got {other:?}"
                )))
            }
        };
        let spec = SourceSpec {
            schema_json,
            format,
            wire,
            schema_id,
            key_fields: &key_fields,
            timestamp_field,
            timestamp_divisor,
            float_fields: &float_fields,
            limits: Limits {
                max_record_bytes,
                max_future_ms,
            },
        };
        let inner = SourceDecoder::new(&spec).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PySourceDecoder { inner })
    }

    /// Decode records `(keys[i], values[i])` at worker clock `now_ms`: `(columns, kept,
    /// refused)` with the input index of each kept row and `(index, code)` per refusal.
    fn decode_batch(
        &self,
        py: Python<'_>,
        keys: Vec<Option<Bound<'_, PyBytes>>>,
        values: Vec<Option<Bound<'_, PyBytes>>>,
        now_ms: i64,
    ) -> PyResult<Decoded> {
        if keys.len() != values.len() {
            return Err(PyValueError::new_err(format!(
                "{} keys for {} values: expected one key (or None) per value",
                keys.len(),
                values.len()
            )));
        }
        // The Vecs above hold a reference to each bytes object, so the slices stay valid
        // while the GIL is released.
        let (k, v) = (slices(&keys), slices(&values));
        let (batch, kept, refused) = py.detach(|| self.inner.decode_batch(&k, &v, now_ms));
        let refused = refused.into_iter().map(|f| (f.index, f.code)).collect();
        Ok((PyColumns::new(batch), kept, refused))
    }
}

fn slices<'a>(v: &'a [Option<Bound<'_, PyBytes>>]) -> Vec<Option<&'a [u8]>> {
    v.iter().map(|b| b.as_ref().map(|b| b.as_bytes())).collect()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySourceDecoder>()?;
    Ok(())
}
