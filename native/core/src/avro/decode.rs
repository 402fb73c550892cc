//! The decode plan (one step per top-level field, built once per schema and projection),
//! typed column builders, and schemaless datums.
//!
//! Primitives go straight from the wire into typed vectors (no allocation per cell);
//! strings and bytes are appended to one data buffer with Arrow large offsets; fields that
//! are not projected are skipped on the wire without being built.

use std::collections::HashSet;

use super::schema::{Node, NodeId, Schema};
use super::{AvroError, Reason};
use crate::columns::{Batch, Column, ColumnData};
use crate::value::Value;

/// Deepest nesting a `Value` or a skip may reach (guards recursive schemas).
const MAX_DEPTH: usize = 256;

/// A failure at a byte offset of the buffer being decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fail {
    pub offset: usize,
    pub reason: Reason,
}

/// A read position in one buffer (a datum or a decompressed block).
pub(crate) struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    #[inline]
    fn fail<T>(&self, reason: Reason) -> Result<T, Fail> {
        Err(Fail {
            offset: self.pos,
            reason,
        })
    }

    #[inline]
    pub fn long(&mut self) -> Result<i64, Fail> {
        let buf = self.buf;
        let mut p = self.pos;
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = buf.get(p) else {
                return self.fail(Reason::Truncated);
            };
            p += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return self.fail(Reason::VarintTooLong);
            }
        }
        self.pos = p;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        match self.buf.get(self.pos..self.pos.wrapping_add(n)) {
            Some(s) if self.pos.checked_add(n).is_some() => {
                self.pos += n;
                Ok(s)
            }
            _ => self.fail(Reason::Truncated),
        }
    }

    #[inline]
    pub fn bytes(&mut self) -> Result<&'a [u8], Fail> {
        let at = self.pos;
        let n = self.long()?;
        if n < 0 {
            return Err(Fail {
                offset: at,
                reason: Reason::NegativeLength(n),
            });
        }
        self.take(n as usize)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, Fail> {
        let at = self.pos;
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| Fail {
            offset: at,
            reason: Reason::InvalidUtf8,
        })
    }

    #[inline]
    fn f32(&mut self) -> Result<f64, Fail> {
        let b = self.take(4)?;
        Ok(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }

    #[inline]
    fn f64(&mut self) -> Result<f64, Fail> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    #[inline]
    fn bool(&mut self) -> Result<bool, Fail> {
        Ok(self.take(1)?[0] != 0)
    }

    #[inline]
    fn branch(&mut self, branches: usize) -> Result<usize, Fail> {
        let at = self.pos;
        let i = self.long()?;
        if i < 0 || i as usize >= branches {
            return Err(Fail {
                offset: at,
                reason: Reason::BadUnionIndex { index: i, branches },
            });
        }
        Ok(i as usize)
    }

    /// The item count of the next array/map block (0 ends), its byte-size prefix skipped.
    #[inline]
    fn block_count(&mut self) -> Result<(usize, Option<usize>), Fail> {
        let at = self.pos;
        let n = self.long()?;
        let (count, size) = if n < 0 {
            let size = self.long()?;
            if size < 0 {
                return Err(Fail {
                    offset: at,
                    reason: Reason::NegativeLength(size),
                });
            }
            (n.unsigned_abs(), Some(size as usize))
        } else {
            (n as u64, None)
        };
        // Every item but the empty ones takes a byte; refuse counts that cannot fit.
        let left = (self.buf.len() - self.pos) as u64;
        if count > left.max(1 << 16) {
            return Err(Fail {
                offset: at,
                reason: Reason::CountTooLarge(n),
            });
        }
        Ok((count as usize, size))
    }
}

