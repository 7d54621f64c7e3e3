//! `butler upgrade` by hand: checks, installs, refusals and rollbacks, in place and versioned.

use super::*;

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
    assert!(!stdout(&out).contains("TLS"), "plain http has no TLS to rely on: {}", stdout(&out));
    assert_eq!(result_of(&out)["verified"], false);
    assert_eq!(version_of(&inst.exe), f.new_version);
    // Without --json, a person sees it labelled as a warning.
    let plain = Install::new();
    let mut cmd = Command::new(&plain.exe);
    plain.env(&mut cmd, &unsigned);
    let out = cmd.args(["upgrade", "-y"]).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: butler"), "{}", stderr(&out));

    // --require-signature refuses an unsigned server from the start.
    let inst = Install::new();
    let out = inst.run(&unsigned, &["--require-signature"]);
    assert_failed_with(&out, 6, "signed");
    inst.assert_untouched(&out);

    // Once a channel served signatures, an unsigned answer from it is refused.
    let signed = Broth::new(true);
    let out = inst.run(&signed, &["--check"]);
    assert_eq!(out.status.code(), Some(100), "an update is available: {}", stderr(&out));
    assert_eq!(result_of(&out)["signed"], true);
    // Same base URL, signatures gone.
    for sig in ["LATEST.minisig", &format!("{}/manifest.json.minisig", f.new_version)] {
        std::fs::remove_file(signed.file(sig)).unwrap();
    }
    let out = inst.run(&signed, &["-y"]);
    assert_failed_with(&out, 6, "signed");
    inst.assert_untouched(&out);
}

#[test]
fn with_a_trusted_key_nothing_unsigned_is_installed_even_on_a_fresh_database() {
    let f = fixtures();
    // LATEST signed but the manifest's signature missing, then nothing signed at all.
    let half = Broth::new(true);
    std::fs::remove_file(half.file(&format!("{}/manifest.json.minisig", f.new_version))).unwrap();
    let inst = Install::new();
    let out = inst.run(&half, &["-y"]);
    assert_failed_with(&out, 6, "signed");
    inst.assert_untouched(&out);

    let none = Broth::new(true);
    for sig in ["LATEST.minisig", &format!("{}/manifest.json.minisig", f.new_version)] {
        std::fs::remove_file(none.file(sig)).unwrap();
    }
    let inst = Install::new();
    let out = inst.run(&none, &["-y"]);
    assert_failed_with(&out, 6, "signed");
    inst.assert_untouched(&out);
}

#[test]
fn check_reports_without_installing_and_never_downgrades() {
    let f = fixtures();
    let broth = Broth::new(false);
    let inst = Install::new();
    let out = inst.run(&broth, &["--check"]);
    assert_eq!(out.status.code(), Some(100), "an update is available: {}", stderr(&out));
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
    // A named version the server does not list is not "available", --check or not.
    for args in [&["--check", "--to", "9.9.9"][..], &["-y", "--to", "9.9.9"]] {
        let out = inst.run(&broth, args);
        assert_failed_with(&out, 5, "no published version matches 9.9.9");
        assert!(!stdout(&out).contains("\"updateAvailable\":true"), "{}", stdout(&out));
    }
    assert_eq!(version_of(&inst.exe), f.old_version);
}

