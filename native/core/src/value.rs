//! The dynamically typed scalar a column cell, an aggregation input or a feature value holds.

/// One value. Aggregation inputs are `Null`, `Bool`, `Int`, `Float`, `Str` or `Bytes` (the
/// column kinds of DESIGN §2); `Wide` is an exact integer sum beyond `i64`; `List` is an Avro
/// array or a `first_n`/`last_n` result (oldest first); `Map` is an Avro map or a nested
/// record, entries in wire order.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Wide(i128),
    List(Vec<Value>),
    Map(Vec<(Box<str>, Value)>),
}

impl Value {
    /// `true` for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The column kind an aggregation reads (DESIGN §2): what its inputs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Bytes,
}

impl Kind {
    /// Parse the engine's kind names (`"int"`, `"float"`, `"str"`, `"bool"`, `"bytes"`).
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "int" => Kind::Int,
            "float" => Kind::Float,
            "str" => Kind::Str,
            "bool" => Kind::Bool,
            "bytes" => Kind::Bytes,
            _ => return None,
        })
    }
}

/// The total order of source records: `(event_time_ms, partition, offset)` (DESIGN §3).
pub type Order = (i64, i32, i64);
