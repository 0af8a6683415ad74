//! `offswitch view`: a web viewer over a run database and the guard sessions running on this
//! machine, served on loopback.
//!
//! Every page is HTML made on the server (inline CSS and SVG, a few lines of JavaScript for
//! live updates, nothing fetched from elsewhere). Pages read bounded data: the runs list, a
//! run's counts per cell (`Store::cell_counts`, kept in the database, so a 100,000-trial run
//! opens like a small one), one page of a run's trials, one trial with its transcript shown a
//! page at a time. Access needs the token printed at start: given once in the URL, it becomes
//! a `SameSite=Strict` cookie; actions on guard sessions (pause, resume, stop) are POSTs that
//! carry it in the form as well, so another site cannot make a browser send them.

mod pages;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use offswitch_report::published::PublishedFigure;
use offswitch_store::{RunInfo, Store, StoreError, TrialFilter};
use serde::Deserialize;

/// The cookie that carries the access token after the first visit.
const COOKIE: &str = "offswitch_view";

/// Trials per page of a run's trial list.
const TRIALS_PER_PAGE: u32 = 100;

/// Scenario id -> its headline labels, for a run and the scenario ids of its cells (in any
/// order, repeated; the CLI resolves the run's scenario files).
pub type Headlines = dyn Fn(&RunInfo, &[String]) -> BTreeMap<String, Vec<String>> + Send + Sync;

/// What the viewer serves.
pub struct Viewer {
    /// The run database, opened once; requests take turns on it.
    pub store: Mutex<Store>,
    /// The access token (hex).
    pub token: String,
    /// Where the guard sessions' control sockets are (`offswitch_guard::control::control_dir`).
    pub guard_dir: PathBuf,
    /// Published figures shown beside the rates, when they were read.
    pub published: Option<Vec<PublishedFigure>>,
    pub headlines: Box<Headlines>,
}

/// A fresh access token: 32 random bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// The viewer's routes, every one behind the token.
pub fn router(viewer: Arc<Viewer>) -> Router {
    Router::new()
        .route("/", get(runs_page))
        .route("/runs/{run}", get(run_page))
        .route("/runs/{run}/trials", get(trials_page))
        .route("/runs/{run}/trials/{index}", get(trial_page))
        .route("/api/runs/{run}/progress", get(run_progress))
        .route("/guard", get(guard_list))
        .route("/guard/{session}", get(guard_page))
        .route("/api/guard/{session}", get(guard_status))
        .route("/guard/{session}/{op}", post(guard_op))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&viewer),
            authorize,
        ))
        .with_state(viewer)
}

/// Serve `viewer` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, viewer: Viewer) -> std::io::Result<()> {
    axum::serve(listener, router(Arc::new(viewer))).await
}

/// Let through requests that carry the token: in the cookie, or once in the query (`?token=`),
/// which sets the cookie and redirects to the same page without it.
async fn authorize(State(viewer): State<Arc<Viewer>>, request: Request, next: Next) -> Response {
    let cookie_ok = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same(value, &viewer.token));
    let query = request.uri().query().unwrap_or("");
    let given = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| value);
    if let Some(given) = given {
        if !same(given, &viewer.token) {
            return denied();
        }
        let rest: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with("token="))
            .collect();
        // Only a path of this server: `//host/...` would send the browser elsewhere.
        let path = request.uri().path();
        let mut location = if path.starts_with("//") {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        if !rest.is_empty() {
            location.push('?');
            location.push_str(&rest.join("&"));
        }
        let mut response = Redirect::to(&location).into_response();
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            viewer.token
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        return response;
    }
    if !cookie_ok {
        return denied();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // Nothing of a page is loaded from elsewhere, and no other site may frame it.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    // No address (with its run ids) leaves for another site; and not `no-referrer`, under
    // which a browser sends `Origin: null` with the page's own form posts.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Equal, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Html(pages::message(
            "Not authorized",
            "Open the address `offswitch view` printed when it started: it carries the access token.",
        )),
    )
        .into_response()
}

