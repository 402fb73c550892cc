//! Nanoseconds per `add` of the aggregation kernel over 10M values into one state
//! (`cargo bench -p skewless-core --bench kernel`; std::time only, best of 3 runs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use skewless_core::agg::{Agg, Func, Input, State};
use skewless_core::value::Kind;

use common::Rng;

const N: usize = 10_000_000;

fn bench(label: &str, func: Func, kind: Kind, inputs: &[Input<'_>]) {
    let agg = Agg::new(func, kind).expect("allowed kind");
    let mut best = f64::INFINITY;
    let mut result = None;
    for _ in 0..3 {
        let mut state: State = agg.init();
        let start = Instant::now();
        for (i, &v) in inputs.iter().enumerate() {
            agg.add(&mut state, black_box(v), (i as i64, 0, i as i64));
        }
        let value = agg.finalize(black_box(&state));
        let ns = start.elapsed().as_nanos() as f64 / inputs.len() as f64;
        best = best.min(ns);
        result = Some(value);
    }
    let shown = format!("{:?}", result.expect("three runs"));
    let shown: String = shown.chars().take(40).collect();
    println!("{label:<34} {best:>8.2} ns/add   -> {shown}");
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // money: cents up to 10,000.00, as doubles
    let money: Vec<f64> = (0..N)
        .map(|_| (rng.next() % 1_000_000) as f64 / 100.0)
        .collect();
    // the full exponent range, both signs
    let wild: Vec<f64> = (0..N)
        .map(|_| loop {
            let x = f64::from_bits(rng.next());
            if x.is_finite() {
                break x;
            }
        })
        .collect();
    let ints: Vec<i64> = (0..N).map(|_| (rng.next() % 1_000_000) as i64).collect();
    let ids: Vec<i64> = (0..N).map(|_| (rng.next() % 1_000_000) as i64).collect();
    let words: Vec<String> = (0..N)
        .map(|_| format!("user-{}", rng.next() % 100_000))
        .collect();

    let money_in: Vec<Input> = money.iter().map(|&x| Input::Float(x)).collect();
    let wild_in: Vec<Input> = wild.iter().map(|&x| Input::Float(x)).collect();
    let ints_in: Vec<Input> = ints.iter().map(|&x| Input::Int(x)).collect();
    let ids_in: Vec<Input> = ids.iter().map(|&x| Input::Int(x)).collect();
    let words_in: Vec<Input> = words.iter().map(|s| Input::Str(s)).collect();

    println!(
        "skewless-core kernel, {N} values into one state; size_of::<State>() = {} bytes",
        std::mem::size_of::<State>()
    );
    bench("count (float)", Func::Count, Kind::Float, &money_in);
    bench("min (float)", Func::Min, Kind::Float, &money_in);
    bench("max (int)", Func::Max, Kind::Int, &ints_in);
    bench("last (int)", Func::Last, Kind::Int, &ints_in);
    bench("sum (int)", Func::Sum, Kind::Int, &ints_in);
    bench("sum (float, money)", Func::Sum, Kind::Float, &money_in);
    bench(
        "sum (float, full exponent range)",
        Func::Sum,
        Kind::Float,
        &wild_in,
    );
    bench("mean (float, money)", Func::Mean, Kind::Float, &money_in);
    bench(
        "variance (float, money)",
        Func::Variance,
        Kind::Float,
        &money_in,
    );
    bench("variance (int)", Func::Variance, Kind::Int, &ints_in);
    bench(
        "count_distinct (int, 1M ids)",
        Func::CountDistinct,
        Kind::Int,
        &ids_in,
    );
    bench(
        "count_distinct (str, 100k)",
        Func::CountDistinct,
        Kind::Str,
        &words_in,
    );
    bench(
        "approx_count_distinct (int)",
        Func::ApproxCountDistinct,
        Kind::Int,
        &ids_in,
    );
    bench(
        "approx_count_distinct (str)",
        Func::ApproxCountDistinct,
        Kind::Str,
        &words_in,
    );
}
