//! The HyperLogLog sketch of `approx_count_distinct` (precision 14), bit-identical to
//! `engine/kernel/hll.py`: same hash, same registers, same estimator arithmetic.
//!
//! A value hashes to 64 bits with BLAKE2b (8-byte digest, read big-endian); the top 14 bits
//! pick a register, which keeps the largest rank (leading zeros of the other 50 bits, plus
//! one) seen. The sketch stays sparse (sorted `(index, rank)` pairs) up to 2,048 touched
//! registers, then becomes 16,384 dense bytes. Merging takes the register-wise maximum, and
//! the estimate (Ertl, arXiv:1702.01284) is a function of the register histogram only, so
//! neither insertion nor merge order nor the representation changes the result.

use blake2::digest::consts::U8;
use blake2::{Blake2b, Digest};

/// Precision: 2^14 registers.
pub const P: u32 = 14;
/// Number of registers.
pub const M: usize = 1 << P;
const SPARSE_LIMIT: usize = 2048;
const RANK_BITS: u32 = 64 - P;

/// `(register index, rank)` of a value's canonical bytes (see `value_bytes` in hll.py).
#[inline]
pub fn register_of(bytes: &[u8]) -> (u16, u8) {
    let digest = Blake2b::<U8>::digest(bytes);
    let h = u64::from_be_bytes(digest.into());
    let index = (h >> RANK_BITS) as u16;
    let rest = h & ((1u64 << RANK_BITS) - 1);
    let bit_length = 64 - rest.leading_zeros();
    (index, (RANK_BITS - bit_length + 1) as u8)
}

