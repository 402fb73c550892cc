//! Avro object container files written from columns: the event log's files (DESIGN §4).
//!
//! [`write_container`] encodes one file of the envelope layout
//! `connectors.eventlog.envelope_schema` defines — `partition` int, `offset` long, `key`
//! `["null", "bytes"]`, `event_time` long, `processed_at` long, `payload` the source's
//! record — from envelope columns plus a payload [`Batch`], without a per-record object.
//!
//! Payload fields are found by name. Typed columns write primitives, enums (from a string
//! column, the symbol looked up), fixed and bytes, and `["null", T]` unions (the column's
//! validity picks the branch); `Value` columns write any type, arrays, maps, records and
//! unions of several types included (the branch is picked from the value, as fastavro does).
//! A record field may also come flattened, as [`super::read_container`] returns it
//! (`<field>.<sub>` columns; a nullable record is null where all of them are). A missing
//! column writes null into a nullable field and is an error otherwise.
//!
//! Blocks follow fastavro's rule (a block is closed once its encoded bytes reach
//! `block_bytes`), so with the same sync marker and codec `null` the file is byte for byte
//! what `fastavro.writer` writes; `deflate` is raw DEFLATE (libdeflate) as Avro requires.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use super::schema::{Node, NodeId, Schema};
use super::AvroError;
use crate::columns::{Batch, Column, ColumnData};
use crate::value::Value;

const MAGIC: &[u8; 4] = b"Obj\x01";

/// The envelope's fields, in the order the schema must declare them.
pub const ENVELOPE_FIELDS: [&str; 6] = [
    "partition",
    "offset",
    "key",
    "event_time",
    "processed_at",
    "payload",
];

/// How a container file is laid out: its codec, sync marker and block size (a block is
/// closed once its encoded records reach `block_bytes`, fastavro's `sync_interval` rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileOptions {
    pub codec: Codec,
    pub sync: [u8; 16],
    pub block_bytes: usize,
}

/// A container file's block codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Null,
    /// Raw DEFLATE at this libdeflate level (1 fastest … 12 smallest).
    Deflate(i32),
}

impl Codec {
    /// The codec's name in the header's `avro.codec`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Null => "null",
            Codec::Deflate(_) => "deflate",
        }
    }
}

/// The partition of every record: one value for the file, or one per record.
#[derive(Clone, Copy, Debug)]
pub enum Partition<'a> {
    One(i32),
    Each(&'a [i32]),
}

/// The envelope fields of the records, one entry per record (`key`: a bytes or string
/// column with validity, `None` when every key is null).
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeColumns<'a> {
    pub partition: Partition<'a>,
    pub offset: &'a [i64],
    pub key: Option<&'a Column>,
    pub event_time: &'a [i64],
    pub processed_at: &'a [i64],
}

fn err(what: impl std::fmt::Display) -> AvroError {
    AvroError::Encode(what.to_string())
}

/// Write an object container file of `schema` (the envelope record schema) holding one
/// record per row of `envelope`: record `i` takes payload row `payload_rows[i]` (all
/// rows in order when `None`), so a caller drops or reorders rows without copying columns.
///
/// `metadata` goes into the header in order; it must hold `avro.schema` (the schema's JSON
/// as the file should carry it); `avro.codec` is added after it unless given. Errors name the field, the row and what
/// is wrong (a null in a non-nullable field, an int out of range, an unknown enum symbol…).
pub fn write_container(
    schema: &Schema,
    metadata: &[(String, Vec<u8>)],
    file: FileOptions,
    envelope: EnvelopeColumns<'_>,
    payload: &Batch,
    payload_rows: Option<&[usize]>,
) -> Result<Vec<u8>, AvroError> {
    let FileOptions {
        codec,
        sync,
        block_bytes,
    } = file;
    let rows = envelope.offset.len();
    match payload_rows {
        Some(sel) => {
            if sel.len() != rows {
                return Err(err(format!(
                    "{} payload rows selected for {rows} envelopes",
                    sel.len()
                )));
            }
            if let Some(&bad) = sel.iter().find(|&&r| r >= payload.rows) {
                return Err(err(format!(
                    "payload row {bad} selected, the payload has {} rows",
                    payload.rows
                )));
            }
        }
        None if payload.rows != rows => {
            return Err(err(format!(
                "envelope column 'payload' has {} rows, 'offset' has {rows}",
                payload.rows
            )))
        }
        None => {}
    }
    let plan = envelope_plan(schema, &envelope, payload, rows)?;
    let (head, payload_slot) = plan.split_at(5);
    let payload_slot = &payload_slot[0];
    let mut out = Vec::with_capacity(4096);
    write_header(&mut out, metadata, codec, sync)?;
    let mut blocks = BlockSink::new(codec, sync)?;
    let mut sized = false;
    let mut buf: Vec<u8> = Vec::with_capacity(block_bytes.saturating_add(4096).min(64 << 20));
    let mut count = 0usize;
    for row in 0..rows {
        for slot in head {
            slot.write(schema, &mut buf, row)?;
        }
        let prow = payload_rows.map_or(row, |sel| sel[row]);
        payload_slot.write(schema, &mut buf, prow)?;
        count += 1;
        if buf.len() >= block_bytes {
            if !sized {
                // Size the file from its first block, once (no growth copies after).
                let per_row = buf.len().div_ceil(count);
                let ratio = if matches!(codec, Codec::Null) { 1 } else { 2 };
                out.reserve((per_row * rows / ratio).min(1 << 32) + 1024);
                sized = true;
            }
            blocks.flush(&mut out, &buf, count)?;
            buf.clear();
            count = 0;
        }
    }
    if count > 0 {
        blocks.flush(&mut out, &buf, count)?;
    }
    Ok(out)
}

