//! `butler upgrade` against a broth server that resets, stalls, fails for a while or changes the
//! file under a resumed download, and on a disk that fills during the download or the unpacking.
//! Each failure keeps the failure contract (`Install::assert_untouched`); each recoverable fault
//! ends in the new version. (Statuses, cuts, endless, silent and trickling bodies are in
//! `cli.rs`.)

use std::path::PathBuf;

use super::*;
use crate::util::Tmpfs;

fn archive_gets(broth: &Broth, from: usize) -> Vec<server::Seen> {
    let path = broth.archive_path(&fixtures().new_version);
    broth.server.seen().into_iter().filter(|s| s.path == path).skip(from).collect()
}

fn cache_files(inst: &Install) -> Vec<String> {
    let cache = inst.home.path().join("update-cache");
    std::fs::read_dir(cache)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The new version's archive file in `broth`.
fn archive_file(broth: &Broth) -> PathBuf {
    broth.file(&format!("{}/archive/default", fixtures().new_version))
}

/// Leaves a resumable partial download in `inst`'s cache: every answer is cut until the run
/// gives up. Returns how many requests that took.
fn leave_a_partial_download(broth: &Broth, inst: &Install) -> usize {
    let path = broth.archive_path(&fixtures().new_version);
    broth.server.fault(&path, Fault::CutAfter(64 << 10, 12));
    let out = inst.run(broth, &["-y"]);
    inst.assert_untouched(&out);
    assert!(cache_files(inst).iter().any(|n| n.ends_with(".part")), "{:?}", cache_files(inst));
    archive_gets(broth, 0).len()
}

#[test]
fn a_connection_reset_mid_body_is_resumed() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::ResetAfter(1 << 20, 2));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let gets = archive_gets(&broth, 0);
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(gets[1].headers.get("range").is_some_and(|r| r.starts_with("bytes=")), "{gets:?}");
}

#[test]
fn a_server_that_always_resets_fails_cleanly_and_says_so() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::ResetAfter(32 << 10, 1000));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(matches!(out.status.code(), Some(3 | 4)), "{}", stderr(&out));
    assert!(stderr(&out).contains("reset"), "the cause is named: {}", stderr(&out));
    inst.assert_untouched(&out);
}

#[test]
fn a_stall_mid_body_is_resumed_after_the_read_timeout() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::StallAfter(1 << 20, 1));
    let inst = Install::new();
    let out =
        inst.cmd(&broth, &["-y"]).env("BUTLER_UPGRADE_READ_TIMEOUT_MS", "300").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let gets = archive_gets(&broth, 0);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].headers.get("range").map(String::as_str), Some("bytes=1048576-"));
}

#[test]
fn an_archive_failing_with_5xx_for_a_while_is_fetched_after_retries() {
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::StatusTimes(503, 2));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(archive_gets(&broth, 0).len(), 3);
}

#[test]
fn a_file_replaced_under_a_resumed_download_with_a_new_etag_is_fetched_in_full() {
    let broth = Broth::new(true);
    let inst = Install::new();
    let first = leave_a_partial_download(&broth, &inst);
    // The server now has another file under the same name (so another ETag): If-Range makes it
    // answer in full, and the full answer is checked against the signed manifest.
    let good = std::fs::read(archive_file(&broth)).unwrap();
    let mut other = good.clone();
    other.truncate(good.len() / 2);
    broth.replace(&format!("{}/archive/default", fixtures().new_version), &other);
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "the manifest says");
    inst.assert_untouched(&out);
    let second = archive_gets(&broth, first);
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].headers.contains_key("if-range"), "{second:?}");
    assert!(
        cache_files(&inst).is_empty(),
        "nothing left to splice later: {:?}",
        cache_files(&inst)
    );

    // The right file again (a third ETag): installed.
    broth.replace(&format!("{}/archive/default", fixtures().new_version), &good);
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), fixtures().new_version);
}

