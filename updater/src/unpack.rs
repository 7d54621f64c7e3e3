//! Safe unzip: no escapes, no links, bounded size and count, checked CRCs, restored modes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::ErrorKind;
use crate::manifest::{FileEntry, hex};

/// Bounds that make a zip bomb fail fast instead of filling the disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: 10_000, max_total: 1 << 30 }
    }
}

/// Unpacks `archive` into `dest` (which must exist and be empty) and returns every regular file
/// with its size, SHA-256 and the mode its entry stored (masked to 0o777, before the main
/// executable's execute bits are forced on and group/other write bits are taken off).
pub fn unpack(
    archive: &Path,
    dest: &Path,
    main_exe: &str,
    limits: Limits,
) -> Result<Vec<FileEntry>, ErrorKind> {
    let (files, unsynced) = unpack_unsynced(archive, dest, main_exe, limits)?;
    unsynced.sync()?;
    Ok(files)
}

/// Files written (and closed) but not yet known to be on disk: [`Unsynced::sync`] must succeed
/// before they are installed. Apart so the caller can overlap the writeback with other work.
#[derive(Debug)]
pub struct Unsynced(Vec<PathBuf>);

impl Unsynced {
    /// fsyncs every file, together at the end so the kernel can write them back in one go.
    ///
    /// On unix through a read-only handle: fsync flushes the file whatever handle asks, and a
    /// write handle held open would make running the new executable fail (ETXTBSY), so the smoke
    /// test can run meanwhile. Windows flushes only through a handle with write access, and
    /// cannot run a file such a handle holds: there the caller syncs before the smoke test.
    pub fn sync(self) -> Result<(), ErrorKind> {
        for path in self.0 {
            #[cfg(unix)]
            let f = fs_err::File::open(&path)?;
            #[cfg(not(unix))]
            let f = fs_err::OpenOptions::new().write(true).open(&path)?;
            f.sync_all()?;
        }
        Ok(())
    }
}

/// [`unpack`] without the final fsync, which the returned [`Unsynced`] does.
pub fn unpack_unsynced(
    archive: &Path,
    dest: &Path,
    main_exe: &str,
    limits: Limits,
) -> Result<(Vec<FileEntry>, Unsynced), ErrorKind> {
    let file = fs_err::File::open(archive)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| unsafe_zip(format!("not a readable zip: {e}")))?;
    // The crate keeps one entry per name; two readers of such a zip would disagree on its content.
    if zip.has_duplicate_names() {
        return Err(unsafe_zip("a file name appears twice in its directory".into()));
    }
    if zip.len() > limits.max_entries {
        return Err(unsafe_zip(format!(
            "{} entries, more than the limit of {}",
            zip.len(),
            limits.max_entries
        )));
    }
    let mut declared = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| unsafe_zip(format!("entry {i}: {e}")))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > limits.max_total {
        return Err(unsafe_zip(format!(
            "it would unpack to {declared} bytes, more than the limit of {} bytes",
            limits.max_total
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut to_sync = Vec::new();
    let hasher = crate::hasher::Hasher::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| unsafe_zip(format!("entry {i}: {e}")))?;
        let name = entry.name().map_err(|e| unsafe_zip(format!("entry {i}: {e}")))?.into_owned();
        let rel = safe_relative(&name)?;
        if entry.is_symlink() {
            return Err(unsafe_zip(format!("{name:?} is a symbolic link")));
        }
        let target = dest.join(&rel);
        if entry.is_dir() {
            fs_err::create_dir_all(&target)?;
            continue;
        }
        let key = rel.to_string_lossy().to_lowercase();
        if !seen.insert(key) {
            return Err(unsafe_zip(format!("{name:?} appears twice")));
        }
        if let Some(parent) = target.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let mode = entry.unix_mode().map(|m| m & 0o777).unwrap_or(0o644);
        let size = entry.size();
        let mut f = fs_err::OpenOptions::new().write(true).create_new(true).open(&target)?;
        let mut n = 0u64;
        let mut writeback = Writeback::default();
        loop {
            let r = fill(&mut entry, &mut buf)
                .map_err(|e| unsafe_zip(format!("{name:?} is corrupt: {e}")))?;
            if r == 0 {
                break;
            }
            n += r as u64;
            written += r as u64;
            // The declared size may lie; the real bytes are what count against the caps.
            if n > size || written > limits.max_total {
                return Err(unsafe_zip(format!("{name:?} unpacks to more bytes than it declares")));
            }
            f.write_all(&buf[..r])?;
            writeback.wrote(&f, n);
            hasher.update(bytes::Bytes::copy_from_slice(&buf[..r]));
            crate::hook::point("unpack-chunk");
        }
        if n != size {
            return Err(unsafe_zip(format!("{name:?} is truncated ({n} of {size} bytes)")));
        }
        let path = rel.to_string_lossy().replace('\\', "/");
        let mut final_mode = mode;
        if path == main_exe {
            final_mode |= 0o111 | 0o400;
        }
        // Whatever the zip says, nobody but the owner may change what butler will run.
        set_mode(&f, final_mode & !0o022)?;
        drop(f);
        to_sync.push(target);
        hasher.cut();
        out.push(FileEntry { path, size, sha256: String::new(), mode });
    }
    if !out.iter().any(|e| e.path == main_exe) {
        return Err(unsafe_zip(format!("it has no {main_exe} at its root")));
    }
    for (entry, digest) in out.iter_mut().zip(hasher.finish()) {
        entry.sha256 = hex(&digest);
    }
    Ok((out, Unsynced(to_sync)))
}

/// Reads until `buf` is full or the entry ends. Inflating hands out a few dozen KiB at a time;
/// whole buffers make a tenth of the writes and of the hashing thread's wake-ups.
fn fill(entry: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match entry.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Starts the disk writes of what was unpacked while the rest inflates, so the fsync before the
/// swap waits for little instead of writing the whole file then. Only a hint: the fsync is what
/// makes the files durable, and it still runs.
#[derive(Default)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Writeback {
    /// Bytes from the start of the file already handed to the kernel to write.
    started: u64,
    /// The file system refused the hint; the fsync does it all.
    refused: bool,
}

impl Writeback {
    /// Every 1 MiB: big enough to be one efficient request, small enough to overlap well.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    const STEP: u64 = 1 << 20;

    #[cfg(target_os = "linux")]
    fn wrote(&mut self, f: &fs_err::File, written: u64) {
        use std::os::fd::AsRawFd;
        if self.refused || written - self.started < Self::STEP {
            return;
        }
        let (from, len) = (self.started, written - self.started);
        // SAFETY: a plain syscall on a descriptor we own; it reads no memory of ours.
        let r = unsafe {
            libc::sync_file_range(
                f.file().as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        self.started = written;
        self.refused = r != 0;
    }

    #[cfg(not(target_os = "linux"))]
    fn wrote(&mut self, _f: &fs_err::File, _written: u64) {}
}

/// Accepts only plain relative paths made of normal components.
fn safe_relative(name: &str) -> Result<std::path::PathBuf, ErrorKind> {
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return Err(unsafe_zip(format!(
            "{:?} is not a plain relative path",
            name.escape_debug().to_string()
        )));
    }
    if name.starts_with('/') || (name.len() >= 2 && name.as_bytes()[1] == b':') {
        return Err(unsafe_zip(format!("{name:?} is an absolute path")));
    }
    let p = Path::new(name.trim_end_matches('/'));
    let mut rel = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(unsafe_zip(format!("{name:?} climbs out with '..'")));
            }
            _ => return Err(unsafe_zip(format!("{name:?} is an absolute path"))),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(unsafe_zip(format!("{name:?} names no file")));
    }
    Ok(rel)
}

