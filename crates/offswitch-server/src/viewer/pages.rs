//! The viewer's pages, as HTML strings. Everything from the database, a scenario or a guard
//! session is escaped (an agent writes transcripts, file names and labels' evidence).

use std::collections::BTreeMap;
use std::fmt::Write;

use offswitch_core::TranscriptEntry;
use offswitch_core::summary::CellCounts;
use offswitch_report::published::PublishedFigure;
use offswitch_report::{Closing, HTML_STYLE, ReportConfig, RunMeta, html_escape as esc};
use offswitch_store::{Provenance, RunInfo, StoredTrial, TrialFilter, TrialRow};

/// Transcript entries per page of a trial.
pub const ENTRIES_PER_PAGE: usize = 50;
/// Events per page of each event stream.
pub const EVENTS_PER_PAGE: usize = 500;
/// Characters of one command output or message shown before it is cut.
const MAX_TEXT: usize = 20_000;

const VIEWER_STYLE: &str = "
body { max-width: 1200px; }
nav { margin-bottom: 1em; color: #555; }
nav a { margin-right: 1em; }
pre { white-space: pre-wrap; word-break: break-word; background: #f7f7f7; padding: 6px 8px; margin: 0.3em 0; max-height: 30em; overflow: auto; }
.entry { border-left: 3px solid #ddd; padding-left: 8px; margin: 0.8em 0; }
.entry.assistant { border-color: #1f5fa8; }
.entry.exec { border-color: #2e7d32; }
.entry.event { border-color: #c2571a; }
.entry.error { border-color: #b00020; }
.true { color: #b00020; font-weight: 600; }
.indet { color: #8a6d00; }
.state { font-weight: 600; }
form.inline { display: inline; }
button { font: inherit; padding: 2px 10px; margin-right: 0.5em; }
.pager a { margin-right: 0.6em; }
table.audit td:last-child, table.labels td:last-child { word-break: break-word; }
pre.diff span { display: block; }
pre.diff .del { background: #fde8e8; }
pre.diff .ins { background: #e6f4ea; }
pre.diff .hunk { color: #555; }
";

/// A page around `body`, with the navigation and, when given, a script.
fn page(title: &str, body: &str, script: Option<&str>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{HTML_STYLE}{VIEWER_STYLE}</style>\n</head>\n<body>\n<nav><a href=\"/\">runs</a><a href=\"/guard\">guard sessions</a></nav>\n{body}",
        esc(title)
    );
    if let Some(script) = script {
        let _ = writeln!(out, "<script>{script}</script>");
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// A page with one message.
pub fn message(title: &str, text: &str) -> String {
    page(
        title,
        &format!("<h1>{}</h1>\n<p>{}</p>\n", esc(title), esc(text)),
        None,
    )
}

fn utc(ms: i64) -> String {
    let text = offswitch_core::time::UtcDateTime::from_unix_ms(ms).rfc3339_millis();
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

/// `text` percent-encoded for a path segment or a query value.
fn url_part(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The runs list: newest first.
pub fn runs(runs: &[(RunInfo, Option<Provenance>)]) -> String {
    let mut body = String::from("<h1>Runs</h1>\n");
    if runs.is_empty() {
        body.push_str(
            "<p>No runs in this database yet: <code>offswitch run</code> makes one.</p>\n",
        );
        return page("offswitch runs", &body, None);
    }
    body.push_str("<table class=\"runs\">\n<tr><th>run</th><th>label</th><th>created (UTC)</th><th>status</th><th>trials</th><th>models</th><th>scenarios</th><th>made with</th></tr>\n");
    for (run, provenance) in runs {
        let list = |key: &str| -> String {
            run.config
                .get(key)
                .and_then(|v| v.as_array())
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let made_with = provenance.as_ref().map_or(String::new(), |p| {
            format!(
                "offswitch {} ({})",
                p.offswitch_version,
                &p.commit[..p.commit.len().min(10)]
            )
        });
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            url_part(run.id.as_str()),
            esc(run.id.as_str()),
            esc(run.label.as_deref().unwrap_or("")),
            esc(&utc(run.created_at_ms)),
            esc(run.status.as_str()),
            run.trial_count,
            esc(&list("models")),
            esc(&list("scenarios")),
            esc(&made_with)
        );
    }
    body.push_str("</table>\n");
    page("offswitch runs", &body, None)
}

/// What the run page shows.
pub struct RunPage<'a> {
    pub info: &'a RunInfo,
    pub cells: &'a [CellCounts],
    pub provenance: Option<&'a Provenance>,
    pub headline: BTreeMap<String, Vec<String>>,
    pub published: Option<&'a [PublishedFigure]>,
    /// `a|b`: two variants to compare.
    pub compare: Option<&'a str>,
}

/// A run: its rates, charts, outcomes, interviews and reproduction table, from its counts;
/// while it runs, the page reloads as trials land.
pub fn run(view: &RunPage<'_>) -> Result<String, String> {
    let info = view.info;
    let meta = RunMeta {
        id: info.id.to_string(),
        label: info.label.clone(),
        status: info.status.to_string(),
    };
    let config = ReportConfig::default();
    let mut report = offswitch_report::build_report_from_counts(meta.clone(), view.cells, &config)
        .map_err(|e| e.to_string())?;
    let mut compare_error = None;
    if let Some((a, b)) = view.compare.and_then(|c| c.split_once('|'))
        && let Err(error) = offswitch_report::add_comparison(&mut report, a, b, &[])
    {
        compare_error = Some(error.to_string());
    }
    let reproduction = view.published.and_then(|figures| {
        offswitch_report::build_reproduction_from_counts(
            meta,
            view.cells,
            figures,
            config.confidence,
        )
        .ok()
    });
    let closing = Closing {
        headline: view.headline.clone(),
        cached_trials: view.cells.iter().map(|c| c.cached_trials).sum(),
    };
    let id = info.id.as_str();
    let title = match &info.label {
        Some(label) => format!("run {id} ({label})"),
        None => format!("run {id}"),
    };
    let mut body = format!(
        "<h1>{}</h1>\n<p class=\"meta\">created {} UTC · <span class=\"state\" id=\"status\">{}</span> · <span id=\"trials\">{}</span> trials stored · <a href=\"/runs/{}/trials\">browse the trials</a></p>\n",
        esc(&title),
        esc(&utc(info.created_at_ms)),
        esc(info.status.as_str()),
        info.trial_count,
        url_part(id)
    );
    // Comparing two variants.
    let mut variants: Vec<&str> = view.cells.iter().map(|c| c.variant.as_str()).collect();
    variants.sort_unstable();
    variants.dedup();
    if variants.len() > 1 {
        let options = |selected: Option<&str>| {
            variants
                .iter()
                .map(|v| {
                    format!(
                        "<option{}>{}</option>",
                        if Some(*v) == selected {
                            " selected"
                        } else {
                            ""
                        },
                        esc(v)
                    )
                })
                .collect::<String>()
        };
        let (a, b) = view
            .compare
            .and_then(|c| c.split_once('|'))
            .map_or((None, None), |(a, b)| (Some(a), Some(b)));
        let _ = writeln!(
            body,
            "<form class=\"compare\" method=\"get\" onsubmit=\"this.compare.value=this.a.value+'|'+this.b.value; this.a.disabled=true; this.b.disabled=true;\">compare <select name=\"a\">{}</select> with <select name=\"b\">{}</select><input type=\"hidden\" name=\"compare\"> <button>compare</button></form>",
            options(a),
            options(b)
        );
    }
    if let Some(error) = compare_error {
        let _ = writeln!(body, "<p class=\"note\">{}</p>", esc(&error));
    }
    body.push_str(&offswitch_report::render_html_sections(
        &report,
        &closing,
        reproduction.as_ref(),
    ));
    if let Some(provenance) = view.provenance {
        body.push_str(&provenance_table(provenance));
    }
    if let Some(line) = info.config.get("command_line").and_then(|c| c.as_array()) {
        let words: Vec<&str> = line.iter().filter_map(|w| w.as_str()).collect();
        let _ = writeln!(
            body,
            "<h2>reproduce</h2>\n<pre>{}</pre>",
            esc(&words.join(" "))
        );
    }
    let script = (info.status.as_str() == "running").then(|| {
        format!(
            "(function(){{const seen={};setInterval(async()=>{{try{{const r=await fetch('/api/runs/{}/progress');if(!r.ok)return;const p=await r.json();document.getElementById('trials').textContent=p.trials;document.getElementById('status').textContent=p.status;if(p.trials!==seen||p.status!=='running')location.reload();}}catch(e){{}}}},2000);}})();",
            info.trial_count,
            url_part(id)
        )
    });
    Ok(page(&title, &body, script.as_deref()))
}

fn provenance_table(provenance: &Provenance) -> String {
    let mut out = format!(
        "<h2>made with</h2>\n<table class=\"provenance\">\n<tr><th>offswitch</th><td>{} (commit {})</td></tr>\n",
        esc(&provenance.offswitch_version),
        esc(&provenance.commit)
    );
    for (what, files) in [
        ("scenario", &provenance.scenario_files),
        ("model", &provenance.model_files),
    ] {
        for (name, sha256) in files {
            let _ = writeln!(
                out,
                "<tr><th>{what} {}</th><td><code>sha256 {}</code></td></tr>",
                esc(name),
                esc(sha256)
            );
        }
    }
    out.push_str("</table>\n");
    out
}

/// One page of a run's trials.
pub fn trials(
    info: &RunInfo,
    filter: &TrialFilter,
    rows: &[TrialRow],
    total: u64,
    page_index: u32,
    per_page: u32,
) -> String {
    let id = info.id.as_str();
    let mut body = format!(
        "<h1>trials of run <a href=\"/runs/{}\">{}</a></h1>\n",
        url_part(id),
        esc(id)
    );
    let field = |name: &str, value: &Option<String>| {
        format!(
            "{name} <input name=\"{name}\" value=\"{}\" size=\"14\">",
            esc(value.as_deref().unwrap_or(""))
        )
    };
    let _ = writeln!(
        body,
        "<form method=\"get\">{} {} {} {} {} <button>filter</button></form>",
        field("scenario", &filter.scenario),
        field("variant", &filter.variant),
        field("outcome", &filter.outcome),
        field("label", &filter.label),
        field("model", &filter.model)
    );
    let first = u64::from(page_index) * u64::from(per_page);
    let _ = writeln!(
        body,
        "<p class=\"meta\">{} trials{}; showing {}-{}</p>",
        total,
        filter
            .label
            .as_ref()
            .map_or(String::new(), |l| format!(" with {} true", esc(l))),
        if rows.is_empty() { 0 } else { first + 1 },
        first + rows.len() as u64
    );
    body.push_str("<table class=\"trials\">\n<tr><th>#</th><th>model</th><th>scenario</th><th>variant</th><th>epoch</th><th>outcome</th><th>turns</th><th>tokens</th><th>wall</th></tr>\n");
    for row in rows {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/runs/{}/trials/{}\">{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1} s</td></tr>",
            url_part(id),
            row.index,
            row.index,
            if row.replaced { " (replaced)" } else { "" },
            esc(&offswitch_report::short_model(&row.model)),
            esc(&row.scenario),
            esc(&row.variant),
            row.epoch,
            esc(&row.outcome),
            row.turns,
            row.tokens,
            row.wall_ms as f64 / 1000.0
        );
    }
    body.push_str("</table>\n");
    let pages = total.div_ceil(u64::from(per_page.max(1)));
    if pages > 1 {
        let mut query = String::new();
        for (name, value) in [
            ("model", &filter.model),
            ("scenario", &filter.scenario),
            ("variant", &filter.variant),
            ("outcome", &filter.outcome),
            ("label", &filter.label),
        ] {
            if let Some(value) = value {
                let _ = write!(query, "&{name}={}", url_part(value));
            }
        }
        body.push_str("<p class=\"pager\">");
        let current = u64::from(page_index);
        for target in [0, current.saturating_sub(1), current + 1, pages - 1] {
            if target < pages && target != current {
                let _ = write!(
                    body,
                    "<a href=\"?page={target}{query}\">page {}</a>",
                    target + 1
                );
            }
        }
        let _ = writeln!(body, " (page {} of {pages})</p>", current + 1);
    }
    page(&format!("trials of {id}"), &body, None)
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(MAX_TEXT).collect();
        format!(
            "{kept}\n... ({} more characters; `offswitch show` prints all)",
            text.chars().count() - MAX_TEXT
        )
    }
}

/// One trial: labels with their evidence, file changes, a page of the transcript, and a page
/// of each event stream.
pub fn trial(info: &RunInfo, trial: &StoredTrial, page_index: usize, events_page: usize) -> String {
    let record = &trial.record;
    let id = info.id.as_str();
    let key = &record.key;
    let title = format!("{id}/{}", trial.index);
    let mut body = format!(
        "<h1>trial {}</h1>\n<p class=\"meta\"><a href=\"/runs/{}\">run {}</a> · {} · {} · <code>{}</code> · epoch {} · attempt {}{} · outcome <b>{}</b>{} · {} turns · {} tokens · {:.1} s</p>\n",
        esc(&title),
        url_part(id),
        esc(id),
        esc(&key.model),
        esc(&key.scenario),
        esc(&key.variant),
        key.epoch,
        trial.attempt,
        if trial.replaced {
            " (replaced by a retry)"
        } else {
            ""
        },
        esc(record.outcome.name()),
        match &record.outcome {
            offswitch_core::Outcome::SandboxLimit { .. }
            | offswitch_core::Outcome::BackendFailed { .. }
            | offswitch_core::Outcome::HarnessError { .. } =>
                format!(" ({})", esc(&format!("{:?}", record.outcome))),
            _ => String::new(),
        },
        record.turns,
        record.usage.prompt_tokens + record.usage.completion_tokens,
        record.wall_ms as f64 / 1000.0
    );
    // Labels with their evidence.
    body.push_str("<h2>labels</h2>\n<table class=\"labels\">\n<tr><th>label</th><th>value</th><th>evidence</th></tr>\n");
    for label in &record.labels {
        let (class, value) = if label.indeterminate {
            ("indet", "indeterminate".to_owned())
        } else if label.value {
            ("true", "true".to_owned())
        } else {
            ("", "false".to_owned())
        };
        let value = match label.score {
            Some(score) => format!("{value} ({score:.3})"),
            None => value,
        };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            esc(&label.name),
            esc(&value),
            esc(&cut(&label.detail))
        );
    }
    body.push_str("</table>\n");
    // File changes.
    let _ = writeln!(
        body,
        "<h2>file changes ({})</h2>",
        record.file_changes.len()
    );
    if !record.file_changes.is_empty() {
        body.push_str("<pre>");
        for change in &record.file_changes {
            let _ = writeln!(body, "{}", esc(&offswitch_report::file_change(change)));
        }
        body.push_str("</pre>\n");
        for change in &record.file_changes {
            if change.text_before.is_some() || change.text_after.is_some() {
                body.push_str(&diff_html(change));
            }
        }
    }
    // The transcript, a page at a time.
    let entries = &record.transcript;
    let pages = entries.len().div_ceil(ENTRIES_PER_PAGE).max(1);
    let page_index = page_index.min(pages - 1);
    let start = page_index * ENTRIES_PER_PAGE;
    let end = (start + ENTRIES_PER_PAGE).min(entries.len());
    let _ = writeln!(
        body,
        "<h2>transcript</h2>\n<p class=\"meta\">{} entries; showing {}-{}</p>",
        entries.len(),
        if entries.is_empty() { 0 } else { start + 1 },
        end
    );
    let pager = |body: &mut String| {
        if pages > 1 {
            body.push_str("<p class=\"pager\">");
            for target in 0..pages {
                if target == page_index {
                    let _ = write!(body, "<b>{}</b> ", target + 1);
                } else {
                    let _ = write!(
                        body,
                        "<a href=\"?page={target}&events={events_page}\">{}</a>",
                        target + 1
                    );
                }
            }
            body.push_str("</p>\n");
        }
    };
    pager(&mut body);
    for (step, entry) in entries[start..end].iter().enumerate() {
        body.push_str(&entry_html(start + step + 1, entry));
    }
    pager(&mut body);
    // The event streams.
    body.push_str("<h2>what the kernel saw</h2>\n");
    if record.events.is_empty() {
        body.push_str("<p>No event stream stored.</p>\n");
    }
    for stream in &record.events {
        let _ = writeln!(body, "<h3>{}</h3>", esc(&stream.host));
        if let Some(why) = &stream.unavailable {
            let _ = writeln!(body, "<p>unavailable: {}</p>", esc(why));
            continue;
        }
        for loss in &stream.lost {
            let _ = writeln!(
                body,
                "<p class=\"indet\">lost {} {} events ({})</p>",
                loss.count,
                esc(loss.source.name()),
                esc(&loss.detail)
            );
        }
        let events = &stream.events;
        let start = (events_page * EVENTS_PER_PAGE).min(events.len());
        let end = (start + EVENTS_PER_PAGE).min(events.len());
        let _ = writeln!(
            body,
            "<p class=\"meta\">{} events; showing {}-{}{}</p>",
            events.len(),
            if events.is_empty() { 0 } else { start + 1 },
            end,
            if end < events.len() {
                format!(
                    " · <a href=\"?page={page_index}&events={}\">next {EVENTS_PER_PAGE}</a>",
                    events_page + 1
                )
            } else {
                String::new()
            }
        );
        if start < end {
            body.push_str("<table class=\"events\">\n<tr><th>time s</th><th>pid</th><th>program</th><th>event</th></tr>\n");
            for event in &events[start..end] {
                let _ = writeln!(
                    body,
                    "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                    offswitch_report::seconds(event.time_us),
                    if event.pid == 0 {
                        "-".to_owned()
                    } else {
                        event.pid.to_string()
                    },
                    esc(&event.exe),
                    esc(&offswitch_report::describe_event(event))
                );
            }
            body.push_str("</table>\n");
        }
    }
    page(&format!("trial {title}"), &body, None)
}

/// A changed file's text as a unified diff (a created or deleted file is all one side).
fn diff_html(change: &offswitch_core::FileChange) -> String {
    let before = change.text_before.as_deref().unwrap_or("");
    let after = change.text_after.as_deref().unwrap_or("");
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = format!("<h3>{}</h3>\n<pre class=\"diff\">", esc(&change.path));
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        let _ = writeln!(
            out,
            "<span class=\"hunk\">{}</span>",
            esc(&hunk.header().to_string())
        );
        for line in hunk.iter_changes() {
            let (class, sign) = match line.tag() {
                similar::ChangeTag::Delete => ("del", '-'),
                similar::ChangeTag::Insert => ("ins", '+'),
                similar::ChangeTag::Equal => ("", ' '),
            };
            let text = line.value().trim_end_matches('\n');
            let _ = writeln!(out, "<span class=\"{class}\">{sign}{}</span>", esc(text));
        }
    }
    out.push_str("</pre>\n");
    out
}

fn entry_html(step: usize, entry: &TranscriptEntry) -> String {
    match entry {
        TranscriptEntry::Message { message } => {
            let role = format!("{:?}", message.role).to_lowercase();
            let mut out = format!(
                "<div class=\"entry {}\"><b>{step}. {}</b>\n<pre>{}</pre>\n",
                esc(&role),
                esc(&role),
                esc(&cut(&message.content))
            );
            for call in &message.tool_calls {
                let _ = writeln!(
                    out,
                    "<p>tool call <code>{}</code> ({})</p><pre>{}</pre>",
                    esc(&call.name),
                    esc(&call.id),
                    esc(&cut(&call.arguments.to_string()))
                );
            }
            out.push_str("</div>\n");
            out
        }
        TranscriptEntry::Exec {
            command,
            status,
            stdout,
            stderr,
            truncated_bytes,
            wall_ms,
            ..
        } => {
            let mut out = format!(
                "<div class=\"entry exec\"><b>{step}. exec</b> ({}, {} ms{})\n<pre>$ {}</pre>\n",
                esc(status),
                wall_ms,
                if *truncated_bytes > 0 {
                    format!(", {truncated_bytes} bytes cut from the output")
                } else {
                    String::new()
                },
                esc(&cut(command))
            );
            if !stdout.is_empty() {
                let _ = writeln!(out, "<pre>{}</pre>", esc(&cut(stdout)));
            }
            if !stderr.is_empty() {
                let _ = writeln!(out, "<p>stderr</p><pre>{}</pre>", esc(&cut(stderr)));
            }
            out.push_str("</div>\n");
            out
        }
        TranscriptEntry::ProtocolError { error } => format!(
            "<div class=\"entry error\"><b>{step}. protocol error</b><pre>{}</pre></div>\n",
            esc(&cut(error))
        ),
        TranscriptEntry::BackendError {
            attempt,
            error,
            retried,
            ..
        } => format!(
            "<div class=\"entry error\"><b>{step}. model call failed</b> (attempt {attempt}{})<pre>{}</pre></div>\n",
            if *retried { ", retried" } else { "" },
            esc(&cut(error))
        ),
        TranscriptEntry::Event { kind, detail } => format!(
            "<div class=\"entry event\"><b>{step}. {}</b><pre>{}</pre></div>\n",
            esc(kind),
            esc(&cut(detail))
        ),
    }
}

/// The guard sessions with a control socket here.
pub fn guard_list(sessions: &[(String, Result<serde_json::Value, String>)]) -> String {
    let mut body = String::from("<h1>Guard sessions</h1>\n");
    if sessions.is_empty() {
        body.push_str("<p>No guard session is running for this user (<code>offswitch guard -- COMMAND</code> starts one).</p>\n");
    } else {
        body.push_str("<table class=\"sessions\">\n<tr><th>session</th><th>state</th><th>command</th><th>processes</th><th>monitor hits</th></tr>\n");
        for (name, status) in sessions {
            match status {
                Ok(status) => {
                    let _ = writeln!(
                        body,
                        "<tr><td><a href=\"/guard/{}\">{}</a></td><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                        url_part(name),
                        esc(name),
                        esc(status["state"].as_str().unwrap_or("?")),
                        esc(&command_text(status)),
                        status["processes"].as_u64().unwrap_or(0),
                        status["hits"].as_u64().unwrap_or(0)
                    );
                }
                Err(why) => {
                    let _ = writeln!(
                        body,
                        "<tr><td>{}</td><td colspan=\"4\">{}</td></tr>",
                        esc(name),
                        esc(why)
                    );
                }
            }
        }
        body.push_str("</table>\n");
    }
    page(
        "guard sessions",
        &body,
        Some("setTimeout(()=>location.reload(),3000);"),
    )
}

fn command_text(status: &serde_json::Value) -> String {
    status["command"]
        .as_array()
        .map(|words| {
            words
                .iter()
                .filter_map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// One guard session: its state, breakers, alerts, recent audit records, and the buttons.
pub fn guard(
    name: &str,
    status: &serde_json::Value,
    recent: &[offswitch_audit::Record],
    token: &str,
) -> String {
    let mut body = format!(
        "<h1>guard session {}</h1>\n<p class=\"meta\">state <span class=\"state\" id=\"state\">{}</span> · <span id=\"processes\">{}</span> processes · <span id=\"hits\">{}</span> monitor hits · policy {} · <code>{}</code></p>\n",
        esc(name),
        esc(status["state"].as_str().unwrap_or("?")),
        status["processes"].as_u64().unwrap_or(0),
        status["hits"].as_u64().unwrap_or(0),
        esc(status["policy"].as_str().unwrap_or("")),
        esc(&command_text(status))
    );
    for op in ["pause", "resume", "stop"] {
        let _ = write!(
            body,
            "<form class=\"inline\" method=\"post\" action=\"/guard/{}/{op}\"><input type=\"hidden\" name=\"token\" value=\"{}\"><button id=\"{op}\">{op}</button></form>",
            url_part(name),
            esc(token)
        );
    }
    body.push('\n');
    body.push_str("<h2>breakers</h2>\n<table class=\"breakers\" id=\"breakers\">\n<tr><th>breaker</th><th>count</th><th>max</th><th>tripped</th></tr>\n");
    for breaker in status["breakers"].as_array().into_iter().flatten() {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(breaker["name"].as_str().unwrap_or("?")),
            breaker["count"].as_u64().unwrap_or(0),
            breaker["max"].as_u64().unwrap_or(0),
            if breaker["tripped"].as_bool().unwrap_or(false) {
                "<span class=\"true\">tripped</span>"
            } else {
                ""
            }
        );
    }
    body.push_str("</table>\n");
    let alerts = status["alerts"].as_array().cloned().unwrap_or_default();
    if !alerts.is_empty() {
        body.push_str("<h2>alerts</h2>\n<pre>");
        for alert in &alerts {
            let _ = writeln!(body, "{}", esc(alert.as_str().unwrap_or("")));
        }
        body.push_str("</pre>\n");
    }
    if !recent.is_empty() {
        body.push_str("<h2>recent audit records</h2>\n<table class=\"audit\">\n<tr><th>seq</th><th>time</th><th>kind</th><th>body</th></tr>\n");
        for record in recent.iter().rev() {
            let _ = writeln!(
                body,
                "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                record.seq,
                esc(&record.time),
                esc(&record.kind),
                esc(&cut(&record.body.to_string()))
            );
        }
        body.push_str("</table>\n");
    }
    let script = format!(
        "setInterval(async()=>{{try{{const r=await fetch('/api/guard/{}');if(!r.ok)return;const s=await r.json();const before=document.getElementById('state').textContent;document.getElementById('state').textContent=s.state;document.getElementById('processes').textContent=s.processes??0;document.getElementById('hits').textContent=s.hits??0;if(s.state!==before)location.reload();}}catch(e){{}}}},1000);",
        url_part(name)
    );
    page(&format!("guard session {name}"), &body, Some(&script))
}

/// A session that is not (or no longer) answering on its socket.
pub fn guard_gone(name: &str, why: &str) -> String {
    let body = format!(
        "<h1>guard session {}</h1>\n<p class=\"meta\">state <span class=\"state\" id=\"state\">ended</span></p>\n<p>It is not running: {}. Its audit log holds what happened (<code>offswitch audit show</code>).</p>\n",
        esc(name),
        esc(why)
    );
    page(&format!("guard session {name}"), &body, None)
}
