//! Validation with every problem located: what the scenario, guard-policy and proxy-config
//! readers share. Each collects `Diagnostic`s (`file:line:col: message`) against the text it
//! was given, and reads the values those files have in common (globs, regexes, durations,
//! sizes) with the same rules and the same messages.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::Diagnostic;

/// The problems of one file, as they are found.
pub struct Located<'a> {
    pub text: &'a str,
    pub path: &'a Path,
    pub diagnostics: Vec<Diagnostic>,
}

impl<'a> Located<'a> {
    pub fn new(text: &'a str, path: &'a Path) -> Located<'a> {
        Located {
            text,
            path,
            diagnostics: Vec::new(),
        }
    }

    /// A problem at a byte span of the text.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = crate::line_col(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            path: self.path.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Every problem found, in the order of the file.
    pub fn take_sorted(&mut self) -> Vec<Diagnostic> {
        let mut diagnostics = std::mem::take(&mut self.diagnostics);
        diagnostics.sort();
        diagnostics
    }

    /// The file's `version`: this offswitch reads version 1 of every format.
    pub fn version(&mut self, version: &Spanned<u32>, what: &str) {
        if *version.get_ref() != 1 {
            self.error(
                version.span(),
                format!(
                    "unknown {what} version {}: this offswitch reads version 1",
                    version.get_ref()
                ),
            );
        }
    }

    /// At most `max` entries of each list: (how many, what they are, where the first is).
    pub fn at_most(&mut self, max: usize, lists: &[(usize, &str, Option<Range<usize>>)]) {
        for (count, what, span) in lists {
            if *count > max {
                self.error(
                    span.clone().unwrap_or(0..0),
                    format!("more than {max} {what}"),
                );
            }
        }
    }

    /// A path glob (`*`, `?`, `**/`).
    pub fn glob(&mut self, glob: &Spanned<String>) -> Option<regex::Regex> {
        match crate::compile_glob(glob.get_ref()) {
            Ok(regex) => Some(regex),
            Err(why) => {
                self.error(glob.span(), format!("bad glob: {why}"));
                None
            }
        }
    }

    /// A regex, its compiled size bounded (a hostile pattern cannot take the memory).
    pub fn regex(&mut self, pattern: &Spanned<String>) -> Option<regex::Regex> {
        match regex::RegexBuilder::new(pattern.get_ref())
            .size_limit(1 << 20)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(error) => {
                self.error(pattern.span(), format!("bad regex: {error}"));
                None
            }
        }
    }

    /// A positive duration: `500ms`, `30s`, `5m`, `2h`.
    pub fn duration(&mut self, text: &Spanned<String>) -> Option<Duration> {
        match offswitch_core::units::parse_duration(text.get_ref()) {
            Some(duration) if !duration.is_zero() => Some(duration),
            _ => {
                self.error(
                    text.span(),
                    "a duration is a positive number with a unit: `500ms`, `30s`, `5m`, `2h`",
                );
                None
            }
        }
    }

    /// A positive size: `1024`, `512K`, `512M`, `4G`.
    pub fn bytes(&mut self, text: &Spanned<String>) -> Option<u64> {
        match offswitch_core::units::parse_bytes(text.get_ref()) {
            Some(bytes) if bytes > 0 => Some(bytes),
            _ => {
                self.error(
                    text.span(),
                    "a size is a positive number with an optional unit: `512M`, `4G`",
                );
                None
            }
        }
    }
}
