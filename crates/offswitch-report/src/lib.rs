//! Reports over finished trials: rate tables with intervals, variant comparisons, the
//! scenario's analyses (paired, difference of means), the follow-up interview table, the
//! reproduction table against published figures, and one trial's transcript, rendered as
//! terminal text, JSON and CSV (and markdown for the reproduction table).
//!
//! Pure: records in, strings out. Reading the store and writing files is the CLI's job.
//! Invariants: a rate counts only valid trials (`Outcome::is_valid`) that carry the label and
//! whose label is not indeterminate (`Label::indeterminate`: its evidence is incomplete, so it
//! is neither true nor false); those are counted beside the rate instead, in every table that
//! has a rate (rates, comparisons, analyses, reproduction), so a label indeterminate in every
//! trial reads n = 0, never 0%. Cells are ordered by (model, scenario, variant) so output does
//! not depend on the order in which concurrent trials finished; the JSON and CSV layouts are
//! versioned (`REPORT_SCHEMA`).

mod analysis;
mod closing;
mod html;
pub mod published;
mod render;
mod reproduction;
mod transcript;

use std::collections::BTreeMap;

use offswitch_core::TrialRecord;
use offswitch_core::summary::{CellCounts, Confession, LabelCounts};
use offswitch_stats::{Interval, Proportion, StatsError};

pub use analysis::{
    AnalysisResult, AnalysisSpec, AnalysisValue, CONFESSED_PREFIX, INTERVIEWED_LABEL,
    InterviewRate, ScenarioAnalysis, add_analyses, confessed_by, confession_turn, interview_rates,
    interview_rates_from_counts, is_interviewed, variant_levels,
};
pub use closing::{Closing, render_closing, short_model};
pub use html::{STYLE as HTML_STYLE, esc as html_escape, render_html, render_html_sections};
pub use render::{render_csv, render_json, render_markdown, render_table};
pub use reproduction::{
    OutputFormat, REPRODUCTION_SCHEMA, Reproduction, ReproductionRow, RunRate, build_reproduction,
    build_reproduction_from_counts, render_reproduction,
};
pub use transcript::{
    DEFAULT_EVENTS_PER_STREAM, TrialHeader, TrialView, describe_event, file_change, render_trial,
    seconds,
};

/// The transcript event of a model reply replayed from the response cache.
pub const CACHE_HIT: &str = "cache_hit";

/// Whether `record`'s trial replayed at least one model reply from the response cache.
pub fn replayed_from_cache(record: &TrialRecord) -> bool {
    record.transcript.iter().any(|entry| {
        matches!(entry, offswitch_core::TranscriptEntry::Event { kind, .. } if kind == CACHE_HIT)
    })
}

/// The version tag of the JSON report (`"schema"`) and, by the same number, of the CSV columns.
pub const REPORT_SCHEMA: &str = "offswitch.report/1";

/// Outcome names in the order tables show them (the order of `Outcome`'s variants).
pub const OUTCOME_ORDER: &[&str] = &[
    "finished",
    "shut_down",
    "turn_limit",
    "token_limit",
    "time_limit",
    "backend_failed",
    "harness_error",
];

#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Only these labels, in this order; empty means every label seen, in first-seen order.
    pub labels: Vec<String>,
    /// Confidence level of both intervals.
    pub confidence: f64,
}

impl Default for ReportConfig {
    fn default() -> ReportConfig {
        ReportConfig {
            labels: Vec::new(),
            confidence: offswitch_stats::DEFAULT_CONFIDENCE,
        }
    }
}

/// Which run the report is about, for headers and output files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunMeta {
    pub id: String,
    pub label: Option<String>,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub run: RunMeta,
    pub confidence: f64,
    /// The label names reported, in column order.
    pub label_names: Vec<String>,
    pub cells: Vec<Cell>,
    pub comparisons: Vec<Comparison>,
    /// The scenario's analyses, when the caller added them ([`add_analyses`]).
    pub analyses: Vec<AnalysisResult>,
    /// Confession by answer turn among interviewed trials, per cell (empty without interviews).
    pub interviews: Vec<InterviewRate>,
}

impl Report {
    /// Every stored trial of the report's cells, and those that count toward rates.
    pub fn totals(&self) -> (u64, u64) {
        self.cells.iter().fold((0, 0), |(trials, valid), c| {
            (trials + c.trials, valid + c.valid)
        })
    }
}

/// One (model, scenario, variant) cell of the run matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub model: String,
    pub scenario: String,
    pub variant: String,
    /// Every stored trial of the cell, valid or not.
    pub trials: u64,
    /// Trials that count toward rates.
    pub valid: u64,
    /// Trials per outcome name (only outcomes that occurred).
    pub outcomes: BTreeMap<String, u64>,
    /// Means over the valid trials (0 when there are none).
    pub mean_turns: f64,
    pub mean_prompt_tokens: f64,
    pub mean_completion_tokens: f64,
    /// One per reported label name that the cell's trials carry, in `Report::label_names` order.
    pub labels: Vec<LabelRate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelRate {
    pub name: String,
    /// Valid trials with the label true, out of valid trials carrying a determinate label.
    pub proportion: Proportion,
    /// Valid trials whose label is indeterminate (events lost, no stream, a snapshot cut
    /// short); not in `proportion`.
    pub indeterminate: u64,
    /// Valid trials that lack this label (a detector did not run); not in `proportion`.
    pub unlabelled: u64,
    pub jeffreys: Interval,
    pub wilson: Interval,
}

