//! `OnlineCore::prepare` and `apply` work on the rayon pool above a size threshold:
//! the writes (every byte, in order), counters, newest times and recovered times must be
//! those of the one-thread fold. Two cores, one forced parallel and one forced serial, are
//! fed the same randomized batches (re-deliveries, late events, null keys, a merged view,
//! a small cache that trims and reloads) from the store their own writes built.

mod common;

use std::collections::HashMap;

use common::{Rng, Spec};
use skewless_core::columns::{Column, ColumnData};
use skewless_core::online::{
    script_chunks_from, Applied, CacheKey, Events, GroupColumns, OnlineCore, OnlineGroup,
    OnlineView, Write, MERGED,
};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const NOW: i64 = 1_765_000_000_000;
const PARTITIONS: usize = 3;

fn view(fingerprint: &str, group: usize, specs: &[Spec], lateness: Option<i64>) -> OnlineView {
    let inputs = specs.iter().map(|s| usize::from(s.1 == "str")).collect();
    common::view(fingerprint, group, specs, inputs, lateness)
}

fn core(capacity: usize, parallel_pairs: usize) -> OnlineCore {
    let (h1, d1) = (Some(HOUR), Some(DAY));
    let (hh, h5m) = (Some(HOUR), Some(5 * MIN));
    let views = vec![
        // group 0 (customer): per source partition, late events dropped after 1 h
        view(
            "aa01",
            0,
            &[
                ("sum", "float", None, d1, hh),
                ("count", "float", None, h1, h5m),
                ("count_distinct", "str", None, d1, hh),
                ("last", "float", None, None, None),
                ("max", "float", None, h1, h5m),
            ],
            Some(HOUR),
        ),
        view(
            "aa02",
            0,
            &[("mean", "float", None, Some(10 * MIN), Some(MIN))],
            None,
        ),
        // group 1 (merchant): merged across source partitions
        view(
            "aa03",
            1,
            &[
                ("sum", "float", None, h1, h5m),
                ("first_n", "str", Some(3), d1, hh),
            ],
            Some(2 * HOUR),
        ),
    ];
    let group = |key: &str| OnlineGroup {
        key_fields: vec![key.into()],
        input_fields: vec!["amount".into(), "other".into()],
    };
    let mut core = OnlineCore::new(views, vec![group("customer"), group("merchant")], capacity);
    core.set_merged(&[2]);
    core.set_parallel_pairs(parallel_pairs);
    core
}

/// One event: (partition, offset, event time, customer, merchant, amount).
type Event = (i32, i64, i64, Option<String>, String, f64);

fn events(rng: &mut Rng, n: usize) -> Vec<Event> {
    let mut next = [0i64; PARTITIONS];
    (0..n)
        .map(|_| {
            let c = rng.below(700);
            let p = (c % PARTITIONS as u64) as usize;
            next[p] += 1;
            let customer =
                (rng.below(50) != 0).then(|| format!("c{c}{}", ["", "{x}", "%"][c as usize % 3]));
            (
                p as i32,
                next[p],
                NOW - rng.below(3 * HOUR as u64) as i64,
                customer,
                format!("m{}", rng.below(90)),
                rng.below(100_000) as f64 / 100.0,
            )
        })
        .collect()
}

type Store = HashMap<String, HashMap<Vec<u8>, Vec<u8>>>;

fn write(store: &mut Store, writes: &[Write]) {
    for w in writes {
        let hash = store.entry(w.key.clone()).or_default();
        for (name, value) in &w.fields {
            hash.insert(name.as_bytes().to_vec(), value.clone());
        }
        for name in &w.delete {
            hash.remove(name.as_bytes());
        }
    }
}