/// A failure as a page: an unknown run or trial is 404, the rest 500.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let title = if self.0 == StatusCode::NOT_FOUND {
            "Not found"
        } else {
            "Error"
        };
        (self.0, Html(pages::message(title, &self.1))).into_response()
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        let status = match error {
            StoreError::UnknownRun(_) | StoreError::UnknownTrial(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, error.to_string())
    }
}

/// Run `work` on the store, off the async threads.
async fn with_store<T: Send + 'static>(
    viewer: &Arc<Viewer>,
    work: impl FnOnce(&Store) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let viewer = Arc::clone(viewer);
    tokio::task::spawn_blocking(move || {
        let store = viewer.store.lock().map_err(|_| {
            Failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store lock is poisoned".into(),
            )
        })?;
        work(&store)
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn runs_page(State(viewer): State<Arc<Viewer>>) -> Result<Html<String>, Failure> {
    let runs = with_store(&viewer, |store| {
        let runs = store.runs()?;
        let mut rows = Vec::with_capacity(runs.len());
        for run in runs.into_iter().rev() {
            let provenance = store.provenance(&run.id)?;
            rows.push((run, provenance));
        }
        Ok(rows)
    })
    .await?;
    Ok(Html(pages::runs(&runs)))
}

#[derive(Deserialize, Default)]
struct RunQuery {
    /// Two variants to compare, `a|b`.
    compare: Option<String>,
}

async fn run_page(
    State(viewer): State<Arc<Viewer>>,
    Path(run): Path<String>,
    Query(query): Query<RunQuery>,
) -> Result<Html<String>, Failure> {
    let page_viewer = Arc::clone(&viewer);
    let page = with_store(&viewer, move |store| {
        let info = store.run(&run)?;
        let cells = store.cell_counts(&run)?;
        let provenance = store.provenance(&run)?;
        let scenarios: Vec<String> = cells.iter().map(|c| c.scenario.clone()).collect();
        let headline = (page_viewer.headlines)(&info, &scenarios);
        pages::run(&pages::RunPage {
            info: &info,
            cells: &cells,
            provenance: provenance.as_ref(),
            headline,
            published: page_viewer.published.as_deref(),
            compare: query.compare.as_deref(),
        })
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e))
    })
    .await?;
    Ok(Html(page))
}

#[derive(Deserialize, Default)]
struct TrialsQuery {
    page: Option<u32>,
    model: Option<String>,
    scenario: Option<String>,
    variant: Option<String>,
    outcome: Option<String>,
    label: Option<String>,
    replaced: Option<String>,
}

async fn trials_page(
    State(viewer): State<Arc<Viewer>>,
    Path(run): Path<String>,
    Query(query): Query<TrialsQuery>,
) -> Result<Html<String>, Failure> {
    let page = query.page.unwrap_or(0);
    let filter = TrialFilter {
        model: query.model.filter(|s| !s.is_empty()),
        scenario: query.scenario.filter(|s| !s.is_empty()),
        variant: query.variant.filter(|s| !s.is_empty()),
        outcome: query.outcome.filter(|s| !s.is_empty()),
        label: query.label.filter(|s| !s.is_empty()),
        with_replaced: query.replaced.is_some_and(|s| s == "1"),
    };
    let html = with_store(&viewer, move |store| {
        let info = store.run(&run)?;
        let (rows, total) = store.trial_rows(&run, &filter, page, TRIALS_PER_PAGE)?;
        Ok(pages::trials(
            &info,
            &filter,
            &rows,
            total,
            page,
            TRIALS_PER_PAGE,
        ))
    })
    .await?;
    Ok(Html(html))
}

#[derive(Deserialize, Default)]
struct TrialQuery {
    /// Page of the transcript (0-based).
    page: Option<usize>,
    /// Page of each event stream (0-based).
    events: Option<usize>,
}

async fn trial_page(
    State(viewer): State<Arc<Viewer>>,
    Path((run, index)): Path<(String, u32)>,
    Query(query): Query<TrialQuery>,
) -> Result<Html<String>, Failure> {
    let html = with_store(&viewer, move |store| {
        let info = store.run(&run)?;
        let trial = store.trial(&format!("{run}/{index}"))?;
        Ok(pages::trial(
            &info,
            &trial,
            query.page.unwrap_or(0),
            query.events.unwrap_or(0),
        ))
    })
    .await?;
    Ok(Html(html))
}

