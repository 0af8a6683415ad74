//! Budgets per session: tokens and requests, over the whole session or a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Action, Budget, Metric};

/// One session's spending against every budget.
pub struct Spending {
    budgets: Vec<Budget>,
    /// Per budget: what was spent when, and the sums.
    spent: Vec<Spent>,
    /// Budgets already reported exhausted.
    reported: Vec<bool>,
}

/// What one budget's metric spent.
#[derive(Clone, Default)]
struct Spent {
    /// What was spent when, oldest first (only for a budget with a window).
    window: VecDeque<(Instant, u64)>,
    /// The sum of `window`, kept as entries come and go (a check must not walk the window:
    /// it runs on every request).
    in_window: u64,
    /// Everything spent in the session.
    total: u64,
}

/// A budget that is spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub budget: String,
    pub action: Action,
    pub detail: String,
}

/// What one exchange used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Use {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the tokens cost, in millionths of a dollar.
    pub micro_usd: u64,
}

impl Spending {
    pub fn new(budgets: &[Budget]) -> Spending {
        Spending {
            budgets: budgets.to_vec(),
            spent: vec![Spent::default(); budgets.len()],
            reported: vec![false; budgets.len()],
        }
    }

    /// The budgets spent now (a request is refused while any is).
    pub fn exhausted(&mut self, now: Instant) -> Vec<Exhausted> {
        let mut out = Vec::new();
        for index in 0..self.budgets.len() {
            let used = self.used(index, now);
            let budget = &self.budgets[index];
            if used >= budget.max {
                out.push(Exhausted {
                    budget: budget.name.clone(),
                    action: budget.action,
                    detail: match budget.metric {
                        Metric::CostMicroUsd => format!(
                            "${:.4} of ${:.4}{} spent",
                            used as f64 / 1e6,
                            budget.max as f64 / 1e6,
                            window(budget.per)
                        ),
                        metric => format!(
                            "{used} of {} {}{} used",
                            budget.max,
                            metric.name(),
                            window(budget.per)
                        ),
                    },
                });
            }
        }
        out
    }

    /// Add what an exchange used; the budgets this made spent for the first time.
    pub fn add(&mut self, used: Use, now: Instant) -> Vec<Exhausted> {
        for index in 0..self.budgets.len() {
            let amount = match self.budgets[index].metric {
                Metric::Requests => used.requests,
                Metric::Tokens => used.input_tokens + used.output_tokens,
                Metric::InputTokens => used.input_tokens,
                Metric::OutputTokens => used.output_tokens,
                Metric::CostMicroUsd => used.micro_usd,
            };
            if amount > 0 {
                let spent = &mut self.spent[index];
                spent.total = spent.total.saturating_add(amount);
                if self.budgets[index].per.is_some() {
                    spent.window.push_back((now, amount));
                    spent.in_window = spent.in_window.saturating_add(amount);
                    // Bounded: merge the oldest entries past a few thousand (the sum stays).
                    if spent.window.len() > 4096
                        && let (Some(a), Some(b)) =
                            (spent.window.pop_front(), spent.window.pop_front())
                    {
                        spent.window.push_front((b.0, a.1.saturating_add(b.1)));
                    }
                }
            }
        }
        let mut fresh = Vec::new();
        for exhausted in self.exhausted(now) {
            let index = self
                .budgets
                .iter()
                .position(|b| b.name == exhausted.budget)
                .expect("a budget of this session");
            if !self.reported[index] {
                self.reported[index] = true;
                fresh.push(exhausted);
            }
        }
        fresh
    }

    /// Spent, budget by budget: (name, used, max).
    pub fn report(&mut self, now: Instant) -> Vec<(String, u64, u64)> {
        (0..self.budgets.len())
            .map(|index| {
                (
                    self.budgets[index].name.clone(),
                    self.used(index, now),
                    self.budgets[index].max,
                )
            })
            .collect()
    }

    fn used(&mut self, index: usize, now: Instant) -> u64 {
        let spent = &mut self.spent[index];
        match self.budgets[index].per {
            None => spent.total,
            Some(per) => {
                while let Some(&(at, amount)) = spent.window.front()
                    && now.saturating_duration_since(at) > per
                {
                    spent.window.pop_front();
                    spent.in_window = spent.in_window.saturating_sub(amount);
                }
                spent.in_window
            }
        }
    }
}

fn window(per: Option<Duration>) -> String {
    match per {
        None => " in this session".into(),
        Some(per) => format!(" within {}s", per.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(max: u64, per: Option<Duration>) -> Budget {
        Budget {
            name: "tokens".into(),
            metric: Metric::Tokens,
            max,
            per,
            action: Action::Block,
        }
    }

    fn used(tokens: u64) -> Use {
        Use {
            requests: 1,
            input_tokens: tokens,
            ..Use::default()
        }
    }

    #[test]
    fn a_window_forgets_what_left_it_and_a_session_budget_does_not() {
        let start = Instant::now();
        let mut spending = Spending::new(&[
            tokens(1_000, Some(Duration::from_secs(10))),
            Budget {
                name: "session".into(),
                ..tokens(1_000, None)
            },
        ]);
        spending.add(used(300), start);
        spending.add(used(400), start + Duration::from_secs(6));
        let at = |s| start + Duration::from_secs(s);
        assert_eq!(spending.report(at(9))[0].1, 700);
        assert_eq!(
            spending.report(at(11))[0].1,
            400,
            "the first use left the window"
        );
        assert_eq!(spending.report(at(17))[0].1, 0);
        assert_eq!(
            spending.report(at(17))[1].1,
            700,
            "the session keeps everything"
        );
        // Spent again inside the window: exhausted once, reported once.
        let fresh = spending.add(used(1_000), at(18));
        assert_eq!(fresh.len(), 2, "{fresh:?}");
        assert_eq!(fresh[0].detail, "1000 of 1000 tokens within 10s used");
        assert!(spending.add(used(1), at(18)).is_empty());
        assert_eq!(spending.exhausted(at(18)).len(), 2);
        assert_eq!(
            spending.exhausted(at(29)).len(),
            1,
            "the window's use expired"
        );
    }

    #[test]
    fn a_full_window_merges_its_oldest_entries_without_losing_any_use() {
        let start = Instant::now();
        let mut spending = Spending::new(&[tokens(u64::MAX, Some(Duration::from_secs(3600)))]);
        for i in 0..10_000u64 {
            spending.add(used(i % 7 + 1), start + Duration::from_millis(i));
        }
        let expected: u64 = (0..10_000u64).map(|i| i % 7 + 1).sum();
        let now = start + Duration::from_secs(20);
        assert_eq!(spending.report(now)[0].1, expected);
        assert!(spending.spent[0].window.len() <= 4097);
        // Past the window every use is gone, the merged ones too.
        assert_eq!(spending.report(start + Duration::from_secs(3700))[0].1, 0);
        assert!(spending.spent[0].window.is_empty());
    }
}
