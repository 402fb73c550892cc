//! Tile layouts, folding rows into an entity's tiles, and windows as of `t` (DESIGN §3).
//!
//! Tile `k` of hop `H` holds the events with `k*H <= event_time < (k+1)*H`. The value of a
//! window `W` as of `t` merges tiles `ceil(t/H) - W/H .. ceil(t/H) - 1`; a lifetime
//! aggregation keeps one accumulator. Which events are folded before `t` (event time or
//! processing time) is the caller's business.

use std::collections::BTreeMap;

use crate::agg::{Agg, Input, State};
use crate::error::KernelError;
use crate::value::{Order, Value};

/// The aggregations of one view that share a hop: one tile holds one state per member.
#[derive(Clone, Debug)]
pub struct HopGroup {
    pub hop_ms: i64,
    /// Aggregation indices, in view order.
    pub members: Vec<usize>,
    /// Tiles the group's longest window spans (`W / H`).
    pub span: i64,
}

/// How a view's aggregations map onto tiles; built once per view.
#[derive(Clone, Debug)]
pub struct Layout {
    pub aggs: Vec<Agg>,
    pub windows_ms: Vec<Option<i64>>,
    pub groups: Vec<HopGroup>,
    /// Aggregation indices of the lifetime accumulator.
    pub lifetime: Vec<usize>,
    /// Where aggregation `i` lives: `(Some(group) | None for lifetime, position)`.
    pub slots: Vec<(Option<usize>, usize)>,
}

impl Layout {
    /// Group aggregations by hop (ascending), lifetime ones apart. `windows_ms[i]` and
    /// `hops_ms[i]` are both `None` for a lifetime aggregation; otherwise `hop` divides
    /// the window.
    pub fn new(
        aggs: Vec<Agg>,
        windows_ms: Vec<Option<i64>>,
        hops_ms: Vec<Option<i64>>,
    ) -> Result<Layout, KernelError> {
        if aggs.len() != windows_ms.len() || aggs.len() != hops_ms.len() {
            return Err(KernelError::Layout(format!(
                "{} aggregations, {} windows and {} hops (expected one of each per aggregation)",
                aggs.len(),
                windows_ms.len(),
                hops_ms.len()
            )));
        }
        let mut by_hop: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        let mut lifetime = Vec::new();
        for (i, (window, hop)) in windows_ms.iter().zip(&hops_ms).enumerate() {
            match (window, hop) {
                (None, _) => lifetime.push(i),
                (Some(w), Some(h)) if *h > 0 && *w > 0 && w % h == 0 => {
                    by_hop.entry(*h).or_default().push(i)
                }
                _ => {
                    return Err(KernelError::Layout(format!(
                        "aggregation {i}: window {window:?} ms and hop {hop:?} ms (the hop must \
                         be positive and divide the window)"
                    )))
                }
            }
        }
        let mut slots = vec![(None, 0); aggs.len()];
        let groups: Vec<HopGroup> = by_hop
            .into_iter()
            .enumerate()
            .map(|(g, (hop_ms, members))| {
                let longest = members
                    .iter()
                    .filter_map(|&i| windows_ms[i])
                    .max()
                    .unwrap_or(0);
                for (j, &i) in members.iter().enumerate() {
                    slots[i] = (Some(g), j);
                }
                HopGroup {
                    hop_ms,
                    members,
                    span: longest / hop_ms,
                }
            })
            .collect();
        for (j, &i) in lifetime.iter().enumerate() {
            slots[i] = (None, j);
        }
        Ok(Layout {
            aggs,
            windows_ms,
            groups,
            lifetime,
            slots,
        })
    }

    fn new_tile(&self, members: &[usize]) -> Box<[State]> {
        members.iter().map(|&i| self.aggs[i].init()).collect()
    }
}

/// `ceil(t / H)`: windows of hop `H` as of `t` end before this tile.
#[inline]
pub fn window_end(hop_ms: i64, t_ms: i64) -> i64 {
    -((-t_ms).div_euclid(hop_ms))
}

/// `(start, end)`: a window `W` of hop `H` as of `t` merges tiles `start <= k < end`.
#[inline]
pub fn window_tiles(hop_ms: i64, window_ms: i64, t_ms: i64) -> (i64, i64) {
    let end = window_end(hop_ms, t_ms);
    (end - window_ms / hop_ms, end)
}

/// One tile: its index `k` and the states of its hop group's members.
type Tile = (i64, Box<[State]>);

