//! The 13 aggregation functions as monoids (`init`, `add`, `merge`, `finalize`), bit for bit
//! the semantics of `engine/kernel/functions.py` (DESIGN §2–§3, docs/semantics.md).
//!
//! Example:
//! ```
//! use skewless_core::agg::{Agg, Func, Input};
//! use skewless_core::value::{Kind, Value};
//!
//! let agg = Agg::new(Func::Sum, Kind::Float).unwrap();
//! let (mut a, mut b) = (agg.init(), agg.init());
//! agg.add(&mut a, Input::Float(0.1), (0, 0, 0));
//! agg.add(&mut b, Input::Float(0.2), (1, 0, 0));
//! agg.add(&mut b, Input::Float(0.3), (2, 0, 1));
//! agg.merge(&mut a, &b);
//! assert_eq!(agg.finalize(&a), Value::Float(0.6)); // math.fsum, not 0.6000000000000001
//! ```

use std::cmp::Ordering;

use rustc_hash::FxHashSet;

use crate::error::KernelError;
use crate::exact::{self, Exact};
use crate::hll::{self, Sketch};
use crate::value::{Kind, Order, Value};

/// An aggregation function (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Count,
    Sum,
    Mean,
    Variance,
    Stddev,
    Min,
    Max,
    First,
    Last,
    FirstN(u32),
    LastN(u32),
    CountDistinct,
    ApproxCountDistinct,
}

impl Func {
    /// Parse an engine function name; `n` is read by `first_n`/`last_n` only, where a missing
    /// or zero `n` means 1 (as `n or 1` in functions.py).
    pub fn parse(name: &str, n: Option<u32>) -> Option<Func> {
        let n = n.filter(|&n| n > 0).unwrap_or(1);
        Some(match name {
            "count" => Func::Count,
            "sum" => Func::Sum,
            "mean" => Func::Mean,
            "variance" => Func::Variance,
            "stddev" => Func::Stddev,
            "min" => Func::Min,
            "max" => Func::Max,
            "first" => Func::First,
            "last" => Func::Last,
            "first_n" => Func::FirstN(n),
            "last_n" => Func::LastN(n),
            "count_distinct" => Func::CountDistinct,
            "approx_count_distinct" => Func::ApproxCountDistinct,
            _ => return None,
        })
    }

    /// The engine's name of the function.
    pub fn name(&self) -> &'static str {
        match self {
            Func::Count => "count",
            Func::Sum => "sum",
            Func::Mean => "mean",
            Func::Variance => "variance",
            Func::Stddev => "stddev",
            Func::Min => "min",
            Func::Max => "max",
            Func::First => "first",
            Func::Last => "last",
            Func::FirstN(_) => "first_n",
            Func::LastN(_) => "last_n",
            Func::CountDistinct => "count_distinct",
            Func::ApproxCountDistinct => "approx_count_distinct",
        }
    }

    /// Only `count` receives nulls (it counts admitted events).
    pub fn counts_nulls(&self) -> bool {
        matches!(self, Func::Count)
    }

    /// The column kinds the function accepts (the `FUNCTIONS` table of functions.py).
    pub fn accepts(&self, kind: Kind) -> bool {
        match self {
            Func::Sum | Func::Mean | Func::Variance | Func::Stddev => {
                matches!(kind, Kind::Int | Kind::Float)
            }
            Func::Min | Func::Max => matches!(kind, Kind::Int | Kind::Float | Kind::Str),
            _ => true,
        }
    }

    fn expected_kinds(&self) -> &'static str {
        match self {
            Func::Sum | Func::Mean | Func::Variance | Func::Stddev => "int or float",
            Func::Min | Func::Max => "int, float or str",
            _ => "any kind",
        }
    }
}

/// The name of a column kind.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "int",
        Kind::Float => "float",
        Kind::Str => "str",
        Kind::Bool => "bool",
        Kind::Bytes => "bytes",
    }
}

/// One input cell, borrowed from its column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Input<'a> {
    Null,
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bool(bool),
    Bytes(&'a [u8]),
}

