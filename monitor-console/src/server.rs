//! The console's HTTP server: the page (embedded), the JSON API it reads, the downloads, the live feed
//! (server-sent events) and the policy changes. Every request passes [`guard`] first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use futures_util::stream::{self, Stream};
use monitor_hunt::devices::BLOCKED;
use monitor_hunt::time::now_micros;
use monitor_hunt::{QueryResult, TimelineFilter};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::auth;
use crate::feed::{Feed, FeedMessage};
use crate::policy::{PolicyAccess, PolicyEdit};
use crate::render;
use crate::source::{HuntFailure, Source};

/// At most this many rows of a query go to the page; a download has up to [`DOWNLOAD_ROWS`].
pub const PAGE_ROWS: usize = 5_000;
pub const DOWNLOAD_ROWS: usize = 1_000_000;
/// The longest query accepted, in bytes.
pub const MAX_QUERY: usize = 64 * 1024;
/// At most this many events per list.
pub const MAX_EVENTS: usize = 2_000;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Scripts and styles from the console only, no inline code, nothing framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What every handler shares.
pub struct AppState {
    pub source: Arc<Source>,
    pub token: Option<String>,
    pub policy: Option<PolicyAccess>,
    pub stale_after: Duration,
    pub feed: Feed,
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .route("/api/info", get(info))
        .route("/api/devices", get(devices))
        .route("/api/events", get(events))
        .route("/api/hunt", get(download).post(hunt))
        .route("/api/feed", get(feed))
        .route("/api/policy", get(show_policy).post(edit_policy))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Who may ask what (see [`auth`]), and the headers every answer carries.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    let refused = match &state.token {
        None if !host.is_some_and(auth::is_loopback_host) => Some(problem(
            StatusCode::FORBIDDEN,
            "this console answers loopback names only (start it with --token to reach it otherwise)",
        )),
        None => None,
        Some(expected) => {
            let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
            let given = auth::token_of(text(header::AUTHORIZATION), cookies);
            let from_link = request.uri().path() == "/"
                && request.uri().query().is_some_and(|q| {
                    q.split('&').any(|pair| {
                        pair.strip_prefix("token=").is_some_and(|t| auth::same_secret(t, expected))
                    })
                });
            if from_link {
                // The link's token becomes a cookie, and leaves the address bar (and the history). Lax, so
                // that a link from mail or chat works; writes need JSON from the console's own origin anyway.
                let cookie = format!("{}={expected}; HttpOnly; SameSite=Lax; Path=/", auth::COOKIE);
                let mut response = Redirect::to("/").into_response();
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
                return secure(response, true);
            }
            (!given.is_some_and(|t| auth::same_secret(t, expected))).then(|| {
                problem(
                    StatusCode::UNAUTHORIZED,
                    "open the console with its token: http://HOST:PORT/?token=...",
                )
            })
        }
    };
    if let Some(response) = refused {
        return secure(response, true);
    }
    if request.method() == axum::http::Method::POST {
        let json_body = text(header::CONTENT_TYPE).is_some_and(|c| c.starts_with("application/json"));
        if !json_body || !auth::same_origin(text(header::ORIGIN), host) {
            return secure(
                problem(StatusCode::FORBIDDEN, "a change needs a JSON body from the console's own page"),
                true,
            );
        }
    }
    let api = request.uri().path().starts_with("/api/");
    secure(next.run(request).await, api)
}

fn secure(mut response: Response, no_store: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if no_store {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// Runs `work` on a blocking thread (the stores block).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(problem(StatusCode::BAD_GATEWAY, format!("{e:#}"))),
        Err(e) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, format!("the reader failed: {e}"))),
    }
}

async fn info(State(state): State<Shared>) -> Response {
    Json(json!({
        "source": state.source.describe(),
        "fleet": state.source.is_fleet(),
        "policy": state.policy.as_ref().map(|p| json!({ "editable": p.editable })),
        "staleAfterSeconds": state.stale_after.as_secs(),
        "blocked": BLOCKED,
    }))
    .into_response()
}

