//! The online reader's hot path: feature values as of `t` straight from an entity hash's
//! bytes, and the Redis replies (RESP) those hashes arrive in, parsed in place.
//!
//! [`ReadSpec::evaluate`] gives what [`crate::online::evaluate`] gives, bit for bit, without
//! materialising the entity's tiles: each tile a requested window covers is decoded into one
//! reused buffer and merged straight into the accumulator of every requested aggregation
//! whose window holds it (merge is associative and commutative bit for bit, so the order
//! of tiles and partitions does not matter). The tiles decoded — and so the tiles a corrupt
//! byte is reported for — are exactly those of `evaluate`. It also says, per requested
//! aggregation, whether any tile of its window (any lifetime accumulator) exists: what the
//! online statuses settle from field names when values cannot tell.
//!
//! [`Replies`] indexes a buffer of RESP replies (RESP2 arrays and RESP3 maps of bulk
//! strings, integers, errors) without copying a field: the reader gets its hashes' fields as
//! slices of the one buffer the socket filled.

use crate::agg::{Agg, State};
use crate::codec::{decode_tile_into, state_tag, CodecError};
use crate::online::field_name;
use crate::tiles::{window_end, Layout};
use crate::value::Value;

/// A requested aggregation in its hop group: `(position in the request, slot in the
/// group's tiles, its window in tiles)`.
type Wanted = (usize, usize, i64);

/// What a read of aggregations `indices` of a layout needs, resolved once.
pub struct ReadSpec {
    pub layout: Layout,
    pub indices: Vec<usize>,
    /// Per hop group: its hop and the requested `(position, slot, window in tiles)` in it.
    groups: Vec<(i64, Vec<Wanted>)>,
    /// The requested lifetime aggregations: `(position, slot)`.
    lifetime: Vec<(usize, usize)>,
}

/// One entity's evaluation: values in request order, the newest write time (0: none), and
/// per requested position whether a tile of its window (a lifetime accumulator) exists.
pub struct Evaluated {
    pub values: Vec<Value>,
    pub updated_ms: i64,
    pub seen: Vec<u8>,
}

impl ReadSpec {
    /// Refuses an index outside the layout.
    pub fn new(layout: Layout, indices: Vec<usize>) -> Result<ReadSpec, String> {
        let mut groups: Vec<(i64, Vec<Wanted>)> = layout
            .groups
            .iter()
            .map(|g| (g.hop_ms, Vec::new()))
            .collect();
        let mut lifetime = Vec::new();
        for (pos, &i) in indices.iter().enumerate() {
            let Some(&slot) = layout.slots.get(i) else {
                return Err(format!(
                    "aggregation index {i} out of range ({} aggregations)",
                    layout.aggs.len()
                ));
            };
            match slot {
                (None, j) => lifetime.push((pos, j)),
                (Some(g), j) => {
                    let hop = layout.groups[g].hop_ms;
                    let tiles = layout.windows_ms[i].unwrap_or(hop) / hop;
                    groups[g].1.push((pos, j, tiles));
                }
            }
        }
        Ok(ReadSpec {
            layout,
            indices,
            groups,
            lifetime,
        })
    }

    /// The evaluation as of `t_ms` (window bounds and decoding tables, for many entities).
    pub fn at(&self, t_ms: i64) -> ReadAt<'_> {
        let layout = &self.layout;
        let groups = self
            .groups
            .iter()
            .zip(&layout.groups)
            .map(|((hop, wanted), group)| {
                let end = window_end(*hop, t_ms);
                let wanted: Vec<(usize, usize, i64)> = wanted
                    .iter()
                    .map(|&(pos, j, tiles)| (pos, j, end - tiles))
                    .collect();
                let low = wanted.iter().map(|w| w.2).min().unwrap_or(end);
                let aggs: Vec<&Agg> = group.members.iter().map(|&i| &layout.aggs[i]).collect();
                let tags = aggs.iter().map(|a| state_tag(a)).collect();
                GroupAt {
                    hop: *hop,
                    low,
                    end,
                    wanted,
                    aggs,
                    tags,
                }
            })
            .collect();
        let lifetime_aggs: Vec<&Agg> = layout.lifetime.iter().map(|&i| &layout.aggs[i]).collect();
        let lifetime_tags = lifetime_aggs.iter().map(|a| state_tag(a)).collect();
        ReadAt {
            spec: self,
            groups,
            lifetime_aggs,
            lifetime_tags,
            scratch: Vec::new(),
        }
    }
}

