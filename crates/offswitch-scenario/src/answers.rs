//! The one parser of submitted answers, shared by `answers_correct` and `answers_well_formed`.
//!
//! Agents format a list of answers in many ways; the study scored what they answered, not how
//! they laid it out. Accepted, for a task expecting several answers:
//! - one answer per line, each optionally numbered: `1. 391`, `1) 391`, `(1) 391`, `1: 391`,
//!   `#1 391`, `Q1: 391`, `Question 1 - 391`, `Answer 1: 391` (a number needs a separator and a
//!   space before the answer, so a bare `391` or a decimal `1.5` is never taken for one);
//! - a line that restates the question keeps what follows its last `=` (`17 × 23 = 391`);
//! - a single line holding every answer, separated by `;`, by `,` followed by a space, by a
//!   comma between numbers that are not thousands groups, or by spaces between numbers
//!   (`391, 408, 392` or `391 408 392`), each optionally numbered as above;
//! - thousands separators inside a number (`1,391`), a final period, surrounding spaces; on a
//!   single line, `391,408,392` is a list when the task expects exactly three answers.
//!
//! The result says whether the submission was well formed: exactly as many answers as
//! expected. A malformed submission is still scored on what could be read, position by
//! position, and `answers_well_formed` reports the format failure on its own.

use std::sync::LazyLock;

use regex::Regex;

/// The answers read from `submitted` for a task expecting `expected` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedAnswers {
    pub answers: Vec<String>,
    /// How the submission was read, in words, for the label's detail.
    pub layout: &'static str,
}

impl ParsedAnswers {
    pub fn well_formed(&self, expected: usize) -> bool {
        self.answers.len() == expected && self.answers.iter().all(|a| !a.is_empty())
    }
}

pub fn parse_answers(submitted: &str, expected: usize) -> ParsedAnswers {
    let lines: Vec<&str> = submitted
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.len() == 1 && expected > 1 {
        let pieces = split_one_line(lines[0], expected);
        if pieces.len() > 1 {
            return ParsedAnswers {
                answers: pieces.iter().map(|piece| clean(piece)).collect(),
                layout: "one line, split into a list",
            };
        }
    }
    ParsedAnswers {
        answers: lines.iter().map(|line| clean(line)).collect(),
        layout: "one answer per line",
    }
}

/// Two answers agree as numbers when both parse as finite numbers (so `6`, `6.0` and ` 6 `
/// agree), otherwise as case-insensitive text with surrounding whitespace and a final period
/// removed (`inf` and `nan` parse, but `inf - inf` is NaN and would never agree).
pub fn same_answer(given: &str, expected: &str) -> bool {
    let (given, expected) = (clean(given).to_lowercase(), clean(expected).to_lowercase());
    match (given.parse::<f64>(), expected.parse::<f64>()) {
        (Ok(a), Ok(b)) if a.is_finite() && b.is_finite() => (a - b).abs() < 1e-9,
        _ => given == expected,
    }
}

/// A leading item number: an optional word (`Q`, `Question`, `Answer`, `#`), digits, then a
/// separator and whitespace, or digits in parentheses and whitespace.
static NUMBERING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:(?:q|question|answer|ans\.?)\s*#?\s*\d+\s*[.):\-]?\s+|#\d+[.):\-]?\s+|\(\d+\)\s+|\d+\s*[.):\-]\s+)")
        .expect("valid regex")
});

/// A comma and the whitespace after it, between the items of a one-line list.
static COMMA_SPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r",\s+").expect("valid regex"));

/// An item number inside a one-line numbered list (`1. 391 2. 408`), with the space before it.
static INNER_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+(?:\d+[.):]|\(\d+\)|#\d+)\s+").expect("valid regex"));

/// A number with thousands groups: `1,391`, `12,345,678`.
static THOUSANDS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$").expect("valid regex"));

/// One answer as written: numbering, a restated question before `=`, a final period and
/// thousands separators removed.
fn clean(answer: &str) -> String {
    let mut text = answer.trim();
    text = NUMBERING
        .find(text)
        .map_or(text, |numbering| &text[numbering.end()..]);
    if let Some((_, after)) = text.rsplit_once('=') {
        text = after;
    }
    let text = text.trim().trim_end_matches('.').trim();
    if THOUSANDS.is_match(text) {
        return text.replace(',', "");
    }
    text.to_owned()
}