async fn devices(State(state): State<Shared>) -> Response {
    let (source, stale_after) = (Arc::clone(&state.source), state.stale_after);
    match blocking(move || source.devices(now_micros(), stale_after)).await {
        Ok(result) => Json(render::result(&result)).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    device: Option<String>,
    /// Only this ActionType; `blocked` for the Blocked view.
    action: Option<String>,
    limit: Option<usize>,
    /// Seconds.
    since: Option<u64>,
}

async fn events(State(state): State<Shared>, Query(query): Query<EventsQuery>) -> Response {
    let source = Arc::clone(&state.source);
    let filter = TimelineFilter {
        since: query.since.map(Duration::from_secs),
        limit: Some(query.limit.unwrap_or(200).clamp(1, MAX_EVENTS)),
        action: query
            .action
            .filter(|a| !a.is_empty())
            .map(|a| if a == "blocked" { BLOCKED.to_string() } else { a }),
        device: query.device.filter(|d| !d.is_empty()),
        ..TimelineFilter::default()
    };
    match blocking(move || source.events(&filter, now_micros())).await {
        Ok(events) => Json(render::events(&events)).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct HuntBody {
    query: String,
}

/// Runs `query` for at most `cap` rows (a `take` after it, so the store never hands over more); answers the
/// rows and whether there were more.
async fn run_query(state: &AppState, query: String, cap: usize) -> Result<(QueryResult, bool), Response> {
    if query.len() > MAX_QUERY {
        return Err(problem(StatusCode::PAYLOAD_TOO_LARGE, format!("a query is at most {MAX_QUERY} bytes")));
    }
    let source = Arc::clone(&state.source);
    let ran = tokio::task::spawn_blocking(move || {
        let limited = format!("{query}\n| take {}", cap + 1);
        match source.hunt(&limited, now_micros()) {
            // An error past the query's own text (it ends where no `take` may follow): the query alone
            // says what is wrong with it.
            Err(HuntFailure::Query { error, .. }) if error.span.start >= query.len() => {
                source.hunt(&query, now_micros())
            }
            other => other,
        }
    })
    .await;
    match ran {
        Ok(Ok(mut result)) => {
            let more = result.rows.len() > cap;
            result.rows.truncate(cap);
            Ok((result, more))
        }
        Ok(Err(failure)) => {
            let status = match failure {
                HuntFailure::Query { .. } => StatusCode::BAD_REQUEST,
                HuntFailure::Store(_) => StatusCode::BAD_GATEWAY,
            };
            Err((status, Json(render::failure(&failure))).into_response())
        }
        Err(e) => Err(problem(StatusCode::INTERNAL_SERVER_ERROR, format!("the query failed: {e}"))),
    }
}

async fn hunt(State(state): State<Shared>, Json(body): Json<HuntBody>) -> Response {
    match run_query(&state, body.query, PAGE_ROWS).await {
        Ok((result, more)) => {
            let mut answer = render::result(&result);
            answer["truncated"] = json!(more);
            Json(answer).into_response()
        }
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct DownloadQuery {
    q: String,
    format: Option<String>,
}

/// Writes a result in one of `monitor hunt`'s formats.
type Writer = fn(&QueryResult, &mut dyn std::io::Write) -> std::io::Result<()>;

/// The whole result as a file: CSV, or JSON lines (as `monitor hunt --format csv|json` prints it).
async fn download(State(state): State<Shared>, Query(query): Query<DownloadQuery>) -> Response {
    let (content_type, extension, write): (_, _, Writer) = match query.format.as_deref().unwrap_or("csv") {
        "csv" => ("text/csv; charset=utf-8", "csv", monitor_hunt::write_csv),
        "json" => ("application/x-ndjson; charset=utf-8", "jsonl", monitor_hunt::write_json_lines),
        other => return problem(StatusCode::BAD_REQUEST, format!("format {other:?}: csv or json")),
    };
    let result = match run_query(&state, query.q, DOWNLOAD_ROWS).await {
        Ok((_, true)) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "more than {DOWNLOAD_ROWS} rows: narrow the query, or run it with monitor hunt --format"
                ),
            );
        }
        Ok((result, false)) => result,
        Err(response) => return response,
    };
    let written = tokio::task::spawn_blocking(move || {
        let mut body = Vec::new();
        write(&result, &mut body).map(|()| body)
    })
    .await;
    let body = match written {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return problem(StatusCode::INTERNAL_SERVER_ERROR, format!("write the result: {e}")),
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, format!("write the result: {e}")),
    };
    let disposition = format!("attachment; filename=\"hunt.{extension}\"");
    ([(header::CONTENT_TYPE, content_type.to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response()
}

/// The live feed: `ready` when the page should load its lists, then one `event` per new event. (An
/// event without data is never dispatched by browsers: `ready` carries a word.)
async fn feed(State(state): State<Shared>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (receiver, ready) = state.feed.subscribe();
    let first = ready.then(|| Ok(SseEvent::default().event("ready").data("ready")));
    let rest = stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(FeedMessage::Ready) => SseEvent::default().event("ready").data("ready"),
            Ok(FeedMessage::Event(json)) => SseEvent::default().event("event").data(json.as_str()),
            Ok(FeedMessage::Error(text)) => SseEvent::default().event("failure").data(text.as_str()),
            // The page fell behind: it reloads its lists.
            Err(broadcast::error::RecvError::Lagged(_)) => SseEvent::default().event("ready").data("ready"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), receiver))
    });
    Sse::new(stream::iter(first).chain(rest)).keep_alive(KeepAlive::default())
}

async fn show_policy(State(state): State<Shared>) -> Response {
    let Some(access) = &state.policy else {
        return problem(StatusCode::NOT_FOUND, "no fleet policy: start the console with --policy nats://...");
    };
    match crate::policy::show(access).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => problem(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}

async fn edit_policy(State(state): State<Shared>, Json(edit): Json<PolicyEdit>) -> Response {
    let Some(access) = state.policy.as_ref().filter(|p| p.editable) else {
        return problem(
            StatusCode::FORBIDDEN,
            "policy changes need the console started with --allow-policy-edits",
        );
    };
    let change = match edit.check() {
        Ok(change) => change,
        Err(reason) => return problem(StatusCode::BAD_REQUEST, format!("{reason}; nothing was changed")),
    };
    match crate::policy::apply(access, &change).await {
        Ok(revision) => {
            tracing::info!("console: policy change {edit:?}, revision {revision}");
            Json(json!({ "revision": revision })).into_response()
        }
        Err(e) => problem(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}
