//! Batch decoding of a source's Kafka records into columns (DESIGN §6 dead letters, §8 native
//! core): the valid records become one [`Batch`], every other record a [`Refusal`] with the
//! reason code `engine.serde.SourceCodec.decode` gives it.
//!
//! The checks run per record in `SourceCodec._decode`'s order: null value → oversized →
//! key not UTF-8 → Confluent header and schema id → Avro datum (truncated, malformed,
//! trailing bytes, strings not UTF-8) → non-finite floats → null keys → negative
//! timestamp → timestamp too far ahead. Only codes cross: the reason *texts* are built by
//! Python, which re-decodes the (rare) refused records one by one.
//!
//! Only Avro sources (schemaless or Confluent wire format) decode here; JSON sources stay
//! on the Python path. Columns are the schema's top-level fields in schema order, named as
//! [`DatumDecoder`] names them (a field whose type is a record becomes `<field>.<sub>`
//! columns).

use crate::avro::{AvroError, DatumDecoder, Reason, Schema};
use crate::columns::{Batch, Column, ColumnData};
use crate::value::Value;

/// How a source's values are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// A bare Avro datum.
    Schemaless,
    /// Magic byte 0, a big-endian 4-byte schema id, then the datum.
    Confluent,
}

/// Bounds beyond which a record is refused (`engine.serde.DecodeLimits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key + value, in bytes.
    pub max_record_bytes: u64,
    /// How far ahead of `now_ms` an event time may be.
    pub max_future_ms: i64,
}

/// What a [`SourceDecoder`] needs to know about its source (`engine.plan.SourcePlan`).
#[derive(Clone, Debug)]
pub struct SourceSpec<'a> {
    /// The plain Avro schema JSON (logical types removed: `engine.schema.plain_schema`).
    pub schema_json: &'a str,
    /// `"avro"` (the only format decoded natively) or `"json"` (refused with a reason).
    pub format: &'a str,
    pub wire: Wire,
    /// The schema id a Confluent value must carry (`None`: any).
    pub schema_id: Option<u32>,
    pub key_fields: &'a [String],
    pub timestamp_field: &'a str,
    /// Raw timestamp `div_euclid` divisor == milliseconds (1 for ms, 1000 for µs).
    pub timestamp_divisor: i64,
    /// Fields that must be finite when not null.
    pub float_fields: &'a [String],
    pub limits: Limits,
}

/// A source that cannot be decoded natively, or a spec that does not fit its schema.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SourceError {
    #[error(transparent)]
    Avro(#[from] AvroError),
    #[error("source format {0:?} is not decoded natively (only 'avro' is; JSON sources decode in Python)")]
    Format(String),
    #[error("source spec: {0}")]
    Spec(String),
}

/// One record refused, by its index in the input batch and its reason code (one of
/// `engine.serde.REASON_CODES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub code: &'static str,
}

/// What [`SourceDecoder::decode_batch`] returns: the kept rows' columns, the input index
/// of each kept row, and the refusals in input order.
pub type Decoded = (Batch, Vec<usize>, Vec<Refusal>);

const HEADER: usize = 5;

/// Decodes batches of one source's Kafka records; built once per source.
///
/// Example:
/// ```
/// use skewless_core::source::{Limits, SourceDecoder, SourceSpec, Wire};
/// let schema = r#"{"type":"record","name":"E","fields":[{"name":"k","type":"string"},{"name":"ts","type":"long"}]}"#;
/// let keys = ["k".to_string()];
/// let dec = SourceDecoder::new(&SourceSpec {
///     schema_json: schema, format: "avro", wire: Wire::Schemaless, schema_id: None,
///     key_fields: &keys, timestamp_field: "ts", timestamp_divisor: 1, float_fields: &[],
///     limits: Limits { max_record_bytes: 1 << 20, max_future_ms: 86_400_000 },
/// }).unwrap();
/// let good: &[u8] = &[2, b'a', 4]; // k="a", ts=2
/// let (batch, kept, refused) = dec.decode_batch(&[None, None], &[Some(good), None], 10);
/// assert_eq!((batch.rows, kept, refused[0].code), (1, vec![0], "null_value"));
/// ```
pub struct SourceDecoder {
    schema: Schema,
    wire: Wire,
    schema_id: Option<u32>,
    limits: Limits,
    /// Column index of each float field, each key field, and the timestamp field.
    floats: Vec<usize>,
    keys: Vec<usize>,
    ts: usize,
    divisor: i64,
}

