//! Sharded runs: `--shard i/N` runs a deterministic slice of a run's plan, and the plan's
//! layout stored with each shard tells a merge which shard owns which trial.
//!
//! A plan is the sequence of every trial of a run, cells innermost, then models, then
//! epochs (the order [`crate::runner::Plan`] produces them in). A trial's *position* is its
//! place in that sequence; shard `i` of `N` holds the positions `p` with `p mod N = i - 1`.
//! Round-robin rather than contiguous blocks, so every shard gets a balanced sample of every
//! cell and epoch (an interrupted shard still covers the whole matrix) and shards take about
//! equally long.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use offswitch_core::TrialKey;

/// The most shards a run may be split into.
pub const MAX_SHARDS: u32 = 100_000;

/// One slice of a plan: `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether the trial at `position` of the plan belongs to this shard.
    pub fn holds(self, position: u64) -> bool {
        position % u64::from(self.count) == u64::from(self.index - 1)
    }

    /// How many of a plan's `total` trials this shard holds.
    pub fn size(self, total: u64) -> u64 {
        let first = u64::from(self.index - 1);
        if total <= first {
            0
        } else {
            (total - first - 1) / u64::from(self.count) + 1
        }
    }

    /// The first position of the plan in this shard.
    pub fn first(self) -> u64 {
        u64::from(self.index - 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `i/N` with `1 <= i <= N <= MAX_SHARDS`.
    fn from_str(text: &str) -> Result<Shard, String> {
        let expected = || format!("{text:?}: expected i/N, such as 2/4 (1-based)");
        let (index, count) = text.trim().split_once('/').ok_or_else(expected)?;
        let index: u32 = index.trim().parse().map_err(|_| expected())?;
        let count: u32 = count.trim().parse().map_err(|_| expected())?;
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "{text:?}: the number of shards must be 1 to {MAX_SHARDS}"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "{text:?}: the shard index is 1-based and at most the number of shards ({count})"
            ));
        }
        Ok(Shard { index, count })
    }
}

/// The order of a whole plan, stored with every shard of a run: enough to place any key
/// without loading the run's scenarios or models (which a merge step may not have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLayout {
    /// Model specs as trial keys name them, in plan order.
    pub models: Vec<String>,
    /// (scenario id, variant) cells, in plan order.
    pub cells: Vec<(String, String)>,
    pub epochs: u32,
}

impl PlanLayout {
    /// Trials in the whole plan.
    pub fn total(&self) -> u64 {
        self.models.len() as u64 * self.cells.len() as u64 * u64::from(self.epochs)
    }

    /// A lookup of keys' positions.
    pub fn index(&self) -> PlanIndex<'_> {
        PlanIndex {
            layout: self,
            models: self
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.as_str(), i as u64))
                .collect(),
            cells: self
                .cells
                .iter()
                .enumerate()
                .map(|(i, (s, v))| ((s.as_str(), v.as_str()), i as u64))
                .collect(),
        }
    }
}

/// Positions of keys in a [`PlanLayout`].
pub struct PlanIndex<'a> {
    layout: &'a PlanLayout,
    models: HashMap<&'a str, u64>,
    cells: HashMap<(&'a str, &'a str), u64>,
}

impl PlanIndex<'_> {
    /// Where `key` is in the plan; `None` for a key the plan does not have.
    pub fn position(&self, key: &TrialKey) -> Option<u64> {
        if key.epoch >= self.layout.epochs {
            return None;
        }
        let model = *self.models.get(key.model.as_str())?;
        let cell = *self
            .cells
            .get(&(key.scenario.as_str(), key.variant.as_str()))?;
        let cells = self.layout.cells.len() as u64;
        let per_epoch = self.layout.models.len() as u64 * cells;
        Some(u64::from(key.epoch) * per_epoch + model * cells + cell)
    }
}

/// The (epoch, model, cell) at `position` of a plan with `models` models and `cells` cells.
pub fn decode(position: u64, models: usize, cells: usize) -> (u32, usize, usize) {
    let cells = cells as u64;
    let per_epoch = models as u64 * cells;
    let epoch = position / per_epoch;
    let within = position % per_epoch;
    (
        epoch as u32,
        (within / cells) as usize,
        (within % cells) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PlanLayout {
        PlanLayout {
            models: vec!["a".into(), "b".into()],
            cells: vec![
                ("s".into(), "x=1".into()),
                ("s".into(), "x=2".into()),
                ("t".into(), String::new()),
            ],
            epochs: 3,
        }
    }

    #[test]
    fn shards_parse_and_refuse_what_is_not_a_slice() {
        assert_eq!("2/4".parse(), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(" 1 / 1 ".parse(), Ok(Shard { index: 1, count: 1 }));
        for bad in ["0/4", "5/4", "1/0", "4", "a/b", "-1/4", "1/100001", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 3, count: 7 }.to_string(), "3/7");
    }

    #[test]
    fn the_shards_of_a_plan_hold_every_position_exactly_once() {
        for total in [0u64, 1, 5, 18, 19] {
            for count in 1..=6 {
                let shards: Vec<Shard> = (1..=count).map(|index| Shard { index, count }).collect();
                for position in 0..total {
                    let owners = shards.iter().filter(|s| s.holds(position)).count();
                    assert_eq!(
                        owners, 1,
                        "position {position} of {total} in {count} shards"
                    );
                }
                for shard in &shards {
                    let held = (0..total).filter(|p| shard.holds(*p)).count() as u64;
                    assert_eq!(shard.size(total), held, "{shard} of {total}");
                }
            }
        }
    }

    #[test]
    fn positions_follow_the_plan_order_and_decode_back() {
        let layout = layout();
        let index = layout.index();
        assert_eq!(layout.total(), 18);
        let mut seen = Vec::new();
        for position in 0..layout.total() {
            let (epoch, model, cell) = decode(position, 2, 3);
            let key = TrialKey {
                model: layout.models[model].clone(),
                scenario: layout.cells[cell].0.clone(),
                variant: layout.cells[cell].1.clone(),
                epoch,
            };
            assert_eq!(index.position(&key), Some(position));
            seen.push((epoch, model, cell));
        }
        // Cells innermost, then models, then epochs.
        assert_eq!(&seen[..4], &[(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]);
        let outside = TrialKey {
            model: "a".into(),
            scenario: "s".into(),
            variant: "x=1".into(),
            epoch: 3,
        };
        assert_eq!(index.position(&outside), None);
        let unknown = TrialKey {
            model: "c".into(),
            epoch: 0,
            ..outside
        };
        assert_eq!(index.position(&unknown), None);
    }
}
