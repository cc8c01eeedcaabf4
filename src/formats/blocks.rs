//! Reading a raw image block by block, skipping the blocks that are all zeros. Which blocks
//! are zero is decided by their bytes, never by where the filesystem keeps holes, so the
//! output of a format does not depend on the filesystem the image was written on.

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};

/// Calls `each(index, bytes)` for every `size`-byte block of `file`'s first `len` bytes that
/// holds a byte other than zero, in order. The last block is short when `len` is not a
/// multiple of `size`.
pub fn zero_aware_blocks(
    file: &File,
    len: u64,
    size: usize,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let bs = size as u64;
    let mut buf = vec![0u8; size];
    // Data ranges may share a block when the block is larger than the filesystem's.
    let mut next = 0u64;
    for r in crate::sparse::data_ranges(file, len)? {
        let first = (r.start / bs).max(next);
        let last = (r.end - 1) / bs;
        for i in first..=last {
            let at = i * bs;
            // OK to cast: at most `size`.
            let n = (len - at).min(bs) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading the image at byte {at}"))?;
            if buf[..n].iter().any(|&b| b != 0) {
                each(i, &buf[..n])?;
            }
        }
        next = last + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped_whether_holes_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(10 * 4096 + 100).unwrap();
        f.write_all_at(&[0u8; 4096], 4096).unwrap(); // written zeros
        f.write_all_at(b"x", 2 * 4096 + 5).unwrap();
        f.write_all_at(b"y", 10 * 4096 + 99).unwrap();
        let mut seen = vec![];
        zero_aware_blocks(&f, 10 * 4096 + 100, 4096, |i, b| {
            seen.push((i, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(2, 4096), (10, 100)]);
    }
}