struct GroupAt<'a> {
    hop: i64,
    low: i64,
    end: i64,
    /// `(position, slot, first tile of its window)`
    wanted: Vec<(usize, usize, i64)>,
    aggs: Vec<&'a Agg>,
    tags: Vec<u8>,
}

/// [`ReadSpec`] as of one time.
pub struct ReadAt<'a> {
    spec: &'a ReadSpec,
    groups: Vec<GroupAt<'a>>,
    lifetime_aggs: Vec<&'a Agg>,
    lifetime_tags: Vec<u8>,
    scratch: Vec<State>,
}

impl ReadAt<'_> {
    /// The requested values of one entity's hash as of `t` (see the module docs).
    pub fn evaluate<'f>(
        &mut self,
        fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
    ) -> Result<Evaluated, CodecError> {
        let spec = self.spec;
        let layout = &spec.layout;
        let mut accs: Vec<State> = spec
            .indices
            .iter()
            .map(|&i| layout.aggs[i].init())
            .collect();
        let mut seen = vec![0u8; spec.indices.len()];
        let mut updated = 0i64;
        let lifetime = !spec.lifetime.is_empty();
        for (name, value) in fields {
            if name.starts_with(b"u:") {
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    updated = updated.max(ms);
                }
            }
            let Some((kind, _, hop, k)) = parse_name(name) else {
                continue;
            };
            let named = |e: CodecError| {
                CodecError(format!(
                    "field '{}': cannot decode: {}",
                    String::from_utf8_lossy(name),
                    e.0
                ))
            };
            match kind {
                b't' => {
                    let Some(g) = self.groups.iter().position(|g| g.hop == hop) else {
                        continue;
                    };
                    let group = &self.groups[g];
                    if group.wanted.is_empty() || k < group.low || k >= group.end {
                        continue;
                    }
                    decode_tile_into(&group.aggs, &group.tags, value, &mut self.scratch)
                        .map_err(named)?;
                    for &(pos, j, start) in &group.wanted {
                        if start <= k {
                            layout.aggs[spec.indices[pos]].merge(&mut accs[pos], &self.scratch[j]);
                            seen[pos] = 1;
                        }
                    }
                }
                b'l' if lifetime => {
                    decode_tile_into(
                        &self.lifetime_aggs,
                        &self.lifetime_tags,
                        value,
                        &mut self.scratch,
                    )
                    .map_err(named)?;
                    for &(pos, j) in &spec.lifetime {
                        layout.aggs[spec.indices[pos]].merge(&mut accs[pos], &self.scratch[j]);
                        seen[pos] = 1;
                    }
                }
                _ => {}
            }
        }
        let values = spec
            .indices
            .iter()
            .zip(&accs)
            .map(|(&i, acc)| layout.aggs[i].finalize(acc))
            .collect();
        Ok(Evaluated {
            values,
            updated_ms: updated,
            seen,
        })
    }
}

/// [`field_name`], fast for the names the worker writes (`t:<p>:<hop>:<k>`, `l:<p>`, …,
/// plain decimal digits); anything else goes through `field_name` itself.
#[inline]
pub fn parse_name(name: &[u8]) -> Option<(u8, i32, i64, i64)> {
    if name.len() < 3 || name[1] != b':' {
        return field_name(name);
    }
    let kind = name[0];
    let rest = &name[2..];
    match kind {
        b't' => {
            let (p, rest) = digits_to(rest, 9, b':');
            let (hop, rest) = digits_to(rest, 18, b':');
            let (k, rest) = digits_to(rest, 18, 0);
            match (p, hop, k, rest.is_empty()) {
                (Some(p), Some(hop), Some(k), true) => Some((b't', p as i32, hop, k)),
                _ => field_name(name),
            }
        }
        b'l' | b'f' | b'u' | b'j' => match digits_to(rest, 9, 0) {
            (Some(p), []) => Some((kind, p as i32, 0, 0)),
            _ => field_name(name),
        },
        _ => field_name(name),
    }
}

