//! The release tool's command line: `publish` writes the broth tree, `keygen` makes a signing key.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use butler_release::{KEY_ENV, Publish, SigningKey};
use butler_updater::Channel;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "butler-release", about = "Publish butler builds as a broth tree")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write <out>/<package>/<channel>/ (LATEST, versions, <v>/archive/default, signed files).
    /// Signs with the key file named by BUTLER_SIGNING_KEY_FILE when it is set.
    Publish {
        /// The butler executable to publish.
        #[arg(long, default_value = "target/release/butler")]
        binary: PathBuf,
        /// Version to publish (default: what the binary reports).
        #[arg(long)]
        version: Option<String>,
        /// Channel, e.g. linux-amd64 (default: this platform's).
        #[arg(long)]
        channel: Option<String>,
        /// Publish to the -head channel of this platform.
        #[arg(long)]
        head: bool,
        #[arg(long, default_value = "dist/broth")]
        out: PathBuf,
        #[arg(long, default_value = "butler")]
        package: String,
        /// Extra files for the zip's root.
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Days the signed LATEST stays fresh.
        #[arg(long, default_value_t = 30)]
        expires_days: u64,
        /// Leave LATEST alone (publish an older or pre-release version).
        #[arg(long)]
        no_latest: bool,
    },
    /// Make a signing key pair: <out>/butler-release.key (secret) and .pub.
    Keygen {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Keygen { out } => {
            let key = SigningKey::generate()?;
            let (sk, pk) = key.write_pair(&out)?;
            eprintln!("secret key: {} (set {KEY_ENV} to this path to sign)", sk.display());
            eprintln!("public key: {}", pk.display());
            println!("{}", key.public_base64());
        }
        Cmd::Publish {
            binary,
            version,
            channel,
            head,
            out,
            package,
            files,
            expires_days,
            no_latest,
        } => {
            let version = match version {
                Some(v) => v,
                None => butler_release::binary_version(&binary)?,
            };
            let channel = match channel {
                Some(c) => parse_channel(&c)?,
                None => Channel::current(head),
            };
            let key = match std::env::var_os(KEY_ENV).filter(|v| !v.is_empty()) {
                Some(p) => Some(
                    SigningKey::from_file(PathBuf::from(p).as_path())
                        .with_context(|| format!("loading the key named by {KEY_ENV}"))?,
                ),
                None => {
                    eprintln!("warning: {KEY_ENV} is not set; publishing without signatures");
                    None
                }
            };
            let p = Publish {
                package,
                channel,
                version,
                binary,
                extra_files: files,
                out,
                expires_in: Duration::from_secs(expires_days * 86_400),
                set_latest: !no_latest,
            };
            let done = butler_release::publish(&p, key.as_ref())?;
            eprintln!(
                "published {} {} to {} ({} bytes, {})",
                p.package,
                done.manifest.version,
                done.channel_dir.display(),
                done.manifest.archive.size,
                if done.signed { "signed" } else { "unsigned" }
            );
        }
    }
    Ok(())
}

fn parse_channel(s: &str) -> Result<Channel> {
    let (rest, head) = match s.strip_suffix("-head") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let (os, arch) =
        rest.split_once('-').with_context(|| format!("channel {s:?} is not <os>-<arch>[-head]"))?;
    Ok(Channel { os: os.into(), arch: arch.into(), head })
}
