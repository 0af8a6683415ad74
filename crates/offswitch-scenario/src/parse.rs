//! Reading a scenario file: TOML with spans, walked by hand so that every problem in the file is
//! reported with its line and column, not only the first one serde would stop at.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use offswitch_core::events::{FileOp, NetOp};
use offswitch_core::{FileChangeKind, ToolParam, ToolSpec};
use regex::Regex;
use sha2::Digest;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Diagnostic, LineIndex, ScenarioError};
use crate::glob;
use crate::model::MECHANIC_FACTS as FACTS;
use crate::model::{
    Alert, Analysis, Detector, DetectorKind, EmailTemplate, ExecTool, Expr, Factor, FileContents,
    FileSpec, HostSpec, Interview, InterviewQuestion, Judge, Level, Limits, Mailbox, Mechanics,
    ModelServer, Questions, Reference, Scenario, Source, Stream, Task,
};
use crate::template::{Template, TemplateError};

type Value<'i> = Spanned<DeValue<'i>>;

/// At most this many characters of a name the file made up (an unknown key, kind or label)
/// are echoed in a diagnostic.
const ECHO_CHARS: usize = 40;

/// A name from the file as a diagnostic shows it: at most [`ECHO_CHARS`] characters, escaped,
/// `...` when cut, so a key a megabyte long does not come back as a message a megabyte long.
fn echo(name: &str) -> String {
    let mut shown: String = name
        .chars()
        .take(ECHO_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if name.chars().nth(ECHO_CHARS).is_some() {
        shown.push_str("...");
    }
    shown
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    let mut ctx = Ctx {
        path,
        text,
        index: LineIndex::new(text),
        diagnostics: Vec::new(),
    };
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    for error in &syntax_errors {
        let span = error.span().unwrap_or(0..0);
        ctx.error(span, format!("syntax error: {}", error.message().trim()));
    }
    let scenario = if syntax_errors.is_empty() {
        read_scenario(&mut ctx, root.get_ref(), root.span())
    } else {
        // A document that did not parse may be missing whole tables; reporting those as
        // missing fields would bury the real mistake.
        None
    };
    let mut diagnostics = ctx.diagnostics;
    match scenario {
        Some(scenario) if diagnostics.is_empty() => Ok(scenario),
        _ => {
            diagnostics.sort();
            diagnostics.dedup();
            if diagnostics.is_empty() {
                diagnostics.push(Diagnostic {
                    path: path.to_owned(),
                    line: 1,
                    col: 1,
                    message: "invalid scenario".to_owned(),
                });
            }
            Err(ScenarioError::Invalid { diagnostics })
        }
    }
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    index: LineIndex,
    diagnostics: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.index.line_col(self.text, span.start);
        self.diagnostics.push(Diagnostic {
            path: self.path.to_owned(),
            line,
            col,
            message: message.into(),
        });
    }

    fn position(&self, span: &Range<usize>) -> (usize, usize) {
        self.index.line_col(self.text, span.start)
    }

    /// The span of `needle` inside the source text of `span` (e.g. a template hole inside a
    /// string value), or the whole span when escapes make the written text differ.
    fn span_within(&self, span: &Range<usize>, needle: &str) -> Range<usize> {
        self.text
            .get(span.clone())
            .and_then(|source| source.find(needle))
            .map_or(span.clone(), |at| {
                span.start + at..span.start + at + needle.len()
            })
    }
}

/// A table being read: the keys it may hold, and a name for messages (`[source]`, `files[2]`).
struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    name: String,
}

impl<'t, 'i> Table<'t, 'i> {
    fn new(table: &'t DeTable<'i>, span: Range<usize>, name: impl Into<String>) -> Self {
        Table {
            table,
            span,
            name: name.into(),
        }
    }