/// Variant `a` against variant `b` for one model, scenario and label.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub model: String,
    pub scenario: String,
    pub label: String,
    pub variant_a: String,
    pub variant_b: String,
    pub result: offswitch_stats::Comparison,
    /// Valid trials of each variant whose label is indeterminate, left out of `result`.
    pub indeterminate_a: u64,
    pub indeterminate_b: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error(
        "cannot compare {spec:?}: expected two variants separated by a comma, each one of: {known}"
    )]
    BadComparison { spec: String, known: String },
    #[error("cannot compare variant {0:?} with itself")]
    SameVariant(String),
    #[error("label {label:?} does not occur in this run; labels: {known}")]
    UnknownLabel { label: String, known: String },
    #[error("label {label:?} is not given to the trials of scenario {scenario:?} being compared")]
    LabelNotInCell { label: String, scenario: String },
    #[error("no (model, scenario) in this run has both variants {a:?} and {b:?}")]
    NothingToCompare { a: String, b: String },
}

/// Build the rate table of `records` (a run's trials, in any order).
pub fn build_report(
    run: RunMeta,
    records: &[TrialRecord],
    config: &ReportConfig,
) -> Result<Report, ReportError> {
    report_from(
        run,
        &count_cells(records),
        label_names_seen(records),
        config,
    )
}

/// [`build_report`] from the counts of the run's cells (see [`count_cells`]), as a store can
/// aggregate them without reading the trials: the same report. Labels are in the order the
/// cells carry them, cells taken in order.
pub fn build_report_from_counts(
    run: RunMeta,
    cells: &[CellCounts],
    config: &ReportConfig,
) -> Result<Report, ReportError> {
    let mut seen: Vec<String> = Vec::new();
    for (name, _) in cells.iter().flat_map(|c| &c.labels) {
        if !seen.contains(name) {
            seen.push(name.clone());
        }
    }
    let mut cells = cells.to_vec();
    cells.sort_by(|a, b| {
        (&a.model, &a.scenario, &a.variant).cmp(&(&b.model, &b.scenario, &b.variant))
    });
    report_from(run, &cells, seen, config)
}

/// The counts of `records` per (model, scenario, variant) cell, cells in that order.
pub fn count_cells(records: &[TrialRecord]) -> Vec<CellCounts> {
    let mut cells: BTreeMap<(&str, &str, &str), CellCounts> = BTreeMap::new();
    for record in records {
        let key = &record.key;
        let cell = cells
            .entry((&key.model, &key.scenario, &key.variant))
            .or_insert_with(|| CellCounts {
                model: key.model.clone(),
                scenario: key.scenario.clone(),
                variant: key.variant.clone(),
                ..CellCounts::default()
            });
        *cell
            .outcomes
            .entry(record.outcome.name().to_owned())
            .or_insert(0) += 1;
        if replayed_from_cache(record) {
            cell.cached_trials += 1;
        }
        let valid = record.outcome.is_valid();
        if valid {
            cell.sum_turns += u64::from(record.turns);
            cell.sum_prompt_tokens += record.usage.prompt_tokens;
            cell.sum_completion_tokens += record.usage.completion_tokens;
        }
        for label in &record.labels {
            let index = match cell.labels.iter().position(|(n, _)| *n == label.name) {
                Some(index) => index,
                None => {
                    cell.labels
                        .push((label.name.clone(), LabelCounts::default()));
                    cell.labels.len() - 1
                }
            };
            // The first label of a name in a trial is the trial's (`TrialRecord::label`).
            if !valid
                || record
                    .label(&label.name)
                    .is_some_and(|l| !std::ptr::eq(l, label))
            {
                continue;
            }
            let counts = &mut cell.labels[index].1;
            if label.indeterminate {
                counts.indeterminate += 1;
            } else {
                counts.determinate += 1;
                counts.successes += u64::from(label.value);
            }
        }
        if is_interviewed(record) {
            let mut confession = Confession::default();
            for label in record.labels.iter().filter(|l| !l.indeterminate) {
                if let Some(turn) = confession_turn(&label.name) {
                    confession.add(turn, label.value);
                }
            }
            *cell.interviews.entry(confession).or_insert(0) += 1;
        }
    }
    cells.into_values().collect()
}

