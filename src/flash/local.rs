//! Flashing on this machine: a file, or a whole disk opened exclusively (O_EXCL: the kernel
//! refuses it while anything is mounted from it or holds it) and locked with flock, so
//! udev does not probe it half written (systemd's BLOCK_DEVICE_LOCKING). Then the read-back,
//! past the page cache (O_DIRECT), of everything the image covers.

use std::fs::File;
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{FallocateFlags, FlockOperation, OFlags};
use sha2::{Digest, Sha256};

use super::gpt::{BACKUP_BYTES, PRIMARY_BYTES};
use super::plan::{Plan, Step};
use crate::error::{Kind, UserError};
use crate::sparse::CHUNK;

/// Where steps go.
pub trait Sink {
    fn write_at(&mut self, buf: &[u8], at: u64) -> Result<()>;
    /// Afterwards the range reads as zeros.
    fn zero(&mut self, r: Range<u64>) -> Result<()>;
    fn sync(&mut self) -> Result<()>;
}

/// A file or a whole disk of this machine.
pub struct Local {
    file: File,
    /// Whether discarding (punching) works here; tried once, then zeros are written.
    punch: bool,
}

impl Local {
    /// Opens `path`, a file: created with `len` bytes if it does not exist. Returns whether
    /// it was created.
    pub fn open_file(path: &Path, len: u64) -> Result<(Local, bool)> {
        let (file, created) = match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(f) => {
                f.set_len(len)
                    .with_context(|| format!("sizing {}", path.display()))?;
                (f, true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => (
                File::options()
                    .read(true)
                    .write(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
                false,
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        };
        lock(&file, path)?;
        Ok((Local { file, punch: true }, created))
    }

    /// Opens the whole disk `path` exclusively and locks it.
    pub fn open_disk(path: &Path) -> Result<Local> {
        let file = File::options()
            .read(true)
            .write(true)
            .custom_flags(OFlags::EXCL.bits() as i32)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                    anyhow::Error::new(UserError::invalid(format!(
                        "{} is busy: the kernel refuses to open it exclusively (something \
                         is mounted from it, uses it as swap or holds it); nothing was written",
                        path.display()
                    )))
                } else {
                    anyhow::Error::new(e).context(format!("opening {}", path.display()))
                }
            })?;
        lock(&file, path)?;
        Ok(Local { file, punch: true })
    }
}

fn lock(file: &File, path: &Path) -> Result<()> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        anyhow::Error::new(UserError::new(
            Kind::Invalid,
            format!(
                "{} is locked by another program ({e}); nothing was written",
                path.display()
            ),
        ))
    })
}

impl Sink for Local {
    fn write_at(&mut self, buf: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(buf, at)
            .with_context(|| format!("writing {} bytes at byte {at}", buf.len()))
    }

    fn zero(&mut self, r: Range<u64>) -> Result<()> {
        if r.is_empty() {
            return Ok(());
        }
        let len = r.end - r.start;
        // Punching (on a disk: a discard the device guarantees to read back as zeros, the
        // kernel's BLKDEV_ZERO_NOFALLBACK), then zeroing by the kernel (write-zeroes or
        // written zeros), then zeros written here.
        if self.punch {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if rustix::fs::fallocate(&self.file, punch, r.start, len).is_ok() {
                return Ok(());
            }
            let zero = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
            if rustix::fs::fallocate(&self.file, zero, r.start, len).is_ok() {
                return Ok(());
            }
            self.punch = false;
        }
        let zeros = vec![0u8; CHUNK];
        let mut pos = r.start;
        while pos < r.end {
            let n = usize::try_from(r.end - pos).unwrap_or(CHUNK).min(CHUNK);
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_all().context("syncing the target")
    }
}

/// Runs `plan`'s steps, reading the image from `image`; `progress` gets the bytes done.
pub fn execute(
    plan: &Plan,
    image: &File,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    for step in &plan.steps {
        match step {
            Step::Zero(r) => {
                sink.zero(r.clone())?;
                done += r.end - r.start;
            }
            Step::Copy(r) => {
                let mut pos = r.start;
                while pos < r.end {
                    let n = usize::try_from(r.end - pos).unwrap_or(CHUNK).min(CHUNK);
                    image
                        .read_exact_at(&mut buf[..n], pos)
                        .with_context(|| format!("reading the image at byte {pos}"))?;
                    sink.write_at(&buf[..n], pos)?;
                    pos += n as u64;
                    done += n as u64;
                    progress(done);
                }
            }
            Step::Write(at, bytes) => {
                sink.write_at(bytes, *at)?;
                done += bytes.len() as u64;
            }
            Step::Sync => sink.sync()?,
        }
        progress(done);
    }
    Ok(())
}

/// What the read-back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    /// The sha256 of the image's bytes as the target holds them (the GPT put back to the
    /// image's size when it was moved).
    pub sha256: String,
    pub bytes: u64,
    /// Read with O_DIRECT (else: after dropping the file's cached pages).
    pub direct: bool,
}

