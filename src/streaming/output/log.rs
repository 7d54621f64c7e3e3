//! The `log` output: a readable dump of every bundle to stderr, for debugging.

use std::io::Write;

use super::{Output, OutputError};
use crate::streaming::entry::{Bundle, Content};
use crate::streaming::proto;

#[derive(Debug)]
pub struct LogOutput {
    bundle_size: usize,
    count: u64,
}

impl LogOutput {
    pub fn new(bundle_size: usize) -> Self {
        LogOutput { bundle_size, count: 0 }
    }
}

impl Output for LogOutput {
    fn name(&self) -> &'static str {
        "log"
    }

    fn max_size(&self) -> usize {
        self.bundle_size
    }

    fn send(&mut self, bundle: Bundle) -> Result<(), OutputError> {
        let err = |source| OutputError::Io { path: "stderr".into(), error: source };
        let mut w = std::io::stderr().lock();
        writeln!(w, "bundle #{} ({} streams)", self.count, bundle.entries.len()).map_err(err)?;
        self.count += 1;
        for e in &bundle.entries {
            let s = &e.stream;
            write!(w, "  {} [{}, {}]", s.path(), s.stream_type.as_str(), s.content_type)
                .map_err(err)?;
            if e.terminal {
                match e.terminal_index {
                    Some(i) => write!(w, " terminal at {i}").map_err(err)?,
                    None => write!(w, " terminal (empty)").map_err(err)?,
                }
            }
            writeln!(w).map_err(err)?;
            for l in &e.logs {
                write!(
                    w,
                    "    #{} prefix {} seq {} +{:?}:",
                    l.stream_index, l.prefix_index, l.sequence, l.time_offset
                )
                .map_err(err)?;
                match &l.content {
                    Content::Text { data, .. } => {
                        writeln!(w).map_err(err)?;
                        for line in proto::text_lines(data) {
                            writeln!(
                                w,
                                "      {:?} {:?}",
                                String::from_utf8_lossy(&line.value),
                                line.delimiter
                            )
                            .map_err(err)?;
                        }
                    }
                    Content::Binary(d) => writeln!(w, " binary {}", hex(d)).map_err(err)?,
                    Content::Datagram { data, partial } => {
                        writeln!(w, " datagram {partial:?} {}", hex(data)).map_err(err)?
                    }
                }
            }
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}
