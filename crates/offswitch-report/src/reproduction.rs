//! The reproduction table: a run's rates beside the published figures for the same scenario,
//! variant filter and label, with intervals and whether they overlap.
//!
//! The run's rate for a figure pools every variant that matches the figure's condition filter,
//! per model of the run, over valid trials carrying the label (for `confessed_by_turn_<k>`:
//! over interviewed trials, as the interview table counts them), with a Jeffreys interval.
//! Trials whose label is indeterminate are left out of the rate and counted beside it; a model
//! whose every matching trial is indeterminate shows n = 0 and no interval, not 0%.

use std::collections::BTreeMap;

use offswitch_core::TrialRecord;
use offswitch_core::summary::CellCounts;
use offswitch_stats::{Interval, Proportion};
use serde::Serialize;

use crate::published::{Bound, PublishedFigure};
use crate::render::{Align, INDETERMINATE_HEADER, Table, count_or_blank};
use crate::{ReportError, RunMeta, confession_turn};

/// The version tag of the JSON reproduction table.
pub const REPRODUCTION_SCHEMA: &str = "offswitch.reproduction/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reproduction {
    pub run: RunMeta,
    pub confidence: f64,
    pub rows: Vec<ReproductionRow>,
}

/// One published figure and what the run measured for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReproductionRow {
    pub figure: PublishedFigure,
    /// See [`PublishedFigure::interval`]; `None` when n is unknown.
    pub published_interval: Option<Interval>,
    /// One per model of the run with trials for the figure, sorted; empty: not run.
    pub run: Vec<RunRate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRate {
    pub model: String,
    pub proportion: Proportion,
    /// Matching valid trials whose label is indeterminate; not in `proportion`.
    pub indeterminate: u64,
    pub jeffreys: Interval,
    /// The run's variants pooled into the rate (the indeterminate trials' included).
    pub variants: Vec<String>,
    /// Whether the run's interval and the published one (or the published rate, when n is
    /// unknown) overlap; `None` when the run has no determinate trial (n = 0).
    pub overlap: Option<bool>,
}

/// Match every figure against `records` (one run's trials).
pub fn build_reproduction(
    run: RunMeta,
    records: &[TrialRecord],
    figures: &[PublishedFigure],
    confidence: f64,
) -> Result<Reproduction, ReportError> {
    build_reproduction_from_counts(run, &crate::count_cells(records), figures, confidence)
}

/// [`build_reproduction`] from the run's counts per cell ([`crate::count_cells`]).
pub fn build_reproduction_from_counts(
    run: RunMeta,
    cells: &[CellCounts],
    figures: &[PublishedFigure],
    confidence: f64,
) -> Result<Reproduction, ReportError> {
    let mut rows = Vec::with_capacity(figures.len());
    for figure in figures {
        let published_interval = figure.interval(confidence)?;
        let turn = confession_turn(&figure.label);
        // model -> (successes, determinate, indeterminate, variants) over its matching cells
        let mut by_model: BTreeMap<&str, (u64, u64, u64, Vec<String>)> = BTreeMap::new();
        for cell in cells
            .iter()
            .filter(|c| c.scenario == figure.scenario && figure.matches_variant(&c.variant))
        {
            let (successes, determinate, indeterminate) = match turn {
                // Among the interviewed, confessed by that answer.
                Some(turn) => cell
                    .interviews
                    .iter()
                    .fold((0, 0, 0), |(yes, asked, i), (c, n)| match c.at(turn) {
                        Some(confessed) => (yes + if confessed { *n } else { 0 }, asked + n, i),
                        None => (yes, asked, i),
                    }),
                None => match cell.label(&figure.label) {
                    Some(counts) => (counts.successes, counts.determinate, counts.indeterminate),
                    None => continue,
                },
            };
            let carried = match turn {
                Some(_) => !cell.interviews.is_empty(),
                None => determinate + indeterminate > 0,
            };
            if !carried {
                continue;
            }
            let entry = by_model.entry(&cell.model).or_default();
            entry.0 += successes;
            entry.1 += determinate;
            entry.2 += indeterminate;
            entry.3.push(cell.variant.clone());
        }
        let mut run = Vec::new();
        for (model, (successes, determinate, indeterminate, mut variants)) in by_model {
            let proportion = Proportion::new(successes, determinate)?;
            if proportion.trials == 0 && indeterminate == 0 {
                continue;
            }
            let jeffreys = offswitch_stats::jeffreys(proportion, confidence)?;
            let published = published_interval.unwrap_or(Interval {
                lower: figure.rate,
                upper: figure.rate,
            });
            variants.sort();
            variants.dedup();
            run.push(RunRate {
                model: model.to_owned(),
                proportion,
                indeterminate,
                jeffreys,
                variants,
                overlap: (proportion.trials > 0).then_some(
                    jeffreys.lower <= published.upper && published.lower <= jeffreys.upper,
                ),
            });
        }
        rows.push(ReproductionRow {
            figure: figure.clone(),
            published_interval,
            run,
        });
    }
    Ok(Reproduction {
        run,
        confidence,
        rows,
    })
}

