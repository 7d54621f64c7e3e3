//! A disk that fills while the local outputs write: the log store (SQLite) and the directory
//! output on a small tmpfs. Each run that meets the full disk fails with one clear error, what was
//! stored before stays whole and readable, nothing half-written is left, and once space is freed
//! the next run succeeds. Needs root to mount (skipped with a message otherwise).

use std::path::Path;
use std::process::Output;

use crate::util::{TestHome, Tmpfs, stderr, stdout};

/// `butler --dbpath <db> --prefix <prefix> run --stdout name=out -- sh -c <script>`.
fn run_into_store(home: &TestHome, db: &Path, prefix: &str, script: &str) -> Output {
    home.butler()
        .args(["--dbpath", db.to_str().unwrap(), "--prefix", prefix, "run", "--stdout", "name=out"])
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap()
}

fn cat(home: &TestHome, db: &Path, path: &str) -> Vec<u8> {
    let out = home.run(&["--dbpath", db.to_str().unwrap(), "logs", "cat", path]);
    assert!(out.status.success(), "cat {path}: {}", stderr(&out));
    out.stdout
}

/// The failure contract of a run that met the full disk: a non-zero exit and exactly one
/// `butler: error:` line, which says the disk is full.
fn assert_disk_full_error(out: &Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(250), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("butler: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    let said = |what: &str| errors[0].matches(what).count();
    assert_eq!(
        (said("No space left on device") + said("is full"), said("free some space")),
        (1, 1),
        "the error says what and what to do, once (not repeated through the chain): {}",
        errors[0]
    );
}

/// A script writing `n` numbered lines of about 60 bytes.
fn lines(tag: &str, n: usize) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do echo \"{tag} line $i, long enough to fill a small disk\"; i=$((i+1)); done"
    )
}

fn expected(tag: &str, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{tag} line {i}, long enough to fill a small disk\n").into_bytes())
        .collect()
}

#[test]
fn a_full_disk_under_the_log_store_fails_clearly_and_keeps_what_was_stored() {
    let Some(fs) = Tmpfs::mount("a_full_disk_under_the_log_store", "4m") else { return };
    let home = TestHome::new();
    let db = fs.path().join("butler.db");
    let out = run_into_store(&home, &db, "before", &lines("before", 200));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cat(&home, &db, "before/+/out"), expected("before", 200));

    // Full before the run opens the store, and full in the middle of its ingestion.
    for (leave, prefix) in [(0, "at-open"), (256 << 10, "during")] {
        let filler = fs.fill(leave);
        let out = run_into_store(&home, &db, prefix, &lines(prefix, 20_000));
        assert_disk_full_error(&out);
        // Full at open shows at open, or at the first write when the WAL index a read-only
        // reader (`logs cat`) left beside the database is still there to open.
        let err = stderr(&out);
        let at_open = err.contains("cannot open the database");
        assert!(at_open || err.contains("output: log store:"), "{err}");
        assert!(leave == 0 || !at_open, "{err}");
        assert!(!stdout(&out).contains("stored"), "no claim of success: {}", stdout(&out));
        std::fs::remove_file(filler).unwrap();
        // What was stored before is whole, and the database is sound.
        assert_eq!(cat(&home, &db, "before/+/out"), expected("before", 200));
        let conn = butler::db::open(&butler::db::DbPath::File(db.clone())).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }
    let out = run_into_store(&home, &db, "after", &lines("after", 2000));
    assert!(out.status.success(), "with space again the next run succeeds: {}", stderr(&out));
    assert_eq!(cat(&home, &db, "after/+/out"), expected("after", 2000));
    assert_eq!(cat(&home, &db, "before/+/out"), expected("before", 200));
}

#[test]
fn a_full_disk_under_the_directory_output_fails_clearly_and_leaves_whole_files() {
    let Some(fs) = Tmpfs::mount("a_full_disk_under_the_directory_output", "1m") else { return };
    let home = TestHome::new();
    let dir = fs.path().join("logs");
    let run = |prefix: &str, script: &str| {
        home.butler()
            .args(["--prefix", prefix, "--output", &format!("directory,path={}", dir.display())])
            .args(["run", "--stdout", &format!("name={prefix}"), "--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    let out = run("before", &lines("before", 100));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.join("before")).unwrap(), expected("before", 100));

    let filler = fs.fill(0);
    let out = run("during", &lines("during", 20_000));
    assert_disk_full_error(&out);
    assert_eq!(std::fs::read(dir.join("before")).unwrap(), expected("before", 100));
    // What did land is the start of the stream, never a torn or reordered line; no temporary
    // file is left behind.
    let got = std::fs::read(dir.join("during")).unwrap_or_default();
    assert!(expected("during", 20_000).starts_with(&got), "{} bytes", got.len());
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    std::fs::remove_file(filler).unwrap();
    let out = run("after", &lines("after", 1000));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(dir.join("after")).unwrap(), expected("after", 1000));
}

/// Reading needs no write: on a completely full disk `logs cat`, `logs ls` and `logs tail` still
/// show what is stored (opening the store read-only), and a missing database is said to be one.
#[test]
fn reading_the_log_store_works_on_a_completely_full_disk() {
    let Some(fs) = Tmpfs::mount("reading_the_log_store_works_on_a_completely_full_disk", "2m")
    else {
        return;
    };
    let home = TestHome::new();
    let db = fs.path().join("butler.db");
    let out = run_into_store(&home, &db, "kept", &lines("kept", 300));
    assert!(out.status.success(), "{}", stderr(&out));
    let _filler = fs.fill(0);
    assert_eq!(cat(&home, &db, "kept/+/out"), expected("kept", 300));
    let dbpath = db.to_str().unwrap();
    let out = home.run(&["--dbpath", dbpath, "logs", "ls"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("kept/+/out\ttext"), "{}", stdout(&out));
    let out = home.run(&["--dbpath", dbpath, "logs", "tail", "-n", "1", "kept/+/out"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "kept line 299, long enough to fill a small disk\n");

    let missing = fs.path().join("nothing-here.db");
    let out = home.run(&["--dbpath", missing.to_str().unwrap(), "logs", "cat", "a/+/b"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("there is no database at {}", missing.display())), "{err}");
    assert!(!missing.exists(), "reading creates no database");
}
