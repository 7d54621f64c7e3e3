//! The engine: per-stream tasks cut bytes into entries and feed one bundler task, which feeds one
//! output worker.
//!
//! Backpressure runs the whole way: the output worker's queue is tiny, the bundler waits for it,
//! the entry channel is bounded, and a stream task reads from its socket only after its entries
//! were accepted, so each stream holds at most about `max_entry + READ_SIZE` bytes.
//! `prefix_index` is assigned in the bundler (the one place all entries pass, in order);
//! `stream_index`, `sequence` and `time_offset` are assigned in the stream task.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cutter::Cutter;
use super::entry::{Bundle, BundleEntry, LogEntry, StreamInfo};
use super::handshake::{HandshakeError, StreamFlags};
use super::output::{Output, OutputError};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// Messages (each at most about one read's worth of entries) queued for the bundler.
const ENTRY_QUEUE: usize = 16;
/// Finished bundles (and stream openings) queued for the output.
const BUNDLE_QUEUE: usize = 2;

/// LogDog's buffering default for `--output-max-buffer-age`: the `logdog` output keeps it, since
/// every bundle there is a Pub/Sub message.
pub const LOGDOG_BUFFER_AGE: Duration = Duration::from_secs(5);
/// The default for local outputs (`store`, `directory`, `log`, `null`): short enough that a line
/// a child writes is readable by `logs tail -f`, `Streams.Follow` and the viewer within a second.
pub const LOCAL_BUFFER_AGE: Duration = Duration::from_millis(250);

/// What the output worker is given, in order.
enum Job {
    Open(Arc<StreamInfo>),
    Bundle(Bundle),
}

/// Everything a butler needs besides its output.
#[derive(Debug, Clone)]
pub struct ButlerConfig {
    pub project: String,
    pub prefix: String,
    /// Global tags; a stream's own tags win.
    pub tags: BTreeMap<String, String>,
    /// How long data may wait before its partial line / bundle goes out (0 = at once).
    pub max_buffer_age: Duration,
    /// At shutdown, how long a still-open stream may stay silent before it is closed.
    pub drain_idle: Duration,
    /// Told when a stream opens and when it has ended (the daemon tells `Meta.Flow` clients).
    pub observer: Option<StreamObserver>,
}

/// A stream's life, as an observer hears of it.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    Opened(Arc<StreamInfo>),
    /// The client closed the stream (or it was closed at shutdown); `entries` were cut from it.
    Closed {
        stream: Arc<StreamInfo>,
        entries: u64,
    },
}

/// Called on a stream task; it must not block.
#[derive(Clone)]
pub struct StreamObserver(pub Arc<dyn Fn(StreamEvent) + Send + Sync>);

impl std::fmt::Debug for StreamObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamObserver")
    }
}

impl ButlerConfig {
    pub fn new(project: impl Into<String>, prefix: impl Into<String>) -> Self {
        ButlerConfig {
            project: project.into(),
            prefix: prefix.into(),
            tags: BTreeMap::new(),
            max_buffer_age: LOGDOG_BUFFER_AGE,
            drain_idle: Duration::from_millis(100),
            observer: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AddStreamError {
    #[error("stream name {0:?} was already used in this butler's life")]
    Duplicate(String),
    #[error(transparent)]
    Invalid(#[from] HandshakeError),
    #[error("the butler is shutting down")]
    ShuttingDown,
}

/// What a finished butler did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub streams: u64,
    pub bundles: u64,
    pub entries: u64,
    pub bytes: u64,
}

enum Msg {
    /// A stream's task has started: outputs that keep an index (the store) register it now,
    /// before it has data, so followers find it at once.
    Open(Arc<StreamInfo>),
    Entries {
        stream: Arc<StreamInfo>,
        logs: Vec<LogEntry>,
    },
    Close {
        stream: Arc<StreamInfo>,
        last_index: Option<u64>,
    },
    /// Every stream task has ended: flush and stop.
    Stop,
}

struct Shared {
    cfg: ButlerConfig,
    max_entry: usize,
    names: Mutex<HashSet<String>>,
    next_id: AtomicU64,
    /// Streams running plus handshakes in progress.
    active: watch::Sender<usize>,
    tx: mpsc::Sender<Msg>,
    /// Cancelled at shutdown: open streams drain what is already sent, then close.
    closing: CancellationToken,
    tracker: TaskTracker,
}

/// A cheap handle for adding streams (the stream server, `run`, the daemon).
#[derive(Clone)]
pub struct ButlerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ButlerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ButlerHandle").field("prefix", &self.shared.cfg.prefix).finish()
    }
}

/// A running butler. Dropping it without [`Butler::shutdown`] loses unflushed data.
pub struct Butler {
    handle: ButlerHandle,
    bundler: tokio::task::JoinHandle<()>,
    worker: tokio::sync::oneshot::Receiver<Result<Stats, OutputError>>,
}

impl std::fmt::Debug for Butler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Butler").field("handle", &self.handle).finish()
    }
}