impl Value {
    /// This value as an aggregation input (lists, maps and wide integers are no input: Null).
    #[inline]
    pub fn as_input(&self) -> Input<'_> {
        match self {
            Value::Int(i) => Input::Int(*i),
            Value::Float(f) => Input::Float(*f),
            Value::Bool(b) => Input::Bool(*b),
            Value::Str(s) => Input::Str(s),
            Value::Bytes(b) => Input::Bytes(b),
            _ => Input::Null,
        }
    }
}

/// A value held by min/max/first/last/first_n/last_n.
#[derive(Clone, Debug, PartialEq)]
pub enum Held {
    Int(i64),
    Float(f64),
    Str(Box<str>),
    Bool(bool),
    Bytes(Box<[u8]>),
}

impl Held {
    fn from_input(v: Input<'_>) -> Option<Held> {
        Some(match v {
            Input::Null => return None,
            Input::Int(x) => Held::Int(x),
            Input::Float(x) => Held::Float(x),
            Input::Str(s) => Held::Str(s.into()),
            Input::Bool(b) => Held::Bool(b),
            Input::Bytes(b) => Held::Bytes(b.into()),
        })
    }

    /// Overwrite in place, reusing nothing but avoiding a drop-and-move of the enum.
    fn set(&mut self, v: Input<'_>) {
        if let Some(h) = Held::from_input(v) {
            *self = h;
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Held::Int(x) => Value::Int(*x),
            Held::Float(x) => Value::Float(*x),
            Held::Str(s) => Value::Str(s.clone()),
            Held::Bool(b) => Value::Bool(*b),
            Held::Bytes(b) => Value::Bytes(b.clone()),
        }
    }

    fn as_input(&self) -> Input<'_> {
        match self {
            Held::Int(x) => Input::Int(*x),
            Held::Float(x) => Input::Float(*x),
            Held::Str(s) => Input::Str(s),
            Held::Bool(b) => Input::Bool(*b),
            Held::Bytes(b) => Input::Bytes(b),
        }
    }
}

