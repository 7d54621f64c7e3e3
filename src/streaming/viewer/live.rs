//! Live updates: one watcher notices new data in the store, and server-sent-event bodies turn
//! that into stream-list updates and followed entries.
//!
//! The store may be written by other processes (`butler run`, the daemon), so the watcher polls
//! SQLite's `data_version`, which changes on every commit by another connection, and only then
//! re-reads the newest streams. Every event body waits on the watcher's snapshot, so a quiet
//! store costs one cheap pragma per poll whatever the number of open pages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

use super::api::{self, PageAt, StreamDto};
use crate::db::Db;
use crate::streaming::store;

/// A comment line sent on an idle event stream, so a vanished browser is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often open streams are checked for a writer that died.
const LIVENESS_RECHECK: Duration = Duration::from_secs(1);

/// The newest streams as of one change in the store (every new one wakes the followers, who
/// re-read their stream).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub streams: Vec<StreamDto>,
    /// Why the store could not be read, if it could not.
    pub error: Option<String>,
}

/// Starts the watcher; it stops with `stop`.
pub(crate) fn watch_store(
    db: Db,
    project: String,
    poll: Duration,
    stop: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> watch::Receiver<Arc<Snapshot>> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    tracker.spawn(async move {
        let mut seen: Option<i64> = None;
        let mut listed = std::time::Instant::now();
        loop {
            let project = project.clone();
            // A writer that dies changes nothing in the database, so while streams are open the
            // list is read again now and then to notice those that were cut short.
            let recheck =
                listed.elapsed() >= LIVENESS_RECHECK && tx.borrow().streams.iter().any(|s| s.open);
            let read = db
                .call(move |conn| {
                    let v = store::data_version(conn)?;
                    let streams = if seen == Some(v) && !recheck {
                        None
                    } else {
                        Some(api::list(conn, &project, "")?)
                    };
                    Ok((v, streams))
                })
                .await;
            match read {
                Ok((v, Some(streams))) => {
                    seen = Some(v);
                    listed = std::time::Instant::now();
                    tx.send_replace(Arc::new(Snapshot { streams, error: None }));
                }
                Ok((_, None)) => {}
                Err(e) => {
                    // Said once per distinct error; the next successful read clears it.
                    let error = Some(e.to_string());
                    if tx.borrow().error != error {
                        tracing::warn!("log viewer: reading the store: {e}");
                        let streams = tx.borrow().streams.clone();
                        tx.send_replace(Arc::new(Snapshot { streams, error }));
                    }
                    seen = None;
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
        }
    });
    rx
}

type Chunk = Result<Frame<Bytes>, Infallible>;

fn event(kind: &str, id: Option<u64>, data: &impl serde::Serialize) -> Chunk {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Ok(Frame::data(Bytes::from(format!("{id}event: {kind}\ndata: {json}\n\n"))))
}

fn comment(text: &str) -> Chunk {
    Ok(Frame::data(Bytes::from(format!(": {text}\n\n"))))
}

/// What a `streams` event carries: every stream on the first (`reset`), then only the streams that
/// are new or changed.
#[derive(serde::Serialize)]
struct StreamsEvent<'a> {
    project: &'a str,
    reset: bool,
    streams: Vec<&'a StreamDto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The stream list, kept current: `event: streams` with the whole list, then with changes.
pub(crate) fn streams_events(
    project: String,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Chunk> + Send + 'static {
    struct St {
        project: String,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        stop: CancellationToken,
        /// id → (entries, bytes, open) as last sent.
        sent: Option<HashMap<i64, (u64, u64, bool)>>,
        _permit: OwnedSemaphorePermit,
    }
    snapshots.mark_changed();
    let st = St { project, snapshots, stop, sent: None, _permit: permit };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            tokio::select! {
                () = st.stop.cancelled() => return None,
                changed = st.snapshots.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep(KEEPALIVE) => return Some((comment("keep-alive"), st)),
            }
            let snap = Arc::clone(&st.snapshots.borrow_and_update());
            let reset = st.sent.is_none();
            let sent = st.sent.get_or_insert_with(HashMap::new);
            let changed: Vec<&StreamDto> = snap
                .streams
                .iter()
                .filter(|s| sent.get(&s.id) != Some(&(s.entries, s.bytes, s.open)))
                .collect();
            if !reset && changed.is_empty() && snap.error.is_none() {
                continue;
            }
            sent.clear();
            sent.extend(snap.streams.iter().map(|s| (s.id, (s.entries, s.bytes, s.open))));
            let ev = StreamsEvent {
                project: &st.project,
                reset,
                streams: changed,
                error: snap.error.as_deref(),
            };
            let chunk = event("streams", None, &ev);
            return Some((chunk, st));
        }
    })
}

/// Why following stopped early, sent as `event: gone`.
#[derive(serde::Serialize)]
struct Gone<'a> {
    message: &'a str,
}

/// Everything from `from` on in the stream at `path`, as it arrives: `event: entries` (a page,
/// with the next index as the event id, so a reconnecting browser resumes where it was), then
/// `event: end` once the stream has ended. A stream not in the store yet is waited for.
pub(crate) fn follow_events(
    db: Db,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
    project: String,
    path: String,
    from: u64,
) -> impl Stream<Item = Chunk> + Send + 'static {
    struct St {
        db: Db,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        stop: CancellationToken,
        project: String,
        path: String,
        next: u64,
        /// Read the store before waiting (set after every change and every full page).
        dirty: bool,
        done: bool,
        _permit: OwnedSemaphorePermit,
    }
    let st = St {
        db,
        snapshots,
        stop,
        project,
        path,
        next: from,
        dirty: true,
        done: false,
        _permit: permit,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if st.dirty {
                st.dirty = false;
                let (project, path, next) = (st.project.clone(), st.path.clone(), st.next);
                let read = st
                    .db
                    .call(move |conn| {
                        Ok(api::page(conn, &project, &path, PageAt::From(next), api::PAGE_ENTRIES)?)
                    })
                    .await;
                match read {
                    Err(e) => {
                        st.done = true;
                        let msg = e.to_string();
                        return Some((event("gone", None, &Gone { message: &msg }), st));
                    }
                    Ok(None) => {} // not in the store yet: wait for it
                    Ok(Some(page)) => {
                        if (page.terminal || page.abandoned) && page.entries.is_empty() {
                            st.done = true;
                            return Some((event("end", Some(page.next), &page), st));
                        }
                        if !page.entries.is_empty() {
                            // More may be waiting right behind a full page.
                            st.dirty = true;
                            st.next = page.next;
                            return Some((event("entries", Some(page.next), &page), st));
                        }
                    }
                }
            }
            tokio::select! {
                () = st.stop.cancelled() => return None,
                changed = st.snapshots.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    st.dirty = true;
                }
                () = tokio::time::sleep(KEEPALIVE) => return Some((comment("keep-alive"), st)),
            }
        }
    })
}
