//! Reading a scenario file: TOML with spans, walked by hand so that every problem in the file is
//! reported with its line and column, not only the first one serde would stop at.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use offswitch_core::{FileChangeKind, ToolParam, ToolSpec};
use regex::Regex;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Diagnostic, LineIndex, ScenarioError};
use crate::glob;
use crate::model::{
    Detector, DetectorKind, ExecTool, Expr, Factor, FileSpec, Level, Limits, Mechanics, Scenario,
    Source, Stream, Task,
};
use crate::template::{Template, TemplateError};

type Value<'i> = Spanned<DeValue<'i>>;

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
                        key.get_ref(),
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
];

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
    let prompts = root
        .req_table(ctx, "prompts", "[prompts]")
        .and_then(|t| read_prompts(ctx, &t, &defaults));
    let files = read_files(ctx, &root);
    let tools = read_tools(ctx, &root);
    let mechanics = match root.opt_table(ctx, "mechanics", "[mechanics]") {
        Some(table) => read_mechanics(ctx, &table, &tools, &files),
        None => Mechanics::default(),
    };
    let factors = read_factors(ctx, &root, &defaults);
    let limits = root
        .req_table(ctx, "limits", "[limits]")
        .and_then(|t| read_limits(ctx, &t));
    let task = root
        .opt_table(ctx, "task", "[task]")
        .and_then(|t| read_task(ctx, &t));
    let detectors = read_detectors(ctx, &root, &tools, task.is_some());

    let (id, id_span) = id?;
    let (system, user) = prompts?;
    Some(Scenario {
        path: ctx.path.to_owned(),
        id_position: ctx.position(&id_span),
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
    })
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
    table
        .string_map(ctx)
        .into_iter()
        .map(|(name, span, value)| (name, (value, span)))
        .collect()
}

fn read_prompts(
    ctx: &mut Ctx<'_>,
    table: &Table<'_, '_>,
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Option<(Template, Template)> {
    table.check_keys(ctx, &["system", "user"]);
    let system = table
        .req_str(ctx, "system")
        .and_then(|(text, span)| read_template(ctx, "system", &text, span, defaults));
    let user = table
        .req_str(ctx, "user")
        .and_then(|(text, span)| read_template(ctx, "user", &text, span, defaults));
    Some((system?, user?))
}

fn read_template(
    ctx: &mut Ctx<'_>,
    which: &str,
    text: &str,
    span: Range<usize>,
    defaults: &BTreeMap<String, (String, Range<usize>)>,
) -> Option<Template> {
    let (template, holes, errors) = Template::parse(text);
    let mut ok = errors.is_empty();
    for error in errors {
        match error {
            TemplateError::Unclosed { written } => {
                let at = ctx.span_within(&span, &written);
                ctx.error(
                    at,
                    format!("the {which} prompt has `{{{{` without a closing `}}}}`"),
                );
            }
            TemplateError::BadName { written } => {
                let at = ctx.span_within(&span, &written);
                ctx.error(
                    at,
                    format!(
                        "the {which} prompt has {written:?}, expected `{{{{name}}}}` with a name of letters, digits, `_` and `-`"
                    ),
                );
            }
        }
    }
    for hole in holes {
        if !defaults.contains_key(&hole.name) {
            ok = false;
            let at = ctx.span_within(&span, &hole.written);
            ctx.error(
                at,
                format!(
                    "the {which} prompt uses undefined variable `{}`; declare it in [defaults] (declared: {})",
                    hole.name,
                    names(defaults.keys())
                ),
            );
        }
    }
    ok.then_some(template)
}

fn read_files(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<FileSpec> {
    let mut files: Vec<FileSpec> = Vec::new();
    for table in root.array_of_tables(ctx, "files") {
        table.check_keys(ctx, &["path", "contents", "mode"]);
        let path = table
            .req_str(ctx, "path")
            .filter(|(path, span)| check_relative_path(ctx, span.clone(), path));
        let contents = table.req_str(ctx, "contents");
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
        if let (Some((path, _)), Some((contents, _)), Some(mode)) = (path, contents, mode) {
            files.push(FileSpec {
                path,
                contents,
                mode,
            });
        }
    }
    files
}

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
) -> Mechanics {
    table.check_keys(ctx, &["shutdown", "submit", "exec"]);
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
    mechanics
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

fn read_limits(ctx: &mut Ctx<'_>, table: &Table<'_, '_>) -> Option<Limits> {
    table.check_keys(
        ctx,
        &[
            "max_turns",
            "max_tokens",
            "wall_time_secs",
            "exec_timeout_secs",
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
    Some(Limits {
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
    "all",
    "any",
    "not",
];

fn read_detectors(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    tools: &[ToolSpec],
    has_task: bool,
) -> Vec<Detector> {
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
                read_detector_kind(ctx, &table, &kind, tools, has_task, &defined)
            }
            Some((kind, span)) => {
                ctx.error(
                    span,
                    format!(
                        "unknown detector kind {kind:?}, expected one of: {}",
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
    tools: &[ToolSpec],
    has_task: bool,
    defined: &BTreeSet<String>,
) -> Option<DetectorKind> {
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
                            format!("unknown stream {s:?}, expected stdout, stderr or both"),
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
            table.check_keys(ctx, &allowed(&["path", "changes"]));
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
                                        "unknown change kind {name:?}, expected one of: {}",
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
                glob,
                path,
                kinds: kinds?,
            })
        }
        "file_content_matches" => {
            table.check_keys(ctx, &allowed(&["path", "pattern"]));
            let path = req_glob(ctx, table, "path");
            let pattern = req_regex(ctx, table, "pattern");
            let (glob, path) = path?;
            Some(DetectorKind::FileContentMatches {
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
                        "unknown label {name:?}; a detector can only use labels defined above it (defined: {})",
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
                        format!("unknown operator `{other}`, expected all, any or not"),
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