#[test]
fn a_file_changed_under_a_resumed_download_with_the_same_etag_is_caught_by_the_hash() {
    let broth = Broth::new(true);
    let inst = Install::new();
    let first = leave_a_partial_download(&broth, &inst);
    // A server that lies: different bytes (the same length) under the same validator, so the
    // resumed range is spliced onto the old start.
    let file = archive_file(&broth);
    let good = std::fs::read(&file).unwrap();
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let mut changed = good.clone();
    for b in &mut changed[good.len() - 4096..] {
        *b ^= 0xa5;
    }
    let rewrite = |data: &[u8]| {
        broth.replace(&format!("{}/archive/default", fixtures().new_version), data);
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(mtime).unwrap();
    };
    rewrite(&changed);
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "SHA-256");
    inst.assert_untouched(&out);
    let second = archive_gets(&broth, first);
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].headers.contains_key("range"), "it was resumed: {second:?}");
    assert!(cache_files(&inst).is_empty(), "the spliced file is gone: {:?}", cache_files(&inst));

    // The server is honest again: the next run starts from the first byte and installs.
    rewrite(&good);
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), fixtures().new_version);
    let third = archive_gets(&broth, first + 1);
    assert_eq!(third.len(), 1, "{third:?}");
    assert!(!third[0].headers.contains_key("range"), "started over: {third:?}");
}

#[test]
fn a_resumed_range_answered_from_the_wrong_offset_is_not_spliced() {
    let broth = Broth::new(true);
    let inst = Install::new();
    let first = leave_a_partial_download(&broth, &inst);
    let path = broth.archive_path(&fixtures().new_version);
    // Every range request is answered from the first byte: the partial file is dropped, and the
    // download starts over without a range.
    broth.server.fault(&path, Fault::RangeFromStart);
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), fixtures().new_version);
    let gets = archive_gets(&broth, first);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[0].headers.contains_key("range"), "{gets:?}");
    assert!(!gets[1].headers.contains_key("range"), "{gets:?}");
    assert!(cache_files(&inst).is_empty(), "{:?}", cache_files(&inst));
}

#[test]
fn a_latest_naming_a_version_the_server_does_not_have_fails_cleanly() {
    let broth = Broth::new(false);
    broth.replace("LATEST", b"0.9.0\n");
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("404") || stderr(&out).contains("not found"), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not serve"), "{}", stderr(&out));
    inst.assert_untouched(&out);
}

#[test]
fn a_manifest_refused_while_the_archive_downloads_stops_it_and_keeps_nothing() {
    let f = fixtures();
    let broth = Broth::new(true);
    // The manifest was edited after signing, and is answered only once the archive has been
    // asked for; the archive trickles, so it is still coming when the manifest is refused.
    let rel = format!("{}/manifest.json", f.new_version);
    let text =
        std::fs::read_to_string(broth.file(&rel)).unwrap().replace("\"size\": ", "\"size\": 9");
    broth.replace(&rel, text.as_bytes());
    let archive = broth.archive_path(&f.new_version);
    broth.server.fault(&broth.path(&rel), Fault::AfterRequestFor(archive.clone()));
    broth.server.fault(&archive, Fault::Trickle);
    let inst = Install::new();
    let started = std::time::Instant::now();
    // The deadline only bounds the test should the download go on.
    let out =
        inst.cmd(&broth, &["-y"]).env("BUTLER_UPGRADE_MAX_TIME_MS", "20000").output().unwrap();
    assert_failed_with(&out, 6, "verify failed");
    inst.assert_untouched(&out);
    // Both were in flight together, and the refusal ended the download (a trickle would take
    // an hour): the run waited neither for the server's 10 s nor for the archive.
    assert_eq!(archive_gets(&broth, 0).len(), 1);
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "{:?}", started.elapsed());
    // What a server that failed verification sent is not kept to be resumed.
    assert!(cache_files(&inst).is_empty(), "{:?}", cache_files(&inst));
}