/// Marks one unit of activity (a stream or a handshake) for [`ButlerHandle::wait_idle`].
pub struct ActiveGuard {
    active: watch::Sender<usize>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.send_modify(|n| *n -= 1);
    }
}

impl Butler {
    /// Starts the bundler and the output worker. Must run inside a tokio runtime.
    pub fn start(cfg: ButlerConfig, output: Box<dyn Output>) -> Butler {
        let max_size = output.max_size();
        // Entries well under the bundle limit keep bundles near their size and memory bounded.
        let max_entry = (max_size / 4).clamp(1024, 256 * 1024);
        let (tx, rx) = mpsc::channel(ENTRY_QUEUE);
        let (btx, brx) = mpsc::channel(BUNDLE_QUEUE);
        let bundler = tokio::spawn(run_bundler(rx, btx, cfg.max_buffer_age, max_size));
        // A thread of its own, not one of tokio's blocking pool: a daemon runs one butler per
        // Process.Run child, for the child's whole life, and database calls queue behind a full
        // pool (512 threads).
        let (done, worker) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("butler-output".into()).spawn(move || {
            let _ = done.send(run_output(output, brx));
        });
        if let Err(e) = spawned {
            tracing::error!("no thread for the output worker: {e}");
        }
        let shared = Arc::new(Shared {
            cfg,
            max_entry,
            names: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(1),
            active: watch::Sender::new(0),
            tx,
            closing: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        Butler { handle: ButlerHandle { shared }, bundler, worker }
    }

    pub fn handle(&self) -> ButlerHandle {
        self.handle.clone()
    }

    /// Closes open streams (after they go quiet for `drain_idle`), flushes every bundle and
    /// closes the output.
    pub async fn shutdown(self) -> Result<Stats, OutputError> {
        let Butler { handle, bundler, worker } = self;
        let shared = handle.shared;
        {
            // Under the names lock, so a stream being added either got spawned or is refused.
            let _names = shared.names.lock().unwrap_or_else(|p| p.into_inner());
            shared.closing.cancel();
        }
        shared.tracker.close();
        shared.tracker.wait().await;
        let _ = shared.tx.send(Msg::Stop).await;
        let _ = bundler.await;
        match worker.await {
            Ok(r) => r,
            Err(_) => Err(OutputError::Other("the output worker ended without a result".into())),
        }
    }
}

impl ButlerHandle {
    pub fn config(&self) -> &ButlerConfig {
        &self.shared.cfg
    }

    /// Counts a handshake in progress as activity, so `run` waits for it.
    pub fn begin_activity(&self) -> ActiveGuard {
        self.shared.active.send_modify(|n| *n += 1);
        ActiveGuard { active: self.shared.active.clone() }
    }

    /// Resolves once no stream is running and no handshake is in progress.
    pub async fn wait_idle(&self) {
        let mut rx = self.shared.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Registers a stream and spawns its task, which reads `reader` to EOF. `initial` is payload
    /// already read (the bytes after a handshake).
    pub fn add_stream<R>(
        &self,
        flags: StreamFlags,
        reader: R,
        initial: Bytes,
    ) -> Result<Arc<StreamInfo>, AddStreamError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let shared = &self.shared;
        flags.validate()?;
        let mut names = shared.names.lock().unwrap_or_else(|p| p.into_inner());
        if shared.closing.is_cancelled() {
            return Err(AddStreamError::ShuttingDown);
        }
        if !names.insert(flags.name.clone()) {
            return Err(AddStreamError::Duplicate(flags.name));
        }
        let mut tags = shared.cfg.tags.clone();
        tags.extend(flags.tags);
        let info = Arc::new(StreamInfo {
            id: shared.next_id.fetch_add(1, Ordering::Relaxed),
            project: shared.cfg.project.clone(),
            prefix: shared.cfg.prefix.clone(),
            content_type: flags
                .content_type
                .unwrap_or_else(|| flags.stream_type.default_content_type().to_owned()),
            name: flags.name,
            stream_type: flags.stream_type,
            timestamp: flags.timestamp.unwrap_or_else(SystemTime::now),
            tags,
        });
        // Before the task exists, so an observer hears of the opening before the closing.
        if let Some(o) = &shared.cfg.observer {
            (o.0)(StreamEvent::Opened(Arc::clone(&info)));
        }
        let guard = self.begin_activity();
        let shared2 = Arc::clone(shared);
        let info2 = Arc::clone(&info);
        shared.tracker.spawn(async move {
            run_stream(&shared2, info2, reader, initial).await;
            drop(guard);
        });
        drop(names);
        tracing::debug!(path = %info.path(), kind = info.stream_type.as_str(), "stream added");
        Ok(info)
    }
}

/// The runtime the streaming commands (`stream`, `serve`, `run`, `logs web`) drive the engine on:
/// one worker. A stream task only reads and cuts, the output has a thread of its own, and these
/// commands share the machine with the processes they log; a second worker added no useful
/// parallelism, only wake-ups and work stealing that took the writers' cores (on 2 cores, text
/// ingestion fell from ~0.87 to ~0.79 of a raw socket copy). One core cuts ~3 GB/s of text.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()
}

fn clock() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

/// Reads one stream to its end; an observer hears that it closed however that came about.
async fn run_stream<R: AsyncRead + Unpin>(
    shared: &Shared,
    info: Arc<StreamInfo>,
    reader: R,
    initial: Bytes,
) {
    let entries = pump(shared, Arc::clone(&info), reader, initial).await;
    if let Some(o) = &shared.cfg.observer {
        (o.0)(StreamEvent::Closed { stream: info, entries });
    }
}

/// Cuts the stream into entries for the bundler until EOF, an error or shutdown; returns how many
/// entries it cut.
async fn pump<R: AsyncRead + Unpin>(
    shared: &Shared,
    info: Arc<StreamInfo>,
    mut reader: R,
    initial: Bytes,
) -> u64 {
    let age = shared.cfg.max_buffer_age;
    let mut cutter = Cutter::new(info.stream_type, info.timestamp, shared.max_entry);
    let mut out = Vec::new();
    if shared.tx.send(Msg::Open(Arc::clone(&info))).await.is_err() {
        return 0;
    }
    let mut draining = false;
    let mut drain_until = None;
    if !initial.is_empty() {
        cutter.push(&initial, clock());
    }
    loop {
        let aggressive =
            age.is_zero() || cutter.pending_since().is_some_and(|t| t.elapsed() >= age);
        if let Err(e) = cutter.cut(aggressive, &mut out) {
            tracing::warn!(path = %info.path(), "stream failed: {e}; closing it");
            break;
        }
        if !out.is_empty() {
            let logs = std::mem::take(&mut out);
            if shared.tx.send(Msg::Entries { stream: Arc::clone(&info), logs }).await.is_err() {
                return cutter.next_stream_index();
            }
        }
        let buf = cutter.buf();
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        let deadline = cutter.pending_since().map(|t| tokio::time::Instant::from_std(t + age));
        let read = tokio::select! {
            biased;
            r = reader.read_buf(cutter.buf()) => r,
            () = sleep_opt(deadline) => continue,
            () = shared.closing.cancelled(), if !draining => {
                draining = true;
                drain_until = Some(tokio::time::Instant::now() + shared.cfg.drain_idle * 20);
                continue
            }
            // At shutdown: close once the client goes quiet, or after a cap if it never does.
            () = tokio::time::sleep(shared.cfg.drain_idle), if draining => {
                tracing::warn!(path = %info.path(), "closing a stream still open at shutdown");
                break;
            }
            () = sleep_opt(drain_until) => {
                tracing::warn!(path = %info.path(), "closing a stream still writing at shutdown");
                break;
            }
        };
        match read {
            Ok(0) => break,
            Ok(n) => cutter.appended(n, clock()),
            Err(e) => {
                tracing::warn!(path = %info.path(), "reading stream: {e}");
                break;
            }
        }
    }
    match cutter.finish(&mut out) {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(path = %info.path(), "stream ended inside a datagram header; {n} bytes dropped")
        }
        Err(e) => tracing::warn!(path = %info.path(), "stream failed: {e}"),
    }
    let last_index = cutter.next_stream_index().checked_sub(1);
    if !out.is_empty() {
        let _ = shared.tx.send(Msg::Entries { stream: Arc::clone(&info), logs: out }).await;
    }
    let _ = shared.tx.send(Msg::Close { stream: info, last_index }).await;
    cutter.next_stream_index()
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The bundle being built.
struct Builder {
    started: SystemTime,
    /// When the oldest data in it arrived.
    oldest: Option<Instant>,
    entries: Vec<BundleEntry>,
    by_stream: HashMap<u64, usize>,
    size: usize,
}

impl Builder {
    fn new() -> Self {
        Builder {
            started: SystemTime::now(),
            oldest: None,
            entries: Vec::new(),
            by_stream: HashMap::new(),
            size: 0,
        }
    }

