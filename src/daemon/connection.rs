//! One connection: read lines, authenticate, run requests concurrently, write replies in order of
//! completion through a single writer, and route the peer's replies to our own requests.
//!
//! For a restart in place a connection comes to rest instead of closing: it answers what it has
//! read, finishes a half-read line, and once nothing is in flight and nothing is buffered, hands
//! back its two halves with what it carries ([`Carried`]) for the next process to serve.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::framing::{Frame, LineReader};
use super::jsonrpc::{self, Incoming, Outgoing, Response, RpcError, code};
use super::notifications::{MetaFlowEstablished, Notification};
use super::router::Ctx;
use super::state::Daemon;

type PendingCalls = HashMap<i64, oneshot::Sender<Result<Value, RpcError>>>;

/// Before authentication a peer is worth almost nothing: `Meta.Authenticate` is about 200 bytes,
/// so longer lines are refused, and a peer that sends this many messages other than a valid
/// `Meta.Authenticate` is dropped (its replies stay few, so a peer that never reads cannot make
/// the writer block and the connection outlive its deadline).
pub(super) const UNAUTHENTICATED_MAX_LINE: usize = 1024;
const UNAUTHENTICATED_MAX_ERRORS: u32 = 8;
/// The most requests one batch may hold.
pub(super) const MAX_BATCH: usize = 1000;
/// How long the authentication deadline's reply may take to go out before the connection is
/// dropped whatever the writer is doing.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// Replies the reader answers itself are gathered up to this size, or until it would wait for
/// more input, and go to the writer together: a pipelining client then costs one hand-over
/// between tasks per read, not one per request.
const REPLY_BATCH: usize = 64 * 1024;

/// The sending side of a connection, shared by its reader and every request running on it.
pub(crate) struct Peer {
    pub id: u64,
    out: mpsc::Sender<Vec<u8>>,
    /// Messages handed to the writer task and not yet written: while any are, the reader's own
    /// replies queue behind them rather than overtake them (see [`Connection::flush_replies`]).
    queued: Arc<AtomicUsize>,
    /// Drops the connection at once, even mid-write: a peer past its authentication deadline.
    kill: CancellationToken,
    pending: Mutex<PendingCalls>,
    /// Woken each time a call to the peer starts waiting for its answer.
    call_sent: Notify,
    next_call_id: AtomicI64,
    log_traffic: bool,
}

impl Peer {
    /// Queues one line for the writer; a closed connection drops it silently (nobody to tell).
    async fn send_line(&self, line: Vec<u8>) {
        if self.log_traffic {
            traffic(self.id, "->", &line);
        }
        self.send_lines(line).await;
    }

    /// Queues whole lines, already logged, for the writer.
    async fn send_lines(&self, lines: Vec<u8>) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        tokio::select! {
            biased;
            _ = self.out.send(lines) => {}
            _ = self.kill.cancelled() => {}
        }
    }

    pub(crate) async fn notify(&self, method: &str, params: impl Serialize) {
        let msg = Outgoing { jsonrpc: "2.0", id: None, method, params };
        self.send_line(jsonrpc::to_line(&msg)).await;
    }

    /// Sends a request to the peer with our own id sequence (from 0) and waits for the reply.
    pub(crate) async fn call(
        &self,
        method: &str,
        params: impl Serialize,
        cancel: &CancellationToken,
    ) -> Result<Value, RpcError> {
        let id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending_calls().insert(id, tx);
        self.call_sent.notify_waiters();
        let msg = Outgoing { jsonrpc: "2.0", id: Some(id), method, params };
        self.send_line(jsonrpc::to_line(&msg)).await;
        let reply = tokio::select! {
            r = rx => r.unwrap_or_else(|_| Err(RpcError::cancelled())),
            _ = cancel.cancelled() => Err(RpcError::cancelled()),
        };
        self.pending_calls().remove(&id);
        reply
    }

    fn resolve(&self, id: &Value, result: Result<Value, RpcError>) {
        let waiter = id.as_i64().and_then(|id| self.pending_calls().remove(&id));
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => tracing::warn!(conn = self.id, %id, "Reply to a request we did not send"),
        }
    }

    fn pending_calls(&self) -> std::sync::MutexGuard<'_, PendingCalls> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a connection carries across a restart in place, besides its socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Carried {
    pub(super) authenticated: bool,
    /// The id of its `Meta.Flow` request, which stays open: the connection is an event channel.
    pub(super) flow: Option<Value>,
}