#[test]
fn missing_latest_fails_cleanly() {
    let broth = Broth::new(true);
    broth.server.fault(&broth.path("LATEST"), Fault::Status(404));
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 3, "check failed");
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(stderr(&out).contains("hint: is --broth-url"), "{}", stderr(&out));
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
fn a_download_steady_above_the_floor_still_has_a_deadline() {
    let f = fixtures();
    let broth = Broth::new(false);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Trickle);
    let inst = Install::new();
    let out = inst
        .cmd(&broth, &["-y"])
        .env("BUTLER_UPGRADE_MIN_BPS", "1")
        .env("BUTLER_UPGRADE_MAX_TIME_MS", "700")
        .output()
        .unwrap();
    assert_failed_with(&out, 4, "did not finish within");
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
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir, signed: true };
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
    assert_eq!(out.status.code(), Some(0), "no is an answer: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("not updated"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("to {}? [y/N]", f.new_version)), "{}", stdout(&out));
    assert_eq!(version_of(&inst.exe), f.old_version);
    let out = on_tty("y\n");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("100.0%"), "no progress bar: {}", stdout(&out));
    assert!(
        stdout(&out).contains(" / ") && stdout(&out).contains("/s"),
        "size and speed: {}",
        stdout(&out)
    );
    assert_eq!(version_of(&inst.exe), f.new_version);

    // --no-progress: the same install at a terminal, without the bar.
    let quiet = Install::new();
    let mut cmd = Command::new("script");
    quiet.env(&mut cmd, &broth);
    cmd.args(["-qec", &format!("'{}' upgrade -y --no-progress", quiet.exe.display()), "/dev/null"]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(!stdout(&out).contains('%'), "a bar despite --no-progress: {}", stdout(&out));
    assert_eq!(version_of(&quiet.exe), f.new_version);

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
fn a_cut_download_is_resumed_from_a_mirror_when_the_file_is_the_same() {
    let f = fixtures();
    let broth = Broth::new(true);
    let path = broth.archive_path(&f.new_version);
    broth.server.fault(&path, Fault::CutAfter(64 << 10, 12));
    let inst = Install::new();
    inst.assert_untouched(&inst.run(&broth, &["-y"]));
    // The same tree from another address: the validator matches, so the download goes on.
    let mirror = Server::start(broth.server.root.clone());
    let out = inst.cmd(&broth, &["-y"]).env("BUTLER_BROTH_URL", mirror.url()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(version_of(&inst.exe), f.new_version);
    let gets: Vec<_> = mirror.seen().into_iter().filter(|s| s.path == path).collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].headers.get("range"), Some(&format!("bytes={}-", 12 * (64 << 10))));
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
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
}

#[test]
fn an_expired_latest_is_stale_not_up_to_date() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &f.new, &f.new_version, true, Some(key()), 0);
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir, signed: true };
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
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir, signed: true };
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 6, "reports version");
    assert!(stderr(&out).contains("smoke test failed"), "{}", stderr(&out));
    inst.assert_untouched(&out);
}

#[test]
fn a_new_build_that_hangs_is_refused_and_leaves_no_process_behind() {
    // Its child outlives the shell unless the whole group is stopped; the odd duration marks it.
    let broth = broth_with_zip(&[("butler", b"#!/bin/sh\nsleep 61.25\n".to_vec())]);
    let inst = Install::new();
    let out =
        inst.cmd(&broth, &["-y"]).env("BUTLER_UPGRADE_SMOKE_TIMEOUT_MS", "300").output().unwrap();
    assert_failed_with(&out, 9, "did not finish within");
    inst.assert_untouched(&out);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| c.windows(5).any(|w| w == b"61.25"))
        })
    };
    while left() {
        assert!(std::time::Instant::now() < deadline, "the hanging build's child was left running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_build_that_leaves_a_process_holding_its_output_is_refused_promptly() {
    // The shell exits at once; its background child keeps the smoke test's pipe open for a
    // minute unless it is stopped with the shell's group.
    let broth = broth_with_zip(&[("butler", b"#!/bin/sh\nsleep 62.25 &\nexit 0\n".to_vec())]);
    let inst = Install::new();
    let mut child = inst
        .cmd(&broth, &["-y"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("butler upgrade waited for the output a leftover process held");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_failed_with(&out, 9, "printed no version");
    inst.assert_untouched(&out);
    let left = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c.windows(5).any(|w| w == b"62.25"))
    });
    assert!(!left, "the new build's leftover child is still running");
}

#[test]
fn rollback_without_a_previous_build_says_so() {
    let broth = Broth::new(true);
    let inst = Install::new();
    let out = inst.run(&broth, &["--rollback"]);
    assert_failed_with(&out, 12, "no previous version");
    inst.assert_untouched(&out);
}

