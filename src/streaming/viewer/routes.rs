//! The viewer's HTTP face: the token and Host checks every request passes, the routes, and the
//! responses (the embedded page, JSON, server-sent events).
//!
//! Everything lives under `/<token>/`, so the page's relative URLs carry the token without any
//! script knowing it, and a request without it gets 403. The Host header must name the address
//! the viewer listens on (no DNS-rebinding), and every response forbids framing, sniffing,
//! caching and referrers.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::State;
use super::api::{self, PageAt};
use super::live;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// Longest `path` or `prefix` parameter (a prefix and a name are at most 4096 bytes each).
const MAX_PATH_PARAM: usize = 8200;

/// Answers one request; never fails (errors become 4xx/5xx responses).
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut resp = route(&state, &req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    Ok(resp)
}

async fn route(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    if !host_allowed(state, req) {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: this viewer answers only to the address it listens on\n",
        );
    }
    let Some(rest) = strip_token(&state.token, req.uri().path()) else {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: open the URL that `butler logs web` printed (it carries the access token)\n",
        );
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match rest {
        // `/<token>` without the slash: relative URLs need it.
        None => redirect(&format!("/{}/", state.token)),
        Some("") => asset(INDEX_HTML, "text/html; charset=utf-8"),
        Some("app.js") => asset(APP_JS, "text/javascript; charset=utf-8"),
        Some("style.css") => asset(STYLE_CSS, "text/css; charset=utf-8"),
        Some("api/streams") => list(state, &query).await,
        Some("api/entries") => entries(state, &query).await,
        Some("api/streams/live") => streams_live(state),
        Some("api/follow") => follow(state, &query, last_event_id(req)),
        Some(_) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `Some(None)` for `/<token>`, `Some(Some(rest))` for `/<token>/rest`, `None` without the token.
fn strip_token<'a>(token: &str, path: &'a str) -> Option<Option<&'a str>> {
    let path = path.strip_prefix('/')?;
    let (candidate, rest) = match path.split_once('/') {
        Some((t, rest)) => (t, Some(rest)),
        None => (path, None),
    };
    constant_time_eq(candidate.as_bytes(), token.as_bytes()).then_some(rest)
}

/// Compares without an early exit, so timing says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b) {
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn host_allowed(state: &State, req: &Request<Incoming>) -> bool {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|h| state.hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(h)))
}

fn last_event_id(req: &Request<Incoming>) -> Option<u64> {
    req.headers().get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

/// Why a request is refused: a status and what to tell the person.
struct Refusal(StatusCode, String);

impl Refusal {
    fn bad(message: String) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, message)
    }

    fn response(self) -> Response<Body> {
        text(self.0, &format!("{}\n", self.1))
    }
}

/// Query parameters, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            form_urlencoded::parse(q.as_bytes())
                .take(16)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A bounded string parameter.
    fn path(&self, key: &str) -> Result<Option<&str>, Refusal> {
        match self.get(key) {
            Some(v) if v.len() > MAX_PATH_PARAM => {
                Err(Refusal::bad(format!("{key} is longer than {MAX_PATH_PARAM} bytes")))
            }
            v => Ok(v),
        }
    }

    fn number(&self, key: &str) -> Result<Option<u64>, Refusal> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                Refusal::bad(format!("{key}={v:?} is not a non-negative whole number"))
            }),
        }
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", msg.to_owned())
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    full(StatusCode::OK, content_type, body)
}

fn json(value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(v) => full(StatusCode::OK, "application/json", v),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding the answer: {e}\n")),
    }
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = text(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn event_stream(
    body: impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>>
    + Send
    + 'static,
) -> Response<Body> {
    let mut r = Response::new(StreamBody::new(body).boxed_unsync());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r
}

/// A live slot, or 503 when every one is taken (each open page holds one or two).
fn live_slot(state: &State) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
    Arc::clone(&state.live).try_acquire_owned().map_err(|_| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views are open; close some tabs".into(),
        )
    })
}

#[derive(Serialize)]
struct ListAnswer<'a> {
    project: &'a str,
    streams: Vec<api::StreamDto>,
    /// The list holds only the newest streams.
    limit: usize,
}

