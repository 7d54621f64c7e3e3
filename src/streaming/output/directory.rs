//! The `directory` output: each stream's exact bytes in `<dir>/<name>`, each datagram in
//! `<dir>/<parent>/_NNNNN.<base>`, and `<dir>/<parent>/.meta.<base>` with the descriptor.
//!
//! Lossless, unlike upstream's (which adds a newline after every line, partial ones included).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LOCAL_BUNDLE_SIZE, Output, OutputError};
use crate::streaming::entry::{Bundle, Content, StreamInfo};
use crate::streaming::timefmt;

#[derive(Debug)]
pub struct DirectoryOutput {
    root: PathBuf,
    /// Open data files of running text/binary streams, and entry/byte counts for the metadata.
    streams: HashMap<u64, DirStream>,
}

#[derive(Debug)]
struct DirStream {
    file: Option<std::fs::File>,
    entries: u64,
    bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.display().to_string(), source }
}

impl DirectoryOutput {
    pub fn new(root: PathBuf) -> Result<Self, OutputError> {
        crate::db::create_private_dir_all(&root).map_err(io(&root))?;
        Ok(DirectoryOutput { root, streams: HashMap::new() })
    }

    fn data_path(&self, s: &StreamInfo) -> PathBuf {
        self.root.join(&s.name)
    }

    fn sibling(&self, s: &StreamInfo, file_name: String) -> PathBuf {
        let p = self.data_path(s);
        p.with_file_name(file_name)
    }

    fn base(s: &StreamInfo) -> &str {
        s.name.rsplit('/').next().unwrap_or(&s.name)
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
        crate::db::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&serde_json::to_vec_pretty(&meta).unwrap_or_default()))
            .map_err(io(&tmp))?;
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
        for e in &bundle.entries {
            let s = &e.stream;
            if !self.streams.contains_key(&s.id) {
                let data = self.data_path(s);
                if let Some(dir) = data.parent() {
                    crate::db::create_private_dir_all(dir).map_err(io(dir))?;
                }
                let create = |p: &Path| {
                    crate::db::private_file().write(true).create(true).truncate(true).open(p)
                };
                let file = match s.stream_type {
                    crate::streaming::StreamType::Datagram => None,
                    _ => Some(create(&data).map_err(io(&data))?),
                };
                let st = DirStream { file, entries: 0, bytes: 0 };
                self.write_meta(s, &st, false)?;
                self.streams.insert(s.id, st);
            }
            let mut st = self.streams.remove(&s.id).unwrap_or(DirStream {
                file: None,
                entries: 0,
                bytes: 0,
            });
            for l in &e.logs {
                st.entries += 1;
                st.bytes += l.content.data().len() as u64;
                match &l.content {
                    Content::Text { data, .. } | Content::Binary(data) => {
                        let path = self.data_path(s);
                        if let Some(f) = st.file.as_mut() {
                            f.write_all(data).map_err(io(&path))?;
                        }
                    }
                    Content::Datagram { data, partial } => {
                        let path = self.sibling(s, format!("_{:05}.{}", l.sequence, Self::base(s)));
                        let mut f = if partial.is_some_and(|p| p.index > 0) {
                            std::fs::OpenOptions::new()
                                .append(true)
                                .open(&path)
                                .map_err(io(&path))?
                        } else {
                            crate::db::private_file()
                                .write(true)
                                .create(true)
                                .truncate(true)
                                .open(&path)
                                .map_err(io(&path))?
                        };
                        f.write_all(data).map_err(io(&path))?;
                    }
                }
            }
            if e.terminal {
                if let Some(f) = st.file.take() {
                    let path = self.data_path(s);
                    f.sync_data().map_err(io(&path))?;
                }
                self.write_meta(s, &st, true)?;
            }
            self.streams.insert(s.id, st);
        }
        Ok(())
    }
}
