//! Where bundles go: `store` (default), `directory`, `log`, `null`, `logdog`.
//!
//! An output runs on one blocking worker thread and gets bundles in order; `send` returning an
//! error is reported at shutdown (the command then fails), never silently ignored.

pub mod auth;
mod directory;
mod log;
pub mod logdog;
mod store;

pub use directory::DirectoryOutput;
pub use log::LogOutput;
pub use store::StoreOutput;

use super::entry::{Bundle, StreamInfo};
use crate::db::{DbError, DbPath};

/// Bundle size for outputs without a protocol limit: small enough to keep memory bounded while
/// data waits for the buffer age, big enough to make per-bundle costs vanish.
pub const LOCAL_BUNDLE_SIZE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The cause is in the message, not a `source`, so a report prints it once.
    #[error("{path}: {}", disk_full_hint(.error))]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Db(#[from] DbError),
    /// The cause is in the message, not a `source`: SQLite's error carries its own cause with the
    /// same words, and a report would print them three times.
    #[error("log store: {}", sqlite_message(.0))]
    Sqlite(rusqlite::Error),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

impl From<rusqlite::Error> for OutputError {
    fn from(e: rusqlite::Error) -> Self {
        OutputError::Sqlite(e)
    }
}

/// A full disk says what to do about it; other errors as they are.
fn disk_full_hint(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        format!("{e}; free some space and run again (what was written before is kept)")
    } else {
        e.to_string()
    }
}

fn sqlite_message(e: &rusqlite::Error) -> String {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        "the disk is full; free some space and run again (what was stored before is kept)".into()
    } else {
        e.to_string()
    }
}

/// A bundle destination.
pub trait Output: Send + 'static {
    fn name(&self) -> &'static str;
    /// Largest bundle, in encoded bytes (a bundle may exceed it by one entry's overhead).
    fn max_size(&self) -> usize;
    /// `LOGDOG_COORDINATOR_HOST` for children, when the output has one.
    fn coordinator_host(&self) -> Option<String> {
        None
    }
    /// A stream has opened (before any bundle holds its entries). Outputs that keep an index of
    /// streams, like the store, register it here so readers see it at once.
    fn open_stream(&mut self, _stream: &StreamInfo) -> Result<(), OutputError> {
        Ok(())
    }
    fn send(&mut self, bundle: Bundle) -> Result<(), OutputError>;
    /// Called once after the last bundle.
    fn close(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

/// `--output` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    Store,
    Directory {
        path: String,
    },
    Log {
        bundle_size: usize,
    },
    Null,
    Logdog {
        service: Option<String>,
        prefix_expiration: Option<std::time::Duration>,
        /// `retry-initial=DUR,retry-max=DUR,retry-attempts=N,drain=DUR,timeout=DUR`: the retry
        /// policy and the per-request deadline (short in tests).
        backoff: logdog::Backoff,
    },
}

impl PartialEq for logdog::Backoff {
    fn eq(&self, o: &Self) -> bool {
        (self.initial, self.max, self.attempts, self.drain, self.timeout)
            == (o.initial, o.max, o.attempts, o.drain, o.timeout)
    }
}

impl Eq for logdog::Backoff {}

impl OutputSpec {
    /// `--output-max-buffer-age` when not given: LogDog's for `logdog`, a short one for the local
    /// outputs, whose readers follow them live.
    pub fn default_max_buffer_age(&self) -> std::time::Duration {
        match self {
            OutputSpec::Logdog { .. } => super::butler::LOGDOG_BUFFER_AGE,
            _ => super::butler::LOCAL_BUFFER_AGE,
        }
    }

