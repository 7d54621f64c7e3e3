//! The release tool: builds release zips and the broth tree (LATEST, versions, archives, signed
//! manifests) that any static file server can host. Shares its manifest types with the updater.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use butler_updater::Channel;
use butler_updater::manifest::{
    ArchiveInfo, FileEntry, LatestStatement, MANIFEST_FILE, Manifest, SIG_SUFFIX, hex,
};
use sha2::{Digest, Sha256};

/// The environment variable naming the secret key file `publish` signs with.
pub const KEY_ENV: &str = "BUTLER_SIGNING_KEY_FILE";

/// A minisign key pair loaded from a secret key file (unencrypted; keep the file private).
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_base64())
    }
}

impl SigningKey {
    pub fn generate() -> Result<SigningKey> {
        let kp = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| anyhow::anyhow!("generating a key: {e}"))?;
        Ok(SigningKey { sk: kp.sk, pk: kp.pk })
    }

    pub fn from_file(path: &Path) -> Result<SigningKey> {
        let text = fs_err::read_to_string(path)?;
        let sk = minisign::SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_unencrypted_secret_key())
            .map_err(|e| {
                anyhow::anyhow!("{} is not an unencrypted minisign secret key: {e}", path.display())
            })?;
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(SigningKey { sk, pk })
    }

    /// The public key as the updater takes it (`--trusted-key` / `BUTLER_TRUSTED_KEYS`).
    pub fn public_base64(&self) -> String {
        self.pk.to_base64()
    }

    /// Writes `<dir>/butler-release.key` (secret, mode 0600) and `<dir>/butler-release.pub`.
    pub fn write_pair(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        fs_err::create_dir_all(dir)?;
        let (skp, pkp) = (dir.join("butler-release.key"), dir.join("butler-release.pub"));
        if skp.exists() {
            bail!("{} exists; refusing to overwrite a signing key", skp.display());
        }
        let sk_box = self
            .sk
            .to_box(Some("butler release signing key"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut opts = fs_err::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use fs_err::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(&skp)?.write_all(sk_box.to_string().as_bytes())?;
        let pk_box = self.pk.to_box().map_err(|e| anyhow::anyhow!("{e}"))?;
        fs_err::write(&pkp, pk_box.to_string())?;
        Ok((skp, pkp))
    }

    /// A detached `.minisig` for `data` whose trusted comment is `comment`.
    pub fn sign(&self, data: &[u8], comment: &str) -> Result<String> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            data,
            Some(comment),
            Some("signature from butler-release"),
        )
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(sig.to_string())
    }
}

/// What `publish` puts on the server.
#[derive(Debug, Clone)]
pub struct Publish {
    pub package: String,
    pub channel: Channel,
    pub version: String,
    /// The main executable; it goes in the zip as `butler` (`butler.exe`) with its mode.
    pub binary: PathBuf,
    /// More files for the zip's root (libraries), with their modes.
    pub extra_files: Vec<PathBuf>,
    /// `<out>/<package>/<channel>/...` is written.
    pub out: PathBuf,
    /// How long the signed LATEST stays fresh.
    pub expires_in: Duration,
    /// Update LATEST to this version (off to publish an older version for `--to`).
    pub set_latest: bool,
}

/// What was written.
#[derive(Debug)]
pub struct Published {
    pub channel_dir: PathBuf,
    pub archive: PathBuf,
    pub manifest: Manifest,
    pub signed: bool,
}

/// Writes the version's archive and manifest, updates `versions` and LATEST, and signs when a key
/// is given.
pub fn publish(p: &Publish, key: Option<&SigningKey>) -> Result<Published> {
    let version = p.channel.parse_version(&p.version).map_err(|e| anyhow::anyhow!("{e}"))?;
    let channel_dir = p.out.join(&p.package).join(p.channel.name());
    let vdir = channel_dir.join(&version);
    fs_err::create_dir_all(vdir.join("archive"))?;
    let archive = vdir.join("archive").join("default");
    let mut inputs = vec![(p.channel.executable_name().to_owned(), p.binary.clone())];
    for f in &p.extra_files {
        let name =
            f.file_name().context("an extra file has no name")?.to_string_lossy().into_owned();
        inputs.push((name, f.clone()));
    }
    let files = write_zip(&archive, &inputs, p.channel.executable_name())?;
    let (size, sha256) = hash_file(&archive)?;
    let manifest = Manifest {
        package: p.package.clone(),
        version: version.clone(),
        channel: p.channel.name(),
        archive: ArchiveInfo { size, sha256 },
        files,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    write_atomic(&vdir.join(MANIFEST_FILE), &manifest_json)?;
    let manifest_sig = vdir.join(format!("{MANIFEST_FILE}{SIG_SUFFIX}"));
    if let Some(k) = key {
        let comment =
            format!("package={};version={version};channel={}", p.package, p.channel.name());
        write_atomic(&manifest_sig, k.sign(&manifest_json, &comment)?.as_bytes())?;
    } else {
        let _ = std::fs::remove_file(&manifest_sig);
    }
    update_versions(&channel_dir.join("versions"), &version, &p.channel)?;
    if p.set_latest {
        let latest = format!("{version}\n");
        write_atomic(&channel_dir.join("LATEST"), latest.as_bytes())?;
        let sig_path = channel_dir.join(format!("LATEST{SIG_SUFFIX}"));
        if let Some(k) = key {
            let expires =
                SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + p.expires_in.as_secs();
            let st =
                LatestStatement { version: version.clone(), channel: p.channel.name(), expires };
            write_atomic(&sig_path, k.sign(latest.as_bytes(), &st.to_comment())?.as_bytes())?;
        } else {
            let _ = std::fs::remove_file(&sig_path);
        }
    }
    Ok(Published { channel_dir, archive, manifest, signed: key.is_some() })
}

/// Zips `inputs` (name in zip, source path) with their unix modes, masked to 0o755 (so a build
/// host's loose umask never ships group- or world-writable files; the main executable always
/// executable), and returns the manifest entries.
pub fn write_zip(
    dest: &Path,
    inputs: &[(String, PathBuf)],
    main_exe: &str,
) -> Result<Vec<FileEntry>> {
    let tmp = dest.with_extension("tmp");
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(fs_err::File::create(&tmp)?));
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (name, src) in inputs {
        let mut mode = file_mode(src)? & 0o755;
        if name == main_exe {
            mode |= 0o755;
        }
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode)
            .large_file(fs_err::metadata(src)?.len() >= u32::MAX as u64);
        zip.start_file(name.as_str(), opts)?;
        let mut f = fs_err::File::open(src)?;
        let mut h = Sha256::new();
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            zip.write_all(&buf[..n])?;
            h.update(&buf[..n]);
            size += n as u64;
        }
        entries.push(FileEntry { path: name.clone(), size, sha256: hex(&h.finalize()), mode });
    }
    zip.finish()?.flush()?;
    fs_err::rename(&tmp, dest)?;
    Ok(entries)
}

