//! The `directory` output: each stream's exact bytes in `<dir>/<path>`, each datagram in
//! `<dir>/<parent>/_NNNNN.<base>`, and `<dir>/<parent>/.meta.<base>` with the descriptor.
//!
//! `<path>` is the stream name escaped so that every valid name has a file of its own: a segment
//! that is a folder gets a `+` (`logs/text` is `logs+/text`, so `logs` itself can be a stream
//! too), and a segment longer than 200 bytes keeps its first 180 and `~` with 16 hex digits of its
//! SHA-256. Names never contain `+` or `~`, so escaped paths cannot collide.
//!
//! Lossless, unlike upstream's (which adds a newline after every line, partial ones included).
//! A stream that cannot be written is reported (the send fails) and its entries are kept and
//! retried with the next bundle, while the other streams go on being written.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LOCAL_BUNDLE_SIZE, Output, OutputError};
use crate::streaming::entry::{Bundle, BundleEntry, Content, LogEntry, StreamInfo};
use crate::streaming::timefmt;

#[derive(Debug)]
pub struct DirectoryOutput {
    root: PathBuf,
    /// Open data files of running text/binary streams, and entry/byte counts for the metadata.
    streams: HashMap<u64, DirStream>,
    /// Entries of streams that could not be written (with the index of the first log left),
    /// retried with the next bundle.
    pending: Vec<(BundleEntry, usize)>,
}

#[derive(Debug)]
struct DirStream {
    file: Option<std::fs::File>,
    entries: u64,
    bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.display().to_string(), error: source }
}

/// The relative path of stream `name` (see the module doc).
fn escaped(name: &str) -> PathBuf {
    let segments: Vec<&str> = name.split('/').collect();
    let mut path = PathBuf::new();
    for (i, seg) in segments.iter().enumerate() {
        let seg = escape_segment(seg);
        if i + 1 < segments.len() { path.push(format!("{seg}+")) } else { path.push(seg) }
    }
    path
}

