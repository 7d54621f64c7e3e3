//! `butler upgrade` end to end: a real older butler build in a temp folder updated to a real newer
//! build from a broth tree made by the release tool and served over loopback HTTP.
//!
//! The two builds come from `make it-fixtures` (the same source built twice, once with
//! `BUTLER_BUILD_VERSION`); `BUTLER_IT_FIXTURES` may point elsewhere.

mod server;

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
        Fixtures { old, new, old_version, new_version }
    })
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
        let dir = tempfile::Builder::new().prefix("butler-broth-").tempdir().unwrap();
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
}

impl Broth {
    fn new(signed: bool) -> Broth {
        let dir = tempfile::Builder::new().prefix("butler-broth-").tempdir().unwrap();
        link_tree(template(signed), dir.path());
        let server = Server::start(dir.path().to_owned());
        Broth { _dir: dir, server }
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
            std::fs::hard_link(entry.path(), &dest).unwrap();
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
        let dir = tempfile::Builder::new().prefix("butler-install-").tempdir().unwrap();
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

    /// A clean environment: this install's home, the test server, the test key, short timings.
    fn env(&self, cmd: &mut Command, broth: &Broth) {
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("BUTLER_") || k.to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(k);
            }
        }
        cmd.env("BUTLER_HOME", self.home.path())
            .env("BUTLER_BROTH_URL", broth.url())
            .env("BUTLER_TRUSTED_KEYS", key().public_base64())
            .env("BUTLER_UPGRADE_BACKOFF_MS", "10")
            .env("BUTLER_UPGRADE_READ_TIMEOUT_MS", "3000")
            .env("BUTLER_UPGRADE_RETRIES", "3");
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

#[test]
fn signed_update_in_place_then_rollback() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|v| v["type"] == "progress" && v["progress"].as_f64().is_some()),
        "{}",
        stdout(&out)
    );
    let res = result_of(&out);
    assert_eq!(res["current"], f.old_version.as_str());
    assert_eq!(res["latest"], f.new_version.as_str());
    assert_eq!(res["installed"], f.new_version.as_str());
    assert_eq!(res["verified"], true);
    assert_eq!(res["signed"], true);
    // The same path now runs the new build, executable; the previous one is kept.
    assert_eq!(version_of(&inst.exe), f.new_version);
    #[cfg(unix)]
    assert_eq!(mode(&inst.exe) & 0o111, 0o111);
    assert_eq!(version_of(&inst.bin.join("butler.old")), f.old_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
    let h = inst.history();
    assert_eq!(
        h.last().unwrap(),
        &("upgrade".into(), "installed".into(), None, Some(f.new_version.clone()))
    );

    // Up to date now: exit 0, nothing installed.
    let out = inst.run(&broth, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["upToDate"], true);
    assert_eq!(result_of(&out)["installed"], serde_json::Value::Null);

    // Rollback (run by the new build) restores the old one; a second rollback swaps back.
    let out = inst.run(&broth, &["--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.old_version);
    assert_eq!(version_of(&inst.bin.join("butler.old")), f.new_version);
    let out = inst.run(&broth, &["--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
}

#[test]
fn unsigned_broth_works_and_says_so_until_the_channel_was_signed() {
    let f = fixtures();
    let unsigned = Broth::new(false);
    let inst = Install::new();
    let out = inst.run(&unsigned, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("not signature-verified"), "{}", stdout(&out));
    assert_eq!(result_of(&out)["verified"], false);
    assert_eq!(version_of(&inst.exe), f.new_version);

    // --require-signature refuses an unsigned server from the start.
    let inst = Install::new();
    let out = inst.run(&unsigned, &["--require-signature"]);
    assert_failed_with(&out, 6, "signed");
    inst.assert_untouched(&out);

    // Once a channel served signatures, an unsigned answer from it is refused.
    let signed = Broth::new(true);
    let out = inst.run(&signed, &["--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["signed"], true);
    // Same base URL, signatures gone.
    for sig in ["LATEST.minisig", &format!("{}/manifest.json.minisig", f.new_version)] {
        std::fs::remove_file(signed.file(sig)).unwrap();
    }
    let out = inst.run(&signed, &["-y"]);
    assert_failed_with(&out, 6, "served signatures before");
    inst.assert_untouched(&out);
}

#[test]
fn check_reports_without_installing_and_never_downgrades() {
    let f = fixtures();
    let broth = Broth::new(false);
    let inst = Install::new();
    let out = inst.run(&broth, &["--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let res = result_of(&out);
    assert_eq!(res["updateAvailable"], true);
    assert_eq!(res["latest"], f.new_version.as_str());
    assert_eq!(res["channel"], channel().name());
    assert_eq!(inst.listing(), ["butler"]);
    assert_eq!(inst.history().last().unwrap().1, "available");

    // LATEST older than us: up to date, not a downgrade.
    broth.replace("LATEST", b"0.0.1\n");
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["upToDate"], true);
    assert_eq!(version_of(&inst.exe), f.old_version);
}

#[test]
fn to_picks_a_version_or_the_newest_match_of_a_range() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let range = format!("^{}", f.new_version);
    let out = inst.run(&broth, &["-y", "--to", &range]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    // An explicit version may go down.
    let out = inst.cmd_with(&inst.exe, &broth, &["-y", "--to", &f.old_version]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.old_version);
    let out = inst.run(&broth, &["-y", "--to", "^99"]);
    assert_failed_with(&out, 5, "no published version matches");
}

#[test]
fn missing_latest_fails_cleanly() {
    let broth = Broth::new(true);
    broth.server.fault(&broth.path("LATEST"), Fault::Status(404));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 3, "check failed");
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    inst.assert_untouched(&out);
    assert_eq!(inst.history().last().unwrap().1, "failed");
}

#[test]
fn garbage_latest_fails_cleanly() {
    let broth = Broth::new(false);
    broth.replace("LATEST", b"<html><body>Bad gateway</body></html>");
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 5, "LATEST file is garbage");
    inst.assert_untouched(&out);
}

#[test]
fn endless_latest_is_capped() {
    let broth = Broth::new(false);
    broth.server.fault(&broth.path("LATEST"), Fault::Endless);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 4, "larger than the limit of 4096 bytes");
    inst.assert_untouched(&out);
}

#[test]
fn endless_archive_is_capped_by_the_manifest_size() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Endless);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 4, "larger than the limit");
    inst.assert_untouched(&out);
}

#[test]
fn a_silent_server_times_out() {
    let f = fixtures();
    let broth = Broth::new(false);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Hang);
    let inst = Install::new();
    let out =
        inst.cmd(&broth, &["-y"]).env("BUTLER_UPGRADE_READ_TIMEOUT_MS", "300").output().unwrap();
    assert_failed_with(&out, 4, "download failed");
    inst.assert_untouched(&out);
}