/// The live tiles of one (view, entity): per hop group, the tiles sorted by index (a few
/// dozen at most, mostly appended at the end; a sorted `Vec` is smaller and faster to search
/// than a tree for so few).
#[derive(Clone, Debug, Default)]
pub struct EntityTiles {
    by_group: Vec<Vec<Tile>>,
    lifetime: Option<Box<[State]>>,
}

/// Tile `k` of `tiles`, or where it goes.
#[inline]
fn find(tiles: &[Tile], k: i64) -> Result<usize, usize> {
    // the newest tile is the likeliest
    match tiles.last() {
        Some(last) if last.0 == k => Ok(tiles.len() - 1),
        Some(last) if last.0 < k => Err(tiles.len()),
        None => Err(0),
        _ => tiles.binary_search_by_key(&k, |t| t.0),
    }
}

/// Tile `k` of `tiles`, made with `new` if absent.
#[inline]
fn tile_mut(tiles: &mut Vec<Tile>, k: i64, new: impl FnOnce() -> Box<[State]>) -> &mut [State] {
    let at = match find(tiles, k) {
        Ok(at) => at,
        Err(at) => {
            tiles.insert(at, (k, new()));
            at
        }
    };
    &mut tiles[at].1
}

impl EntityTiles {
    /// No tiles yet.
    pub fn new(layout: &Layout) -> EntityTiles {
        EntityTiles {
            by_group: vec![Vec::new(); layout.groups.len()],
            lifetime: None,
        }
    }

    /// Number of live tiles (lifetime accumulator included).
    pub fn len(&self) -> usize {
        self.by_group.iter().map(Vec::len).sum::<usize>() + usize::from(self.lifetime.is_some())
    }

