//! The versioned binary tile codec (online state in Redis, DESIGN §4 and §8).
//!
//! A tile (or a lifetime accumulator) is the states of one hop group's aggregations:
//!
//! ```text
//! tile   := VERSION (1 byte = 2) count (u16 LE) state*
//! state  := tag (1 byte, the State variant) body
//! ```
//!
//! Bodies are little-endian and self-delimiting: counts as u64, exact numbers as
//! [`Exact::encode`], orders as three i64, held values as a kind byte and the value, sets
//! and lists with a u32 length, HyperLogLog as its non-zero `(index u16, rank u8)` registers.
//! Version 1 was the pure-Python kernel's msgpack form (`[1, plain states]`, first byte
//! 0x92): this codec refuses it (and anything else) with [`CodecError`] — a keyspace of an
//! older format is rebuilt from the log, never misread.

use crate::agg::{Agg, Distinct, Held, Moments, State};
use crate::exact::Exact;
use crate::hll::Sketch;
use crate::value::Order;

/// The tile codec version this core writes and reads.
pub const VERSION: u8 = 2;

/// Bytes that are not a tile of this codec version and layout.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("tile codec: {0}")]
pub struct CodecError(pub String);

fn bad(what: impl Into<String>) -> CodecError {
    CodecError(what.into())
}

const T_COUNT: u8 = 1;
const T_SUM: u8 = 2;
const T_MEAN: u8 = 3;
const T_MOMENTS: u8 = 4;
const T_MIN: u8 = 5;
const T_MAX: u8 = 6;
const T_FIRST: u8 = 7;
const T_LAST: u8 = 8;
const T_FIRST_N: u8 = 9;
const T_LAST_N: u8 = 10;
const T_DISTINCT: u8 = 11;
const T_HLL: u8 = 12;

fn tag(state: &State) -> u8 {
    match state {
        State::Count(_) => T_COUNT,
        State::Sum(_) => T_SUM,
        State::Mean { .. } => T_MEAN,
        State::Moments(_) => T_MOMENTS,
        State::Min(_) => T_MIN,
        State::Max(_) => T_MAX,
        State::First(_) => T_FIRST,
        State::Last(_) => T_LAST,
        State::FirstN(_) => T_FIRST_N,
        State::LastN(_) => T_LAST_N,
        State::Distinct(_) => T_DISTINCT,
        State::Hll(_) => T_HLL,
    }
}

/// Encode the states of one tile.
pub fn encode_tile(states: &[State], out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&(states.len() as u16).to_le_bytes());
    for state in states {
        encode_state(state, out);
    }
}

/// Decode a tile of `aggs` (the hop group's aggregations, in order).
pub fn decode_tile(aggs: &[&Agg], bytes: &[u8]) -> Result<Box<[State]>, CodecError> {
    let tags: Vec<u8> = aggs.iter().map(|agg| state_tag(agg)).collect();
    let mut out = Vec::with_capacity(aggs.len());
    decode_tile_into(aggs, &tags, bytes, &mut out)?;
    Ok(out.into_boxed_slice())
}

/// The tag of the states `agg` keeps (what [`decode_tile_into`] checks a tile against).
pub fn state_tag(agg: &Agg) -> u8 {
    tag(&agg.init())
}

/// [`decode_tile`] into `out` (cleared first, its allocation reused): the online reader
/// decodes many tiles of one layout in a row. `tags[i]` is `state_tag(aggs[i])`.
pub fn decode_tile_into(
    aggs: &[&Agg],
    tags: &[u8],
    bytes: &[u8],
    out: &mut Vec<State>,
) -> Result<(), CodecError> {
    out.clear();
    let Some((&version, mut rest)) = bytes.split_first() else {
        return Err(bad("empty tile bytes"));
    };
    if version != VERSION {
        return Err(bad(format!(
            "tile written by codec version {} (first byte 0x{version:02x}); this core reads \
             version {VERSION}: rebuild the view's online state (skewless rebuild-online)",
            if version == 0x92 {
                "1 (msgpack)".to_string()
            } else {
                "unknown".into()
            }
        )));
    }
    let count = take_u16(&mut rest)? as usize;
    if count != aggs.len() {
        return Err(bad(format!(
            "tile holds {count} states, expected {}",
            aggs.len()
        )));
    }
    for (agg, &expected) in aggs.iter().zip(tags) {
        let state = decode_state(&mut rest)?;
        if tag(&state) != expected {
            return Err(bad(format!(
                "a state of tag {} where {} expected",
                tag(&state),
                agg.func.name()
            )));
        }
        out.push(state);
    }
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} bytes left after the tile's states",
            rest.len()
        )));
    }
    Ok(())
}