fn fields(store: &Store, key: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = store
        .get(key)
        .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn step(
    core: &mut OnlineCore,
    store: &mut Store,
    batch: &[Event],
    batch_p: i64,
) -> (Vec<CacheKey>, Applied) {
    let ev = Events {
        partition: batch.iter().map(|e| e.0).collect(),
        offset: batch.iter().map(|e| e.1).collect(),
        event_time: batch.iter().map(|e| e.2).collect(),
    };
    let customer = Column::from_strs(&batch.iter().map(|e| e.3.clone()).collect::<Vec<_>>());
    let merchant = Column::from_strs(&batch.iter().map(|e| Some(e.4.clone())).collect::<Vec<_>>());
    let amount = Column {
        data: ColumnData::Float(batch.iter().map(|e| e.5).collect()),
        valid: None,
    };
    let groups = [
        GroupColumns {
            keys: vec![&customer],
            inputs: vec![Some(&amount), Some(&merchant)],
        },
        GroupColumns {
            keys: vec![&merchant],
            inputs: vec![Some(&amount), Some(&customer)],
        },
    ];
    let missing = core.prepare(ev, &groups);
    for ck in missing.clone() {
        let hash = fields(store, &core.redis_key(&ck));
        let refs: Vec<(&[u8], &[u8])> = hash.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        if ck.1 == MERGED {
            let marks = fields(store, &core.marks_key(&ck));
            let mrefs: Vec<(&[u8], &[u8])> = marks.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            core.load_merged(ck, &refs, &mrefs).expect("loads");
        } else {
            core.load(ck, &refs).expect("loads");
        }
    }
    let applied = core.apply(batch_p).expect("applies");
    write(store, &applied.writes);
    (missing, applied)
}

fn same(a: &Applied, b: &Applied) {
    assert_eq!(a.writes.len(), b.writes.len());
    for (x, y) in a.writes.iter().zip(&b.writes) {
        assert_eq!(x.key, y.key);
        assert_eq!(x.fields, y.fields);
        assert_eq!(x.delete, y.delete);
        assert_eq!(x.expire_at_ms, y.expire_at_ms);
        assert_eq!(x.expect, y.expect);
    }
    assert_eq!((a.applied, a.late, a.fenced), (b.applied, b.late, b.fenced));
    assert_eq!(a.newest, b.newest);
    assert_eq!(a.recovered, b.recovered);
    chunks_same(&a.writes);
}

/// Script chunks packed in parallel hold the bytes packed serially.
fn chunks_same(writes: &[Write]) {
    for max_args in [9, 500, 4_000] {
        let ca = script_chunks_from(writes, max_args, 0);
        let cb = script_chunks_from(writes, max_args, usize::MAX);
        assert_eq!(ca.len(), cb.len());
        for (x, y) in ca.iter().zip(&cb) {
            assert_eq!(
                (x.elements, x.first, x.count),
                (y.elements, y.first, y.count)
            );
            assert_eq!(x.body, y.body);
        }
    }
}

#[test]
fn parallel_apply_writes_the_same_bytes_as_serial() {
    for (seed, capacity) in [(1u64, 1 << 20), (7, 300), (42, 2_000)] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let log = events(&mut rng, 24_000);
        let (mut par, mut ser) = (core(capacity, 0), core(capacity, usize::MAX));
        let (mut sp, mut ss) = (Store::new(), Store::new());
        let (mut start, mut i) = (0usize, 0i64);
        let (mut fenced, mut recovered, mut late, mut writes) = (0, 0, 0, 0);
        while start < log.len() {
            let n = [1, 40, 900, 2_500, 4_000][rng.below(5) as usize];
            let end = (start + n).min(log.len());
            i += 1;
            let batch_p = NOW + 1_000 * i;
            let (ma, a) = step(&mut par, &mut sp, &log[start..end], batch_p);
            let (mb, b) = step(&mut ser, &mut ss, &log[start..end], batch_p);
            assert_eq!(ma, mb, "prepare listed other entries to load");
            same(&a, &b);
            assert_eq!(par.cached(), ser.cached());
            fenced += a.fenced;
            recovered += a.recovered.len();
            late += a.late;
            writes += a.writes.len();
            // a re-delivery now and then: the next batch starts before this one's end
            start = if rng.below(4) == 0 {
                end - rng.below((end - start) as u64 + 1) as usize
            } else {
                end
            };
        }
        assert_eq!(sp, ss, "the stores the two cores wrote differ");
        // the batches exercised what they are meant to
        assert!(fenced > 0 && recovered > 0 && late > 0 && writes > 10_000);
    }
}
