//! Avro object container files: header (magic, metadata, sync marker), then blocks of
//! records, each compressed by the file's codec (`null` or `deflate`, raw DEFLATE) and
//! followed by the sync marker, which is checked.

use super::decode::{Cursor, Fail, Plan};
use super::schema::Schema;
use super::{AvroError, Metadata, Reason};
use crate::columns::Batch;

const MAGIC: &[u8; 4] = b"Obj\x01";
const SYNC: usize = 16;
/// Largest decompressed block accepted (a corrupt size must not exhaust memory).
const MAX_BLOCK: usize = 1 << 30;

#[derive(Clone, Copy, PartialEq)]
enum Codec {
    Null,
    Deflate,
}

fn header_err(what: impl std::fmt::Display, f: Fail) -> AvroError {
    AvroError::Container(format!(
        "header: {what} at file byte {}: {}",
        f.offset, f.reason
    ))
}

/// Decode an Avro object container file whose writer schema is a record into columns.
///
/// Columns are the record's top-level fields; a field whose type is a record (or
/// `["null", record]`) is flattened one level into columns `<field>.<sub>`. When
/// `projection` is given only those columns are built (a flattened field's own name selects
/// all its columns); the rest are skipped on the wire. The header's metadata is returned
/// too, in file order.
pub fn read_container(
    bytes: &[u8],
    projection: Option<&[&str]>,
) -> Result<(Batch, Metadata), AvroError> {
    if bytes.len() < MAGIC.len() || &bytes[..4] != MAGIC {
        return Err(AvroError::Container(format!(
            "not an Avro object container file: starts with {:?}, expected {:?}",
            &bytes[..bytes.len().min(4)],
            MAGIC
        )));
    }
    let mut cur = Cursor::new(bytes);
    cur.pos = 4;
    let mut meta: Metadata = Vec::new();
    loop {
        let at = cur.pos;
        let n = cur
            .long()
            .map_err(|f| header_err("metadata block count", f))?;
        if n == 0 {
            break;
        }
        if n < 0 {
            cur.long()
                .map_err(|f| header_err("metadata block size", f))?;
        }
        for _ in 0..n.unsigned_abs() {
            let k = cur.bytes().map_err(|f| header_err("metadata key", f))?;
            let k = std::str::from_utf8(k).map_err(|_| {
                header_err(
                    "metadata key",
                    Fail {
                        offset: at,
                        reason: Reason::InvalidUtf8,
                    },
                )
            })?;
            let v = cur
                .bytes()
                .map_err(|f| header_err(format!("metadata value {k:?}"), f))?;
            meta.push((k.to_string(), v.to_vec()));
        }
    }
    let sync: [u8; SYNC] = match bytes.get(cur.pos..cur.pos + SYNC) {
        Some(s) => s.try_into().expect("16 bytes"),
        None => {
            return Err(AvroError::Container(
                "header: truncated before the sync marker".into(),
            ))
        }
    };
    cur.pos += SYNC;
    let get = |key: &str| {
        meta.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    };
    let schema_text = get("avro.schema")
        .ok_or_else(|| AvroError::Container("header has no avro.schema".into()))?;
    let schema_text = std::str::from_utf8(schema_text)
        .map_err(|_| AvroError::Container("header: avro.schema is not UTF-8".into()))?;
    let schema = Schema::parse(schema_text)?;
    let codec = match get("avro.codec") {
        None | Some(b"null") | Some(b"") => Codec::Null,
        Some(b"deflate") => Codec::Deflate,
        Some(other) => {
            return Err(AvroError::Container(format!(
                "codec {:?} is not supported (only null and deflate)",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let mut plan = Plan::new(&schema, projection)?;
    plan.reserve(count_records(&bytes[cur.pos..]));
    let mut inflater = libdeflater::Decompressor::new();
    let mut out: Vec<u8> = Vec::new();
    let mut block = 0usize;
    while cur.pos < bytes.len() {
        let start = cur.pos;
        let where_ = |what: &str| format!("block {block} (file byte {start}): {what}");
        let count = cur
            .long()
            .map_err(|f| AvroError::Container(where_(&format!("record count: {}", f.reason))))?;
        let size = cur
            .long()
            .map_err(|f| AvroError::Container(where_(&format!("byte size: {}", f.reason))))?;
        if count < 0 || size < 0 {
            return Err(AvroError::Container(where_(&format!(
                "negative record count {count} or byte size {size}"
            ))));
        }
        let size = size as usize;
        let data = match bytes.get(cur.pos..cur.pos.saturating_add(size)) {
            Some(d) => d,
            None => {
                return Err(AvroError::Container(where_(&format!(
                    "truncated: the block says {size} bytes, the file has {} left",
                    bytes.len() - cur.pos
                ))))
            }
        };
        cur.pos += size;
        match bytes.get(cur.pos..cur.pos + SYNC) {
            Some(s) if s == sync => cur.pos += SYNC,
            Some(_) => {
                return Err(AvroError::Container(where_(
                    "sync marker does not match the header's (corrupt file)",
                )))
            }
            None => {
                return Err(AvroError::Container(where_(
                    "truncated before the sync marker",
                )))
            }
        }
        let data: &[u8] = match codec {
            Codec::Null => data,
            Codec::Deflate => {
                if out.is_empty() {
                    out.resize((size * 4).clamp(64 << 10, MAX_BLOCK), 0);
                }
                loop {
                    match inflater.deflate_decompress(data, &mut out) {
                        Ok(n) => break &out[..n],
                        Err(libdeflater::DecompressionError::InsufficientSpace)
                            if out.len() < MAX_BLOCK =>
                        {
                            let grown = (out.len() * 2).min(MAX_BLOCK);
                            out.resize(grown, 0);
                        }
                        Err(e) => {
                            return Err(AvroError::Container(where_(&format!(
                                "deflate data is corrupt: {e}"
                            ))))
                        }
                    }
                }
            }
        };
        let mut rec = Cursor::new(data);
        for _ in 0..count {
            plan.record(&mut rec)
                .map_err(|(f, path)| AvroError::Decode {
                    context: format!("container block {block} (file byte {start})"),
                    path: path.to_string(),
                    offset: f.offset,
                    reason: f.reason,
                })?;
        }
        if rec.pos != data.len() {
            return Err(AvroError::Container(where_(&format!(
                "{} bytes left after its {count} records",
                data.len() - rec.pos
            ))));
        }
        block += 1;
    }
    Ok((plan.finish(), meta))
}

/// The records the blocks' headers announce (a cheap pre-pass to size the columns once;
/// stops quietly at anything malformed, which the decoding pass then reports).
fn count_records(blocks: &[u8]) -> usize {
    let mut cur = Cursor::new(blocks);
    let mut total = 0usize;
    while cur.pos < blocks.len() {
        let (Ok(count), Ok(size)) = (cur.long(), cur.long()) else {
            break;
        };
        if count < 0 || size < 0 {
            break;
        }
        cur.pos = cur.pos.saturating_add(size as usize).saturating_add(SYNC);
        // Never trust a count beyond what the bytes could hold.
        total = total.saturating_add((count as usize).min(blocks.len()));
    }
    total.min(blocks.len().saturating_mul(64)).min(1 << 26)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timing: `AVRO_BENCH_FILE=/path/log.avro cargo test --release -p skewless-core
    /// avro_read_timing -- --ignored --nocapture` (benchmarks/avro_read.py writes such a file).
    #[test]
    #[ignore]
    fn avro_read_timing() {
        let Ok(path) = std::env::var("AVRO_BENCH_FILE") else {
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let (batch, _) = read_container(&bytes, None).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "{} records in {s:.3}s: {:.2}M records/s",
                batch.rows,
                batch.rows as f64 / s / 1e6
            );
        }
    }
}
