//! Tarball bases: a local .tar, .tar.gz, .tar.xz or .tar.zst with its sha256. The checksum
//! is checked before anything is unpacked; the uncompressed tar is cached by that checksum.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};

use super::BaseTar;
use crate::cache::{Cache, sha256_file};
use crate::error::UserError;
use crate::host::Host;
use crate::progress::Stage;

pub fn produce(
    host: &Host,
    cache: &Cache,
    path: &Path,
    sha256: &str,
    stage: &dyn Stage,
) -> Result<BaseTar> {
    let key = format!("tarball-{sha256}.tar");
    // The file must be there and be what the profile says even when the cache has its
    // tar: a build that works here only because of the cache fails on a fresh machine.
    if !path.is_file() {
        return Err(
            UserError::invalid(format!("base tarball {} does not exist", path.display()))
                .hint("fix [base] tarball in the profile")
                .into(),
        );
    }
    stage.message("checking sha256");
    let actual = sha256_file(path)?;
    if actual != sha256 {
        return Err(UserError::new(
            crate::error::Kind::Corrupt,
            format!(
                "base tarball {} has sha256 {actual}, but the profile expects {sha256}",
                path.display()
            ),
        )
        .hint("if the new tarball is the one you want, put its sha256 in [base] sha256")
        .into());
    }
    if let Some(hit) = cache.get(host, "base", &key)? {
        return Ok(BaseTar {
            path: hit.path,
            sha256: hit.sha256,
            cached: true,
        });
    }
    stage.message("unpacking");
    let hit = cache.put("base", &key, |out| {
        let mut r = decompressor(path)?;
        let mut w = File::create(out)?;
        std::io::copy(&mut r, &mut w)
            .map_err(|e| not_a_root(path, &format!("it does not decompress ({e})")))?;
        check_root(out, path)
    })?;
    Ok(BaseTar {
        path: hit.path,
        sha256: hit.sha256,
        cached: false,
    })
}

/// What a root filesystem must hold: an init for the kernel to start (a link counts).
const INITS: &[&str] = &[
    "usr/lib/systemd/systemd",
    "lib/systemd/systemd",
    "sbin/init",
    "usr/sbin/init",
];

/// The error about the user's tarball `path`: `why` it is not a base.
fn not_a_root(path: &Path, why: &str) -> anyhow::Error {
    UserError::invalid(format!(
        "base tarball {} is not a root filesystem: {why}",
        path.display()
    ))
    .hint(
        "[base] tarball takes a whole root filesystem as a tar (.tar, .tar.gz, .tar.xz, \
         .tar.zst), e.g. what `mmdebstrap --variant=minbase RELEASE root.tar` writes",
    )
    .into()
}

/// Reads every header of the uncompressed tar `tar` (made from the user's `path`): it must
/// be a tar, and hold /etc, /usr and an init. Errors name `path` and quote no bytes of it.
fn check_root(tar: &Path, path: &Path) -> Result<()> {
    let file = File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| not_a_root(path, &format!("it is not a tar ({e})")))?;
    let mut names = std::collections::BTreeSet::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| not_a_root(path, &format!("it is not a readable tar ({e})")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = name.trim_start_matches("./").trim_matches('/').to_string();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    if names.is_empty() {
        return Err(not_a_root(path, "it holds nothing"));
    }
    let has_dir = |d: &str| {
        names.contains(d)
            || names
                .range(format!("{d}/")..)
                .next()
                .is_some_and(|n| n.starts_with(&format!("{d}/")))
    };
    let missing: Vec<&str> = ["etc", "usr"].into_iter().filter(|d| !has_dir(d)).collect();
    if !missing.is_empty() {
        return Err(not_a_root(
            path,
            &format!(
                "it has no /{} ({} entries, starting {})",
                missing.join(", no /"),
                names.len(),
                names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if !INITS.iter().any(|i| names.contains(*i)) {
        return Err(not_a_root(
            path,
            &format!("it has no init (none of /{})", INITS.join(", /")),
        ));
    }
    Ok(())
}

/// A reader of the uncompressed tar, chosen by magic number.
fn decompressor(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    let f = BufReader::new(File::open(path)?);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(f)),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(f)?),
        _ => Box::new(f),
    })
}