/// The length of the header `write_container` gives a file of these `metadata`, `codec`
/// and `sync`: the file's blocks start there (what an append to an open file of the same
/// header takes).
pub fn header_len(
    metadata: &[(String, Vec<u8>)],
    codec: Codec,
    sync: [u8; 16],
) -> Result<usize, AvroError> {
    let mut out = Vec::with_capacity(1024);
    write_header(&mut out, metadata, codec, sync)?;
    Ok(out.len())
}

fn write_header(
    out: &mut Vec<u8>,
    metadata: &[(String, Vec<u8>)],
    codec: Codec,
    sync: [u8; 16],
) -> Result<(), AvroError> {
    out.extend_from_slice(MAGIC);
    write_metadata(out, metadata, codec)?;
    out.extend_from_slice(&sync);
    Ok(())
}

fn write_metadata(
    out: &mut Vec<u8>,
    metadata: &[(String, Vec<u8>)],
    codec: Codec,
) -> Result<(), AvroError> {
    if !metadata.iter().any(|(k, _)| k == "avro.schema") {
        return Err(err("header metadata must hold avro.schema"));
    }
    let codec_entry;
    let mut entries: Vec<(&str, &[u8])> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    match metadata.iter().find(|(k, _)| k == "avro.codec") {
        Some((_, v)) if v.as_slice() != codec.name().as_bytes() => {
            return Err(err(format!(
                "header metadata says avro.codec {:?}, the file is written with {:?}",
                String::from_utf8_lossy(v),
                codec.name()
            )))
        }
        Some(_) => {}
        None => {
            codec_entry = codec.name().as_bytes();
            entries.push(("avro.codec", codec_entry));
        }
    }
    put_long(out, entries.len() as i64);
    for (k, v) in entries {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v);
    }
    put_long(out, 0);
    Ok(())
}

/// Closes blocks: record count, byte size, (compressed) bytes, sync marker.
struct BlockSink {
    codec: Codec,
    sync: [u8; 16],
    compressor: Option<libdeflater::Compressor>,
    packed: Vec<u8>,
}

impl BlockSink {
    fn new(codec: Codec, sync: [u8; 16]) -> Result<BlockSink, AvroError> {
        let compressor = match codec {
            Codec::Null => None,
            Codec::Deflate(level) => {
                let lvl = libdeflater::CompressionLvl::new(level)
                    .map_err(|_| err(format!("deflate level must be in 0..=12, got {level}")))?;
                Some(libdeflater::Compressor::new(lvl))
            }
        };
        Ok(BlockSink {
            codec,
            sync,
            compressor,
            packed: Vec::new(),
        })
    }

    fn flush(&mut self, out: &mut Vec<u8>, data: &[u8], count: usize) -> Result<(), AvroError> {
        put_long(out, count as i64);
        match (self.codec, self.compressor.as_mut()) {
            (Codec::Deflate(_), Some(c)) => {
                self.packed.resize(c.deflate_compress_bound(data.len()), 0);
                let n = c
                    .deflate_compress(data, &mut self.packed)
                    .map_err(|e| err(format!("deflate failed: {e}")))?;
                put_bytes(out, &self.packed[..n]);
            }
            _ => put_bytes(out, data),
        }
        out.extend_from_slice(&self.sync);
        Ok(())
    }
}

