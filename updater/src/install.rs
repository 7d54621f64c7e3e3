//! Everything that touches the install: the lock, leftovers, running a candidate build (the
//! smoke test, and [`Candidate`] for the caller's own check) and the two swaps (in place,
//! versioned). Only this module renames over an executable.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ErrorKind;

/// Every temporary name the updater creates in an install folder starts with this, so the next
/// run can remove what a killed run left.
pub const TEMP_PREFIX: &str = ".butler-upgrade";
/// The active version's name in a versioned root.
pub const CHOSEN_FILE: &str = ".chosen-version";

/// Held for the whole update: an OS lock on the install folder, released when the process dies.
#[derive(Debug)]
pub struct InstallLock {
    _file: std::fs::File,
}

impl InstallLock {
    pub fn acquire(dir: &Path) -> Result<InstallLock, ErrorKind> {
        // Locking the folder itself leaves no lock file behind; Windows cannot open folders, so
        // it gets a file that cleanup skips.
        #[cfg(unix)]
        let file = std::fs::File::open(dir).map_err(|e| ErrorKind::Io(fs_err_wrap(e, dir)))?;
        #[cfg(not(unix))]
        let file = {
            let p = dir.join(format!("{TEMP_PREFIX}.lock"));
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&p)
                .map_err(|e| ErrorKind::Io(fs_err_wrap(e, &p)))?
        };
        match file.try_lock() {
            Ok(()) => Ok(InstallLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(ErrorKind::Locked(dir.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(ErrorKind::Io(fs_err_wrap(e, dir))),
        }
    }
}

fn fs_err_wrap(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{e}: {}", path.display()))
}

/// Removes what an interrupted run left in `dir` (call with the lock held).
pub fn clean_leftovers(dir: &Path) -> Result<(), ErrorKind> {
    for entry in fs_err::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(TEMP_PREFIX) || name == format!("{TEMP_PREFIX}.lock") {
            continue;
        }
        let path = entry.path();
        if is_aside_copy(&name) {
            // Still running (Windows will not delete a running image): a later run removes it.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!("keeping {} for now: {e}", path.display());
            }
            continue;
        }
        tracing::info!("removing {} left by an interrupted update", path.display());
        if entry.file_type()?.is_dir() {
            fs_err::remove_dir_all(&path)?;
        } else {
            fs_err::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The name a Windows swap gives a running executable it moves aside.
#[cfg(any(windows, test))]
fn aside_name(pid: u32) -> String {
    format!("{TEMP_PREFIX}-aside-{pid}.tmp")
}

fn is_aside_copy(name: &str) -> bool {
    name.starts_with(&format!("{TEMP_PREFIX}-aside-")) && name.ends_with(".tmp")
}

/// Removes the copies of executables that in-place swaps moved aside while they ran, from `dir`,
/// unless an update holds the folder; one still running stays for a later run. Windows runs
/// this when butler starts, since a running image cannot be deleted by the swap itself.
pub fn remove_aside_copies(dir: &Path) -> usize {
    let Ok(_lock) = InstallLock::acquire(dir) else { return 0 };
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|e| is_aside_copy(&e.file_name().to_string_lossy()))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Says clearly, before anything is downloaded, when the folder cannot take the new files.
pub fn check_writable(dir: &Path) -> Result<(), ErrorKind> {
    let probe = dir.join(format!("{TEMP_PREFIX}-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(ErrorKind::NotWritable { dir: dir.to_owned(), why: e.to_string() }),
    }
}

/// fsync a folder so a rename in it survives a power cut (a no-op where folders cannot be opened).
pub fn sync_dir(dir: &Path) -> Result<(), ErrorKind> {
    #[cfg(unix)]
    fs_err::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` and missing parents owner-only (0700): the update cache holds what butler will
/// run. Folders that exist already keep their mode.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A candidate butler run in isolation: its own home in `scratch`, no test pause points, stdout
/// piped for the caller to read, nothing else inherited. Killed and reaped when dropped, on unix
/// with everything it started (its own process group), so a candidate that hangs leaves nothing.
#[derive(Debug)]
pub struct Candidate(Child);

impl Candidate {
    pub fn start(
        exe: &Path,
        scratch: &Path,
        args: &[&std::ffi::OsStr],
    ) -> std::io::Result<Candidate> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("BUTLER_HOME", scratch)
            .env_remove("BUTLER_TEST_PAUSE_AT")
            .env_remove("BUTLER_TEST_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        spawn(&mut cmd).map(Candidate)
    }

    /// Its stdout, the first time this is called.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Ok(group) = i32::try_from(self.0.id()) {
            // SAFETY: a plain kill(2) of the group this candidate leads; not yet reaped, so the
            // id cannot have been reused.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a butler binary says of itself in `version --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// Without a leading `v`.
    pub version: String,
    /// Abilities newer builds announce (`daemon-hand-over`); older ones list none.
    pub features: Vec<String>,
}

/// Runs `<exe> version --json` and returns what it reports.
pub fn smoke_test(exe: &Path, scratch: &Path, timeout: Duration) -> Result<Reported, ErrorKind> {
    let fail = |why: String| ErrorKind::SmokeTest(format!("{}: {why}", exe.display()));
    let args = ["version", "--json"].map(std::ffi::OsStr::new);
    let mut candidate = Candidate::start(exe, scratch, &args)
        .map_err(|e| fail(format!("it does not start: {e}")))?;
    let mut stdout = candidate.take_stdout().expect("piped");
    let (ended, eof) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(64 * 1024).read_to_end(&mut out);
        let _ = ended.send(());
        out
    });
    let deadline = Instant::now() + timeout;
    // The end of its output is the end of the run: reaped right after that instead of at the
    // next of ever sparser polls (which still notice a run that ends with its output held open).
    let mut output_ended = false;
    let mut pause = Duration::from_micros(100);
    let status = loop {
        let exited = candidate.0.try_wait().map_err(|e| fail(format!("waiting for it: {e}")))?;
        if output_ended || exited.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_timeout(&mut candidate.0, left) {
                Ok(Some(status)) => break status,
                Ok(None) => return Err(fail(format!("it did not finish within {timeout:?}"))),
                Err(e) => return Err(fail(format!("waiting for it: {e}"))),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!("it did not finish within {timeout:?}")));
        }
        output_ended = eof.recv_timeout(pause.min(left)).is_ok();
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    if !output_ended {
        // It exited, but something it started still holds its output: that goes with its group
        // (unix), and the output is read no longer than a moment after.
        output_ended = eof.recv_timeout(Duration::from_millis(100)).is_ok() || {
            drop(candidate);
            eof.recv_timeout(Duration::from_secs(1)).is_ok()
        };
    }
    if !output_ended {
        return Err(fail("it exited, but a process it started kept its output open".into()));
    }
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!("it exited with {status}")));
    }
    let text = String::from_utf8_lossy(&out);
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v["type"] == "result"
            && let Some(ver) = v["value"]["version"].as_str()
        {
            let features = v["value"]["features"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            return Ok(Reported { version: ver.trim_start_matches('v').to_owned(), features });
        }
    }
    Err(fail("it printed no version".into()))
}