/// Decode one value of type `id` into a [`Value`].
fn value(schema: &Schema, cur: &mut Cursor, id: NodeId, depth: usize) -> Result<Value, Fail> {
    if depth > MAX_DEPTH {
        return cur.fail(Reason::TooDeep(MAX_DEPTH));
    }
    Ok(match schema.node(id) {
        Node::Null => Value::Null,
        Node::Boolean => Value::Bool(cur.bool()?),
        Node::Int | Node::Long => Value::Int(cur.long()?),
        Node::Float => Value::Float(cur.f32()?),
        Node::Double => Value::Float(cur.f64()?),
        Node::Bytes => Value::Bytes(cur.bytes()?.into()),
        Node::String => Value::Str(cur.str()?.into()),
        Node::Fixed { size, .. } => Value::Bytes(cur.take(*size)?.into()),
        Node::Enum { symbols, .. } => Value::Str(symbols[enum_index(cur, symbols.len())?].clone()),
        Node::Array(items) => {
            let mut out = Vec::new();
            loop {
                let (n, _) = cur.block_count()?;
                if n == 0 {
                    break;
                }
                out.reserve(n);
                for _ in 0..n {
                    out.push(value(schema, cur, *items, depth + 1)?);
                }
            }
            Value::List(out)
        }
        Node::Map(values) => {
            let mut out = Vec::new();
            loop {
                let (n, _) = cur.block_count()?;
                if n == 0 {
                    break;
                }
                out.reserve(n);
                for _ in 0..n {
                    let k: Box<str> = cur.str()?.into();
                    out.push((k, value(schema, cur, *values, depth + 1)?));
                }
            }
            Value::Map(out)
        }
        Node::Record { fields, .. } => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                out.push((f.name.clone(), value(schema, cur, f.ty, depth + 1)?));
            }
            Value::Map(out)
        }
        Node::Union(branches) => {
            let b = cur.branch(branches.len())?;
            value(schema, cur, branches[b], depth + 1)?
        }
    })
}

#[inline]
fn enum_index(cur: &mut Cursor, symbols: usize) -> Result<usize, Fail> {
    let at = cur.pos;
    let i = cur.long()?;
    if i < 0 || i as usize >= symbols {
        return Err(Fail {
            offset: at,
            reason: Reason::BadEnumIndex { index: i, symbols },
        });
    }
    Ok(i as usize)
}