impl SourceDecoder {
    /// A decoder for `spec`; fails when the format is not Avro, the schema does not parse
    /// or a named field has no column of the right kind.
    pub fn new(spec: &SourceSpec) -> Result<SourceDecoder, SourceError> {
        if spec.format != "avro" {
            return Err(SourceError::Format(spec.format.to_string()));
        }
        if spec.timestamp_divisor < 1 {
            return Err(SourceError::Spec(format!(
                "timestamp divisor must be at least 1, got {}",
                spec.timestamp_divisor
            )));
        }
        let schema = Schema::parse(spec.schema_json)?;
        let empty = DatumDecoder::new(&schema, None)?.finish();
        let index = |name: &str, what: &str| {
            empty.names.iter().position(|n| n == name).ok_or_else(|| {
                SourceError::Spec(format!(
                    "{what} {name:?} is not a column of the schema (columns: {:?})",
                    empty.names
                ))
            })
        };
        let mut floats = Vec::new();
        for name in spec.float_fields {
            let i = index(name, "float field")?;
            if !matches!(empty.columns[i].data, ColumnData::Float(_)) {
                return Err(SourceError::Spec(format!(
                    "float field {name:?} is not a float or double"
                )));
            }
            floats.push(i);
        }
        let keys = spec
            .key_fields
            .iter()
            .map(|k| index(k, "key field"))
            .collect::<Result<Vec<_>, _>>()?;
        let ts = index(spec.timestamp_field, "timestamp field")?;
        if !matches!(empty.columns[ts].data, ColumnData::Int(_)) {
            return Err(SourceError::Spec(format!(
                "timestamp field {:?} is not an int or long",
                spec.timestamp_field
            )));
        }
        Ok(SourceDecoder {
            schema,
            wire: spec.wire,
            schema_id: spec.schema_id,
            limits: spec.limits,
            floats,
            keys,
            ts,
            divisor: spec.timestamp_divisor,
        })
    }

    /// Decode one batch of Kafka records (`keys[i]`, `values[i]`) at worker clock `now_ms`.
    ///
    /// Returns the valid records' columns (input order), the input index of each kept row
    /// and a refusal per other record; every input index is in exactly one of the two.
    ///
    /// # Panics
    /// When `keys` and `values` differ in length.
    pub fn decode_batch(
        &self,
        keys: &[Option<&[u8]>],
        values: &[Option<&[u8]>],
        now_ms: i64,
    ) -> Decoded {
        assert_eq!(keys.len(), values.len(), "one key per value");
        let mut dec = DatumDecoder::new(&self.schema, None)
            .expect("the plan was built from this schema in SourceDecoder::new");
        let mut kept = Vec::with_capacity(values.len());
        let mut refused = Vec::new();
        for (index, (key, value)) in keys.iter().zip(values).enumerate() {
            match self
                .frame(*key, *value)
                .and_then(|body| datum(&mut dec, body))
            {
                Ok(()) => kept.push(index),
                Err(code) => refused.push(Refusal { index, code }),
            }
        }
        let batch = dec.finish();
        let late: Vec<(usize, &'static str)> = (0..batch.rows)
            .filter_map(|r| self.check(&batch, r, now_ms).err().map(|code| (r, code)))
            .collect();
        if late.is_empty() {
            return (batch, kept, refused);
        }
        let mut good = Vec::with_capacity(batch.rows - late.len());
        let mut bad = late.iter().peekable();
        for (r, &index) in kept.iter().enumerate() {
            match bad.peek() {
                Some(&&(b, code)) if b == r => {
                    refused.push(Refusal { index, code });
                    bad.next();
                }
                _ => good.push(r),
            }
        }
        refused.sort_unstable_by_key(|f| f.index);
        let kept = good.iter().map(|&r| kept[r]).collect();
        (gather(&batch, &good), kept, refused)
    }

    /// The Avro datum of one record, after the checks that come before decoding.
    #[inline]
    fn frame<'v>(
        &self,
        key: Option<&[u8]>,
        value: Option<&'v [u8]>,
    ) -> Result<&'v [u8], &'static str> {
        let value = value.ok_or("null_value")?;
        let size = value.len() as u64 + key.map_or(0, |k| k.len() as u64);
        if size > self.limits.max_record_bytes {
            return Err("oversized");
        }
        if let Some(key) = key {
            if !key.is_ascii() && std::str::from_utf8(key).is_err() {
                return Err("bad_key");
            }
        }
        match self.wire {
            Wire::Schemaless => Ok(value),
            Wire::Confluent => {
                if value.len() < HEADER || value[0] != 0 {
                    return Err("bad_magic");
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                if self.schema_id.is_some_and(|want| want != id) {
                    return Err("unknown_schema_id");
                }
                Ok(&value[HEADER..])
            }
        }
    }

    /// The checks on a decoded row (`SourceCodec._check`).
    #[inline]
    fn check(&self, batch: &Batch, r: usize, now_ms: i64) -> Result<(), &'static str> {
        for &c in &self.floats {
            let col = &batch.columns[c];
            if let ColumnData::Float(v) = &col.data {
                if !v[r].is_finite() && col.is_valid(r) {
                    return Err("not_finite");
                }
            }
        }
        for &c in &self.keys {
            let col = &batch.columns[c];
            let null = !col.is_valid(r)
                || matches!(&col.data, ColumnData::Value(v) if v[r] == Value::Null);
            if null {
                return Err("null_key");
            }
        }
        let col = &batch.columns[self.ts];
        let ColumnData::Int(raw) = &col.data else {
            unreachable!("checked in new")
        };
        if !col.is_valid(r) {
            return Err("missing_field");
        }
        let ts = raw[r].div_euclid(self.divisor);
        if ts < 0 {
            return Err("bad_timestamp");
        }
        if i128::from(ts) > i128::from(now_ms) + i128::from(self.limits.max_future_ms) {
            return Err("future_timestamp");
        }
        Ok(())
    }
}