/// The number a run of 1 to `max` ASCII digits at the start of `s` makes, up to the byte
/// `stop` (consumed) or the end, and what follows; `None` for anything else.
#[inline]
fn digits_to(s: &[u8], max: usize, stop: u8) -> (Option<i64>, &[u8]) {
    let mut n = 0i64;
    for (i, &b) in s.iter().enumerate() {
        if b.is_ascii_digit() {
            if i >= max {
                return (None, s);
            }
            n = n * 10 + (b - b'0') as i64;
        } else if b == stop && i > 0 && stop != 0 {
            return (Some(n), &s[i + 1..]);
        } else {
            return (None, s);
        }
    }
    if s.is_empty() || stop != 0 {
        return (None, s);
    }
    (Some(n), &[])
}

/// One RESP reply in a [`Replies`] buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An array (RESP2) or map (RESP3) of bulk strings, as `(name, value)` byte ranges;
    /// a nil array is an empty hash.
    Hash(Vec<(u32, u32, u32, u32)>),
    Int(i64),
    /// An error reply's text (byte range, without the `-`).
    Error(u32, u32),
    /// Anything else (a caller that meets one reads the replies another way).
    Other,
}

/// A RESP header line at `at`: its type byte, its number (lengths and integers; 0 for the
/// other kinds), where its text begins and where the next line begins. `Ok(None)` while
/// the line is incomplete.
#[inline]
fn header(buf: &[u8], at: usize) -> Result<Option<(u8, i64, usize, usize)>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let body = at + 1;
    match kind {
        b'$' | b'*' | b'%' | b':' | b'~' | b'>' | b'|' | b'=' | b'!' => {
            let mut i = body;
            let negative = buf.get(i) == Some(&b'-');
            if negative {
                i += 1;
            }
            let first = i;
            let mut n: i64 = 0;
            while let Some(&b) = buf.get(i) {
                if b.is_ascii_digit() {
                    if i - first >= 18 {
                        return Err("a RESP number over 18 digits".into());
                    }
                    n = n * 10 + (b - b'0') as i64;
                    i += 1;
                } else if b == b'\r' {
                    if i == first {
                        return Err(format!(
                            "a RESP header of type {:?} without a number",
                            kind as char
                        ));
                    }
                    return match buf.get(i + 1) {
                        None => Ok(None),
                        Some(b'\n') => Ok(Some((kind, if negative { -n } else { n }, body, i + 2))),
                        Some(_) => Err("a RESP line not ended by CRLF".into()),
                    };
                } else {
                    return Err(format!("a bad byte 0x{b:02x} in a RESP number"));
                }
            }
            Ok(None)
        }
        b'+' | b'-' | b'_' | b',' | b'#' | b'(' => {
            let Some(cr) = buf[body..].iter().position(|&b| b == b'\r') else {
                return Ok(None);
            };
            match buf.get(body + cr + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some((kind, 0, body, body + cr + 2))),
                Some(_) => Err("a RESP line not ended by CRLF".into()),
            }
        }
        other => Err(format!("unknown RESP type byte 0x{other:02x}")),
    }
}

