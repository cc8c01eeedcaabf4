//! Container image blobs (manifests, configs, layers) in the build cache, content-addressed
//! at `CACHE/oci-blobs/sha256/HEX`. A blob is stored only after its bytes hashed to its
//! name, and checked again when it is read; a blob that no longer matches is deleted.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

use super::reference::Digest;
use crate::cache::Cache;

pub struct BlobStore {
    dir: PathBuf,
}

/// A stored blob's bytes did not hash to what was expected.
#[derive(Debug)]
pub struct Mismatch {
    pub actual: Digest,
    pub size: u64,
}

impl BlobStore {
    pub fn new(cache: &Cache) -> BlobStore {
        BlobStore {
            dir: cache.root.join("oci-blobs/sha256"),
        }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// The blob's path if it is stored and intact.
    pub fn get(&self, d: &Digest) -> Result<Option<PathBuf>> {
        let path = self.path(d);
        if !path.is_file() {
            return Ok(None);
        }
        if crate::cache::sha256_file(&path)? == d.hex() {
            return Ok(Some(path));
        }
        let _ = std::fs::remove_file(&path);
        Ok(None)
    }

    pub fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        match self.get(d)? {
            Some(p) => Ok(Some(
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            )),
            None => Ok(None),
        }
    }

    /// Stores what `write` produces if it hashes to `d` (and has `size`, when given).
    /// Returns Ok(Err(mismatch)) when it does not; nothing is stored then.
    pub fn put(
        &self,
        d: &Digest,
        size: Option<u64>,
        write: impl FnOnce(&mut dyn Write) -> Result<()>,
    ) -> Result<std::result::Result<PathBuf, Mismatch>> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", d.hex(), std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = HashingWriter {
            inner: io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            len: 0,
        };
        let result = write(&mut w).and_then(|()| Ok(w.inner.flush()?));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let actual = Digest::from_hex(&hex::encode(w.hash.finalize())).context("sha256 hex")?;
        if &actual != d || size.is_some_and(|s| s != w.len) {
            let _ = std::fs::remove_file(&tmp);
            return Ok(Err(Mismatch {
                actual,
                size: w.len,
            }));
        }
        let path = self.path(d);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("moving blob into {}", path.display()))?;
        Ok(Ok(path))
    }

    /// Stores `bytes` under their own digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if self.get(&d)?.is_none() {
            // OK to ignore the mismatch case: the digest was computed from these bytes.
            let _ = self.put(&d, None, |w| Ok(w.write_all(bytes)?))?;
        }
        Ok(d)
    }

    /// Copies `r` into the store as `d`.
    pub fn put_reader(
        &self,
        d: &Digest,
        size: Option<u64>,
        r: &mut dyn Read,
    ) -> Result<std::result::Result<PathBuf, Mismatch>> {
        self.put(d, size, |w| {
            io::copy(r, w)?;
            Ok(())
        })
    }
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_verified_blobs_and_drops_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(&Cache::new(dir.path()));
        let d = store.put_bytes(b"layer").unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), b"layer");
        let other = Digest::of(b"other");
        let m = store
            .put(&other, None, |w| Ok(w.write_all(b"not other")?))
            .unwrap()
            .unwrap_err();
        assert_eq!(m.actual, Digest::of(b"not other"));
        assert!(store.get(&other).unwrap().is_none());
        std::fs::write(store.path(&d), b"layeR").unwrap();
        assert!(store.get(&d).unwrap().is_none(), "corrupt blob is not used");
        assert!(!store.path(&d).exists(), "corrupt blob is removed");
    }
}
