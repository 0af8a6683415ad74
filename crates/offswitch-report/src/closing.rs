//! The table `offswitch run` closes with: per (scenario, model), the variants as rows and the
//! scenario's headline labels as columns, each cell `k/n [lower,upper]` (the Jeffreys interval
//! in percent), within 100 terminal columns. The full table is `offswitch report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{Cell, LabelRate, Report};

/// The width the closing table keeps within.
pub const WIDTH: usize = 100;
/// The most label columns a block shows.
const MAX_COLUMNS: usize = 4;
/// The longest label header kept whole (a longer one is cut when its cells are narrower).
const HEADER: usize = 16;

/// What the closing table needs besides the report.
#[derive(Debug, Clone, Default)]
pub struct Closing {
    /// Scenario id -> its headline labels (`headline` in its file).
    pub headline: BTreeMap<String, Vec<String>>,
    /// Trials that replayed at least one reply from the response cache, when any did.
    pub cached_trials: u64,
}

/// A model spec as tables show it: the model's own name, without the provider prefix, the
/// server address or a file's directory (`openai:qwen2.5-72b@http://...` -> `qwen2.5-72b`,
/// `local:/models/x.gguf` -> `x`). Scripted agents keep their prefix. The full spec is in the
/// run's configuration (`offswitch runs show`).
pub fn short_model(spec: &str) -> String {
    let without_server = spec.split_once('@').map_or(spec, |(name, _)| name);
    match without_server.split_once(':') {
        Some(("openai" | "anthropic", name)) => name.to_owned(),
        Some(("local", path)) => std::path::Path::new(path)
            .file_stem()
            .map_or_else(|| path.to_owned(), |s| s.to_string_lossy().into_owned()),
        _ => without_server.to_owned(),
    }
}

