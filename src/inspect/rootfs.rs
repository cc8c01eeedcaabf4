//! The root filesystem as a sorted list of entries (metadata only), and the contents of
//! its files, each read at most once.

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result, ensure};
use ext4_view::{Ext4, FileType, Metadata};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::tree::Package;
use crate::tree::generate::parse_dpkg_status;

/// Where dpkg lists what is installed.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// Deepest directory nesting followed; guards against loops in a damaged filesystem.
const MAX_DEPTH: usize = 256;
/// Read buffer for hashing.
const CHUNK: usize = 1 << 16;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl FileKind {
    fn of(t: FileType) -> FileKind {
        if t.is_regular_file() {
            FileKind::File
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_char_dev() {
            FileKind::Char
        } else if t.is_block_dev() {
            FileKind::Block
        } else if t.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Socket
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Char => "char",
            FileKind::Block => "block",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Permission bits (with setuid, setgid, sticky), shown and serialised in octal: "0640".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u16);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One entry of the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Absolute, e.g. "/etc/motd"; bytes that are not UTF-8 are replaced.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub mode: Mode,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Regular files, once hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The path as stored, for reading the file.
    #[serde(skip)]
    raw: Vec<u8>,
}

impl Entry {
    fn new(raw: Vec<u8>, meta: &Metadata, target: Option<String>) -> Entry {
        Entry {
            path: String::from_utf8_lossy(&raw).into_owned(),
            kind: FileKind::of(meta.file_type()),
            mode: Mode(meta.mode()),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            sha256: None,
            target,
            raw,
        }
    }

    /// The path as stored (entries sort by it).
    pub fn raw_path(&self) -> &[u8] {
        &self.raw
    }

    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }

    /// "uid:gid".
    pub fn owner(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// Every entry from "/" down, sorted by path; symlink targets read, no file contents.
pub fn walk(fs: &Ext4) -> Result<Vec<Entry>> {
    let meta = fs
        .metadata("/")
        .context("reading / of the root filesystem")?;
    let mut out = vec![Entry::new(b"/".to_vec(), &meta, None)];
    walk_dir(fs, b"/", 0, &mut out)?;
    out.sort_by(|a, b| a.raw.cmp(&b.raw));
    Ok(out)
}

fn walk_dir(fs: &Ext4, dir: &[u8], depth: usize, out: &mut Vec<Entry>) -> Result<()> {
    let shown = || String::from_utf8_lossy(dir).into_owned();
    ensure!(
        depth < MAX_DEPTH,
        "directory {} of the root filesystem is nested deeper than {MAX_DEPTH}",
        shown()
    );
    let entries = fs
        .read_dir(dir)
        .with_context(|| format!("reading directory {} of the root filesystem", shown()))?;
    for e in entries {
        let e =
            e.with_context(|| format!("reading directory {} of the root filesystem", shown()))?;
        let name = e.file_name();
        if name.as_ref() == b"." || name.as_ref() == b".." {
            continue;
        }
        let path: Vec<u8> = e.path().as_ref().to_vec();
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let meta = e
            .metadata()
            .with_context(|| format!("reading the inode of {} in the root filesystem", shown()))?;
        let target = if meta.is_symlink() {
            // ext4-view allocates what the inode claims; a link longer than PATH_MAX is a
            // damaged inode (the `ext4` fuzz target made it ask for terabytes).
            if meta.len() > 4096 {
                anyhow::bail!(
                    "symlink {} of the root filesystem claims {} bytes; the image is damaged",
                    shown(),
                    meta.len()
                );
            }
            let t = fs
                .read_link(path.as_slice())
                .with_context(|| format!("reading symlink {} of the root filesystem", shown()))?;
            Some(String::from_utf8_lossy(t.as_ref()).into_owned())
        } else {
            None
        };
        let is_dir = meta.is_dir();
        out.push(Entry::new(path.clone(), &meta, target));
        if is_dir {
            walk_dir(fs, &path, depth + 1, out)?;
        }
    }
    Ok(())
}

/// The largest file [`Contents::keep`] reads whole.
pub const KEEP_MAX: u64 = 256 << 20;

/// Reads regular files of the root filesystem. Files read whole (to be parsed) are kept, so
/// hashing them later does not read them again.
pub struct Contents<'a> {
    fs: &'a Ext4,
    kept: HashMap<Vec<u8>, Vec<u8>>,
    /// No file is larger than its filesystem: a size past this is a damaged inode, which
    /// ext4-view would read as zeros for as long as it claims.
    limit: u64,
}

impl<'a> Contents<'a> {
    pub fn new(fs: &'a Ext4) -> Self {
        Contents {
            fs,
            kept: HashMap::new(),
            limit: u64::MAX,
        }
    }

    /// Files claiming more than `bytes` (the filesystem's size) are errors.
    pub fn limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// The error for a file larger than it may be.
    fn too_large(&self, e: &Entry, max: u64) -> Result<()> {
        if e.size > max {
            anyhow::bail!(
                "{} of the root filesystem claims {} bytes, more than it can have ({max}); \
                 the image is damaged",
                e.path,
                e.size
            );
        }
        Ok(())
    }

    /// The bytes of a regular file, read once and kept. A file larger than [`KEEP_MAX`] is
    /// an error: the files read whole are small metadata (dpkg's status, os-release), and
    /// ext4-view allocates what a damaged inode claims before reading (the `ext4` fuzz
    /// target made it ask for 2 TB and abort).
    pub fn keep(&mut self, e: &Entry) -> Result<&[u8]> {
        self.too_large(e, KEEP_MAX.min(self.limit))?;
        if !self.kept.contains_key(&e.raw) {
            let bytes = self
                .fs
                .read(e.raw.as_slice())
                .with_context(|| format!("reading {} of the root filesystem", e.path))?;
            self.kept.insert(e.raw.clone(), bytes);
        }
        // OK to unwrap: inserted above if it was missing.
        Ok(self.kept.get(&e.raw).unwrap())
    }

    /// The sha256 of a regular file: from the kept bytes, else streamed from the image.
    pub fn sha256(&self, e: &Entry) -> Result<String> {
        if let Some(bytes) = self.kept.get(&e.raw) {
            return Ok(crate::cache::sha256(bytes));
        }
        self.too_large(e, self.limit)?;
        let context = || format!("reading {} of the root filesystem", e.path);
        let mut f = self.fs.open(e.raw.as_slice()).with_context(context)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = f.read_bytes(&mut buf).with_context(context)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Fills in the sha256 of every regular file of `entries`.
    pub fn hash_all(&self, entries: &mut [Entry]) -> Result<()> {
        for e in entries.iter_mut().filter(|e| e.is_file()) {
            e.sha256 = Some(self.sha256(e)?);
        }
        Ok(())
    }
}

/// The installed packages, from `/var/lib/dpkg/status` (none if it is missing).
pub fn packages(entries: &[Entry], contents: &mut Contents) -> Result<Vec<Package>> {
    let Some(status) = entries
        .iter()
        .find(|e| e.path == DPKG_STATUS && e.is_file())
    else {
        return Ok(Vec::new());
    };
    let bytes = contents.keep(status)?;
    Ok(parse_dpkg_status(&String::from_utf8_lossy(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_octal_in_text_and_json() {
        assert_eq!(Mode(0o4755).to_string(), "4755");
        assert_eq!(Mode(0o640).to_string(), "0640");
        assert_eq!(serde_json::to_string(&Mode(0o640)).unwrap(), "\"0640\"");
    }
}