fn encode_state(state: &State, out: &mut Vec<u8>) {
    out.push(tag(state));
    match state {
        State::Count(n) => out.extend_from_slice(&n.to_le_bytes()),
        State::Sum(x) => x.encode(out),
        State::Mean { n, s1 } => {
            out.extend_from_slice(&n.to_le_bytes());
            s1.encode(out);
        }
        State::Moments(m) => {
            out.extend_from_slice(&m.n.to_le_bytes());
            m.s1.encode(out);
            m.s2.encode(out);
        }
        State::Min(h) | State::Max(h) => match h {
            None => out.push(0),
            Some(h) => {
                out.push(1);
                encode_held(h, out);
            }
        },
        State::First(e) | State::Last(e) => match e {
            None => out.push(0),
            Some(b) => {
                out.push(1);
                encode_order(&b.0, out);
                encode_held(&b.1, out);
            }
        },
        State::FirstN(items) | State::LastN(items) => {
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for (order, held) in items {
                encode_order(order, out);
                encode_held(held, out);
            }
        }
        State::Distinct(d) => encode_distinct(d, out),
        State::Hll(s) => {
            let regs = s.registers();
            out.extend_from_slice(&(regs.len() as u32).to_le_bytes());
            for (index, rank) in regs {
                out.extend_from_slice(&index.to_le_bytes());
                out.push(rank);
            }
        }
    }
}

fn decode_state(buf: &mut &[u8]) -> Result<State, CodecError> {
    let t = take_u8(buf)?;
    Ok(match t {
        T_COUNT => State::Count(take_u64(buf)?),
        T_SUM => State::Sum(take_exact(buf)?),
        T_MEAN => State::Mean {
            n: take_u64(buf)?,
            s1: take_exact(buf)?,
        },
        T_MOMENTS => State::Moments(Box::new(Moments {
            n: take_u64(buf)?,
            s1: take_exact(buf)?,
            s2: take_exact(buf)?,
        })),
        T_MIN | T_MAX => {
            let held = match take_u8(buf)? {
                0 => None,
                1 => Some(decode_held(buf)?),
                other => return Err(bad(format!("min/max presence byte {other}"))),
            };
            if t == T_MIN {
                State::Min(held)
            } else {
                State::Max(held)
            }
        }
        T_FIRST | T_LAST => {
            let item = match take_u8(buf)? {
                0 => None,
                1 => Some(Box::new((decode_order(buf)?, decode_held(buf)?))),
                other => return Err(bad(format!("first/last presence byte {other}"))),
            };
            if t == T_FIRST {
                State::First(item)
            } else {
                State::Last(item)
            }
        }
        T_FIRST_N | T_LAST_N => {
            let n = take_u32(buf)? as usize;
            let mut items = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                items.push((decode_order(buf)?, decode_held(buf)?));
            }
            if t == T_FIRST_N {
                State::FirstN(items)
            } else {
                State::LastN(items)
            }
        }
        T_DISTINCT => State::Distinct(Box::new(decode_distinct(buf)?)),
        T_HLL => {
            let n = take_u32(buf)? as usize;
            let mut sketch = Sketch::new();
            for _ in 0..n {
                let index = take_u16(buf)?;
                let rank = take_u8(buf)?;
                if index as usize >= 1 << 14 || rank == 0 {
                    return Err(bad(format!("HyperLogLog register {index} rank {rank}")));
                }
                sketch.set(index, rank);
            }
            State::Hll(sketch)
        }
        other => return Err(bad(format!("unknown state tag {other}"))),
    })
}

fn encode_order(o: &Order, out: &mut Vec<u8>) {
    out.extend_from_slice(&o.0.to_le_bytes());
    out.extend_from_slice(&o.1.to_le_bytes());
    out.extend_from_slice(&o.2.to_le_bytes());
}

fn decode_order(buf: &mut &[u8]) -> Result<Order, CodecError> {
    Ok((
        take_u64(buf)? as i64,
        take_u32(buf)? as i32,
        take_u64(buf)? as i64,
    ))
}