/// Publishes a hand-made zip as the newest version of an unsigned tree.
fn broth_with_zip(entries: &[(&str, Vec<u8>)]) -> Broth {
    let entries: Vec<_> = entries.iter().map(|(n, d)| (*n, d.clone(), 0o755)).collect();
    broth_with_entries("9.9.9", &entries)
}

/// Publishes a hand-made zip of `(name, data, mode)` entries as `version` of an unsigned tree;
/// returns the tree and the archive's path.
fn broth_with_entries(version: &str, entries: &[(&str, Vec<u8>, u32)]) -> Broth {
    use std::io::Write;
    let broth = Broth::new(false);
    let p = broth.file(&format!("{version}/archive/default"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Another version's manifest must not vouch for this archive.
    let _ = std::fs::remove_file(broth.file(&format!("{version}/manifest.json")));
    let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    for (name, data, mode) in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
    broth.replace("LATEST", format!("{version}\n").as_bytes());
    broth
}

#[test]
fn installed_files_are_never_group_or_world_writable() {
    let f = fixtures();
    let exe = std::fs::read(&f.new).unwrap();
    let broth = broth_with_entries(
        &f.new_version,
        &[("butler", exe, 0o777), ("lib/helper.so", b"lib".to_vec(), 0o666)],
    );
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&inst.exe), 0o755);
    assert_eq!(mode(&inst.bin.join("lib/helper.so")), 0o644);
}

#[test]
fn a_zip_with_a_name_twice_is_refused() {
    let f = fixtures();
    let exe = std::fs::read(&f.new).unwrap();
    let broth = broth_with_entries(
        &f.new_version,
        &[("butler", exe, 0o755), ("butlex", b"#!/bin/sh\necho evil\n".to_vec(), 0o755)],
    );
    // Rename the second entry to the first one's name, in its local and central headers.
    let archive = broth.file(&format!("{}/archive/default", f.new_version));
    let mut bytes = std::fs::read(&archive).unwrap();
    let mut renamed = 0;
    for i in 0..bytes.len().saturating_sub(6) {
        if &bytes[i..i + 6] == b"butlex" {
            bytes[i + 5] = b'r';
            renamed += 1;
        }
    }
    assert_eq!(renamed, 2, "the name is in a local and a central header");
    std::fs::remove_file(&archive).unwrap();
    std::fs::write(&archive, bytes).unwrap();
    let inst = Install::new();
    let out = inst.run(&broth, &["-y"]);
    assert_failed_with(&out, 8, "appears twice");
    inst.assert_untouched(&out);
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
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
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
    let broth = Broth { server: Server::start(tree.path().to_owned()), _dir: tree, signed: true };
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

#[test]
fn check_exits_100_when_an_update_is_available_and_says_how_to_install_it() {
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut cmd = Command::new(&inst.exe);
    inst.env(&mut cmd, &broth);
    let out = cmd.args(["upgrade", "--check"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    assert!(stderr(&out).contains("run `butler upgrade` to install it"), "{}", stderr(&out));
    assert_eq!(inst.listing(), ["butler"], "nothing installed");
}

#[test]
fn ctrl_c_during_the_download_says_so_keeps_the_partial_and_installs_nothing() {
    use std::io::Read;
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Trickle);
    let inst = Install::new();
    let mut child =
        inst.cmd(&broth, &["-y"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let part = inst.home.path().join("update-cache").join(format!(
        "butler@{}@{}.part",
        channel().name(),
        f.new_version
    ));
    let start = std::time::Instant::now();
    while std::fs::metadata(&part).map_or(true, |m| m.len() == 0) {
        assert!(start.elapsed() < Duration::from_secs(20), "the download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(13), "cancelled, not killed: {err}");
    assert!(err.contains("cancelled") && err.contains("hint: run the same command again"), "{err}");
    assert!(std::fs::metadata(&part).is_ok_and(|m| m.len() > 0), "the partial download is kept");
    assert_eq!(version_of(&inst.exe), f.old_version);
    assert_eq!(inst.listing(), ["butler"]);
}