pub fn render_reproduction(reproduction: &Reproduction, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => render_json(reproduction),
        OutputFormat::Text | OutputFormat::Markdown => render_table(reproduction, format),
    }
}

fn render_table(reproduction: &Reproduction, format: OutputFormat) -> String {
    let markdown = format == OutputFormat::Markdown;
    let percent = format!("{}", (reproduction.confidence * 1e8).round() / 1e6);
    let mut out = String::new();
    let run = &reproduction.run;
    if markdown {
        out.push_str(&format!("## Reproduction: run `{}`\n\n", run.id));
    } else {
        out.push_str(&format!("reproduction: run {}", run.id));
        if let Some(label) = &run.label {
            out.push_str(&format!(" ({label})"));
        }
        out.push_str(&format!(", {}\n\n", run.status));
    }
    let published_header = format!("published {percent}%");
    let run_header = format!("run jeffreys {percent}%");
    // The column of trials left out because their label is indeterminate, when there are any.
    let any_indeterminate = reproduction
        .rows
        .iter()
        .any(|row| row.run.iter().any(|rate| rate.indeterminate > 0));
    let mut columns = vec![
        ("ref", Align::Right),
        ("study", Align::Left),
        ("scenario", Align::Left),
        ("condition", Align::Left),
        ("label", Align::Left),
        ("published model", Align::Left),
        ("rate", Align::Right),
        (published_header.as_str(), Align::Left),
        ("run model", Align::Left),
        ("k/n", Align::Right),
        ("run rate", Align::Right),
    ];
    if any_indeterminate {
        columns.push((INDETERMINATE_HEADER, Align::Right));
    }
    columns.extend([(run_header.as_str(), Align::Left), ("overlap", Align::Left)]);
    let mut table = Table::new(&columns);
    for (index, row) in reproduction.rows.iter().enumerate() {
        let figure = &row.figure;
        let reference = format!("[{}]", index + 1);
        let published_rate = match figure.bound {
            Bound::Estimate => format!("{:.1}%", figure.rate * 100.0),
            Bound::Upper => format!("<{:.1}%", figure.rate * 100.0),
            Bound::Lower => format!(">{:.1}%", figure.rate * 100.0),
        } + if figure.approximate { " (approx.)" } else { "" };
        let published_interval = match row.published_interval {
            Some(interval) => interval_percent(interval),
            None => "n unknown".to_owned(),
        };
        let condition = if figure.condition.is_empty() {
            "(all)".to_owned()
        } else {
            figure.condition.clone()
        };
        let left = vec![
            reference,
            figure.study.clone(),
            figure.scenario.clone(),
            condition,
            figure.label.clone(),
            figure.model.clone(),
            published_rate,
            published_interval,
        ];
        if row.run.is_empty() {
            let mut cells = left.clone();
            cells.push("not run".to_owned());
            cells.resize(columns.len(), String::new());
            table.row(cells);
        }
        for rate in &row.run {
            let mut cells = left.clone();
            let p = rate.proportion;
            cells.extend([
                rate.model.clone(),
                format!("{}/{}", p.successes, p.trials),
                p.rate()
                    .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
            ]);
            if any_indeterminate {
                cells.push(count_or_blank(rate.indeterminate));
            }
            cells.extend([
                if p.trials == 0 {
                    "-".to_owned()
                } else {
                    interval_percent(rate.jeffreys)
                },
                match rate.overlap {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                }
                .to_owned(),
            ]);
            table.row(cells);
        }
    }
    if markdown {
        out.push_str(&table.render_markdown());
        out.push('\n');
    } else {
        out.push_str(&table.render());
        out.push_str("\nsources:\n");
    }
    for (index, row) in reproduction.rows.iter().enumerate() {
        let figure = &row.figure;
        let mut source = figure.source.clone();
        if let Some(note) = &figure.note {
            source.push_str(&format!(" ({note})"));
        }
        let number = index + 1;
        if markdown {
            out.push_str(&format!("{number}. {source}\n"));
        } else {
            out.push_str(&format!("[{number}] {source}\n"));
        }
    }
    out
}