#[test]
fn a_trickling_server_trips_the_throughput_watchdog() {
    let f = fixtures();
    let broth = Broth::new(false);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Trickle);
    let inst = Install::new();
    let out = inst
        .cmd(&broth, &["-y"])
        .env("BUTLER_UPGRADE_MIN_BPS", "100000")
        .env("BUTLER_UPGRADE_STALL_WINDOW_MS", "300")
        .output()
        .unwrap();
    assert_failed_with(&out, 4, "below the minimum");
    inst.assert_untouched(&out);
}

#[test]
fn head_channel_updates_when_the_version_differs() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let head = Channel::current(true);
    let p = Publish {
        package: "butler".into(),
        channel: head.clone(),
        version: f.new_version.clone(),
        binary: f.new.clone(),
        extra_files: vec![],
        out: dir.path().to_owned(),
        expires_in: Duration::from_secs(3600),
        set_latest: true,
    };
    butler_release::publish(&p, Some(key())).unwrap();
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir };
    let inst = Install::new();
    let out = inst.run(&broth, &["--head", "-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["channel"], head.name());
    assert_eq!(version_of(&inst.exe), f.new_version);
}

#[cfg(unix)]
#[test]
fn a_terminal_gets_a_prompt_and_a_pipe_never_waits_for_one() {
    use std::io::Write;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    // `script` gives the upgrade a pseudo-terminal; our stdin goes to it.
    let on_tty = |answer: &str| {
        let mut cmd = Command::new("script");
        inst.env(&mut cmd, &broth);
        cmd.args(["-qec", &format!("'{}' upgrade", inst.exe.display()), "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = on_tty("n\n");
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("to {}? [y/N]", f.new_version)), "{}", stdout(&out));
    assert_eq!(version_of(&inst.exe), f.old_version);
    let out = on_tty("y\n");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("100.0%"), "no progress bar: {}", stdout(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);

    // No terminal and no -y: no prompt, no wait.
    let inst = Install::new();
    let out = inst.run(&broth, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
}

#[test]
fn truncated_archive_fails_after_retries() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::CutAfter(1000, 1000));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(matches!(out.status.code(), Some(3 | 4)), "{}", stderr(&out));
    assert!(stderr(&out).contains("download failed"), "{}", stderr(&out));
    inst.assert_untouched(&out);
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let f = fixtures();
    let broth = Broth::new(true);
    let path = broth.archive_path(&f.new_version);
    broth.server.fault(&path, Fault::CutAfter(1 << 20, 2));
    broth.server.fault(&broth.path("LATEST"), Fault::StatusTimes(503, 1));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let gets: Vec<_> = broth.server.seen().into_iter().filter(|s| s.path == path).collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[1].headers.get("range").map(String::as_str), Some("bytes=1048576-"));
    assert!(gets[1].headers.contains_key("if-range"), "{:?}", gets[1]);
    assert_eq!(gets[2].headers.get("range").map(String::as_str), Some("bytes=2097152-"));
}

