//! Google Compute Engine's image format: a gzip'd GNU tar holding one file, `disk.raw`, whose
//! size is a whole number of GiB. The tar entry is sparse (old GNU sparse headers, which
//! GNU tar and GCE read), so the zeros GCE's rounding adds cost nothing. Every header field
//! is fixed: mtime is the recipe's epoch, owner root, and gzip carries no name or time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::Stamp;

const GIB: u64 = 1 << 30;
/// The granularity of the sparse map: a 4 KiB block of zeros is a hole.
const BLOCK: usize = 4096;
/// Sparse entries in the main header and in each extension header.
const IN_HEADER: usize = 4;
const IN_EXTENSION: usize = 21;

pub fn write(raw: &Path, out: &Path, stamp: &Stamp) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    let map = sparse_map(&src, len)?;
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(BufWriter::new(file), flate2::Compression::fast());
    let mut w = Counting { inner: gz, n: 0 };
    for block in headers(&map, len.div_ceil(GIB).max(1) * GIB, stamp.epoch) {
        w.write_all(&block)?;
    }
    let mut buf = vec![0u8; crate::sparse::CHUNK];
    for &(off, n) in &map {
        copy_range(&src, off, n, &mut buf, &mut w)?;
    }
    pad(&mut w, 512)?;
    w.write_all(&[0u8; 1024])?; // the end-of-archive marker
    pad(&mut w, 10240)?; // GNU tar's default record
    let file = w.inner.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// Where `raw` holds data: (offset, length) runs of 4 KiB blocks that are not all zeros.
pub fn sparse_map(raw: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    let mut map: Vec<(u64, u64)> = Vec::new();
    let bs = BLOCK as u64;
    super::zero_aware_blocks(raw, len, BLOCK, |i, b| {
        let at = i * bs;
        match map.last_mut() {
            Some((off, n)) if *off + *n == at => *n += b.len() as u64,
            _ => map.push((at, b.len() as u64)),
        }
        Ok(())
    })?;
    Ok(map)
}

/// The tar headers of `disk.raw`, `size` bytes long, holding the runs of `map`: the main
/// header with the first four runs, then extension headers of 21 runs each. The last run
/// is the empty one at `size` that GNU tar writes for a file ending in a hole.
fn headers(map: &[(u64, u64)], size: u64, mtime: i64) -> Vec<[u8; 512]> {
    let mut runs = map.to_vec();
    if runs.last().is_none_or(|&(o, n)| o + n < size) {
        runs.push((size, 0));
    }
    let stored: u64 = runs.iter().map(|r| r.1).sum();
    let mut h = [0u8; 512];
    h[..8].copy_from_slice(b"disk.raw");
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[124..136], stored);
    number(&mut h[136..148], u64::try_from(mtime).unwrap_or(0));
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    let (first, rest) = runs.split_at(runs.len().min(IN_HEADER));
    for (k, &(o, n)) in first.iter().enumerate() {
        let at = 386 + k * 24;
        number(&mut h[at..at + 12], o);
        number(&mut h[at + 12..at + 24], n);
    }
    h[482] = u8::from(!rest.is_empty());
    number(&mut h[483..495], size);
    checksum(&mut h);
    let mut out = vec![h];
    let chunks: Vec<_> = rest.chunks(IN_EXTENSION).collect();
    for (c, chunk) in chunks.iter().enumerate() {
        let mut e = [0u8; 512];
        for (k, &(o, n)) in chunk.iter().enumerate() {
            number(&mut e[k * 24..k * 24 + 12], o);
            number(&mut e[k * 24 + 12..k * 24 + 24], n);
        }
        e[504] = u8::from(c + 1 < chunks.len());
        out.push(e);
    }
    out
}

/// A tar number: octal digits and a NUL where they fit, GNU's base-256 otherwise.
fn number(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&be);
        field[0] = 0x80;
    }
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut Counting<W>, to: u64) -> std::io::Result<()> {
    let rem = w.n % to;
    if rem != 0 {
        // OK to cast: below `to`, at most 10240.
        w.write_all(&vec![0u8; (to - rem) as usize])?;
    }
    Ok(())
}

fn copy_range(src: &File, off: u64, n: u64, buf: &mut [u8], w: &mut impl Write) -> Result<()> {
    let mut pos = off;
    while pos < off + n {
        // OK to cast: at most buf.len().
        let k = (off + n - pos).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..k], pos)
            .with_context(|| format!("reading the image at byte {pos}"))?;
        w.write_all(&buf[..k])?;
        pos += k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_octal_or_base_256() {
        let mut f = [0u8; 12];
        number(&mut f, 0o644);
        assert_eq!(&f, b"00000000644\0");
        number(&mut f, 10 << 30);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..].try_into().unwrap()), 10 << 30);
    }

    #[test]
    fn many_runs_spill_into_extension_headers() {
        let map: Vec<_> = (0..30).map(|i| (i * 8192, 4096)).collect();
        let h = headers(&map, GIB, 1_767_225_600);
        // 31 runs with the empty last one: 4 in the header, 21 + 6 in two extensions.
        assert_eq!(h.len(), 3);
        assert_eq!(h[0][482], 1);
        assert_eq!(h[1][504], 1);
        assert_eq!(h[2][504], 0);
        assert_eq!(&h[2][5 * 24..5 * 24 + 12], b"10000000000\0"); // the run at 1 GiB
    }
}
