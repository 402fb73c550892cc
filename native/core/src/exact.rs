//! Exact dyadic arithmetic for sums and moments, and the one correct rounding to `f64`.
//!
//! Every finite double is a dyadic rational `m · 2^e`, so a sum of doubles (or of their
//! squares, or of integers) is kept exactly as one such rational ([`Exact`]): addition is
//! exact, hence associative and commutative bit for bit. The value is rounded once, at the
//! end, to the nearest double with ties to even (IEEE round-half-even, subnormals included,
//! `±inf` beyond the double range) — what Python's `math.fsum` and its int/int true
//! division give.
//!
//! The mantissa lives in an `i128` while it fits (money-like values summed over millions of
//! events do) and moves to a `BigInt` when it does not.

use num_bigint::{BigInt, BigUint, Sign};
use num_integer::Integer;
use num_traits::{Signed, Zero};

/// An exact dyadic rational `m · 2^e` (see the module docs). 24 bytes while small.
#[derive(Clone, Debug)]
pub struct Exact(Repr);

#[derive(Clone, Debug)]
enum Repr {
    /// `m · 2^e` with `m = (hi << 64) | lo` as an `i128` (kept as two words so the struct
    /// stays 8-aligned and 24 bytes).
    Small {
        lo: u64,
        hi: i64,
        e: i32,
    },
    Big(Box<(BigInt, i32)>),
}

impl Default for Exact {
    fn default() -> Self {
        Exact::ZERO
    }
}

#[inline(always)]
fn join(lo: u64, hi: i64) -> i128 {
    ((hi as i128) << 64) | lo as i128
}

#[inline(always)]
fn split(m: i128) -> (u64, i64) {
    (m as u64, (m >> 64) as i64)
}

/// `m << s` when the result fits in an `i128`.
#[inline(always)]
fn shl_i128(m: i128, s: u32) -> Option<i128> {
    if s >= 127 {
        return if m == 0 { Some(0) } else { None };
    }
    let r = m << s;
    if (r >> s) == m {
        Some(r)
    } else {
        None
    }
}

/// A finite nonzero double as `(m, e)` with `m` odd: `x = m · 2^e`.
#[inline(always)]
pub fn decompose(x: f64) -> (i64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, e) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    let tz = m.trailing_zeros();
    let m = (m >> tz) as i64;
    let m = if bits >> 63 == 1 { -m } else { m };
    (m, e + tz as i32)
}

impl Exact {
    /// Zero.
    pub const ZERO: Exact = Exact(Repr::Small { lo: 0, hi: 0, e: 0 });

    /// `true` when the value is exactly zero.
    pub fn is_zero(&self) -> bool {
        match &self.0 {
            Repr::Small { lo, hi, .. } => *lo == 0 && *hi == 0,
            Repr::Big(b) => b.0.is_zero(),
        }
    }

    /// Add a finite double exactly (the caller filters non-finite values).
    #[inline]
    pub fn add_f64(&mut self, x: f64) {
        if x != 0.0 {
            let (m, e) = decompose(x);
            self.add_parts(m as i128, e);
        }
    }

    /// Add the square of a finite double exactly.
    #[inline]
    pub fn add_f64_squared(&mut self, x: f64) {
        if x != 0.0 {
            let (m, e) = decompose(x);
            let m = m as i128;
            self.add_parts(m * m, 2 * e);
        }
    }

    /// Add an integer exactly.
    #[inline]
    pub fn add_i64(&mut self, x: i64) {
        if x != 0 {
            self.add_parts(x as i128, 0);
        }
    }

    /// Add the square of an integer exactly (`i64::MIN²` = 2¹²⁶ fits an `i128`).
    #[inline]
    pub fn add_i64_squared(&mut self, x: i64) {
        if x != 0 {
            let m = x as i128;
            self.add_parts(m * m, 0);
        }
    }