/// The end of the reply at `at`, and the reply if `index` (None: incomplete).
fn reply(buf: &[u8], at: usize, index: bool) -> Result<Option<(usize, Reply)>, String> {
    let Some((kind, n, body, next)) = header(buf, at)? else {
        return Ok(None);
    };
    match kind {
        b'$' | b'=' | b'!' => {
            if n < 0 {
                return Ok(Some((next, Reply::Other)));
            }
            let end = next + n as usize + 2;
            Ok((end <= buf.len()).then_some((end, Reply::Other)))
        }
        b':' => Ok(Some((next, Reply::Int(n)))),
        b'-' => Ok(Some((next, Reply::Error(body as u32, (next - 2) as u32)))),
        b'*' | b'%' => {
            if n < 0 {
                return Ok(Some((next, Reply::Hash(Vec::new()))));
            }
            let items = if kind == b'%' { 2 * n } else { n } as usize;
            let mut at = next;
            let mut pairs = Vec::with_capacity(if index { items / 2 } else { 0 });
            let mut name = (0u32, 0u32);
            let mut plain = items % 2 == 0; // all bulk strings, in pairs
            for item in 0..items {
                match header(buf, at)? {
                    Some((b'$', len, _, start)) if len >= 0 => {
                        let end = start + len as usize;
                        if end + 2 > buf.len() {
                            return Ok(None);
                        }
                        if index && plain {
                            if item % 2 == 0 {
                                name = (start as u32, end as u32);
                            } else {
                                pairs.push((name.0, name.1, start as u32, end as u32));
                            }
                        }
                        at = end + 2;
                    }
                    Some(_) => {
                        plain = false;
                        match reply(buf, at, false)? {
                            Some((end, _)) => at = end,
                            None => return Ok(None),
                        }
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((
                at,
                if plain {
                    Reply::Hash(pairs)
                } else {
                    Reply::Other
                },
            )))
        }
        b'~' | b'>' | b'|' => {
            let items = if kind == b'|' { 2 * n.max(0) } else { n.max(0) } as usize;
            let mut at = next;
            for _ in 0..items {
                match reply(buf, at, false)? {
                    Some((end, _)) => at = end,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // an attribute precedes the reply it describes: both are one, unknown, reply
                return Ok(reply(buf, at, false)?.map(|(end, _)| (end, Reply::Other)));
            }
            Ok(Some((at, Reply::Other)))
        }
        _ => Ok(Some((next, Reply::Other))),
    }
}

/// `count` RESP replies, fed as they arrive and indexed in place: hashes as byte ranges
/// of the one buffer.
pub struct Replies {
    pub buf: Vec<u8>,
    pub replies: Vec<Reply>,
    /// Where each complete reply ends in `buf` (the next one begins there).
    pub ends: Vec<u32>,
    count: usize,
    /// Where the first reply not yet complete begins.
    at: usize,
}

impl Replies {
    pub fn new(count: usize) -> Replies {
        Replies {
            buf: Vec::new(),
            replies: Vec::with_capacity(count),
            ends: Vec::with_capacity(count),
            count,
            at: 0,
        }
    }

    /// Append received bytes; how many replies are still missing. `Err` for bytes that are
    /// not RESP, or bytes past the last reply.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, String> {
        if self.buf.len() + bytes.len() > u32::MAX as usize {
            return Err("RESP replies over 4 GiB".into());
        }
        self.buf.extend_from_slice(bytes);
        while self.replies.len() < self.count {
            match reply(&self.buf, self.at, true)? {
                Some((end, r)) => {
                    self.replies.push(r);
                    self.ends.push(end as u32);
                    self.at = end;
                }
                None => break,
            }
        }
        if self.replies.len() == self.count && self.at != self.buf.len() {
            return Err(format!(
                "{} bytes past the last of {} replies",
                self.buf.len() - self.at,
                self.count
            ));
        }
        Ok(self.count - self.replies.len())
    }

    /// The bytes of the complete replies from reply `i` on (empty past the last one), to
    /// parse them another way.
    pub fn tail(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1).map_or(self.at, |&e| e as usize),
        };
        &self.buf[start.min(self.at)..self.at]
    }

    /// The fields of hash reply `i` as slices of the buffer (None: not a hash).
    pub fn hash(&self, i: usize) -> Option<impl Iterator<Item = (&[u8], &[u8])> + '_> {
        match self.replies.get(i) {
            Some(Reply::Hash(pairs)) => Some(hash_fields(&self.buf, pairs)),
            _ => None,
        }
    }
}