#[inline]
fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    out.reserve(10); // the pushes below then never reallocate (no memcpy call per varint)
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Which cells of a slot hold a value.
enum Validity<'a> {
    All,
    Mask(Cow<'a, [bool]>),
    NoneValid,
}

impl Validity<'_> {
    #[inline]
    fn at(&self, i: usize) -> bool {
        match self {
            Validity::All => true,
            Validity::Mask(m) => m[i],
            Validity::NoneValid => false,
        }
    }
}

/// How one field's cells are encoded (the type already matched to the column).
enum Enc<'a> {
    /// Avro `null`: nothing on the wire.
    Null,
    /// The same encoded bytes in every record (a file's one partition).
    Constant(Vec<u8>),
    Int32(&'a [i32]),
    Long {
        v: &'a [i64],
        int: bool,
    },
    Double(&'a [f64]),
    Float(&'a [f64]),
    IntAsDouble {
        v: &'a [i64],
        float: bool,
    },
    Bool(&'a [bool]),
    /// `string` or `bytes`: length-prefixed.
    Bytes {
        offsets: &'a [i64],
        data: &'a [u8],
    },
    Fixed {
        offsets: &'a [i64],
        data: &'a [u8],
        size: usize,
    },
    Enum {
        offsets: &'a [i64],
        data: &'a [u8],
        index: FxHashMap<&'a [u8], i64>,
        name: &'a str,
    },
    /// Any type from `Value` cells (arrays, maps, records, unions of several types).
    Values {
        v: &'a [Value],
        node: NodeId,
    },
    /// A typed column under a union of several non-null types: cell by cell as values.
    Cells {
        col: &'a Column,
        node: NodeId,
    },
    /// A record from flattened `<field>.<sub>` columns.
    Record(Vec<Slot<'a>>),
}

/// One field: its encoder, which cells are null, and the `["null", T]` branch indexes.
struct Slot<'a> {
    path: String,
    enc: Enc<'a>,
    valid: Validity<'a>,
    /// `(null branch, value branch)` when the field is a nullable union.
    union: Option<(i64, i64)>,
}

impl Slot<'_> {
    #[inline]
    fn write(&self, schema: &Schema, out: &mut Vec<u8>, i: usize) -> Result<(), AvroError> {
        let valid = self.valid.at(i);
        match self.union {
            Some((null, _)) if !valid => {
                put_long(out, null);
                return Ok(());
            }
            Some((_, value)) => put_long(out, value),
            None if !valid => {
                return Err(err(format!(
                    "field '{}' row {i}: null, but the field is not nullable",
                    self.path
                )))
            }
            None => {}
        }
        match &self.enc {
            Enc::Null => {}
            Enc::Constant(b) => out.extend_from_slice(b),
            Enc::Int32(v) => put_long(out, i64::from(v[i])),
            Enc::Long { v, int } => {
                let x = v[i];
                if *int && i32::try_from(x).is_err() {
                    return Err(err(format!(
                        "field '{}' row {i}: {x} is out of range for an Avro int",
                        self.path
                    )));
                }
                put_long(out, x);
            }
            Enc::Double(v) => out.extend_from_slice(&v[i].to_le_bytes()),
            Enc::Float(v) => out.extend_from_slice(&(v[i] as f32).to_le_bytes()),
            Enc::IntAsDouble { v, float } => {
                if *float {
                    out.extend_from_slice(&(v[i] as f32).to_le_bytes())
                } else {
                    out.extend_from_slice(&(v[i] as f64).to_le_bytes())
                }
            }
            Enc::Bool(v) => out.push(u8::from(v[i])),
            Enc::Bytes { offsets, data } => {
                put_bytes(out, &data[offsets[i] as usize..offsets[i + 1] as usize])
            }
            Enc::Fixed {
                offsets,
                data,
                size,
            } => {
                let b = &data[offsets[i] as usize..offsets[i + 1] as usize];
                if b.len() != *size {
                    return Err(err(format!(
                        "field '{}' row {i}: {} bytes for a fixed of size {size}",
                        self.path,
                        b.len()
                    )));
                }
                out.extend_from_slice(b);
            }
            Enc::Enum {
                offsets,
                data,
                index,
                name,
            } => {
                let b = &data[offsets[i] as usize..offsets[i + 1] as usize];
                match index.get(b) {
                    Some(&k) => put_long(out, k),
                    None => {
                        return Err(err(format!(
                            "field '{}' row {i}: {:?} is not a symbol of enum {name}",
                            self.path,
                            String::from_utf8_lossy(b)
                        )))
                    }
                }
            }
            Enc::Values { v, node } => write_value(schema, *node, &v[i], out, &self.path, i)?,
            Enc::Cells { col, node } => {
                write_value(schema, *node, &col.value_at(i), out, &self.path, i)?
            }
            Enc::Record(slots) => {
                for s in slots {
                    s.write(schema, out, i)?;
                }
            }
        }
        Ok(())
    }
}

/// The non-null branch of a `["null", T]` / `[T, "null"]` union: `(null index, T index, T)`.
fn nullable(schema: &Schema, node: NodeId) -> Option<(i64, i64, NodeId)> {
    let Node::Union(branches) = schema.node(node) else {
        return None;
    };
    if branches.len() != 2 {
        return None;
    }
    match (schema.node(branches[0]), schema.node(branches[1])) {
        (Node::Null, other) if !matches!(other, Node::Null) => Some((0, 1, branches[1])),
        (other, Node::Null) if !matches!(other, Node::Null) => Some((1, 0, branches[0])),
        _ => None,
    }
}

fn type_name(node: &Node) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Boolean => "boolean".into(),
        Node::Int => "int".into(),
        Node::Long => "long".into(),
        Node::Float => "float".into(),
        Node::Double => "double".into(),
        Node::Bytes => "bytes".into(),
        Node::String => "string".into(),
        Node::Fixed { name, .. } => format!("fixed {name}"),
        Node::Enum { name, .. } => format!("enum {name}"),
        Node::Array(_) => "array".into(),
        Node::Map(_) => "map".into(),
        Node::Record { name, .. } => format!("record {name}"),
        Node::Union(_) => "union".into(),
    }
}