/// A connection that came to rest for a restart in place.
pub(super) struct Rested<R, W> {
    pub(super) reader: R,
    pub(super) writer: W,
    pub(super) carried: Carried,
}

/// Serves one connection until the peer closes it, it fails to authenticate in time, the daemon
/// shuts down (requests still running are cancelled), or it comes to rest for a restart.
///
/// A `Meta.Flow` connection carried over is registered before this returns, so news broadcast
/// right after a restart reaches it.
pub(super) fn serve<R, W>(
    daemon: Arc<Daemon>,
    conn_id: u64,
    reader: R,
    writer: W,
    carried: Carried,
) -> impl std::future::Future<Output = Option<Rested<R, W>>> + Send
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let kill = CancellationToken::new();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let peer = Arc::new(Peer {
        id: conn_id,
        out: tx,
        queued: Arc::clone(&queued),
        kill: kill.clone(),
        pending: Mutex::default(),
        call_sent: Notify::new(),
        next_call_id: AtomicI64::new(0),
        log_traffic: daemon.config.log_traffic,
    });
    if carried.flow.is_some() {
        daemon.add_flow(&peer);
    }
    let token = daemon.shutdown.child_token();
    let mut conn = Connection {
        daemon: Arc::clone(&daemon),
        peer,
        token: token.clone(),
        requests_cancel: Arc::new(token.clone()),
        authenticated: carried.authenticated || !daemon.config.require_auth,
        flow: carried.flow,
        in_flight: Arc::new(Semaphore::new(daemon.config.max_in_flight)),
        errors: 0,
        replies: Vec::new(),
        writer: Arc::clone(&writer),
    };
    async move {
        let writer_task =
            daemon.tracker.spawn(write_loop(Arc::clone(&writer), rx, queued, kill.clone()));
        let ended = conn.read_loop(reader).await;
        conn.flush_replies().await;
        match ended {
            Ended::Rested(reader) => {
                let carried = Carried { authenticated: conn.authenticated, flow: conn.flow.take() };
                // The writer task ends once every reply queued so far is written; then the write
                // half is ours alone.
                drop(conn);
                writer_task.await.ok()?;
                let writer = Arc::into_inner(writer)?.into_inner();
                Some(Rested { reader, writer, carried })
            }
            Ended::Closed => {
                conn.close_flow().await;
                // Closing a connection cancels everything running on it (how butlerd clients
                // cancel).
                token.cancel();
                let authenticated = conn.authenticated;
                drop(conn);
                if !authenticated {
                    // Its last replies may go out, but a peer that never reads cannot hold the
                    // connection (and its slot) open.
                    let killer = kill.clone();
                    daemon.tracker.spawn(async move {
                        tokio::time::sleep(DEADLINE_GRACE).await;
                        killer.cancel();
                    });
                }
                if writer_task.await.is_ok() {
                    let _ = writer.lock().await.shutdown().await;
                }
                kill.cancel();
                None
            }
        }
    }
}

/// How a connection's reading ended.
enum Ended<R> {
    Closed,
    /// At rest for a restart: nothing buffered, nothing in flight.
    Rested(R),
}

struct Connection<W> {
    daemon: Arc<Daemon>,
    peer: Arc<Peer>,
    token: CancellationToken,
    /// `token` again, shared by the requests that are not named operations (an `Arc` clone
    /// costs less than a token's).
    requests_cancel: Arc<CancellationToken>,
    authenticated: bool,
    /// The open `Meta.Flow` request's id.
    flow: Option<Value>,
    in_flight: Arc<Semaphore>,
    /// Messages refused before authentication.
    errors: u32,
    /// Replies gathered for the writer (see [`REPLY_BATCH`]); sent before the reader waits.
    replies: Vec<u8>,
    /// The write half, shared with the writer task.
    writer: Arc<tokio::sync::Mutex<W>>,
}