#[test]
fn a_download_cut_in_one_run_is_resumed_by_the_next() {
    let f = fixtures();
    let broth = Broth::new(true);
    let path = broth.archive_path(&f.new_version);
    // Every answer in the first run is cut after 64 KiB, until it gives up (3 retries x 4).
    broth.server.fault(&path, Fault::CutAfter(64 << 10, 12));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    inst.assert_untouched(&out);
    let gets = |from: usize| -> Vec<server::Seen> {
        broth.server.seen().into_iter().filter(|s| s.path == path).skip(from).collect()
    };
    let first_run = gets(0).len();
    assert_eq!(first_run, 12, "the first run gave up after its attempts");
    let part = inst.home.path().join("update-cache").join(format!(
        "butler@{}@{}.part",
        channel().name(),
        f.new_version
    ));
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert_eq!(kept, 12 * (64 << 10), "what arrived is kept for the next run");

    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let second = gets(first_run);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].headers.get("range"), Some(&format!("bytes={kept}-")));
    assert!(second[0].headers.contains_key("if-range"), "{:?}", second[0]);
    assert!(!part.exists(), "nothing is left in the cache");
    assert_eq!(std::fs::read_dir(part.parent().unwrap()).unwrap().count(), 0);
}

#[test]
fn a_download_complete_but_unfinished_by_an_earlier_run_is_used_as_it_is() {
    let f = fixtures();
    let broth = Broth::new(true);
    let path = broth.archive_path(&f.new_version);
    let archive = broth.file(&format!("{}/archive/default", f.new_version));
    let data = std::fs::read(&archive).unwrap();
    let mtime = std::fs::metadata(&archive)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // An earlier run got every byte, then was killed before it could use them.
    let inst = Install::new();
    let cache = inst.home.path().join("update-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let part = cache.join(format!("butler@{}@{}.part", channel().name(), f.new_version));
    std::fs::write(&part, &data).unwrap();
    let url = format!("{}{path}", broth.url());
    std::fs::write(
        cache.join(format!("butler@{}@{}.part.validator", channel().name(), f.new_version)),
        format!("{url}\n\"{}-{mtime}\"", data.len()),
    )
    .unwrap();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let gets: Vec<_> = broth.server.seen().into_iter().filter(|s| s.path == path).collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].headers.get("range"), Some(&format!("bytes={}-", data.len())));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

#[test]
fn wrong_sha256_is_refused() {
    let f = fixtures();
    let broth = Broth::new(true);
    let rel = format!("{}/archive/default", f.new_version);
    let mut data = std::fs::read(broth.file(&rel)).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    broth.replace(&rel, &data);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "SHA-256");
    inst.assert_untouched(&out);
}

#[test]
fn bad_signatures_are_refused() {
    let f = fixtures();
    // LATEST changed after signing.
    let broth = Broth::new(true);
    broth.replace("LATEST", format!("{}\n", f.new_version).replace('\n', " \n").as_bytes());
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "bad signature");
    inst.assert_untouched(&out);

    // A manifest edited after signing (a bigger archive size to lift the cap).
    let broth = Broth::new(true);
    let rel = format!("{}/manifest.json", f.new_version);
    let text =
        std::fs::read_to_string(broth.file(&rel)).unwrap().replace("\"size\": ", "\"size\": 9");
    broth.replace(&rel, text.as_bytes());
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "verify failed");
    inst.assert_untouched(&out);
}

#[test]
fn a_key_that_is_not_trusted_is_refused() {
    let broth = Broth::new(true);
    let other = SigningKey::generate().unwrap();
    let inst = Install::new();
    let out = inst
        .cmd(&broth, &["-y"])
        .env("BUTLER_TRUSTED_KEYS", other.public_base64())
        .output()
        .unwrap();
    assert_failed_with(&out, 6, "not trusted");
    inst.assert_untouched(&out);
    // Two keys (rotation): the old and the new one; either signing is accepted.
    let both = format!("{},{}", other.public_base64(), key().public_base64());
    let out = inst.cmd(&broth, &["--check"]).env("BUTLER_TRUSTED_KEYS", both).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_expired_latest_is_stale_not_up_to_date() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &f.new, &f.new_version, true, Some(key()), 0);
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir };
    let inst = Install::new();
    for args in [&["--check"][..], &["-y"][..]] {
        let out = inst.run(&broth, args);
        assert_failed_with(&out, 7, "stale");
        inst.assert_untouched(&out);
    }
}

