//! One entity's labels against its records: the values of a view's wanted aggregations as of
//! each label's time (DESIGN §3).
//!
//! - *Event time*: the records are sorted by event time, so the records a window holds as of
//!   `t` are one run, `start(t) <= event_time < t` with `start(t) = ceil(t/H)*H - W`
//!   (exactly the tiles `start(t)/H .. ceil(t/H)-1` with events before `t`), and a lifetime
//!   aggregation's are a prefix. Aggregations sharing a window are folded together, every
//!   window by [`sliding::sweep`]: each record is folded at most twice per window, whatever
//!   the window spans and however many labels see it.
//! - *Processing time*: a window is the records processed before `t` whose event time falls
//!   in its tiles — not one run of any order — so the records are folded into the kernel's
//!   tiles ([`EntityTiles`]) in processing order and each label merges its window's tiles.

use std::ops::Range;

use rayon::prelude::*;

use super::out::{Objects, Slots};
use super::rows::{counting_sort, split_by_entity, Cells, Rows};
use super::sliding::{self, Fold, Scratch};
use super::{Admit, ViewSpec};
use crate::agg::{Agg, State};
use crate::tiles::{window_tiles, EntityTiles};
use crate::value::{Order, Value};

/// Labels of one request ordered by (entity, time).
pub(crate) struct LabelOrder {
    /// Entity `e`'s labels are `starts[e]..starts[e + 1]`.
    pub starts: Vec<usize>,
    pub times: Vec<i64>,
    /// Each ordered label's position in the request.
    pub labels: Vec<u32>,
}

/// One entity's labels, by time.
pub(crate) struct EntityLabels<'a> {
    pub times: &'a [i64],
    pub labels: &'a [u32],
}

impl LabelOrder {
    pub(crate) fn new(codes: &[u32], times: &[i64], entities: usize) -> LabelOrder {
        let (starts, mut perm) = counting_sort(codes, entities);
        split_by_entity(&starts, &mut perm, 1 << 16)
            .into_par_iter()
            .for_each(|piece| {
                for run in piece {
                    if !run.is_sorted_by_key(|&i| times[i as usize]) {
                        run.sort_by_key(|&i| times[i as usize]);
                    }
                }
            });
        LabelOrder {
            starts,
            times: perm.par_iter().map(|&i| times[i as usize]).collect(),
            labels: perm,
        }
    }

    pub(crate) fn of(&self, e: usize) -> Range<usize> {
        self.starts[e]..self.starts[e + 1]
    }

    pub(crate) fn entity(&self, e: usize) -> EntityLabels<'_> {
        let range = self.of(e);
        EntityLabels {
            times: &self.times[range.clone()],
            labels: &self.labels[range],
        }
    }
}

/// A wanted aggregation: which state of the view, which input, which output column.
#[derive(Clone, Copy, Debug)]
struct Member {
    agg: usize,
    input: usize,
    out: usize,
}

/// Wanted aggregations sharing a window: `(hop, window)` ms, `None` for lifetime.
#[derive(Debug)]
struct Class {
    window: Option<(i64, i64)>,
    members: Vec<Member>,
}

/// What a request computes per label: its aggregations by window.
pub(crate) struct Plan {
    classes: Vec<Class>,
    /// Per output column: the aggregation.
    wanted: Vec<usize>,
    /// Per output column: the empty-window value.
    defaults: Vec<Value>,
}

impl Plan {
    pub(crate) fn new(view: &ViewSpec, indices: &[usize]) -> Plan {
        let layout = &view.layout;
        let mut classes: Vec<Class> = Vec::new();
        for (out, &agg) in indices.iter().enumerate() {
            let window = match (layout.slots[agg].0, layout.windows_ms[agg]) {
                (Some(g), Some(w)) => Some((layout.groups[g].hop_ms, w)),
                _ => None,
            };
            let member = Member {
                agg,
                input: view.inputs[agg],
                out,
            };
            match classes.iter_mut().find(|c| c.window == window) {
                Some(class) => class.members.push(member),
                None => classes.push(Class {
                    window,
                    members: vec![member],
                }),
            }
        }
        Plan {
            classes,
            wanted: indices.to_vec(),
            defaults: indices
                .iter()
                .map(|&i| layout.aggs[i].finalize(&layout.aggs[i].init()))
                .collect(),
        }
    }
}

/// The kept record `row` is admitted by a view that admits by `admit`.
#[inline]
fn admitted(rows: &Rows, admit: Admit, row: usize) -> bool {
    match admit {
        Admit::All => true,
        Admit::Mask(bit) => rows.mask[row] & bit != 0,
        Admit::Late(late) => rows.event_time[row] >= rows.processed_at[row].saturating_sub(late),
    }
}

/// The order of record `row` for first/last (event time, partition, offset).
#[inline]
fn order(rows: &Rows, row: usize) -> Order {
    if rows.carry.order {
        (rows.event_time[row], rows.partition[row], rows.offset[row])
    } else {
        (rows.event_time[row], 0, 0) // no aggregation of the group orders records
    }
}