/// Decode one datum into `dec`, or the reason code of its failure.
#[inline]
fn datum(dec: &mut DatumDecoder, body: &[u8]) -> Result<(), &'static str> {
    dec.push(body).map_err(|e| match e {
        AvroError::Decode {
            reason: Reason::InvalidUtf8,
            ..
        } => "bad_utf8",
        AvroError::Decode { .. } => "bad_avro",
        _ => "decoder_error",
    })
}

/// The rows `rows` of `batch`, in that order.
fn gather(batch: &Batch, rows: &[usize]) -> Batch {
    let columns = batch
        .columns
        .iter()
        .map(|src| {
            let mut col = Column::empty_like(&src.data);
            let same = col.extend_gather(src, rows);
            debug_assert!(same, "a column gathers into its own kind");
            if col.valid.as_ref().is_some_and(|v| v.iter().all(|&ok| ok)) {
                col.valid = None;
            }
            col
        })
        .collect();
    Batch {
        names: batch.names.clone(),
        columns,
        rows: rows.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"Tx","fields":[
        {"name":"customer_id","type":["null","string"]},
        {"name":"amount","type":["null","double"]},
        {"name":"ratio","type":"float"},
        {"name":"channel","type":{"type":"enum","name":"C","symbols":["web","pos"]}},
        {"name":"ts","type":"long"}]}"#;
    const NOW: i64 = 1_800_000_000_000;

    fn zz(v: i64, out: &mut Vec<u8>) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        while u >= 0x80 {
            out.push((u as u8) | 0x80);
            u >>= 7;
        }
        out.push(u as u8);
    }

    fn row(customer: Option<&[u8]>, amount: Option<f64>, ratio: f32, ts: i64) -> Vec<u8> {
        let mut d = Vec::new();
        match customer {
            None => zz(0, &mut d),
            Some(c) => {
                zz(1, &mut d);
                zz(c.len() as i64, &mut d);
                d.extend_from_slice(c);
            }
        }
        match amount {
            None => zz(0, &mut d),
            Some(a) => {
                zz(1, &mut d);
                d.extend_from_slice(&a.to_le_bytes());
            }
        }
        d.extend_from_slice(&ratio.to_le_bytes());
        zz(1, &mut d);
        zz(ts, &mut d);
        d
    }

    fn decoder(wire: Wire, divisor: i64) -> SourceDecoder {
        let keys = ["customer_id".to_string()];
        let floats = ["amount".to_string(), "ratio".to_string()];
        SourceDecoder::new(&SourceSpec {
            schema_json: SCHEMA,
            format: "avro",
            wire,
            schema_id: Some(7),
            key_fields: &keys,
            timestamp_field: "ts",
            timestamp_divisor: divisor,
            float_fields: &floats,
            limits: Limits {
                max_record_bytes: 64,
                max_future_ms: 86_400_000,
            },
        })
        .unwrap()
    }

    fn codes(dec: &SourceDecoder, values: &[Vec<u8>], keys: &[Option<&[u8]>]) -> Decoded {
        let v: Vec<Option<&[u8]>> = values.iter().map(|v| Some(&v[..])).collect();
        dec.decode_batch(keys, &v, NOW)
    }

    #[test]
    fn each_check_gives_its_code_in_order_and_valid_rows_stay_in_input_order() {
        let dec = decoder(Wire::Schemaless, 1);
        let good = |ts| row(Some(b"c1"), Some(1.5), 0.25, ts);
        let mut trailing = good(NOW);
        trailing.push(0);
        let mut bad_utf8 = good(NOW);
        bad_utf8[2] = 0xff;
        let values = vec![
            good(NOW - 1),
            vec![0; 65],
            good(NOW),
            good(NOW)[..3].to_vec(),
            trailing,
            bad_utf8,
            row(Some(b"c1"), Some(f64::NAN), 0.25, NOW),
            row(Some(b"c1"), None, f32::NEG_INFINITY, NOW),
            row(None, Some(f64::INFINITY), 0.25, NOW), // not_finite before null_key
            row(None, None, 0.25, NOW),
            good(-5),
            good(NOW + 86_400_001),
            good(NOW + 86_400_000),
            row(Some(b"c2"), None, 0.5, 0),
        ];
        let mut keys: Vec<Option<&[u8]>> = vec![None; values.len()];
        keys[2] = Some(b"\xc3\x28");
        let (batch, kept, refused) = codes(&dec, &values, &keys);
        let got: Vec<(usize, &str)> = refused.iter().map(|f| (f.index, f.code)).collect();
        assert_eq!(
            got,
            [
                (1, "oversized"),
                (2, "bad_key"),
                (3, "bad_avro"),
                (4, "bad_avro"),
                (5, "bad_utf8"),
                (6, "not_finite"),
                (7, "not_finite"),
                (8, "not_finite"),
                (9, "null_key"),
                (10, "bad_timestamp"),
                (11, "future_timestamp"),
            ]
        );
        assert_eq!(kept, [0, 12, 13]);
        assert_eq!(batch.rows, 3);
        assert_eq!(
            batch.column("ts").unwrap().data,
            ColumnData::Int(vec![NOW - 1, NOW + 86_400_000, 0])
        );
        let amount = batch.column("amount").unwrap();
        assert_eq!(amount.valid, Some(vec![true, true, false]));
        assert_eq!(batch.column("customer_id").unwrap().str_at(2), Some("c2"));
        assert_eq!(batch.column("customer_id").unwrap().valid, None);
        assert_eq!(
            batch.column("channel").unwrap().value_at(1),
            Value::Str("pos".into())
        );
    }

    #[test]
    fn null_values_and_the_confluent_header() {
        let dec = decoder(Wire::Confluent, 1);
        let body = row(Some(b"c1"), None, 1.0, NOW);
        let framed = |magic: u8, id: u32| {
            let mut v = vec![magic];
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&body);
            v
        };
        let values = [
            Some(&framed(0, 7)[..]),
            None,
            Some(&[0u8, 0, 7][..]),
            Some(&framed(1, 7)[..]),
            Some(&framed(0, 8)[..]),
            Some(&body[..]),
        ];
        let (batch, kept, refused) = dec.decode_batch(&[None; 6], &values, NOW);
        let got: Vec<&str> = refused.iter().map(|f| f.code).collect();
        assert_eq!(
            got,
            [
                "null_value",
                "bad_magic",
                "bad_magic",
                "unknown_schema_id",
                "bad_magic"
            ]
        );
        assert_eq!((batch.rows, kept), (1, vec![0]));
    }

    #[test]
    fn microsecond_timestamps_floor_divide_and_the_empty_batch() {
        let dec = decoder(Wire::Schemaless, 1000);
        let values = [
            row(Some(b"c"), None, 0.0, -1),
            row(Some(b"c"), None, 0.0, 999),
        ];
        let (_, kept, refused) = codes(&dec, &values, &[None, None]);
        assert_eq!((kept, refused[0].code), (vec![1], "bad_timestamp"));
        let (batch, kept, refused) = dec.decode_batch(&[], &[], NOW);
        assert_eq!((batch.rows, kept.len(), refused.len()), (0, 0, 0));
        assert_eq!(batch.names.len(), 5);
    }

    #[test]
    fn specs_that_do_not_fit_are_refused() {
        let spec = |format, ts, floats: &'static [String]| {
            SourceDecoder::new(&SourceSpec {
                schema_json: SCHEMA,
                format,
                wire: Wire::Schemaless,
                schema_id: None,
                key_fields: &[],
                timestamp_field: ts,
                timestamp_divisor: 1,
                float_fields: floats,
                limits: Limits {
                    max_record_bytes: 1,
                    max_future_ms: 0,
                },
            })
            .err()
            .unwrap()
            .to_string()
        };
        assert!(spec("json", "ts", &[]).contains("JSON"));
        assert!(spec("avro", "nope", &[]).contains("\"nope\""));
        assert!(spec("avro", "amount", &[]).contains("not an int"));
    }
}