#[test]
fn a_binary_reporting_another_version_is_refused() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    // The new build published under a version it does not report: mix-and-match.
    publish(dir.path(), &f.new, "7.7.7", true, Some(key()), 3600);
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir };
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "reports version");
    assert!(stderr(&out).contains("smoke test failed"), "{}", stderr(&out));
    inst.assert_untouched(&out);
}

/// Publishes a hand-made zip as the newest version of an unsigned tree.
fn broth_with_zip(entries: &[(&str, Vec<u8>)]) -> Broth {
    use std::io::Write;
    let broth = Broth::new(false);
    let v = "9.9.9";
    let p = broth.file(&format!("{v}/archive/default"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    for (name, data) in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
    broth.replace("LATEST", format!("{v}\n").as_bytes());
    broth
}

#[test]
fn a_zip_with_dotdot_entries_is_refused() {
    let broth = broth_with_zip(&[
        ("butler", std::fs::read(&fixtures().new).unwrap()),
        ("../evil", b"x".to_vec()),
    ]);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 8, "climbs out");
    inst.assert_untouched(&out);
    assert!(!inst.bin.parent().unwrap().join("evil").exists());
}

#[test]
fn a_zip_bomb_is_refused() {
    // 64 MiB of zeros compresses to ~64 KiB; the cap is lowered so the test stays quick.
    let broth = broth_with_zip(&[("butler", vec![0u8; 64 << 20])]);
    let inst = Install::new();
    let out = inst
        .cmd(&broth, &["-y"])
        .env("BUTLER_UPGRADE_MAX_UNPACKED", (8u64 << 20).to_string())
        .output()
        .unwrap();
    assert_failed_with(&out, 8, "limit");
    inst.assert_untouched(&out);
}

#[test]
fn an_unwritable_folder_is_reported_before_downloading() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        // Root ignores permissions, so run as nobody there.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        std::fs::set_permissions(&inst.bin, std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(
            inst.bin.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(inst.home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut cmd = inst.cmd(&broth, &["-y"]);
        if root {
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().unwrap();
        std::fs::set_permissions(&inst.bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_failed_with(&out, 10, "not writable");
        inst.assert_untouched(&out);
        let archive = broth.archive_path(&f.new_version);
        assert!(
            broth.server.seen().iter().all(|s| s.path != archive),
            "downloaded before checking the folder"
        );
    }
}

/// Starts an upgrade that stops at a test pause point and waits until it is there.
fn start_paused(mut cmd: Command, point: &str) -> std::process::Child {
    cmd.env("BUTLER_TEST_PAUSE_AT", point).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let mut seen = String::new();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("butler-test-paused-at") => break,
            Some(Ok(l)) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            _ => panic!("the upgrade ended before pausing at {point}: {seen}; {:?}", child.wait()),
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn a_second_concurrent_upgrade_says_so() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut first = start_paused(inst.cmd(&broth, &["-y"]), "after-download");
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 11, "another update");
    assert_eq!(version_of(&inst.exe), f.old_version);
    first.kill().unwrap();
    first.wait().unwrap();
    // The killed run's staging folder is cleaned by the next run, which succeeds.
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
}

#[test]
fn sigkill_at_any_point_leaves_a_working_butler() {
    let f = fixtures();
    let broth = Broth::new(true);
    let points = [
        "before-download",
        "download-chunk:1",
        "download-chunk:3",
        "after-download",
        "unpack-chunk:1",
        "unpack-chunk:50",
        "after-unpack",
        "after-smoke-test",
        "preserve-linked",
        "swap-before-rename",
        "swap-after-rename",
        "after-swap",
    ];
    for point in points {
        let inst = Install::new();
        let mut child = start_paused(inst.cmd(&broth, &["-y"]), point);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let v = version_of(&inst.exe);
        assert!(v == f.old_version || v == f.new_version, "after a kill at {point}: {v}");
        // The next run cleans up and finishes the job.
        let out = inst.run(&broth, &["-y"]);
        assert!(out.status.success(), "after a kill at {point}: {}", stderr(&out));
        assert_eq!(version_of(&inst.exe), f.new_version, "after a kill at {point}");
        let l = inst.listing();
        assert!(
            l == ["butler", "butler.old"] || l == ["butler"],
            "leftovers after a kill at {point}: {l:?}"
        );
    }
}

#[test]
fn sigkill_during_a_versioned_update_leaves_a_chosen_butler_that_runs() {
    let f = fixtures();
    let broth = Broth::new(true);
    for point in [
        "after-unpack",
        "after-smoke-test",
        "versioned-moved",
        "choose-before-rename",
        "after-swap",
    ] {
        let inst = Install::new();
        let root = inst.home.path().join("app");
        let root_s = root.to_str().unwrap().to_owned();
        let cmd = |extra: &[&str]| {
            let mut args = vec!["-y", "--root", root_s.as_str()];
            args.extend_from_slice(extra);
            inst.cmd(&broth, &args)
        };
        let out = cmd(&["--to", &f.old_version]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let mut child = start_paused(cmd(&[]), point);
        child.kill().unwrap();
        child.wait().unwrap();
        let chosen = std::fs::read_to_string(root.join(".chosen-version")).unwrap();
        let v = version_of(&root.join("versions").join(&chosen).join("butler"));
        assert!(v == f.old_version || v == f.new_version, "after a kill at {point}: {v}");
        let out = cmd(&[]).output().unwrap();
        assert!(out.status.success(), "after a kill at {point}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.new_version);
        assert_eq!(
            listing(&root),
            [".chosen-version", "versions"],
            "leftovers after a kill at {point}"
        );
    }
}

#[test]
fn proxies_from_the_environment_are_used() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    // Nothing listens on localhost:9; only the proxy (our server) can answer.
    let out = inst
        .cmd(&broth, &["--check"])
        .env("BUTLER_BROTH_URL", "http://localhost:9")
        .env("http_proxy", broth.url())
        .env("HTTP_PROXY", broth.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["latest"], f.new_version.as_str());
    let seen = broth.server.seen();
    assert!(seen.iter().any(|s| s.target.starts_with("http://localhost:9/butler/")), "{seen:?}");
}

#[test]
fn versioned_root_chooses_keeps_last_good_and_rolls_back() {
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let root = inst.home.path().join("app");
    let root_s = root.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["-y", "--root", root_s];
        all.extend_from_slice(args);
        inst.cmd(&broth, &all).output().unwrap()
    };
    let out = run(&["--to", &f.old_version]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.old_version);
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(result_of(&out)["installed"], f.new_version.as_str());
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.new_version);
    let chosen = root.join("versions").join(&f.new_version).join("butler");
    assert_eq!(version_of(&chosen), f.new_version);
    assert_eq!(listing(&root.join("versions")), {
        let mut v = vec![f.old_version.clone(), f.new_version.clone()];
        v.sort();
        v
    });
    assert_eq!(listing(&root), [".chosen-version", "versions"]);
    let out = run(&["--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.old_version);
}

#[test]
fn a_candidate_failing_the_daemon_check_is_never_chosen() {
    let f = fixtures();
    // A build whose `version` works but whose daemon never comes up.
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        &dir.path().join("butler-broken-daemon"),
        &format!(
            "if [ \"$1\" = version ]; then exec '{}' \"$@\"; fi\necho 'no daemon here' >&2\nexit 1\n",
            f.new.display()
        ),
    );
    let tree = tempfile::tempdir().unwrap();
    publish(tree.path(), &f.old, &f.old_version, false, Some(key()), 3600);
    publish(tree.path(), &script, &f.new_version, true, Some(key()), 3600);
    let broth = Broth { server: Server::start(tree.path().to_owned()), _dir: tree };
    let inst = Install::new();
    let root = inst.home.path().join("app");
    std::fs::create_dir_all(root.join("versions")).unwrap();
    let good = root.join("versions").join(&f.old_version);
    std::fs::create_dir(&good).unwrap();
    copy_exe(&f.old, &good.join("butler"));
    std::fs::write(root.join(".chosen-version"), &f.old_version).unwrap();
    let out = inst.run(&broth, &["-y", "--root", root.to_str().unwrap()]);
    assert_failed_with(&out, 9, "daemon sanity check");
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.old_version);
    assert_eq!(listing(&root.join("versions")), vec![f.old_version.clone()]);
    assert_eq!(listing(&root), [".chosen-version", "versions"]);
}