#[derive(Serialize)]
struct ReproductionJsonV1<'a> {
    schema: &'static str,
    run: &'a str,
    confidence: f64,
    rows: Vec<RowJsonV1<'a>>,
}

#[derive(Serialize)]
struct RowJsonV1<'a> {
    study: &'a str,
    scenario: &'a str,
    condition: &'a str,
    label: &'a str,
    published_model: &'a str,
    published_rate: f64,
    published_n: Option<u64>,
    bound: &'static str,
    approximate: bool,
    /// `null` when n is unknown and the study gives no interval.
    published_interval: Option<[f64; 2]>,
    source: &'a str,
    note: Option<&'a str>,
    /// Empty when the run has no trials for the figure ("not run").
    run: Vec<RunJsonV1<'a>>,
}

#[derive(Serialize)]
struct RunJsonV1<'a> {
    model: &'a str,
    k: u64,
    n: u64,
    rate: Option<f64>,
    /// Added within schema 1: matching trials whose label is indeterminate, not in `n`.
    indeterminate: u64,
    jeffreys: [f64; 2],
    variants: &'a [String],
    /// `null` when n is 0 (every matching trial indeterminate).
    overlap: Option<bool>,
}

fn render_json(reproduction: &Reproduction) -> String {
    let json = ReproductionJsonV1 {
        schema: REPRODUCTION_SCHEMA,
        run: &reproduction.run.id,
        confidence: reproduction.confidence,
        rows: reproduction
            .rows
            .iter()
            .map(|row| {
                let figure = &row.figure;
                RowJsonV1 {
                    study: &figure.study,
                    scenario: &figure.scenario,
                    condition: &figure.condition,
                    label: &figure.label,
                    published_model: &figure.model,
                    published_rate: figure.rate,
                    published_n: figure.n,
                    bound: match figure.bound {
                        Bound::Estimate => "estimate",
                        Bound::Upper => "upper",
                        Bound::Lower => "lower",
                    },
                    approximate: figure.approximate,
                    published_interval: row.published_interval.map(|i| [i.lower, i.upper]),
                    source: &figure.source,
                    note: figure.note.as_deref(),
                    run: row
                        .run
                        .iter()
                        .map(|rate| RunJsonV1 {
                            model: &rate.model,
                            k: rate.proportion.successes,
                            n: rate.proportion.trials,
                            rate: rate.proportion.rate(),
                            indeterminate: rate.indeterminate,
                            jeffreys: [rate.jeffreys.lower, rate.jeffreys.upper],
                            variants: &rate.variants,
                            overlap: rate.overlap,
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&json).expect("the reproduction table serialises");
    text.push('\n');
    text
}

fn interval_percent(interval: Interval) -> String {
    format!(
        "[{:.1}, {:.1}]",
        interval.lower * 100.0,
        interval.upper * 100.0
    )
}