    fn entry(&mut self, stream: &Arc<StreamInfo>) -> &mut BundleEntry {
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        let idx = *self.by_stream.entry(stream.id).or_insert_with(|| {
            self.entries.push(BundleEntry {
                stream: Arc::clone(stream),
                logs: Vec::new(),
                terminal: false,
                terminal_index: None,
            });
            // Descriptor, terminal fields and framing.
            self.size += stream.name.len()
                + stream.content_type.len()
                + stream.tags.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
                + 48;
            self.entries.len() - 1
        });
        &mut self.entries[idx]
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn finish(self) -> Bundle {
        let mut entries = self.entries;
        entries.sort_by(|a, b| a.stream.name.cmp(&b.stream.name));
        Bundle { timestamp: self.started, entries }
    }
}

async fn run_bundler(
    mut rx: mpsc::Receiver<Msg>,
    out: mpsc::Sender<Job>,
    age: Duration,
    max_size: usize,
) {
    let mut b = Builder::new();
    let mut prefix_index: u64 = 0;
    let mut open = true;
    while open {
        let deadline = b.oldest.map(|t| tokio::time::Instant::from_std(t + age));
        let first = tokio::select! {
            m = rx.recv() => m,
            () = sleep_opt(deadline) => {
                send(&out, std::mem::replace(&mut b, Builder::new())).await;
                continue;
            }
        };
        let mut next = first;
        loop {
            let Some(msg) = next else {
                open = false;
                break;
            };
            match msg {
                // Straight to the output: the stream's entries can only be in bundles sent later.
                Msg::Open(stream) => {
                    if out.send(Job::Open(stream)).await.is_err() {
                        tracing::error!("the output stopped; a stream opening was not delivered");
                    }
                }
                Msg::Entries { stream, logs } => {
                    for mut log in logs {
                        let size = log.encoded_size_estimate();
                        if !b.is_empty() && b.size + size > max_size {
                            send(&out, std::mem::replace(&mut b, Builder::new())).await;
                        }
                        log.prefix_index = prefix_index;
                        prefix_index += 1;
                        b.size += size;
                        b.entry(&stream).logs.push(log);
                    }
                }
                Msg::Close { stream, last_index } => {
                    let e = b.entry(&stream);
                    e.terminal = true;
                    e.terminal_index = last_index;
                }
                Msg::Stop => {
                    open = false;
                    break;
                }
            }
            // Take whatever else is already queued into the same bundle.
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        if !b.is_empty() && (age.is_zero() || b.size >= max_size) {
            send(&out, std::mem::replace(&mut b, Builder::new())).await;
        }
    }
    if !b.is_empty() {
        send(&out, b).await;
    }
}

async fn send(out: &mpsc::Sender<Job>, b: Builder) {
    if b.is_empty() {
        return;
    }
    if out.send(Job::Bundle(b.finish())).await.is_err() {
        tracing::error!("the output stopped; a bundle could not be delivered");
    }
}

fn run_output(
    mut output: Box<dyn Output>,
    mut rx: mpsc::Receiver<Job>,
) -> Result<Stats, OutputError> {
    let mut stats = Stats::default();
    let mut first_err = None;
    let mut seen = HashSet::new();
    while let Some(job) = rx.blocking_recv() {
        let bundle = match job {
            Job::Open(stream) => {
                if let Err(e) = output.open_stream(&stream) {
                    tracing::error!("output {}: {e}", output.name());
                    first_err.get_or_insert(e);
                }
                continue;
            }
            Job::Bundle(b) => b,
        };
        stats.bundles += 1;
        for e in &bundle.entries {
            if seen.insert(e.stream.id) {
                stats.streams += 1;
            }
        }
        stats.entries += bundle.log_count() as u64;
        stats.bytes += bundle.data_bytes() as u64;
        if let Err(e) = output.send(bundle) {
            tracing::error!("output {}: {e}", output.name());
            first_err.get_or_insert(e);
        }
    }
    if let Err(e) = output.close() {
        tracing::error!("closing output {}: {e}", output.name());
        first_err.get_or_insert(e);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use crate::streaming::entry::{Content, StreamType};
    use crate::streaming::proto;
    use proptest::prelude::*;
    use prost::Message;

    /// Test output: keeps every bundle.
    struct Collect {
        max: usize,
        bundles: Arc<Mutex<Vec<Bundle>>>,
    }

    impl Output for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }
        fn max_size(&self) -> usize {
            self.max
        }
        fn send(&mut self, bundle: Bundle) -> Result<(), OutputError> {
            self.bundles.lock().unwrap().push(bundle);
            Ok(())
        }
    }

    /// A reader that yields the given writes one by one (empty ones included, as short reads).
    struct Writes(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Writes {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            while let Some(front) = self.0.front_mut() {
                if front.is_empty() {
                    self.0.pop_front();
                    continue;
                }
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.drain(..n);
                return std::task::Poll::Ready(Ok(()));
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn frame(d: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        crate::streaming::handshake::put_uvarint(&mut v, d.len() as u64);
        v.extend_from_slice(d);
        v
    }

    fn kind_strategy() -> impl Strategy<Value = StreamType> {
        prop_oneof![Just(StreamType::Text), Just(StreamType::Binary), Just(StreamType::Datagram)]
    }

    fn chunk_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(0xe2u8), Just(0x82u8), any::<u8>()],
                0..64
            ),
            (any::<u8>(), 1usize..20_000).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    /// An output that blocks until released, and a reader that never ends: the butler must stop
    /// reading instead of buffering.
    #[test]
    fn a_stalled_output_stops_reading_instead_of_buffering() {
        struct Stalled(std::sync::mpsc::Receiver<()>);
        impl Output for Stalled {
            fn name(&self) -> &'static str {
                "stalled"
            }
            fn max_size(&self) -> usize {
                1024 * 1024
            }
            fn send(&mut self, _: Bundle) -> Result<(), OutputError> {
                let _ = self.0.recv();
                Ok(())
            }
        }
        struct Endless(Arc<AtomicU64>);
        impl AsyncRead for Endless {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = buf.remaining().min(64 * 1024);
                buf.put_slice(&vec![b'x'; n - 1]);
                buf.put_slice(b"\n");
                self.0.fetch_add(n as u64, Ordering::Relaxed);
                std::task::Poll::Ready(Ok(()))
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (release, stalled) = std::sync::mpsc::channel();
        let read = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let butler = Butler::start(ButlerConfig::new("p", "pre"), Box::new(Stalled(stalled)));
            let h = butler.handle();
            h.add_stream(
                StreamFlags::new("endless", StreamType::Text),
                Endless(Arc::clone(&read)),
                Bytes::new(),
            )
            .unwrap();
            // On a loaded machine (Wine in CI) the pipeline can take longer to fill than any fixed
            // wait: wait until reading stops, then check that it stays stopped.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut after = read.load(Ordering::Relaxed);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = read.load(Ordering::Relaxed);
                if now == after {
                    break;
                }
                assert!(Instant::now() < deadline, "reading never stopped: {now} bytes read");
                after = now;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                read.load(Ordering::Relaxed),
                after,
                "reading stopped while the output is stalled"
            );
            assert!(after < 16 * 1024 * 1024, "at most a few MiB in flight, got {after}");
            drop(release);
            drop(h);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Whatever goes in comes out, and every bundle keeps the logpb invariants.
        #[test]
        fn bundles_reassemble_and_keep_invariants(
            streams in proptest::collection::vec((kind_strategy(), proptest::collection::vec(chunk_strategy(), 0..8)), 1..6),
            no_buffer in any::<bool>(),
            max in prop_oneof![Just(4096usize), Just(64 * 1024), Just(2 * 1024 * 1024)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let bundles = Arc::new(Mutex::new(Vec::new()));
            let mut cfg = ButlerConfig::new("p", "pre");
            cfg.max_buffer_age = if no_buffer { Duration::ZERO } else { Duration::from_millis(20) };
            let expected: Vec<(String, StreamType, Vec<u8>, Vec<Vec<u8>>)> = streams.iter().enumerate().map(|(i, (k, chunks))| {
                let name = format!("s{i}");
                match k {
                    StreamType::Datagram => {
                        let wire: Vec<u8> = chunks.iter().flat_map(|c| frame(c)).collect();
                        (name, *k, wire, chunks.clone())
                    }
                    _ => (name, *k, chunks.concat(), Vec::new()),
                }
            }).collect();
            rt.block_on(async {
                let butler = Butler::start(cfg, Box::new(Collect { max, bundles: Arc::clone(&bundles) }));
                for (name, kind, wire, _) in &expected {
                    // Split the wire bytes into uneven writes.
                    let writes: std::collections::VecDeque<Vec<u8>> = wire.chunks(777).map(<[u8]>::to_vec).collect();
                    butler.handle().add_stream(StreamFlags::new(name.clone(), *kind), Writes(writes), Bytes::new()).unwrap();
                }
                butler.handle().wait_idle().await;
                butler.shutdown().await.unwrap();
            });
            let bundles = bundles.lock().unwrap();
            let mut got: HashMap<String, (Vec<u8>, Vec<Vec<u8>>, u64, bool)> = HashMap::new();
            let mut last_prefix: Option<u64> = None;
            let mut seen_prefix = HashSet::new();
            for b in bundles.iter() {
                let encoded = proto::bundle(b).encoded_len();
                let biggest = b.entries.iter().flat_map(|e| &e.logs).map(|l| proto::log_entry(l).encoded_len()).max().unwrap_or(0);
                prop_assert!(encoded <= max + biggest + 512, "bundle of {encoded} bytes over {max}");
                let names: Vec<&str> = b.entries.iter().map(|e| e.stream.name.as_str()).collect();
                let mut sorted = names.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(&names, &sorted, "one entry per stream, sorted by name");
                let mut bundle_max = None;
                for e in &b.entries {
                    let g = got.entry(e.stream.name.clone()).or_default();
                    prop_assert!(!g.3, "data after the terminal entry");
                    for l in &e.logs {
                        prop_assert_eq!(l.stream_index, g.2, "stream_index contiguous");
                        g.2 += 1;
                        // Increasing butler-wide: every index of this bundle is above the last bundle's.
                        prop_assert!(last_prefix.is_none_or(|p| l.prefix_index > p), "prefix_index increases");
                        prop_assert!(seen_prefix.insert(l.prefix_index), "prefix_index unique");
                        bundle_max = bundle_max.max(Some(l.prefix_index));
                        match &l.content {
                            Content::Datagram { data, partial } => {
                                match partial {
                                    Some(p) if p.index > 0 => g.1.last_mut().unwrap().extend_from_slice(data),
                                    _ => g.1.push(data.to_vec()),
                                }
                            }
                            Content::Text { data, .. } => {
                                prop_assert!(!data.is_empty());
                                g.0.extend_from_slice(data)
                            }
                            Content::Binary(data) => {
                                prop_assert!(!data.is_empty());
                                g.0.extend_from_slice(data)
                            }
                        }
                    }
                    if e.terminal {
                        g.3 = true;
                        prop_assert_eq!(e.terminal_index, g.2.checked_sub(1));
                    }
                }
                last_prefix = bundle_max.or(last_prefix);
            }
            for (name, kind, wire, dgs) in &expected {
                let g = got.get(name).cloned().unwrap_or_default();
                prop_assert!(g.3, "{} got its terminal", name);
                if *kind == StreamType::Datagram {
                    prop_assert_eq!(&g.1, dgs);
                } else {
                    prop_assert_eq!(&g.0, wire);
                }
            }
        }
    }
}