/// Spawns, retrying briefly on ETXTBSY: the file was just written, and a fork elsewhere in this
/// process (the daemon runs other children) may still hold an inherited write handle to it.
fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Name of the kept previous copy of `path` (`butler` → `butler.old`).
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".old");
    path.with_file_name(name)
}

/// The list of extra files a multi-file update replaced, kept beside `butler.old` for rollback.
fn backup_list_path(exe: &Path) -> PathBuf {
    let mut p = backup_path(exe).into_os_string();
    p.push(".files");
    PathBuf::from(p)
}

/// Points `to` at the current content of `from` atomically: a hard link (a copy where links are
/// not possible) under a temp name, then a rename over `to`.
fn preserve(from: &Path, to: &Path, dir: &Path) -> Result<(), ErrorKind> {
    let tmp = dir.join(format!("{TEMP_PREFIX}-keep.tmp"));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        fs_err::copy(from, &tmp)?;
        fs_err::File::open(&tmp)?.sync_all()?;
    }
    crate::hook::point("preserve-linked");
    fs_err::rename(&tmp, to)?;
    // rename() between two links to the same file succeeds without doing anything (POSIX), which
    // happens when a killed run already linked `to`; the temp name must still go.
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// In-place swap: every file of `staged` replaces its counterpart beside `exe` (the main
/// executable replaces `exe` itself); previous versions are kept as `<name>.old`. All or nothing:
/// on a failure the files already moved are put back.
pub fn swap_in_place(
    exe: &Path,
    staged: &Path,
    main_exe: &str,
    files: &[String],
) -> Result<(), ErrorKind> {
    let dir = exe.parent().ok_or_else(|| ErrorKind::NotWritable {
        dir: exe.to_owned(),
        why: "no parent folder".into(),
    })?;
    // The main executable goes last so the install never runs a new binary with old libraries.
    let mut order: Vec<&String> = files.iter().filter(|f| f.as_str() != main_exe).collect();
    order.extend(files.iter().filter(|f| f.as_str() == main_exe));
    let mut moved: Vec<(PathBuf, bool)> = Vec::new();
    let result = (|| -> Result<(), ErrorKind> {
        for f in &order {
            let dest = if f.as_str() == main_exe { exe.to_owned() } else { dir.join(f.as_str()) };
            let had_old = dest.exists();
            if had_old {
                preserve(&dest, &backup_path(&dest), dir)?;
            } else if let Some(parent) = dest.parent() {
                fs_err::create_dir_all(parent)?;
            }
            crate::hook::point("swap-before-rename");
            replace_file(&staged.join(f.as_str()), &dest)?;
            crate::hook::point("swap-after-rename");
            moved.push((dest, had_old));
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (dest, had_old) in moved.iter().rev() {
            let undo = if *had_old {
                preserve(&backup_path(dest), dest, dir)
            } else {
                fs_err::remove_file(dest).map_err(ErrorKind::from)
            };
            if let Err(u) = undo {
                tracing::error!("could not put back {}: {u}", dest.display());
            }
        }
        return Err(e);
    }
    let extras: Vec<&str> =
        files.iter().filter(|f| f.as_str() != main_exe).map(String::as_str).collect();
    let list = backup_list_path(exe);
    if extras.is_empty() {
        let _ = std::fs::remove_file(&list);
    } else {
        fs_err::write(&list, extras.join("\n"))?;
    }
    sync_dir(dir)?;
    Ok(())
}

/// Puts `new` in place of `dest` with one rename (Unix: atomic even while `dest` runs).
#[cfg(not(windows))]
fn replace_file(new: &Path, dest: &Path) -> Result<(), ErrorKind> {
    fs_err::rename(new, dest)?;
    Ok(())
}

/// Windows cannot replace a running executable, but it can rename it: move it aside first (it is
/// already preserved as `.old`), then move the new one in; put it back if that fails.
#[cfg(windows)]
fn replace_file(new: &Path, dest: &Path) -> Result<(), ErrorKind> {
    let aside = dest.with_file_name(aside_name(std::process::id()));
    if dest.exists() {
        fs_err::rename(dest, &aside)?;
    }
    if let Err(e) = fs_err::rename(new, dest) {
        let _ = std::fs::rename(&aside, dest);
        return Err(e.into());
    }
    // The running image stays locked until it exits; the next run's cleanup removes it.
    let _ = std::fs::remove_file(&aside);
    Ok(())
}

/// `--rollback` in place: swaps `exe` and `exe.old` (so a second rollback undoes the first),
/// with the extra files of a multi-file update.
pub fn rollback_in_place(exe: &Path) -> Result<(), ErrorKind> {
    let dir = exe.parent().ok_or(ErrorKind::NothingToRollBack)?;
    let old = backup_path(exe);
    if !old.is_file() {
        return Err(ErrorKind::NothingToRollBack);
    }
    let list = backup_list_path(exe);
    let extras: Vec<String> = std::fs::read_to_string(&list)
        .map(|s| s.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut targets: Vec<PathBuf> = extras.iter().map(|f| dir.join(f)).collect();
    targets.push(exe.to_owned());
    for t in targets {
        let b = backup_path(&t);
        if !b.is_file() {
            continue;
        }
        let tmp = dir.join(format!("{TEMP_PREFIX}-rollback.tmp"));
        let _ = std::fs::remove_file(&tmp);
        if t.exists() {
            std::fs::hard_link(&t, &tmp).or_else(|_| fs_err::copy(&t, &tmp).map(|_| ()))?;
        }
        replace_file(&b, &t)?;
        if tmp.exists() {
            fs_err::rename(&tmp, &b)?;
            let _ = std::fs::remove_file(&tmp);
        }
    }
    sync_dir(dir)?;
    Ok(())
}

/// The version a versioned root has chosen, if any.
pub fn chosen_version(root: &Path) -> Result<Option<String>, ErrorKind> {
    match std::fs::read_to_string(root.join(CHOSEN_FILE)) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ErrorKind::Io(fs_err_wrap(e, &root.join(CHOSEN_FILE)))),
    }
}

/// Writes `.chosen-version` atomically: temp file, fsync, rename, fsync the folder.
pub fn choose_version(root: &Path, version: &str) -> Result<(), ErrorKind> {
    let tmp = root.join(format!("{TEMP_PREFIX}-chosen.tmp"));
    {
        let mut f = fs_err::File::create(&tmp)?;
        f.write_all(version.as_bytes())?;
        f.sync_all()?;
    }
    crate::hook::point("choose-before-rename");
    fs_err::rename(&tmp, root.join(CHOSEN_FILE))?;
    sync_dir(root)?;
    Ok(())
}

/// Versioned install: moves `staged` to `versions/<version>`, chooses it, keeps the previously
/// chosen version as the last known good one and removes the rest.
pub fn install_versioned(
    root: &Path,
    staged: &Path,
    version: &str,
    scratch: &Path,
) -> Result<(), ErrorKind> {
    let versions = root.join("versions");
    fs_err::create_dir_all(&versions)?;
    let previous = chosen_version(root)?;
    let dest = versions.join(version);
    if dest.exists() {
        // A forced reinstall: move the old copy out of the way (into scratch, removed later).
        if previous.as_deref() == Some(version) {
            return Err(ErrorKind::Io(std::io::Error::other(format!(
                "{} is the chosen version and is already installed",
                dest.display()
            ))));
        }
        fs_err::rename(&dest, scratch.join("replaced"))?;
    }
    fs_err::rename(staged, &dest)?;
    sync_dir(&versions)?;
    crate::hook::point("versioned-moved");
    choose_version(root, version)?;
    for entry in fs_err::read_dir(&versions)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == version || Some(&name) == previous.as_ref() {
            continue;
        }
        tracing::info!("removing old version {name}");
        if let Err(e) = fs_err::remove_dir_all(entry.path()) {
            tracing::warn!("could not remove {name}: {e}");
        }
    }
    Ok(())
}