/// The total order of min/max: numbers by value with −0.0 < 0.0, strings by code point
/// (UTF-8 bytes), bytes lexicographically, false < true. Inputs of different variants (a
/// caller bug) order by variant so the result is still order-free.
#[inline]
fn cmp_input(a: Input<'_>, b: Input<'_>) -> Ordering {
    match (a, b) {
        (Input::Int(x), Input::Int(y)) => x.cmp(&y),
        (Input::Float(x), Input::Float(y)) => x.total_cmp(&y),
        (Input::Str(x), Input::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Input::Bytes(x), Input::Bytes(y)) => x.cmp(y),
        (Input::Bool(x), Input::Bool(y)) => x.cmp(&y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn rank(v: Input<'_>) -> u8 {
    match v {
        Input::Null => 0,
        Input::Bool(_) => 1,
        Input::Int(_) => 2,
        Input::Float(_) => 3,
        Input::Str(_) => 4,
        Input::Bytes(_) => 5,
    }
}

/// Exact moments of mean/variance/stddev: count, Σx and (variance/stddev only) Σx².
#[derive(Clone, Debug, Default)]
pub struct Moments {
    pub n: u64,
    pub s1: Exact,
    pub s2: Exact,
}

/// The exact distinct set of `count_distinct`, typed by the column kind.
#[derive(Clone, Debug)]
pub enum Distinct {
    Int(FxHashSet<i64>),
    /// Float bits of `x + 0.0`: by value, with −0.0 == 0.0.
    Float(FxHashSet<u64>),
    Str(FxHashSet<Box<str>>),
    Bytes(FxHashSet<Box<[u8]>>),
    /// Bit 0: false seen; bit 1: true seen.
    Bool(u8),
}

impl Distinct {
    fn new(kind: Kind) -> Distinct {
        match kind {
            Kind::Int => Distinct::Int(FxHashSet::default()),
            Kind::Float => Distinct::Float(FxHashSet::default()),
            Kind::Str => Distinct::Str(FxHashSet::default()),
            Kind::Bytes => Distinct::Bytes(FxHashSet::default()),
            Kind::Bool => Distinct::Bool(0),
        }
    }

    #[inline]
    fn add(&mut self, v: Input<'_>) {
        match (self, v) {
            (Distinct::Int(s), Input::Int(x)) => {
                s.insert(x);
            }
            (Distinct::Int(s), Input::Bool(b)) => {
                s.insert(b as i64);
            }
            (Distinct::Float(s), Input::Float(x)) => {
                s.insert((x + 0.0).to_bits());
            }
            (Distinct::Float(s), Input::Int(x)) => {
                s.insert((x as f64 + 0.0).to_bits());
            }
            (Distinct::Str(s), Input::Str(x)) => {
                if !s.contains(x) {
                    s.insert(x.into());
                }
            }
            (Distinct::Bytes(s), Input::Bytes(x)) => {
                if !s.contains(x) {
                    s.insert(x.into());
                }
            }
            (Distinct::Bool(bits), Input::Bool(b)) => *bits |= 1 << b as u8,
            _ => debug_assert!(false, "count_distinct input of another kind: {v:?}"),
        }
    }

    fn merge(&mut self, other: &Distinct) {
        match (self, other) {
            (Distinct::Int(a), Distinct::Int(b)) => a.extend(b.iter().copied()),
            (Distinct::Float(a), Distinct::Float(b)) => a.extend(b.iter().copied()),
            (Distinct::Str(a), Distinct::Str(b)) => a.extend(b.iter().cloned()),
            (Distinct::Bytes(a), Distinct::Bytes(b)) => a.extend(b.iter().cloned()),
            (Distinct::Bool(a), Distinct::Bool(b)) => *a |= *b,
            _ => debug_assert!(false, "count_distinct states of different kinds"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Distinct::Int(s) => s.len(),
            Distinct::Float(s) => s.len(),
            Distinct::Str(s) => s.len(),
            Distinct::Bytes(s) => s.len(),
            Distinct::Bool(bits) => bits.count_ones() as usize,
        }
    }
}

/// The partial aggregate of one aggregation over some events (e.g. one tile). Large or
/// rarely used states are boxed so the common ones stay small (see `tests::state_is_compact`).
#[derive(Clone, Debug)]
pub enum State {
    Count(u64),
    /// int or float sum, exact.
    Sum(Exact),
    Mean {
        n: u64,
        s1: Exact,
    },
    /// variance and stddev.
    Moments(Box<Moments>),
    Min(Option<Held>),
    Max(Option<Held>),
    First(Option<Box<(Order, Held)>>),
    Last(Option<Box<(Order, Held)>>),
    /// At most n items sorted by order, oldest first.
    FirstN(Vec<(Order, Held)>),
    LastN(Vec<(Order, Held)>),
    Distinct(Box<Distinct>),
    Hll(Sketch),
}

/// One aggregation function bound to a column kind.
#[derive(Clone, Debug)]
pub struct Agg {
    pub func: Func,
    pub kind: Kind,
}

impl Agg {
    /// Bind `func` to a column of `kind`, refusing what functions.py refuses.
    pub fn new(func: Func, kind: Kind) -> Result<Agg, KernelError> {
        if !func.accepts(kind) {
            return Err(KernelError::KindNotAllowed {
                function: func.name(),
                kind: kind_name(kind),
                expected: func.expected_kinds(),
            });
        }
        Ok(Agg { func, kind })
    }

    /// Parse names as the engine spells them (`"sum"`, `"float"`).
    pub fn parse(function: &str, kind: &str, n: Option<u32>) -> Result<Agg, KernelError> {
        let func = Func::parse(function, n).ok_or_else(|| KernelError::UnknownFunction {
            name: function.to_owned(),
        })?;
        let kind = Kind::parse(kind).ok_or_else(|| KernelError::UnknownKind {
            name: kind.to_owned(),
        })?;
        Agg::new(func, kind)
    }

    /// A fresh empty state.
    pub fn init(&self) -> State {
        match self.func {
            Func::Count => State::Count(0),
            Func::Sum => State::Sum(Exact::ZERO),
            Func::Mean => State::Mean {
                n: 0,
                s1: Exact::ZERO,
            },
            Func::Variance | Func::Stddev => State::Moments(Box::default()),
            Func::Min => State::Min(None),
            Func::Max => State::Max(None),
            Func::First => State::First(None),
            Func::Last => State::Last(None),
            Func::FirstN(_) => State::FirstN(Vec::new()),
            Func::LastN(_) => State::LastN(Vec::new()),
            Func::CountDistinct => State::Distinct(Box::new(Distinct::new(self.kind))),
            Func::ApproxCountDistinct => State::Hll(Sketch::new()),
        }
    }

    fn n(&self) -> usize {
        match self.func {
            Func::FirstN(n) | Func::LastN(n) => n.max(1) as usize,
            _ => 1,
        }
    }

    /// Fold one event's value. `Null` is skipped except by `count`; a non-finite float is a
    /// null. A value of another kind than the column's is a caller bug: `Int` in a float
    /// column is read as a float by min/max/count_distinct (and exactly by sums).
    #[inline]
    pub fn add(&self, state: &mut State, value: Input<'_>, order: Order) {
        if let State::Count(c) = state {
            *c += 1;
            return;
        }
        let value = match value {
            Input::Null => return,
            Input::Float(x) if !x.is_finite() => return,
            v => v,
        };
        match state {
            State::Count(_) => unreachable!("handled above"),
            State::Sum(s) => match value {
                Input::Float(x) => s.add_f64(x),
                Input::Int(x) => s.add_i64(x),
                Input::Bool(b) => s.add_i64(b as i64),
                _ => debug_assert!(false, "sum of a non-number {value:?}"),
            },
            State::Mean { n, s1 } => {
                match value {
                    Input::Float(x) => s1.add_f64(x),
                    Input::Int(x) => s1.add_i64(x),
                    Input::Bool(b) => s1.add_i64(b as i64),
                    _ => return debug_assert!(false, "mean of a non-number {value:?}"),
                }
                *n += 1;
            }
            State::Moments(m) => {
                match value {
                    Input::Float(x) => {
                        m.s1.add_f64(x);
                        m.s2.add_f64_squared(x);
                    }
                    Input::Int(x) => {
                        m.s1.add_i64(x);
                        m.s2.add_i64_squared(x);
                    }
                    Input::Bool(b) => {
                        m.s1.add_i64(b as i64);
                        m.s2.add_i64(b as i64);
                    }
                    _ => return debug_assert!(false, "variance of a non-number {value:?}"),
                }
                m.n += 1;
            }
            State::Min(held) | State::Max(held) => {
                let value = self.coerce(value);
                let is_min = matches!(self.func, Func::Min);
                match held {
                    None => *held = Held::from_input(value),
                    Some(h) => {
                        let c = cmp_input(value, h.as_input());
                        if (is_min && c == Ordering::Less) || (!is_min && c == Ordering::Greater) {
                            h.set(value);
                        }
                    }
                }
            }
            State::First(edge) => match edge {
                Some(e) if order >= e.0 => {}
                Some(e) => {
                    e.0 = order;
                    e.1.set(value);
                }
                None => *edge = Held::from_input(value).map(|h| Box::new((order, h))),
            },
            State::Last(edge) => match edge {
                Some(e) if order <= e.0 => {}
                Some(e) => {
                    e.0 = order;
                    e.1.set(value);
                }
                None => *edge = Held::from_input(value).map(|h| Box::new((order, h))),
            },
            State::FirstN(items) => {
                let n = self.n();
                if items.len() >= n {
                    if order >= items[n - 1].0 {
                        return;
                    }
                    items.pop();
                }
                if let Some(h) = Held::from_input(value) {
                    let at = items.partition_point(|(o, _)| *o < order);
                    items.insert(at, (order, h));
                }
            }
            State::LastN(items) => {
                let n = self.n();
                if items.len() >= n {
                    if order <= items[0].0 {
                        return;
                    }
                    items.remove(0);
                }
                if let Some(h) = Held::from_input(value) {
                    let at = items.partition_point(|(o, _)| *o < order);
                    items.insert(at, (order, h));
                }
            }
            State::Distinct(set) => set.add(self.coerce(value)),
            State::Hll(sketch) => {
                let mut buf = [0u8; 20];
                match value {
                    Input::Str(s) => sketch.add_bytes(s.as_bytes()),
                    Input::Bool(b) => sketch.add_bytes(&[b as u8]),
                    Input::Int(x) => sketch.add_bytes(hll::int_bytes(x, &mut buf)),
                    Input::Float(x) => sketch.add_bytes(&hll::float_bytes(x)),
                    Input::Bytes(b) => sketch.add_bytes(b),
                    Input::Null => {}
                }
            }
        }
    }

    #[inline]
    fn coerce<'a>(&self, value: Input<'a>) -> Input<'a> {
        match (self.kind, value) {
            (Kind::Float, Input::Int(x)) => Input::Float(x as f64),
            (Kind::Int, Input::Bool(b)) => Input::Int(b as i64),
            (_, v) => v,
        }
    }

    /// Merge `other` into `into`; associative and commutative bit for bit on finalize.
    pub fn merge(&self, into: &mut State, other: &State) {
        match (into, other) {
            (State::Count(a), State::Count(b)) => *a += *b,
            (State::Sum(a), State::Sum(b)) => a.merge(b),
            (State::Mean { n, s1 }, State::Mean { n: bn, s1: bs1 }) => {
                *n += *bn;
                s1.merge(bs1);
            }
            (State::Moments(a), State::Moments(b)) => {
                a.n += b.n;
                a.s1.merge(&b.s1);
                a.s2.merge(&b.s2);
            }
            (into @ (State::Min(_) | State::Max(_)), State::Min(b) | State::Max(b)) => {
                if let Some(h) = b {
                    self.add(into, h.as_input(), (0, 0, 0));
                }
            }
            (into @ (State::First(_) | State::Last(_)), State::First(b) | State::Last(b)) => {
                if let Some(e) = b {
                    self.add(into, e.1.as_input(), e.0);
                }
            }
            (into @ (State::FirstN(_) | State::LastN(_)), State::FirstN(b) | State::LastN(b)) => {
                for (order, h) in b {
                    self.add(into, h.as_input(), *order);
                }
            }
            (State::Distinct(a), State::Distinct(b)) => a.merge(b),
            (State::Hll(a), State::Hll(b)) => a.merge(b),
            (into, other) => {
                debug_assert!(
                    false,
                    "merging states of different functions: {into:?} {other:?}"
                )
            }
        }
    }

    /// The feature value; an empty state gives the empty-window default (0 for count, sums
    /// and distinct counts — `Int(0)` or `Float(0.0)` by column kind for sum — else null).
    pub fn finalize(&self, state: &State) -> Value {
        match state {
            State::Count(c) => Value::Int(*c as i64),
            State::Sum(s) => match self.kind {
                Kind::Float => Value::Float(s.to_f64()),
                _ => int_value(s),
            },
            State::Mean { n, s1 } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::Float(s1.div_to_f64(*n))
                }
            }
            State::Moments(m) => {
                if m.n < 2 {
                    return Value::Null;
                }
                let (num, den, e) = exact::variance_ratio(m.n, &m.s1, &m.s2);
                let variance = exact::ratio_to_f64(false, &num, &den, e);
                Value::Float(match self.func {
                    Func::Variance => variance,
                    // docs/semantics.md: √ of the rounded variance while it is finite, else
                    // the correctly rounded root of the exact variance
                    _ if variance.is_finite() => variance.sqrt(),
                    _ => exact::sqrt_ratio_to_f64(&num, &den, e),
                })
            }
            State::Min(h) | State::Max(h) => h.as_ref().map_or(Value::Null, Held::to_value),
            State::First(e) | State::Last(e) => e.as_ref().map_or(Value::Null, |e| e.1.to_value()),
            State::FirstN(items) | State::LastN(items) => {
                if items.is_empty() {
                    Value::Null
                } else {
                    Value::List(items.iter().map(|(_, h)| h.to_value()).collect())
                }
            }
            State::Distinct(set) => Value::Int(set.len() as i64),
            State::Hll(sketch) => Value::Int(sketch.estimate() as i64),
        }
    }
}