#[cfg(unix)]
fn file_mode(p: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs_err::metadata(p)?.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_p: &Path) -> Result<u32> {
    Ok(0o644)
}

/// Size and lowercase-hex SHA-256 of a file.
pub fn hash_file(p: &Path) -> Result<(u64, String)> {
    let mut f = fs_err::File::open(p)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex(&h.finalize())))
}

/// Adds `version` to `versions` (`{"versions": [...]}`, newest first).
fn update_versions(path: &Path, version: &str, channel: &Channel) -> Result<()> {
    let mut list: Vec<String> = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)?
            .get("versions")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    list.retain(|v| v != version);
    list.insert(0, version.to_owned());
    if !channel.head {
        // Stable channels list by semver; anything unparsable sinks to the end.
        list.sort_by(|a, b| match (semver::Version::parse(a), semver::Version::parse(b)) {
            (Ok(a), Ok(b)) => b.cmp(&a),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        });
    }
    write_atomic(path, &serde_json::to_vec_pretty(&serde_json::json!({ "versions": list }))?)
}

/// Temp file, then rename: a server never serves half a file.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    fs_err::write(&tmp, data)?;
    fs_err::rename(&tmp, path)?;
    Ok(())
}

/// The version a butler binary reports, read exactly as the updater's smoke test reads it, so the
/// tree never publishes a version the updater would then refuse as a mismatch.
pub fn binary_version(bin: &Path) -> Result<String> {
    // A bare file name would be looked up on PATH; the user means the file here.
    let bin = std::path::absolute(bin).with_context(|| format!("finding {}", bin.display()))?;
    let scratch = tempfile::tempdir().context("making a scratch folder")?;
    butler_updater::install::smoke_test(&bin, scratch.path(), std::time::Duration::from_secs(30))
        .map(|r| r.version)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_a_signed_tree_the_updater_types_read() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs_err::write(&bin, b"#!/bin/sh\necho hi\n").unwrap();
        let key = SigningKey::generate().unwrap();
        let ch = Channel::for_platform("linux", "x86_64", false);
        let mut p = Publish {
            package: "butler".into(),
            channel: ch.clone(),
            version: "v1.2.3".into(),
            binary: bin.clone(),
            extra_files: vec![],
            out: dir.path().join("broth"),
            expires_in: Duration::from_secs(3600),
            set_latest: true,
        };
        let out = publish(&p, Some(&key)).unwrap();
        let cd = out.channel_dir;
        assert_eq!(fs_err::read_to_string(cd.join("LATEST")).unwrap(), "1.2.3\n");
        let keys = butler_updater::TrustedKeys::load(&[key.public_base64()]).unwrap();
        let latest = fs_err::read(cd.join("LATEST")).unwrap();
        let comment = keys
            .verify("LATEST", &latest, &fs_err::read(cd.join("LATEST.minisig")).unwrap())
            .unwrap();
        let st = LatestStatement::parse(&comment).unwrap();
        assert_eq!((st.version.as_str(), st.channel.as_str()), ("1.2.3", "linux-amd64"));
        let m: Manifest =
            serde_json::from_slice(&fs_err::read(cd.join("1.2.3/manifest.json")).unwrap()).unwrap();
        assert_eq!(m.files[0].mode & 0o111, 0o111);
        assert_eq!(
            m.archive.size,
            fs_err::metadata(cd.join("1.2.3/archive/default")).unwrap().len()
        );
        p.version = "1.10.0".into();
        p.set_latest = false;
        publish(&p, None).unwrap();
        let versions = fs_err::read_to_string(cd.join("versions")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&versions).unwrap();
        assert_eq!(v["versions"], serde_json::json!(["1.10.0", "1.2.3"]));
        assert_eq!(fs_err::read_to_string(cd.join("LATEST")).unwrap(), "1.2.3\n");
        assert!(!cd.join("1.10.0/manifest.json.minisig").exists());
    }

    #[test]
    fn keys_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (sk, pk) = key.write_pair(dir.path()).unwrap();
        let loaded = SigningKey::from_file(&sk).unwrap();
        assert_eq!(loaded.public_base64(), key.public_base64());
        let keys = butler_updater::TrustedKeys::load(&[pk.display().to_string()]).unwrap();
        let sig = loaded.sign(b"data", "c").unwrap();
        assert_eq!(keys.verify("x", b"data", sig.as_bytes()).unwrap(), "c");
        assert!(keys.verify("x", b"datA", sig.as_bytes()).is_err());
        assert!(key.write_pair(dir.path()).is_err(), "never overwrites a key");
    }
}
