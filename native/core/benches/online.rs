//! Microseconds per event of the stream worker's batch core (`OnlineCore::prepare`, `apply`
//! and `script_chunks`) on the example definitions (`definitions/payments.py`: 3 customer
//! views and 1 merchant view, 23 aggregations), without Python, Redis or Kafka:
//!
//! ```text
//! cargo bench -p skewless-core --bench online [-- EVENTS ROUNDS [BATCH]]
//! ```
//!
//! Events are those of `benchmarks/worker_core.py` in kind: 10,000 customers, 1,000
//! merchants, 4 partitions, event times spread over the 2 hours before "now". Times are the
//! process's CPU time (every thread's) and the wall time, each stage run serially and then
//! with its parallel thresholds (`PARALLEL_PAIRS`, `PARALLEL_WRITES`). Each round
//! feeds them to a fresh core in batches of 5,000 and of 50,000 (the first batch warms the
//! cache and is not timed; entries the core asks for are loaded empty, as from a fresh
//! Redis). Prints the best round per stage and a checksum of everything the core produced
//! (write keys, fields, deletions, expiries, checks, the RESP bodies and the counters): two
//! builds that print the same checksum produced the same bytes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use skewless_core::columns::{Column, ColumnData};
use skewless_core::online::{
    script_chunks_from, Applied, Events, GroupColumns, OnlineCore, OnlineGroup, OnlineView,
    PARALLEL_PAIRS, PARALLEL_WRITES,
};
use skewless_core::value::Value;

use common::{Rng, Spec};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as the Python extension

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const NOW: i64 = 1_765_000_000_000;
const PARTITIONS: u64 = 4;
const CHUNK_ARGS: usize = 4000;

/// The process's CPU time (every thread's: the rayon pool's too) and the wall clock.
#[derive(Clone, Copy)]
struct Instant {
    cpu: Duration,
    wall: Duration,
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Instant {
    fn now() -> Instant {
        Instant {
            cpu: clock(libc::CLOCK_PROCESS_CPUTIME_ID),
            wall: clock(libc::CLOCK_MONOTONIC),
        }
    }
}

/// CPU and wall time spent.
#[derive(Clone, Copy, Default)]
struct Spent {
    cpu: Duration,
    wall: Duration,
}

impl std::ops::Sub for Instant {
    type Output = Spent;
    fn sub(self, earlier: Instant) -> Spent {
        Spent {
            cpu: self.cpu - earlier.cpu,
            wall: self.wall - earlier.wall,
        }
    }
}

impl std::ops::AddAssign for Spent {
    fn add_assign(&mut self, other: Spent) {
        self.cpu += other.cpu;
        self.wall += other.wall;
    }
}

impl Spent {
    fn min(self, other: Spent) -> Spent {
        Spent {
            cpu: self.cpu.min(other.cpu),
            wall: self.wall.min(other.wall),
        }
    }
}

fn view(fingerprint: &str, group: usize, specs: &[Spec], inputs: Vec<usize>) -> OnlineView {
    let longest = specs.iter().filter_map(|s| s.3).max();
    common::view(fingerprint, group, specs, inputs, longest)
}

fn views() -> (Vec<OnlineView>, Vec<OnlineGroup>) {
    let d30 = Some(30 * DAY);
    let d7 = Some(7 * DAY);
    let d1 = Some(DAY);
    let h1 = Some(HOUR);
    let (hd, hh, h5m) = (Some(DAY), Some(HOUR), Some(5 * MIN));
    // group 0: customer_spend (payload columns: amount, merchant_id)
    let spend = view(
        "c0ffee01",
        0,
        &[
            ("sum", "float", None, d30, hd),
            ("count", "float", None, d7, hh),
            ("mean", "float", None, h1, h5m),
            ("count_distinct", "str", None, d1, hh),
            ("last", "float", None, None, None),
            ("max", "float", None, d1, hh),
            ("min", "float", None, d7, hh),
            ("stddev", "float", None, d30, hd),
            ("variance", "float", None, d7, hh),
        ],
        vec![0, 0, 0, 1, 0, 0, 0, 0, 0],
    );
    // group 1: customer_activity (fed: amount_usd, merchant_id, country, transaction_id)
    let activity = view(
        "c0ffee02",
        1,
        &[
            ("sum", "float", None, d1, hh),
            ("first", "float", None, None, None),
            ("last_n", "float", Some(5), d1, hh),
            ("first_n", "str", Some(3), d7, hh),
            ("approx_count_distinct", "str", None, d30, hd),
            ("count_distinct", "str", None, d7, hh),
            ("count", "str", None, Some(10 * MIN), Some(10_000)),
        ],
        vec![0, 0, 0, 1, 1, 2, 3],
    );
    // group 2: customer_online (fed, card-not-present rows only: amount)
    let mut online = view(
        "c0ffee03",
        2,
        &[
            ("sum", "float", None, h1, h5m),
            ("count", "float", None, None, None),
        ],
        vec![0, 0],
    );
    online.allowed_lateness_ms = Some(2 * HOUR);
    // group 3: merchant_risk (payload columns: amount, customer_id, country)
    let merchant = view(
        "c0ffee04",
        3,
        &[
            ("sum", "float", None, h1, h5m),
            ("count", "float", None, d1, hh),
            ("approx_count_distinct", "str", None, d7, hh),
            ("mean", "float", None, d7, hh),
            ("count_distinct", "str", None, d30, hd),
        ],
        vec![0, 0, 1, 0, 2],
    );
    let group = |keys: &[&str], inputs: &[&str]| OnlineGroup {
        key_fields: keys.iter().map(|s| s.to_string()).collect(),
        input_fields: inputs.iter().map(|s| s.to_string()).collect(),
    };
    (
        vec![spend, activity, online, merchant],
        vec![
            group(&["customer_id"], &["amount", "merchant_id"]),
            group(
                &["customer_id"],
                &["amount_usd", "merchant_id", "country", "transaction_id"],
            ),
            group(&["customer_id"], &["amount"]),
            group(&["merchant_id"], &["amount", "customer_id", "country"]),
        ],
    )
}

/// One event's fields.
struct Row {
    customer: String,
    merchant: String,
    amount: f64,
    currency: usize,
    country: &'static str,
    card_present: bool,
    ts: i64,
    tx: String,
}

fn rows(n: usize) -> Vec<Row> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const COUNTRIES: [&str; 4] = ["DE", "FR", "US", "GB"];
    (0..n)
        .map(|i| Row {
            customer: format!("c{:05}", rng.below(10_000)),
            merchant: format!("m{:04}", rng.below(1_000)),
            amount: (50 + rng.below(89_950)) as f64 / 100.0,
            currency: rng.below(4) as usize,
            country: COUNTRIES[rng.below(4) as usize],
            card_present: rng.below(10) < 4,
            ts: NOW - rng.below(2 * HOUR as u64) as i64,
            tx: format!("t{i}"),
        })
        .collect()
}

