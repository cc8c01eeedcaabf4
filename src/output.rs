//! Publishing: a build writes into a hidden staging directory next to its destination and
//! renames it into place only when everything is written and synced, so a crash or an
//! error never leaves a half image under `out/` that looks finished.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// A build's output directory while it is being written.
pub struct Staging {
    pub dir: PathBuf,
    dest: PathBuf,
    published: bool,
}

impl Staging {
    /// `out/<profile>/.staging-<version>-<pid>/`, to become `out/<profile>/<version>/`.
    pub fn begin(out_root: &Path, profile: &str, version: &str) -> Result<Staging> {
        let parent = out_root.join(profile);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = parent.join(format!(".staging-{version}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join(".work"))
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Staging {
            dir,
            dest: parent.join(version),
            published: false,
        })
    }

    /// Scratch space that is not published.
    pub fn work(&self) -> PathBuf {
        self.dir.join(".work")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Syncs every file, then renames the directory into place (replacing an older build
    /// of the same version). Returns the published directory.
    pub fn publish(mut self) -> Result<PathBuf> {
        std::fs::remove_dir_all(self.work()).context("removing the work directory")?;
        for e in std::fs::read_dir(&self.dir)? {
            File::open(e?.path())?.sync_all()?;
        }
        File::open(&self.dir)?.sync_all()?;
        let parent = self.dest.parent().context("destination has no parent")?;
        let old = parent.join(format!(".old-{}", std::process::id()));
        if self.dest.exists() {
            std::fs::rename(&self.dest, &old)
                .with_context(|| format!("moving {} aside", self.dest.display()))?;
        }
        std::fs::rename(&self.dir, &self.dest).with_context(|| {
            format!("renaming {} to {}", self.dir.display(), self.dest.display())
        })?;
        File::open(parent)?.sync_all()?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        self.published = true;
        Ok(self.dest.clone())
    }

    /// On failure: keeps the log as `out/<profile>/<version>.failed.log` and removes the rest.
    pub fn keep_failed_log(&self) -> Option<PathBuf> {
        if let (Ok(rd), Some(console)) = (std::fs::read_dir(&self.dir), self.failed_console_log()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".console.log") {
                    let _ = std::fs::rename(e.path(), &console);
                }
            }
        }
        let log = self.path("build.log");
        let name = format!("{}.failed.log", self.dest.file_name()?.to_string_lossy());
        let dest = self.dest.parent()?.join(name);
        std::fs::rename(log, &dest).ok().map(|()| dest)
    }

    /// Where the console log of a failed --verify is kept: `out/PROFILE/VERSION.failed.console.log`.
    pub fn failed_console_log(&self) -> Option<PathBuf> {
        let name = format!(
            "{}.failed.console.log",
            self.dest.file_name()?.to_string_lossy()
        );
        Some(self.dest.parent()?.join(name))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The sealed image: its sha256 and the bytes it occupies on disk.
pub struct Sealed {
    pub sha256: String,
    pub allocated: u64,
}

/// Hashes the image and punches holes where it holds only zeros, so what is stored is
/// what was written (mke2fs writes zeroed inode tables and journal). Holes already in the
/// file are hashed as zeros without being read.
pub fn seal_image(path: &Path) -> Result<Sealed> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0;
    while pos < len {
        let data = seek(&f, SeekFrom::Data(pos))?.unwrap_or(len);
        if data > pos {
            // What SEEK_DATA skips reads as zeros, but may be allocated (unwritten extents
            // from fallocate): punch it too.
            hash_zeros(&mut h, data - pos);
            punch(&f, pos, data - pos)?;
        }
        pos = data;
        if pos >= len {
            break;
        }
        let hole = seek(&f, SeekFrom::Hole(pos))?.unwrap_or(len);
        seal_extent(&mut f, &mut h, &mut buf, pos, hole)?;
        pos = hole;
    }
    f.sync_all()?;
    let allocated = f.metadata()?.blocks() * 512;
    Ok(Sealed {
        sha256: hex::encode(h.finalize()),
        allocated,
    })
}

const BLOCK: usize = 4096;
static ZEROS: [u8; BLOCK] = [0; BLOCK];

use crate::sparse::{CHUNK, hash_zeros, seek};
use rustix::fs::SeekFrom;

/// Hashes the data extent [start, end) and punches its all-zero 4 KiB blocks.
fn seal_extent(f: &mut File, h: &mut Sha256, buf: &mut [u8], start: u64, end: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom as StdSeek};
    f.seek(StdSeek::Start(start))?;
    let mut pos = start;
    let mut run: Option<(u64, u64)> = None;
    while pos < end {
        let want = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = read_full(f, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
            let at = pos + (i * BLOCK) as u64;
            let zero = block.len() == BLOCK && block == ZEROS;
            run = match (run, zero) {
                (Some((s, l)), true) => Some((s, l + BLOCK as u64)),
                (None, true) => Some((at, BLOCK as u64)),
                (Some((s, l)), false) => {
                    punch(f, s, l)?;
                    None
                }
                (None, false) => None,
            };
        }
        pos += n as u64;
    }
    if let Some((s, l)) = run {
        punch(f, s, l)?;
    }
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn punch(f: &File, start: u64, len: u64) -> Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        start,
        len,
    )
    .context("punching a hole in the image")?;
    Ok(())
}

/// `SHA256SUMS` in the format `sha256sum -c` reads.
pub fn sha256sums(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(name, sum)| format!("{sum}  {name}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_invisible_until_published_and_removed_on_drop() {
        let out = tempfile::tempdir().unwrap();
        let s = Staging::begin(out.path(), "p", "1").unwrap();
        std::fs::write(s.path("x.raw"), b"img").unwrap();
        assert!(!out.path().join("p/1").exists());
        drop(s);
        assert_eq!(
            std::fs::read_dir(out.path().join("p")).unwrap().count(),
            0,
            "nothing left behind"
        );
        let s = Staging::begin(out.path(), "p", "1").unwrap();
        std::fs::write(s.path("x.raw"), b"img").unwrap();
        let dir = s.publish().unwrap();
        assert_eq!(std::fs::read(dir.join("x.raw")).unwrap(), b"img");
        assert!(!dir.join(".work").exists());
    }

    #[test]
    fn seal_hashes_and_sparsifies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1;
        std::fs::write(&p, &data).unwrap();
        let s = seal_image(&p).unwrap();
        assert_eq!(s.sha256, crate::cache::sha256(&data));
        assert_eq!(std::fs::read(&p).unwrap(), data, "content unchanged");
        assert!(
            s.allocated <= 8192,
            "only the non-zero block stays allocated: {}",
            s.allocated
        );
    }

    #[test]
    fn seal_releases_preallocated_zero_ranges() {
        // mke2fs zeroes with fallocate: unwritten extents that SEEK_DATA skips.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        f.set_len(8 << 20).unwrap();
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 8 << 20).unwrap();
        assert!(
            f.metadata().unwrap().blocks() > 0,
            "the test needs an allocated range"
        );
        let s = seal_image(&p).unwrap();
        assert_eq!(s.sha256, crate::cache::sha256(&vec![0u8; 8 << 20]));
        assert_eq!(s.allocated, 0, "nothing but zeros: nothing stays allocated");
    }
}