fn column_kind(data: &ColumnData) -> &'static str {
    match data {
        ColumnData::Int(_) => "int",
        ColumnData::Float(_) => "float",
        ColumnData::Bool(_) => "bool",
        ColumnData::Str { .. } => "str",
        ColumnData::Bytes { .. } => "bytes",
        ColumnData::Value(_) => "value",
    }
}

fn validity(col: &Column) -> Validity<'_> {
    match &col.valid {
        None => Validity::All,
        Some(v) => Validity::Mask(Cow::Borrowed(v.as_slice())),
    }
}

/// The slot of field `path` of type `node` written from `col`.
fn column_slot<'a>(
    schema: &'a Schema,
    node: NodeId,
    col: &'a Column,
    path: String,
    rows: usize,
) -> Result<Slot<'a>, AvroError> {
    if col.len() != rows {
        return Err(err(format!(
            "field '{path}': column has {} cells, the batch {rows} rows",
            col.len()
        )));
    }
    if let ColumnData::Value(v) = &col.data {
        // Values resolve their own nulls and union branches.
        return Ok(Slot {
            path,
            enc: Enc::Values { v, node },
            valid: Validity::All,
            union: None,
        });
    }
    let (union, target) = match nullable(schema, node) {
        Some((n, v, t)) => (Some((n, v)), t),
        None => (None, node),
    };
    if matches!(schema.node(target), Node::Union(_)) {
        return Ok(Slot {
            path,
            enc: Enc::Cells { col, node },
            valid: Validity::All,
            union: None,
        });
    }
    let enc = typed_enc(schema, target, &col.data).ok_or_else(|| {
        err(format!(
            "field '{path}' (Avro {}) cannot be written from a {} column",
            type_name(schema.node(target)),
            column_kind(&col.data)
        ))
    })?;
    Ok(Slot {
        path,
        enc,
        valid: validity(col),
        union,
    })
}