    /// Add `m · 2^e` exactly.
    #[inline]
    pub fn add_parts(&mut self, m: i128, e: i32) {
        if let Repr::Small { lo, hi, e: ce } = &mut self.0 {
            let cur = join(*lo, *hi);
            if cur == 0 {
                (*lo, *hi) = split(m);
                *ce = e;
                return;
            }
            let sum = if e >= *ce {
                shl_i128(m, (e - *ce) as u32).and_then(|s| cur.checked_add(s))
            } else {
                let s = shl_i128(cur, (*ce - e) as u32).and_then(|c| c.checked_add(m));
                if s.is_some() {
                    *ce = e;
                }
                s
            };
            if let Some(s) = sum {
                (*lo, *hi) = split(s);
                return;
            }
        }
        self.add_big(BigInt::from(m), e);
    }

    fn to_big(&self) -> (BigInt, i32) {
        match &self.0 {
            Repr::Small { lo, hi, e } => (BigInt::from(join(*lo, *hi)), *e),
            Repr::Big(b) => (b.0.clone(), b.1),
        }
    }

    fn add_big(&mut self, m: BigInt, e: i32) {
        if let Repr::Small { .. } = self.0 {
            let (cm, ce) = self.to_big();
            self.0 = Repr::Big(Box::new((cm, ce)));
        }
        let Repr::Big(b) = &mut self.0 else {
            unreachable!("promoted above")
        };
        let (cm, ce) = &mut **b;
        if cm.is_zero() {
            *cm = m;
            *ce = e;
        } else if e >= *ce {
            *cm += m << ((e - *ce) as usize);
        } else {
            let shifted = std::mem::take(cm) << ((*ce - e) as usize);
            *cm = shifted + m;
            *ce = e;
        }
    }

    /// Add another exact value (the monoid's merge).
    pub fn merge(&mut self, other: &Exact) {
        match &other.0 {
            Repr::Small { lo, hi, e } => {
                let m = join(*lo, *hi);
                if m != 0 {
                    self.add_parts(m, *e);
                }
            }
            Repr::Big(b) => {
                if !b.0.is_zero() {
                    self.add_big(b.0.clone(), b.1)
                }
            }
        }
    }

    /// The value as `(m, e)` meaning `m · 2^e`.
    pub fn parts(&self) -> (BigInt, i32) {
        self.to_big()
    }

    /// The value as an `i128` when it is an integer that fits (integer sums).
    pub fn to_i128(&self) -> Option<i128> {
        match &self.0 {
            Repr::Small { lo, hi, e } => {
                let m = join(*lo, *hi);
                if m == 0 {
                    Some(0)
                } else if *e >= 0 {
                    shl_i128(m, *e as u32)
                } else {
                    None
                }
            }
            Repr::Big(b) => {
                if b.1 < 0 {
                    return None;
                }
                i128::try_from(&b.0 << (b.1 as usize)).ok()
            }
        }
    }

    /// The value correctly rounded to the nearest double (ties to even; `±inf` beyond).
    pub fn to_f64(&self) -> f64 {
        match &self.0 {
            Repr::Small { lo, hi, e } => {
                let m = join(*lo, *hi);
                round_u128(m < 0, m.unsigned_abs(), false, *e as i64)
            }
            Repr::Big(b) => round_big(b.0.is_negative(), b.0.magnitude(), false, b.1 as i64),
        }
    }

    /// The value divided by `n > 0`, correctly rounded (the exact mean).
    pub fn div_to_f64(&self, n: u64) -> f64 {
        match &self.0 {
            Repr::Small { lo, hi, e } => {
                let m = join(*lo, *hi);
                ratio_u128(m < 0, m.unsigned_abs(), n as u128, *e as i64)
            }
            Repr::Big(b) => ratio_to_f64(
                b.0.is_negative(),
                b.0.magnitude(),
                &BigUint::from(n),
                b.1 as i64,
            ),
        }
    }
}

