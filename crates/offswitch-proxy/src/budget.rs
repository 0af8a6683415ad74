//! Budgets per session: tokens and requests, over the whole session or a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{Action, Budget, Metric};

/// One session's spending against every budget.
pub struct Spending {
    budgets: Vec<Budget>,
    /// Per budget: what was spent when (the window), and the total.
    spent: Vec<(VecDeque<(Instant, u64)>, u64)>,
    /// Budgets already reported exhausted.
    reported: Vec<bool>,
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
            spent: vec![(VecDeque::new(), 0); budgets.len()],
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
                let (window, total) = &mut self.spent[index];
                *total = total.saturating_add(amount);
                if self.budgets[index].per.is_some() {
                    window.push_back((now, amount));
                    // Bounded: merge the oldest entries past a few thousand.
                    if window.len() > 4096
                        && let (Some(a), Some(b)) = (window.pop_front(), window.pop_front())
                    {
                        window.push_front((b.0, a.1 + b.1));
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
        let (window, total) = &mut self.spent[index];
        match self.budgets[index].per {
            None => *total,
            Some(per) => {
                while window
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > per)
                {
                    window.pop_front();
                }
                window.iter().map(|(_, amount)| amount).sum()
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
