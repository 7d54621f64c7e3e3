//! Shared test harness: the real `butler` binary, run with a private home folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `butler` executable built for these tests.
pub fn butler_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_butler"))
}

/// A temp folder for one test, used as `BUTLER_HOME` so nothing touches the user's own database.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> Self {
        TestHome { dir: tempfile::Builder::new().prefix("butler-it-").tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `butler` command with a clean environment pointed at this home.
    pub fn butler(&self) -> Command {
        let mut cmd = Command::new(butler_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BUTLER_")
                || k.to_string_lossy().starts_with("LOGDOG_")
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("BUTLER_HOME", self.path());
        cmd
    }

    /// Runs `butler args...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.butler().args(args).output().unwrap()
    }
}

/// stdout as text, for assertions.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text, for assertions.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
