//! An in-memory model of the root filesystem. Entries keep owners, modes, hard links,
//! symlinks, device nodes and xattrs exactly; file contents stay where they are (in the
//! cached base tar, in an overlay file, or in memory) until the tree is written out.

mod elf;
pub mod generate;
pub mod machine;
mod overlay;
pub mod services;
pub mod state;
mod tario;
pub mod users;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

pub use elf::check_architecture;
pub use generate::{Generated, Package, generate, installed_packages, kernel_versions};
pub use overlay::apply_overlay;
pub use services::apply_services;
pub use users::apply_users;

/// Where a regular file's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// `len` bytes at `offset` of the base tar.
    Base { offset: u64, len: u64 },
    /// Bytes held in memory (generated files).
    Bytes(Arc<[u8]>),
    /// A file on the host (overlay files), read when the tree is written.
    Host { path: PathBuf, len: u64 },
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    /// A hard link to the file at this (earlier) path.
    Hardlink(String),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One path of the tree.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Entry {
    pub fn dir(mode: u32, mtime: i64) -> Self {
        Self {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn file(bytes: impl Into<Arc<[u8]>>, mode: u32, mtime: i64) -> Self {
        Self {
            kind: Kind::File(Content::Bytes(bytes.into())),
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn symlink(target: &str, mtime: i64) -> Self {
        Self {
            kind: Kind::Symlink(target.to_string()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
        }
    }
}

/// The root filesystem. Keys are paths relative to `/` without a leading slash.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    base: Option<Arc<File>>,
}

/// Normalises "/etc//x/" and "./etc/x" to "etc/x".
pub fn clean(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&clean(path))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Inserts `entry` at `path`, creating missing parent directories (root:root 0755)
    /// and replacing what was there (a replaced directory keeps its children).
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = clean(path);
        self.ensure_parents(&path, entry.mtime);
        self.detach_links(&path);
        self.entries.insert(path, entry);
    }

    fn ensure_parents(&mut self, path: &str, mtime: i64) {
        let mut p = parent(path);
        while let Some(dir) = p {
            if dir.is_empty() || self.entries.contains_key(dir) {
                break;
            }
            self.entries
                .insert(dir.to_string(), Entry::dir(0o755, mtime));
            p = parent(dir);
        }
    }

    /// Before `path` is replaced or removed: if other paths are hard links to it, the first
    /// of them takes over the content and the rest point to it.
    fn detach_links(&mut self, path: &str) {
        let Some(Entry {
            kind: Kind::File(_),
            ..
        }) = self.entries.get(path)
        else {
            return;
        };
        let links: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.kind, Kind::Hardlink(t) if t == path))
            .map(|(p, _)| p.clone())
            .collect();
        let Some(first) = links.first() else { return };
        // OK to unwrap: checked above that `path` is present.
        let holder = self.entries.get(path).unwrap().clone();
        self.entries.insert(first.clone(), holder);
        for l in &links[1..] {
            if let Some(e) = self.entries.get_mut(l) {
                e.kind = Kind::Hardlink(first.clone());
            }
        }
    }

    /// Removes `path` and everything below it; returns how many entries went.
    pub fn remove(&mut self, path: &str) -> usize {
        let path = clean(path);
        let mut doomed = self.paths_under(&path);
        if self.entries.contains_key(&path) {
            doomed.push(path);
        }
        for k in &doomed {
            self.detach_links(k);
            self.entries.remove(k);
        }
        doomed.len()
    }

    /// Paths directly or indirectly below `dir`, sorted.
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{}/", clean(dir));
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Follows symlinks (absolute ones relative to this root) and hard links, up to 40 hops.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut todo: Vec<String> = clean(path).split('/').rev().map(str::to_owned).collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                parts.pop();
                continue;
            }
            if c.is_empty() || c == "." {
                continue;
            }
            parts.push(c);
            let cur = parts.join("/");
            match &self.entries.get(&cur)?.kind {
                Kind::Symlink(t) => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    parts.pop();
                    if t.starts_with('/') {
                        parts.clear();
                    }
                    todo.extend(t.split('/').rev().map(str::to_owned));
                }
                Kind::Hardlink(t) => {
                    parts = t.split('/').map(str::to_owned).collect();
                }
                _ => {}
            }
        }
        Some(parts.join("/"))
    }

    /// The bytes of the regular file at `path` (after following links), if there is one.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(p) = self.resolve(path) else {
            return Ok(None);
        };
        match self.entries.get(&p).map(|e| &e.kind) {
            Some(Kind::File(c)) => self
                .read_content(c)
                .map(Some)
                .with_context(|| format!("reading /{p} from the tree")),
            _ => Ok(None),
        }
    }

    /// A reader over a file's content.
    pub fn open<'a>(&'a self, content: &'a Content) -> Result<Box<dyn Read + 'a>> {
        Ok(match content {
            Content::Base { offset, len } => {
                let f = self.base.as_ref().context("tree has no base tar")?;
                Box::new(At {
                    file: f,
                    pos: *offset,
                    end: offset + len,
                })
            }
            Content::Bytes(b) => Box::new(&b[..]),
            Content::Host { path, len } => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                Box::new(f.take(*len))
            }
        })
    }

    pub fn read_content(&self, content: &Content) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open(content)?.read_to_end(&mut v)?;
        Ok(v)
    }

    /// The first `n` bytes of a file (for magic numbers).
    pub fn head(&self, content: &Content, n: usize) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n);
        self.open(content)?.take(n as u64).read_to_end(&mut v)?;
        Ok(v)
    }

    /// Clamps every mtime to `epoch`, and makes every hard-link group's content live at
    /// its smallest path so that it is written before its links.
    pub fn normalise(&mut self, epoch: i64) {
        for e in self.entries.values_mut() {
            e.mtime = e.mtime.min(epoch);
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (p, e) in &self.entries {
            if let Kind::Hardlink(t) = &e.kind {
                groups.entry(t.clone()).or_default().push(p.clone());
            }
        }
        for (holder, links) in groups {
            // OK to unwrap: `links` has at least one element by construction.
            let first = links.iter().min().unwrap();
            if *first < holder {
                let content = self.entries[&holder].clone();
                self.entries.insert(first.clone(), content);
                for p in links
                    .iter()
                    .filter(|p| *p != first)
                    .chain(std::iter::once(&holder))
                {
                    if let Some(e) = self.entries.get_mut(p) {
                        e.kind = Kind::Hardlink(first.clone());
                    }
                }
            }
        }
    }

    /// Bytes of file content and number of inodes (for sizing the filesystem).
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for e in self.entries.values() {
            match &e.kind {
                Kind::Hardlink(_) => {}
                Kind::File(c) => {
                    u.inodes += 1;
                    u.file_bytes += content_len(c);
                    u.blocks_4k += content_len(c).div_ceil(4096);
                }
                Kind::Symlink(t) => {
                    u.inodes += 1;
                    u.blocks_4k += u64::from(t.len() >= 60);
                }
                Kind::Dir => {
                    u.inodes += 1;
                    u.blocks_4k += 1;
                }
                _ => u.inodes += 1,
            }
        }
        u
    }
}

/// How much a tree holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub file_bytes: u64,
    pub blocks_4k: u64,
    pub inodes: u64,
}

pub fn content_len(c: &Content) -> u64 {
    match c {
        Content::Base { len, .. } | Content::Host { len, .. } => *len,
        Content::Bytes(b) => b.len() as u64,
    }
}

/// Reads a byte range of a file with positional reads (no shared seek position).
struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "base tar ends inside a file",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