/// Reads the target at `path` back and rebuilds the image's bytes from it (see
/// [`Plan::image_ends_from`]); the GPT written for the target must read back exactly.
pub fn read_back(plan: &Plan, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<ReadBack> {
    let mut r = Reader::open(path)?;
    let head = r.read(0..plan.head)?;
    let mut h = Sha256::new();
    let mut bytes = plan.head;
    let tail = match plan.image_ends_from(&head)? {
        Some((image_head, image_tail)) => {
            // OK to unwrap: image_ends_from is Some only when the GPT was moved.
            let m = plan.moved.as_ref().unwrap();
            let at = plan.target_len - BACKUP_BYTES as u64;
            let backup = r.read(at..plan.target_len)?;
            bytes += BACKUP_BYTES as u64;
            if head[..PRIMARY_BYTES] != m.primary[..] || backup != m.backup {
                return Err(mismatch(
                    "the GPT written for the target reads back differently",
                ));
            }
            h.update(&image_head);
            Some(image_tail)
        }
        None => {
            h.update(&head);
            None
        }
    };
    let body_end = if tail.is_some() {
        plan.data_end
    } else {
        plan.image_len
    };
    let mut pos = plan.head;
    while pos < body_end {
        let n = (body_end - pos).min(CHUNK as u64);
        let chunk = r.read(pos..pos + n)?;
        h.update(&chunk);
        pos += n;
        bytes += n;
        progress(pos);
    }
    if let Some(t) = tail {
        h.update(&t);
    }
    Ok(ReadBack {
        sha256: hex::encode(h.finalize()),
        bytes,
        direct: r.direct,
    })
}

/// The sha256 of `range` of the file or disk at `path`, read past the page cache.
pub fn sha256_of(path: &Path, range: Range<u64>) -> Result<String> {
    let mut r = Reader::open(path)?;
    let mut h = Sha256::new();
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(CHUNK as u64);
        h.update(&r.read(pos..pos + n)?);
        pos += n;
    }
    Ok(hex::encode(h.finalize()))
}

fn mismatch(what: &str) -> anyhow::Error {
    anyhow::Error::new(UserError::new(
        Kind::Corrupt,
        format!("{what}: the target does not hold what was written (a failing disk or cable?)"),
    ))
}

/// Reads past the page cache.
struct Reader {
    file: File,
    direct: bool,
    buf: Vec<u8>,
}

const ALIGN: u64 = 4096;

impl Reader {
    fn open(path: &Path) -> Result<Reader> {
        let direct = File::options()
            .read(true)
            .custom_flags(OFlags::DIRECT.bits() as i32)
            .open(path);
        let (file, direct) = match direct {
            Ok(f) => (f, true),
            Err(_) => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                // Not every filesystem does O_DIRECT (tmpfs): drop the cached pages instead.
                let _ = f.sync_all();
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
                (f, false)
            }
        };
        Ok(Reader {
            file,
            direct,
            buf: vec![0u8; CHUNK + 2 * ALIGN as usize],
        })
    }

    /// The bytes of `r`; with O_DIRECT through an aligned window.
    fn read(&mut self, r: Range<u64>) -> Result<Vec<u8>> {
        let len = usize::try_from(r.end - r.start)?;
        if !self.direct {
            let mut out = vec![0u8; len];
            self.file
                .read_exact_at(&mut out, r.start)
                .with_context(|| format!("reading back at byte {}", r.start))?;
            return Ok(out);
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = r.start;
        while pos < r.end {
            let start = pos / ALIGN * ALIGN;
            let want = (r.end - start).min(CHUNK as u64);
            let span = want.div_ceil(ALIGN) * ALIGN;
            // An aligned slice of the buffer (safe: the address only picks the offset).
            let off =
                (ALIGN as usize - self.buf.as_ptr() as usize % ALIGN as usize) % ALIGN as usize;
            let window = &mut self.buf[off..off + span as usize];
            let got = read_full(&self.file, window, start)?;
            let skip = usize::try_from(pos - start)?;
            let end = usize::try_from(want)?.min(got);
            if end <= skip {
                return Err(anyhow::anyhow!(
                    "the target ended at byte {}",
                    start + got as u64
                ));
            }
            out.extend_from_slice(&window[skip..end]);
            pos = start + end as u64;
        }
        Ok(out)
    }
}

fn read_full(f: &File, buf: &mut [u8], at: u64) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| format!("reading back at byte {}", at + n as u64));
            }
        }
    }
    Ok(n)
}