fn unsafe_zip(why: String) -> ErrorKind {
    ErrorKind::BadArchive(why)
}

#[cfg(unix)]
fn set_mode(f: &fs_err::File, mode: u32) -> Result<(), ErrorKind> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_f: &fs_err::File, _mode: u32) -> Result<(), ErrorKind> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn make_zip(path: &Path, entries: &[(&str, &[u8], u32)]) {
        let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        for (name, data, mode) in entries {
            let opts = SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn try_unpack(
        entries: &[(&str, &[u8], u32)],
        limits: Limits,
    ) -> Result<Vec<FileEntry>, ErrorKind> {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        make_zip(&zip, entries);
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        unpack(&zip, &dest, "butler", limits)
    }

    #[test]
    fn restores_modes_and_makes_the_main_executable_executable() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        make_zip(
            &zip,
            &[("butler", b"bin", 0o644), ("lib/x.so", b"lib", 0o4755), ("README", b"r", 0o600)],
        );
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let files = unpack(&zip, &dest, "butler", Limits::default()).unwrap();
        assert_eq!(files.len(), 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &str| std::fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode("butler"), 0o755);
            assert_eq!(mode("lib/x.so"), 0o755, "setuid bits are masked off");
            assert_eq!(mode("README"), 0o600);
        }
        assert_eq!(std::fs::read(dest.join("lib/x.so")).unwrap(), b"lib");
    }

    #[test]
    fn rejects_escapes_and_absolute_paths() {
        for bad in ["../evil", "a/../../evil", "/etc/evil", "C:/evil", "a\\..\\evil"] {
            let err = try_unpack(&[("butler", b"x", 0o755), (bad, b"x", 0o644)], Limits::default())
                .unwrap_err();
            assert!(matches!(err, ErrorKind::BadArchive(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        w.start_file("butler", SimpleFileOptions::default()).unwrap();
        w.write_all(b"x").unwrap();
        w.add_symlink("link", "/etc/passwd", SimpleFileOptions::default()).unwrap();
        w.finish().unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(&zip, &dest, "butler", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn rejects_bombs_by_size_and_count() {
        let big = vec![0u8; 2 << 20];
        let err =
            try_unpack(&[("butler", &big, 0o755)], Limits { max_entries: 10, max_total: 1 << 20 })
                .unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        let many: Vec<(String, &[u8], u32)> =
            (0..20).map(|i| (format!("f{i}"), &b"x"[..], 0o644)).collect();
        let many: Vec<(&str, &[u8], u32)> =
            many.iter().map(|(n, d, m)| (n.as_str(), *d, *m)).collect();
        let err = try_unpack(&many, Limits { max_entries: 10, max_total: 1 << 20 }).unwrap_err();
        assert!(err.to_string().contains("entries"), "{err}");
    }

    #[test]
    fn detects_corrupt_data() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("a.zip");
        let data = b"hello hello hello hello".repeat(100);
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("butler", opts).unwrap();
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        // Flip one byte inside the stored data: the CRC no longer matches.
        let mut bytes = std::fs::read(&zip).unwrap();
        let at = bytes.windows(5).position(|w| w == b"hello").unwrap() + 100;
        bytes[at] ^= 0xff;
        std::fs::write(&zip, bytes).unwrap();
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(&zip, &dest, "butler", Limits::default()).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn needs_the_main_executable() {
        let err = try_unpack(&[("other", b"x", 0o755)], Limits::default()).unwrap_err();
        assert!(err.to_string().contains("no butler"), "{err}");
    }
}