/// The exact sample variance `(n·S2 − S1²) / (n(n−1))` of `n ≥ 2` values with exact sum
/// `s1` and exact sum of squares `s2`, as `(numerator, denominator, e)` meaning
/// `numerator / denominator · 2^e` (the numerator is never negative).
pub fn variance_ratio(n: u64, s1: &Exact, s2: &Exact) -> (BigUint, BigUint, i64) {
    let (m1, e1) = s1.parts();
    let (m2, e2) = s2.parts();
    let (e1, e2) = (e1 as i64, e2 as i64);
    let emin = e2.min(2 * e1);
    let a = (BigInt::from(n) * m2) << ((e2 - emin) as usize);
    let b = (&m1 * &m1) << ((2 * e1 - emin) as usize);
    let num = a - b;
    debug_assert!(!num.is_negative(), "n·S2 ≥ S1² by Cauchy–Schwarz");
    let den = BigUint::from(n) * BigUint::from(n - 1);
    let num = match num.into_parts() {
        (Sign::Minus, _) => BigUint::zero(),
        (_, mag) => mag,
    };
    (num, den, emin)
}

/// `±(q + δ) · 2^exp` rounded to the nearest double, ties to even, where `δ ∈ (0, 1)` when
/// `sticky` (bits below `q` are nonzero) and `δ = 0` otherwise. A caller passing `sticky`
/// gives `q` at least 55 significant bits, so the sticky bits lie below the rounding bit.
pub fn round_u128(neg: bool, q: u128, sticky: bool, exp: i64) -> f64 {
    let mag = if q == 0 {
        0.0
    } else {
        let bits = 128 - q.leading_zeros() as i64;
        let top = bits - 1 + exp;
        if top > 1023 {
            f64::INFINITY
        } else {
            let ulp = (top - 52).max(-1074);
            let drop = ulp - exp;
            let mant = if drop <= 0 {
                debug_assert!(!sticky);
                (q << (-drop) as u32) as u64
            } else if drop > bits {
                0 // below half an ulp
            } else {
                let d = drop as u32;
                let kept = if d >= 128 { 0 } else { q >> d };
                let rest = if d >= 128 { q } else { q & ((1u128 << d) - 1) };
                let half = 1u128 << (d - 1);
                let up = rest > half || (rest == half && (sticky || kept & 1 == 1));
                (kept + up as u128) as u64
            };
            compose(mant, ulp)
        }
    };
    if neg {
        -mag
    } else {
        mag
    }
}

/// `mant · 2^ulp` with `mant ≤ 2^53` and `ulp ≥ −1074` (`mant ≥ 2^52` unless `ulp = −1074`).
fn compose(mant: u64, ulp: i64) -> f64 {
    if mant == 0 {
        return 0.0;
    }
    if mant < (1 << 52) {
        debug_assert_eq!(ulp, -1074);
        return f64::from_bits(mant); // subnormal
    }
    let (mant, ulp) = if mant == 1 << 53 {
        (1u64 << 52, ulp + 1)
    } else {
        (mant, ulp)
    };
    let biased = ulp + 52 + 1023;
    if biased >= 2047 {
        return f64::INFINITY;
    }
    f64::from_bits(((biased as u64) << 52) | (mant & ((1 << 52) - 1)))
}

/// [`round_u128`] for a big `q`: bits beyond 120 fold into `sticky`.
pub fn round_big(neg: bool, q: &BigUint, sticky: bool, exp: i64) -> f64 {
    let bits = q.bits();
    if bits <= 120 {
        let small = u128::try_from(q).expect("at most 120 bits");
        return round_u128(neg, small, sticky, exp);
    }
    let shift = bits - 120;
    let lost = q.trailing_zeros().is_some_and(|tz| tz < shift);
    let small = u128::try_from(q >> shift).expect("120 bits");
    round_u128(neg, small, sticky || lost, exp + shift as i64)
}

/// `±(a / b) · 2^x` correctly rounded (`b > 0`).
pub fn ratio_to_f64(neg: bool, a: &BigUint, b: &BigUint, x: i64) -> f64 {
    if a.is_zero() {
        return 0.0;
    }
    if let (Ok(sa), Ok(sb)) = (u128::try_from(a), u128::try_from(b)) {
        return ratio_u128(neg, sa, sb, x);
    }
    ratio_big(neg, a, b, x)
}

fn ratio_big(neg: bool, a: &BigUint, b: &BigUint, x: i64) -> f64 {
    let (la, lb) = (a.bits() as i64, b.bits() as i64);
    // q = floor(a·2^s / b) has 55 or 56 bits: enough for the rounding bit and a sticky bit
    let s = 55 + lb - la;
    let (q, r) = if s >= 0 {
        (a << s as usize).div_rem(b)
    } else {
        a.div_rem(&(b << (-s) as usize))
    };
    round_big(neg, &q, !r.is_zero(), x - s)
}