impl<W: AsyncWrite + Unpin + Send> Connection<W> {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, reader: R) -> Ended<R> {
        let mut lines = LineReader::new(reader, self.line_limit());
        let auth_deadline = Instant::now() + self.daemon.config.auth_timeout;
        loop {
            lines.set_max(self.line_limit());
            if !self.authenticated && self.errors >= UNAUTHENTICATED_MAX_ERRORS {
                let err = RpcError::invalid_request(
                    "too many messages without authentication; closing the connection",
                );
                self.reply(&Value::Null, Err(err)).await;
                return Ended::Closed;
            }
            // A whole line already buffered needs no waiting: take it without the select (whose
            // cancellation futures cost more than a small request), and answer it into the
            // batch. Cancellation is still seen within one buffer's worth of lines.
            if self.authenticated
                && lines.has_line()
                && let Some(frame) = lines.next().now_or_never()
            {
                let flow = self.on_frame(&frame).await;
                lines.recycle(frame);
                if flow.is_break() || self.peer.kill.is_cancelled() || self.token.is_cancelled() {
                    return Ended::Closed;
                }
                continue;
            }
            self.flush_replies().await;
            let resting = self.daemon.resting.is_cancelled();
            let frame = tokio::select! {
                biased;
                _ = self.token.cancelled() => return Ended::Closed,
                _ = self.peer.kill.cancelled() => return Ended::Closed,
                _ = self.daemon.resting.cancelled(), if !resting => continue,
                // At rest once every request read so far is answered and no line is half-read;
                // what the peer sends next waits in the socket for the next process.
                _ = self.requests_done(), if resting && lines.is_empty() => {
                    if lines.is_empty() {
                        return Ended::Rested(lines.into_inner());
                    }
                    // A line started while we waited (a read began in an earlier round):
                    // finish it first.
                    continue;
                }
                _ = tokio::time::sleep_until(auth_deadline), if !self.authenticated => {
                    let err = RpcError::new(
                        code::AUTHENTICATION_TIMEOUT,
                        "no Meta.Authenticate within the time allowed; closing the connection",
                    );
                    self.reply(&Value::Null, Err(err)).await;
                    return Ended::Closed;
                }
                frame = lines.next() => frame,
            };
            let flow = self.on_frame(&frame).await;
            lines.recycle(frame);
            if flow.is_break() {
                return Ended::Closed;
            }
        }
    }

    /// Answers one frame; `Break` when the connection is done.
    async fn on_frame(&mut self, frame: &std::io::Result<Frame>) -> ControlFlow<()> {
        match frame {
            Ok(Frame::Line(line)) => self.on_line(line).await,
            &Ok(Frame::TooLong(n)) => {
                let max = self.line_limit();
                let why = match self.authenticated {
                    true => format!("message of {n}+ bytes exceeds the limit of {max} bytes"),
                    false => format!(
                        "message of {n}+ bytes exceeds the limit of {max} bytes before authentication"
                    ),
                };
                let err = RpcError::invalid_request(format!("{why}; skipped")).with("limit", max);
                self.refused();
                self.reply(&Value::Null, Err(err)).await;
            }
            Ok(Frame::Eof) => return ControlFlow::Break(()),
            Err(e) => {
                tracing::debug!(conn = self.peer.id, error = %e, "Connection read failed");
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// The longest line accepted now.
    fn line_limit(&self) -> usize {
        match self.authenticated {
            true => self.daemon.config.max_line_bytes,
            false => self.daemon.config.max_line_bytes.min(UNAUTHENTICATED_MAX_LINE),
        }
    }

    /// Resolves once no request of this connection is running (each holds an in-flight permit
    /// until it has finished).
    async fn requests_done(&self) {
        let all = u32::try_from(self.daemon.config.max_in_flight).unwrap_or(u32::MAX);
        let _all = self.in_flight.acquire_many(all).await;
    }

    /// `Meta.Flow` makes this connection the daemon's event channel until it closes; its request
    /// stays open (upstream's contract for "switching daemons").
    async fn open_flow(&mut self, id: Value) -> Option<Reply> {
        if self.flow.is_some() {
            let err = RpcError::invalid_request("Meta.Flow is already open on this connection");
            return Some(Reply::Ready(id, Err(err)));
        }
        // Replies to what came before go first; news then reaches the peer directly.
        self.flush_replies().await;
        self.flow = Some(id);
        self.daemon.add_flow(&self.peer);
        self.peer
            .notify(MetaFlowEstablished::METHOD, MetaFlowEstablished { pid: std::process::id() })
            .await;
        None
    }

    /// A closing `Meta.Flow` connection: at shutdown its request is answered as cancelled;
    /// closed by the peer, it shuts the daemon down.
    async fn close_flow(&mut self) {
        let Some(id) = self.flow.take() else { return };
        if self.daemon.shutdown.is_cancelled() {
            self.reply(&id, Err(RpcError::cancelled())).await;
        } else {
            tracing::info!("Meta.Flow connection closed; shutting down");
            self.daemon.shutdown.cancel();
        }
    }

    async fn on_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // The traffic log shows the message as parsed, so it takes the general path.
        if !self.daemon.config.log_traffic
            && let Some(message) = jsonrpc::classify_plain(line)
        {
            return self.on_single(message).await;
        }
        let value = match serde_json::from_slice::<Value>(line) {
            Ok(v) => v,
            Err(e) => {
                if self.daemon.config.log_traffic {
                    // Unparseable text could hold a secret; log only its size.
                    let note = format!("(unparseable message, {} bytes)", line.len());
                    traffic(self.peer.id, "<-", note.as_bytes());
                }
                self.refused();
                return self.reply(&Value::Null, Err(RpcError::parse_error(e))).await;
            }
        };
        if self.daemon.config.log_traffic {
            traffic(self.peer.id, "<-", &jsonrpc::to_line(&redact(&value)));
        }
        match value {
            Value::Array(_) if !self.authenticated => {
                // A batch could make one line cost thousands of replies: none before the secret.
                self.errors = UNAUTHENTICATED_MAX_ERRORS;
                let err = RpcError::invalid_request(
                    "not authenticated: batches are refused before Meta.Authenticate",
                );
                self.reply(&Value::Null, Err(err)).await;
            }
            Value::Array(items) if items.is_empty() => {
                let err = RpcError::invalid_request("invalid request: empty batch");
                self.reply(&Value::Null, Err(err)).await;
            }
            Value::Array(items) if items.len() > MAX_BATCH => {
                let err = RpcError::invalid_request(format!(
                    "batch of {} requests exceeds the limit of {MAX_BATCH}; send fewer at once",
                    items.len()
                ))
                .with("limit", MAX_BATCH);
                self.reply(&Value::Null, Err(err)).await;
            }
            Value::Array(items) => self.on_batch(items).await,
            single => self.on_single(jsonrpc::classify(single)).await,
        }
    }

    /// Answers one message that is not a batch.
    async fn on_single(&mut self, message: Incoming) {
        match self.on_message(message).await {
            Some(Reply::Ready(id, result)) => self.reply(&id, result).await,
            Some(Reply::Running(id, mut request)) => {
                // Most methods finish without waiting: answer those here and save a task.
                if let Some((result, after)) = (&mut request).now_or_never() {
                    self.reply(&id, result).await;
                    if after.shutdown {
                        // The reply goes out before the daemon starts stopping.
                        self.flush_replies().await;
                    }
                    after.run();
                    return;
                }
                let peer = Arc::clone(&self.peer);
                self.daemon.tracker.spawn(async move {
                    let (result, after) = request.await;
                    peer.send_line(jsonrpc::to_line(&Response::new(&id, &result))).await;
                    after.run();
                });
            }
            None => {}
        }
    }

    /// Answers a batch with one array, in the order of its requests, once all have finished.
    /// Its requests run concurrently, like single ones.
    async fn on_batch(&mut self, items: Vec<Value>) {
        let mut replies = Vec::new();
        for item in items {
            match self.on_message(jsonrpc::classify(item)).await {
                Some(Reply::Ready(id, result)) => replies.push((id, Err(result))),
                Some(Reply::Running(id, request)) => {
                    replies.push((id, Ok(self.daemon.tracker.spawn(request))));
                }
                None => {}
            }
        }
        if replies.is_empty() {
            return;
        }
        let peer = Arc::clone(&self.peer);
        self.daemon.tracker.spawn(async move {
            let mut out = Vec::with_capacity(replies.len());
            let mut afters = Vec::new();
            for (id, reply) in replies {
                let result = match reply {
                    Err(ready) => ready,
                    Ok(handle) => match handle.await {
                        Ok((result, after)) => {
                            afters.push(after);
                            result
                        }
                        Err(e) => Err(RpcError::internal(e)),
                    },
                };
                out.push(serde_json::to_value(Response::new(&id, &result)).unwrap_or(Value::Null));
            }
            peer.send_line(jsonrpc::to_line(&out)).await;
            afters.into_iter().for_each(AfterReply::run);
        });
    }

    /// Handles one message; requests that need a reply return it (immediate or still running).
    async fn on_message(&mut self, msg: Incoming) -> Option<Reply> {
        match msg {
            Incoming::Request { id, method, params } => {
                if method == "Meta.Authenticate" {
                    let result = self.authenticate(&params);
                    return Some(Reply::Ready(id, result));
                }
                if !self.authenticated {
                    self.refused();
                    let err = RpcError::invalid_request(
                        "not authenticated: call Meta.Authenticate with the secret from the listen notification first",
                    );
                    return Some(Reply::Ready(id, Err(err)));
                }
                if method == "Meta.Flow" {
                    return self.open_flow(id).await;
                }
                Some(self.start_request(id, method, params).await)
            }
            Incoming::Notification { method, params } => {
                if method == "Meta.Authenticate" {
                    // The old protocol doc sends it as a notification: no reply, but it counts.
                    let _ = self.authenticate(&params);
                } else {
                    tracing::debug!(conn = self.peer.id, method, "Ignoring a client notification");
                }
                None
            }
            Incoming::Response { id, result } => {
                self.peer.resolve(&id, result);
                None
            }
            Incoming::Invalid { id, error } => {
                self.refused();
                Some(Reply::Ready(id, Err(error)))
            }
        }
    }

    /// Counts a message refused before authentication (see [`UNAUTHENTICATED_MAX_ERRORS`]).
    fn refused(&mut self) {
        if !self.authenticated {
            self.errors += 1;
        }
    }

    fn authenticate(&mut self, params: &Value) -> Result<Value, RpcError> {
        if !self.daemon.config.require_auth {
            return Err(RpcError::invalid_request(
                "Meta.Authenticate is not needed (and not valid) on the stdio transport",
            ));
        }
        let Some(secret) = params.get("secret").and_then(Value::as_str) else {
            self.refused();
            return Err(RpcError::invalid_params("Meta.Authenticate", "missing string \"secret\""));
        };
        if self.daemon.secret_matches(secret) {
            self.authenticated = true;
            self.daemon.authenticated(self.peer.id);
            Ok(json!({ "ok": true }))
        } else {
            self.refused();
            Err(RpcError::invalid_request(
                "invalid secret: it does not match the listen notification's",
            ))
        }
    }

    /// Prepares a request to run as its own task, after waiting for a free in-flight slot so a
    /// client that pipelines without reading replies is slowed down, not buffered without bound.
    async fn start_request(&mut self, id: Value, method: String, params: Value) -> Reply {
        let permit = match Arc::clone(&self.in_flight).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // The client may be waiting for the gathered replies before it reads the others.
                self.flush_replies().await;
                match self.wait_for_slot().await {
                    Ok(p) => p,
                    Err(err) => return Reply::Ready(id, Err(err)),
                }
            }
        };
        let operation = match (&params, method.as_str()) {
            (_, "Operation.Cancel") => None,
            (Value::Object(p), _) => p.get("id").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        // Only a named operation can be cancelled on its own; others share the connection's fate.
        let cancel = match operation {
            Some(_) => Arc::new(self.token.child_token()),
            None => Arc::clone(&self.requests_cancel),
        };
        let shutdown_after = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            peer: Arc::clone(&self.peer),
            daemon: Arc::clone(&self.daemon),
            cancel: cancel.clone(),
            shutdown_after_reply: Arc::clone(&shutdown_after),
            method: "",
        };
        let daemon = Arc::clone(&self.daemon);
        let task = async move {
            let _permit = permit;
            let ticket =
                operation.as_ref().map(|op| daemon.register_operation(op, (*cancel).clone()));
            let result = match daemon.router.dispatch(&method, ctx, params) {
                None => Err(RpcError::method_not_found(&method)),
                Some((fut, owns_cancellation)) => {
                    let guarded = async {
                        std::panic::AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|p| {
                            let what = p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            Err(RpcError::internal(format!("{method} panicked: {what}")))
                        })
                    };
                    if owns_cancellation {
                        guarded.await
                    } else {
                        tokio::select! {
                            biased;
                            r = guarded => r,
                            _ = cancel.cancelled() => Err(RpcError::cancelled()),
                        }
                    }
                }
            };
            if let (Some(op), Some(ticket)) = (&operation, ticket) {
                daemon.unregister_operation(op, ticket);
            }
            let after = AfterReply {
                daemon: Some(daemon),
                shutdown: shutdown_after.load(Ordering::Acquire),
            };
            (result, after)
        };
        Reply::Running(id, Box::pin(task))
    }

    /// Waits for an in-flight slot (`None` if the connection closes meanwhile). Waiting stops this
    /// reader; that must not happen while a running request waits for the peer's answer, which
    /// only this reader can deliver, so then the request is refused instead.
    async fn wait_for_slot(&self) -> Result<Option<OwnedSemaphorePermit>, RpcError> {
        let call_sent = self.peer.call_sent.notified();
        tokio::pin!(call_sent);
        call_sent.as_mut().enable();
        tokio::select! {
            biased;
            p = Arc::clone(&self.in_flight).acquire_owned() => Ok(p.ok()),
            _ = self.token.cancelled() => Ok(None),
            () = async {
                if self.peer.pending_calls().is_empty() {
                    call_sent.await;
                }
            } => Err(RpcError::new(
                code::TOO_MANY_IN_FLIGHT,
                "too many requests in flight on this connection while the daemon waits for your answers to its calls; answer them, then send this again",
            )
            .with("limit", self.daemon.config.max_in_flight)),
        }
    }

    /// Answers into the batch of replies (see [`REPLY_BATCH`]).
    async fn reply(&mut self, id: &Value, result: Result<Value, RpcError>) {
        if self.replies.capacity() == 0 {
            // Room for a read's worth of small replies, taken only while answering (an idle
            // connection holds none).
            self.replies.reserve(4 * 1024);
        }
        let start = self.replies.len();
        jsonrpc::write_line(&mut self.replies, &Response::new(id, &result));
        if self.peer.log_traffic {
            traffic(self.peer.id, "->", &self.replies[start..]);
        }
        if self.replies.len() >= REPLY_BATCH {
            self.flush_replies().await;
        }
    }

    /// Sends the gathered replies. An authenticated connection whose writer task has nothing
    /// left to write writes them itself: the reply leaves before the reader goes back to waiting,
    /// and a call costs no hand-over between tasks. Before authentication they always go through
    /// the writer task, so a peer that never reads cannot stall the reader past its deadline.
    async fn flush_replies(&mut self) {
        if self.replies.is_empty() {
            return;
        }
        if self.authenticated
            && self.peer.queued.load(Ordering::Acquire) == 0
            && let Ok(mut writer) = self.writer.try_lock()
        {
            let written = tokio::select! {
                biased;
                r = async { writer.write_all(&self.replies).await?; writer.flush().await } => r,
                _ = self.peer.kill.cancelled() => Ok(()),
            };
            if let Err(e) = written {
                tracing::debug!(conn = self.peer.id, error = %e, "Connection write failed");
            }
            // Freed, as when the writer task takes a batch: an idle connection holds none.
            self.replies = Vec::new();
            return;
        }
        let batch = std::mem::take(&mut self.replies);
        self.peer.send_lines(batch).await;
    }
}

