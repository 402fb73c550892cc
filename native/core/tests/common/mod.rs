//! Scaffolding shared by the core's integration tests and benches (`#[path]`-included by
//! the benches): a seeded generator and a view built from aggregation specs.
#![allow(dead_code)] // each test or bench uses part of it

use skewless_core::agg::Agg;
use skewless_core::online::OnlineView;
use skewless_core::tiles::Layout;

/// A small xorshift generator: seeded, no crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `(function, kind, n, window, hop)`; `window` None: lifetime.
pub type Spec = (
    &'static str,
    &'static str,
    Option<u32>,
    Option<i64>,
    Option<i64>,
);

/// A view of `specs` in `group`, aggregation `a` reading the group's input `inputs[a]`.
pub fn view(
    fingerprint: &str,
    group: usize,
    specs: &[Spec],
    inputs: Vec<usize>,
    allowed_lateness_ms: Option<i64>,
) -> OnlineView {
    let aggs = specs
        .iter()
        .map(|(f, k, n, _, _)| Agg::parse(f, k, *n).expect("valid"))
        .collect();
    let windows = specs.iter().map(|s| s.3).collect();
    let hops = specs.iter().map(|s| s.4).collect();
    OnlineView {
        fingerprint: fingerprint.into(),
        layout: Layout::new(aggs, windows, hops).expect("layout"),
        group,
        inputs,
        allowed_lateness_ms,
    }
}