fn typed_enc<'a>(schema: &'a Schema, node: NodeId, data: &'a ColumnData) -> Option<Enc<'a>> {
    Some(match (schema.node(node), data) {
        (Node::Null, _) => Enc::Null,
        (Node::Boolean, ColumnData::Bool(v)) => Enc::Bool(v),
        (Node::Int, ColumnData::Int(v)) => Enc::Long { v, int: true },
        (Node::Long, ColumnData::Int(v)) => Enc::Long { v, int: false },
        (Node::Double, ColumnData::Float(v)) => Enc::Double(v),
        (Node::Float, ColumnData::Float(v)) => Enc::Float(v),
        (Node::Double, ColumnData::Int(v)) => Enc::IntAsDouble { v, float: false },
        (Node::Float, ColumnData::Int(v)) => Enc::IntAsDouble { v, float: true },
        (Node::String, ColumnData::Str { offsets, data })
        | (Node::Bytes, ColumnData::Str { offsets, data })
        | (Node::Bytes, ColumnData::Bytes { offsets, data }) => Enc::Bytes { offsets, data },
        (Node::Fixed { size, .. }, ColumnData::Bytes { offsets, data }) => Enc::Fixed {
            offsets,
            data,
            size: *size,
        },
        (Node::Enum { name, symbols }, ColumnData::Str { offsets, data }) => Enc::Enum {
            offsets,
            data,
            index: symbols
                .iter()
                .enumerate()
                .map(|(k, s)| (s.as_bytes(), k as i64))
                .collect(),
            name,
        },
        _ => return None,
    })
}

/// Slots of record `node`'s fields from `lookup(field name)`; a record field without its
/// own column may come flattened as `<prefix><field>.<sub>` columns.
fn record_slots<'a>(
    schema: &'a Schema,
    node: NodeId,
    batch: &'a Batch,
    prefix: &str,
    path: &str,
    flatten: bool,
) -> Result<Vec<Slot<'a>>, AvroError> {
    let Node::Record { fields, .. } = schema.node(node) else {
        return Err(err(format!(
            "'{path}' must be an Avro record, got {}",
            type_name(schema.node(node))
        )));
    };
    let mut slots = Vec::with_capacity(fields.len());
    for f in fields {
        let fpath = format!("{path}.{}", f.name);
        let cname = format!("{prefix}{}", f.name);
        if let Some(col) = batch.column(&cname) {
            slots.push(column_slot(schema, f.ty, col, fpath, batch.rows)?);
            continue;
        }
        let (union, target) = match nullable(schema, f.ty) {
            Some((n, v, t)) => (Some((n, v)), t),
            None => (None, f.ty),
        };
        let sub_prefix = format!("{cname}.");
        let flattened = flatten
            && matches!(schema.node(target), Node::Record { .. })
            && batch.names.iter().any(|n| n.starts_with(&sub_prefix));
        if flattened {
            let subs = record_slots(schema, target, batch, &sub_prefix, &fpath, false)?;
            let valid = if union.is_some() {
                // A null record is null in every column (read_container's flattening).
                let cols: Vec<&Column> = batch
                    .names
                    .iter()
                    .zip(&batch.columns)
                    .filter(|(n, _)| n.starts_with(&sub_prefix))
                    .map(|(_, c)| c)
                    .collect();
                let mask: Vec<bool> = (0..batch.rows)
                    .map(|i| cols.iter().any(|c| c.is_valid(i)))
                    .collect();
                Validity::Mask(Cow::Owned(mask))
            } else {
                Validity::All
            };
            slots.push(Slot {
                path: fpath,
                enc: Enc::Record(subs),
                valid,
                union,
            });
        } else if let Some(u) = union {
            slots.push(Slot {
                path: fpath,
                enc: Enc::Null,
                valid: Validity::NoneValid,
                union: Some(u),
            });
        } else if matches!(schema.node(f.ty), Node::Null) {
            slots.push(Slot {
                path: fpath,
                enc: Enc::Null,
                valid: Validity::All,
                union: None,
            });
        } else {
            return Err(err(format!(
                "field '{fpath}' is not nullable and the payload has no column {cname:?}"
            )));
        }
    }
    Ok(slots)
}

