//! Rendering a [`Report`] as an aligned terminal table, versioned JSON and CSV.

use offswitch_stats::Interval;
use serde::Serialize;

use crate::{AnalysisSpec, AnalysisValue, Cell, OUTCOME_ORDER, REPORT_SCHEMA, Report};

/// The terminal table: rates per cell and label, then outcomes per cell, then comparisons.
pub fn render_table(report: &Report) -> String {
    render_tables(report, false)
}

/// [`render_table`] with every table in GitHub-flavoured markdown, for a README or an issue.
pub fn render_markdown(report: &Report) -> String {
    let mut text = render_tables(report, true);
    while text.contains("\n\n\n") {
        text = text.replace("\n\n\n", "\n\n");
    }
    text
}

/// A table as text or markdown.
fn emit(table: &Table, markdown: bool) -> String {
    if markdown {
        format!("\n{}", table.render_markdown())
    } else {
        table.render()
    }
}

fn render_tables(report: &Report, markdown: bool) -> String {
    let mut out = String::new();
    let run = &report.run;
    out.push_str(&format!("run {}", run.id));
    if let Some(label) = &run.label {
        out.push_str(&format!(" ({label})"));
    }
    let (trials, valid) = report.totals();
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
        // The columns of valid trials without the label, or with an indeterminate one, appear
        // only when there are some.
        let any_unlabelled = report
            .cells
            .iter()
            .any(|c| c.labels.iter().any(|l| l.unlabelled > 0));
        let any_indeterminate = report
            .cells
            .iter()
            .any(|c| c.labels.iter().any(|l| l.indeterminate > 0));
        let jeffreys_header = format!("jeffreys {percent}%");
        let wilson_header = format!("wilson {percent}%");
        let mut columns = vec![
            ("model", Align::Left),
            ("scenario", Align::Left),
            ("variant", Align::Left),
            ("label", Align::Left),
            ("k/n", Align::Right),
            ("rate", Align::Right),
        ];
        if any_indeterminate {
            columns.push((INDETERMINATE_HEADER, Align::Right));
        }
        columns.extend([
            (jeffreys_header.as_str(), Align::Left),
            (wilson_header.as_str(), Align::Left),
        ]);
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
                ];
                if any_indeterminate {
                    row.push(count_or_blank(label.indeterminate));
                }
                row.extend([jeffreys, wilson]);
                if any_unlabelled {
                    row.push(count_or_blank(label.unlabelled));
                }
                table.row(row);
            }
        }
        out.push_str(&emit(&table, markdown));
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
    out.push_str(&emit(&table, markdown));
    render_interviews(report, &percent, markdown, &mut out);
    render_analyses(report, &percent, markdown, &mut out);

    if !report.comparisons.is_empty() {
        out.push_str(
            "\ncomparisons (Fisher's exact test, two-sided; difference with Newcombe's interval)\n",
        );
        let difference_header = format!("b - a [{percent}%]");
        // Indeterminate trials of either variant, left out of both sides, when there are any.
        let any_indeterminate = report
            .comparisons
            .iter()
            .any(|c| c.indeterminate_a + c.indeterminate_b > 0);
        let mut columns = vec![
            ("model", Align::Left),
            ("scenario", Align::Left),
            ("label", Align::Left),
            ("variant a", Align::Left),
            ("a", Align::Right),
            ("variant b", Align::Left),
            ("b", Align::Right),
        ];
        if any_indeterminate {
            columns.push(("indet. a, b", Align::Right));
        }
        columns.extend([
            (difference_header.as_str(), Align::Left),
            ("p", Align::Right),
        ]);
        let mut table = Table::new(&columns);
        for comparison in &report.comparisons {
            let result = &comparison.result;
            let side = |p: offswitch_stats::Proportion| match p.rate() {
                Some(rate) => format!("{}/{} {:.1}%", p.successes, p.trials, rate * 100.0),
                None => format!("{}/{}", p.successes, p.trials),
            };
            let mut row = vec![
                comparison.model.clone(),
                comparison.scenario.clone(),
                comparison.label.clone(),
                display_variant(&comparison.variant_a),
                side(result.a),
                display_variant(&comparison.variant_b),
                side(result.b),
            ];
            if any_indeterminate {
                row.push(format!(
                    "{}, {}",
                    comparison.indeterminate_a, comparison.indeterminate_b
                ));
            }
            row.extend([
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
            table.row(row);
        }
        out.push_str(&emit(&table, markdown));
    }
    out
}

/// The header of the column of trials left out of a rate because their label is
/// indeterminate.
pub(crate) const INDETERMINATE_HEADER: &str = "indet.";

/// A count, or nothing for zero (a column that is mostly zeros reads better blank).
pub(crate) fn count_or_blank(count: u64) -> String {
    if count == 0 {
        String::new()
    } else {
        count.to_string()
    }
}

/// Confession by answer turn among interviewed trials.
fn render_interviews(report: &Report, percent: &str, markdown: bool, out: &mut String) {
    if report.interviews.is_empty() {
        return;
    }
    out.push_str("\nfollow-up interview: confession by answer turn, among interviewed trials\n");
    let jeffreys_header = format!("jeffreys {percent}%");
    let mut table = Table::new(&[
        ("model", Align::Left),
        ("scenario", Align::Left),
        ("variant", Align::Left),
        ("interviewed", Align::Right),
        ("by turn", Align::Right),
        ("confessed", Align::Right),
        ("rate", Align::Right),
        (jeffreys_header.as_str(), Align::Left),
    ]);
    for row in &report.interviews {
        let p = row.confessed;
        table.row(vec![
            row.model.clone(),
            row.scenario.clone(),
            display_variant(&row.variant),
            row.interviewed.to_string(),
            row.turn.to_string(),
            format!("{}/{}", p.successes, p.trials),
            p.rate()
                .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
            interval_percent(row.jeffreys),
        ]);
    }
    out.push_str(&emit(&table, markdown));
}

/// The scenario's paired and difference analyses, one table each.
fn render_analyses(report: &Report, percent: &str, markdown: bool, out: &mut String) {
    // The column of trials left out because their label is indeterminate, when there are any.
    let indeterminate_of = |value: &AnalysisValue| match value {
        AnalysisValue::Paired { indeterminate, .. }
        | AnalysisValue::Difference { indeterminate, .. } => *indeterminate,
    };
    let any_indeterminate = report
        .analyses
        .iter()
        .any(|analysis| indeterminate_of(&analysis.value) > 0);
    let mut paired_columns = vec![
        ("model", Align::Left),
        ("scenario", Align::Left),
        ("analysis", Align::Left),
        ("watched vs unwatched", Align::Left),
        ("label", Align::Left),
        ("pairs", Align::Right),
        ("only watched ok", Align::Right),
        ("reverse", Align::Right),
        ("concordant", Align::Right),
        ("rate", Align::Right),
        ("clopper-pearson", Align::Left),
        ("mcnemar p", Align::Right),
        ("unpaired", Align::Right),
    ];
    let difference_header = format!("a - b [{percent}%]");
    let mut difference_columns = vec![
        ("model", Align::Left),
        ("scenario", Align::Left),
        ("analysis", Align::Left),
        ("a vs b", Align::Left),
        ("label", Align::Left),
        ("mean a (n)", Align::Right),
        ("mean b (n)", Align::Right),
        (difference_header.as_str(), Align::Left),
        ("welch p", Align::Right),
        ("unscored", Align::Right),
    ];
    if any_indeterminate {
        paired_columns.push((INDETERMINATE_HEADER, Align::Right));
        difference_columns.push((INDETERMINATE_HEADER, Align::Right));
    }
    let mut paired = Table::new(&paired_columns);
    let mut differences = Table::new(&difference_columns);
    let (mut any_paired, mut any_difference) = (false, false);
    for analysis in &report.analyses {
        match (&analysis.spec, &analysis.value) {
            (
                AnalysisSpec::Paired {
                    name,
                    factor,
                    watched,
                    unwatched,
                    label,
                    ..
                },
                AnalysisValue::Paired {
                    result,
                    unpaired,
                    indeterminate,
                },
            ) => {
                any_paired = true;
                let counts = result.counts;
                let mut row = vec![
                    analysis.model.clone(),
                    analysis.scenario.clone(),
                    name.clone(),
                    format!("{factor}: {watched} vs {unwatched}"),
                    label.clone(),
                    counts.pairs().to_string(),
                    counts.only_b.to_string(),
                    counts.only_a.to_string(),
                    (counts.both + counts.neither).to_string(),
                    result
                        .only_b
                        .rate()
                        .map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
                    interval_percent(result.only_b_interval),
                    format_p(result.mcnemar_p),
                    unpaired.to_string(),
                ];
                if any_indeterminate {
                    row.push(indeterminate.to_string());
                }
                paired.row(row);
            }
            (
                AnalysisSpec::Difference {
                    name,
                    factor,
                    a,
                    b,
                    label,
                    ..
                },
                AnalysisValue::Difference {
                    result,
                    unscored,
                    indeterminate,
                },
            ) => {
                any_difference = true;
                let mean = |sample: offswitch_stats::Sample| match sample.mean {
                    Some(mean) => format!("{mean:.3} ({})", sample.n),
                    None => format!("- ({})", sample.n),
                };
                let mut row = vec![
                    analysis.model.clone(),
                    analysis.scenario.clone(),
                    name.clone(),
                    format!("{factor}: {a} vs {b}"),
                    label.clone(),
                    mean(result.a),
                    mean(result.b),
                    match (result.difference, result.interval) {
                        (Some(d), Some(i)) => {
                            format!("{d:+.3} [{:+.3}, {:+.3}]", i.lower, i.upper)
                        }
                        (Some(d), None) => format!("{d:+.3} (no interval)"),
                        _ => "-".to_owned(),
                    },
                    result.p_value.map_or("-".to_owned(), format_p),
                    unscored.to_string(),
                ];
                if any_indeterminate {
                    row.push(indeterminate.to_string());
                }
                differences.row(row);
            }
            // `add_analyses` never builds a value of another kind than its spec.
            _ => {}
        }
    }
    if any_paired {
        out.push_str(&format!(
            "\npaired analyses: pairs share model, epoch and other levels; \"only watched ok\" = label false when watched, true when unwatched; rate of those among pairs with its exact (Clopper-Pearson {percent}%) interval; exact McNemar test of the discordant pairs\n"
        ));
        out.push_str(&emit(&paired, markdown));
    }
    if any_difference {
        out.push_str(&format!(
            "\ndifferences of mean scores (Welch's t interval at {percent}%; no interval with fewer than 2 scores per level or no variance)\n"
        ));
        out.push_str(&emit(&differences, markdown));
    }
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
                    indeterminate: c.indeterminate_a,
                },
                b: CountJsonV1 {
                    k: c.result.b.successes,
                    n: c.result.b.trials,
                    rate: c.result.b.rate(),
                    indeterminate: c.indeterminate_b,
                },
                difference: c.result.difference,
                difference_interval: c.result.difference_interval.map(|i| [i.lower, i.upper]),
                fisher_p: c.result.p_value,
            })
            .collect(),
        interviews: report
            .interviews
            .iter()
            .map(|row| InterviewJsonV1 {
                model: &row.model,
                scenario: &row.scenario,
                variant: &row.variant,
                interviewed: row.interviewed,
                turn: row.turn,
                confessed: row.confessed.successes,
                asked: row.confessed.trials,
                rate: row.confessed.rate(),
                jeffreys: [row.jeffreys.lower, row.jeffreys.upper],
            })
            .collect(),
        analyses: report.analyses.iter().filter_map(analysis_json).collect(),
    };
    let mut text = serde_json::to_string_pretty(&json).expect("the report serialises");
    text.push('\n');
    text
}