/// Move past one value of type `id` without building it (strings are not validated).
fn skip(schema: &Schema, cur: &mut Cursor, id: NodeId, depth: usize) -> Result<(), Fail> {
    if depth > MAX_DEPTH {
        return cur.fail(Reason::TooDeep(MAX_DEPTH));
    }
    match schema.node(id) {
        Node::Null => {}
        Node::Boolean => {
            cur.take(1)?;
        }
        Node::Int | Node::Long => {
            cur.long()?;
        }
        Node::Float => {
            cur.take(4)?;
        }
        Node::Double => {
            cur.take(8)?;
        }
        Node::Bytes | Node::String => {
            cur.bytes()?;
        }
        Node::Fixed { size, .. } => {
            cur.take(*size)?;
        }
        Node::Enum { symbols, .. } => {
            enum_index(cur, symbols.len())?;
        }
        Node::Array(items) => loop {
            match cur.block_count()? {
                (0, _) => break,
                (_, Some(size)) => {
                    cur.take(size)?;
                }
                (n, None) => {
                    for _ in 0..n {
                        skip(schema, cur, *items, depth + 1)?;
                    }
                }
            }
        },
        Node::Map(values) => loop {
            match cur.block_count()? {
                (0, _) => break,
                (_, Some(size)) => {
                    cur.take(size)?;
                }
                (n, None) => {
                    for _ in 0..n {
                        cur.bytes()?;
                        skip(schema, cur, *values, depth + 1)?;
                    }
                }
            }
        },
        Node::Record { fields, .. } => {
            for f in fields {
                skip(schema, cur, f.ty, depth + 1)?;
            }
        }
        Node::Union(branches) => {
            let b = cur.branch(branches.len())?;
            skip(schema, cur, branches[b], depth + 1)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Column builders

struct Prim<T> {
    v: Vec<T>,
    valid: Option<Vec<bool>>,
}

impl<T: Blank> Prim<T> {
    fn new(nullable: bool) -> Self {
        Prim {
            v: Vec::new(),
            valid: nullable.then(Vec::new),
        }
    }
    #[inline]
    fn push(&mut self, x: T) {
        self.v.push(x);
        if let Some(valid) = &mut self.valid {
            valid.push(true);
        }
    }
    fn push_null(&mut self) {
        self.v.push(T::blank());
        self.valid.get_or_insert_with(Vec::new).push(false);
    }
    fn truncate(&mut self, rows: usize) {
        self.v.truncate(rows);
        if let Some(valid) = &mut self.valid {
            valid.truncate(rows);
        }
    }
}

struct Bin {
    offsets: Vec<i64>,
    data: Vec<u8>,
    valid: Option<Vec<bool>>,
    utf8: bool,
}

impl Bin {
    fn new(nullable: bool, utf8: bool) -> Self {
        Bin {
            offsets: vec![0],
            data: Vec::new(),
            valid: nullable.then(Vec::new),
            utf8,
        }
    }
    #[inline]
    fn push(&mut self, x: &[u8]) {
        self.data.extend_from_slice(x);
        self.offsets.push(self.data.len() as i64);
        if let Some(valid) = &mut self.valid {
            valid.push(true);
        }
    }
    fn push_null(&mut self) {
        self.offsets.push(self.data.len() as i64);
        self.valid.get_or_insert_with(Vec::new).push(false);
    }
    fn truncate(&mut self, rows: usize) {
        self.offsets.truncate(rows + 1);
        self.data.truncate(self.offsets[rows] as usize);
        if let Some(valid) = &mut self.valid {
            valid.truncate(rows);
        }
    }
}

/// The placeholder a null cell holds.
trait Blank {
    fn blank() -> Self;
}

impl Blank for i64 {
    fn blank() -> Self {
        0
    }
}

impl Blank for f64 {
    fn blank() -> Self {
        0.0
    }
}

impl Blank for bool {
    fn blank() -> Self {
        false
    }
}

impl Blank for Value {
    fn blank() -> Self {
        Value::Null
    }
}

#[derive(Default)]
struct Builders {
    ints: Vec<Prim<i64>>,
    floats: Vec<Prim<f64>>,
    bools: Vec<Prim<bool>>,
    bins: Vec<Bin>,
    values: Vec<Prim<Value>>,
}

/// Which builder a column lives in.
#[derive(Clone, Copy, Debug)]
enum Target {
    Int(usize),
    Float(usize),
    Bool(usize),
    Bin(usize),
    Val(usize),
}

impl Builders {
    fn push_null(&mut self, t: Target) {
        match t {
            Target::Int(i) => self.ints[i].push_null(),
            Target::Float(i) => self.floats[i].push_null(),
            Target::Bool(i) => self.bools[i].push_null(),
            Target::Bin(i) => self.bins[i].push_null(),
            Target::Val(i) => self.values[i].push_null(),
        }
    }

    fn reserve(&mut self, rows: usize) {
        fn valid(v: &mut Option<Vec<bool>>, rows: usize) {
            if let Some(v) = v {
                v.reserve(rows);
            }
        }
        for b in &mut self.ints {
            b.v.reserve(rows);
            valid(&mut b.valid, rows);
        }
        for b in &mut self.floats {
            b.v.reserve(rows);
            valid(&mut b.valid, rows);
        }
        for b in &mut self.bools {
            b.v.reserve(rows);
            valid(&mut b.valid, rows);
        }
        for b in &mut self.bins {
            b.offsets.reserve(rows);
            valid(&mut b.valid, rows);
        }
    }

    fn truncate(&mut self, rows: usize) {
        self.ints.iter_mut().for_each(|b| b.truncate(rows));
        self.floats.iter_mut().for_each(|b| b.truncate(rows));
        self.bools.iter_mut().for_each(|b| b.truncate(rows));
        self.bins.iter_mut().for_each(|b| b.truncate(rows));
        self.values.iter_mut().for_each(|b| b.truncate(rows));
    }

    fn take(&mut self, t: Target) -> Column {
        fn valid(v: Option<Vec<bool>>) -> Option<Vec<bool>> {
            v.filter(|v| v.iter().any(|ok| !ok))
        }
        match t {
            Target::Int(i) => {
                let b = std::mem::replace(&mut self.ints[i], Prim::new(false));
                Column {
                    data: ColumnData::Int(b.v),
                    valid: valid(b.valid),
                }
            }
            Target::Float(i) => {
                let b = std::mem::replace(&mut self.floats[i], Prim::new(false));
                Column {
                    data: ColumnData::Float(b.v),
                    valid: valid(b.valid),
                }
            }
            Target::Bool(i) => {
                let b = std::mem::replace(&mut self.bools[i], Prim::new(false));
                Column {
                    data: ColumnData::Bool(b.v),
                    valid: valid(b.valid),
                }
            }
            Target::Bin(i) => {
                let b = std::mem::replace(&mut self.bins[i], Bin::new(false, false));
                let data = if b.utf8 {
                    ColumnData::Str {
                        offsets: b.offsets,
                        data: b.data,
                    }
                } else {
                    ColumnData::Bytes {
                        offsets: b.offsets,
                        data: b.data,
                    }
                };
                Column {
                    data,
                    valid: valid(b.valid),
                }
            }
            Target::Val(i) => {
                let b = std::mem::replace(&mut self.values[i], Prim::new(false));
                Column {
                    data: ColumnData::Value(b.v),
                    valid: valid(b.valid),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plan

enum Op {
    Long(usize),
    Float(usize),
    Double(usize),
    Bool(usize),
    /// Str (validated) or Bytes column.
    Str(usize),
    Bytes(usize),
    Fixed(usize, usize),
    Enum(usize, Vec<Box<str>>),
    Value(usize, NodeId),
    Skip(NodeId),
    /// `["null", T]`, `[T, "null"]` or `[T]`: T's op, or a null in `target`.
    Opt {
        null: Option<usize>,
        branch: usize,
        branches: usize,
        inner: Box<Op>,
        target: Target,
    },
    /// `["null", record]` flattened: the record's steps, or a null in every target.
    OptRecord {
        null: usize,
        branch: usize,
        steps: Vec<Step>,
        targets: Vec<Target>,
    },
}

struct Step {
    op: Op,
    path: Box<str>,
}

/// The decode plan of one record schema and projection, plus the column builders it fills.
pub(crate) struct Plan {
    schema: Schema,
    steps: Vec<Step>,
    columns: Vec<(String, Target)>,
    builders: Builders,
    pub rows: usize,
}

struct Planner<'a> {
    schema: &'a Schema,
    wanted: Option<HashSet<&'a str>>,
    columns: Vec<(String, Target)>,
    builders: Builders,
}

impl Planner<'_> {
    fn wants(&self, name: &str, parent: Option<&str>) -> bool {
        self.wanted
            .as_ref()
            .is_none_or(|w| w.contains(name) || parent.is_some_and(|p| w.contains(p)))
    }

    fn column(&mut self, name: &str, node: &Node, nullable: bool) -> Target {
        let b = &mut self.builders;
        let t = match node {
            Node::Boolean => {
                b.bools.push(Prim::new(nullable));
                Target::Bool(b.bools.len() - 1)
            }
            Node::Int | Node::Long => {
                b.ints.push(Prim::new(nullable));
                Target::Int(b.ints.len() - 1)
            }
            Node::Float | Node::Double => {
                b.floats.push(Prim::new(nullable));
                Target::Float(b.floats.len() - 1)
            }
            Node::String | Node::Enum { .. } => {
                b.bins.push(Bin::new(nullable, true));
                Target::Bin(b.bins.len() - 1)
            }
            Node::Bytes | Node::Fixed { .. } => {
                b.bins.push(Bin::new(nullable, false));
                Target::Bin(b.bins.len() - 1)
            }
            _ => {
                b.values.push(Prim::new(nullable));
                Target::Val(b.values.len() - 1)
            }
        };
        self.columns.push((name.to_string(), t));
        t
    }

    /// The op filling a new column `name` from a value of type `id` (not a union).
    fn leaf_op(&mut self, name: &str, id: NodeId, nullable: bool) -> (Op, Target) {
        let node = self.schema.node(id);
        let t = self.column(name, node, nullable);
        let op = match (node, t) {
            (Node::Boolean, Target::Bool(i)) => Op::Bool(i),
            (Node::Int | Node::Long, Target::Int(i)) => Op::Long(i),
            (Node::Float, Target::Float(i)) => Op::Float(i),
            (Node::Double, Target::Float(i)) => Op::Double(i),
            (Node::String, Target::Bin(i)) => Op::Str(i),
            (Node::Bytes, Target::Bin(i)) => Op::Bytes(i),
            (Node::Fixed { size, .. }, Target::Bin(i)) => Op::Fixed(i, *size),
            (Node::Enum { symbols, .. }, Target::Bin(i)) => Op::Enum(i, symbols.clone()),
            (_, Target::Val(i)) => Op::Value(i, id),
            _ => unreachable!("column kinds follow node kinds"),
        };
        (op, t)
    }

    /// `Some((null, branch, branches))` for a union of one non-null type and at most one null.
    fn optional(&self, id: NodeId) -> Option<(Option<usize>, usize, usize)> {
        let Node::Union(b) = self.schema.node(id) else {
            return None;
        };
        let nulls: Vec<usize> = (0..b.len())
            .filter(|&i| self.schema.node(b[i]) == &Node::Null)
            .collect();
        let others: Vec<usize> = (0..b.len())
            .filter(|&i| self.schema.node(b[i]) != &Node::Null)
            .collect();
        match (nulls.as_slice(), others.as_slice()) {
            ([], [v]) => Some((None, *v, b.len())),
            ([n], [v]) => Some((Some(*n), *v, b.len())),
            _ => None,
        }
    }

    /// The step of one column `name` of type `id`, `None` when it is not projected.
    fn leaf(
        &mut self,
        name: &str,
        parent: Option<&str>,
        id: NodeId,
        nullable: bool,
    ) -> Option<(Step, Target)> {
        if !self.wants(name, parent) {
            return None;
        }
        let (op, t) = match self.optional(id) {
            Some((null, branch, branches)) => {
                let Node::Union(b) = self.schema.node(id) else {
                    unreachable!()
                };
                let (inner, t) = self.leaf_op(name, b[branch], nullable || null.is_some());
                (
                    Op::Opt {
                        null,
                        branch,
                        branches,
                        inner: Box::new(inner),
                        target: t,
                    },
                    t,
                )
            }
            None => self.leaf_op(name, id, nullable),
        };
        Some((
            Step {
                op,
                path: name.into(),
            },
            t,
        ))
    }

    /// Steps of a flattened record's fields (unprojected ones skipped).
    fn record_steps(
        &mut self,
        field: &str,
        rec: NodeId,
        nullable: bool,
    ) -> (Vec<Step>, Vec<Target>) {
        let Node::Record { fields, .. } = self.schema.node(rec) else {
            unreachable!()
        };
        let (mut steps, mut targets) = (Vec::new(), Vec::new());
        for f in fields {
            let name = format!("{field}.{}", f.name);
            match self.leaf(&name, Some(field), f.ty, nullable) {
                Some((step, t)) => {
                    steps.push(step);
                    targets.push(t);
                }
                None => steps.push(Step {
                    op: Op::Skip(f.ty),
                    path: name.into(),
                }),
            }
        }
        (steps, targets)
    }

    fn top(&mut self, name: &str, id: NodeId, out: &mut Vec<Step>) {
        let skip = |out: &mut Vec<Step>| {
            out.push(Step {
                op: Op::Skip(id),
                path: name.into(),
            })
        };
        if let Node::Record { .. } = self.schema.node(id) {
            let (steps, targets) = self.record_steps(name, id, false);
            if targets.is_empty() {
                skip(out);
            } else {
                out.extend(steps);
            }
            return;
        }
        if let Some((Some(null), branch, 2)) = self.optional(id) {
            let Node::Union(b) = self.schema.node(id) else {
                unreachable!()
            };
            if let Node::Record { .. } = self.schema.node(b[branch]) {
                let (steps, targets) = self.record_steps(name, b[branch], true);
                if targets.is_empty() {
                    skip(out);
                } else {
                    out.push(Step {
                        op: Op::OptRecord {
                            null,
                            branch,
                            steps,
                            targets,
                        },
                        path: name.into(),
                    });
                }
                return;
            }
        }
        match self.leaf(name, None, id, false) {
            Some((step, _)) => out.push(step),
            None => skip(out),
        }
    }
}

impl Plan {
    /// The plan of record schema `schema`; `projection` names the columns to build.
    pub fn new(schema: &Schema, projection: Option<&[&str]>) -> Result<Plan, AvroError> {
        let Node::Record { fields, .. } = schema.node(schema.root) else {
            return Err(AvroError::Schema(format!(
                "to decode into columns the top-level type must be a record, got {:?}",
                schema.node(schema.root)
            )));
        };
        let mut planner = Planner {
            schema,
            wanted: projection.map(|p| p.iter().copied().collect()),
            columns: Vec::new(),
            builders: Builders::default(),
        };
        let mut steps = Vec::with_capacity(fields.len());
        for f in fields {
            planner.top(&f.name, f.ty, &mut steps);
        }
        if let Some(p) = projection {
            let missing: Vec<&str> = p
                .iter()
                .copied()
                .filter(|want| {
                    !planner.columns.iter().any(|(n, _)| {
                        n == want
                            || n.strip_prefix(want)
                                .is_some_and(|rest| rest.starts_with('.'))
                    })
                })
                .collect();
            if !missing.is_empty() {
                let have: Vec<&str> = fields.iter().map(|f| &*f.name).collect();
                return Err(AvroError::Projection(format!(
                    "no column named {missing:?} in the schema (top-level fields: {have:?}; a record field's columns are '<field>.<sub>')"
                )));
            }
        }
        Ok(Plan {
            schema: schema.clone(),
            steps,
            columns: planner.columns,
            builders: planner.builders,
            rows: 0,
        })
    }

    /// Decode one record at the cursor into the builders (the caller rolls back on error).
    #[inline]
    pub fn record<'p>(&'p mut self, cur: &mut Cursor) -> Result<(), (Fail, &'p str)> {
        run(&self.schema, &self.steps, &mut self.builders, cur)?;
        self.rows += 1;
        Ok(())
    }

    /// Make room for `rows` more rows in every fixed-width buffer.
    pub fn reserve(&mut self, rows: usize) {
        self.builders.reserve(rows);
    }

    /// Drop every cell past the first `self.rows` (after a failed record).
    pub fn rollback(&mut self) {
        self.builders.truncate(self.rows);
    }

    /// The columns built so far.
    pub fn finish(mut self) -> Batch {
        let columns = std::mem::take(&mut self.columns);
        let mut batch = Batch {
            names: Vec::new(),
            columns: Vec::new(),
            rows: self.rows,
        };
        for (name, t) in columns {
            batch.names.push(name);
            batch.columns.push(self.builders.take(t));
        }
        batch
    }
}

fn run<'p>(
    schema: &Schema,
    steps: &'p [Step],
    b: &mut Builders,
    cur: &mut Cursor,
) -> Result<(), (Fail, &'p str)> {
    for step in steps {
        match &step.op {
            Op::OptRecord {
                null,
                branch,
                steps,
                targets,
            } => match cur.branch(2) {
                Ok(i) if i == *null => targets.iter().for_each(|t| b.push_null(*t)),
                Ok(i) => {
                    debug_assert_eq!(i, *branch);
                    run(schema, steps, b, cur)?;
                }
                Err(f) => return Err((f, &step.path)),
            },
            op => exec(schema, op, b, cur).map_err(|f| (f, &*step.path))?,
        }
    }
    Ok(())
}

#[inline]
fn exec(schema: &Schema, op: &Op, b: &mut Builders, cur: &mut Cursor) -> Result<(), Fail> {
    match op {
        Op::Long(i) => b.ints[*i].push(cur.long()?),
        Op::Double(i) => b.floats[*i].push(cur.f64()?),
        Op::Float(i) => b.floats[*i].push(cur.f32()?),
        Op::Bool(i) => b.bools[*i].push(cur.bool()?),
        Op::Str(i) => {
            let s = cur.str()?;
            b.bins[*i].push(s.as_bytes());
        }
        Op::Bytes(i) => {
            let s = cur.bytes()?;
            b.bins[*i].push(s);
        }
        Op::Fixed(i, n) => {
            let s = cur.take(*n)?;
            b.bins[*i].push(s);
        }
        Op::Enum(i, symbols) => {
            let k = enum_index(cur, symbols.len())?;
            b.bins[*i].push(symbols[k].as_bytes());
        }
        Op::Value(i, id) => {
            let v = value(schema, cur, *id, 0)?;
            b.values[*i].push(v);
        }
        Op::Skip(id) => skip(schema, cur, *id, 0)?,
        Op::Opt {
            null,
            branch,
            branches,
            inner,
            target,
        } => {
            let k = cur.branch(*branches)?;
            if Some(k) == *null {
                b.push_null(*target);
            } else {
                debug_assert_eq!(k, *branch);
                exec(schema, inner, b, cur)?;
            }
        }
        Op::OptRecord { .. } => unreachable!("handled by run"),
    }
    Ok(())
}

/// Decodes schemaless datums (one record each) into columns; a datum that fails adds no row.
pub struct DatumDecoder {
    plan: Plan,
}

impl DatumDecoder {
    /// A decoder for datums written with record schema `schema`; `projection` (column
    /// names, or a flattened record field's name for all its columns) limits what is built.
    pub fn new(schema: &Schema, projection: Option<&[&str]>) -> Result<DatumDecoder, AvroError> {
        Ok(DatumDecoder {
            plan: Plan::new(schema, projection)?,
        })
    }

    /// Decode one datum; on error no cell of it is kept and the error says where it failed.
    pub fn push(&mut self, datum: &[u8]) -> Result<(), AvroError> {
        let mut cur = Cursor::new(datum);
        let result = match self.plan.record(&mut cur) {
            Ok(()) if cur.pos == datum.len() => return Ok(()),
            Ok(()) => {
                self.plan.rows -= 1;
                let path = self
                    .plan
                    .steps
                    .last()
                    .map(|s| s.path.to_string())
                    .unwrap_or_default();
                Err(AvroError::Decode {
                    context: "datum".into(),
                    path,
                    offset: cur.pos,
                    reason: Reason::TrailingBytes(datum.len() - cur.pos),
                })
            }
            Err((fail, path)) => Err(AvroError::Decode {
                context: "datum".into(),
                path: path.to_string(),
                offset: fail.offset,
                reason: fail.reason,
            }),
        };
        self.plan.rollback();
        result
    }

    /// Rows decoded so far.
    pub fn rows(&self) -> usize {
        self.plan.rows
    }

    /// The columns of every datum pushed successfully.
    pub fn finish(self) -> Batch {
        self.plan.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zz(v: i64, out: &mut Vec<u8>) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        while u >= 0x80 {
            out.push((u as u8) | 0x80);
            u >>= 7;
        }
        out.push(u as u8);
    }

    fn s(x: &str, out: &mut Vec<u8>) {
        zz(x.len() as i64, out);
        out.extend_from_slice(x.as_bytes());
    }

    const SCHEMA: &str = r#"{"type":"record","name":"E","fields":[
        {"name":"id","type":"long"},
        {"name":"key","type":["null","bytes"]},
        {"name":"p","type":{"type":"record","name":"P","fields":[
            {"name":"name","type":"string"},
            {"name":"amount","type":["double","null"]},
            {"name":"f","type":"float"},
            {"name":"ok","type":"boolean"},
            {"name":"tags","type":{"type":"array","items":"string"}}]}},
        {"name":"o","type":["null",{"type":"record","name":"O","fields":[{"name":"x","type":"int"}]}]},
        {"name":"u","type":["int","string","null"]},
        {"name":"m","type":{"type":"map","values":{"type":"enum","name":"C","symbols":["A","B"]}}}
    ]}"#;

    fn datum(id: i64, null_key: bool, some_o: bool) -> Vec<u8> {
        let mut d = Vec::new();
        zz(id, &mut d);
        if null_key {
            zz(0, &mut d);
        } else {
            zz(1, &mut d);
            s("k", &mut d);
        }
        s("név", &mut d);
        zz(0, &mut d);
        d.extend_from_slice(&(-0.0f64).to_le_bytes());
        d.extend_from_slice(&1.5f32.to_le_bytes());
        d.push(1);
        zz(-2, &mut d); // block of 2 with byte size
        zz(4, &mut d);
        s("a", &mut d);
        s("b", &mut d);
        zz(0, &mut d);
        if some_o {
            zz(1, &mut d);
            zz(-7, &mut d);
        } else {
            zz(0, &mut d);
        }
        zz(1, &mut d);
        s("x", &mut d);
        zz(1, &mut d);
        s("q", &mut d);
        zz(1, &mut d);
        zz(0, &mut d);
        d
    }

    #[test]
    fn decodes_flattens_and_rolls_back() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut dec = DatumDecoder::new(&schema, None).unwrap();
        dec.push(&datum(1, false, true)).unwrap();
        let good = datum(2, true, false);
        for cut in 0..good.len() {
            assert!(dec.push(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        let err = dec.push(&long).unwrap_err().to_string();
        assert!(err.contains("1 trailing bytes"), "{err}");
        dec.push(&good).unwrap();
        let b = dec.finish();
        assert_eq!(b.rows, 2);
        assert_eq!(
            b.names,
            ["id", "key", "p.name", "p.amount", "p.f", "p.ok", "p.tags", "o.x", "u", "m"]
        );
        assert_eq!(b.column("id").unwrap().data, ColumnData::Int(vec![1, 2]));
        assert_eq!(b.column("key").unwrap().valid, Some(vec![true, false]));
        assert_eq!(b.column("p.name").unwrap().str_at(1), Some("név"));
        let ColumnData::Float(a) = &b.column("p.amount").unwrap().data else {
            panic!()
        };
        assert_eq!(a[0].to_bits(), (-0.0f64).to_bits());
        assert_eq!(b.column("p.f").unwrap().value_at(0), Value::Float(1.5));
        assert_eq!(
            b.column("p.tags").unwrap().value_at(0),
            Value::List(vec![Value::Str("a".into()), Value::Str("b".into())])
        );
        assert_eq!(b.column("o.x").unwrap().value_at(0), Value::Int(-7));
        assert_eq!(b.column("o.x").unwrap().value_at(1), Value::Null);
        assert_eq!(b.column("u").unwrap().value_at(0), Value::Str("x".into()));
        assert_eq!(
            b.column("m").unwrap().value_at(1),
            Value::Map(vec![("q".into(), Value::Str("B".into()))])
        );
    }

    #[test]
    fn projection_skips_and_reports_unknown_names() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut dec = DatumDecoder::new(&schema, Some(&["p.amount", "m", "o"])).unwrap();
        dec.push(&datum(1, false, true)).unwrap();
        let b = dec.finish();
        assert_eq!(b.names, ["p.amount", "o.x", "m"]);
        let err = DatumDecoder::new(&schema, Some(&["nope"])).err().unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_union_index_and_utf8_are_reported() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let mut dec = DatumDecoder::new(&schema, None).unwrap();
        let mut d = datum(1, false, true);
        d[1] = 4; // key branch 2
        let err = dec.push(&d).unwrap_err().to_string();
        assert!(
            err.contains("field 'key' at byte 1") && err.contains("branch index 2"),
            "{err}"
        );
        let mut d = Vec::new();
        zz(1, &mut d);
        zz(0, &mut d);
        zz(2, &mut d);
        d.extend_from_slice(&[0xff, 0xfe]);
        let err = dec.push(&d).unwrap_err().to_string();
        assert!(err.contains("p.name") && err.contains("UTF-8"), "{err}");
        assert_eq!(dec.finish().rows, 0);
    }

    #[test]
    fn recursive_schema_decodes_and_depth_is_bounded() {
        let schema = Schema::parse(
            r#"{"type":"record","name":"N","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","N"]}]}"#,
        )
        .unwrap();
        let mut dec = DatumDecoder::new(&schema, None).unwrap();
        // v=1, next=N{v=2, next=null} → flattened next.v=2, next.next=Null
        dec.push(&[2, 2, 4, 0]).unwrap();
        let mut deep = vec![2];
        for _ in 0..1000 {
            deep.extend_from_slice(&[2, 2]);
        }
        deep.push(0);
        let err = dec.push(&deep).unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
        let b = dec.finish();
        assert_eq!(b.names, ["v", "next.v", "next.next"]);
        assert_eq!(b.column("next.next").unwrap().value_at(0), Value::Null);
    }
}
