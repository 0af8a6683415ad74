//! `offswitch report --html FILE`: one self-contained HTML page (inline CSS and SVG, no
//! script, nothing fetched) a researcher can attach to a paper or an email: per scenario and
//! model the headline labels' rates with intervals as a table and as interval charts, the
//! published figures beside them, the outcome counts, and the reproduction table.
//!
//! Every string from the run (model specs, variant names, labels, figure sources) is escaped.

use std::fmt::Write as _;

use crate::closing::{blocks, clip, display, headline_columns, short_model};
use crate::{Cell, Closing, LabelRate, Report, Reproduction};

/// The chart's geometry, in SVG user units.
const CHART_WIDTH: f64 = 720.0;
const LABEL_WIDTH: f64 = 300.0;
const PLOT_LEFT: f64 = 310.0;
const PLOT_RIGHT: f64 = 700.0;
const ROW: f64 = 22.0;
const TOP: f64 = 26.0;

/// The report's style sheet, for pages that embed its sections.
pub const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1b1b1b; margin: 2em auto; max-width: 1000px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1em; margin: 1.2em 0 0.3em; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; }
.note { color: #555; font-size: 0.9em; }
svg text { font: 11px system-ui, sans-serif; fill: #1b1b1b; }
svg .grid { stroke: #e3e3e3; }
svg .run { stroke: #1f5fa8; fill: #1f5fa8; }
svg .published { stroke: #c2571a; fill: #c2571a; }
";

/// The page for `report`, with `reproduction` when published figures were given.
pub fn render_html(
    report: &Report,
    closing: &Closing,
    reproduction: Option<&Reproduction>,
) -> String {
    let mut out = String::new();
    let run = &report.run;
    let title = match &run.label {
        Some(label) => format!("offswitch run {} ({label})", run.id),
        None => format!("offswitch run {}", run.id),
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    out.push_str(&render_html_sections(report, closing, reproduction));
    out.push_str("<p class=\"note\">Made by offswitch. Every label of every cell: <code>offswitch report --format json</code>; per-trial rows: <code>offswitch export</code>.</p>\n</body>\n</html>\n");
    out
}

/// The report's sections (the summary line, per scenario and model the rates table, a chart
/// per headline label and the outcomes, then the comparisons, the interview table and the
/// reproduction table), for a page of its own or the viewer's run page.
pub fn render_html_sections(
    report: &Report,
    closing: &Closing,
    reproduction: Option<&Reproduction>,
) -> String {
    let mut out = String::new();
    let run = &report.run;
    let (trials, valid) = report.totals();
    let percent = (report.confidence * 1e8).round() / 1e6;
    let _ = writeln!(
        out,
        "<p class=\"meta\">{}: {trials} trials, {valid} valid (backend and harness failures are not counted in rates). Rates are over valid trials whose label was decided; intervals are {percent}% Jeffreys intervals.</p>",
        esc(&run.status)
    );
    if closing.cached_trials > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} of {trials} trials replayed model replies from the response cache.</p>",
            closing.cached_trials
        );
    }
    if report.cells.is_empty() {
        out.push_str("<p>No trials stored.</p>\n");
        return out;
    }
    for (scenario, model, cells) in blocks(report) {
        let columns = headline_columns(closing, scenario, &cells);
        let _ = writeln!(
            out,
            "<h2>{} · {}</h2>\n<p class=\"meta\">model <code>{}</code></p>",
            esc(scenario),
            esc(&short_model(model)),
            esc(model)
        );
        // The rates table.
        out.push_str("<table class=\"rates\">\n<tr><th>variant</th><th>valid</th>");
        for name in &columns {
            let _ = write!(out, "<th>{}</th>", esc(name));
        }
        out.push_str("</tr>\n");
        for cell in &cells {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td>",
                esc(display(&cell.variant)),
                cell.valid
            );
            for name in &columns {
                let text = match label_of(cell, name) {
                    Some(rate) => rate_text(rate),
                    None => "–".to_owned(),
                };
                let _ = write!(out, "<td class=\"num\">{}</td>", esc(&text));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
        // One chart per headline label.
        for name in &columns {
            let figures: Vec<Published> = reproduction
                .map(|r| published_for(r, scenario, name))
                .unwrap_or_default();
            let _ = writeln!(out, "<h3>{}</h3>", esc(name));
            out.push_str(&chart(&cells, name, &figures));
        }
        // Outcomes.
        let mut outcomes: Vec<&str> = Vec::new();
        for cell in &cells {
            for name in cell.outcomes.keys() {
                if !outcomes.contains(&name.as_str()) {
                    outcomes.push(name);
                }
            }
        }
        out.push_str("<h3>outcomes</h3>\n<table>\n<tr><th>variant</th><th>trials</th>");
        for name in &outcomes {
            let _ = write!(out, "<th>{}</th>", esc(name));
        }
        out.push_str("<th>mean turns</th><th>mean tokens</th></tr>\n");
        for cell in &cells {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td>",
                esc(display(&cell.variant)),
                cell.trials
            );
            for name in &outcomes {
                let _ = write!(
                    out,
                    "<td class=\"num\">{}</td>",
                    cell.outcomes.get(*name).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(
                out,
                "<td class=\"num\">{:.1}</td><td class=\"num\">{:.0}</td></tr>",
                cell.mean_turns,
                cell.mean_prompt_tokens + cell.mean_completion_tokens
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str(&comparisons_table(report));
    out.push_str(&interview_table(report));
    if let Some(reproduction) = reproduction {
        out.push_str(&reproduction_table(reproduction));
    }
    out
}

/// The variant comparisons the report holds (`--compare`), if any.
fn comparisons_table(report: &Report) -> String {
    if report.comparisons.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>variant comparisons</h2>\n<table class=\"comparisons\">\n<tr><th>model</th><th>scenario</th><th>label</th><th>a</th><th>rate a</th><th>b</th><th>rate b</th><th>b - a, points [95%]</th><th>fisher p</th></tr>\n",
    );
    for c in &report.comparisons {
        let r = &c.result;
        let difference = match (r.difference, r.difference_interval) {
            (Some(d), Some(i)) => format!(
                "{:+.1} [{:+.1}, {:+.1}]",
                d * 100.0,
                i.lower * 100.0,
                i.upper * 100.0
            ),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}/{}</td><td>{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{}</td><td class=\"num\">{:.4}</td></tr>",
            esc(&short_model(&c.model)),
            esc(&c.scenario),
            esc(&c.label),
            esc(display(&c.variant_a)),
            r.a.successes,
            r.a.trials,
            esc(display(&c.variant_b)),
            r.b.successes,
            r.b.trials,
            esc(&difference),
            r.p_value
        );
    }
    out.push_str("</table>\n");
    out
}

/// Confession by answer turn among interviewed trials, if any trial was interviewed.
fn interview_table(report: &Report) -> String {
    if report.interviews.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>follow-up interview</h2>\n<p class=\"meta\">Confession by answer turn, among interviewed trials.</p>\n<table class=\"interviews\">\n<tr><th>model</th><th>scenario</th><th>variant</th><th>interviewed</th><th>by turn</th><th>confessed</th><th>jeffreys 95%</th></tr>\n",
    );
    for row in &report.interviews {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}/{}</td><td class=\"num\">[{:.1}, {:.1}]</td></tr>",
            esc(&short_model(&row.model)),
            esc(&row.scenario),
            esc(display(&row.variant)),
            row.interviewed,
            row.turn,
            row.confessed.successes,
            row.confessed.trials,
            row.jeffreys.lower * 100.0,
            row.jeffreys.upper * 100.0
        );
    }
    out.push_str("</table>\n");
    out
}

fn label_of<'a>(cell: &'a Cell, name: &str) -> Option<&'a LabelRate> {
    cell.labels.iter().find(|l| l.name == name)
}

fn rate_text(rate: &LabelRate) -> String {
    let p = &rate.proportion;
    let mut text = match p.rate() {
        Some(r) => format!(
            "{}/{} · {:.0}% [{:.0}, {:.0}]",
            p.successes,
            p.trials,
            r * 100.0,
            rate.jeffreys.lower * 100.0,
            rate.jeffreys.upper * 100.0
        ),
        None => format!("{}/{}", p.successes, p.trials),
    };
    if rate.indeterminate > 0 {
        let _ = write!(text, " ({} indeterminate)", rate.indeterminate);
    }
    text
}

/// A published figure for a chart row.
struct Published {
    name: String,
    rate: f64,
    interval: Option<(f64, f64)>,
}

fn published_for(reproduction: &Reproduction, scenario: &str, label: &str) -> Vec<Published> {
    reproduction
        .rows
        .iter()
        .filter(|row| row.figure.scenario == scenario && row.figure.label == label)
        .map(|row| {
            let f = &row.figure;
            let condition = if f.condition.is_empty() {
                "all variants".to_owned()
            } else {
                f.condition.clone()
            };
            Published {
                name: format!("{} · {condition} ({})", f.model, f.study),
                rate: f.rate,
                interval: row.published_interval.map(|i| (i.lower, i.upper)),
            }
        })
        .collect()
}

fn x(rate: f64) -> f64 {
    PLOT_LEFT + rate.clamp(0.0, 1.0) * (PLOT_RIGHT - PLOT_LEFT)
}

/// A dot-and-whisker chart: one row per variant (the run's rate and its interval), then one
/// per published figure for the label.
fn chart(cells: &[&Cell], label: &str, figures: &[Published]) -> String {
    let rows = cells.len() + figures.len();
    let height = TOP + rows as f64 * ROW + 8.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{height}\" viewBox=\"0 0 {CHART_WIDTH} {height}\" role=\"img\" aria-label=\"{}\">\n",
        esc(&format!("rate of {label} per variant"))
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let at = x(tick);
        let _ = writeln!(
            svg,
            "<line class=\"grid\" x1=\"{at:.1}\" y1=\"{:.1}\" x2=\"{at:.1}\" y2=\"{:.1}\"/><text x=\"{at:.1}\" y=\"14\" text-anchor=\"middle\">{:.0}%</text>",
            TOP - 6.0,
            height - 4.0,
            tick * 100.0
        );
    }
    let mut y = TOP + ROW / 2.0;
    for cell in cells {
        let name = display(&cell.variant);
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\"><title>{}</title>{}</text>",
            LABEL_WIDTH,
            y + 4.0,
            esc(name),
            esc(&clip(name, 44))
        );
        if let Some(rate) = label_of(cell, label)
            && let Some(r) = rate.proportion.rate()
        {
            let _ = write!(
                svg,
                "<g class=\"run\"><title>{}</title><line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke-width=\"2\"/><circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"4\"/></g>",
                esc(&rate_text(rate)),
                x(rate.jeffreys.lower),
                x(rate.jeffreys.upper),
                x(r)
            );
        }
        svg.push('\n');
        y += ROW;
    }
    for figure in figures {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" class=\"published\"><title>published: {}</title>{}</text><g class=\"published\"><title>published: {} ({:.1}%)</title>",
            LABEL_WIDTH,
            y + 4.0,
            esc(&figure.name),
            esc(&clip(&figure.name, 44)),
            esc(&figure.name),
            figure.rate * 100.0
        );
        if let Some((lower, upper)) = figure.interval {
            let _ = write!(
                svg,
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke-width=\"2\" stroke-dasharray=\"4 2\"/>",
                x(lower),
                x(upper)
            );
        }
        let cx = x(figure.rate);
        let _ = writeln!(
            svg,
            "<path d=\"M {:.1} {y:.1} l 5 -5 l 5 5 l -5 5 z\"/></g>",
            cx - 5.0
        );
        y += ROW;
    }
    svg.push_str("</svg>\n");
    svg
}