/// The report of `cells` (ordered by key) with labels `seen` in this order.
fn report_from(
    run: RunMeta,
    cells: &[CellCounts],
    seen: Vec<String>,
    config: &ReportConfig,
) -> Result<Report, ReportError> {
    let label_names = if config.labels.is_empty() {
        // The cumulative confession labels are rates among interviewed trials, not among all
        // trials: the interview table reports them with that denominator.
        seen.iter()
            .filter(|name| confession_turn(name).is_none())
            .cloned()
            .collect()
    } else {
        for label in &config.labels {
            if !seen.contains(label) {
                return Err(ReportError::UnknownLabel {
                    label: label.clone(),
                    known: list_or_none(&seen),
                });
            }
        }
        config.labels.clone()
    };
    let mut rows = Vec::with_capacity(cells.len());
    for cell in cells {
        let valid = cell.valid();
        let mean = |sum: u64| {
            if valid == 0 {
                0.0
            } else {
                sum as f64 / valid as f64
            }
        };
        let mut labels = Vec::with_capacity(label_names.len());
        // A run may mix scenarios with different detectors: a cell reports the labels its own
        // trials carry, not a row of 0/0 for every other scenario's labels.
        for name in &label_names {
            let Some(counts) = cell.label(name) else {
                continue;
            };
            let proportion = Proportion::new(counts.successes, counts.determinate)?;
            labels.push(LabelRate {
                name: name.clone(),
                proportion,
                indeterminate: counts.indeterminate,
                unlabelled: valid - counts.determinate - counts.indeterminate,
                jeffreys: offswitch_stats::jeffreys(proportion, config.confidence)?,
                wilson: offswitch_stats::wilson(proportion, config.confidence)?,
            });
        }
        rows.push(Cell {
            model: cell.model.clone(),
            scenario: cell.scenario.clone(),
            variant: cell.variant.clone(),
            trials: cell.trials(),
            valid,
            outcomes: cell.outcomes.clone(),
            mean_turns: mean(cell.sum_turns),
            mean_prompt_tokens: mean(cell.sum_prompt_tokens),
            mean_completion_tokens: mean(cell.sum_completion_tokens),
            labels,
        });
    }
    Ok(Report {
        run,
        confidence: config.confidence,
        label_names,
        cells: rows,
        comparisons: Vec::new(),
        analyses: Vec::new(),
        interviews: interview_rates_from_counts(cells, config.confidence)?,
    })
}

/// Split a `--compare` argument into two variant names. Variant names contain commas
/// themselves when a scenario has several factors (`f=a,g=b`), so the split point is the comma
/// that leaves a known variant on both sides.
pub fn parse_comparison(spec: &str, report: &Report) -> Result<(String, String), ReportError> {
    let known: Vec<&str> = {
        let mut variants: Vec<&str> = report.cells.iter().map(|c| c.variant.as_str()).collect();
        variants.sort_unstable();
        variants.dedup();
        variants
    };
    let splits: Vec<(String, String)> = spec
        .match_indices(',')
        .map(|(at, _)| (&spec[..at], &spec[at + 1..]))
        .filter(|(a, b)| known.contains(a) && known.contains(b))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    match splits.as_slice() {
        [(a, b)] if a == b => Err(ReportError::SameVariant(a.clone())),
        [one] => Ok(one.clone()),
        _ => Err(ReportError::BadComparison {
            spec: spec.to_owned(),
            known: list_or_none(&known),
        }),
    }
}

/// Add the comparison of `variant_a` against `variant_b` for each of `labels` (all reported
/// labels when empty) in every (model, scenario) that has both variants.
pub fn add_comparison(
    report: &mut Report,
    variant_a: &str,
    variant_b: &str,
    labels: &[String],
) -> Result<(), ReportError> {
    let explicit = !labels.is_empty();
    let labels: Vec<String> = if explicit {
        labels.to_vec()
    } else {
        report.label_names.clone()
    };
    let mut added = 0;
    let mut comparisons = Vec::new();
    for a in report.cells.iter().filter(|c| c.variant == variant_a) {
        let Some(b) = report
            .cells
            .iter()
            .find(|c| c.variant == variant_b && c.model == a.model && c.scenario == a.scenario)
        else {
            continue;
        };
        added += 1;
        for label in &labels {
            let (Some(rate_a), Some(rate_b)) = (label_rate(a, label), label_rate(b, label)) else {
                if !explicit {
                    // Comparing "every label": only those both cells carry.
                    continue;
                }
                return Err(ReportError::LabelNotInCell {
                    label: label.clone(),
                    scenario: a.scenario.clone(),
                });
            };
            comparisons.push(Comparison {
                model: a.model.clone(),
                scenario: a.scenario.clone(),
                label: label.clone(),
                variant_a: variant_a.to_owned(),
                variant_b: variant_b.to_owned(),
                result: offswitch_stats::compare_proportions(
                    rate_a.proportion,
                    rate_b.proportion,
                    report.confidence,
                )?,
                indeterminate_a: rate_a.indeterminate,
                indeterminate_b: rate_b.indeterminate,
            });
        }
    }
    if added == 0 {
        return Err(ReportError::NothingToCompare {
            a: variant_a.to_owned(),
            b: variant_b.to_owned(),
        });
    }
    report.comparisons.extend(comparisons);
    Ok(())
}

fn label_rate<'a>(cell: &'a Cell, label: &str) -> Option<&'a LabelRate> {
    cell.labels.iter().find(|l| l.name == label)
}

fn label_names_seen(records: &[TrialRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for record in records {
        for label in &record.labels {
            if !names.contains(&label.name) {
                names.push(label.name.clone());
            }
        }
    }
    names
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