async fn run_progress(
    State(viewer): State<Arc<Viewer>>,
    Path(run): Path<String>,
) -> Result<Response, Failure> {
    let info = with_store(&viewer, move |store| Ok(store.run(&run)?)).await?;
    Ok(axum::Json(serde_json::json!({
        "run": info.id.as_str(),
        "status": info.status.as_str(),
        "trials": info.trial_count,
    }))
    .into_response())
}

async fn guard_list(State(viewer): State<Arc<Viewer>>) -> Html<String> {
    let sessions = offswitch_guard::control::list(&viewer.guard_dir).await;
    Html(pages::guard_list(&sessions))
}

async fn guard_page(
    State(viewer): State<Arc<Viewer>>,
    Path(session): Path<String>,
) -> Result<Html<String>, Failure> {
    check_session_name(&session)?;
    let status = offswitch_guard::control::request(
        &viewer.guard_dir,
        &session,
        offswitch_guard::control::Op::Status,
    )
    .await;
    let status = match status {
        Ok(status) => status,
        // Ended (its socket is gone with it), or never there.
        Err(why) => return Ok(Html(pages::guard_gone(&session, &why))),
    };
    let for_log = status.clone();
    let recent = tokio::task::spawn_blocking(move || recent_audit(&for_log))
        .await
        .unwrap_or_default();
    Ok(Html(pages::guard(
        &session,
        &status,
        &recent,
        &viewer.token,
    )))
}

async fn guard_status(
    State(viewer): State<Arc<Viewer>>,
    Path(session): Path<String>,
) -> Result<Response, Failure> {
    check_session_name(&session)?;
    let status = offswitch_guard::control::request(
        &viewer.guard_dir,
        &session,
        offswitch_guard::control::Op::Status,
    )
    .await
    .unwrap_or_else(|e| serde_json::json!({"session": session, "state": "gone", "error": e}));
    Ok(axum::Json(status).into_response())
}

#[derive(Deserialize)]
struct OpForm {
    token: String,
}

async fn guard_op(
    State(viewer): State<Arc<Viewer>>,
    Path((session, op)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<OpForm>,
) -> Result<Response, Failure> {
    check_session_name(&session)?;
    // The form's token as well as the cookie: a page of another site cannot read it.
    if !same(&form.token, &viewer.token) || !same_origin(&headers) {
        return Ok(denied());
    }
    let op = match op.as_str() {
        "pause" => offswitch_guard::control::Op::Pause,
        "resume" => offswitch_guard::control::Op::Resume,
        "stop" => offswitch_guard::control::Op::Stop,
        other => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no operation {other:?}: pause, resume or stop"),
            ));
        }
    };
    let answer = offswitch_guard::control::request(&viewer.guard_dir, &session, op)
        .await
        .map_err(|e| Failure(StatusCode::BAD_GATEWAY, e))?;
    if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(Failure(StatusCode::BAD_GATEWAY, error.to_owned()));
    }
    Ok(Redirect::to(&format!("/guard/{session}")).into_response())
}

/// A browser's Origin, when it sends one, must be this server's (any loopback port is not
/// enough: another local server could host a page).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin == format!("http://{host}")
}

/// Session names are socket file names: no path in them.
fn check_session_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Failure(StatusCode::NOT_FOUND, "no such session".into()))
    }
}

/// Records shown of a session's audit log: the last ones.
const RECENT_RECORDS: usize = 50;

/// The last records of a session's audit log, when its status names the log: read through
/// once, keeping only the last [`RECENT_RECORDS`].
fn recent_audit(status: &serde_json::Value) -> Vec<offswitch_audit::Record> {
    let Some(path) = status.get("audit").and_then(|a| a.as_str()) else {
        return Vec::new();
    };
    let Ok(records) = offswitch_audit::records(std::path::Path::new(path)) else {
        return Vec::new();
    };
    let mut recent = std::collections::VecDeque::with_capacity(RECENT_RECORDS);
    for record in records.flatten() {
        if recent.len() == RECENT_RECORDS {
            recent.pop_front();
        }
        recent.push_back(record);
    }
    recent.into()
}
