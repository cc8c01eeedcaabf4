//! Reading a tree from a tar stream and writing it back as a deterministic tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tar::{EntryType, Header};

use super::{Content, Entry, Kind, Tree, clean};

impl Tree {
    /// Reads the headers of the uncompressed tar at `path`; file contents stay in the tar
    /// and are read from it when needed.
    pub fn from_tar(path: &Path) -> Result<Tree> {
        let file =
            File::open(path).with_context(|| format!("opening base tar {}", path.display()))?;
        let mut tree = Tree::new();
        let mut archive = tar::Archive::new(&file);
        for entry in archive
            .entries_with_seek()
            .with_context(|| format!("reading {}", path.display()))?
        {
            let mut entry =
                entry.with_context(|| format!("reading an entry of {}", path.display()))?;
            let name = clean(&String::from_utf8_lossy(&entry.path_bytes()));
            if name.is_empty() {
                continue;
            }
            let e = convert(&mut entry)
                .with_context(|| format!("reading /{name} from {}", path.display()))?;
            tree.entries.insert(name, e);
        }
        // A tar made without its directories (`tar cf x.tar a/b/file`) gets them as
        // tar(1) would make them on extraction: root:root 0755.
        let names: Vec<(String, i64)> = tree
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), e.mtime))
            .collect();
        for (name, mtime) in names {
            tree.ensure_parents(&name, mtime);
        }
        tree.base = Some(Arc::new(file));
        Ok(tree)
    }

    /// Writes the tree as a tar that `mke2fs -d` reads: every directory its own entry,
    /// sorted, numeric owners only, xattrs as PAX records, no host data.
    pub fn write_tar(&self, out: impl Write) -> Result<()> {
        let mut b = tar::Builder::new(out);
        b.mode(tar::HeaderMode::Deterministic);
        for (path, e) in &self.entries {
            self.append(&mut b, path, e)
                .with_context(|| format!("writing /{path} to the root tar"))?;
        }
        b.into_inner()?.flush()?;
        Ok(())
    }

    fn append<W: Write>(&self, b: &mut tar::Builder<W>, path: &str, e: &Entry) -> Result<()> {
        if !e.xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> = e
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                .collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut h = Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(u64::try_from(e.mtime).unwrap_or(0));
        h.set_size(0);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Kind::File(c) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(super::content_len(c));
                b.append_data(&mut h, path, self.open(c)?)?;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(EntryType::Symlink);
                b.append_link(&mut h, path, t)?;
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, path, t)?;
            }
            Kind::Char { major, minor } | Kind::Block { major, minor } => {
                let t = if matches!(e.kind, Kind::Char { .. }) {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                h.set_entry_type(t);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, path, io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(EntryType::Fifo);
                b.append_data(&mut h, path, io::empty())?;
            }
        }
        Ok(())
    }
}

fn convert(entry: &mut tar::Entry<'_, &File>) -> Result<Entry> {
    let h = entry.header();
    let mode = h.mode()? & 0o7777;
    let uid = u32::try_from(h.uid()?).context("uid out of range")?;
    let gid = u32::try_from(h.gid()?).context("gid out of range")?;
    let mtime = i64::try_from(h.mtime()?).unwrap_or(0);
    let link = || -> Result<String> { entry_link(entry)?.context("link without a target") };
    let kind = match h.entry_type() {
        EntryType::Directory => Kind::Dir,
        EntryType::Regular | EntryType::Continuous => Kind::File(Content::Base {
            offset: entry.raw_file_position(),
            len: entry.size(),
        }),
        EntryType::Symlink => Kind::Symlink(link()?),
        EntryType::Link => Kind::Hardlink(clean(&link()?)),
        EntryType::Char => Kind::Char {
            major: dev(h.device_major()?),
            minor: dev(h.device_minor()?),
        },
        EntryType::Block => Kind::Block {
            major: dev(h.device_major()?),
            minor: dev(h.device_minor()?),
        },
        EntryType::Fifo => Kind::Fifo,
        other => bail!("unsupported tar entry type {other:?}"),
    };
    let xattrs = xattrs(entry)?;
    Ok(Entry {
        kind,
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

fn entry_link(entry: &tar::Entry<'_, &File>) -> Result<Option<String>> {
    Ok(entry
        .link_name_bytes()
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn dev(v: Option<u32>) -> u32 {
    v.unwrap_or(0)
}

fn xattrs(entry: &mut tar::Entry<'_, &File>) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                out.insert(name.to_string(), ext.value_bytes().to_vec());
            }
        }
    }
    Ok(out)
}