/// Canonical bytes of an integer: its decimal ASCII form, written into `buf`.
#[inline]
pub fn int_bytes(x: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut v = x.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if x < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Canonical bytes of a float: big-endian IEEE bits of `x + 0.0` (folds −0.0 into 0.0).
#[inline]
pub fn float_bytes(x: f64) -> [u8; 8] {
    (x + 0.0).to_be_bytes()
}

/// One HLL sketch (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Sketch(Repr);

#[derive(Clone, Debug)]
enum Repr {
    /// `(index << 8) | rank`, sorted by index, ranks nonzero.
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Sparse(Vec::new())
    }
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Sketch {
        Sketch::default()
    }

    /// Add a value by its canonical bytes.
    #[inline]
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        let (index, rank) = register_of(bytes);
        self.set(index, rank);
    }

    /// Raise register `index` to `rank` if it is below.
    #[inline]
    pub fn set(&mut self, index: u16, rank: u8) {
        match &mut self.0 {
            Repr::Dense(regs) => {
                let r = &mut regs[index as usize];
                if *r < rank {
                    *r = rank;
                }
            }
            Repr::Sparse(items) => {
                let at = items.partition_point(|&x| (x >> 8) < index as u32);
                match items.get_mut(at) {
                    Some(x) if (*x >> 8) == index as u32 => {
                        if ((*x & 0xff) as u8) < rank {
                            *x = ((index as u32) << 8) | rank as u32;
                        }
                    }
                    _ => {
                        items.insert(at, ((index as u32) << 8) | rank as u32);
                        if items.len() > SPARSE_LIMIT {
                            self.densify();
                        }
                    }
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Repr::Sparse(items) = &self.0 {
            let mut regs = vec![0u8; M].into_boxed_slice();
            for &x in items {
                regs[(x >> 8) as usize] = (x & 0xff) as u8;
            }
            self.0 = Repr::Dense(regs);
        }
    }

    /// Register-wise maximum with `other`.
    pub fn merge(&mut self, other: &Sketch) {
        match &other.0 {
            Repr::Sparse(items) => {
                for &x in items {
                    self.set((x >> 8) as u16, (x & 0xff) as u8);
                }
            }
            Repr::Dense(theirs) => {
                self.densify();
                if let Repr::Dense(ours) = &mut self.0 {
                    for (a, &b) in ours.iter_mut().zip(theirs.iter()) {
                        *a = (*a).max(b);
                    }
                }
            }
        }
    }

    /// Nonzero registers as sorted `(index, rank)` pairs: the canonical content.
    pub fn registers(&self) -> Vec<(u16, u8)> {
        match &self.0 {
            Repr::Sparse(items) => items
                .iter()
                .map(|&x| ((x >> 8) as u16, (x & 0xff) as u8))
                .collect(),
            Repr::Dense(regs) => regs
                .iter()
                .enumerate()
                .filter(|(_, &r)| r != 0)
                .map(|(i, &r)| (i as u16, r))
                .collect(),
        }
    }

    /// Cardinality estimate: Ertl's improved estimator, the same float operations in the
    /// same order as hll.py, rounded half to even.
    pub fn estimate(&self) -> u64 {
        let mut counts = [0u32; RANK_BITS as usize + 2];
        match &self.0 {
            Repr::Sparse(items) => {
                counts[0] = (M - items.len()) as u32;
                for &x in items {
                    counts[(x & 0xff) as usize] += 1;
                }
            }
            Repr::Dense(regs) => {
                for &r in regs.iter() {
                    counts[r as usize] += 1;
                }
            }
        }
        if counts[0] as usize == M {
            return 0;
        }
        let m = M as f64;
        let q = RANK_BITS as usize;
        let mut z = m * tau(1.0 - counts[q + 1] as f64 / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + counts[k] as f64);
        }
        z += m * sigma(counts[0] as f64 / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        (alpha_inf * m * m / z).round_ties_even() as u64
    }
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        let d = 1.0 - x;
        z -= d * d * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_python() {
        // hashlib.blake2b(value_bytes(v), digest_size=8) → register_of in hll.py
        let mut buf = [0u8; 20];
        assert_eq!(register_of(b"a"), (4158, 3));
        assert_eq!(register_of(int_bytes(1, &mut buf)), (15807, 4));
        assert_eq!(register_of(int_bytes(-7, &mut buf)), (6440, 2));
        assert_eq!(register_of(&float_bytes(1.5)), (1262, 1));
        assert_eq!(register_of(b"xy"), (670, 4));
        assert_eq!(register_of(&[1u8]), (58, 5));
        assert_eq!(register_of("héllo".as_bytes()), (1239, 2));
        assert_eq!(int_bytes(i64::MIN, &mut buf), b"-9223372036854775808");
        assert_eq!(float_bytes(-0.0), float_bytes(0.0));
    }

    #[test]
    fn estimates_match_python() {
        // Sketch() with add(i) for i in range(n), estimate() in hll.py
        let known = [
            (0, 0),
            (1, 1),
            (10, 10),
            (100, 100),
            (1000, 996),
            (2000, 1982),
            (3000, 2976),
            (10000, 9885),
            (100000, 99314),
        ];
        let mut buf = [0u8; 20];
        for (n, want) in known {
            let mut s = Sketch::new();
            for i in 0..n {
                s.add_bytes(int_bytes(i, &mut buf));
            }
            assert_eq!(s.estimate(), want, "n = {n}");
        }
    }

    #[test]
    fn merge_is_order_free_across_forms() {
        let mut buf = [0u8; 20];
        let mut parts: Vec<Sketch> = Vec::new();
        for (lo, hi) in [(0, 50), (40, 5000), (4000, 4100), (100, 30000)] {
            let mut s = Sketch::new();
            for i in lo..hi {
                s.add_bytes(int_bytes(i, &mut buf));
            }
            parts.push(s);
        }
        let fold = |order: &[usize]| {
            let mut acc = Sketch::new();
            for &i in order {
                acc.merge(&parts[i]);
            }
            (acc.registers(), acc.estimate())
        };
        let want = fold(&[0, 1, 2, 3]);
        for o in [[3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
            assert_eq!(fold(&o), want);
        }
        let mut one = Sketch::new();
        for i in 0..30000 {
            one.add_bytes(int_bytes(i, &mut buf));
        }
        assert_eq!((one.registers(), one.estimate()), want);
    }
}