    /// Parses `NAME[,key=value...]` (values may be double-quoted to hold commas).
    pub fn parse(s: &str) -> Result<OutputSpec, OutputError> {
        let bad = |m: String| OutputError::Config(m);
        let parts = split_options(s);
        let (name, opts) = parts.split_first().ok_or_else(|| bad("empty --output".into()))?;
        let mut kv = Vec::new();
        for o in opts {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| bad(format!("--output option {o:?} is not key=value")))?;
            kv.push((k.to_owned(), v.to_owned()));
        }
        let unknown = |k: &str| bad(format!("--output {name}: unknown option {k:?}"));
        match name.as_str() {
            "store" | "" => match kv.first() {
                Some((k, _)) => Err(unknown(k)),
                None => Ok(OutputSpec::Store),
            },
            "null" => match kv.first() {
                Some((k, _)) => Err(unknown(k)),
                None => Ok(OutputSpec::Null),
            },
            "directory" => {
                let mut path = None;
                for (k, v) in kv {
                    match k.as_str() {
                        "path" => path = Some(v),
                        _ => return Err(unknown(&k)),
                    }
                }
                let path = path
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad("--output directory needs path=DIR".into()))?;
                Ok(OutputSpec::Directory { path })
            }
            "log" => {
                let mut bundle_size = 1024 * 1024;
                for (k, v) in kv {
                    match k.as_str() {
                        "bundle-size" => {
                            bundle_size =
                                v.parse::<usize>().ok().filter(|n| *n >= 1024).ok_or_else(|| {
                                    bad(format!(
                                        "--output log: bundle-size {v:?} must be a number ≥ 1024"
                                    ))
                                })?
                        }
                        _ => return Err(unknown(&k)),
                    }
                }
                Ok(OutputSpec::Log { bundle_size })
            }
            "logdog" => {
                let (mut service, mut prefix_expiration) = (None, None);
                let mut backoff = logdog::Backoff::default();
                let dur = |v: &str| {
                    super::timefmt::parse_duration(v)
                        .map_err(|e| bad(format!("--output logdog: {e}")))
                };
                for (k, v) in kv {
                    match k.as_str() {
                        "service" => service = Some(v),
                        "retry-initial" => backoff.initial = dur(&v)?,
                        "retry-max" => backoff.max = dur(&v)?,
                        "drain" => backoff.drain = dur(&v)?,
                        "timeout" => {
                            backoff.timeout = Some(dur(&v)?)
                                .filter(|d| !d.is_zero())
                                .ok_or_else(|| bad("--output logdog: timeout must be > 0".into()))?
                        }
                        "retry-attempts" => {
                            backoff.attempts =
                                v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                                    bad(format!("--output logdog: retry-attempts {v:?}"))
                                })?
                        }
                        "prefix-expiration" => {
                            prefix_expiration = Some(
                                super::timefmt::parse_duration(&v)
                                    .map_err(|e| bad(format!("--output logdog: {e}")))?,
                            )
                        }
                        _ => return Err(unknown(&k)),
                    }
                }
                Ok(OutputSpec::Logdog { service, prefix_expiration, backoff })
            }
            other => {
                Err(bad(format!("unknown output {other:?} (store, directory, log, null, logdog)")))
            }
        }
    }
}

fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    parts.last_mut().unwrap_or(&mut String::new()).push(n);
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c)
                }
            }
        }
    }
    parts
}

/// What opening an output may need besides its spec.
#[derive(Debug, Clone)]
pub struct OutputContext {
    pub dbpath: Option<String>,
    pub project: String,
    pub prefix: String,
}

/// Opens the output a spec names (the `logdog` output is opened by the caller, which owns the
/// network setup).
pub fn open(spec: &OutputSpec, ctx: &OutputContext) -> Result<Box<dyn Output>, OutputError> {
    Ok(match spec {
        OutputSpec::Store => {
            let path = DbPath::resolve(ctx.dbpath.as_deref())?;
            Box::new(StoreOutput::open(&path, &ctx.project, &ctx.prefix)?)
        }
        OutputSpec::Directory { path } => Box::new(DirectoryOutput::new(path.into())?),
        OutputSpec::Log { bundle_size } => Box::new(LogOutput::new(*bundle_size)),
        OutputSpec::Null => Box::new(NullOutput),
        OutputSpec::Logdog { .. } => {
            return Err(OutputError::Config("the logdog output is not available here".into()));
        }
    })
}

/// Discards everything (benchmarks).
#[derive(Debug)]
pub struct NullOutput;

impl Output for NullOutput {
    fn name(&self) -> &'static str {
        "null"
    }

    fn max_size(&self) -> usize {
        LOCAL_BUNDLE_SIZE
    }

    fn send(&mut self, _bundle: Bundle) -> Result<(), OutputError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local outputs are read live (`logs tail -f`, `Streams.Follow`, the viewer): their lines
    /// may wait at most a fraction of a second; only LogDog batches for seconds.
    #[test]
    fn local_outputs_buffer_briefly() {
        let local = [OutputSpec::Store, OutputSpec::Null];
        for spec in local {
            assert!(spec.default_max_buffer_age() <= std::time::Duration::from_secs(1), "{spec:?}");
        }
    }

    #[test]
    fn specs() {
        assert_eq!(OutputSpec::parse("null").unwrap(), OutputSpec::Null);
        assert_eq!(OutputSpec::parse("store").unwrap(), OutputSpec::Store);
        assert_eq!(
            OutputSpec::parse(r#"directory,path="/a,b""#).unwrap(),
            OutputSpec::Directory { path: "/a,b".into() }
        );
        assert_eq!(
            OutputSpec::parse("log,bundle-size=4096").unwrap(),
            OutputSpec::Log { bundle_size: 4096 }
        );
        assert_eq!(
            OutputSpec::parse("logdog,service=s,prefix-expiration=1h").unwrap(),
            OutputSpec::Logdog {
                service: Some("s".into()),
                prefix_expiration: Some(std::time::Duration::from_secs(3600)),
                backoff: logdog::Backoff::default(),
            }
        );
        let OutputSpec::Logdog { backoff, .. } = OutputSpec::parse("logdog,timeout=250ms").unwrap()
        else {
            panic!("not logdog")
        };
        assert_eq!(backoff.timeout, std::time::Duration::from_millis(250));
        for bad in [
            "directory",
            "bogus",
            "null,x=1",
            "log,bundle-size=x",
            "logdog,host=x",
            "logdog,timeout=0s",
            "logdog,timeout=soon",
            "directory,path",
        ] {
            assert!(OutputSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
