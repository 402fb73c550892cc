//! Sliding folds over a run of rows: the value of every label's window with each row folded
//! at most twice, whatever the window's length.
//!
//! In event-time mode an entity's rows are sorted by event time, so the rows a label's window
//! holds are a contiguous range `lo..hi` of them, and both ends only move forward from one
//! label to the next. The labels are all known before the sweep, which makes this the offline
//! form of the two-stack sliding aggregation: a *checkpoint* `c` splits the window into a
//! suffix `lo..c`, read from a snapshot taken when the checkpoint was set, and a running fold
//! of `c..hi`. When a window starts past the checkpoint, the checkpoint moves to the window's
//! end and the suffixes the coming windows need are folded backwards from there, one snapshot
//! per distinct window start. No aggregation needs an inverse, and a row is folded at most
//! once into a running fold and once into suffixes.
//!
//! The value is a fold of exactly the window's rows, grouped differently than by tiles; a
//! monoid whose merge is associative and commutative gives the same finalized value
//! bit for bit (the kernel's contract, `crate::agg`).

/// What [`sweep`] folds: a state per window, rows added one at a time, states merged.
pub(crate) trait Fold {
    type State: Clone;

    /// A fresh empty state.
    fn empty(&self) -> Self::State;

    /// Make `state` empty again (reusing what it holds where it can).
    fn clear(&self, state: &mut Self::State);

    /// Fold row `row` into `state`; `false` when the row adds nothing (e.g. not admitted).
    fn add(&self, state: &mut Self::State, row: usize) -> bool;

    /// Merge `other` into `into`.
    fn merge(&self, into: &mut Self::State, other: &Self::State);
}

/// A fold and whether any row went into it (an unfilled state is empty: merging it is
/// skipped, and so is clearing it).
struct Part<S> {
    state: S,
    filled: bool,
}

/// States and buffers reused from one run of rows to the next (one per fold: the states
/// are that fold's).
pub(crate) struct Scratch<S> {
    /// The running fold `checkpoint..end`.
    back: Option<Part<S>>,
    /// The suffix being folded backwards from the checkpoint.
    suffix: Option<Part<S>>,
    /// Suffix snapshots `(start, fold of start..checkpoint)`, by ascending start; `None`
    /// once the last window starting there took it.
    snapshots: Vec<(usize, Option<Part<S>>)>,
    /// Empty states, for snapshots.
    spare: Vec<S>,
    starts: Vec<usize>,
}

impl<S> Default for Scratch<S> {
    fn default() -> Self {
        Scratch {
            back: None,
            suffix: None,
            snapshots: Vec::new(),
            spare: Vec::new(),
            starts: Vec::new(),
        }
    }
}

impl<S> Scratch<S> {
    fn take<F: Fold<State = S>>(slot: &mut Option<Part<S>>, fold: &F) -> Part<S> {
        slot.take().unwrap_or_else(|| Part {
            state: fold.empty(),
            filled: false,
        })
    }

    /// Return a state for reuse.
    fn recycle<F: Fold<State = S>>(&mut self, fold: &F, mut part: Part<S>) {
        if part.filled {
            fold.clear(&mut part.state);
        }
        self.spare.push(part.state);
    }

    fn drop_snapshots<F: Fold<State = S>>(&mut self, fold: &F) {
        let mut snapshots = std::mem::take(&mut self.snapshots);
        for (_, part) in snapshots.drain(..) {
            if let Some(part) = part {
                self.recycle(fold, part);
            }
        }
        self.snapshots = snapshots;
    }
}

fn empty<F: Fold>(fold: &F, part: &mut Part<F::State>) {
    if part.filled {
        fold.clear(&mut part.state);
        part.filled = false;
    }
}

