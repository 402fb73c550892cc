//! Schema-driven Avro decoding straight into columns (DESIGN §4 event log, §8 native core).
//!
//! - [`schema`]: parse a schema's JSON into an arena of nodes, names resolved;
//! - [`decode`]: the per-field decode plan built once per schema, column builders, and
//!   [`DatumDecoder`] for schemaless datums (all-or-nothing per datum);
//! - [`container`]: object container files (codec `null` or `deflate`, sync markers
//!   checked) through [`read_container`].
//!
//! Mapping: int/long → `Int`; float/double → `Float` (float widened exactly); boolean →
//! `Bool`; string and enum (its symbol) → `Str`; bytes and fixed → `Bytes`; `["null", T]`
//! → T's column with validity; logical types decode as their underlying type; arrays →
//! `Value::List`, maps and records below the flattened level → `Value::Map` (wire/field
//! order); unions of several non-null types → a `Value` column. A top-level field whose
//! type is a record (or `["null", record]`) is flattened into columns `<field>.<sub>`.

mod container;
mod decode;
mod schema;
pub mod write;

pub use container::read_container;
pub use decode::DatumDecoder;
pub use schema::{Field, Node, NodeId, Schema};

/// A container file's header metadata, `(key, value)` in file order.
pub type Metadata = Vec<(String, Vec<u8>)>;

/// Why some bytes could not be decoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum Reason {
    #[error("truncated: needs more bytes than are left")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("union branch index {index} out of range (the union has {branches} branches)")]
    BadUnionIndex { index: i64, branches: usize },
    #[error("enum symbol index {index} out of range (the enum has {symbols} symbols)")]
    BadEnumIndex { index: i64, symbols: usize },
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("block item count {0} is larger than the bytes left could hold")]
    CountTooLarge(i64),
    #[error("values nested deeper than {0} levels (a recursive schema without a base case?)")]
    TooDeep(usize),
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
}

/// An Avro schema, projection or payload that cannot be decoded; the message says what
/// and where (field path, byte offset, container block).
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum AvroError {
    #[error("avro schema {0}")]
    Schema(String),
    #[error("avro projection: {0}")]
    Projection(String),
    #[error("avro {context}: field '{path}' at byte {offset}: {reason}")]
    Decode {
        /// `datum` or `container block N (file byte B)`.
        context: String,
        path: String,
        offset: usize,
        reason: Reason,
    },
    #[error("avro container: {0}")]
    Container(String),
    #[error("avro write: {0}")]
    Encode(String),
}
