//! `Streams.*`: what the local log store holds, for launchers that show a game's logs.

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::daemon::jsonrpc::{RpcError, code};
use crate::daemon::notifications::{Log, Notification};
use crate::daemon::router::{Ctx, Router};
use crate::report::Level;
use crate::streaming::names::DEFAULT_PROJECT;
use crate::streaming::store::{self, StoredEntry, StoredStream};

pub(super) fn register(r: &mut Router) {
    r.method("Streams.List", list)
        .doc("The streams of the local log store in a project, optionally under a path prefix.")
        .errors(&[code::DATABASE_UNAVAILABLE]);
    r.method("Streams.Read", read)
        .doc(
            "One page of a stream's entries from `fromIndex` (at most 1000, or `limit`); \
             `nextIndex` is where the next page starts, `terminal` says the stream has ended \
             and every entry was read. A path that is not `<prefix>/+/<name>`, or names no \
             stream, is -32602.",
        )
        .errors(&[code::DATABASE_UNAVAILABLE]);
    r.method("Streams.Follow", follow)
        .doc(
            "Sends a stream's entries from `fromIndex` as `Streams.Entries` notifications as \
             they arrive, and answers once the stream has ended and every entry was sent. A \
             stream a `Process.Run` child announced (`Streams.Opened`) is waited for. \
             Cancelled (499) by closing the connection or by `Operation.Cancel`; a restart in \
             place ends it with -32005 and `data.nextIndex` (follow again on the same \
             connection).",
        )
        .notifies::<EntriesNotification<'static>>()
        .notifies::<Log<'static>>()
        .errors(&[code::DATABASE_UNAVAILABLE, code::RESTARTING, code::OPERATION_CANCELLED]);
}

/// Most entries one `Streams.Read` returns, so a reply stays a reasonable size.
const MAX_READ: usize = 1000;
/// A `Streams.Read` page ends once its entries' data passes this (an entry may be 256 KiB).
const MAX_READ_BYTES: usize = 4 << 20;
/// Most streams one `Streams.List` returns (and the default): a store holds any number.
const MAX_LIST: usize = 1000;
/// A `Streams.List` page ends once its streams take about this much.
const MAX_LIST_BYTES: usize = 1 << 20;
/// How often `Streams.Follow` looks for new entries (writers may be other processes).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    /// Only streams whose path starts with this.
    #[schemars(example = &"butler/users/me/")]
    prefix: Option<String>,
    /// Default `butler`.
    project: Option<String>,
    /// Most streams in the reply (default and most: 1000); fewer when they are big.
    limit: Option<u64>,
    /// Where to go on from: a previous reply's `nextCursor`.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ListResult {
    streams: Vec<StoredStream>,
    /// Present when more streams may follow: pass it as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn list(ctx: Ctx, p: ListParams) -> Result<ListResult, RpcError> {
    let after = match p.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            RpcError::invalid_params(
                "Streams.List",
                format!("cursor {c:?} is not one a Streams.List reply gave"),
            )
            .with("field", "cursor")
        })?,
    };
    let limit = p.limit.map_or(MAX_LIST, |l| l.clamp(1, MAX_LIST as u64) as usize);
    let db = ctx.daemon().db().await?;
    let project = p.project.unwrap_or_else(|| DEFAULT_PROJECT.to_owned());
    let prefix = p.prefix.unwrap_or_default();
    let page = db
        .call(move |conn| {
            store::list_page(conn, &project, &prefix, after, limit, MAX_LIST_BYTES)
                .map_err(Into::into)
        })
        .await
        .map_err(RpcError::internal)?;
    Ok(ListResult { streams: page.streams, next_cursor: page.next_after.map(|id| id.to_string()) })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ReadParams {
    /// `<prefix>/+/<name>`.
    #[schemars(example = &"game/+/stdout")]
    path: String,
    /// Default `butler`.
    project: Option<String>,
    /// The first entry wanted (default 0).
    #[serde(default)]
    from_index: u64,
    /// At most this many entries (1..=1000, default 1000).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ReadResult {
    entries: Vec<EntryDto>,
    next_index: u64,
    terminal: bool,
    /// The stream was cut short: its writer died before ending it, and this page reaches the
    /// last entry it will ever have.
    abandoned: bool,
    /// The page ended at its limit (entries or bytes): more may be there at once.
    #[serde(skip)]
    full: bool,
}

/// One entry on the wire: text as a string when it is UTF-8 (lines keep their delimiters), any
/// other content (binary, datagrams, or text cut inside a character at close) as base64 `data`.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "StreamEntry")]
struct EntryDto {
    stream_index: u64,
    sequence: u64,
    /// Seconds since the stream's timestamp.
    time_offset: f64,
    /// The entry's text (a text stream's lines, with their delimiters).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(example = &"hello\n")]
    text: Option<String>,
    /// Base64 of any other content.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partial: Option<PartialDto>,
}

/// One piece of a datagram larger than an entry.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "PartialEntry")]
struct PartialDto {
    index: u32,
    size: u64,
    last: bool,
}

impl EntryDto {
    fn new(e: StoredEntry, text: bool) -> Self {
        let (text, data) = match (text, String::from_utf8(e.data)) {
            (true, Ok(s)) => (Some(s), None),
            (_, Ok(s)) => (None, Some(s.into_bytes())),
            (_, Err(e)) => (None, Some(e.into_bytes())),
        };
        EntryDto {
            stream_index: e.stream_index,
            sequence: e.sequence,
            time_offset: e.time_offset.as_secs_f64(),
            text,
            data: data.map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
            partial: e.partial.map(|p| PartialDto { index: p.index, size: p.size, last: p.last }),
        }
    }
}

