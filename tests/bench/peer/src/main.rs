//! The bench's peer updater: what the `self_update` crate makes easy for a broth tree and nothing
//! more. `peer BASE CHANNEL [--force]` reads `LATEST`, downloads that version's archive to a temp
//! folder as the crate's own `update()` does, extracts `butler` from it and puts it in place of
//! the running executable with `self_replace`. No signature, hash, smoke test, fsync or rollback.

use std::error::Error;

fn main() {
    if let Err(e) = run() {
        eprintln!("peer: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().ok_or("usage: peer BASE CHANNEL [--force]")?;
    let channel = args.next().ok_or("usage: peer BASE CHANNEL [--force]")?;
    // The bench reinstalls the version it runs, as `butler upgrade --force` does.
    let force = args.next().as_deref() == Some("--force");
    let root = format!("{base}/butler/{channel}");

    let mut latest = Vec::new();
    self_update::Download::from_url(&format!("{root}/LATEST")).download_to(&mut latest)?;
    let latest = String::from_utf8(latest)?.trim().to_owned();
    let newer = self_update::version::bump_is_greater(self_update::cargo_crate_version!(), &latest)?;
    if !newer && !force {
        return Ok(());
    }

    let scratch = tempfile::TempDir::new()?;
    let archive_path = scratch.path().join("archive.zip");
    let archive = std::fs::File::create(&archive_path)?;
    self_update::Download::from_url(&format!("{root}/{latest}/archive/default"))
        .download_to(&archive)?;
    drop(archive);
    self_update::Extract::from_source(&archive_path)
        .archive(self_update::ArchiveKind::Zip)
        .extract_file(scratch.path(), "butler")?;
    self_replace::self_replace(scratch.path().join("butler"))?;
    Ok(())
}
