//! `butler upgrade` end to end: a real older butler build in a temp folder updated to a real newer
//! build from a broth tree made by the release tool and served over loopback HTTP.
//!
//! The two builds come from `make it-fixtures` (the same source built twice, once with
//! `BUTLER_BUILD_VERSION`); `BUTLER_IT_FIXTURES` may point elsewhere.
//!
//! This file is the harness (fixtures, the broth tree, an install folder); the tests are in
//! `cli.rs` (`butler upgrade`), `crash.rs` (kills and concurrent runs mid-update), `faults.rs`
//! (a broth server that lies, resets or stalls; a disk that fills) and `daemon.rs` (`Update.*`),
//! with the loopback server in `server.rs`.

mod cli;
mod crash;
mod daemon;
mod faults;
pub(crate) mod server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use butler_release::{Publish, SigningKey};
use butler_updater::Channel;
use server::{Fault, Server};

use crate::util::{TestHome, stderr, stdout};

struct Fixtures {
    old: PathBuf,
    new: PathBuf,
    old_version: String,
    new_version: String,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::var_os("BUTLER_IT_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/it-fixtures"));
        let (old, new) = (dir.join("butler-old"), dir.join("butler-new"));
        assert!(
            old.is_file() && new.is_file(),
            "the updater tests need two real butler builds in {}: run `make it-fixtures` (make test does)",
            dir.display()
        );
        let old_version = version_of(&old);
        let new_version = version_of(&new);
        assert_ne!(old_version, new_version, "the fixtures must be two different versions; rerun `make it-fixtures`");
        assert_eq!(old_version, env!("CARGO_PKG_VERSION"), "butler-old is stale; rerun `make it-fixtures`");
        // Every build reports the same version, so only time tells a fixture built before the
        // last source change (which would quietly test old code).
        let built = std::fs::metadata(&old).and_then(|m| m.modified()).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["src", "updater/src"] {
            if let Some((path, changed)) = newest_file(&root.join(dir)).filter(|(_, t)| *t > built) {
                panic!(
                    "{} changed after the fixtures were built ({changed:?} > {built:?}); rerun `make it-fixtures`",
                    path.display()
                );
            }
        }
        Fixtures { old, new, old_version, new_version }
    })
}

/// The most recently modified file under `dir`, with its time.
fn newest_file(dir: &Path) -> Option<(PathBuf, std::time::SystemTime)> {
    let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (path, t))
        };
        if let Some(c) = candidate.filter(|c| newest.as_ref().is_none_or(|n| c.1 > n.1)) {
            newest = Some(c);
        }
    }
    newest
}

/// The version a butler executable reports through `version --json`.
fn version_of(exe: &Path) -> String {
    let out = Command::new(exe)
        .args(["version", "--json"])
        .env("BUTLER_HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{} does not run: {}", exe.display(), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    v["value"]["version"].as_str().unwrap().trim_start_matches('v').to_owned()
}

fn channel() -> Channel {
    Channel::current(false)
}

/// One signing key for the whole run (key generation is cheap, but trees are shared).
fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::generate().unwrap())
}

/// A broth tree published once per run: the new build as LATEST, the old one listed too.
fn template(signed: bool) -> &'static Path {
    static SIGNED: OnceLock<tempfile::TempDir> = OnceLock::new();
    static UNSIGNED: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cell = if signed { &SIGNED } else { &UNSIGNED };
    cell.get_or_init(|| {
        let f = fixtures();
        // Statics are never dropped, so a temp folder would outlive every run: these go beside
        // the fixtures, where `make it-fixtures` clears them.
        let fixtures_dir = f.old.parent().unwrap();
        let dir = tempfile::Builder::new().prefix("broth-").tempdir_in(fixtures_dir).unwrap();
        let k = signed.then(key);
        publish(dir.path(), &f.old, &f.old_version, false, k, 3600);
        publish(dir.path(), &f.new, &f.new_version, true, k, 3600);
        dir
    })
    .path()
}

fn publish(
    out: &Path,
    bin: &Path,
    version: &str,
    latest: bool,
    key: Option<&SigningKey>,
    expires: u64,
) {
    let p = Publish {
        package: "butler".into(),
        channel: channel(),
        version: version.into(),
        binary: bin.to_owned(),
        extra_files: vec![],
        out: out.to_owned(),
        expires_in: Duration::from_secs(expires),
        set_latest: latest,
    };
    butler_release::publish(&p, key).unwrap();
}

/// A private copy of a template tree (hard links: tests must replace files, never edit them).
struct Broth {
    _dir: tempfile::TempDir,
    server: Server,
    /// Signed with `key()`, which installs then trust; unsigned trees are used without a key.
    signed: bool,
}