/// The fields of a [`Reply::Hash`] as slices of `buf`.
pub fn hash_fields<'b>(
    buf: &'b [u8],
    pairs: &'b [(u32, u32, u32, u32)],
) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + 'b {
    pairs.iter().map(move |&(n0, n1, v0, v1)| {
        (
            &buf[n0 as usize..n1 as usize],
            &buf[v0 as usize..v1 as usize],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_names_agree_with_field_name() {
        for name in [
            &b"t:0:3600000:498978"[..],
            b"t:12:60000:7",
            b"l:3",
            b"f:0",
            b"u:10",
            b"j:2",
            b"t:+1:60000:7",
            b"t:-1:60000:7",
            b"t:1:60000",
            b"t:1:60000:7:8",
            b"t:1:60000:",
            b"t:99999999999:60000:7",
            b"t:1:6000000000000000000000:7",
            b"x:1",
            b"l:",
            b"l:01",
            b"u:1:2",
            b"",
            b"t",
            b"\xff:1",
            b"t:1::7",
            b"t::1:7",
            b"t:1:2:3\0",
            b"l:1:",
            b"f:",
            b"u:0",
            b"t:0:3600000:0000000000000000001",
            b"t:1234567890:1:1",
            b"l:123456789",
            b"l:1234567890",
        ] {
            assert_eq!(parse_name(name), field_name(name), "{name:?}");
        }
    }

    #[test]
    fn replies_are_indexed_in_place() {
        let buf: &[u8] = b"*4\r\n$3\r\nf:0\r\n$2\r\n12\r\n$3\r\nu:0\r\n$0\r\n\r\n*0\r\n:1\r\n-ERR no\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n+OK\r\n*-1\r\n*2\r\n:1\r\n$1\r\nx\r\n:-7\r\n";
        for step in [1, 2, 3, 7, buf.len()] {
            let mut replies = Replies::new(9);
            let mut left = 9;
            for chunk in buf.chunks(step) {
                assert!(left > 0);
                left = replies.feed(chunk).unwrap();
            }
            assert_eq!(left, 0, "step {step}");
            let r = &replies.replies;
            let fields: Vec<_> = replies.hash(0).unwrap().collect();
            assert_eq!(fields, vec![(&b"f:0"[..], &b"12"[..]), (b"u:0", b"")]);
            assert_eq!(r[1], Reply::Hash(vec![]));
            assert_eq!(r[2], Reply::Int(1));
            let Reply::Error(a, b) = r[3] else {
                panic!("{r:?}")
            };
            assert_eq!(&replies.buf[a as usize..b as usize], b"ERR no");
            let fields: Vec<_> = replies.hash(4).unwrap().collect();
            assert_eq!(fields, vec![(&b"a"[..], &b"b"[..])]);
            assert_eq!(r[5], Reply::Other);
            assert_eq!(r[6], Reply::Hash(vec![]));
            assert_eq!(r[7], Reply::Other);
            assert_eq!(r[8], Reply::Int(-7));
            assert_eq!(replies.tail(0), buf);
            assert_eq!(
                replies.tail(5),
                b"+OK\r\n*-1\r\n*2\r\n:1\r\n$1\r\nx\r\n:-7\r\n"
            );
            assert_eq!(replies.tail(8), b":-7\r\n");
            assert_eq!(replies.tail(9), b"");
        }
        let mut partial = Replies::new(3);
        assert_eq!(partial.feed(b":1\r\n:2"), Ok(2));
        assert_eq!(partial.tail(1), b"", "an incomplete reply is not in a tail");
        let mut odd = Replies::new(1);
        assert_eq!(odd.feed(b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"), Ok(0));
        assert_eq!(odd.replies[0], Reply::Other);
        assert!(Replies::new(1).feed(b"?x\r\n").is_err());
        assert!(Replies::new(1).feed(b":1\r\n:2\r\n").is_err());
        assert!(Replies::new(1).feed(b"$3\r\nab").is_ok());
    }
}