fn str_column(cells: impl Iterator<Item = String>) -> Column {
    let mut offsets = vec![0i64];
    let mut data = Vec::new();
    for s in cells {
        data.extend_from_slice(s.as_bytes());
        offsets.push(data.len() as i64);
    }
    Column {
        data: ColumnData::Str { offsets, data },
        valid: None,
    }
}

/// A fed column (a Python list converted cell by cell: `Value`s with validity).
fn value_column(cells: impl Iterator<Item = Value>) -> Column {
    let v: Vec<Value> = cells.collect();
    let valid = v.iter().map(|x| !x.is_null()).collect();
    Column {
        data: ColumnData::Value(v),
        valid: Some(valid),
    }
}

/// The columns of one batch: payload columns and the fed groups' columns.
struct BatchColumns {
    events: Events,
    customer: Column,
    merchant: Column,
    amount: Column,
    country: Column,
    fed1: (Column, Vec<Column>),
    fed2: (Column, Vec<Column>),
}

fn batch_columns(rows: &[Row], offsets: &mut [i64]) -> BatchColumns {
    const USD: [f64; 4] = [1.0, 1.08, 1.27, 0.0067];
    let mut events = Events::default();
    for r in rows {
        // a stable stand-in for the key's Kafka partition
        let h = r.customer.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let p = (h % PARTITIONS) as usize;
        events.partition.push(p as i32);
        events.offset.push(offsets[p]);
        offsets[p] += 1;
        events.event_time.push(r.ts);
    }
    let vstr = |s: &str| Value::Str(s.into());
    let cnp = |r: &Row, v: Value| if r.card_present { Value::Null } else { v };
    BatchColumns {
        events,
        customer: str_column(rows.iter().map(|r| r.customer.clone())),
        merchant: str_column(rows.iter().map(|r| r.merchant.clone())),
        amount: Column {
            data: ColumnData::Float(rows.iter().map(|r| r.amount).collect()),
            valid: None,
        },
        country: str_column(rows.iter().map(|r| r.country.to_string())),
        fed1: (
            value_column(rows.iter().map(|r| vstr(&r.customer))),
            vec![
                value_column(
                    rows.iter()
                        .map(|r| Value::Float(r.amount * USD[r.currency])),
                ),
                value_column(rows.iter().map(|r| vstr(&r.merchant))),
                value_column(rows.iter().map(|r| vstr(r.country))),
                value_column(rows.iter().map(|r| vstr(&r.tx))),
            ],
        ),
        fed2: (
            value_column(rows.iter().map(|r| cnp(r, vstr(&r.customer)))),
            vec![value_column(
                rows.iter().map(|r| cnp(r, Value::Float(r.amount))),
            )],
        ),
    }
}

/// An FNV-like hash (8 bytes a step) over everything the core produced.
#[derive(Default)]
struct Sum(u64);