/// One page of a stream from `from_index`, or `None` if there is no such stream.
async fn read_page(
    ctx: &Ctx,
    project: &str,
    path: &str,
    from_index: u64,
    limit: usize,
) -> Result<Option<ReadResult>, RpcError> {
    // A malformed path is the caller's mistake (-32602), not the store's.
    if crate::streaming::names::split_path(path).is_none() {
        return Err(RpcError::invalid_params(
            "Streams",
            format!("{path:?} is not a stream path (<prefix>/+/<name>)"),
        )
        .with("field", "path"));
    }
    let db = ctx.daemon().db().await?;
    let (project, path) = (project.to_owned(), path.to_owned());
    let found = db
        .call(move |conn| {
            let Some(stream) = store::find_stream(conn, &project, &path)? else {
                return Ok(None);
            };
            let entries =
                store::read_entries_bounded(conn, stream.id, from_index, limit, MAX_READ_BYTES)?;
            Ok(Some((stream, entries)))
        })
        .await
        .map_err(RpcError::internal)?;
    let Some((stream, entries)) = found else { return Ok(None) };
    let next_index = entries.last().map_or(from_index, |e| e.stream_index + 1);
    let full = entries.len() >= limit
        || entries.iter().map(|e| e.data.len()).sum::<usize>() >= MAX_READ_BYTES;
    let text = stream.stream_type == "text";
    let entries: Vec<EntryDto> = entries.into_iter().map(|e| EntryDto::new(e, text)).collect();
    // Terminal only once the reader has everything up to the terminal entry.
    let terminal = stream.terminal && stream.terminal_index.is_none_or(|t| next_index > t);
    let abandoned = stream.abandoned && next_index >= stream.entries;
    Ok(Some(ReadResult { entries, next_index, terminal, abandoned, full }))
}

fn no_stream(method: &str, path: &str) -> RpcError {
    RpcError::invalid_params(method, format!("no stream at {path}"))
}

async fn read(ctx: Ctx, p: ReadParams) -> Result<ReadResult, RpcError> {
    let project = p.project.as_deref().unwrap_or(DEFAULT_PROJECT);
    let limit = p.limit.unwrap_or(MAX_READ).clamp(1, MAX_READ);
    read_page(&ctx, project, &p.path, p.from_index, limit)
        .await?
        .ok_or_else(|| no_stream("Streams.Read", &p.path))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct FollowParams {
    /// `<prefix>/+/<name>`.
    #[schemars(example = &"game/+/stdout")]
    path: String,
    /// Default `butler`.
    project: Option<String>,
    /// The first entry wanted (default 0).
    #[serde(default)]
    from_index: u64,
}

/// New entries of the stream a `Streams.Follow` request follows, in order.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct EntriesNotification<'a> {
    path: &'a str,
    entries: Vec<EntryDto>,
}

impl Notification for EntriesNotification<'_> {
    const METHOD: &'static str = "Streams.Entries";
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct FollowResult {
    next_index: u64,
    terminal: bool,
    /// The follow ended because the stream's writer died before ending it (`terminal` is false).
    abandoned: bool,
}

/// Sends `Streams.Entries` notifications as entries arrive; answers once the stream has ended
/// and every entry was sent, or once it was cut short (`abandoned`: its writer died) and every
/// entry it has was sent. A stream announced by `Streams.Opened` is waited for. Cancelled (499)
/// when its connection closes or by `Operation.Cancel`.
async fn follow(ctx: Ctx, p: FollowParams) -> Result<FollowResult, RpcError> {
    let project = p.project.as_deref().unwrap_or(DEFAULT_PROJECT);
    let mut next = p.from_index;
    loop {
        let Some(page) = read_page(&ctx, project, &p.path, next, MAX_READ).await? else {
            // A stream a `Process.Run` child just opened may not be in the store yet: wait for
            // it. Any other path that is not there is an error, as for `Streams.Read`.
            if project == DEFAULT_PROJECT && ctx.daemon().is_announced(&p.path) {
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            return Err(no_stream("Streams.Follow", &p.path));
        };
        let caught_up = !page.full;
        next = page.next_index;
        if !page.entries.is_empty() {
            ctx.notify(EntriesNotification { path: &p.path, entries: page.entries }).await;
        }
        if page.terminal || page.abandoned {
            let abandoned = !page.terminal;
            if abandoned {
                let message = format!(
                    "{} was cut short: the process writing it died before ending it",
                    p.path
                );
                ctx.log(Level::Warning, &message).await;
            }
            return Ok(FollowResult { next_index: next, terminal: page.terminal, abandoned });
        }
        if caught_up {
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                // A follow could last forever; a restart in place does not wait for it.
                () = ctx.daemon().resting.cancelled() => return Err(restarting(&ctx, next).await),
            }
        }
    }
}

/// Ends a follow for a restart in place: a `Log` and an error both say to follow again from
/// `next` on this connection, which stays open.
async fn restarting(ctx: &Ctx, next: u64) -> RpcError {
    let message = format!(
        "the daemon is restarting into an update; call Streams.Follow again with fromIndex {next} (this connection stays open)"
    );
    ctx.log(Level::Warning, &message).await;
    RpcError::new(code::RESTARTING, message).with("nextIndex", next)
}
