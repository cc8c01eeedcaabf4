//! A content-addressed store of stage outputs. Each entry is a file named by the digest of
//! everything it depends on, with a `.sha256` of its bytes beside it; an entry whose bytes
//! no longer match is deleted and rebuilt, never used.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::host::Host;

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// An entry that passed its integrity check.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: PathBuf,
    pub sha256: String,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$IMAGEBUILD_CACHE`, else `$XDG_CACHE_HOME/imagebuild`, else `~/.cache/imagebuild`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("IMAGEBUILD_CACHE") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("imagebuild");
        }
        let home =
            std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/cache"), PathBuf::from);
        home.join(".cache/imagebuild")
    }

    /// A directory for downloaded packages, shared by all builds.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    fn entry(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// The entry `kind/key` if present and intact. A corrupt entry is removed.
    pub fn get(&self, host: &Host, kind: &str, key: &str) -> Result<Option<Hit>> {
        let path = self.entry(kind, key);
        let sum_path = sidecar(&path);
        let (Ok(expected), true) = (std::fs::read_to_string(&sum_path), path.is_file()) else {
            return Ok(None);
        };
        let actual = sha256_file(&path)?;
        if actual == expected.trim() {
            return Ok(Some(Hit {
                path,
                sha256: actual,
            }));
        }
        host.note(&format!(
            "cache: {kind}/{key} is corrupt (sha256 {actual}, expected {}); rebuilding it",
            expected.trim()
        ));
        crate::say!("warning: cache entry {kind}/{key} is corrupt; rebuilding it");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&sum_path);
        Ok(None)
    }

    /// Makes entry `kind/key` with `produce`, which writes the file at the path it is given;
    /// the entry appears atomically.
    pub fn put(
        &self,
        kind: &str,
        key: &str,
        produce: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Hit> {
        let path = self.entry(kind, key);
        let dir = path.parent().context("cache entry has no parent")?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating cache directory {}", dir.display()))?;
        let tmp = dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let result = produce(&tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let sha256 = sha256_file(&tmp)?;
        write_atomic(&sidecar(&path), format!("{sha256}\n").as_bytes())?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("moving {} into the cache", path.display()))?;
        Ok(Hit { path, sha256 })
    }
}

impl Cache {
    /// Makes entry `kind/key` a second name for `from` (a hard link, or a copy where links
    /// are not possible), with the same checksum.
    pub fn alias(&self, kind: &str, key: &str, from: &Hit) -> Result<Hit> {
        let path = self.entry(kind, key);
        if path == from.path {
            return Ok(from.clone());
        }
        let dir = path.parent().context("cache entry has no parent")?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating cache directory {}", dir.display()))?;
        write_atomic(&sidecar(&path), format!("{}\n", from.sha256).as_bytes())?;
        if same_file(&path, &from.path) {
            // rename(2) between two links of one file does nothing and would leave the
            // temporary link behind (one per run, each the size of a base).
            return Ok(Hit {
                path,
                sha256: from.sha256.clone(),
            });
        }
        let tmp = dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&from.path, &tmp).is_err() {
            std::fs::copy(&from.path, &tmp)
                .with_context(|| format!("copying {} in the cache", from.path.display()))?;
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("moving {} into the cache", path.display()))?;
        Ok(Hit {
            path,
            sha256: from.sha256.clone(),
        })
    }
}

/// Whether `a` and `b` are links to one file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Hex sha256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_and_corruption_is_rebuilt_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let host = Host::new(false);
        assert!(cache.get(&host, "base", "k").unwrap().is_none());
        let hit = cache
            .put("base", "k", |p| Ok(std::fs::write(p, b"rootfs")?))
            .unwrap();
        assert_eq!(hit.sha256, sha256(b"rootfs"));
        assert_eq!(
            cache.get(&host, "base", "k").unwrap().unwrap().path,
            hit.path
        );
        // Flip one byte.
        std::fs::write(&hit.path, b"rootfS").unwrap();
        assert!(
            cache.get(&host, "base", "k").unwrap().is_none(),
            "corrupt entry must not be used"
        );
        assert!(!hit.path.exists(), "corrupt entry is removed");
    }

    #[test]
    fn aliasing_again_leaves_no_temporary_links() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let host = Host::new(false);
        let hit = cache
            .put("base", "a", |p| Ok(std::fs::write(p, b"rootfs")?))
            .unwrap();
        for _ in 0..3 {
            let alias = cache.alias("base", "b", &hit).unwrap();
            assert_eq!(alias.sha256, hit.sha256);
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("base"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "a.sha256", "b", "b.sha256"]);
        let got = cache.get(&host, "base", "b").unwrap().unwrap();
        assert_eq!(std::fs::read(got.path).unwrap(), b"rootfs");
    }

    #[test]
    fn failed_producer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let err = cache.put("base", "k", |p| {
            std::fs::write(p, b"half")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("base")).unwrap().count(),
            0
        );
    }
}
