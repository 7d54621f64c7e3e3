//! What commands tell the user: JSON lines on stdout with `--json`, readable text on stderr without.
//!
//! stdout carries only data. In `--json` mode every line is one JSON object with a `type`
//! (`log`, `progress`, `result`, `butlerd/listen-notification`, ...) and a `time` in unix seconds,
//! the shape butlerd clients parse.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value, json};

/// Severity of a `log` line, named as butlerd clients expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "LogLevel")]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

/// Prints messages for one command run; cheap to copy into tasks.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    pub json: bool,
    pub min_level: Level,
}

impl Reporter {
    pub fn new(json: bool, verbose: bool, quiet: bool) -> Self {
        let min_level = if quiet {
            Level::Warning
        } else if verbose {
            Level::Debug
        } else {
            Level::Info
        };
        Reporter { json, min_level }
    }

    /// A `log` line (JSON mode) or a plain line on stderr.
    pub fn log(&self, level: Level, message: &str) {
        if level < self.min_level {
            return;
        }
        if self.json {
            self.emit("log", json!({"level": level, "message": message}));
        } else {
            let _ = writeln!(std::io::stderr().lock(), "{message}");
        }
    }

    /// The final `result` line of a command; without `--json` the caller prints its own summary.
    pub fn result(&self, value: impl Serialize) {
        if self.json {
            let value = serde_json::to_value(value).unwrap_or(Value::Null);
            self.emit("result", json!({ "value": value }));
        }
    }

    /// Prints `{type, time, ...fields}` as one line on stdout.
    pub fn emit(&self, kind: &str, fields: Value) {
        print_json_line(kind, fields);
    }
}

/// One JSON object per line on stdout with `type` and `time` added; stdout errors (a closed pipe)
/// are ignored because nobody is left to read them.
pub fn print_json_line(kind: &str, fields: Value) {
    let mut obj = match fields {
        Value::Object(map) => map,
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    obj.insert("type".into(), Value::String(kind.to_owned()));
    obj.insert("time".into(), Value::from(unix_now()));
    let mut line = serde_json::to_vec(&obj).unwrap_or_default();
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line);
    let _ = out.flush();
}

/// Seconds since the epoch, as butlerd's `time` fields carry.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