fn envelope_plan<'a>(
    schema: &'a Schema,
    env: &EnvelopeColumns<'a>,
    payload: &'a Batch,
    rows: usize,
) -> Result<Vec<Slot<'a>>, AvroError> {
    let Node::Record { fields, .. } = schema.node(schema.root) else {
        return Err(err("the envelope schema must be a record"));
    };
    let names: Vec<&str> = fields.iter().map(|f| &*f.name).collect();
    if names != ENVELOPE_FIELDS {
        return Err(err(format!(
            "the envelope schema's fields must be {ENVELOPE_FIELDS:?}, got {names:?}"
        )));
    }
    let expect = |i: usize, ok: bool, want: &str| {
        if ok {
            Ok(())
        } else {
            Err(err(format!(
                "envelope field '{}' must be {want}, got {}",
                names[i],
                type_name(schema.node(fields[i].ty))
            )))
        }
    };
    expect(0, matches!(schema.node(fields[0].ty), Node::Int), "int")?;
    expect(1, matches!(schema.node(fields[1].ty), Node::Long), "long")?;
    let key_union = nullable(schema, fields[2].ty)
        .filter(|&(_, _, t)| matches!(schema.node(t), Node::Bytes))
        .map(|(n, v, _)| (n, v));
    expect(2, key_union.is_some(), "[\"null\", \"bytes\"]")?;
    expect(3, matches!(schema.node(fields[3].ty), Node::Long), "long")?;
    expect(4, matches!(schema.node(fields[4].ty), Node::Long), "long")?;
    let lengths = [
        ("event_time", env.event_time.len()),
        ("processed_at", env.processed_at.len()),
        ("key", env.key.map_or(rows, Column::len)),
        (
            "partition",
            match env.partition {
                Partition::One(_) => rows,
                Partition::Each(p) => p.len(),
            },
        ),
    ];
    for (name, n) in lengths {
        if n != rows {
            return Err(err(format!(
                "envelope column '{name}' has {n} rows, 'offset' has {rows}"
            )));
        }
    }
    let mut slots = Vec::with_capacity(6);
    let plain = |path: &str, enc| Slot {
        path: path.to_string(),
        enc,
        valid: Validity::All,
        union: None,
    };
    slots.push(match env.partition {
        Partition::Each(p) => plain("partition", Enc::Int32(p)),
        Partition::One(p) => plain("partition", Enc::Constant(encode_long(i64::from(p)))),
    });
    slots.push(plain(
        "offset",
        Enc::Long {
            v: env.offset,
            int: false,
        },
    ));
    slots.push(match env.key {
        None => Slot {
            path: "key".into(),
            enc: Enc::Null,
            valid: Validity::NoneValid,
            union: key_union,
        },
        Some(col) => {
            let (ColumnData::Bytes { offsets, data } | ColumnData::Str { offsets, data }) =
                &col.data
            else {
                return Err(err(format!(
                    "envelope column 'key' must be bytes or str, got a {} column",
                    column_kind(&col.data)
                )));
            };
            Slot {
                path: "key".into(),
                enc: Enc::Bytes { offsets, data },
                valid: validity(col),
                union: key_union,
            }
        }
    });
    slots.push(plain(
        "event_time",
        Enc::Long {
            v: env.event_time,
            int: false,
        },
    ));
    slots.push(plain(
        "processed_at",
        Enc::Long {
            v: env.processed_at,
            int: false,
        },
    ));
    slots.push(plain(
        "payload",
        Enc::Record(record_slots(
            schema,
            fields[5].ty,
            payload,
            "",
            "payload",
            true,
        )?),
    ));
    Ok(slots)
}

fn encode_long(v: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    put_long(&mut out, v);
    out
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) | Value::Wide(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Wide(w) => i64::try_from(*w).ok(),
        _ => None,
    }
}

/// Whether `v` can be written as `node` (the test a union uses to pick its branch).
fn fits(schema: &Schema, node: NodeId, v: &Value) -> bool {
    match (schema.node(node), v) {
        (Node::Null, Value::Null) => true,
        (Node::Boolean, Value::Bool(_)) => true,
        (Node::Int, v) => as_i64(v).is_some_and(|i| i32::try_from(i).is_ok()),
        (Node::Long, v) => as_i64(v).is_some(),
        (Node::Float | Node::Double, Value::Float(_)) => true,
        (Node::Float | Node::Double, v) => as_i64(v).is_some(),
        (Node::String, Value::Str(_)) => true,
        (Node::Bytes, Value::Bytes(_)) => true,
        (Node::Fixed { size, .. }, Value::Bytes(b)) => b.len() == *size,
        (Node::Enum { symbols, .. }, Value::Str(s)) => symbols.iter().any(|x| x == s),
        (Node::Array(_), Value::List(_)) => true,
        (Node::Map(_), Value::Map(_)) => true,
        (Node::Record { fields, .. }, Value::Map(entries)) => entries
            .iter()
            .all(|(k, _)| fields.iter().any(|f| f.name == *k)),
        _ => false,
    }
}

