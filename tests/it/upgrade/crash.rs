//! An update cut short: SIGKILL at every pause point, and two updates at once, never leave the
//! user without a working butler.

use super::*;

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
        // The rename of the main executable is the one moment the install changes.
        let swapped = matches!(point, "swap-after-rename" | "after-swap");
        let expected = if swapped { &f.new_version } else { &f.old_version };
        assert_eq!(&version_of(&inst.exe), expected, "after a kill at {point}");
        // The next run cleans up and finishes the job.
        let out = inst.run(&broth, &["-y"]);
        assert!(out.status.success(), "after a kill at {point}: {}", stderr(&out));
        assert_eq!(version_of(&inst.exe), f.new_version, "after a kill at {point}");
        assert_eq!(inst.listing(), ["butler", "butler.old"], "leftovers after a kill at {point}");
        let previous = inst.exe.with_file_name("butler.old");
        assert_eq!(
            version_of(&previous),
            f.old_version,
            "butler.old runs, after a kill at {point}"
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