/// [`ratio_to_f64`] on machine words (falls back to big integers when a shift overflows).
pub fn ratio_u128(neg: bool, a: u128, b: u128, x: i64) -> f64 {
    if a == 0 {
        return 0.0;
    }
    let la = 128 - a.leading_zeros() as i64;
    let lb = 128 - b.leading_zeros() as i64;
    let s = 55 + lb - la;
    let (num, den) = if s >= 0 {
        if la + s > 128 {
            return ratio_to_f64_big(neg, a, b, x);
        }
        (a << s as u32, b)
    } else {
        (a, b << (-s) as u32) // lb − s = la − 55 ≤ 73 bits
    };
    let (q, r) = (num / den, num % den);
    round_u128(neg, q, r != 0, x - s)
}

fn ratio_to_f64_big(neg: bool, a: u128, b: u128, x: i64) -> f64 {
    ratio_big(neg, &BigUint::from(a), &BigUint::from(b), x)
}

/// `sqrt((a / b) · 2^x)` correctly rounded (`a ≥ 0`, `b > 0`), for a variance beyond the
/// double range: `q = isqrt(floor(a·2^(x+2s) / b))` with ≥ 56 bits, sticky when inexact.
pub fn sqrt_ratio_to_f64(a: &BigUint, b: &BigUint, x: i64) -> f64 {
    if a.is_zero() {
        return 0.0;
    }
    let (la, lb) = (a.bits() as i64, b.bits() as i64);
    // a·2^t / b ≥ 2^(la − 1 − lb + t) must reach 2^112, with t = x + 2s
    let s = (113 + lb - la - x).div_euclid(2) + 1;
    let t = x + 2 * s;
    let (n, r) = if t >= 0 {
        (a << t as usize).div_rem(b)
    } else {
        a.div_rem(&(b << (-t) as usize))
    };
    let q = n.sqrt();
    let sticky = !r.is_zero() || &q * &q != n;
    round_big(false, &q, sticky, -s)
}

impl Exact {
    /// `m · 2^e` from a big integer (kept small when it fits an `i128`).
    pub fn from_parts(m: BigInt, e: i32) -> Exact {
        match i128::try_from(&m) {
            Ok(small) => {
                let (lo, hi) = split(small);
                Exact(Repr::Small { lo, hi, e })
            }
            Err(_) => Exact(Repr::Big(Box::new((m, e)))),
        }
    }