/// Write `v` as Avro type `node` (the slow path: nested and mixed types).
fn write_value(
    schema: &Schema,
    node: NodeId,
    v: &Value,
    out: &mut Vec<u8>,
    path: &str,
    row: usize,
) -> Result<(), AvroError> {
    let mismatch = || {
        err(format!(
            "field '{path}' row {row}: expected {}, got {}",
            type_name(schema.node(node)),
            value_kind(v)
        ))
    };
    match (schema.node(node), v) {
        (Node::Null, Value::Null) => {}
        (Node::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
        (Node::Int, v) => match as_i64(v) {
            Some(i) if i32::try_from(i).is_ok() => put_long(out, i),
            Some(i) => {
                return Err(err(format!(
                    "field '{path}' row {row}: {i} is out of range for an Avro int"
                )))
            }
            None => return Err(mismatch()),
        },
        (Node::Long, v) => match as_i64(v) {
            Some(i) => put_long(out, i),
            None if matches!(v, Value::Wide(_)) => {
                return Err(err(format!(
                    "field '{path}' row {row}: integer out of range for an Avro long"
                )))
            }
            None => return Err(mismatch()),
        },
        (Node::Double, Value::Float(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (Node::Float, Value::Float(f)) => out.extend_from_slice(&(*f as f32).to_le_bytes()),
        (Node::Double, Value::Int(i)) => out.extend_from_slice(&(*i as f64).to_le_bytes()),
        (Node::Float, Value::Int(i)) => out.extend_from_slice(&(*i as f32).to_le_bytes()),
        (Node::String, Value::Str(s)) => put_bytes(out, s.as_bytes()),
        (Node::Bytes, Value::Bytes(b)) => put_bytes(out, b),
        (Node::Bytes, Value::Str(s)) => put_bytes(out, s.as_bytes()),
        (Node::Fixed { size, .. }, Value::Bytes(b)) => {
            if b.len() != *size {
                return Err(err(format!(
                    "field '{path}' row {row}: {} bytes for a fixed of size {size}",
                    b.len()
                )));
            }
            out.extend_from_slice(b);
        }
        (Node::Enum { symbols, name }, Value::Str(s)) => {
            match symbols.iter().position(|x| x == s) {
                Some(k) => put_long(out, k as i64),
                None => {
                    return Err(err(format!(
                        "field '{path}' row {row}: {s:?} is not a symbol of enum {name}"
                    )))
                }
            }
        }
        (Node::Array(items), Value::List(vs)) => {
            if !vs.is_empty() {
                put_long(out, vs.len() as i64);
                for x in vs {
                    write_value(schema, *items, x, out, &format!("{path}[]"), row)?;
                }
            }
            put_long(out, 0);
        }
        (Node::Map(values), Value::Map(entries)) => {
            if !entries.is_empty() {
                put_long(out, entries.len() as i64);
                for (k, x) in entries {
                    put_bytes(out, k.as_bytes());
                    write_value(schema, *values, x, out, &format!("{path}{{}}"), row)?;
                }
            }
            put_long(out, 0);
        }
        (Node::Record { fields, .. }, Value::Map(entries)) => {
            for f in fields {
                let fpath = format!("{path}.{}", f.name);
                match entries.iter().find(|(k, _)| **k == *f.name) {
                    Some((_, x)) => write_value(schema, f.ty, x, out, &fpath, row)?,
                    None => write_value(schema, f.ty, &Value::Null, out, &fpath, row)?,
                }
            }
        }
        (Node::Union(branches), v) => {
            let Some(k) = branches.iter().position(|&b| fits(schema, b, v)) else {
                let names: Vec<String> = branches
                    .iter()
                    .map(|&b| type_name(schema.node(b)))
                    .collect();
                return Err(err(format!(
                    "field '{path}' row {row}: {} matches no branch of union [{}]",
                    value_kind(v),
                    names.join(", ")
                )));
            };
            put_long(out, k as i64);
            write_value(schema, branches[k], v, out, path, row)?;
        }
        (_, Value::Null) => {
            return Err(err(format!(
                "field '{path}' row {row}: null, but the field is not nullable"
            )))
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::read_container;

    const ENVELOPE: &str = r#"{"type":"record","name":"tx","namespace":"skewless.envelope","fields":[
        {"name":"partition","type":"int"},{"name":"offset","type":"long"},
        {"name":"key","type":["null","bytes"]},{"name":"event_time","type":"long"},
        {"name":"processed_at","type":"long"},
        {"name":"payload","type":{"type":"record","name":"Tx","fields":[
            {"name":"c","type":"string"},{"name":"a","type":["null","double"]},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"n","type":"int"}]}}]}"#;

    fn strs(v: &[&str]) -> Column {
        let mut offsets = vec![0i64];
        let mut data = Vec::new();
        for s in v {
            data.extend_from_slice(s.as_bytes());
            offsets.push(data.len() as i64);
        }
        Column {
            data: ColumnData::Str { offsets, data },
            valid: None,
        }
    }

    fn payload(e: &[&str], n: Vec<i64>) -> Batch {
        let rows = n.len();
        Batch {
            names: vec!["c".into(), "a".into(), "e".into(), "n".into()],
            columns: vec![
                strs(&vec!["x"; rows]),
                Column {
                    data: ColumnData::Float(vec![1.5; rows]),
                    valid: Some((0..rows).map(|i| i % 2 == 0).collect()),
                },
                strs(e),
                Column {
                    data: ColumnData::Int(n),
                    valid: None,
                },
            ],
            rows,
        }
    }

    fn write(batch: &Batch, codec: Codec, block: usize) -> Result<Vec<u8>, AvroError> {
        let schema = Schema::parse(ENVELOPE).unwrap();
        let rows = batch.rows;
        let offs: Vec<i64> = (0..rows as i64).collect();
        let meta = vec![("avro.schema".to_string(), ENVELOPE.as_bytes().to_vec())];
        let env = EnvelopeColumns {
            partition: Partition::One(3),
            offset: &offs,
            key: None,
            event_time: &offs,
            processed_at: &offs,
        };
        let file = FileOptions {
            codec,
            sync: [7; 16],
            block_bytes: block,
        };
        write_container(&schema, &meta, file, env, batch, None)
    }

    #[test]
    fn header_len_is_where_the_first_block_starts() {
        let batch = payload(&["A", "B", "A"], vec![1, 2, 3]);
        let meta = vec![("avro.schema".to_string(), ENVELOPE.as_bytes().to_vec())];
        for codec in [Codec::Null, Codec::Deflate(1)] {
            let bytes = write(&batch, codec, 65536).unwrap();
            let head = header_len(&meta, codec, [7; 16]).unwrap();
            let empty = write(&payload(&[], vec![]), codec, 65536).unwrap();
            assert_eq!(empty.len(), head); // a file without records is its header
            assert_eq!(bytes[..head], empty[..]);
            assert_eq!(bytes[head - 16..head], [7; 16]);
            assert!(bytes.len() > head && bytes.ends_with(&[7; 16]));
        }
    }

    #[test]
    fn round_trips_through_the_reader_in_blocks() {
        let rows = 1000;
        let batch = payload(&vec!["B"; rows], (0..rows as i64).collect());
        for codec in [Codec::Null, Codec::Deflate(1)] {
            let bytes = write(&batch, codec, 256).unwrap();
            let (back, meta) = read_container(&bytes, None).unwrap();
            assert_eq!(back.rows, rows);
            assert_eq!(meta.last().unwrap().0, "avro.codec");
            assert_eq!(
                back.column("payload.n").unwrap().data,
                batch.columns[3].data
            );
            assert_eq!(back.column("payload.e").unwrap().str_at(9), Some("B"));
            assert!(!back.column("payload.a").unwrap().is_valid(1));
            assert_eq!(back.column("partition").unwrap().value_at(5), Value::Int(3));
            assert!(!back.column("key").unwrap().is_valid(0));
        }
    }

    #[test]
    fn errors_name_field_and_row() {
        let bad_enum = payload(&["A", "Z"], vec![1, 2]);
        let e = write(&bad_enum, Codec::Null, 100).unwrap_err().to_string();
        assert!(
            e.contains("payload.e") && e.contains("row 1") && e.contains("\"Z\""),
            "{e}"
        );
        let big = payload(&["A", "A"], vec![1, 1 << 40]);
        let e = write(&big, Codec::Null, 100).unwrap_err().to_string();
        assert!(e.contains("payload.n") && e.contains("row 1"), "{e}");
        let mut missing = payload(&["A"], vec![1]);
        missing.names[0] = "other".into();
        let e = write(&missing, Codec::Null, 100).unwrap_err().to_string();
        assert!(e.contains("payload.c") && e.contains("no column"), "{e}");
    }

    /// `cargo test --release -p skewless-core avro_write_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn avro_write_timing() {
        let rows = 1_000_000;
        let batch = payload(&vec!["A"; rows], (0..rows as i64).collect());
        for codec in [Codec::Null, Codec::Deflate(1)] {
            let t = std::time::Instant::now();
            let bytes = write(&batch, codec, 64 << 10).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!(
                "{codec:?}: {rows} records, {} bytes in {s:.3}s",
                bytes.len()
            );
        }
    }
}