/// `--rollback` in a versioned root: choose the newest other installed version.
pub fn rollback_versioned(root: &Path) -> Result<String, ErrorKind> {
    let chosen = chosen_version(root)?;
    let mut others: Vec<(std::time::SystemTime, String)> = Vec::new();
    if let Ok(rd) = fs_err::read_dir(root.join("versions")) {
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if Some(&name) == chosen.as_ref() || name.starts_with('.') {
                continue;
            }
            let mtime = entry.metadata()?.modified()?;
            others.push((mtime, name));
        }
    }
    others.sort();
    let (_, pick) = others.pop().ok_or(ErrorKind::NothingToRollBack)?;
    choose_version(root, &pick)?;
    Ok(pick)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let staged = dir.path().join("staged");
        fs_err::create_dir_all(&bin).unwrap();
        fs_err::create_dir_all(&staged).unwrap();
        fs_err::write(bin.join("butler"), "old exe").unwrap();
        fs_err::write(bin.join("lib.so"), "old lib").unwrap();
        fs_err::write(staged.join("butler"), "new exe").unwrap();
        fs_err::write(staged.join("lib.so"), "new lib").unwrap();
        (dir, bin, staged)
    }

    fn read(p: &Path) -> String {
        fs_err::read_to_string(p).unwrap()
    }

    #[test]
    fn multi_file_swap_then_rollback_restores_every_file() {
        let (_d, bin, staged) = setup();
        let exe = bin.join("butler");
        let files = ["lib.so".to_owned(), "butler".to_owned()];
        swap_in_place(&exe, &staged, "butler", &files).unwrap();
        assert_eq!((read(&exe), read(&bin.join("lib.so"))), ("new exe".into(), "new lib".into()));
        assert_eq!(read(&bin.join("lib.so.old")), "old lib");
        rollback_in_place(&exe).unwrap();
        assert_eq!((read(&exe), read(&bin.join("lib.so"))), ("old exe".into(), "old lib".into()));
        assert_eq!(read(&bin.join("butler.old")), "new exe");
    }

    #[test]
    fn a_failed_multi_file_swap_puts_back_what_it_moved() {
        let (_d, bin, staged) = setup();
        // `zz` cannot replace a non-empty folder, so the swap fails after lib.so moved.
        fs_err::create_dir_all(bin.join("zz/inner")).unwrap();
        fs_err::write(staged.join("zz"), "new zz").unwrap();
        let exe = bin.join("butler");
        let files = ["lib.so".to_owned(), "zz".to_owned(), "butler".to_owned()];
        swap_in_place(&exe, &staged, "butler", &files).unwrap_err();
        assert_eq!(read(&exe), "old exe");
        assert_eq!(read(&bin.join("lib.so")), "old lib");
        assert!(bin.join("zz/inner").is_dir());
    }

    #[test]
    fn versioned_install_keeps_the_last_good_and_removes_older() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let scratch = dir.path().join("scratch");
        fs_err::create_dir_all(&scratch).unwrap();
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            let staged = dir.path().join(format!("staged-{v}"));
            fs_err::create_dir_all(&staged).unwrap();
            fs_err::write(staged.join("butler"), v).unwrap();
            install_versioned(&root, &staged, v, &scratch).unwrap();
            assert_eq!(chosen_version(&root).unwrap().as_deref(), Some(v));
        }
        let mut left: Vec<String> = fs_err::read_dir(root.join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.1.0", "1.2.0"]);
        assert_eq!(rollback_versioned(&root).unwrap(), "1.1.0");
        assert_eq!(chosen_version(&root).unwrap().as_deref(), Some("1.1.0"));
    }

    #[test]
    fn aside_copies_go_unless_in_use_and_only_they() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs_err::write(d.join(aside_name(1)), "old image").unwrap();
        fs_err::write(d.join("butler.exe"), "exe").unwrap();
        fs_err::write(d.join(format!("{TEMP_PREFIX}-aside-notes.txt")), "kept").unwrap();
        {
            let _busy = InstallLock::acquire(d).unwrap();
            assert_eq!(remove_aside_copies(d), 0, "an update holds the folder");
        }
        assert_eq!(remove_aside_copies(d), 1);
        assert!(!d.join(aside_name(1)).exists());
        assert!(d.join("butler.exe").exists());
    }

    /// What Windows does to a running executable, shown on the real thing: the swap replaces the
    /// very exe this test runs as (a copy of it, started and still running).
    #[cfg(windows)]
    #[test]
    fn a_running_exe_is_replaced_in_place_and_its_old_image_removed_later() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, staged) = (dir.path().join("bin"), dir.path().join("staged"));
        fs_err::create_dir_all(&bin).unwrap();
        fs_err::create_dir_all(&staged).unwrap();
        let exe = bin.join("butler.exe");
        fs_err::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        fs_err::write(staged.join("butler.exe"), "new exe").unwrap();
        // The copy runs `held_until_stdin_closes`, so it is running while the swap happens.
        let mut running = Command::new(&exe)
            .args(["--exact", "install::tests::held_until_stdin_closes", "--ignored"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = running.stdout.take().unwrap();
        out.read_exact(&mut [0u8; 1]).unwrap();
        swap_in_place(&exe, &staged, "butler.exe", &["butler.exe".to_owned()]).unwrap();
        assert_eq!(fs_err::read_to_string(&exe).unwrap(), "new exe");
        assert!(backup_path(&exe).is_file(), "the old build is kept as butler.exe.old");
        drop(running.stdin.take());
        out.read_to_end(&mut Vec::new()).unwrap();
        assert!(running.wait().unwrap().success());
        remove_aside_copies(&bin);
        let left: Vec<String> = fs_err::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX) && !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Not a test: the running process the test above replaces.
    #[cfg(windows)]
    #[test]
    #[ignore = "a helper process for the test above"]
    fn held_until_stdin_closes() {
        std::io::stdout().write_all(b"r").unwrap();
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = InstallLock::acquire(dir.path()).unwrap();
        assert!(matches!(InstallLock::acquire(dir.path()), Err(ErrorKind::Locked(_))));
    }
}