/// The daemon's `Update.Check` / `Update.Status` against the same loopback broth tree.
#[test]
fn the_daemon_checks_for_updates_and_reports_history() {
    use crate::util::DaemonProc;
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let home = TestHome::new();
    let mut cmd = home.butler();
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"])
        .env("BUTLER_BROTH_URL", broth.url())
        .env("BUTLER_TRUSTED_KEYS", key().public_base64());
    let d = DaemonProc::start_cmd(cmd);
    let mut flow = d.client();
    flow.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    let mut c = d.client();
    let r = c.request(json!(1), "Update.Check", json!({}));
    let result = &r["result"];
    // The Meta.Flow connection hears of it too.
    let news = flow.recv();
    assert_eq!(news["method"], "Update.Available", "{news}");
    assert_eq!(news["params"]["latestVersion"], f.new_version.as_str());
    assert_eq!(result["currentVersion"], env!("CARGO_PKG_VERSION"), "{r}");
    assert_eq!(result["latestVersion"], f.new_version.as_str());
    assert_eq!(result["updateAvailable"], true);
    assert_eq!(result["signed"], true);
    assert_eq!(result["stale"], false);
    assert_eq!(result["channel"], channel().name());

    let r = c.request(json!(2), "Update.Status", json!({}));
    let history = r["result"]["history"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(history.len(), 1, "{r}");
    assert_eq!(history[0]["outcome"], "available");
    assert_eq!(r["result"]["lastResult"], "available");
    assert_eq!(r["result"]["lastCheck"]["toVersion"], f.new_version.as_str());
}

#[test]
fn the_daemon_reports_a_stale_latest_and_a_missing_server() {
    use crate::util::DaemonProc;
    use serde_json::json;
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &f.new, &f.new_version, true, Some(key()), 0);
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir };
    let home = TestHome::new();
    let start = |url: String| {
        let mut cmd = home.butler();
        cmd.args([
            "--json",
            "daemon",
            "--transport",
            "tcp",
            "--keep-alive",
            "--dbpath",
            ":memory:",
        ])
        .env("BUTLER_BROTH_URL", url)
        .env("BUTLER_TRUSTED_KEYS", key().public_base64());
        DaemonProc::start_cmd(cmd)
    };
    let d = start(broth.url());
    let r = d.client().request(json!(1), "Update.Check", json!({}));
    assert_eq!(r["result"]["stale"], true, "{r}");
    assert_eq!(r["result"]["updateAvailable"], false);

    // Nothing listens on port 9 of loopback.
    let d = start("http://127.0.0.1:9".into());
    let r = d.client().request(json!(1), "Update.Check", json!({}));
    assert_eq!(r["error"]["code"], 9000, "{r}");
    assert_eq!(r["error"]["data"]["step"], "check");
}