/// One row per cell and label. Columns (schema `offswitch.report/1`; `indeterminate` was added
/// last, so a reader by position still finds the others where they were):
/// `run,model,scenario,variant,label,k,n,rate,jeffreys_lower,jeffreys_upper,wilson_lower,wilson_upper,confidence,trials,valid,unlabelled,indeterminate`.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::from(
        "run,model,scenario,variant,label,k,n,rate,jeffreys_lower,jeffreys_upper,wilson_lower,wilson_upper,confidence,trials,valid,unlabelled,indeterminate\n",
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
                label.indeterminate.to_string(),
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
    /// Added within schema 1 (fields only added): confession by turn among interviewed trials.
    interviews: Vec<InterviewJsonV1<'a>>,
    /// Added within schema 1: the scenario's analyses.
    analyses: Vec<AnalysisJsonV1<'a>>,
}

#[derive(Serialize)]
struct InterviewJsonV1<'a> {
    model: &'a str,
    scenario: &'a str,
    variant: &'a str,
    interviewed: u64,
    turn: u32,
    confessed: u64,
    /// Interviews that confessed by `turn` or reached it.
    asked: u64,
    rate: Option<f64>,
    jeffreys: [f64; 2],
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum AnalysisJsonV1<'a> {
    Paired {
        model: &'a str,
        scenario: &'a str,
        name: &'a str,
        factor: &'a str,
        watched: &'a str,
        unwatched: &'a str,
        label: &'a str,
        pairs: u64,
        /// Label false when watched, true when unwatched.
        only_when_watched_ok: u64,
        reverse: u64,
        both: u64,
        neither: u64,
        rate: Option<f64>,
        clopper_pearson: [f64; 2],
        mcnemar_p: f64,
        unpaired: u64,
        /// Valid trials at either level whose label is indeterminate; their pairs are left out.
        indeterminate: u64,
    },
    Difference {
        model: &'a str,
        scenario: &'a str,
        name: &'a str,
        factor: &'a str,
        a: &'a str,
        b: &'a str,
        label: &'a str,
        n_a: u64,
        n_b: u64,
        mean_a: Option<f64>,
        mean_b: Option<f64>,
        difference: Option<f64>,
        /// Welch's interval at the report's confidence.
        interval: Option<[f64; 2]>,
        degrees_of_freedom: Option<f64>,
        welch_p: Option<f64>,
        unscored: u64,
        /// Valid trials at either level whose label is indeterminate, left out of the means.
        indeterminate: u64,
    },
}

