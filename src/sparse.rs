//! Sparse files: where a file holds data (SEEK_DATA/SEEK_HOLE) and its sha256 with the
//! holes hashed as zeros without reading them. Images are mostly holes; flashing writes
//! and hashes only what is there.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256};

/// Bytes read at a time.
pub const CHUNK: usize = 4 << 20;
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// `lseek` with SEEK_DATA/SEEK_HOLE; `None` past the last data (ENXIO).
pub fn seek(f: &File, to: SeekFrom) -> Result<Option<u64>> {
    match rustix::fs::seek(f, to) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context("seeking in a sparse file")),
    }
}

/// The ranges of `f`'s first `len` bytes that hold data, in order. Where the filesystem
/// cannot tell (no SEEK_DATA), the whole file is one range.
pub fn data_ranges(f: &File, len: u64) -> Result<Vec<Range<u64>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(data) = seek(f, SeekFrom::Data(pos))? else {
            break;
        };
        if data >= len {
            break;
        }
        let hole = seek(f, SeekFrom::Hole(data))?.unwrap_or(len).min(len);
        out.push(data..hole);
        pos = hole;
    }
    Ok(out)
}

/// Feeds `n` zero bytes to `h`.
pub fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        // OK to cast: k <= ZEROS.len().
        h.update(&ZEROS[..k as usize]);
        n -= k;
    }
}

/// Feeds `f`'s bytes in `range` to `h`.
pub fn hash_range(f: &File, h: &mut Sha256, range: Range<u64>, buf: &mut [u8]) -> Result<()> {
    let mut pos = range.start;
    while pos < range.end {
        let n = usize::try_from(range.end - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        f.read_exact_at(&mut buf[..n], pos)
            .with_context(|| format!("reading at byte {pos}"))?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// The sha256 of the whole file, reading only its data ranges.
pub fn sha256(f: &File) -> Result<String> {
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    for r in data_ranges(f, len)? {
        hash_zeros(&mut h, r.start - pos);
        hash_range(f, &mut h, r.clone(), &mut buf)?;
        pos = r.end;
    }
    hash_zeros(&mut h, len - pos);
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ranges_and_hash_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        let ranges = data_ranges(&f, 64 << 20).unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert!(ranges[0].start == 0 && ranges[1].contains(&(32 << 20)));
        assert!(ranges.iter().map(|r| r.end - r.start).sum::<u64>() < 1 << 20);
        let mut all = vec![0u8; 64 << 20];
        all[..5].copy_from_slice(b"start");
        all[32 << 20..(32 << 20) + 6].copy_from_slice(b"middle");
        assert_eq!(sha256(&f).unwrap(), crate::cache::sha256(&all));
        let mut g = File::create(dir.path().join("g")).unwrap();
        g.write_all(b"x").unwrap();
        let g = File::open(dir.path().join("g")).unwrap();
        assert_eq!(
            data_ranges(&g, 1).unwrap(),
            std::iter::once(0..1).collect::<Vec<_>>()
        );
    }
}