/// An installed old butler running as a TCP daemon, its updates from `broth`.
fn daemon_from(install: &Install, broth: &Broth) -> crate::util::DaemonProc {
    daemon_at(install, &install.exe, broth, &[])
}

/// `exe` (in `install`'s environment) running as a TCP daemon with `extra` flags.
fn daemon_at(
    install: &Install,
    exe: &Path,
    broth: &Broth,
    extra: &[&str],
) -> crate::util::DaemonProc {
    let mut cmd = Command::new(exe);
    install.env(&mut cmd, broth);
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]).args(extra);
    crate::util::DaemonProc::start_cmd(cmd)
}

/// Sends a request and reads until its reply; returns the reply and the notifications before it.
fn call(
    c: &mut crate::util::RpcClient,
    id: i64,
    method: &str,
    params: serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    c.send(&serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    let mut notes = Vec::new();
    loop {
        let msg = c.recv();
        if msg["id"] == id {
            return (msg, notes);
        }
        notes.push(msg);
    }
}

fn flow(d: &crate::util::DaemonProc) -> crate::util::RpcClient {
    let mut flow = d.client();
    flow.send(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    flow
}

#[test]
fn the_daemon_installs_an_update_with_progress_and_rolls_it_back() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut news = flow(&d);
    let mut c = d.client();

    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({}));
    let res = &r["result"];
    assert_eq!(res["previousVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(res["installedVersion"], f.new_version.as_str());
    assert_eq!(res["verified"], true);
    assert_eq!(res["restartRequired"], true);
    let progress: Vec<f64> = notes
        .iter()
        .filter(|n| n["method"] == "Progress")
        .map(|n| n["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress.last(), Some(&1.0), "the final progress is always sent: {notes:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(notes.iter().any(|n| n["method"] == "Log"), "{notes:?}");
    let applied = news.recv();
    assert_eq!(applied["method"], "Update.Applied", "{applied}");
    assert_eq!(applied["params"]["installedVersion"], f.new_version.as_str());
    assert_eq!(applied["params"]["restarting"], false);
    // On disk: the new build, the old one kept. In memory: still the old daemon.
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.old_version), "{v}");
    // Checking again compares against what is on disk: nothing new, only a restart missing.
    let (r, _) = call(&mut c, 20, "Update.Check", json!({}));
    assert_eq!(r["result"]["updateAvailable"], false, "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    assert_eq!(r["result"]["currentVersion"], f.old_version.as_str());
    let (r, _) = call(&mut c, 21, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], serde_json::Value::Null, "not again: {r}");
    assert_eq!(r["result"]["restartRequired"], true, "still waiting for its restart: {r}");
    let (s, _) = call(&mut c, 22, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], f.new_version.as_str(), "{s}");

    // A bad version is refused before anything happens.
    let (r, _) = call(&mut c, 3, "Update.Apply", json!({"version": "not a version"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");

    let (r, _) = call(&mut c, 4, "Update.Rollback", json!({}));
    assert_eq!(r["result"]["restoredVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    assert_eq!(news.recv()["method"], "Update.RolledBack");
    assert_eq!(version_of(&inst.exe), f.old_version);
    let (s, _) = call(&mut c, 23, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], serde_json::Value::Null, "back to this build: {s}");

    let (s, _) = call(&mut c, 5, "Update.Status", json!({}));
    let outcomes: Vec<&str> = s["result"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("{s}"))
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["rolled-back", "up-to-date", "installed"], "{s}");

    // Installing the running build again (a downgrade undoing an install) waits for nothing.
    let (r, _) = call(&mut c, 24, "Update.Apply", json!({"version": f.new_version}));
    assert_eq!(r["result"]["restartRequired"], true, "{r}");
    let (r, _) = call(&mut c, 25, "Update.Apply", json!({"version": f.old_version}));
    assert_eq!(r["result"]["installedVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false, "{r}");
    let (s, _) = call(&mut c, 26, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], serde_json::Value::Null, "{s}");
}

#[test]
fn the_daemon_restarts_into_the_update_on_the_same_socket_and_secret() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut d = daemon_from(&inst, &broth);
    let pid = d.child.id();
    let mut news = flow(&d);
    let mut c = d.client();
    let (r, _) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false);
    let applied = news.recv();
    assert_eq!(applied["params"]["restarting"], true, "{applied}");
    // Connections open at the hand-over are closed (Meta.Flow perhaps answered 499 first, as at
    // any shutdown).
    while let Some(m) = news.try_recv() {
        assert_eq!((m["id"].as_i64(), m["error"]["code"].as_i64()), (Some(1), Some(499)), "{m}");
    }
    assert!(c.try_recv().is_none());

    // Same process, same address, same secret: the new build answers.
    let mut c = d.client();
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.new_version), "{v}");
    assert!(d.child.try_wait().unwrap().is_none(), "the launcher's child is still running");
    assert_eq!(d.child.id(), pid);
    // Nothing of the hand-over reaches a child: no variables, no inherited socket or pipe.
    let (r, _) = call(
        &mut c,
        3,
        "Process.Run",
        json!({"command": ["sh", "-c", "env; ls -l /proc/$$/fd"], "prefix": "handover"}),
    );
    assert_eq!(r["result"]["exitCode"], 0, "{r}");
    let (r, _) = call(&mut c, 4, "Streams.Read", json!({"path": "handover/+/stdout"}));
    let text: String = r["result"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(text.contains("PATH="), "the listing ran: {text}");
    assert!(!text.contains("BUTLER_DAEMON_HANDOVER"), "{text}");
    assert!(!text.contains("socket:"), "{text}");
    let (r, _) = call(&mut c, 5, "Meta.Shutdown", json!({}));
    assert!(r.get("result").is_some(), "{r}");
    let (code, out, err) = d.wait_exit(10);
    assert_eq!(code, Some(0), "{err}");
    // stdout stays JSON lines, and the listen notification is not repeated.
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["type"] != "butlerd/listen-notification"), "{out}");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted after an update"))),
        "{out}"
    );
}

