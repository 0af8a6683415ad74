//! Prompt templates: literal text with `{{variable}}` holes, parsed once at load time.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Variable(String),
}

/// A variable hole as written, so a diagnostic can point at it in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hole {
    pub(crate) name: String,
    /// The exact text of the hole, e.g. `{{ name }}`.
    pub(crate) written: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateError {
    /// `{{` with no `}}` after it; `written` is the text from the `{{` to the end of its line.
    Unclosed { written: String },
    /// The name between the braces is not an identifier.
    BadName { written: String },
}

impl Template {
    /// The template with its holes, and every malformed hole (parsing goes on after a bad
    /// name, and stops at an unclosed `{{`).
    pub(crate) fn parse(text: &str) -> (Template, Vec<Hole>, Vec<TemplateError>) {
        let mut segments = Vec::new();
        let mut holes = Vec::new();
        let mut errors = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                let line_end = after.find('\n').unwrap_or(after.len());
                errors.push(TemplateError::Unclosed {
                    written: format!("{{{{{}", &after[..line_end]),
                });
                segments.push(Segment::Text(rest[open..].to_owned()));
                rest = "";
                break;
            };
            let written = format!("{{{{{}}}}}", &after[..close]);
            let name = after[..close].trim();
            let is_identifier = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !is_identifier {
                errors.push(TemplateError::BadName { written });
                rest = &after[close + 2..];
                continue;
            }
            holes.push(Hole {
                name: name.to_owned(),
                written,
            });
            segments.push(Segment::Variable(name.to_owned()));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        (Template { segments }, holes, errors)
    }

    /// Substitute every hole. Validation guarantees every variable has a value; a missing one
    /// renders as empty rather than panicking, so a hand-built scenario degrades visibly.
    pub(crate) fn render(&self, variables: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Variable(name) => {
                    out.push_str(variables.get(name).map_or("", String::as_str))
                }
            }
        }
        out
    }
}