type Request = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Result<Value, RpcError>, AfterReply)> + Send>,
>;

/// A reply that is ready now, or a request yet to run.
enum Reply {
    Ready(Value, Result<Value, RpcError>),
    Running(Value, Request),
}

/// Work a handler asked for once its reply is queued (so `Meta.Shutdown` is answered first).
struct AfterReply {
    daemon: Option<Arc<Daemon>>,
    shutdown: bool,
}

impl AfterReply {
    fn run(self) {
        if let (true, Some(daemon)) = (self.shutdown, self.daemon) {
            daemon.stop();
        }
    }
}

/// The single writer: batches whatever is queued into one write, flushes when the queue is empty.
/// Gives the writer back once every sender is gone and the queue is written (or writing failed).
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: Arc<tokio::sync::Mutex<W>>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    kill: CancellationToken,
) {
    const BATCH: usize = 64 * 1024;
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.extend_from_slice(&first);
        let mut taken = 1;
        while buf.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => {
                    buf.extend_from_slice(&more);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = async {
                let mut writer = writer.lock().await;
                writer.write_all(&buf).await?;
                writer.flush().await
            } => r.is_ok(),
            _ = kill.cancelled() => false,
        };
        // Only once they are written may the reader's replies go out ahead of the writer task.
        queued.fetch_sub(taken, Ordering::AcqRel);
        if !written {
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * BATCH {
            buf = Vec::new();
        }
    }
}

/// `Meta.Authenticate`'s secret never reaches a log.
pub(crate) fn redact(value: &Value) -> Value {
    let mut v = value.clone();
    // Whatever shape its params take (object, array, a bare string), none of it is logged.
    let redact_one = |m: &mut Value| {
        if m.get("method").and_then(Value::as_str) == Some("Meta.Authenticate")
            && let Some(p) = m.get_mut("params")
        {
            *p = Value::String("[redacted]".into());
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(redact_one),
        other => redact_one(other),
    }
    v
}

/// `--log`: one stderr line per message, direction-tagged.
fn traffic(conn: u64, dir: &str, line: &[u8]) {
    use std::io::Write;
    let text = String::from_utf8_lossy(line);
    let _ = writeln!(std::io::stderr().lock(), "[rpc] conn {conn} {dir} {}", text.trim_end());
}
