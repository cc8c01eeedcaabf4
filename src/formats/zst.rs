//! `raw.zst`: the raw image through zstd (level 3, one thread, the crate's bundled
//! libzstd), what pull, upload and remote flash move. Holes go in as the zeros they are.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

pub fn write(raw: &Path, out: &Path) -> Result<()> {
    let mut src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut z = zstd::Encoder::new(BufWriter::with_capacity(1 << 20, file), 3)?;
    z.include_checksum(true)?;
    z.set_pledged_src_size(Some(src.metadata()?.len()))?;
    std::io::copy(&mut src, &mut z).with_context(|| format!("compressing {}", raw.display()))?;
    let file = z.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}