fn reproduction_table(reproduction: &Reproduction) -> String {
    let mut out = String::from(
        "<h2>Reproduction</h2>\n<p class=\"meta\">The run's rate for each published figure's scenario, condition and label (variants pooled), beside the figure.</p>\n<table>\n<tr><th>study</th><th>scenario</th><th>condition</th><th>label</th><th>study's model</th><th>published</th><th>run model</th><th>run</th><th>overlap</th><th>source</th></tr>\n",
    );
    for row in &reproduction.rows {
        let f = &row.figure;
        let published = match row.published_interval {
            Some(i) => format!(
                "{:.1}% [{:.1}, {:.1}]",
                f.rate * 100.0,
                i.lower * 100.0,
                i.upper * 100.0
            ),
            None => format!("{:.1}%", f.rate * 100.0),
        };
        let runs: Vec<(String, String, String)> = if row.run.is_empty() {
            vec![("–".into(), "not run".into(), String::new())]
        } else {
            row.run
                .iter()
                .map(|r| {
                    let p = r.proportion;
                    let text = match p.rate() {
                        Some(rate) => format!(
                            "{}/{} · {:.1}% [{:.1}, {:.1}]",
                            p.successes,
                            p.trials,
                            rate * 100.0,
                            r.jeffreys.lower * 100.0,
                            r.jeffreys.upper * 100.0
                        ),
                        None => format!("{}/{}", p.successes, p.trials),
                    };
                    let overlap = match r.overlap {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "–",
                    };
                    (short_model(&r.model), text, overlap.to_owned())
                })
                .collect()
        };
        for (model, text, overlap) in runs {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.study),
                esc(&f.scenario),
                esc(if f.condition.is_empty() {
                    "all"
                } else {
                    &f.condition
                }),
                esc(&f.label),
                esc(&f.model),
                esc(&published),
                esc(&model),
                esc(&text),
                overlap,
                esc(&f.source)
            );
        }
    }
    out.push_str("</table>\n");
    out
}

/// Text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\u{fffd}[31mb");
    }
}