    /// Append the codec form: `e` as 4 bytes LE, the mantissa's length (u16 LE), then the
    /// mantissa as signed little-endian bytes (`engine` tile codec v2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (m, e) = match &self.0 {
            Repr::Small { lo, hi, e } => {
                let v = join(*lo, *hi);
                let bytes = v.to_le_bytes();
                // shortest two's complement prefix that keeps the sign
                let mut n = 16;
                while n > 1 {
                    let top = bytes[n - 1];
                    let below_sign = bytes[n - 2] & 0x80;
                    if (top == 0 && below_sign == 0) || (top == 0xff && below_sign != 0) {
                        n -= 1;
                    } else {
                        break;
                    }
                }
                out.extend_from_slice(&e.to_le_bytes());
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.extend_from_slice(&bytes[..n]);
                return;
            }
            Repr::Big(b) => (b.0.to_signed_bytes_le(), b.1),
        };
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(&m);
    }

    /// Read what [`Exact::encode`] wrote; `None` when the bytes end early.
    pub fn decode(buf: &mut &[u8]) -> Option<Exact> {
        if buf.len() < 6 {
            return None;
        }
        let e = i32::from_le_bytes(buf[..4].try_into().ok()?);
        let n = u16::from_le_bytes(buf[4..6].try_into().ok()?) as usize;
        if buf.len() < 6 + n || n == 0 {
            return None;
        }
        let bytes = &buf[6..6 + n];
        let exact = if n <= 16 {
            // fits an i128 (what `from_parts` keeps small): sign-extend, no big integer
            let fill = if bytes[n - 1] & 0x80 != 0 { 0xff } else { 0 };
            let mut wide = [fill; 16];
            wide[..n].copy_from_slice(bytes);
            let (lo, hi) = split(i128::from_le_bytes(wide));
            Exact(Repr::Small { lo, hi, e })
        } else {
            Exact::from_parts(BigInt::from_signed_bytes_le(bytes), e)
        };
        *buf = &buf[6 + n..];
        Some(exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_of_short_mantissas_matches_the_big_integer_path() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for n in 1..=17usize {
            for round in 0..200 {
                let mut bytes = vec![0u8; n];
                for b in bytes.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                if round % 4 == 0 {
                    bytes[n - 1] = 0x80; // most negative top byte
                } else if round % 4 == 1 {
                    bytes[n - 1] = 0x7f;
                }
                let e = (seed as i32) % 2000;
                let mut encoded = e.to_le_bytes().to_vec();
                encoded.extend_from_slice(&(n as u16).to_le_bytes());
                encoded.extend_from_slice(&bytes);
                encoded.push(0xaa); // the next state's first byte stays
                let mut buf = &encoded[..];
                let fast = Exact::decode(&mut buf).unwrap();
                assert_eq!(buf, &[0xaa]);
                let slow = Exact::from_parts(BigInt::from_signed_bytes_le(&bytes), e);
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
            }
        }
    }

    fn fsum_exact(xs: &[f64]) -> f64 {
        let mut s = Exact::ZERO;
        for &x in xs {
            s.add_f64(x);
        }
        s.to_f64()
    }

    #[test]
    fn sums_are_exact() {
        assert_eq!(fsum_exact(&[0.1, 0.2, 0.3]), 0.6);
        assert_eq!(fsum_exact(&[1e308, 1e-308, -1e308]), 1e-308);
        assert_eq!(fsum_exact(&[1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum_exact(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(fsum_exact(&[1e308, 1e308]), f64::INFINITY);
        assert_eq!(fsum_exact(&[-1e308, -1e308]), f64::NEG_INFINITY);
        assert_eq!(fsum_exact(&[f64::MAX, -f64::MAX, 5e-324]), 5e-324);
        assert_eq!(fsum_exact(&[]).to_bits(), 0.0f64.to_bits());
        assert_eq!(fsum_exact(&[-0.0]).to_bits(), 0.0f64.to_bits());
        // round half even at 2^53: 2^53 + 1 ties to 2^53, 2^53 + 3 ties to 2^53 + 4
        let big = 9007199254740992.0;
        assert_eq!(fsum_exact(&[big, 1.0]), big);
        assert_eq!(fsum_exact(&[big, 1.0, 1e-300]), big + 2.0);
        assert_eq!(fsum_exact(&[big, 3.0]), big + 4.0);
        // the largest subnormal plus the smallest: the smallest normal
        let max_sub = f64::from_bits((1 << 52) - 1);
        assert_eq!(fsum_exact(&[max_sub, 5e-324]), f64::MIN_POSITIVE);
        // DBL_MAX + half an ulp overflows (ties to even = 2^1024); just below does not
        let half_ulp = 2f64.powi(970);
        assert_eq!(fsum_exact(&[f64::MAX, half_ulp]), f64::INFINITY);
        assert_eq!(fsum_exact(&[f64::MAX, half_ulp, -5e-324]), f64::MAX);
    }

    #[test]
    fn big_fallback_matches_small() {
        let xs: Vec<f64> = (0..10_000).map(|i| (i as f64) * 1.1 + 0.37).collect();
        let mut s = Exact::ZERO;
        for &x in &xs {
            s.add_f64(x);
        }
        let mut b = Exact::ZERO;
        b.add_f64(1e300);
        for &x in &xs {
            b.add_f64(x);
        }
        b.add_f64(-1e300);
        assert!(matches!(b.0, Repr::Big(_)));
        assert_eq!(s.to_f64().to_bits(), b.to_f64().to_bits());
        assert_eq!(s.div_to_f64(7).to_bits(), b.div_to_f64(7).to_bits());
    }

    #[test]
    fn merge_is_order_free() {
        let parts: Vec<Vec<f64>> = vec![
            vec![1e308, -3.5, 0.1],
            vec![5e-324, -1e308, 2.2e-308],
            vec![1e16, 1.0, -1e16, 0.3],
        ];
        let fold = |order: &[usize]| {
            let mut acc = Exact::ZERO;
            for &i in order {
                let mut p = Exact::ZERO;
                for &x in &parts[i] {
                    p.add_f64(x);
                }
                acc.merge(&p);
            }
            acc.to_f64().to_bits()
        };
        let r = fold(&[0, 1, 2]);
        for o in [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            assert_eq!(fold(&o), r);
        }
    }

    #[test]
    fn ratios_round_correctly() {
        assert_eq!(ratio_u128(false, 1, 3, 0), 1.0 / 3.0);
        assert_eq!(ratio_u128(true, 2, 3, 0), -2.0 / 3.0);
        assert_eq!(ratio_u128(false, 1, 10, 0), 0.1);
        assert_eq!(ratio_u128(false, 1, 3, -1074), 0.0);
        assert_eq!(ratio_u128(false, 2, 3, -1074), 5e-324);
        assert_eq!(ratio_u128(false, 1, 2, -1073), 0.0 + 5e-324); // exact 2^-1074
        assert_eq!(ratio_u128(false, 1, 4, -1073), 0.0); // half of the smallest ties to 0
        assert_eq!(ratio_u128(false, 3, 4, -1073), 1e-323); // 1.5 ulp ties to 2
        assert_eq!(ratio_u128(false, 1, 1, 1024), f64::INFINITY);
        // the big path agrees with the word path
        for (a, b, x) in [
            (12345u128, 7u128, -3i64),
            (1 << 100, 3, 5),
            (999, 1 << 90, 0),
        ] {
            let w = ratio_u128(false, a, b, x);
            let g = ratio_to_f64_big(false, a, b, x);
            let h = ratio_to_f64(
                false,
                &(BigUint::from(a) << 200usize),
                &(BigUint::from(b) << 200usize),
                x,
            );
            assert_eq!(w.to_bits(), g.to_bits());
            assert_eq!(w.to_bits(), h.to_bits());
        }
    }

    #[test]
    fn variance_and_its_overflowing_root() {
        // 1e300 and 0.0: variance 5e599 overflows; stddev = 1e300 / sqrt(2)
        let (mut s1, mut s2) = (Exact::ZERO, Exact::ZERO);
        for x in [1e300, 0.0] {
            s1.add_f64(x);
            s2.add_f64_squared(x);
        }
        let (num, den, e) = variance_ratio(2, &s1, &s2);
        assert_eq!(ratio_to_f64(false, &num, &den, e), f64::INFINITY);
        assert_eq!(sqrt_ratio_to_f64(&num, &den, e), 7.071067811865476e299);
        // small exact root: variance of [1, 2, 3] = 1
        let (mut s1, mut s2) = (Exact::ZERO, Exact::ZERO);
        for x in [1, 2, 3] {
            s1.add_i64(x);
            s2.add_i64_squared(x);
        }
        let (num, den, e) = variance_ratio(3, &s1, &s2);
        assert_eq!(ratio_to_f64(false, &num, &den, e), 1.0);
        assert_eq!(sqrt_ratio_to_f64(&num, &den, e), 1.0);
        assert_eq!(
            sqrt_ratio_to_f64(&BigUint::from(2u8), &BigUint::from(1u8), 0),
            2f64.sqrt()
        );
        assert_eq!(
            sqrt_ratio_to_f64(&BigUint::from(2u8), &BigUint::from(1u8), -2000),
            2f64.sqrt() * 2f64.powi(-1000)
        );
    }

    #[test]
    fn integer_sums() {
        let mut s = Exact::ZERO;
        for _ in 0..4 {
            s.add_i64(i64::MAX);
        }
        assert_eq!(s.to_i128(), Some(4 * i64::MAX as i128));
        assert_eq!(std::mem::size_of::<Exact>(), 24);
    }
}