fn int_value(s: &Exact) -> Value {
    match s.to_i128() {
        Some(x) => match i64::try_from(x) {
            Ok(x) => Value::Int(x),
            Err(_) => Value::Wide(x),
        },
        // beyond ±2^127 takes 2^64 events of i64::MAX: saturate rather than panic
        None => Value::Wide(if s.parts().0.sign() == num_bigint::Sign::Minus {
            i128::MIN
        } else {
            i128::MAX
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(agg: &Agg, values: &[Input<'_>]) -> State {
        let mut s = agg.init();
        for (i, &v) in values.iter().enumerate() {
            agg.add(&mut s, v, (i as i64 % 3, 0, i as i64));
        }
        s
    }

    fn run(func: Func, kind: Kind, values: &[Input<'_>]) -> Value {
        let agg = Agg::new(func, kind).unwrap();
        agg.finalize(&fold(&agg, values))
    }

    #[test]
    fn state_is_compact() {
        assert!(
            std::mem::size_of::<State>() <= 40,
            "{}",
            std::mem::size_of::<State>()
        );
    }

    #[test]
    fn refuses_what_python_refuses() {
        assert!(Agg::new(Func::Sum, Kind::Str).is_err());
        assert!(Agg::new(Func::Stddev, Kind::Bool).is_err());
        assert!(Agg::new(Func::Min, Kind::Bytes).is_err());
        assert!(Agg::new(Func::Max, Kind::Str).is_ok());
        assert!(Agg::new(Func::CountDistinct, Kind::Bytes).is_ok());
        assert!(matches!(
            Agg::parse("median", "int", None),
            Err(KernelError::UnknownFunction { .. })
        ));
        assert!(matches!(
            Agg::parse("sum", "decimal", None),
            Err(KernelError::UnknownKind { .. })
        ));
        assert_eq!(Func::parse("last_n", Some(0)), Some(Func::LastN(1)));
        assert_eq!(Func::parse("first_n", None), Some(Func::FirstN(1)));
    }

    #[test]
    fn empty_defaults() {
        for (func, kind, want) in [
            (Func::Count, Kind::Str, Value::Int(0)),
            (Func::Sum, Kind::Int, Value::Int(0)),
            (Func::Sum, Kind::Float, Value::Float(0.0)),
            (Func::CountDistinct, Kind::Str, Value::Int(0)),
            (Func::ApproxCountDistinct, Kind::Str, Value::Int(0)),
            (Func::Mean, Kind::Float, Value::Null),
            (Func::Variance, Kind::Float, Value::Null),
            (Func::Min, Kind::Int, Value::Null),
            (Func::First, Kind::Bytes, Value::Null),
            (Func::LastN(3), Kind::Int, Value::Null),
        ] {
            assert_eq!(run(func, kind, &[]), want, "{func:?}");
        }
    }

    #[test]
    fn nulls_and_non_finite() {
        let v = [Input::Null, Input::Float(f64::NAN), Input::Float(2.0)];
        assert_eq!(run(Func::Count, Kind::Float, &v), Value::Int(3));
        assert_eq!(run(Func::Sum, Kind::Float, &v), Value::Float(2.0));
        assert_eq!(run(Func::Mean, Kind::Float, &v), Value::Float(2.0));
        assert_eq!(run(Func::First, Kind::Float, &v), Value::Float(2.0));
    }

    #[test]
    fn functions() {
        let ints: Vec<Input> = [5, -3, 7, 7, 2].into_iter().map(Input::Int).collect();
        assert_eq!(run(Func::Sum, Kind::Int, &ints), Value::Int(18));
        assert_eq!(run(Func::Mean, Kind::Int, &ints), Value::Float(3.6));
        assert_eq!(run(Func::Variance, Kind::Int, &ints), Value::Float(17.8));
        assert_eq!(
            run(Func::Stddev, Kind::Int, &ints),
            Value::Float(17.8f64.sqrt())
        );
        assert_eq!(run(Func::Min, Kind::Int, &ints), Value::Int(-3));
        assert_eq!(run(Func::Max, Kind::Int, &ints), Value::Int(7));
        assert_eq!(run(Func::CountDistinct, Kind::Int, &ints), Value::Int(4));
        assert_eq!(
            run(Func::ApproxCountDistinct, Kind::Int, &ints),
            Value::Int(4)
        );
        // orders are (i % 3, 0, i): 5@(0,0,0) -3@(1,0,1) 7@(2,0,2) 7@(0,0,3) 2@(1,0,4)
        assert_eq!(run(Func::First, Kind::Int, &ints), Value::Int(5));
        assert_eq!(run(Func::Last, Kind::Int, &ints), Value::Int(7));
        let list = |xs: &[i64]| Value::List(xs.iter().map(|&x| Value::Int(x)).collect());
        assert_eq!(run(Func::FirstN(2), Kind::Int, &ints), list(&[5, 7]));
        assert_eq!(run(Func::LastN(2), Kind::Int, &ints), list(&[2, 7]));
        assert_eq!(
            run(Func::LastN(9), Kind::Int, &ints),
            list(&[5, 7, -3, 2, 7])
        );
        let big = [Input::Int(i64::MAX), Input::Int(i64::MAX)];
        assert_eq!(
            run(Func::Sum, Kind::Int, &big),
            Value::Wide(2 * i64::MAX as i128)
        );
        let zeros = [Input::Float(0.0), Input::Float(-0.0)];
        let bits = |v: Value| match v {
            Value::Float(x) => x.to_bits(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bits(run(Func::Min, Kind::Float, &zeros)),
            (-0.0f64).to_bits()
        );
        assert_eq!(bits(run(Func::Max, Kind::Float, &zeros)), 0.0f64.to_bits());
        assert_eq!(run(Func::CountDistinct, Kind::Float, &zeros), Value::Int(1));
        let strs = [Input::Str("é"), Input::Str("z"), Input::Str("a")];
        assert_eq!(run(Func::Max, Kind::Str, &strs), Value::Str("é".into()));
    }

    #[test]
    fn overflowing_variance() {
        let v = [Input::Float(1e300), Input::Float(0.0)];
        assert_eq!(
            run(Func::Variance, Kind::Float, &v),
            Value::Float(f64::INFINITY)
        );
        assert_eq!(
            run(Func::Stddev, Kind::Float, &v),
            Value::Float(7.071067811865476e299)
        );
    }

    #[test]
    fn merge_commutes() {
        let vals: Vec<Input> = [1e300, -2.5, 0.1, 5e-324, -1e300, 3.25, 1e-10, 7.0]
            .into_iter()
            .map(Input::Float)
            .collect();
        for func in [
            Func::Sum,
            Func::Mean,
            Func::Variance,
            Func::Stddev,
            Func::Min,
            Func::Max,
            Func::First,
            Func::Last,
            Func::FirstN(3),
            Func::LastN(3),
            Func::CountDistinct,
            Func::ApproxCountDistinct,
            Func::Count,
        ] {
            let agg = Agg::new(func, Kind::Float).unwrap();
            let parts: Vec<State> = (0..3)
                .map(|p| {
                    let mut s = agg.init();
                    for (i, &v) in vals.iter().enumerate().filter(|(i, _)| i % 3 == p) {
                        agg.add(&mut s, v, (i as i64 * 7 % 5, 0, i as i64));
                    }
                    s
                })
                .collect();
            let merged = |order: [usize; 3]| {
                let mut acc = agg.init();
                for i in order {
                    agg.merge(&mut acc, &parts[i]);
                }
                format!("{:?}", agg.finalize(&acc))
            };
            let want = merged([0, 1, 2]);
            for o in [[2, 1, 0], [1, 0, 2], [2, 0, 1]] {
                assert_eq!(merged(o), want, "{func:?}");
            }
        }
    }
}