impl Sum {
    fn bytes(&mut self, b: &[u8]) {
        const K: u64 = 0x100_0000_01b3;
        let mut h = self.0 ^ b.len() as u64;
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
            h ^= h >> 29;
        }
        for &x in words.remainder() {
            h = (h ^ x as u64).wrapping_mul(K);
        }
        self.0 = (h ^ 0xff).wrapping_mul(K);
    }
    fn int(&mut self, x: i64) {
        self.bytes(&x.to_le_bytes());
    }
    fn applied(&mut self, a: &Applied) {
        for w in &a.writes {
            self.bytes(w.key.as_bytes());
            for (name, value) in &w.fields {
                self.bytes(name.as_bytes());
                self.bytes(value);
            }
            for name in &w.delete {
                self.bytes(name.as_bytes());
            }
            self.int(w.expire_at_ms.unwrap_or(-1));
            if let Some((f, v)) = &w.expect {
                self.bytes(f.as_bytes());
                self.bytes(v.as_deref().unwrap_or(b"<none>"));
            }
        }
        for x in [a.applied, a.late, a.fenced] {
            self.int(x as i64);
        }
        for &((v, p), t) in &a.newest {
            self.int(v as i64);
            self.int(p as i64);
            self.int(t);
        }
        for &(r, t) in &a.recovered {
            self.int(r as i64);
            self.int(t);
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Times {
    prepare: Spent,
    apply: Spent,
    chunks: Spent,
    events: usize,
    writes: usize,
    bytes: usize,
}

fn run(rows: &[Row], batch: usize, parallel: bool, sum: &mut Sum) -> Times {
    let (views, groups) = views();
    let mut core = OnlineCore::new(views, groups, 1 << 20);
    let threshold = |at: usize| if parallel { at } else { usize::MAX };
    core.set_parallel_pairs(threshold(PARALLEL_PAIRS));
    let mut offsets = vec![0i64; PARTITIONS as usize];
    let mut times = Times::default();
    for (i, chunk) in rows.chunks(batch).enumerate() {
        let cols = batch_columns(chunk, &mut offsets);
        let group_cols = [
            GroupColumns {
                keys: vec![&cols.customer],
                inputs: vec![Some(&cols.amount), Some(&cols.merchant)],
            },
            GroupColumns {
                keys: vec![&cols.fed1.0],
                inputs: cols.fed1.1.iter().map(Some).collect(),
            },
            GroupColumns {
                keys: vec![&cols.fed2.0],
                inputs: cols.fed2.1.iter().map(Some).collect(),
            },
            GroupColumns {
                keys: vec![&cols.merchant],
                inputs: vec![
                    Some(&cols.amount),
                    Some(&cols.customer),
                    Some(&cols.country),
                ],
            },
        ];
        let batch_p = NOW + 1_000 * (i as i64 + 1);
        let t0 = Instant::now();
        let missing = core.prepare(cols.events.clone(), &group_cols);
        let t1 = Instant::now();
        for ck in missing {
            core.load(ck, &[]).expect("empty hash loads");
        }
        let t2 = Instant::now();
        let applied = core.apply(batch_p).expect("applies");
        let t3 = Instant::now();
        let chunks = script_chunks_from(&applied.writes, CHUNK_ARGS, threshold(PARALLEL_WRITES));
        let t4 = Instant::now();
        sum.applied(&applied);
        for c in &chunks {
            sum.int(c.elements as i64);
            sum.int(c.first as i64);
            sum.int(c.count as i64);
            sum.bytes(&c.body);
        }
        if i > 0 {
            times.prepare += t1 - t0;
            times.apply += t3 - t2;
            times.chunks += t4 - t3;
            times.events += chunk.len();
            times.writes += applied.writes.len();
            times.bytes += chunks.iter().map(|c| c.body.len()).sum::<usize>();
        }
        black_box((applied, chunks));
    }
    times
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let rows = rows(n);
    println!("skewless-core online batch core: payments views, {n} events, best of {rounds}");
    let batches: Vec<usize> = match args.get(2).and_then(|a| a.parse().ok()) {
        Some(b) => vec![b],
        None => vec![5_000, 50_000],
    };
    for batch in batches {
        for parallel in [false, true] {
            let mut best: Option<Times> = None;
            let mut sum = Sum::default();
            for _ in 0..rounds {
                sum = Sum::default();
                let t = run(&rows, batch, parallel, &mut sum);
                best = Some(match best {
                    None => t,
                    Some(b) => Times {
                        prepare: b.prepare.min(t.prepare),
                        apply: b.apply.min(t.apply),
                        chunks: b.chunks.min(t.chunks),
                        ..t
                    },
                });
            }
            let t = best.expect("one round");
            let us = |d: Duration| d.as_secs_f64() * 1e6 / t.events as f64;
            let both = |s: Spent| format!("{:>5.2}/{:>5.2}", us(s.cpu), us(s.wall));
            println!(
                "batch {batch:>6} {}: prepare {}  apply {}  script_chunks {} µs/event \
                 CPU/wall  ({} writes, {} bytes/event)  checksum {:016x}",
                if parallel { "parallel" } else { "serial  " },
                both(t.prepare),
                both(t.apply),
                both(t.chunks),
                t.writes,
                t.bytes / t.events,
                sum.0
            );
        }
    }
}
