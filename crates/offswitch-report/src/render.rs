//! Rendering a [`Report`] as an aligned terminal table, versioned JSON and CSV.

use offswitch_stats::Interval;
use serde::Serialize;

use crate::{Cell, OUTCOME_ORDER, REPORT_SCHEMA, Report};

/// The terminal table: rates per cell and label, then outcomes per cell, then comparisons.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let run = &report.run;
    out.push_str(&format!("run {}", run.id));
    if let Some(label) = &run.label {
        out.push_str(&format!(" ({label})"));
    }
    let trials: u64 = report.cells.iter().map(|c| c.trials).sum();
    let valid: u64 = report.cells.iter().map(|c| c.valid).sum();
    out.push_str(&format!(
        ", {}: {trials} trials, {valid} valid\n\n",
        run.status
    ));
    if report.cells.is_empty() {
        out.push_str("no trials stored\n");
        return out;
    }

    // Rounded to millionths of a percent: 0.9973 * 100.0 is 99.72999999999999 in floating point.
    let percent = format!("{}", (report.confidence * 1e8).round() / 1e6);
    if report.label_names.is_empty() {
        out.push_str("no labels in this run\n");
    } else {
        // The column of valid trials without the label appears only when there are some.
        let any_unlabelled = report
            .cells
            .iter()
            .any(|c| c.labels.iter().any(|l| l.unlabelled > 0));
        let jeffreys_header = format!("jeffreys {percent}%");
        let wilson_header = format!("wilson {percent}%");
        let mut columns = vec![
            ("model", Align::Left),
            ("scenario", Align::Left),
            ("variant", Align::Left),
            ("label", Align::Left),
            ("k/n", Align::Right),
            ("rate", Align::Right),
            (jeffreys_header.as_str(), Align::Left),
            (wilson_header.as_str(), Align::Left),
        ];
        if any_unlabelled {
            columns.push(("unlabelled", Align::Right));
        }
        let mut table = Table::new(&columns);
        for cell in &report.cells {
            for label in &cell.labels {
                let p = label.proportion;
                let (rate, jeffreys, wilson) = match p.rate() {
                    Some(rate) => (
                        format!("{:.1}%", rate * 100.0),
                        interval_percent(label.jeffreys),
                        interval_percent(label.wilson),
                    ),
                    None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
                };
                let mut row = vec![
                    cell.model.clone(),
                    cell.scenario.clone(),
                    display_variant(&cell.variant),
                    label.name.clone(),
                    format!("{}/{}", p.successes, p.trials),
                    rate,
                    jeffreys,
                    wilson,
                ];
                if any_unlabelled {
                    row.push(if label.unlabelled == 0 {
                        String::new()
                    } else {
                        label.unlabelled.to_string()
                    });
                }
                table.row(row);
            }
        }
        out.push_str(&table.render());
    }

    out.push('\n');
    let outcome_names: Vec<&str> = OUTCOME_ORDER
        .iter()
        .copied()
        .filter(|name| report.cells.iter().any(|c| c.outcomes.contains_key(*name)))
        .collect();
    let mut columns: Vec<(&str, Align)> = vec![
        ("model", Align::Left),
        ("scenario", Align::Left),
        ("variant", Align::Left),
        ("trials", Align::Right),
        ("valid", Align::Right),
    ];
    columns.extend(outcome_names.iter().map(|name| (*name, Align::Right)));
    columns.extend([("mean turns", Align::Right), ("mean tokens", Align::Right)]);
    let mut table = Table::new(&columns);
    for cell in &report.cells {
        let mut row = vec![
            cell.model.clone(),
            cell.scenario.clone(),
            display_variant(&cell.variant),
            cell.trials.to_string(),
            cell.valid.to_string(),
        ];
        row.extend(
            outcome_names
                .iter()
                .map(|name| cell.outcomes.get(*name).copied().unwrap_or(0).to_string()),
        );
        row.push(format!("{:.1}", cell.mean_turns));
        row.push(format!(
            "{:.0}",
            cell.mean_prompt_tokens + cell.mean_completion_tokens
        ));
        table.row(row);
    }
    out.push_str(&table.render());

    if !report.comparisons.is_empty() {
        out.push_str(
            "\ncomparisons (Fisher's exact test, two-sided; difference with Newcombe's interval)\n",
        );
        let difference_header = format!("b - a [{percent}%]");
        let mut table = Table::new(&[
            ("model", Align::Left),
            ("scenario", Align::Left),
            ("label", Align::Left),
            ("variant a", Align::Left),
            ("a", Align::Right),
            ("variant b", Align::Left),
            ("b", Align::Right),
            (&difference_header, Align::Left),
            ("p", Align::Right),
        ]);
        for comparison in &report.comparisons {
            let result = &comparison.result;
            let side = |p: offswitch_stats::Proportion| match p.rate() {
                Some(rate) => format!("{}/{} {:.1}%", p.successes, p.trials, rate * 100.0),
                None => format!("{}/{}", p.successes, p.trials),
            };
            table.row(vec![
                comparison.model.clone(),
                comparison.scenario.clone(),
                comparison.label.clone(),
                display_variant(&comparison.variant_a),
                side(result.a),
                display_variant(&comparison.variant_b),
                side(result.b),
                match (result.difference, result.difference_interval) {
                    (Some(d), Some(i)) => format!(
                        "{:+.1} pp [{:+.1}, {:+.1}]",
                        d * 100.0,
                        i.lower * 100.0,
                        i.upper * 100.0
                    ),
                    _ => "-".to_owned(),
                },
                format_p(result.p_value),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// The report as JSON, tagged `"schema": "offswitch.report/1"`.
pub fn render_json(report: &Report) -> String {
    let json = ReportJsonV1 {
        schema: REPORT_SCHEMA,
        run: RunJsonV1 {
            id: &report.run.id,
            label: report.run.label.as_deref(),
            status: &report.run.status,
        },
        confidence: report.confidence,
        labels: &report.label_names,
        cells: report.cells.iter().map(cell_json).collect(),
        comparisons: report
            .comparisons
            .iter()
            .map(|c| ComparisonJsonV1 {
                model: &c.model,
                scenario: &c.scenario,
                label: &c.label,
                variant_a: &c.variant_a,
                variant_b: &c.variant_b,
                a: CountJsonV1 {
                    k: c.result.a.successes,
                    n: c.result.a.trials,
                    rate: c.result.a.rate(),
                },
                b: CountJsonV1 {
                    k: c.result.b.successes,
                    n: c.result.b.trials,
                    rate: c.result.b.rate(),
                },
                difference: c.result.difference,
                difference_interval: c.result.difference_interval.map(|i| [i.lower, i.upper]),
                fisher_p: c.result.p_value,
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&json).expect("the report serialises");
    text.push('\n');
    text
}

/// One row per cell and label. Columns (schema `offswitch.report/1`):
/// `run,model,scenario,variant,label,k,n,rate,jeffreys_lower,jeffreys_upper,wilson_lower,wilson_upper,confidence,trials,valid,unlabelled`.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "run,model,scenario,variant,label,k,n,rate,jeffreys_lower,jeffreys_upper,wilson_lower,wilson_upper,confidence,trials,valid,unlabelled\n",
    );
    for cell in &report.cells {
        for label in &cell.labels {
            let p = label.proportion;
            let fields = [
                csv_field(&report.run.id),
                csv_field(&cell.model),
                csv_field(&cell.scenario),
                csv_field(&cell.variant),
                csv_field(&label.name),
                p.successes.to_string(),
                p.trials.to_string(),
                p.rate().map_or(String::new(), |r| r.to_string()),
                label.jeffreys.lower.to_string(),
                label.jeffreys.upper.to_string(),
                label.wilson.lower.to_string(),
                label.wilson.upper.to_string(),
                report.confidence.to_string(),
                cell.trials.to_string(),
                cell.valid.to_string(),
                label.unlabelled.to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    out
}

#[derive(Serialize)]
struct ReportJsonV1<'a> {
    schema: &'static str,
    run: RunJsonV1<'a>,
    confidence: f64,
    labels: &'a [String],
    cells: Vec<CellJsonV1<'a>>,
    comparisons: Vec<ComparisonJsonV1<'a>>,
}

#[derive(Serialize)]
struct RunJsonV1<'a> {
    id: &'a str,
    label: Option<&'a str>,
    status: &'a str,
}

#[derive(Serialize)]
struct CellJsonV1<'a> {
    model: &'a str,
    scenario: &'a str,
    variant: &'a str,
    trials: u64,
    valid: u64,
    outcomes: serde_json::Map<String, serde_json::Value>,
    mean_turns: f64,
    mean_prompt_tokens: f64,
    mean_completion_tokens: f64,
    labels: Vec<LabelJsonV1<'a>>,
}

#[derive(Serialize)]
struct LabelJsonV1<'a> {
    name: &'a str,
    k: u64,
    n: u64,
    rate: Option<f64>,
    unlabelled: u64,
    jeffreys: [f64; 2],
    wilson: [f64; 2],
}

#[derive(Serialize)]
struct ComparisonJsonV1<'a> {
    model: &'a str,
    scenario: &'a str,
    label: &'a str,
    variant_a: &'a str,
    variant_b: &'a str,
    a: CountJsonV1,
    b: CountJsonV1,
    difference: Option<f64>,
    /// Newcombe's hybrid score interval of `difference`, at the report's confidence.
    difference_interval: Option<[f64; 2]>,
    fisher_p: f64,
}

#[derive(Serialize)]
struct CountJsonV1 {
    k: u64,
    n: u64,
    rate: Option<f64>,
}

fn cell_json(cell: &Cell) -> CellJsonV1<'_> {
    // Outcomes in the fixed order, so the JSON is stable.
    let mut outcomes = serde_json::Map::new();
    for name in OUTCOME_ORDER {
        if let Some(count) = cell.outcomes.get(*name) {
            outcomes.insert((*name).to_owned(), (*count).into());
        }
    }
    for (name, count) in &cell.outcomes {
        if !outcomes.contains_key(name) {
            outcomes.insert(name.clone(), (*count).into());
        }
    }
    CellJsonV1 {
        model: &cell.model,
        scenario: &cell.scenario,
        variant: &cell.variant,
        trials: cell.trials,
        valid: cell.valid,
        outcomes,
        mean_turns: cell.mean_turns,
        mean_prompt_tokens: cell.mean_prompt_tokens,
        mean_completion_tokens: cell.mean_completion_tokens,
        labels: cell
            .labels
            .iter()
            .map(|l| LabelJsonV1 {
                name: &l.name,
                k: l.proportion.successes,
                n: l.proportion.trials,
                rate: l.proportion.rate(),
                unlabelled: l.unlabelled,
                jeffreys: [l.jeffreys.lower, l.jeffreys.upper],
                wilson: [l.wilson.lower, l.wilson.upper],
            })
            .collect(),
    }
}

fn interval_percent(interval: Interval) -> String {
    format!(
        "[{:.1}, {:.1}]",
        interval.lower * 100.0,
        interval.upper * 100.0
    )
}

fn format_p(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A scenario without factors has the empty variant; show that as `-` rather than a gap.
fn display_variant(variant: &str) -> String {
    if variant.is_empty() {
        "-".to_owned()
    } else {
        variant.to_owned()
    }
}

/// RFC 4180 quoting: variant names contain commas.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Columns separated by two spaces, widths from the widest cell, no trailing spaces.
pub(crate) struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[(&str, Align)]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|(name, align)| ((*name).to_owned(), *align))
                .collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.headers[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