#[test]
fn cancelling_an_update_leaves_the_old_butler_untouched() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Trickle);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Update.Apply", "params": {"id": "up"}}));
    // Wait until the download has started.
    loop {
        let n = c.recv();
        if n["method"] == "Log"
            && n["params"]["message"].as_str().is_some_and(|m| m.starts_with("downloading"))
        {
            break;
        }
    }
    let (r, _) = call(&mut d.client(), 7, "Operation.Cancel", json!({"id": "up"}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
    let reply = loop {
        let m = c.recv();
        if m["id"] == 1 {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], 499, "{reply}");
    assert_eq!(version_of(&inst.exe), f.old_version);
    assert_eq!(inst.listing(), ["butler"], "nothing left behind");
    assert_eq!(inst.history().last().unwrap().1, "cancelled");
}

#[test]
fn the_daemon_checks_in_the_background_only_when_allowed() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let start = |extra: &[&str]| {
        let mut flags = vec!["--dbpath", ":memory:"];
        flags.extend_from_slice(extra);
        daemon_at(&inst, &inst.exe, &broth, &flags)
    };

    let quiet = start(&["--update-interval", "100ms", "--no-auto-update"]);
    // Long enough that the next check (which re-hashes the fetched archive under the cache lock)
    // does not overlap the apply below.
    let d = start(&["--update-interval", "1s"]);
    // Nobody asks: the Meta.Flow connection hears of the update all the same, and then that it
    // was fetched and verified ahead of time.
    let mut flow = flow(&d);
    let news = flow.recv();
    assert_eq!(news["method"], "Update.Available", "{news}");
    assert_eq!(news["params"]["latestVersion"], f.new_version.as_str());
    let ready = flow.recv();
    assert_eq!(ready["method"], "Update.Ready", "{ready}");
    assert_eq!(ready["params"]["version"], f.new_version.as_str());
    let mut c = d.client();
    let (s, _) = call(&mut c, 1, "Update.Status", json!({}));
    assert_eq!(s["result"]["lastCheck"]["outcome"], "available", "{s}");
    // Applying it takes the fetched archive instead of downloading again.
    let (r, notes) = call(&mut c, 2, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.starts_with("using the archive fetched earlier")), "{logs:?}");
    assert!(!logs.iter().any(|m| m.starts_with("downloading")), "{logs:?}");
    assert_eq!(version_of(&inst.exe), f.new_version);

    // The quiet one has been up longer than several of its intervals and never called out.
    let (s, _) = call(&mut quiet.client(), 1, "Update.Status", json!({}));
    assert_eq!(s["result"]["history"], json!([]), "{s}");
    std::thread::sleep(Duration::from_millis(300));
    drop((flow, d));
    let (s, _) = call(&mut quiet.client(), 2, "Update.Status", json!({}));
    assert_eq!(s["result"]["history"], json!([]), "{s}");
}