    /// `true` when nothing was folded (or everything was evicted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fold one admitted event: `input(i)` is aggregation `i`'s input.
    #[inline]
    pub fn fold<'a>(
        &mut self,
        layout: &Layout,
        event_time_ms: i64,
        order: Order,
        input: impl Fn(usize) -> Input<'a>,
    ) {
        for (tiles, group) in self.by_group.iter_mut().zip(&layout.groups) {
            let k = event_time_ms.div_euclid(group.hop_ms);
            let tile = tile_mut(tiles, k, || layout.new_tile(&group.members));
            for (state, &i) in tile.iter_mut().zip(&group.members) {
                layout.aggs[i].add(state, input(i), order);
            }
        }
        if !layout.lifetime.is_empty() {
            let tile = self
                .lifetime
                .get_or_insert_with(|| layout.new_tile(&layout.lifetime));
            for (state, &i) in tile.iter_mut().zip(&layout.lifetime) {
                layout.aggs[i].add(state, input(i), order);
            }
        }
    }

    /// Drop the tiles no window can use at any time `>= t_ms`.
    pub fn evict(&mut self, layout: &Layout, t_ms: i64) {
        for (tiles, group) in self.by_group.iter_mut().zip(&layout.groups) {
            let oldest = window_end(group.hop_ms, t_ms) - group.span;
            let stale = tiles.partition_point(|t| t.0 < oldest);
            tiles.drain(..stale);
        }
    }

    /// Drop the tiles stale at `t_ms` and return them as `(group, k)`.
    pub fn evict_stale(&mut self, layout: &Layout, t_ms: i64) -> Vec<(usize, i64)> {
        let mut out = Vec::new();
        for (g, (tiles, group)) in self.by_group.iter_mut().zip(&layout.groups).enumerate() {
            let oldest = window_end(group.hop_ms, t_ms) - group.span;
            let stale = tiles.partition_point(|t| t.0 < oldest);
            out.extend(tiles.drain(..stale).map(|t| (g, t.0)));
        }
        out
    }

    /// The tile indices held in group `g`, ascending.
    pub fn keys(&self, g: usize) -> Vec<i64> {
        self.by_group
            .get(g)
            .map(|t| t.iter().map(|t| t.0).collect())
            .unwrap_or_default()
    }

    /// Every tile held, as `(group, k, tile)`, by group then ascending `k` (the lifetime
    /// accumulators not among them).
    pub fn iter_tiles(&self) -> impl Iterator<Item = (usize, i64, &[State])> + '_ {
        self.by_group
            .iter()
            .enumerate()
            .flat_map(|(g, tiles)| tiles.iter().map(move |t| (g, t.0, &t.1[..])))
    }

    /// Tile `k` of group `g`, if held.
    pub fn tile(&self, g: usize, k: i64) -> Option<&[State]> {
        let tiles = self.by_group.get(g)?;
        find(tiles, k).ok().map(|at| &tiles[at].1[..])
    }

    /// The lifetime accumulators, if any were folded.
    pub fn lifetime_tile(&self) -> Option<&[State]> {
        self.lifetime.as_deref()
    }

    /// The oldest and newest tile index held in group `g`.
    pub fn oldest(&self, g: usize) -> Option<i64> {
        self.by_group.get(g)?.first().map(|t| t.0)
    }

    /// See [`EntityTiles::oldest`].
    pub fn newest(&self, g: usize) -> Option<i64> {
        self.by_group.get(g)?.last().map(|t| t.0)
    }

    /// Put a decoded tile in place (loading state).
    pub fn insert_tile(&mut self, g: usize, k: i64, tile: Box<[State]>) {
        let tiles = &mut self.by_group[g];
        match find(tiles, k) {
            Ok(at) => tiles[at].1 = tile,
            Err(at) => tiles.insert(at, (k, tile)),
        }
    }

    /// Put decoded lifetime accumulators in place (loading state).
    pub fn set_lifetime(&mut self, tile: Box<[State]>) {
        self.lifetime = Some(tile);
    }

    /// Merge one decoded tile (of another partition) into tile `k` of group `g`.
    pub fn merge_tile(&mut self, layout: &Layout, g: usize, k: i64, theirs: &[State]) {
        let group = &layout.groups[g];
        let ours = tile_mut(&mut self.by_group[g], k, || layout.new_tile(&group.members));
        for ((state, their), &i) in ours.iter_mut().zip(theirs.iter()).zip(&group.members) {
            layout.aggs[i].merge(state, their);
        }
    }

    /// Merge decoded lifetime accumulators (of another partition) into these.
    pub fn merge_lifetime(&mut self, layout: &Layout, theirs: &[State]) {
        let ours = self
            .lifetime
            .get_or_insert_with(|| layout.new_tile(&layout.lifetime));
        for ((state, their), &i) in ours.iter_mut().zip(theirs.iter()).zip(&layout.lifetime) {
            layout.aggs[i].merge(state, their);
        }
    }

    /// Merge another partition's tiles of the same entity into these.
    pub fn merge_from(&mut self, layout: &Layout, other: &EntityTiles) {
        for (g, group) in layout.groups.iter().enumerate() {
            for (k, theirs) in &other.by_group[g] {
                let ours = tile_mut(&mut self.by_group[g], *k, || {
                    layout.new_tile(&group.members)
                });
                for ((state, their), &i) in ours.iter_mut().zip(theirs.iter()).zip(&group.members) {
                    layout.aggs[i].merge(state, their);
                }
            }
        }
        if let Some(theirs) = &other.lifetime {
            let ours = self
                .lifetime
                .get_or_insert_with(|| layout.new_tile(&layout.lifetime));
            for ((state, their), &i) in ours.iter_mut().zip(theirs.iter()).zip(&layout.lifetime) {
                layout.aggs[i].merge(state, their);
            }
        }
    }

    /// The merged (not finalized) state of aggregation `i`'s window as of `t_ms`.
    pub fn window_state(&self, layout: &Layout, i: usize, t_ms: i64) -> State {
        let agg = &layout.aggs[i];
        let mut acc = agg.init();
        match layout.slots[i] {
            (None, j) => {
                if let Some(tile) = &self.lifetime {
                    agg.merge(&mut acc, &tile[j]);
                }
            }
            (Some(g), j) => {
                let hop = layout.groups[g].hop_ms;
                let window = layout.windows_ms[i].unwrap_or(hop);
                let (start, end) = window_tiles(hop, window, t_ms);
                let tiles = &self.by_group[g];
                let from = tiles.partition_point(|t| t.0 < start);
                let to = tiles.partition_point(|t| t.0 < end);
                for (_, tile) in &tiles[from..to.max(from)] {
                    agg.merge(&mut acc, &tile[j]);
                }
            }
        }
        acc
    }

    /// The value of aggregation `i` as of `t_ms`.
    pub fn value(&self, layout: &Layout, i: usize, t_ms: i64) -> Value {
        layout.aggs[i].finalize(&self.window_state(layout, i, t_ms))
    }
}