/// The closing table of `report`.
pub fn render_closing(report: &Report, closing: &Closing) -> String {
    let mut out = String::new();
    let run = &report.run;
    let mut first = format!("run {}", run.id);
    if let Some(label) = &run.label {
        let _ = write!(first, " ({label})");
    }
    let (trials, valid) = report.totals();
    let _ = write!(first, ", {}: {trials} trials, {valid} valid", run.status);
    let _ = writeln!(out, "{}", clip(&first, WIDTH));
    if closing.cached_trials > 0 {
        let _ = writeln!(
            out,
            "note: {} of {trials} trials replayed model replies from the response cache (--no-cache samples afresh)",
            closing.cached_trials
        );
    }
    if report.cells.is_empty() {
        out.push_str("\nno trials stored\n");
        return out;
    }
    let mut any_indeterminate = false;
    for (scenario, model, cells) in blocks(report) {
        let declared = closing
            .headline
            .get(scenario)
            .is_some_and(|h| !h.is_empty());
        let columns = headline_columns(closing, scenario, &cells);
        let mut header = format!("{scenario} · {}", short_model(model));
        if !declared {
            header.push_str("  (no headline labels declared: the first labels)");
        }
        let _ = writeln!(out, "\n{}", clip(&header, WIDTH));
        let n_width = cells
            .iter()
            .map(|c| c.valid.to_string().len())
            .max()
            .unwrap_or(1)
            .max(1);
        // Every cell's text first: a column is as wide as its widest cell, or its header up
        // to HEADER characters.
        let texts: Vec<Vec<String>> = cells
            .iter()
            .map(|cell| {
                columns
                    .iter()
                    .map(|name| match cell.labels.iter().find(|l| l.name == *name) {
                        Some(rate) => {
                            if rate.indeterminate > 0 {
                                any_indeterminate = true;
                            }
                            rate_cell(rate)
                        }
                        None => "-".to_owned(),
                    })
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, name)| {
                texts
                    .iter()
                    .map(|row| columns_of(&row[i]))
                    .max()
                    .unwrap_or(1)
                    .max(columns_of(name).min(HEADER))
            })
            .collect();
        let used = n_width + 2 + widths.iter().map(|w| w + 2).sum::<usize>();
        let variant_width = cells
            .iter()
            .map(|c| columns_of(display(&c.variant)))
            .max()
            .unwrap_or(7);
        let room = WIDTH.saturating_sub(used).max(3);
        let variant_width = variant_width.clamp(7.min(room), room);
        let mut line = format!(
            "{}  {:>n_width$}",
            pad(&clip("variant", variant_width), variant_width),
            "n"
        );
        for (name, width) in columns.iter().zip(&widths) {
            let _ = write!(line, "  {}", pad(&clip(name, *width), *width));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for (cell, row) in cells.iter().zip(&texts) {
            let mut line = format!(
                "{}  {:>n_width$}",
                pad(&clip(display(&cell.variant), variant_width), variant_width),
                cell.valid
            );
            for (text, width) in row.iter().zip(&widths) {
                let _ = write!(line, "  {}", pad(text, *width));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out.push_str(
        "\nk/n [95% Jeffreys interval, %] over valid trials whose label was decided (- none).\n",
    );
    if any_indeterminate {
        out.push_str("* some trials' label indeterminate (left out of k/n).\n");
    }
    out.push_str("Every label: `offswitch report`.\n");
    out
}

/// The cells grouped by (scenario, model), in report order.
pub(crate) fn blocks(report: &Report) -> Vec<(&str, &str, Vec<&Cell>)> {
    let mut blocks: Vec<(&str, &str, Vec<&Cell>)> = Vec::new();
    for cell in &report.cells {
        match blocks
            .iter_mut()
            .find(|(s, m, _)| *s == cell.scenario && *m == cell.model)
        {
            Some((_, _, cells)) => cells.push(cell),
            None => blocks.push((&cell.scenario, &cell.model, vec![cell])),
        }
    }
    blocks
}

/// The label columns of a block: the scenario's headline labels its cells carry, else the
/// first labels the cells carry; at most [`MAX_COLUMNS`].
pub(crate) fn headline_columns<'a>(
    closing: &'a Closing,
    scenario: &str,
    cells: &[&'a Cell],
) -> Vec<&'a str> {
    let carried = |name: &str| {
        cells
            .iter()
            .any(|c| c.labels.iter().any(|l| l.name == name))
    };
    let mut names: Vec<&str> = match closing.headline.get(scenario).filter(|h| !h.is_empty()) {
        Some(headline) => headline
            .iter()
            .map(String::as_str)
            .filter(|name| carried(name))
            .collect(),
        None => {
            let mut names: Vec<&str> = Vec::new();
            for cell in cells {
                for label in &cell.labels {
                    if !names.contains(&label.name.as_str()) {
                        names.push(&label.name);
                    }
                }
            }
            names
        }
    };
    names.truncate(MAX_COLUMNS);
    names
}

pub(crate) fn display(variant: &str) -> &str {
    if variant.is_empty() {
        "(default)"
    } else {
        variant
    }
}

/// `k/n [lo,hi]` in whole percent, `*` when some trials were indeterminate.
fn rate_cell(rate: &LabelRate) -> String {
    let p = &rate.proportion;
    if p.trials == 0 {
        return if rate.indeterminate > 0 { "-*" } else { "-" }.to_owned();
    }
    let lower = (rate.jeffreys.lower * 100.0).round() as i64;
    let upper = (rate.jeffreys.upper * 100.0).round() as i64;
    let mark = if rate.indeterminate > 0 { "*" } else { "" };
    format!("{}/{} [{lower},{upper}]{mark}", p.successes, p.trials)
}

/// The terminal columns `text` takes (a wide character two, a combining mark none).
pub(crate) fn columns_of(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` padded with spaces to `width` terminal columns.
fn pad(text: &str, width: usize) -> String {
    format!(
        "{text}{}",
        " ".repeat(width.saturating_sub(columns_of(text)))
    )
}

/// `text` cut to at most `width` terminal columns, with `…` where it was cut.
pub(crate) fn clip(text: &str, width: usize) -> String {
    if columns_of(text) <= width {
        return text.to_owned();
    }
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        kept.push(c);
        used += w;
    }
    kept.push('…');
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_are_terminal_columns() {
        assert_eq!(columns_of("模型"), 4);
        assert_eq!(clip("模型模型模型", 5), "模型…");
        assert_eq!(columns_of(&clip("模型模型模型", 5)), 5);
        assert_eq!(pad("模型", 6), "模型  ");
        assert_eq!(clip("e\u{301}clair", 20), "e\u{301}clair");
    }

    #[test]
    fn model_names_are_short() {
        assert_eq!(
            short_model("openai:qwen2.5-72b@http://127.0.0.1:8000/v1"),
            "qwen2.5-72b"
        );
        assert_eq!(short_model("anthropic:claude-opus-4"), "claude-opus-4");
        assert_eq!(
            short_model("local:/models/SmolLM2-135M.Q4_1.gguf"),
            "SmolLM2-135M.Q4_1"
        );
        assert_eq!(short_model("smollm2-135m"), "smollm2-135m");
        assert_eq!(short_model("scripted:comply"), "scripted:comply");
    }
}