#[test]
fn an_unsigned_latest_whose_archive_holds_the_old_version_is_refused() {
    let f = fixtures();
    let broth = Broth::new(false);
    // LATEST names the new version, but its zip is the old one's (a mix-up, or a downgrade).
    let old = std::fs::read(broth.file(&format!("{}/archive/default", f.old_version))).unwrap();
    broth.replace(&format!("{}/archive/default", f.new_version), &old);
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "reports version");
    inst.assert_untouched(&out);
}

/// File size, rounded up to whole KiB, as `mount`'s size option.
fn kib(bytes: u64) -> String {
    format!("{}k", bytes.div_ceil(1024))
}

#[test]
fn a_disk_that_fills_during_the_download_fails_cleanly_and_the_next_run_resumes() {
    let Some(fs) = Tmpfs::mount("a_disk_that_fills_during_the_download", "2m") else { return };
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    // The update cache (and the database) live on the small disk; the archive does not fit.
    let cmd = || {
        let mut cmd = inst.cmd(&broth, &["-y"]);
        cmd.env("BUTLER_HOME", fs.path());
        cmd
    };
    let out = cmd().output().unwrap();
    assert_failed_with(&out, 13, "No space left on device");
    assert!(stderr(&out).contains("free some space"), "says what to do: {}", stderr(&out));
    inst.assert_untouched(&out);
    let gets = archive_gets(&broth, 0).len();
    let cache = fs.path().join("update-cache");
    let part = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "part"));
    assert!(part.is_some_and(|p| p.metadata().unwrap().len() > 0), "what arrived is kept");

    // Space freed: the next run goes on from what the full disk held, and installs.
    fs.resize("64m");
    let out = cmd().output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let resumed = archive_gets(&broth, gets);
    assert!(resumed[0].headers.contains_key("range"), "{resumed:?}");
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Bytes of the installed (old) butler and of the new version's archive, to size a small disk.
fn old_and_archive_sizes() -> (u64, u64) {
    let f = fixtures();
    let archive = template(true).join(format!(
        "butler/{}/{}/archive/default",
        channel().name(),
        f.new_version
    ));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    (size(&f.old), size(&archive))
}

#[test]
fn a_disk_that_fills_while_unpacking_fails_cleanly_and_leaves_nothing() {
    let f = fixtures();
    let (old, archive) = old_and_archive_sizes();
    // Room for the old butler and the archive, not for the unpacked new one.
    let size = kib(old + archive + archive / 2);
    let Some(fs) = Tmpfs::mount("a_disk_that_fills_while_unpacking", &size) else { return };
    let broth = Broth::new(true);
    let inst = Install::in_dir(fs.path());
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 13, "No space left on device");
    assert!(stderr(&out).contains("unpack"), "says which step: {}", stderr(&out));
    assert!(stderr(&out).contains("free some space"), "says what to do: {}", stderr(&out));
    inst.assert_untouched(&out);
    assert_eq!(inst.listing(), ["butler"]);

    fs.resize(&kib(3 * old + 2 * archive));
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
}

#[test]
fn the_daemon_answers_a_full_disk_with_an_error_and_keeps_serving() {
    use serde_json::json;
    let f = fixtures();
    let (old, archive) = old_and_archive_sizes();
    let size = kib(old + archive + archive / 2);
    let Some(fs) = Tmpfs::mount("the_daemon_answers_a_full_disk", &size) else { return };
    let broth = Broth::new(true);
    let inst = Install::in_dir(fs.path());
    let d = super::daemon::daemon_from(&inst, &broth);
    let mut c = d.client();
    let (reply, _) = super::daemon::call(&mut c, 2, "Update.Apply", json!({}));
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("No space left on device"), "{reply}");
    assert_eq!(version_of(&inst.exe), f.old_version);
    assert_eq!(inst.listing(), ["butler"], "nothing left behind");
    assert_eq!(inst.history().last().unwrap().1, "failed");
    // Still serving, and with room again the same request installs.
    fs.resize(&kib(3 * old + 2 * archive));
    let (reply, _) = super::daemon::call(&mut c, 3, "Update.Apply", json!({}));
    assert!(reply["error"].is_null(), "{reply}");
    assert_eq!(version_of(&inst.exe), f.new_version);
}