/// A segment short enough for any file system, with `.meta.` or `_NNNNN.` in front.
fn escape_segment(seg: &str) -> String {
    const MAX: usize = 200;
    if seg.len() <= MAX {
        return seg.to_owned();
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seg.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Valid names are ASCII, so any byte index is a char boundary.
    format!("{}~{hex}", &seg[..180])
}

impl DirectoryOutput {
    pub fn new(root: PathBuf) -> Result<Self, OutputError> {
        crate::db::create_private_dir_all(&root).map_err(io(&root))?;
        Ok(DirectoryOutput { root, streams: HashMap::new(), pending: Vec::new() })
    }

    fn data_path(&self, s: &StreamInfo) -> PathBuf {
        self.root.join(escaped(&s.name))
    }

    fn sibling(&self, s: &StreamInfo, file_name: String) -> PathBuf {
        let p = self.data_path(s);
        p.with_file_name(file_name)
    }

    fn base(s: &StreamInfo) -> String {
        escape_segment(s.name.rsplit('/').next().unwrap_or(&s.name))
    }

    fn write_meta(
        &self,
        s: &StreamInfo,
        st: &DirStream,
        terminal: bool,
    ) -> Result<(), OutputError> {
        let meta = serde_json::json!({
            "project": s.project,
            "prefix": s.prefix,
            "name": s.name,
            "type": s.stream_type.as_str(),
            "contentType": s.content_type,
            "timestamp": timefmt::format_rfc3339(s.timestamp),
            "tags": s.tags,
            "entries": st.entries,
            "bytes": st.bytes,
            "terminal": terminal,
        });
        let path = self.sibling(s, format!(".meta.{}", Self::base(s)));
        let tmp = self.sibling(s, format!(".meta.{}.tmp", Self::base(s)));
        let written =
            crate::db::private_file().write(true).create(true).truncate(true).open(&tmp).and_then(
                |mut f| f.write_all(&serde_json::to_vec_pretty(&meta).unwrap_or_default()),
            );
        if let Err(e) = written {
            // A torn copy is no use to anyone, and a full disk needs its space back.
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}

impl Output for DirectoryOutput {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn max_size(&self) -> usize {
        LOCAL_BUNDLE_SIZE
    }

    fn coordinator_host(&self) -> Option<String> {
        // Upstream's convention: children learn where the logs go as a file:// "host".
        Some(format!("file://{}", self.root.display()))
    }

    fn send(&mut self, bundle: Bundle) -> Result<(), OutputError> {
        // Entries kept from earlier sends go first, so each stream stays in order.
        let mut work = std::mem::take(&mut self.pending);
        work.extend(bundle.entries.into_iter().map(|e| (e, 0)));
        let mut failed = std::collections::HashSet::new();
        let mut first_error = None;
        for (e, from) in work {
            if failed.contains(&e.stream.id) {
                self.pending.push((e, from));
                continue;
            }
            if let Err((done, err)) = self.write_entry(&e, from) {
                tracing::error!("directory output: {}: {err}; kept to retry", e.stream.name);
                failed.insert(e.stream.id);
                first_error.get_or_insert(err);
                self.pending.push((e, done));
            }
        }
        if self.pending.len() > MAX_PENDING {
            let dropped = self.pending.len() - MAX_PENDING;
            tracing::error!(
                "directory output: dropping {dropped} entries that could not be written"
            );
            self.pending.drain(..dropped);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Bundle entries kept for retry at most; past that the oldest are dropped (and said so).
const MAX_PENDING: usize = 4096;

impl DirectoryOutput {
    /// Writes `e`'s logs from index `from` on; on failure, says how far it got.
    fn write_entry(&mut self, e: &BundleEntry, from: usize) -> Result<(), (usize, OutputError)> {
        let s = &e.stream;
        if !self.streams.contains_key(&s.id) {
            self.open(s).map_err(|err| (from, err))?;
        }
        let mut st =
            self.streams.remove(&s.id).unwrap_or(DirStream { file: None, entries: 0, bytes: 0 });
        let written = self.write_logs(s, &mut st, &e.logs, from);
        let written = written.and_then(|()| {
            if e.terminal {
                if let Some(f) = st.file.take() {
                    let path = self.data_path(s);
                    f.sync_data().map_err(|err| (e.logs.len(), io(&path)(err)))?;
                }
                self.write_meta(s, &st, true).map_err(|err| (e.logs.len(), err))?;
            }
            Ok(())
        });
        self.streams.insert(s.id, st);
        written
    }

    fn open(&mut self, s: &StreamInfo) -> Result<(), OutputError> {
        let data = self.data_path(s);
        if let Some(dir) = data.parent() {
            crate::db::create_private_dir_all(dir).map_err(io(dir))?;
        }
        let create =
            |p: &Path| crate::db::private_file().write(true).create(true).truncate(true).open(p);
        let file = match s.stream_type {
            crate::streaming::StreamType::Datagram => None,
            _ => Some(create(&data).map_err(io(&data))?),
        };
        let st = DirStream { file, entries: 0, bytes: 0 };
        self.write_meta(s, &st, false)?;
        self.streams.insert(s.id, st);
        Ok(())
    }

    fn write_logs(
        &self,
        s: &StreamInfo,
        st: &mut DirStream,
        logs: &[LogEntry],
        from: usize,
    ) -> Result<(), (usize, OutputError)> {
        for (i, l) in logs.iter().enumerate().skip(from) {
            let fail = |err| (i, err);
            match &l.content {
                Content::Text { data, .. } | Content::Binary(data) => {
                    let path = self.data_path(s);
                    if let Some(f) = st.file.as_mut() {
                        f.write_all(data).map_err(io(&path)).map_err(fail)?;
                    }
                }
                Content::Datagram { data, partial } => {
                    let path = self.sibling(s, format!("_{:05}.{}", l.sequence, Self::base(s)));
                    let mut f = if partial.is_some_and(|p| p.index > 0) {
                        std::fs::OpenOptions::new().append(true).open(&path)
                    } else {
                        crate::db::private_file()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .open(&path)
                    }
                    .map_err(io(&path))
                    .map_err(fail)?;
                    f.write_all(data).map_err(io(&path)).map_err(fail)?;
                }
            }
            st.entries += 1;
            st.bytes += l.content.data().len() as u64;
        }
        Ok(())
    }
}