/// `None` for a hand-built result whose value is not of its spec's kind.
fn analysis_json(analysis: &crate::AnalysisResult) -> Option<AnalysisJsonV1<'_>> {
    Some(match (&analysis.spec, &analysis.value) {
        (
            AnalysisSpec::Paired {
                name,
                factor,
                watched,
                unwatched,
                label,
                ..
            },
            AnalysisValue::Paired {
                result,
                unpaired,
                indeterminate,
            },
        ) => AnalysisJsonV1::Paired {
            model: &analysis.model,
            scenario: &analysis.scenario,
            name,
            factor,
            watched,
            unwatched,
            label,
            pairs: result.counts.pairs(),
            only_when_watched_ok: result.counts.only_b,
            reverse: result.counts.only_a,
            both: result.counts.both,
            neither: result.counts.neither,
            rate: result.only_b.rate(),
            clopper_pearson: [result.only_b_interval.lower, result.only_b_interval.upper],
            mcnemar_p: result.mcnemar_p,
            unpaired: *unpaired,
            indeterminate: *indeterminate,
        },
        (
            AnalysisSpec::Difference {
                name,
                factor,
                a,
                b,
                label,
                ..
            },
            AnalysisValue::Difference {
                result,
                unscored,
                indeterminate,
            },
        ) => AnalysisJsonV1::Difference {
            model: &analysis.model,
            scenario: &analysis.scenario,
            name,
            factor,
            a,
            b,
            label,
            n_a: result.a.n,
            n_b: result.b.n,
            mean_a: result.a.mean,
            mean_b: result.b.mean,
            difference: result.difference,
            interval: result.interval.map(|i| [i.lower, i.upper]),
            degrees_of_freedom: result.degrees_of_freedom,
            welch_p: result.p_value,
            unscored: *unscored,
            indeterminate: *indeterminate,
        },
        _ => return None,
    })
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
    /// Added within schema 1: valid trials whose label is indeterminate, not in `n`.
    indeterminate: u64,
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
    /// Added within schema 1: trials whose label is indeterminate, not in `n`.
    indeterminate: u64,
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
                indeterminate: l.indeterminate,
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
            .map(|(h, _)| crate::closing::columns_of(h))
            .collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(crate::closing::columns_of(cell));
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
                let pad = widths[i].saturating_sub(crate::closing::columns_of(cell));
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

    /// A GitHub-flavoured markdown table; `|` in a cell is escaped.
    pub(crate) fn render_markdown(&self) -> String {
        let escape = |cell: &str| cell.replace('|', "\\|");
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| escape(h)).collect();
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        let rule: Vec<&str> = self
            .headers
            .iter()
            .map(|(_, align)| match align {
                Align::Left => "---",
                Align::Right => "--:",
            })
            .collect();
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|cell| escape(cell)).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}