async fn list(state: &Arc<State>, q: &Query) -> Response<Body> {
    let prefix = match q.path("prefix") {
        Ok(p) => p.unwrap_or("").to_owned(),
        Err(r) => return r.response(),
    };
    let project = state.project.clone();
    let read = state.db.call(move |conn| Ok(api::list(conn, &project, &prefix)?)).await;
    match read {
        Ok(streams) => {
            json(&ListAnswer { project: &state.project, streams, limit: api::LIST_LIMIT })
        }
        Err(e) => store_error(&e),
    }
}

fn store_error(e: &crate::db::DbError) -> Response<Body> {
    text(StatusCode::SERVICE_UNAVAILABLE, &format!("the log store cannot be read: {e}\n"))
}

fn stream_path<'q>(q: &'q Query) -> Result<Cow<'q, str>, Refusal> {
    let path =
        q.path("path")?.ok_or_else(|| Refusal::bad("path=<prefix>/+/<name> is required".into()))?;
    if crate::streaming::names::split_path(path).is_none() {
        return Err(Refusal::bad(format!("{path:?} is not a stream path (<prefix>/+/<name>)")));
    }
    Ok(Cow::Borrowed(path))
}

async fn entries(state: &Arc<State>, q: &Query) -> Response<Body> {
    let parsed: Result<_, Refusal> = (|| {
        let path = stream_path(q)?.into_owned();
        let at = match (q.number("from")?, q.number("before")?) {
            (Some(_), Some(_)) => {
                return Err(Refusal::bad("give from= or before=, not both".into()));
            }
            (Some(f), None) => PageAt::From(f),
            (None, Some(b)) => PageAt::Before(b),
            (None, None) => PageAt::Tail,
        };
        let limit = q
            .number("limit")?
            .map_or(api::PAGE_ENTRIES, |l| l.min(api::MAX_PAGE_ENTRIES as u64) as usize);
        Ok((path, at, limit))
    })();
    let (path, at, limit) = match parsed {
        Ok(p) => p,
        Err(r) => return r.response(),
    };
    let project = state.project.clone();
    let p2 = path.clone();
    match state.db.call(move |conn| Ok(api::page(conn, &project, &p2, at, limit)?)).await {
        Ok(Some(page)) => json(&page),
        Ok(None) => {
            text(StatusCode::NOT_FOUND, &format!("no stream {path} in project {}\n", state.project))
        }
        Err(e) => store_error(&e),
    }
}

fn streams_live(state: &Arc<State>) -> Response<Body> {
    match live_slot(state) {
        Ok(permit) => event_stream(live::streams_events(
            state.project.clone(),
            state.snapshots.clone(),
            state.stop.clone(),
            permit,
        )),
        Err(r) => r.response(),
    }
}

fn follow(state: &Arc<State>, q: &Query, last_event_id: Option<u64>) -> Response<Body> {
    let parsed: Result<_, Refusal> =
        (|| Ok((stream_path(q)?.into_owned(), q.number("from")?.unwrap_or(0))))();
    let (path, from) = match parsed {
        Ok(p) => p,
        Err(r) => return r.response(),
    };
    let permit = match live_slot(state) {
        Ok(p) => p,
        Err(r) => return r.response(),
    };
    // A browser reconnecting after a drop says where it was.
    let from = last_event_id.unwrap_or(from);
    event_stream(live::follow_events(
        state.db.clone(),
        state.snapshots.clone(),
        state.stop.clone(),
        permit,
        state.project.clone(),
        path,
        from,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_be_the_first_path_segment_exactly() {
        let t = "abc123";
        assert_eq!(strip_token(t, "/abc123/"), Some(Some("")));
        assert_eq!(strip_token(t, "/abc123/api/streams"), Some(Some("api/streams")));
        assert_eq!(strip_token(t, "/abc123"), Some(None));
        for bad in ["/", "", "/abc12/", "/abc1234/", "/ABC123/", "/api/streams", "//abc123/"] {
            assert_eq!(strip_token(t, bad), None, "{bad:?}");
        }
    }
}
