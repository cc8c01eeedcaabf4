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
    if let Some(hit) = cache.get(host, "base", &key)? {
        return Ok(BaseTar {
            path: hit.path,
            sha256: hit.sha256,
            cached: true,
        });
    }
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
    stage.message("unpacking");
    let hit = cache.put("base", &key, |out| {
        let mut r = decompressor(path)?;
        let mut w = File::create(out)?;
        std::io::copy(&mut r, &mut w)
            .with_context(|| format!("decompressing {}", path.display()))?;
        Ok(())
    })?;
    Ok(BaseTar {
        path: hit.path,
        sha256: hit.sha256,
        cached: false,
    })
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