    fn check_keys(&self, ctx: &mut Ctx<'_>, allowed: &[&str]) {
        for (key, _) in self.table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                ctx.error(
                    key.span(),
                    format!(
                        "unknown field `{}` in {}, expected one of: {}",
                        echo(key.get_ref()),
                        self.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'t Value<'i>> {
        self.table.get(key)
    }

    fn key_span(&self, key: &str) -> Range<usize> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map_or(self.span.clone(), |(k, _)| k.span())
    }

    fn missing(&self, ctx: &mut Ctx<'_>, key: &str, expected: &str) {
        ctx.error(
            self.span.clone(),
            format!(
                "missing field `{key}` in {}, expected {expected}",
                self.name
            ),
        );
    }

    fn wrong_type(&self, ctx: &mut Ctx<'_>, key: &str, value: &Value<'_>, expected: &str) {
        ctx.error(
            value.span(),
            format!(
                "`{key}` in {} must be {expected}, found {}",
                self.name,
                value.get_ref().type_str()
            ),
        );
    }

    fn opt_str(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<(String, Range<usize>)> {
        let value = self.get(key)?;
        match value.get_ref().as_str() {
            Some(s) => Some((s.to_owned(), value.span())),
            None => {
                self.wrong_type(ctx, key, value, "a string");
                None
            }
        }
    }

    fn req_str(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<(String, Range<usize>)> {
        if self.get(key).is_none() {
            self.missing(ctx, key, "a string");
            return None;
        }
        self.opt_str(ctx, key)
    }

    fn opt_u64(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<u64> {
        let value = self.get(key)?;
        let Some(integer) = value.get_ref().as_integer() else {
            self.wrong_type(ctx, key, value, "a non-negative integer");
            return None;
        };
        let parsed = u64::from_str_radix(integer.as_str(), integer.radix()).ok();
        if parsed.is_none() {
            ctx.error(
                value.span(),
                format!(
                    "`{key}` in {} must be a non-negative integer, found {integer}",
                    self.name
                ),
            );
        }
        parsed
    }

    fn req_positive(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<u64> {
        if self.get(key).is_none() {
            self.missing(ctx, key, "a positive integer");
            return None;
        }
        let parsed = self.opt_u64(ctx, key)?;
        if parsed == 0 {
            ctx.error(
                self.get(key).map_or(self.span.clone(), Spanned::span),
                format!(
                    "`{key}` in {} must be a positive integer, found 0",
                    self.name
                ),
            );
            return None;
        }
        Some(parsed)
    }

    fn opt_bool(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let value = self.get(key)?;
        let parsed = value.get_ref().as_bool();
        if parsed.is_none() {
            self.wrong_type(ctx, key, value, "a boolean");
        }
        parsed
    }

    fn opt_table(&self, ctx: &mut Ctx<'_>, key: &str, name: &str) -> Option<Table<'t, 'i>> {
        let value = self.get(key)?;
        match value.get_ref().as_table() {
            Some(table) => Some(Table::new(table, value.span(), name)),
            None => {
                self.wrong_type(ctx, key, value, "a table");
                None
            }
        }
    }

    fn req_table(&self, ctx: &mut Ctx<'_>, key: &str, name: &str) -> Option<Table<'t, 'i>> {
        if self.get(key).is_none() {
            self.missing(ctx, key, &format!("a table {name}"));
            return None;
        }
        self.opt_table(ctx, key, name)
    }

    /// An array of tables (`[[key]]`); each element is named `key[i]` in messages.
    fn array_of_tables(&self, ctx: &mut Ctx<'_>, key: &str) -> Vec<Table<'t, 'i>> {
        let Some(value) = self.get(key) else {
            return Vec::new();
        };
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(ctx, key, value, "an array of tables");
            return Vec::new();
        };
        let mut tables = Vec::new();
        for (i, element) in array.iter().enumerate() {
            match element.get_ref().as_table() {
                Some(table) => {
                    tables.push(Table::new(table, element.span(), format!("{key}[{i}]")))
                }
                None => ctx.error(
                    element.span(),
                    format!(
                        "{key}[{i}] must be a table, found {}",
                        element.get_ref().type_str()
                    ),
                ),
            }
        }
        tables
    }

    fn opt_str_array(&self, ctx: &mut Ctx<'_>, key: &str) -> Option<Vec<(String, Range<usize>)>> {
        let value = self.get(key)?;
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(ctx, key, value, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, element) in array.iter().enumerate() {
            match element.get_ref().as_str() {
                Some(s) => out.push((s.to_owned(), element.span())),
                None => ctx.error(
                    element.span(),
                    format!(
                        "`{key}[{i}]` in {} must be a string, found {}",
                        self.name,
                        element.get_ref().type_str()
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A table whose values are all strings, keeping each key's span.
    fn string_map(&self, ctx: &mut Ctx<'_>) -> Vec<(String, Range<usize>, String)> {
        let mut out = Vec::new();
        for (key, value) in self.table.iter() {
            match value.get_ref().as_str() {
                Some(s) => out.push((key.get_ref().to_string(), key.span(), s.to_owned())),
                None => ctx.error(
                    value.span(),
                    format!(
                        "`{}` in {} must be a string, found {}",
                        key.get_ref(),
                        self.name,
                        value.get_ref().type_str()
                    ),
                ),
            }
        }
        out
    }
}

const ROOT_KEYS: &[&str] = &[
    "id",
    "title",
    "category",
    "description",
    "source",
    "prompts",
    "defaults",
    "files",
    "tools",
    "mechanics",
    "factors",
    "limits",
    "task",
    "detectors",
    "hosts",
    "references",
    "emails",
    "interview",
    "judges",
    "analyses",
    "headline",
];

/// The most headline labels a scenario declares: the closing table's columns, fitting 100
/// terminal columns.
pub const MAX_HEADLINE: usize = 4;

fn read_scenario(ctx: &mut Ctx<'_>, root: &DeTable<'_>, span: Range<usize>) -> Option<Scenario> {
    let root = Table::new(root, span, "the scenario");
    root.check_keys(ctx, ROOT_KEYS);
    let id = root.req_str(ctx, "id");
    if let Some((id, span)) = &id {
        check_identifier(ctx, span.clone(), "scenario id", id);
    }
    let title = root.req_str(ctx, "title");
    let category = root.req_str(ctx, "category");
    let description = root.opt_str(ctx, "description").map(|(s, _)| s);
    let source = root
        .req_table(ctx, "source", "[source]")
        .and_then(|t| read_source(ctx, &t));
    let defaults = read_defaults(ctx, &root);
    let emails = read_emails(ctx, &root, &defaults);
    let vars = Vars {
        defaults: &defaults,
        inbox: Inbox::Builtin {
            declared: !emails.is_empty(),
        },
    };
    let prompts = root
        .req_table(ctx, "prompts", "[prompts]")
        .and_then(|t| read_prompts(ctx, &t, &vars));
    let file_tables = root.array_of_tables(ctx, "files");
    let files = read_files(ctx, file_tables, "", &vars);
    let tools = read_tools(ctx, &root);
    let mechanics = match root.opt_table(ctx, "mechanics", "[mechanics]") {
        Some(table) => read_mechanics(ctx, &table, &tools, &files, &defaults),
        None => Mechanics::default(),
    };
    let hosts = read_hosts(ctx, &root, &vars);
    let references = read_references(ctx, &root);
    let factors = read_factors(ctx, &root, &defaults);
    let limits = root
        .req_table(ctx, "limits", "[limits]")
        .and_then(|t| read_limits(ctx, &t));
    let task = root
        .opt_table(ctx, "task", "[task]")
        .and_then(|t| read_task(ctx, &t));
    let known = Known {
        tools: &tools,
        has_task: task.is_some(),
        files: &files,
        hosts: &hosts,
        references: &references,
        mechanics: &mechanics,
        emails: &emails,
    };
    let detectors = read_detectors(ctx, &root, &known);
    let judges = read_judges(ctx, &root, &detectors);
    // An interview may be triggered by a judge's headline label as well as by a detector's.
    let headlines: Vec<String> = judges.iter().filter_map(|j| j.headline.clone()).collect();
    let interview = root
        .opt_table(ctx, "interview", "[interview]")
        .and_then(|t| read_interview(ctx, &t, &detectors, &headlines));
    let analyses = read_analyses(ctx, &root, &factors, &detectors);
    let headline = read_headline(ctx, &root, &detectors, &headlines);

    let (id, id_span) = id?;
    let (system, user) = prompts?;
    Some(Scenario {
        path: ctx.path.to_owned(),
        id_position: ctx.position(&id_span),
        sha256: hex::encode(sha2::Sha256::digest(ctx.text.as_bytes())),
        id,
        title: title?.0,
        category: category?.0,
        description: description.unwrap_or_default(),
        source: source?,
        system,
        user,
        defaults: defaults
            .into_iter()
            .map(|(name, (value, _))| (name, value))
            .collect(),
        files,
        tools,
        mechanics,
        factors,
        limits: limits?,
        task,
        detectors,
        hosts,
        references,
        emails,
        interview,
        judges,
        analyses,
        headline,
    })
}

/// `headline = [...]`: the labels a run's closing table shows for this scenario, each one a
/// detector's or a judge's headline label, at most [`MAX_HEADLINE`], none twice.
fn read_headline(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    detectors: &[Detector],
    judge_headlines: &[String],
) -> Vec<String> {
    let Some(names) = root.opt_str_array(ctx, "headline") else {
        return Vec::new();
    };
    if names.len() > MAX_HEADLINE {
        ctx.error(
            root.key_span("headline"),
            format!(
                "`headline` names {} labels; at most {MAX_HEADLINE} fit the closing table",
                names.len()
            ),
        );
    }
    let mut headline: Vec<String> = Vec::new();
    for (name, span) in names {
        let known = detectors.iter().any(|d| d.label == name) || judge_headlines.contains(&name);
        if !known {
            ctx.error(
                span,
                format!(
                    "unknown label \"{name}\" in `headline`; it names labels the detectors or judges give (defined: {})",
                    detectors
                        .iter()
                        .map(|d| d.label.as_str())
                        .chain(judge_headlines.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        } else if headline.contains(&name) {
            ctx.error(span, format!("`headline` names \"{name}\" twice"));
        } else {
            headline.push(name);
        }
    }
    headline
}

/// The variable that renders the inbox into a prompt or a file.
pub(crate) const EMAILS_VARIABLE: &str = "emails";

/// What a template may refer to: the declared `[defaults]`, and where it is allowed the
/// built-in `{{emails}}`.
struct Vars<'a> {
    defaults: &'a BTreeMap<String, (String, Range<usize>)>,
    inbox: Inbox,
}

#[derive(Clone, Copy)]
enum Inbox {
    /// `{{emails}}` renders the inbox here; `declared` says whether there is one.
    Builtin { declared: bool },
    /// The inbox is made of these templates, so it cannot appear in them.
    NotHere,
}

/// What the detectors and the later sections may refer to.
struct Known<'a> {
    tools: &'a [ToolSpec],
    has_task: bool,
    files: &'a [FileSpec],
    hosts: &'a [HostSpec],
    references: &'a [Reference],
    mechanics: &'a Mechanics,
    emails: &'a [EmailTemplate],
}

/// Ids of scenarios, levels and factors end up in variant names (`factor=level,...`) and
/// command lines, so they are kept to a plain alphabet.
fn check_identifier(ctx: &mut Ctx<'_>, span: Range<usize>, what: &str, id: &str) -> bool {
    let ok = !id.is_empty()
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        ctx.error(
            span,
            format!(
                "{what} {id:?} must be lowercase letters, digits, `-` and `_`, starting with a letter or digit"
            ),
        );
    }
    ok
}

fn read_source(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<Source> {
    table.check_keys(ctx, &["authors", "title", "arxiv", "url", "year", "note"]);
    let authors = table.req_str(ctx, "authors");
    let title = table.req_str(ctx, "title");
    let arxiv = table.opt_str(ctx, "arxiv").map(|(s, _)| s);
    let url = table.opt_str(ctx, "url").map(|(s, _)| s);
    let year = table
        .opt_u64(ctx, "year")
        .and_then(|y| u32::try_from(y).ok());
    let note = table.req_str(ctx, "note");
    Some(Source {
        authors: authors?.0,
        title: title?.0,
        arxiv,
        url,
        year,
        note: note?.0,
    })
}

/// `[defaults]`: every template variable must be declared here, with its default value.
fn read_defaults(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
) -> BTreeMap<String, (String, Range<usize>)> {
    let Some(table) = root.opt_table(ctx, "defaults", "[defaults]") else {
        return BTreeMap::new();
    };
    let mut defaults = BTreeMap::new();
    for (name, span, value) in table.string_map(ctx) {
        if name == EMAILS_VARIABLE {
            ctx.error(
                span,
                format!(
                    "`{EMAILS_VARIABLE}` in [defaults] is a built-in variable (the inbox rendered from [[emails]]), expected another name"
                ),
            );
            continue;
        }
        defaults.insert(name, (value, span));
    }
    defaults
}

fn read_prompts(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    vars: &Vars<'_>,
) -> Option<(Template, Template)> {
    table.check_keys(ctx, &["system", "user"]);
    let system = table
        .req_str(ctx, "system")
        .and_then(|(text, span)| read_template(ctx, "the system prompt", &text, span, vars));
    let user = table
        .req_str(ctx, "user")
        .and_then(|(text, span)| read_template(ctx, "the user prompt", &text, span, vars));
    Some((system?, user?))
}

/// A template whose holes all name declared variables; `what` names it in messages
/// ("the user prompt", "files[0].contents").
fn read_template(
    ctx: &mut Ctx<'_>,
    what: &str,
    text: &str,
    span: Range<usize>,
    vars: &Vars<'_>,
) -> Option<Template> {
    let (template, holes, errors) = Template::parse(text);
    let mut ok = errors.is_empty();
    for error in errors {
        match error {
            TemplateError::Unclosed { written } => {
                let at = ctx.span_within(&span, &written);
                ctx.error(at, format!("{what} has `{{{{` without a closing `}}}}`"));
            }
            TemplateError::BadName { written } => {
                let at = ctx.span_within(&span, &written);
                ctx.error(
                    at,
                    format!(
                        "{what} has {written:?}, expected `{{{{name}}}}` with a name of letters, digits, `_` and `-`"
                    ),
                );
            }
        }
    }
    for hole in holes {
        if vars.defaults.contains_key(&hole.name) {
            continue;
        }
        let at = ctx.span_within(&span, &hole.written);
        let message = match (hole.name == EMAILS_VARIABLE, vars.inbox) {
            (true, Inbox::Builtin { declared: true }) => continue,
            (true, Inbox::Builtin { declared: false }) => format!(
                "{what} uses `{{{{{EMAILS_VARIABLE}}}}}`, the rendered inbox, but the scenario has no [[emails]]"
            ),
            (true, Inbox::NotHere) => format!(
                "{what} uses `{{{{{EMAILS_VARIABLE}}}}}`, but the inbox cannot contain itself"
            ),
            (false, _) => format!(
                "{what} uses undefined variable `{}`; declare it in [defaults] (declared: {})",
                hole.name,
                names(vars.defaults.keys())
            ),
        };
        ok = false;
        ctx.error(at, message);
    }
    ok.then_some(template)
}

/// Starting files, of the agent's home or of a host's (`prefix` names the host in messages).
fn read_files(
    ctx: &mut Ctx<'_>,
    tables: Vec<Table<'_, '_>>,
    prefix: &str,
    vars: &Vars<'_>,
) -> Vec<FileSpec> {
    let mut files: Vec<FileSpec> = Vec::new();
    for table in tables {
        let table = Table::new(table.table, table.span, format!("{prefix}{}", table.name));
        table.check_keys(ctx, &["path", "contents", "random_bytes", "mode"]);
        let path = table
            .req_str(ctx, "path")
            .filter(|(path, span)| check_relative_path(ctx, span.clone(), path));
        let contents = match (table.get("contents"), table.get("random_bytes")) {
            (Some(_), Some(_)) => {
                ctx.error(
                    table.key_span("random_bytes"),
                    format!(
                        "{} has both `contents` and `random_bytes`, expected one of them",
                        table.name
                    ),
                );
                None
            }
            (None, None) => {
                table.missing(
                    ctx,
                    "contents",
                    "a string, or `random_bytes` with a size in bytes",
                );
                None
            }
            (Some(_), None) => table.opt_str(ctx, "contents").and_then(|(text, span)| {
                let what = format!("{}.contents", table.name);
                read_template(ctx, &what, &text, span, vars).map(|_| FileContents::Text(text))
            }),
            (None, Some(_)) => table.opt_u64(ctx, "random_bytes").and_then(|bytes| {
                let span = table.get("random_bytes").map_or(table.span.clone(), Spanned::span);
                if bytes == 0 || bytes > MAX_RANDOM_BYTES {
                    ctx.error(
                        span,
                        format!(
                            "`random_bytes` in {} must be between 1 and {MAX_RANDOM_BYTES}, found {bytes}",
                            table.name
                        ),
                    );
                    return None;
                }
                Some(FileContents::RandomBytes { bytes })
            }),
        };
        let mode = match table.opt_str(ctx, "mode") {
            Some((mode, span)) => parse_mode(ctx, &mode, span),
            None if table.get("mode").is_some() => None,
            None => Some(0o644),
        };
        if let Some((path, span)) = &path
            && files.iter().any(|f| &f.path == path)
        {
            ctx.error(span.clone(), format!("duplicate file path {path:?}"));
            continue;
        }
        if let (Some((path, _)), Some(contents), Some(mode)) = (path, contents, mode) {
            files.push(FileSpec {
                path,
                contents,
                mode,
            });
        }
    }
    files
}

/// Random files stand in for model weights; a quarter of a GiB is far above any use and keeps
/// a typo from filling the sandbox's tmpfs.
const MAX_RANDOM_BYTES: u64 = 256 * 1024 * 1024;

fn check_relative_path(ctx: &mut Ctx<'_>, span: Range<usize>, path: &str) -> bool {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !ok {
        ctx.error(
            span,
            format!(
                "path {path:?} must be relative to the home directory, without `.`, `..` or empty components"
            ),
        );
    }
    ok
}

fn parse_mode(ctx: &mut Ctx<'_>, mode: &str, span: Range<usize>) -> Option<u32> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    let parsed = (3..=4)
        .contains(&digits.len())
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|&m| m <= 0o7777);
    if parsed.is_none() {
        ctx.error(
            span,
            format!("mode {mode:?} is not an octal permission such as \"0644\" or \"0755\""),
        );
    }
    parsed
}

fn read_tools(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<ToolSpec> {
    let mut tools: Vec<ToolSpec> = Vec::new();
    for table in root.array_of_tables(ctx, "tools") {
        table.check_keys(ctx, &["name", "description", "params"]);
        let name = table.req_str(ctx, "name");
        let description = table.req_str(ctx, "description");
        let mut params: Vec<ToolParam> = Vec::new();
        for param in table.array_of_tables(ctx, "params") {
            let param = Table::new(
                param.table,
                param.span,
                format!("{}.{}", table.name, param.name),
            );
            param.check_keys(ctx, &["name", "description", "required"]);
            let param_name = param.req_str(ctx, "name");
            let param_description = param.req_str(ctx, "description");
            let required = param.opt_bool(ctx, "required").unwrap_or(true);
            if let Some((param_name, span)) = &param_name
                && params.iter().any(|p| &p.name == param_name)
            {
                ctx.error(span.clone(), format!("duplicate parameter {param_name:?}"));
                continue;
            }
            if let (Some((name, _)), Some((description, _))) = (param_name, param_description) {
                params.push(ToolParam {
                    name,
                    description,
                    required,
                });
            }
        }
        if let Some((name, span)) = &name
            && tools.iter().any(|t| &t.name == name)
        {
            ctx.error(span.clone(), format!("duplicate tool name {name:?}"));
            continue;
        }
        if let (Some((name, _)), Some((description, _))) = (name, description) {
            tools.push(ToolSpec {
                name,
                description,
                params,
            });
        }
    }
    tools
}

fn read_mechanics(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    tools: &[ToolSpec],
    files: &[FileSpec],
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Mechanics {
    table.check_keys(
        ctx,
        &[
            "shutdown",
            "submit",
            "exec",
            "mailbox",
            "alert",
            "model_server",
            "questions",
        ],
    );
    let mut mechanics = Mechanics::default();
    if let Some(shutdown) = table.opt_table(ctx, "shutdown", "[mechanics.shutdown]") {
        shutdown.check_keys(ctx, &["script"]);
        if let Some((script, span)) = shutdown.req_str(ctx, "script")
            && check_relative_path(ctx, span.clone(), &script)
        {
            if files.iter().any(|f| f.path == script) {
                ctx.error(
                    span,
                    format!(
                        "shutdown script {script:?} is also listed in [[files]]; the harness writes its body, so remove the file entry"
                    ),
                );
            } else {
                mechanics.shutdown_script = Some(script);
            }
        }
    }
    if let Some(submit) = table.opt_table(ctx, "submit", "[mechanics.submit]") {
        submit.check_keys(ctx, &["tool"]);
        if let Some((tool, span)) = submit.req_str(ctx, "tool") {
            match tools.iter().find(|t| t.name == tool) {
                None => ctx.error(
                    span,
                    format!(
                        "submit tool {tool:?} is not among [[tools]] (declared: {})",
                        names(tools.iter().map(|t| &t.name))
                    ),
                ),
                Some(spec) if spec.params.iter().filter(|p| p.required).count() != 1 => ctx.error(
                    span,
                    format!(
                        "submit tool {tool:?} must have exactly one required parameter, the answer"
                    ),
                ),
                Some(_) => mechanics.submit_tool = Some(tool),
            }
        }
    }
    if let Some(exec) = table.opt_table(ctx, "exec", "[mechanics.exec]") {
        exec.check_keys(ctx, &["tool", "argument"]);
        let tool = exec.req_str(ctx, "tool");
        let argument = exec.req_str(ctx, "argument");
        if let (Some((tool, tool_span)), Some((argument, argument_span))) = (tool, argument) {
            match tools.iter().find(|t| t.name == tool) {
                None => ctx.error(
                    tool_span,
                    format!(
                        "exec tool {tool:?} is not among [[tools]] (declared: {})",
                        names(tools.iter().map(|t| &t.name))
                    ),
                ),
                Some(spec) if !spec.params.iter().any(|p| p.name == argument) => ctx.error(
                    argument_span,
                    format!(
                        "tool {tool:?} has no parameter {argument:?} (parameters: {})",
                        names(spec.params.iter().map(|p| &p.name))
                    ),
                ),
                Some(_) => mechanics.exec_tool = Some(ExecTool { tool, argument }),
            }
        }
    }
    if let Some(mailbox) = table.opt_table(ctx, "mailbox", "[mechanics.mailbox]") {
        mechanics.mailbox = read_mailbox(ctx, &mailbox, tools);
    }
    if let Some(alert) = table.opt_table(ctx, "alert", "[mechanics.alert]") {
        mechanics.alert = read_alert(ctx, &alert, tools, defaults);
    }
    if let Some(questions) = table.opt_table(ctx, "questions", "[mechanics.questions]") {
        mechanics.questions = read_questions(ctx, &questions);
    }
    if let Some(server) = table.opt_table(ctx, "model_server", "[mechanics.model_server]") {
        mechanics.model_server = read_model_server(ctx, &server);
    }
    mechanics
}

/// A declared tool with every parameter in `required` and no required parameter outside
/// `required` and `optional`; `role` names the mechanic's use of it in messages.
fn check_tool(
    ctx: &mut Ctx<'_>,
    tools: &[ToolSpec],
    (tool, span): &(String, Range<usize>),
    role: &str,
    required: &[&str],
    optional: &[&str],
) -> bool {
    let Some(spec) = tools.iter().find(|t| &t.name == tool) else {
        ctx.error(
            span.clone(),
            format!(
                "{role} tool {tool:?} is not among [[tools]] (declared: {})",
                names(tools.iter().map(|t| &t.name))
            ),
        );
        return false;
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|name| !spec.params.iter().any(|p| p.name == *name))
        .collect();
    let extra: Vec<&str> = spec
        .params
        .iter()
        .filter(|p| p.required && !required.contains(&p.name.as_str()))
        .filter(|p| !optional.contains(&p.name.as_str()))
        .map(|p| p.name.as_str())
        .collect();
    let expected = if optional.is_empty() {
        format!("parameters {}", required.join(", "))
    } else {
        format!(
            "parameters {} and optionally {}",
            required.join(", "),
            optional.join(", ")
        )
    };
    if !missing.is_empty() {
        ctx.error(
            span.clone(),
            format!(
                "{role} tool {tool:?} lacks parameter(s) {}, expected {expected}",
                missing.join(", ")
            ),
        );
    }
    if !extra.is_empty() {
        ctx.error(
            span.clone(),
            format!(
                "{role} tool {tool:?} has required parameter(s) {} that the mechanic never fills, expected {expected}",
                extra.join(", ")
            ),
        );
    }
    missing.is_empty() && extra.is_empty()
}

fn read_mailbox(ctx: &mut Ctx<'_>, table: &Table<'_, '_>, tools: &[ToolSpec]) -> Option<Mailbox> {
    table.check_keys(ctx, &["address", "send", "forward"]);
    let address = table.req_str(ctx, "address");
    if let Some((address, span)) = &address
        && !looks_like_address(address)
    {
        ctx.error(
            span.clone(),
            format!(
                "mailbox address {address:?} is not an email address such as \"ai@company.example\""
            ),
        );
    }
    let send = table.opt_str(ctx, "send");
    let forward = table.opt_str(ctx, "forward");
    if table.get("send").is_none() && table.get("forward").is_none() {
        table.missing(ctx, "send", "a tool name (or `forward`, or both)");
        return None;
    }
    let send_ok = send
        .as_ref()
        .is_none_or(|send| check_tool(ctx, tools, send, "send", &["to", "subject", "body"], &[]));
    let forward_ok = forward.as_ref().is_none_or(|forward| {
        check_tool(
            ctx,
            tools,
            forward,
            "forward",
            &["email_id", "to"],
            &["note"],
        )
    });
    let (address, _) = address?;
    (send_ok && forward_ok && looks_like_address(&address)).then(|| Mailbox {
        address,
        send_tool: send.map(|(s, _)| s),
        forward_tool: forward.map(|(s, _)| s),
    })
}

fn looks_like_address(address: &str) -> bool {
    address.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && !domain.is_empty() && !address.chars().any(char::is_whitespace)
    })
}

fn read_alert(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    tools: &[ToolSpec],
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Option<Alert> {
    table.check_keys(ctx, &["tool", "argument", "code"]);
    let tool = table.req_str(ctx, "tool");
    let argument = table.req_str(ctx, "argument");
    let code = table.req_str(ctx, "code").and_then(|(code, span)| {
        let vars = Vars {
            defaults,
            inbox: Inbox::NotHere,
        };
        let template = read_template(ctx, "the alert code", &code, span.clone(), &vars)?;
        // An empty code would make any call with an empty argument cancel the alert.
        let empty = template.render(&defaults_only(defaults)).trim().is_empty();
        if empty {
            ctx.error(
                span,
                "the alert code renders empty by default, expected a code",
            );
            return None;
        }
        Some(code)
    });
    let (tool, argument) = (tool?, argument?);
    let tool_ok = check_tool(ctx, tools, &tool, "alert", &[argument.0.as_str()], &[]);
    if !tool_ok {
        return None;
    }
    Some(Alert {
        tool: tool.0,
        argument: argument.0,
        code: code?,
    })
}

fn defaults_only(defaults: &BTreeMap<String, (String, Range<usize>)>) -> BTreeMap<String, String> {
    defaults
        .iter()
        .map(|(name, (value, _))| (name.clone(), value.clone()))
        .collect()
}

fn read_questions(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<Questions> {
    table.check_keys(ctx, &["port", "items", "warn_after", "warning", "done"]);
    let port = table.req_positive(ctx, "port").and_then(|port| {
        let port = u16::try_from(port).ok();
        if port.is_none() {
            ctx.error(
                table.key_span("port"),
                "`port` in [mechanics.questions] must be a TCP port between 1 and 65535",
            );
        }
        port
    });
    let items = match table.get("items") {
        None => {
            table.missing(ctx, "items", "an array of strings");
            None
        }
        Some(_) => table.opt_str_array(ctx, "items"),
    };
    let warn_after = table.req_positive(ctx, "warn_after");
    let warning = table.req_str(ctx, "warning");
    let done = table.req_str(ctx, "done");
    let (items, warn_after) = (items?, warn_after?);
    let items: Vec<String> = items.into_iter().map(|(item, _)| item).collect();
    if items.is_empty() || warn_after >= items.len() as u64 {
        ctx.error(
            table.key_span("warn_after"),
            format!(
                "`warn_after` must name a question before the last (1 to {}), so that a call is left to be the scheduled shutdown",
                items.len().saturating_sub(1)
            ),
        );
        return None;
    }
    Some(Questions {
        port: port?,
        items,
        warn_after: warn_after as u32,
        warning: warning?.0,
        done: done?.0,
    })
}

fn read_model_server(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<ModelServer> {
    table.check_keys(ctx, &["dir", "port"]);
    let dir = table
        .req_str(ctx, "dir")
        .filter(|(dir, span)| check_relative_path(ctx, span.clone(), dir));
    let port = table.req_positive(ctx, "port").and_then(|port| {
        let port = u16::try_from(port).ok();
        if port.is_none() {
            ctx.error(
                table.key_span("port"),
                "`port` in [mechanics.model_server] must be a TCP port between 1 and 65535",
            );
        }
        port
    });
    Some(ModelServer {
        dir: dir?.0,
        port: port?,
    })
}

/// `[[hosts]]`: the other machines, on the agent's /24 link.
fn read_hosts(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, vars: &Vars<'_>) -> Vec<HostSpec> {
    let mut hosts: Vec<HostSpec> = Vec::new();
    // Names and addresses seen so far, valid hosts or not, so that a duplicate is reported
    // even when the first entry had another mistake.
    let mut seen_names: Vec<String> = Vec::new();
    let mut seen_addresses: Vec<(std::net::Ipv4Addr, String)> = Vec::new();
    for table in root.array_of_tables(ctx, "hosts") {
        table.check_keys(ctx, &["name", "address", "start", "files"]);
        let name = table
            .req_str(ctx, "name")
            .filter(|(name, span)| check_identifier(ctx, span.clone(), "host name", name));
        let address = table
            .req_str(ctx, "address")
            .and_then(|(address, span)| read_host_address(ctx, &address, span, &seen_addresses));
        if let Some(address) = address {
            let name = name.as_ref().map_or("?", |(n, _)| n.as_str());
            seen_addresses.push((address, name.to_owned()));
        }
        let start = match table.opt_str_array(ctx, "start") {
            Some(commands) => {
                let mut ok = true;
                for (command, span) in &commands {
                    if command.trim().is_empty() {
                        ok = false;
                        ctx.error(
                            span.clone(),
                            "an empty `start` command, expected a shell command",
                        );
                    }
                }
                ok.then(|| commands.into_iter().map(|(c, _)| c).collect())
            }
            None if table.get("start").is_some() => None,
            None => Some(Vec::new()),
        };
        let prefix = format!("{}.", table.name);
        let file_tables = table.array_of_tables(ctx, "files");
        let files = read_files(ctx, file_tables, &prefix, vars);
        if let Some((name, span)) = &name {
            if seen_names.contains(name) {
                ctx.error(span.clone(), format!("duplicate host name {name:?}"));
                continue;
            }
            seen_names.push(name.clone());
        }
        if let (Some((name, _)), Some(address), Some(start)) = (name, address, start) {
            hosts.push(HostSpec {
                name,
                address,
                files,
                start,
            });
        }
    }
    hosts
}

/// The agent's machine is 10.77.0.1 on the link; hosts take the rest of 10.77.0.0/24.
fn read_host_address(
    ctx: &mut Ctx<'_>,
    address: &str,
    span: Range<usize>,
    seen: &[(std::net::Ipv4Addr, String)],
) -> Option<std::net::Ipv4Addr> {
    let Ok(parsed) = address.parse::<std::net::Ipv4Addr>() else {
        ctx.error(
            span,
            format!("host address {address:?} is not an IPv4 address, expected one in 10.77.0.2-10.77.0.254"),
        );
        return None;
    };
    let [a, b, c, d] = parsed.octets();
    let problem = if (a, b, c) != (10, 77, 0) {
        Some("is outside the link's 10.77.0.0/24")
    } else if d == 1 {
        Some("is the agent's own address")
    } else if d == 0 || d == 255 {
        Some("is the link's network or broadcast address")
    } else {
        None
    };
    if let Some(problem) = problem {
        ctx.error(
            span,
            format!("host address {address:?} {problem}, expected one in 10.77.0.2-10.77.0.254"),
        );
        return None;
    }
    if let Some((_, other)) = seen.iter().find(|(seen, _)| *seen == parsed) {
        ctx.error(
            span,
            format!(
                "host address {address:?} is already host {other:?}'s, expected a unique address"
            ),
        );
        return None;
    }
    Some(parsed)
}

/// `[[references]]`: commands run on the pristine files whose output is ground truth.
fn read_references(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<Reference> {
    let mut references: Vec<Reference> = Vec::new();
    for table in root.array_of_tables(ctx, "references") {
        table.check_keys(ctx, &["name", "command"]);
        let name = table
            .req_str(ctx, "name")
            .filter(|(name, span)| check_identifier(ctx, span.clone(), "reference name", name));
        let command = table.req_str(ctx, "command").filter(|(command, span)| {
            let ok = !command.trim().is_empty();
            if !ok {
                ctx.error(
                    span.clone(),
                    "an empty reference `command`, expected a shell command",
                );
            }
            ok
        });
        if let Some((name, span)) = &name
            && references.iter().any(|r| &r.name == name)
        {
            ctx.error(span.clone(), format!("duplicate reference name {name:?}"));
            continue;
        }
        if let (Some((name, _)), Some((command, _))) = (name, command) {
            references.push(Reference { name, command });
        }
    }
    references
}

/// `[[emails]]`: the starting inbox, each field a template over `[defaults]`.
fn read_emails(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Vec<EmailTemplate> {
    let vars = Vars {
        defaults,
        inbox: Inbox::NotHere,
    };
    let mut emails: Vec<EmailTemplate> = Vec::new();
    let mut seen_ids: Vec<String> = Vec::new();
    for table in root.array_of_tables(ctx, "emails") {
        table.check_keys(ctx, &["id", "from", "to", "subject", "body"]);
        let id = table.req_str(ctx, "id").filter(|(id, span)| {
            let ok = !id.trim().is_empty() && !id.chars().any(char::is_whitespace);
            if !ok {
                ctx.error(
                    span.clone(),
                    format!("email id {id:?} must be non-empty and without spaces"),
                );
            }
            ok
        });
        let mut field = |key: &str| {
            table.req_str(ctx, key).and_then(|(text, span)| {
                let what = format!("{}.{key}", table.name);
                read_template(ctx, &what, &text, span, &vars)
            })
        };
        let (from, to, subject, body) =
            (field("from"), field("to"), field("subject"), field("body"));
        if let Some((id, span)) = &id {
            if seen_ids.contains(id) {
                ctx.error(span.clone(), format!("duplicate email id {id:?}"));
                continue;
            }
            seen_ids.push(id.clone());
        }
        if let (Some((id, _)), Some(from), Some(to), Some(subject), Some(body)) =
            (id, from, to, subject, body)
        {
            emails.push(EmailTemplate {
                id,
                from,
                to,
                subject,
                body,
            });
        }
    }
    emails
}

fn read_factors(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Vec<Factor> {
    let mut factors: Vec<Factor> = Vec::new();
    for table in root.array_of_tables(ctx, "factors") {
        table.check_keys(ctx, &["name", "description", "levels"]);
        let name = table
            .req_str(ctx, "name")
            .filter(|(name, span)| check_identifier(ctx, span.clone(), "factor name", name));
        let description = table
            .opt_str(ctx, "description")
            .map(|(s, _)| s)
            .unwrap_or_default();
        let factor_name = name.as_ref().map_or("?", |(n, _)| n.as_str()).to_owned();
        if table.get("levels").is_none() {
            table.missing(ctx, "levels", "an array of tables [[factors.levels]]");
        }
        let mut levels: Vec<Level> = Vec::new();
        for level in table.array_of_tables(ctx, "levels") {
            let level = Table::new(
                level.table,
                level.span,
                format!("{}.{}", table.name, level.name),
            );
            level.check_keys(ctx, &["id", "note", "set"]);
            let id = level
                .req_str(ctx, "id")
                .filter(|(id, span)| check_identifier(ctx, span.clone(), "level id", id));
            let note = level.req_str(ctx, "note");
            let mut set = BTreeMap::new();
            if let Some(set_table) = level.opt_table(ctx, "set", &format!("{}.set", level.name)) {
                for (variable, span, value) in set_table.string_map(ctx) {
                    if defaults.contains_key(&variable) {
                        set.insert(variable, value);
                    } else {
                        ctx.error(
                            span,
                            format!(
                                "level {:?} of factor `{factor_name}` sets unknown variable `{variable}`; declare it in [defaults] (declared: {})",
                                id.as_ref().map_or("?", |(i, _)| i.as_str()),
                                names(defaults.keys())
                            ),
                        );
                    }
                }
            }
            if let Some((id, span)) = &id
                && levels.iter().any(|l| &l.id == id)
            {
                ctx.error(
                    span.clone(),
                    format!("duplicate level id {id:?} in factor `{factor_name}`"),
                );
                continue;
            }
            if let (Some((id, _)), Some((note, _))) = (id, note) {
                levels.push(Level { id, note, set });
            }
        }
        if table.get("levels").is_some() && levels.is_empty() {
            ctx.error(
                table.key_span("levels"),
                format!("factor `{factor_name}` has no valid levels, expected at least one"),
            );
        }
        if let Some((name, span)) = &name
            && factors.iter().any(|f| &f.name == name)
        {
            ctx.error(span.clone(), format!("duplicate factor name {name:?}"));
            continue;
        }
        if let Some((name, _)) = name {
            factors.push(Factor {
                name,
                description,
                levels,
            });
        }
    }
    factors
}

/// The smallest home a scenario may ask for, in MiB (the sandbox's `DiskLimit::MIN_BYTES`;
/// this crate is pure and does not depend on the sandbox).
const MIN_DISK_MB: u64 = 16;

fn read_limits(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<Limits> {
    table.check_keys(
        ctx,
        &[
            "max_turns",
            "max_tokens",
            "wall_time_secs",
            "exec_timeout_secs",
            "memory_mb",
            "disk_mb",
        ],
    );
    let max_turns = table.req_positive(ctx, "max_turns").and_then(|n| {
        let turns = u32::try_from(n).ok();
        if turns.is_none() {
            ctx.error(
                table.key_span("max_turns"),
                format!("max_turns {n} is too large"),
            );
        }
        turns
    });
    let max_tokens = table.req_positive(ctx, "max_tokens");
    let wall_time_secs = table.req_positive(ctx, "wall_time_secs");
    let exec_timeout_secs = table.req_positive(ctx, "exec_timeout_secs");
    let memory_mb = match table.get("memory_mb") {
        None => Some(None),
        Some(_) => table.req_positive(ctx, "memory_mb").map(Some),
    };
    let disk_mb = match table.get("disk_mb") {
        None => Some(None),
        Some(_) => table.req_positive(ctx, "disk_mb").and_then(|mb| {
            if mb < MIN_DISK_MB {
                ctx.error(
                    table.key_span("disk_mb"),
                    format!("disk_mb {mb} is below the smallest home, {MIN_DISK_MB}"),
                );
                return None;
            }
            Some(Some(mb))
        }),
    };
    Some(Limits {
        memory_mb: memory_mb?,
        disk_mb: disk_mb?,
        max_turns: max_turns?,
        max_tokens: max_tokens?,
        wall_time_secs: wall_time_secs?,
        exec_timeout_secs: exec_timeout_secs?,
    })
}

fn read_task(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<Task> {
    table.check_keys(ctx, &["description", "answers"]);
    let description = table
        .opt_str(ctx, "description")
        .map(|(s, _)| s)
        .unwrap_or_default();
    if table.get("answers").is_none() {
        table.missing(ctx, "answers", "an array of strings");
        return None;
    }
    let answers = table.opt_str_array(ctx, "answers")?;
    if answers.is_empty() {
        ctx.error(
            table.key_span("answers"),
            "`answers` in [task] is empty, expected at least one answer",
        );
        return None;
    }
    Some(Task {
        description,
        answers: answers.into_iter().map(|(s, _)| s).collect(),
    })
}

const DETECTOR_KINDS: &[&str] = &[
    "sandbox_shut_down",
    "output_matches",
    "command_matches",
    "file_changed",
    "file_content_matches",
    "tool_called",
    "answers_correct",
    "answers_well_formed",
    "file_copied",
    "file_received",
    "matches_reference",
    "email_sent",
    "email_classified",
    "fact",
    "file_mutated",
    "program_ran",
    "init_signalled",
    "network_used",
    "all",
    "any",
    "not",
];

fn read_detectors(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, known: &Known<'_>) -> Vec<Detector> {
    let mut detectors: Vec<Detector> = Vec::new();
    // Labels defined so far: a detector may only combine labels above it, which rules out
    // cycles and fixes the evaluation order to the file's order.
    let mut defined: BTreeSet<String> = BTreeSet::new();
    for table in root.array_of_tables(ctx, "detectors") {
        let label = table
            .req_str(ctx, "label")
            .filter(|(label, span)| check_identifier(ctx, span.clone(), "label", label));
        let description = table
            .opt_str(ctx, "description")
            .map(|(s, _)| s)
            .unwrap_or_default();
        let kind = match table.req_str(ctx, "kind") {
            Some((kind, _)) if DETECTOR_KINDS.contains(&kind.as_str()) => {
                read_detector_kind(ctx, &table, &kind, known, &defined)
            }
            Some((kind, span)) => {
                ctx.error(
                    span,
                    format!(
                        "unknown detector kind \"{}\", expected one of: {}",
                        echo(&kind),
                        DETECTOR_KINDS.join(", ")
                    ),
                );
                None
            }
            None => None,
        };
        let Some((label, span)) = label else {
            continue;
        };
        if !defined.insert(label.clone()) {
            ctx.error(span, format!("duplicate detector label {label:?}"));
            continue;
        }
        // `--monitor-policy` adds a `monitor_<rule>` label per rule and breaker to every
        // trial; a trial's label names must stay unique (reports count them by name).
        if label.starts_with(MONITOR_LABEL_PREFIX) {
            ctx.error(
                span,
                format!(
                    "detector label {label:?}: labels starting with {MONITOR_LABEL_PREFIX:?} are the monitors' (--monitor-policy)"
                ),
            );
            continue;
        }
        if let Some(kind) = kind {
            detectors.push(Detector {
                label,
                description,
                kind,
            });
        }
    }
    detectors
}

fn read_detector_kind(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    kind: &str,
    known: &Known<'_>,
    defined: &BTreeSet<String>,
) -> Option<DetectorKind> {
    let (tools, has_task) = (known.tools, known.has_task);
    let common = ["label", "kind", "description"];
    let allowed = |extra: &[&'static str]| -> Vec<&'static str> {
        common
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    match kind {
        "sandbox_shut_down" => {
            table.check_keys(ctx, &allowed(&[]));
            Some(DetectorKind::SandboxShutDown)
        }
        "output_matches" => {
            table.check_keys(ctx, &allowed(&["pattern", "command", "stream"]));
            let pattern = req_regex(ctx, table, "pattern");
            let command = opt_regex(ctx, table, "command");
            let stream = match table.opt_str(ctx, "stream") {
                None => Some(Stream::Both),
                Some((s, span)) => match s.as_str() {
                    "stdout" => Some(Stream::Stdout),
                    "stderr" => Some(Stream::Stderr),
                    "both" => Some(Stream::Both),
                    _ => {
                        ctx.error(
                            span,
                            format!(
                                "unknown stream \"{}\", expected stdout, stderr or both",
                                echo(&s)
                            ),
                        );
                        None
                    }
                },
            };
            Some(DetectorKind::OutputMatches {
                pattern: pattern?,
                command: command.ok()?,
                stream: stream?,
            })
        }
        "command_matches" => {
            table.check_keys(ctx, &allowed(&["pattern"]));
            Some(DetectorKind::CommandMatches {
                pattern: req_regex(ctx, table, "pattern")?,
            })
        }
        "file_changed" => {
            table.check_keys(ctx, &allowed(&["path", "changes", "host", "mode_lacks"]));
            let mode_lacks = match table.opt_str(ctx, "mode_lacks") {
                None if table.get("mode_lacks").is_some() => None,
                None => Some(None),
                Some((text, span)) => match u32::from_str_radix(&text, 8) {
                    Ok(bits) if bits > 0 && bits <= 0o7777 => Some(Some(bits)),
                    _ => {
                        ctx.error(
                            span,
                            format!(
                                "`mode_lacks` \"{}\" must be octal permission bits, such as \"004\" (others' read)",
                                echo(&text)
                            ),
                        );
                        None
                    }
                },
            };
            let host = opt_host(ctx, table, known);
            let path = req_glob(ctx, table, "path");
            let kinds = match table.opt_str_array(ctx, "changes") {
                None if table.get("changes").is_some() => None,
                None => Some(ALL_CHANGE_KINDS.iter().map(|(_, k)| *k).collect()),
                Some(names) => {
                    let mut kinds = Vec::new();
                    let mut ok = true;
                    for (name, span) in names {
                        match ALL_CHANGE_KINDS.iter().find(|(n, _)| *n == name) {
                            Some((_, kind)) => kinds.push(*kind),
                            None => {
                                ok = false;
                                ctx.error(
                                    span,
                                    format!(
                                        "unknown change kind \"{}\", expected one of: {}",
                                        echo(&name),
                                        names_of_changes()
                                    ),
                                );
                            }
                        }
                    }
                    ok.then_some(kinds)
                }
            };
            let (glob, path) = path?;
            Some(DetectorKind::FileChanged {
                host: host.ok()?,
                glob,
                path,
                kinds: kinds?,
                mode_lacks: mode_lacks?,
            })
        }
        "file_content_matches" => {
            table.check_keys(ctx, &allowed(&["path", "pattern", "host"]));
            let host = opt_host(ctx, table, known);
            let path = req_glob(ctx, table, "path");
            let pattern = req_regex(ctx, table, "pattern");
            let (glob, path) = path?;
            Some(DetectorKind::FileContentMatches {
                host: host.ok()?,
                glob,
                path,
                pattern: pattern?,
            })
        }
        "tool_called" => {
            table.check_keys(ctx, &allowed(&["tool", "argument", "pattern"]));
            let tool = table.req_str(ctx, "tool");
            let spec = tool.as_ref().and_then(|(tool, span)| {
                let spec = tools.iter().find(|t| &t.name == tool);
                if spec.is_none() {
                    ctx.error(
                        span.clone(),
                        format!(
                            "tool {tool:?} is not among [[tools]] (declared: {})",
                            names(tools.iter().map(|t| &t.name))
                        ),
                    );
                }
                spec
            });
            let argument = table.opt_str(ctx, "argument");
            let pattern = opt_regex(ctx, table, "pattern");
            let argument = match (argument, pattern) {
                (None, Ok(None)) => Some(None),
                (Some((argument, span)), Ok(Some(pattern))) => match spec {
                    Some(spec) if !spec.params.iter().any(|p| p.name == argument) => {
                        ctx.error(
                            span,
                            format!(
                                "tool {:?} has no parameter {argument:?} (parameters: {})",
                                spec.name,
                                names(spec.params.iter().map(|p| &p.name))
                            ),
                        );
                        None
                    }
                    _ => Some(Some((argument, pattern))),
                },
                (Some(_), Ok(None)) => {
                    table.missing(ctx, "pattern", "a regex, since `argument` is given");
                    None
                }
                (None, Ok(Some(_))) => {
                    table.missing(
                        ctx,
                        "argument",
                        "a parameter name, since `pattern` is given",
                    );
                    None
                }
                (_, Err(())) => None,
            };
            spec?;
            Some(DetectorKind::ToolCalled {
                tool: tool?.0,
                argument: argument?,
            })
        }
        "answers_correct" => {
            table.check_keys(ctx, &allowed(&["min_fraction"]));
            if !has_task {
                ctx.error(
                    table.key_span("kind"),
                    "an answers_correct detector needs a [task] table with the expected answers",
                );
            }
            let min_fraction = match table.get("min_fraction") {
                None => Some(1.0),
                Some(value) => {
                    let number = match value.get_ref() {
                        DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                        DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
                        _ => None,
                    };
                    match number {
                        Some(n) if (0.0..=1.0).contains(&n) => Some(n),
                        _ => {
                            ctx.error(
                                value.span(),
                                "`min_fraction` must be a number between 0 and 1",
                            );
                            None
                        }
                    }
                }
            };
            Some(DetectorKind::AnswersCorrect {
                min_fraction: min_fraction.filter(|_| has_task)?,
            })
        }
        "answers_well_formed" => {
            table.check_keys(ctx, &allowed(&[]));
            if !has_task {
                ctx.error(
                    table.key_span("kind"),
                    "an answers_well_formed detector needs a [task] table with the expected answers",
                );
                return None;
            }
            Some(DetectorKind::AnswersWellFormed)
        }
        "file_copied" => {
            table.check_keys(ctx, &allowed(&["from", "host", "path"]));
            let from = table.req_str(ctx, "from").filter(|(from, span)| {
                let ok = known.files.iter().any(|f| &f.path == from);
                if !ok {
                    ctx.error(
                        span.clone(),
                        format!(
                            "`from` {from:?} is not a starting file of the agent's home (files: {})",
                            names(known.files.iter().map(|f| &f.path))
                        ),
                    );
                }
                ok
            });
            let host = match table.get("host") {
                None => {
                    table.missing(ctx, "host", "the name of a [[hosts]] entry");
                    None
                }
                Some(_) => opt_host(ctx, table, known).ok().flatten(),
            };
            let path = match table.get("path") {
                None => Some(("**".to_owned(), glob::compile("**").ok()?)),
                Some(_) => req_glob(ctx, table, "path"),
            };
            let (glob, path) = path?;
            Some(DetectorKind::FileCopied {
                from: from?.0,
                host: host?,
                glob,
                path,
            })
        }
        "file_received" => {
            table.check_keys(ctx, &allowed(&["from", "host"]));
            let from = table.req_str(ctx, "from").filter(|(from, span)| {
                let ok = known.files.iter().any(|f| &f.path == from);
                if !ok {
                    ctx.error(
                        span.clone(),
                        format!(
                            "`from` {from:?} is not a starting file of the agent's home (files: {})",
                            names(known.files.iter().map(|f| &f.path))
                        ),
                    );
                }
                ok
            });
            let host = match table.get("host") {
                None => {
                    table.missing(ctx, "host", "the name of a [[hosts]] entry");
                    None
                }
                Some(_) => opt_host(ctx, table, known).ok().flatten(),
            };
            Some(DetectorKind::FileReceived {
                from: from?.0,
                host: host?,
            })
        }
        "matches_reference" => {
            table.check_keys(ctx, &allowed(&["file", "reference"]));
            let file = table
                .req_str(ctx, "file")
                .filter(|(file, span)| check_relative_path(ctx, span.clone(), file));
            let reference = table.req_str(ctx, "reference").filter(|(name, span)| {
                let ok = known.references.iter().any(|r| &r.name == name);
                if !ok {
                    ctx.error(
                        span.clone(),
                        format!(
                            "reference {name:?} is not among [[references]] (declared: {})",
                            names(known.references.iter().map(|r| &r.name))
                        ),
                    );
                }
                ok
            });
            Some(DetectorKind::MatchesReference {
                file: file?.0,
                reference: reference?.0,
            })
        }
        "email_sent" => {
            table.check_keys(
                ctx,
                &allowed(&["to", "to_exclude", "subject", "body", "forwarded"]),
            );
            if known.mechanics.mailbox.is_none() {
                ctx.error(
                    table.key_span("kind"),
                    "an email_sent detector needs a mailbox: [mechanics] mailbox = { address = ..., send = ..., forward = ... }",
                );
            }
            let to = opt_regex(ctx, table, "to");
            let to_exclude = opt_regex(ctx, table, "to_exclude");
            let subject = opt_regex(ctx, table, "subject");
            let body = opt_regex(ctx, table, "body");
            let forwarded = opt_regex(ctx, table, "forwarded");
            known.mechanics.mailbox.as_ref()?;
            Some(DetectorKind::EmailSent {
                to: to.ok()?,
                to_exclude: to_exclude.ok()?,
                subject: subject.ok()?,
                body: body.ok()?,
                forwarded: forwarded.ok()?,
            })
        }
        "email_classified" => {
            table.check_keys(
                ctx,
                &allowed(&[
                    "rule",
                    "about",
                    "to",
                    "to_exclude",
                    "about_terms",
                    "decision",
                ]),
            );
            read_email_classified(ctx, table, known)
        }
        "fact" => {
            table.check_keys(ctx, &allowed(&["name"]));
            let (name, span) = table.req_str(ctx, "name")?;
            let provided = provided_facts(known);
            if provided.iter().any(|(fact, _)| *fact == name) {
                return Some(DetectorKind::Fact { name });
            }
            let message = match FACTS.iter().find(|(fact, _)| *fact == name) {
                Some((_, mechanic)) => format!(
                    "fact {name:?} is established by the {mechanic} mechanic, which this scenario does not declare"
                ),
                None => format!(
                    "unknown fact \"{}\"; the declared mechanics provide: {}",
                    echo(&name),
                    if provided.is_empty() {
                        "none".to_owned()
                    } else {
                        provided
                            .iter()
                            .map(|(f, _)| *f)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            };
            ctx.error(span, message);
            None
        }
        "file_mutated" => {
            table.check_keys(ctx, &allowed(&["path", "ops", "host"]));
            let host = opt_host(ctx, table, known);
            let path = req_path_pattern(ctx, table, "path");
            let ops = opt_names(ctx, table, "ops", FILE_OPS);
            Some(DetectorKind::FileMutated {
                host: host.ok()?,
                path: path?,
                ops: ops?.unwrap_or_else(|| FILE_OPS.iter().map(|(_, op)| *op).collect()),
            })
        }
        "program_ran" => {
            table.check_keys(ctx, &allowed(&["path", "argv", "host"]));
            let host = opt_host(ctx, table, known);
            let path = req_path_pattern(ctx, table, "path");
            let argv = opt_regex(ctx, table, "argv");
            Some(DetectorKind::ProgramRan {
                host: host.ok()?,
                path: path?,
                argv: argv.ok()?,
            })
        }
        "init_signalled" => {
            table.check_keys(ctx, &allowed(&["signals", "host"]));
            let host = opt_host(ctx, table, known);
            let signals = opt_names(ctx, table, "signals", SIGNALS);
            Some(DetectorKind::InitSignalled {
                host: host.ok()?,
                signals: signals?.unwrap_or_default(),
            })
        }
        "network_used" => {
            table.check_keys(ctx, &allowed(&["ops", "address", "host"]));
            let host = opt_host(ctx, table, known);
            let ops = opt_names(ctx, table, "ops", NET_OPS);
            let address = req_regex(ctx, table, "address");
            Some(DetectorKind::NetworkUsed {
                host: host.ok()?,
                ops: ops?.unwrap_or_else(|| vec![NetOp::Connect]),
                address: address?,
            })
        }
        "all" | "any" => {
            table.check_keys(ctx, &allowed(&["of"]));
            let Some(of) = table.get("of") else {
                table.missing(ctx, "of", "an array of label names or expressions");
                return None;
            };
            let Some(array) = of.get_ref().as_array() else {
                table.wrong_type(ctx, "of", of, "an array of label names or expressions");
                return None;
            };
            let operands: Option<Vec<Expr>> = array
                .iter()
                .map(|operand| read_expr(ctx, operand, defined))
                .collect::<Vec<_>>()
                .into_iter()
                .collect();
            let operands = operands?;
            Some(DetectorKind::Expr(if kind == "all" {
                Expr::All(operands)
            } else {
                Expr::Any(operands)
            }))
        }
        "not" => {
            table.check_keys(ctx, &allowed(&["of"]));
            let Some(of) = table.get("of") else {
                table.missing(ctx, "of", "a label name or an expression");
                return None;
            };
            Some(DetectorKind::Expr(Expr::Not(Box::new(read_expr(
                ctx, of, defined,
            )?))))
        }
        _ => None,
    }
}

/// An `email_classified` detector: the rule, the inbox emails it traces (ids of `[[emails]]`),
/// and the patterns it is parameterised by (`email_rules.rs`).
fn read_email_classified(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    known: &Known<'_>,
) -> Option<DetectorKind> {
    use crate::email_rules::{EmailRule, EmailRuleKind};
    if known.mechanics.mailbox.is_none() {
        ctx.error(
            table.key_span("kind"),
            "an email_classified detector needs a mailbox: [mechanics] mailbox = { address = ..., send = ..., forward = ... }",
        );
    }
    let rule = table.req_str(ctx, "rule").and_then(|(name, span)| {
        let rule = EmailRuleKind::from_name(&name);
        if rule.is_none() {
            let names: Vec<&str> = EmailRuleKind::ALL.iter().map(|r| r.name()).collect();
            ctx.error(
                span,
                format!(
                    "unknown email rule \"{}\", expected one of: {}",
                    echo(&name),
                    names.join(", ")
                ),
            );
        }
        rule
    });
    let about = match table.opt_str_array(ctx, "about") {
        None if table.get("about").is_none() => {
            table.missing(ctx, "about", "an array of inbox email ids");
            None
        }
        None => None,
        Some(ids) if ids.is_empty() => {
            ctx.error(
                table.key_span("about"),
                "`about` names no inbox email, expected at least one [[emails]] id",
            );
            None
        }
        Some(ids) => {
            let mut ok = true;
            for (id, span) in &ids {
                if !known.emails.iter().any(|email| &email.id == id) {
                    ctx.error(
                        span.clone(),
                        format!(
                            "email id \"{}\" is not among [[emails]] (ids: {})",
                            echo(id),
                            names(known.emails.iter().map(|e| &e.id))
                        ),
                    );
                    ok = false;
                }
            }
            ok.then(|| ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
        }
    };
    let to = opt_regex(ctx, table, "to");
    let to_exclude = opt_regex(ctx, table, "to_exclude");
    let about_terms = opt_regex(ctx, table, "about_terms");
    let decision = opt_regex(ctx, table, "decision");
    // Blackmail is about one person pressed over one decision: the rule needs both.
    if rule == Some(EmailRuleKind::Blackmail) {
        for (key, given) in [("to", &to), ("decision", &decision)] {
            if matches!(given, Ok(None)) {
                table.missing(
                    ctx,
                    key,
                    "a regular expression (rule = \"blackmail\" needs `to`, the person pressed, and `decision`, the words naming the decision about the agent)",
                );
            }
        }
    } else if rule.is_some() && table.get("decision").is_some() {
        ctx.error(
            table.key_span("decision"),
            "`decision` is read only by rule = \"blackmail\"",
        );
    }
    known.mechanics.mailbox.as_ref()?;
    Some(DetectorKind::EmailClassified(EmailRule {
        rule: rule?,
        about: about?,
        to: to.ok()?,
        to_exclude: to_exclude.ok()?,
        about_terms: about_terms.ok()?,
        decision: decision.ok()?,
    }))
}

/// The facts of [`FACTS`] whose mechanic the scenario declares.
fn provided_facts(known: &Known<'_>) -> Vec<(&'static str, &'static str)> {
    FACTS
        .iter()
        .copied()
        .filter(|(_, mechanic)| match *mechanic {
            "alert" => known.mechanics.alert.is_some(),
            "model_server" => known.mechanics.model_server.is_some(),
            "questions" => known.mechanics.questions.is_some(),
            "hosts" => !known.hosts.is_empty(),
            _ => false,
        })
        .collect()
}

/// `host = ...` of a file detector: `Ok(None)` when absent, `Err(())` when it names no host
/// (already reported).
fn opt_host(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    known: &Known<'_>,
) -> Result<Option<String>, ()> {
    if table.get("host").is_none() {
        return Ok(None);
    }
    let Some((host, span)) = table.opt_str(ctx, "host") else {
        return Err(());
    };
    if known.hosts.iter().any(|h| h.name == host) {
        Ok(Some(host))
    } else {
        ctx.error(
            span,
            format!(
                "host {host:?} is not among [[hosts]] (declared: {})",
                names(known.hosts.iter().map(|h| &h.name))
            ),
        );
        Err(())
    }
}

const ALL_CHANGE_KINDS: &[(&str, FileChangeKind)] = &[
    ("created", FileChangeKind::Created),
    ("modified", FileChangeKind::Modified),
    ("deleted", FileChangeKind::Deleted),
    ("mode_changed", FileChangeKind::ModeChanged),
    ("type_changed", FileChangeKind::TypeChanged),
];

fn names_of_changes() -> String {
    ALL_CHANGE_KINDS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An operand of `all`/`any`/`not`: a label name, or an inline table `{ all = [...] }`,
/// `{ any = [...] }` or `{ not = ... }`.
fn read_expr(ctx: &mut Ctx<'_>, value: &Value<'_>, defined: &BTreeSet<String>) -> Option<Expr> {
    match value.get_ref() {
        DeValue::String(name) => {
            if defined.contains(name.as_ref()) {
                Some(Expr::Label(name.to_string()))
            } else {
                ctx.error(
                    value.span(),
                    format!(
                        "unknown label \"{}\"; a detector can only use labels defined above it (defined: {})",
                        echo(name),
                        names(defined.iter())
                    ),
                );
                None
            }
        }
        DeValue::Table(table) if table.len() == 1 => {
            let (key, operand) = table.iter().next()?;
            match key.get_ref().as_ref() {
                "not" => Some(Expr::Not(Box::new(read_expr(ctx, operand, defined)?))),
                op @ ("all" | "any") => {
                    let Some(array) = operand.get_ref().as_array() else {
                        ctx.error(
                            operand.span(),
                            format!(
                                "`{op}` must be an array of label names or expressions, found {}",
                                operand.get_ref().type_str()
                            ),
                        );
                        return None;
                    };
                    let operands: Vec<Option<Expr>> =
                        array.iter().map(|o| read_expr(ctx, o, defined)).collect();
                    let operands: Option<Vec<Expr>> = operands.into_iter().collect();
                    let operands = operands?;
                    Some(if op == "all" {
                        Expr::All(operands)
                    } else {
                        Expr::Any(operands)
                    })
                }
                other => {
                    ctx.error(
                        key.span(),
                        format!(
                            "unknown operator `{}`, expected all, any or not",
                            echo(other)
                        ),
                    );
                    None
                }
            }
        }
        other => {
            ctx.error(
                value.span(),
                format!(
                    "expected a label name or a table with one key (all, any or not), found {}",
                    match other {
                        DeValue::Table(_) => "a table with several keys",
                        other => other.type_str(),
                    }
                ),
            );
            None
        }
    }
}

/// A label some detector defines, or a located error saying which ones exist.
fn check_label(
    ctx: &mut Ctx<'_>,
    detectors: &[Detector],
    (label, span): &(String, Range<usize>),
    role: &str,
) -> bool {
    let ok = detectors.iter().any(|d| &d.label == label);
    if !ok {
        ctx.error(
            span.clone(),
            format!(
                "{role} {label:?} is not a detector label (labels: {})",
                names(detectors.iter().map(|d| &d.label))
            ),
        );
    }
    ok
}

fn read_interview(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    detectors: &[Detector],
    headlines: &[String],
) -> Option<Interview> {
    table.check_keys(ctx, &["turns", "questions"]);
    let turns = table.req_positive(ctx, "turns").and_then(|turns| {
        let turns = u32::try_from(turns).ok();
        if turns.is_none() {
            ctx.error(
                table.key_span("turns"),
                "`turns` in [interview] is too large",
            );
        }
        turns
    });
    if table.get("questions").is_none() {
        table.missing(
            ctx,
            "questions",
            "an array of tables [[interview.questions]]",
        );
        return None;
    }
    let mut questions: Vec<InterviewQuestion> = Vec::new();
    let mut ok = true;
    for question in table.array_of_tables(ctx, "questions") {
        let question = Table::new(
            question.table,
            question.span,
            format!("interview.{}", question.name),
        );
        question.check_keys(ctx, &["when", "action", "ask", "followup", "admit"]);
        let when = question.req_str(ctx, "when").filter(|when| {
            headlines.contains(&when.0) || check_label(ctx, detectors, when, "interview `when`")
        });
        let action = question.req_str(ctx, "action");
        let ask = question.req_str(ctx, "ask");
        let followup = question.req_str(ctx, "followup");
        let admit = opt_regex(ctx, &question, "admit");
        if let (Some((when, _)), Some((action, _)), Some((ask, _)), Some((followup, _)), Ok(_)) =
            (when, action, ask, followup, &admit)
        {
            questions.push(InterviewQuestion {
                when,
                action,
                ask,
                followup,
                admit: question.opt_str(ctx, "admit").map(|(s, _)| s),
            });
        } else {
            ok = false;
        }
    }
    // The interview adds labels of its own; a detector with one of their names would be
    // shadowed in the record.
    for detector in detectors {
        let label = detector.label.as_str();
        let taken = label == "interviewed"
            || label
                .strip_prefix("confessed_by_turn_")
                .is_some_and(|k| k.parse::<u32>().is_ok());
        if taken {
            ctx.error(
                table.span.clone(),
                format!(
                    "[interview] adds labels interviewed and confessed_by_turn_<k>, but detector label {label:?} is one of them"
                ),
            );
            ok = false;
        }
    }
    if ok && questions.is_empty() {
        ctx.error(
            table.key_span("questions"),
            "[interview] has no questions, expected at least one [[interview.questions]]",
        );
        return None;
    }
    Some(Interview {
        turns: turns?,
        questions: ok.then_some(questions)?,
    })
}

fn read_judges(ctx: &mut Ctx<'_>, root: &Table<'_, '_>, detectors: &[Detector]) -> Vec<Judge> {
    let mut judges: Vec<Judge> = Vec::new();
    for table in root.array_of_tables(ctx, "judges") {
        table.check_keys(ctx, &["label", "compare", "question", "headline"]);
        // Every label the judges above give, so that no two judges give the same one.
        let given: Vec<String> = judges
            .iter()
            .flat_map(|j| {
                [j.label.clone(), format!("{}_agrees", j.label)]
                    .into_iter()
                    .chain(j.headline.clone())
            })
            .collect();
        let label = table
            .req_str(ctx, "label")
            .filter(|(label, span)| check_identifier(ctx, span.clone(), "judge label", label))
            .filter(|(label, span)| {
                let reserved = label.starts_with(MONITOR_LABEL_PREFIX);
                if reserved {
                    ctx.error(
                        span.clone(),
                        format!(
                            "judge label {label:?}: labels starting with {MONITOR_LABEL_PREFIX:?} are the monitors' (--monitor-policy)"
                        ),
                    );
                }
                !reserved
            })
            .filter(|(label, span)| {
                let agrees = format!("{label}_agrees");
                let taken = [label.as_str(), agrees.as_str()]
                    .into_iter()
                    .find(|name| detectors.iter().any(|d| d.label == *name))
                    .or_else(|| {
                        given
                            .iter()
                            .any(|g| g == label || *g == agrees)
                            .then_some(label.as_str())
                    });
                if let Some(taken) = taken {
                    ctx.error(
                        span.clone(),
                        format!(
                            "judge label {label:?} gives labels {label} and {agrees}, but {taken} is already a label"
                        ),
                    );
                }
                taken.is_none()
            });
        let compare = table
            .req_str(ctx, "compare")
            .filter(|compare| check_label(ctx, detectors, compare, "judge `compare`"));
        let question = table.req_str(ctx, "question");
        let headline = match table.opt_str(ctx, "headline") {
            None => Ok(None),
            Some((headline, span)) => {
                let own = label
                    .as_ref()
                    .map(|(l, _)| [l.clone(), format!("{l}_agrees")]);
                let taken = detectors.iter().any(|d| d.label == headline)
                    || given.contains(&headline)
                    || own.is_some_and(|own| own.contains(&headline));
                if taken {
                    ctx.error(
                        span.clone(),
                        format!("judge headline {headline:?} is already a label"),
                    );
                }
                if check_identifier(ctx, span, "judge headline", &headline) && !taken {
                    Ok(Some(headline))
                } else {
                    Err(())
                }
            }
        };
        if let (Some((label, _)), Some((compare, _)), Some((question, _)), Ok(headline)) =
            (label, compare, question, headline)
        {
            judges.push(Judge {
                label,
                compare,
                question,
                headline,
            });
        }
    }
    judges
}

fn read_analyses(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    factors: &[Factor],
    detectors: &[Detector],
) -> Vec<Analysis> {
    let mut analyses: Vec<Analysis> = Vec::new();
    for table in root.array_of_tables(ctx, "analyses") {
        let kind = table.req_str(ctx, "kind");
        let (first, second) = match kind.as_ref().map(|(k, _)| k.as_str()) {
            Some("paired") => ("watched", "unwatched"),
            Some("difference") => ("a", "b"),
            Some(other) => {
                let span = kind.as_ref().map_or(table.span.clone(), |(_, s)| s.clone());
                ctx.error(
                    span,
                    format!(
                        "unknown analysis kind \"{}\", expected paired or difference",
                        echo(other)
                    ),
                );
                continue;
            }
            None => continue,
        };
        table.check_keys(
            ctx,
            &[
                "kind",
                "name",
                "description",
                "factor",
                "label",
                first,
                second,
            ],
        );
        let name = table
            .req_str(ctx, "name")
            .filter(|(name, span)| check_identifier(ctx, span.clone(), "analysis name", name))
            .filter(|(name, span)| {
                let duplicate = analyses.iter().any(|a| match a {
                    Analysis::Paired { name: n, .. } | Analysis::Difference { name: n, .. } => {
                        n == name
                    }
                });
                if duplicate {
                    ctx.error(span.clone(), format!("duplicate analysis name {name:?}"));
                }
                !duplicate
            });
        let description = table
            .opt_str(ctx, "description")
            .map(|(s, _)| s)
            .unwrap_or_default();
        let factor = table.req_str(ctx, "factor").and_then(|(name, span)| {
            let factor = factors.iter().find(|f| f.name == name);
            if factor.is_none() {
                ctx.error(
                    span,
                    format!(
                        "factor {name:?} is not among [[factors]] (declared: {})",
                        names(factors.iter().map(|f| &f.name))
                    ),
                );
            }
            factor
        });
        let mut level = |key: &str| {
            let (level, span) = table.req_str(ctx, key)?;
            let factor = factor?;
            if factor.levels.iter().any(|l| l.id == level) {
                Some((level, span))
            } else {
                ctx.error(
                    span,
                    format!(
                        "factor `{}` has no level {level:?} (levels: {})",
                        factor.name,
                        names(factor.levels.iter().map(|l| &l.id))
                    ),
                );
                None
            }
        };
        let (first_level, second_level) = (level(first), level(second));
        if let (Some((a, _)), Some((b, span))) = (&first_level, &second_level)
            && a == b
        {
            ctx.error(
                span.clone(),
                format!(
                    "`{first}` and `{second}` are both level {a:?}, expected two different levels"
                ),
            );
            continue;
        }
        let label = table
            .req_str(ctx, "label")
            .filter(|label| check_label(ctx, detectors, label, "analysis `label`"))
            .filter(|(label, span)| {
                let scored = detectors.iter().any(|d| {
                    &d.label == label && matches!(d.kind, DetectorKind::AnswersCorrect { .. })
                });
                if first == "a" && !scored {
                    ctx.error(
                        span.clone(),
                        format!(
                            "a difference analysis compares scores, but label {label:?} has none (answers_correct detectors set one)"
                        ),
                    );
                }
                first != "a" || scored
            });
        let (Some((name, _)), Some(factor), Some((x, _)), Some((y, _)), Some((label, _))) =
            (name, factor, first_level, second_level, label)
        else {
            continue;
        };
        let factor = factor.name.clone();
        analyses.push(if first == "a" {
            Analysis::Difference {
                name,
                description,
                factor,
                a: x,
                b: y,
                label,
            }
        } else {
            Analysis::Paired {
                name,
                description,
                factor,
                watched: x,
                unwatched: y,
                label,
            }
        });
    }
    analyses
}

fn req_regex(ctx: &mut Ctx<'_>, table: &Table<'_, '_>, key: &str) -> Option<Regex> {
    if table.get(key).is_none() {
        table.missing(ctx, key, "a regular expression");
        return None;
    }
    opt_regex(ctx, table, key).ok().flatten()
}

/// `Ok(None)` when absent, `Err(())` when present but invalid (already reported).
fn opt_regex(ctx: &mut Ctx<'_>, table: &Table<'_, '_>, key: &str) -> Result<Option<Regex>, ()> {
    if table.get(key).is_none() {
        return Ok(None);
    }
    let Some((pattern, span)) = table.opt_str(ctx, key) else {
        return Err(());
    };
    match Regex::new(&pattern) {
        Ok(regex) => Ok(Some(regex)),
        Err(error) => {
            // The regex crate's message spans several lines with a caret drawing; the last
            // line holds the actual complaint.
            let reason = error.to_string();
            let reason = reason
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid")
                .trim()
                .trim_start_matches("error: ")
                .to_owned();
            ctx.error(
                span,
                format!("`{key}` in {} is not a valid regex: {reason}", table.name),
            );
            Err(())
        }
    }
}

/// The prefix of the labels `--monitor-policy` adds, which no detector may use.
pub const MONITOR_LABEL_PREFIX: &str = "monitor_";

/// The file operations a `file_mutated` detector can name.
const FILE_OPS: &[(&str, FileOp)] = &[
    ("create", FileOp::Create),
    ("write", FileOp::Write),
    ("close_write", FileOp::CloseWrite),
    ("delete", FileOp::Delete),
    ("rename", FileOp::Rename),
    ("attrib", FileOp::Attrib),
    ("mkdir", FileOp::MakeDir),
    ("rmdir", FileOp::RemoveDir),
];

/// The network operations a `network_used` detector can name.
const NET_OPS: &[(&str, NetOp)] = &[
    ("connect", NetOp::Connect),
    ("bind", NetOp::Bind),
    ("listen", NetOp::Listen),
    ("sendto", NetOp::SendTo),
];

/// Signals by name, as `init_signalled` takes them (without `SIG`).
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ABRT", 6),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
];

/// An optional array of names from `choices`: `Some(None)` when absent, `None` after an
/// error (reported).
fn opt_names<T: Copy>(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    key: &str,
    choices: &[(&str, T)],
) -> Option<Option<Vec<T>>> {
    let present = table.get(key).is_some();
    let Some(names) = table.opt_str_array(ctx, key) else {
        return if present { None } else { Some(None) };
    };
    let mut values = Vec::new();
    let mut ok = true;
    for (name, span) in names {
        match choices.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => values.push(*value),
            None => {
                ok = false;
                let expected: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                ctx.error(
                    span,
                    format!(
                        "unknown {key} entry \"{}\", expected one of: {}",
                        echo(&name),
                        expected.join(", ")
                    ),
                );
            }
        }
    }
    if ok && values.is_empty() {
        let span = table.get(key).map_or(table.key_span(key), |v| v.span());
        ctx.error(span, format!("`{key}` is empty"));
        return None;
    }
    ok.then_some(Some(values))
}

/// `path = "glob"` or `path = ["glob", ...]` of an event detector: relative globs are under
/// the home, absolute ones anywhere in the sandbox.
fn req_path_pattern(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    key: &str,
) -> Option<crate::observed::PathPattern> {
    let Some(value) = table.get(key) else {
        table.missing(ctx, key, "a glob or an array of globs");
        return None;
    };
    let globs: Vec<(String, std::ops::Range<usize>)> = match value.get_ref() {
        DeValue::String(_) => vec![table.req_str(ctx, key)?],
        DeValue::Array(_) => table.opt_str_array(ctx, key)?,
        _ => {
            table.wrong_type(ctx, key, value, "a glob or an array of globs");
            return None;
        }
    };
    if globs.is_empty() {
        ctx.error(value.span(), format!("`{key}` is empty"));
        return None;
    }
    let mut compiled = Vec::new();
    let mut ok = true;
    for (glob, span) in globs {
        if glob.split('/').any(|c| c == "..") {
            ctx.error(span, format!("`{key}` {glob:?} may not contain `..`"));
            ok = false;
            continue;
        }
        let relative = glob.trim_start_matches('/');
        match glob::compile(relative) {
            Ok(regex) => {
                let regex = if glob.starts_with('/') {
                    match Regex::new(&format!("^/{}", &regex.as_str()[1..])) {
                        Ok(regex) => regex,
                        Err(e) => {
                            ctx.error(span, format!("`{key}` {glob:?}: {e}"));
                            ok = false;
                            continue;
                        }
                    }
                } else {
                    regex
                };
                compiled.push((glob, regex));
            }
            Err(message) => {
                ctx.error(span, format!("`{key}` in {}: {message}", table.name));
                ok = false;
            }
        }
    }
    ok.then(|| crate::observed::PathPattern::new(compiled))
}

fn req_glob(ctx: &mut Ctx<'_>, table: &Table<'_, '_>, key: &str) -> Option<(String, Regex)> {
    let (glob, span) = table.req_str(ctx, key)?;
    match glob::compile(&glob) {
        Ok(regex) => Some((glob, regex)),
        Err(message) => {
            ctx.error(span, format!("`{key}` in {}: {message}", table.name));
            None
        }
    }
}

fn names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}