/// The first position at or after `from` in the sorted `v` whose value is `>= x`: steps
/// forward 1, 2, 4, ... then halves, so a short move costs a few reads of nearby values.
#[inline]
fn gallop(v: &[i64], from: usize, x: i64) -> usize {
    let mut lo = from; // v[..lo] < x
    let mut step = 1;
    while lo + step <= v.len() && v[lo + step - 1] < x {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(v.len());
    lo + v[lo..hi].partition_point(|&y| y < x)
}

/// The states of one window class, folded record by record with the kernel's aggregations.
struct Bundle<'a> {
    aggs: &'a [Agg],
    members: &'a [Member],
    inputs: &'a [Cells],
    rows: &'a Rows,
    admit: Admit,
}

impl Fold for Bundle<'_> {
    type State = Vec<State>;

    fn empty(&self) -> Vec<State> {
        self.members
            .iter()
            .map(|m| self.aggs[m.agg].init())
            .collect()
    }

    fn clear(&self, states: &mut Vec<State>) {
        for (state, m) in states.iter_mut().zip(self.members) {
            *state = self.aggs[m.agg].init();
        }
    }

    #[inline]
    fn add(&self, states: &mut Vec<State>, row: usize) -> bool {
        if !admitted(self.rows, self.admit, row) {
            return false;
        }
        let order = order(self.rows, row);
        for (state, m) in states.iter_mut().zip(self.members) {
            self.aggs[m.agg].add(state, self.inputs[m.input].input(row), order);
        }
        true
    }

    fn merge(&self, into: &mut Vec<State>, other: &Vec<State>) {
        for ((a, b), m) in into.iter_mut().zip(other).zip(self.members) {
            self.aggs[m.agg].merge(a, b);
        }
    }
}

/// A thread's sweep over entities, with buffers reused from one entity to the next.
pub(crate) struct EntitySweep<'a> {
    plan: &'a Plan,
    view: &'a ViewSpec,
    rows: &'a Rows,
    admit: Admit,
    bounds: Vec<(usize, usize)>,
    /// Per window class.
    scratch: Vec<Scratch<Vec<State>>>,
}

impl<'a> EntitySweep<'a> {
    pub(crate) fn new(
        plan: &'a Plan,
        view: &'a ViewSpec,
        rows: &'a Rows,
        admit: Admit,
    ) -> EntitySweep<'a> {
        EntitySweep {
            plan,
            view,
            rows,
            admit,
            bounds: Vec::new(),
            scratch: plan.classes.iter().map(|_| Scratch::default()).collect(),
        }
    }

    fn defaults(&self, labels: &EntityLabels<'_>, slots: &[Slots], objects: &mut [Objects]) {
        for (out, value) in self.plan.defaults.iter().enumerate() {
            for &label in labels.labels {
                slots[out].put(label, value.clone(), &mut objects[out]);
            }
        }
    }

    /// Event-time values of `labels` over the entity's records `range` (by event time).
    pub(crate) fn event_time(
        &mut self,
        range: Range<usize>,
        labels: EntityLabels<'_>,
        slots: &[Slots],
        objects: &mut [Objects],
    ) {
        if range.is_empty() {
            return self.defaults(&labels, slots, objects);
        }
        let et = &self.rows.event_time[range.clone()];
        for (class, scratch) in self.plan.classes.iter().zip(&mut self.scratch) {
            self.bounds.clear();
            let (mut lo, mut hi) = (0, 0);
            for &t in labels.times {
                hi = gallop(et, hi, t);
                if let Some((hop, window)) = class.window {
                    let (start, _) = window_tiles(hop, window, t);
                    let start_ms = start.checked_mul(hop).unwrap_or(i64::MIN);
                    lo = gallop(&et[..hi], lo, start_ms);
                }
                self.bounds.push((range.start + lo, range.start + hi));
            }
            let bundle = Bundle {
                aggs: &self.view.layout.aggs,
                members: &class.members,
                inputs: &self.rows.inputs,
                rows: self.rows,
                admit: self.admit,
            };
            sliding::sweep(&bundle, &self.bounds, scratch, |j, states| {
                let label = labels.labels[j];
                for (state, m) in states.iter().zip(&class.members) {
                    let value = bundle.aggs[m.agg].finalize(state);
                    slots[m.out].put(label, value, &mut objects[m.out]);
                }
            });
        }
    }

    /// Processing-time values of `labels` over the entity's records `range` (by
    /// processing time).
    pub(crate) fn processing_time(
        &mut self,
        range: Range<usize>,
        labels: EntityLabels<'_>,
        slots: &[Slots],
        objects: &mut [Objects],
    ) {
        if range.is_empty() {
            return self.defaults(&labels, slots, objects);
        }
        let (rows, layout) = (self.rows, &self.view.layout);
        let mut tiles = EntityTiles::new(layout);
        let mut r = range.start;
        for (&t, &label) in labels.times.iter().zip(labels.labels) {
            while r < range.end && rows.processed_at[r] < t {
                let row = r;
                r += 1;
                if admitted(rows, self.admit, row) {
                    tiles.fold(layout, rows.event_time[row], order(rows, row), |i| {
                        rows.inputs[self.view.inputs[i]].input(row)
                    });
                }
            }
            tiles.evict(layout, t);
            for (out, &i) in self.plan.wanted.iter().enumerate() {
                slots[out].put(label, tiles.value(layout, i, t), &mut objects[out]);
            }
        }
    }
}