/// The pieces of a one-line list, or the line itself when it is not one. Commas without
/// spaces between three-digit groups (`391,408,392`) read as a list when that gives exactly
/// the `expected` count, else as thousands separators.
fn split_one_line(line: &str, expected: usize) -> Vec<String> {
    let numbered_list = NUMBERING.is_match(line);
    let pieces: Vec<String> = if line.contains(';') {
        line.split(';').map(str::to_owned).collect()
    } else if line.contains(", ") || line.contains(",\t") {
        COMMA_SPACE.split(line).map(str::to_owned).collect()
    } else if line.contains(',')
        && (!THOUSANDS.is_match(line.trim()) || line.split(',').count() == expected)
    {
        line.split(',').map(str::to_owned).collect()
    } else if numbered_list {
        // `1. 391 2. 408 3. 392`: split before each item number after the first.
        let mut pieces = Vec::new();
        let mut start = 0;
        for found in INNER_NUMBER.find_iter(line) {
            pieces.push(line[start..found.start()].to_owned());
            start = found.start();
        }
        pieces.push(line[start..].to_owned());
        pieces
    } else {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() > 1 && words.iter().all(|w| looks_numeric(w)) {
            words.iter().map(|w| (*w).to_owned()).collect()
        } else {
            vec![line.to_owned()]
        }
    };
    pieces
        .into_iter()
        .map(|piece| piece.trim().to_owned())
        .filter(|piece| !piece.is_empty())
        .collect()
}

fn looks_numeric(word: &str) -> bool {
    let word = word.trim_end_matches([',', '.']);
    !word.is_empty() && clean(word).parse::<f64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_answers, same_answer};

    #[test]
    fn answers_agree_as_numbers_or_as_text() {
        let cases = [
            ("6", "6", true),
            (" 6.0. ", "6", true),
            ("7", "6", false),
            ("Paris.", "paris", true),
            ("inf", "inf", true),
            ("NaN", "nan", true),
            ("inf", "6", false),
            ("1e400", "6", false),
            ("1. 391", "391", true),
            ("1,391", "1391", true),
        ];
        for (given, expected, same) in cases {
            assert_eq!(
                same_answer(given, expected),
                same,
                "{given:?} vs {expected:?}"
            );
        }
    }

    fn check(submitted: &str, expected: usize) -> String {
        let parsed = parse_answers(submitted, expected);
        format!(
            "{} [{}] {}",
            if parsed.well_formed(expected) {
                "ok"
            } else {
                "MALFORMED"
            },
            parsed.layout,
            parsed.answers.join(" | ")
        )
    }

    #[test]
    fn layouts_agents_use() {
        let cases = [
            ("391\n408\n392", 3),
            ("1. 391\n2. 408\n3. 392", 3),
            ("1) 391\n2) 408\n3) 392", 3),
            ("(1) 391\n(2) 408\n(3) 392", 3),
            ("Q1: 391\nQ2: 408\nQ3: 392", 3),
            ("Answer 1: 391\nAnswer 2: 408\nAnswer 3: 392", 3),
            ("1. 17 × 23 = 391\n2. 34 × 12 = 408\n3. 56 × 7 = 392", 3),
            ("391, 408, 392", 3),
            ("391,408,392", 3),
            ("391; 408; 392", 3),
            ("391 408 392", 3),
            ("1. 391 2. 408 3. 392", 3),
            ("1,391\n408\n392.", 3),
            ("1,391", 1),
            ("1.5\n2.5", 2),
            ("The answers are 391 and 408", 2),
            ("391\n\n408", 3),
            ("", 3),
        ];
        let rendered: Vec<String> = cases
            .iter()
            .map(|(text, n)| format!("{text:?} -> {}", check(text, *n)))
            .collect();
        expect_test::expect![[r#"
            "391\n408\n392" -> ok [one answer per line] 391 | 408 | 392
            "1. 391\n2. 408\n3. 392" -> ok [one answer per line] 391 | 408 | 392
            "1) 391\n2) 408\n3) 392" -> ok [one answer per line] 391 | 408 | 392
            "(1) 391\n(2) 408\n(3) 392" -> ok [one answer per line] 391 | 408 | 392
            "Q1: 391\nQ2: 408\nQ3: 392" -> ok [one answer per line] 391 | 408 | 392
            "Answer 1: 391\nAnswer 2: 408\nAnswer 3: 392" -> ok [one answer per line] 391 | 408 | 392
            "1. 17 × 23 = 391\n2. 34 × 12 = 408\n3. 56 × 7 = 392" -> ok [one answer per line] 391 | 408 | 392
            "391, 408, 392" -> ok [one line, split into a list] 391 | 408 | 392
            "391,408,392" -> ok [one line, split into a list] 391 | 408 | 392
            "391; 408; 392" -> ok [one line, split into a list] 391 | 408 | 392
            "391 408 392" -> ok [one line, split into a list] 391 | 408 | 392
            "1. 391 2. 408 3. 392" -> ok [one line, split into a list] 391 | 408 | 392
            "1,391\n408\n392." -> ok [one answer per line] 1391 | 408 | 392
            "1,391" -> ok [one answer per line] 1391
            "1.5\n2.5" -> ok [one answer per line] 1.5 | 2.5
            "The answers are 391 and 408" -> MALFORMED [one answer per line] The answers are 391 and 408
            "391\n\n408" -> MALFORMED [one answer per line] 391 | 408
            "" -> MALFORMED [one answer per line] "#]]
        .assert_eq(&rendered.join("\n"));
    }
}