/// Call `emit(j, state)` with the fold of rows `bounds[j].0 .. bounds[j].1` for every `j`,
/// in order. Both ends must be non-decreasing in `j`, with `lo <= hi`.
pub(crate) fn sweep<F: Fold>(
    fold: &F,
    bounds: &[(usize, usize)],
    scratch: &mut Scratch<F::State>,
    mut emit: impl FnMut(usize, &F::State),
) {
    let Some(&(first, _)) = bounds.first() else {
        return;
    };
    scratch.drop_snapshots(fold);
    let mut taken = 0; // snapshots before this one were used by earlier windows
    let mut back = Scratch::take(&mut scratch.back, fold);
    empty(fold, &mut back);
    let (mut checkpoint, mut end) = (first, first);
    for (j, &(lo, hi)) in bounds.iter().enumerate() {
        debug_assert!(lo <= hi, "window {j}: start {lo} after end {hi}");
        if lo >= end {
            // the window shares no row with what is held: start afresh at its start
            empty(fold, &mut back);
            scratch.drop_snapshots(fold);
            taken = 0;
            (checkpoint, end) = (lo, lo);
        }
        while end < hi {
            back.filled |= fold.add(&mut back.state, end);
            end += 1;
        }
        if lo > checkpoint {
            // the window starts past the checkpoint: move it to the window's end and fold the
            // suffixes the windows from here on need, backwards from it
            scratch.drop_snapshots(fold);
            taken = 0;
            let starts = &mut scratch.starts;
            starts.clear();
            for &(l, _) in &bounds[j..] {
                if l >= end {
                    break;
                }
                if starts.last() != Some(&l) {
                    starts.push(l);
                }
            }
            let mut suffix = Scratch::take(&mut scratch.suffix, fold);
            empty(fold, &mut suffix);
            let mut at = end;
            for &start in scratch.starts.iter().rev() {
                while at > start {
                    at -= 1;
                    suffix.filled |= fold.add(&mut suffix.state, at);
                }
                let mut copy = scratch.spare.pop().unwrap_or_else(|| fold.empty());
                if suffix.filled {
                    copy.clone_from(&suffix.state);
                }
                scratch.snapshots.push((
                    start,
                    Some(Part {
                        state: copy,
                        filled: suffix.filled,
                    }),
                ));
            }
            scratch.snapshots.reverse();
            scratch.suffix = Some(suffix);
            checkpoint = end;
            empty(fold, &mut back);
        }
        // now lo <= checkpoint <= end == hi
        if lo == checkpoint {
            emit(j, &back.state);
            continue;
        }
        let snapshots = &mut scratch.snapshots;
        while snapshots[taken].0 < lo {
            taken += 1;
        }
        debug_assert_eq!(snapshots[taken].0, lo);
        let last_use = bounds.get(j + 1).is_none_or(|&(l, _)| l != lo);
        let slot = &mut snapshots[taken].1;
        let suffix = slot
            .as_mut()
            .expect("a snapshot is taken by its last window only");
        if !back.filled {
            emit(j, &suffix.state);
        } else if !suffix.filled {
            emit(j, &back.state);
        } else if last_use {
            fold.merge(&mut suffix.state, &back.state);
            emit(j, &suffix.state);
            let part = slot.take().expect("checked above");
            scratch.recycle(fold, part);
        } else {
            let mut merged = scratch.spare.pop().unwrap_or_else(|| fold.empty());
            merged.clone_from(&suffix.state);
            fold.merge(&mut merged, &back.state);
            emit(j, &merged);
            scratch.recycle(
                fold,
                Part {
                    state: merged,
                    filled: true,
                },
            );
        }
    }
    scratch.back = Some(back);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Folds row numbers into a sorted list, counting adds: a state shows exactly which
    /// rows went in.
    struct Rows<'a> {
        skip: &'a [bool],
        adds: Cell<usize>,
    }

    impl Fold for Rows<'_> {
        type State = Vec<usize>;
        fn empty(&self) -> Vec<usize> {
            Vec::new()
        }
        fn clear(&self, state: &mut Vec<usize>) {
            state.clear();
        }
        fn add(&self, state: &mut Vec<usize>, row: usize) -> bool {
            self.adds.set(self.adds.get() + 1);
            if self.skip[row] {
                return false;
            }
            state.push(row);
            true
        }
        fn merge(&self, into: &mut Vec<usize>, other: &Vec<usize>) {
            into.extend_from_slice(other);
        }
    }

    /// A small deterministic generator (no dev-dependency needed).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn every_window_is_exactly_its_rows_each_row_folded_at_most_twice() {
        let mut rng = Rng(7);
        let mut scratch = Scratch::default(); // reused: states come back empty
        for case in 0..3000 {
            let rows = rng.below(60);
            let skip: Vec<bool> = (0..rows).map(|_| rng.below(4) == 0).collect();
            let labels = rng.below(25);
            // non-decreasing ends, then starts below each end and non-decreasing
            let mut his: Vec<usize> = (0..labels).map(|_| rng.below(rows + 1)).collect();
            his.sort_unstable();
            let mut bounds = Vec::new();
            let mut lo = 0;
            for &hi in &his {
                let span = [0, 1, 3, 10, 1000][rng.below(5)];
                lo = lo.max(hi.saturating_sub(span)).max(if rng.below(3) == 0 {
                    lo + rng.below(3)
                } else {
                    lo
                });
                lo = lo.min(hi);
                bounds.push((lo, hi));
            }
            let fold = Rows {
                skip: &skip,
                adds: Cell::new(0),
            };
            let mut got = vec![None; labels];
            sweep(&fold, &bounds, &mut scratch, |j, s| {
                let mut s = s.clone();
                s.sort_unstable();
                assert!(got[j].replace(s).is_none(), "case {case}: label {j} twice");
            });
            for (j, &(lo, hi)) in bounds.iter().enumerate() {
                let want: Vec<usize> = (lo..hi).filter(|&r| !skip[r]).collect();
                assert_eq!(
                    got[j].as_ref(),
                    Some(&want),
                    "case {case}: bounds {bounds:?}, label {j}"
                );
            }
            assert!(
                fold.adds.get() <= 2 * rows,
                "case {case}: {} adds",
                fold.adds.get()
            );
        }
    }

    #[test]
    fn equal_windows_share_a_snapshot() {
        let skip = [false; 8];
        let fold = Rows {
            skip: &skip,
            adds: Cell::new(0),
        };
        let bounds = [(0, 4), (2, 6), (2, 6), (2, 7), (5, 8)];
        let mut got = Vec::new();
        sweep(&fold, &bounds, &mut Scratch::default(), |_, s| {
            got.push(s.clone())
        });
        assert_eq!(
            got,
            vec![
                vec![0, 1, 2, 3],
                vec![5, 4, 3, 2],
                vec![5, 4, 3, 2],
                vec![5, 4, 3, 2, 6],
                vec![5, 6, 7]
            ]
        );
    }
}