#[test]
fn a_tampered_prefetched_archive_is_discarded_and_downloaded_again() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let cache = inst.home.path().join("update-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let planted = cache.join(format!("butler@{}@{}.zip", channel().name(), f.new_version));
    std::fs::write(&planted, b"not the archive the manifest describes").unwrap();
    let d = daemon_from(&inst, &broth);
    let (r, notes) = call(&mut d.client(), 1, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.starts_with("downloading")), "{logs:?}");
    assert!(!planted.exists(), "the bad archive is removed");
    assert_eq!(version_of(&inst.exe), f.new_version);
}

#[test]
fn the_daemon_does_not_restart_into_a_build_that_cannot_take_over_or_while_games_run() {
    use serde_json::json;
    let f = fixtures();
    // A "butler" that passes the smoke test but announces no features (as builds before the
    // hand-over did): restarting into it would strand the launcher's clients.
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        &dir.path().join("butler"),
        "echo '{\"type\":\"result\",\"value\":{\"version\":\"v9.9.9\"}}'\n",
    );
    let tree = tempfile::tempdir().unwrap();
    publish(tree.path(), &script, "9.9.9", true, Some(key()), 3600);
    let old_style = Broth { server: Server::start(tree.path().to_owned()), _dir: tree };
    let inst = Install::new();
    let d = daemon_from(&inst, &old_style);
    let mut c = d.client();
    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], "9.9.9", "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.contains("cannot take over a running daemon")), "{logs:?}");
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.old_version), "still serving: {v}");
    drop((c, d));

    // A real newer build, but a game started through Process.Run is still running.
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut game = d.client();
    game.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sleep", "30"], "id": "game",
    }}));
    assert_eq!(game.recv()["method"], "Process.Started");
    let mut c = d.client();
    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.contains("still running")), "{logs:?}");
    let (r, _) = call(&mut c, 2, "Operation.Cancel", json!({"id": "game"}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
}

#[test]
fn applying_while_the_daemon_fetches_ahead_is_safe() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_at(&inst, &inst.exe, &broth, &["--update-interval", "200ms"]);
    let mut news = flow(&d);
    while news.recv()["method"] != "Update.Available" {}
    // At once, while the background fetch of the same archive is (most likely) under way.
    let (r, _) = call(&mut d.client(), 1, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
}

#[test]
fn a_daemon_run_from_a_versioned_root_installs_a_new_version_and_restarts_into_it() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    // As the itch app lays butler out: <root>/versions/<v>/butler and <root>/.chosen-version.
    let root = inst.home.path().join("app");
    let running = root.join("versions").join(&f.old_version);
    std::fs::create_dir_all(&running).unwrap();
    copy_exe(&f.old, &running.join("butler"));
    std::fs::write(root.join(".chosen-version"), &f.old_version).unwrap();
    let d = daemon_at(&inst, &running.join("butler"), &broth, &[]);
    let (r, _) = call(&mut d.client(), 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false);
    // A new version folder, chosen; the running one kept as the last known good.
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.new_version);
    assert_eq!(version_of(&running.join("butler")), f.old_version);
    let (v, _) = call(&mut d.client(), 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.new_version), "restarted into it: {v}");
}