impl Broth {
    fn new(signed: bool) -> Broth {
        let dir = tempfile::Builder::new().prefix("butler-broth-").tempdir().unwrap();
        link_tree(template(signed), dir.path());
        let server = Server::start(dir.path().to_owned());
        Broth { _dir: dir, server, signed }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Path of a file in the channel folder.
    fn file(&self, rel: &str) -> PathBuf {
        self.server.root.join("butler").join(channel().name()).join(rel)
    }

    /// Replaces a file of the tree (unlinking first so the shared template is untouched).
    fn replace(&self, rel: &str, data: &[u8]) {
        let p = self.file(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn archive_path(&self, version: &str) -> String {
        format!("/butler/{}/{version}/archive/default", channel().name())
    }

    fn path(&self, rel: &str) -> String {
        format!("/butler/{}/{rel}", channel().name())
    }
}

fn link_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            link_tree(&entry.path(), &dest);
        } else {
            // The template is beside the fixtures; a temp folder on another filesystem gets copies.
            std::fs::hard_link(entry.path(), &dest)
                .or_else(|_| std::fs::copy(entry.path(), &dest).map(drop))
                .unwrap();
        }
    }
}

/// An installed old butler in its own folder, with its own home (database).
struct Install {
    home: TestHome,
    _dir: tempfile::TempDir,
    bin: PathBuf,
    exe: PathBuf,
}

impl Install {
    fn new() -> Install {
        Install::in_dir(&std::env::temp_dir())
    }

    /// An install in a folder made inside `parent` (a small disk, for disk-full tests).
    fn in_dir(parent: &Path) -> Install {
        let dir = tempfile::Builder::new().prefix("butler-install-").tempdir_in(parent).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let exe = bin.join("butler");
        copy_exe(&fixtures().old, &exe);
        Install { home: TestHome::new(), _dir: dir, bin, exe }
    }

    /// `<installed butler> --json upgrade ...` against `broth`, with short test timings.
    fn cmd(&self, broth: &Broth, args: &[&str]) -> Command {
        self.cmd_with(&self.exe, broth, args)
    }

    fn cmd_with(&self, exe: &Path, broth: &Broth, args: &[&str]) -> Command {
        let mut cmd = Command::new(exe);
        self.env(&mut cmd, broth);
        cmd.stdin(Stdio::null()).args(["--json", "upgrade"]).args(args);
        cmd
    }

    /// A clean environment: this install's home, the test server, short timings, and the test
    /// key when the tree is signed (with a trusted key, unsigned updates are refused).
    fn env(&self, cmd: &mut Command, broth: &Broth) {
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("BUTLER_") || k.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(k);
            }
        }
        cmd.env("BUTLER_HOME", self.home.path())
            .env("BUTLER_BROTH_URL", broth.url())
            // Restart probation has tests of its own; elsewhere a killed test daemon must stay dead.
            .env("BUTLER_UPDATE_PROBATION", "0")
            .env("BUTLER_UPGRADE_BACKOFF_MS", "10")
            .env("BUTLER_UPGRADE_READ_TIMEOUT_MS", "3000")
            .env("BUTLER_UPGRADE_RETRIES", "3");
        if broth.signed {
            cmd.env("BUTLER_TRUSTED_KEYS", key().public_base64());
        }
    }

    fn run(&self, broth: &Broth, args: &[&str]) -> Output {
        self.cmd(broth, args).output().unwrap()
    }

    fn listing(&self) -> Vec<String> {
        listing(&self.bin)
    }

    /// The failure contract: the old butler is still there, runs, and nothing else was left.
    fn assert_untouched(&self, out: &Output) {
        assert!(!out.status.success(), "expected a failure:\n{}{}", stdout(out), stderr(out));
        assert_eq!(version_of(&self.exe), fixtures().old_version, "the installed butler changed");
        assert_eq!(self.listing(), ["butler"], "leftovers after a failed update");
        let err = stderr(out);
        assert_eq!(err.lines().filter(|l| l.starts_with("butler: error:")).count(), 1, "{err}");
    }

    fn history(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        let conn = butler::db::open(&butler::db::DbPath::File(self.home.path().join("butler.db")))
            .unwrap();
        let mut st = conn
            .prepare("SELECT action, outcome, step, to_version FROM update_history ORDER BY id")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// An executable shell script at `path` running `body`.
fn write_script(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path.to_owned()
}

/// The messages of the `Log` notifications among `notes`.
fn messages(notes: &[serde_json::Value]) -> Vec<&str> {
    notes
        .iter()
        .filter(|n| n["method"] == "Log")
        .filter_map(|n| n["params"]["message"].as_str())
        .collect()
}

/// Copies an executable with `cp`: if this (multi-threaded) test process held the write handle,
/// a fork in another test thread could inherit it and the exec would fail with ETXTBSY.
fn copy_exe(from: &Path, to: &Path) {
    let ok = Command::new("cp").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp {} {}", from.display(), to.display());
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}

fn result_of(out: &Output) -> serde_json::Value {
    let lines = json_lines(out);
    let results: Vec<_> = lines.iter().filter(|v| v["type"] == "result").collect();
    assert_eq!(results.len(), 1, "one result line expected:\n{}\n{}", stdout(out), stderr(out));
    results[0]["value"].clone()
}

fn assert_failed_with(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out));
    assert!(stderr(out).contains(needle), "expected {needle:?} in:\n{}", stderr(out));
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