fn encode_held(h: &Held, out: &mut Vec<u8>) {
    match h {
        Held::Int(x) => {
            out.push(0);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Held::Float(x) => {
            out.push(1);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Held::Str(s) => {
            out.push(2);
            put_bytes(s.as_bytes(), out);
        }
        Held::Bool(b) => {
            out.push(3);
            out.push(*b as u8);
        }
        Held::Bytes(b) => {
            out.push(4);
            put_bytes(b, out);
        }
    }
}

fn decode_held(buf: &mut &[u8]) -> Result<Held, CodecError> {
    Ok(match take_u8(buf)? {
        0 => Held::Int(take_u64(buf)? as i64),
        1 => Held::Float(f64::from_bits(take_u64(buf)?)),
        2 => Held::Str(take_str(buf)?.into()),
        3 => Held::Bool(take_u8(buf)? != 0),
        4 => Held::Bytes(take_bytes(buf)?.into()),
        other => return Err(bad(format!("unknown value kind {other}"))),
    })
}

fn encode_distinct(d: &Distinct, out: &mut Vec<u8>) {
    match d {
        Distinct::Int(s) => {
            out.push(0);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            for x in s {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Distinct::Float(s) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            for x in s {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        Distinct::Str(s) => {
            out.push(2);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            for x in s {
                put_bytes(x.as_bytes(), out);
            }
        }
        Distinct::Bytes(s) => {
            out.push(4);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            for x in s {
                put_bytes(x, out);
            }
        }
        Distinct::Bool(bits) => {
            out.push(3);
            out.push(*bits);
        }
    }
}

fn decode_distinct(buf: &mut &[u8]) -> Result<Distinct, CodecError> {
    Ok(match take_u8(buf)? {
        0 => {
            let n = take_u32(buf)? as usize;
            let mut s = rustc_hash::FxHashSet::default();
            for _ in 0..n {
                s.insert(take_u64(buf)? as i64);
            }
            Distinct::Int(s)
        }
        1 => {
            let n = take_u32(buf)? as usize;
            let mut s = rustc_hash::FxHashSet::default();
            for _ in 0..n {
                s.insert(take_u64(buf)?);
            }
            Distinct::Float(s)
        }
        2 => {
            let n = take_u32(buf)? as usize;
            let mut s = rustc_hash::FxHashSet::default();
            for _ in 0..n {
                s.insert(Box::<str>::from(take_str(buf)?));
            }
            Distinct::Str(s)
        }
        4 => {
            let n = take_u32(buf)? as usize;
            let mut s = rustc_hash::FxHashSet::default();
            for _ in 0..n {
                s.insert(Box::<[u8]>::from(take_bytes(buf)?));
            }
            Distinct::Bytes(s)
        }
        3 => Distinct::Bool(take_u8(buf)? & 3),
        other => return Err(bad(format!("unknown distinct-set kind {other}"))),
    })
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], CodecError> {
    if buf.len() < n {
        return Err(bad("tile bytes end early"));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_u8(buf: &mut &[u8]) -> Result<u8, CodecError> {
    Ok(take(buf, 1)?[0])
}

fn take_u16(buf: &mut &[u8]) -> Result<u16, CodecError> {
    Ok(u16::from_le_bytes(
        take(buf, 2)?.try_into().expect("2 bytes"),
    ))
}

fn take_u32(buf: &mut &[u8]) -> Result<u32, CodecError> {
    Ok(u32::from_le_bytes(
        take(buf, 4)?.try_into().expect("4 bytes"),
    ))
}

fn take_u64(buf: &mut &[u8]) -> Result<u64, CodecError> {
    Ok(u64::from_le_bytes(
        take(buf, 8)?.try_into().expect("8 bytes"),
    ))
}

fn take_exact(buf: &mut &[u8]) -> Result<Exact, CodecError> {
    Exact::decode(buf).ok_or_else(|| bad("a truncated exact number"))
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let n = take_u32(buf)? as usize;
    take(buf, n)
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, CodecError> {
    std::str::from_utf8(take_bytes(buf)?).map_err(|_| bad("a string that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::{Func, Input};
    use crate::value::Kind;

    fn roundtrip(agg: &Agg, inputs: &[Input<'_>]) {
        let mut s = agg.init();
        for (i, v) in inputs.iter().enumerate() {
            agg.add(&mut s, *v, (i as i64 * 7 % 5, 1, i as i64));
        }
        let mut bytes = Vec::new();
        encode_tile(std::slice::from_ref(&s), &mut bytes);
        let back = decode_tile(&[agg], &bytes).expect("decodes");
        let (a, b) = (agg.finalize(&s), agg.finalize(&back[0]));
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "{:?}", agg.func);
    }

    #[test]
    fn every_function_roundtrips() {
        let floats = [
            Input::Float(1e300),
            Input::Float(-0.0),
            Input::Float(0.1),
            Input::Null,
        ];
        let strs = [
            Input::Str("b"),
            Input::Str("é"),
            Input::Str("a"),
            Input::Null,
        ];
        for func in [
            Func::Count,
            Func::Sum,
            Func::Mean,
            Func::Variance,
            Func::Stddev,
            Func::Min,
            Func::Max,
            Func::First,
            Func::Last,
            Func::FirstN(2),
            Func::LastN(3),
            Func::CountDistinct,
            Func::ApproxCountDistinct,
        ] {
            roundtrip(&Agg::new(func, Kind::Float).unwrap(), &floats);
            if func.accepts(Kind::Str) {
                roundtrip(&Agg::new(func, Kind::Str).unwrap(), &strs);
            }
        }
    }

    #[test]
    fn old_and_foreign_bytes_are_refused() {
        let agg = Agg::new(Func::Count, Kind::Int).unwrap();
        let err = decode_tile(&[&agg], &[0x92, 0x01, 0x91, 0x05]).unwrap_err();
        assert!(err.0.contains("version 1"), "{err}");
        assert!(decode_tile(&[&agg], &[]).is_err());
        assert!(decode_tile(&[&agg], &[VERSION, 1, 0, T_COUNT, 1]).is_err());
        let sum = Agg::new(Func::Sum, Kind::Int).unwrap();
        let mut bytes = Vec::new();
        encode_tile(&[sum.init()], &mut bytes);
        assert!(
            decode_tile(&[&agg], &bytes).is_err(),
            "a sum tile is not a count tile"
        );
    }
}
