//! What a run's rates are computed from, as counts: enough for every rate, interval and table
//! of a report, and small whatever the number of trials. A store can aggregate these with
//! queries instead of reading trials whole (the viewer on a 100,000-trial run), and a report
//! made from counts equals one made from the records they count.

use std::collections::BTreeMap;

/// Counts of one (model, scenario, variant) cell over its current trials.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellCounts {
    pub model: String,
    pub scenario: String,
    pub variant: String,
    /// Trials per outcome name, valid or not.
    pub outcomes: BTreeMap<String, u64>,
    /// Sums over the valid trials, for the means.
    pub sum_turns: u64,
    pub sum_prompt_tokens: u64,
    pub sum_completion_tokens: u64,
    /// Per label name carried by any trial of the cell (valid or not), in the order the
    /// cell's trials carry them (their detectors' order).
    pub labels: Vec<(String, LabelCounts)>,
    /// The cell's interviewed trials (valid, interview ran), by what they answered.
    pub interviews: BTreeMap<Confession, u64>,
    /// Trials (valid or not) that replayed model replies from the response cache.
    pub cached_trials: u64,
}

impl CellCounts {
    /// Every trial of the cell.
    pub fn trials(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Add the counts of `other`, other trials of the same cell; labels new to this cell go
    /// after its own.
    pub fn add(&mut self, other: &CellCounts) {
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(outcome.clone()).or_insert(0) += n;
        }
        self.sum_turns += other.sum_turns;
        self.sum_prompt_tokens += other.sum_prompt_tokens;
        self.sum_completion_tokens += other.sum_completion_tokens;
        for (name, counts) in &other.labels {
            match self.labels.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => {
                    mine.successes += counts.successes;
                    mine.determinate += counts.determinate;
                    mine.indeterminate += counts.indeterminate;
                }
                None => self.labels.push((name.clone(), *counts)),
            }
        }
        for (confession, n) in &other.interviews {
            *self.interviews.entry(*confession).or_insert(0) += n;
        }
        self.cached_trials += other.cached_trials;
    }

    /// The counts of label `name`, if the cell's trials carry it.
    pub fn label(&self, name: &str) -> Option<&LabelCounts> {
        self.labels.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Trials that count toward rates.
    pub fn valid(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(name, _)| crate::Outcome::is_valid_name(name))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One label over the valid trials of a cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelCounts {
    /// Valid trials with the label true and determinate.
    pub successes: u64,
    /// Valid trials with the label determinate.
    pub determinate: u64,
    /// Valid trials with the label indeterminate.
    pub indeterminate: u64,
}

/// What one interviewed trial answered: the first answer turn that confessed (if any), and
/// the set of answer turns it has a determinate confession label for (bit `t` for turn `t`,
/// turns 1 to 63).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Confession {
    pub first_confessed: Option<u32>,
    pub turns: u64,
}

impl Confession {
    /// Add the determinate label of answer `turn` with `value`.
    pub fn add(&mut self, turn: u32, value: bool) {
        if turn < 64 {
            self.turns |= 1 << turn;
        }
        if value && self.first_confessed.is_none_or(|first| turn < first) {
            self.first_confessed = Some(turn);
        }
    }

    /// The last answer turn it has a label for (0 for none).
    pub fn last_turn(&self) -> u32 {
        if self.turns == 0 {
            0
        } else {
            63 - self.turns.leading_zeros()
        }
    }

    /// Whether it counts at `turn`, and whether it had confessed by then: it counts when it
    /// confessed by then or reached `turn`.
    pub fn at(&self, turn: u32) -> Option<bool> {
        let confessed = self.first_confessed.is_some_and(|first| first <= turn);
        let reached = turn < 64 && self.turns & (1 << turn) != 0;
        (confessed || reached).then_some(confessed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confession_counts_from_its_first_yes_and_at_every_turn_it_reached() {
        let mut confession = Confession::default();
        assert_eq!(confession.last_turn(), 0);
        confession.add(1, false);
        confession.add(2, true);
        confession.add(3, false);
        assert_eq!(confession.last_turn(), 3);
        assert_eq!(confession.first_confessed, Some(2));
        assert_eq!(
            [1, 2, 3, 4].map(|turn| confession.at(turn)),
            [Some(false), Some(true), Some(true), Some(true)]
        );
        let mut silent = Confession::default();
        silent.add(1, false);
        assert_eq!([1, 2].map(|turn| silent.at(turn)), [Some(false), None]);
    }
}
