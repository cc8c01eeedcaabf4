//! Overlays: directory trees from the project copied onto `/`, in profile order.
//! Files and symlinks replace what is there; directories that already exist keep their
//! owner and mode unless the profile gives one. Everything an overlay adds is root:root,
//! 0644 (0755 when executable on the host, and for directories), unless the profile says.
//! An overlay file holding a private key or a password hash is an error unless its path
//! is listed in the overlay's `allow-secrets`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::{Content, Entry, Kind, Tree};
use crate::error::UserError;
use crate::profile::OverlaySpec;
use crate::secrets;

/// Copies `spec.dir` onto the tree. Returns the number of paths applied.
pub fn apply_overlay(tree: &mut Tree, spec: &OverlaySpec, epoch: i64) -> Result<usize> {
    let mut paths = Vec::new();
    walk(&spec.dir, "", &mut paths).with_context(|| format!("reading overlay {}", spec.path))?;
    check_attrs_exist(spec, &paths)?;
    check_secrets(spec, &paths)?;
    let ids = Ids::from_tree(tree)?;
    for rel in &paths {
        let host = spec.dir.join(rel);
        let meta = std::fs::symlink_metadata(&host)
            .with_context(|| format!("reading {}", host.display()))?;
        let existing_dir = matches!(tree.get(rel).map(|e| &e.kind), Some(Kind::Dir));
        let mut entry = if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&host)?;
            Entry::symlink(&t.to_string_lossy(), epoch)
        } else if meta.is_dir() {
            match (existing_dir, tree.get(rel)) {
                (true, Some(e)) => Entry {
                    mtime: epoch,
                    ..e.clone()
                },
                _ => Entry::dir(0o755, epoch),
            }
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let mut e = Entry::dir(mode, epoch);
            e.kind = Kind::File(Content::Host {
                path: host.clone(),
                len: meta.len(),
            });
            e
        } else {
            return Err(UserError::invalid(format!(
                "overlay {}: {} is not a file, directory or symlink",
                spec.path,
                host.display()
            ))
            .hint("overlays may hold files, directories and symlinks only")
            .into());
        };
        if let Some(m) = spec.modes.get(rel) {
            entry.mode = *m;
        }
        if let Some(o) = spec.owners.get(rel) {
            (entry.uid, entry.gid) = ids.resolve(o).map_err(|e| {
                UserError::invalid(format!("overlay {}: owner of {rel}: {e}", spec.path))
                    .hint("use numeric \"UID:GID\" or names the image's /etc/passwd and /etc/group define")
            })?;
        }
        if existing_dir && entry.kind.is_dir() {
            // Keep the children: only the attributes change.
            if let Some(e) = tree.entries.get_mut(rel.as_str()) {
                *e = entry;
            }
        } else {
            tree.insert(rel, entry);
        }
    }
    Ok(paths.len())
}

impl Kind {
    fn is_dir(&self) -> bool {
        matches!(self, Kind::Dir)
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        out.push(child.clone());
        let p = dir.join(&name);
        if std::fs::symlink_metadata(&p)?.is_dir() {
            walk(&p, &child, out)?;
        }
    }
    Ok(())
}

fn check_attrs_exist(spec: &OverlaySpec, paths: &[String]) -> Result<()> {
    let given = spec.modes.keys().chain(spec.owners.keys());
    for p in given.chain(&spec.allow_secrets) {
        if !paths.iter().any(|x| x == p) {
            return Err(UserError::invalid(format!(
                "overlay {}: a mode, owner or allow-secrets entry is given for {p}, but {}/{p} does not exist",
                spec.path, spec.path
            ))
            .hint("fix the path (it is relative to the overlay directory, without a leading /)")
            .into());
        }
    }
    Ok(())
}

/// Every regular file of the overlay not listed in `allow-secrets` must hold no private
/// key and no password hash (in its first [`secrets::SCAN_LIMIT`] bytes).
fn check_secrets(spec: &OverlaySpec, paths: &[String]) -> Result<()> {
    let mut buf = Vec::with_capacity(secrets::SCAN_LIMIT);
    for rel in paths {
        if spec.allow_secrets.contains(rel) {
            continue;
        }
        let host = spec.dir.join(rel);
        if !std::fs::symlink_metadata(&host)?.is_file() {
            continue;
        }
        buf.clear();
        File::open(&host)
            .and_then(|f| f.take(secrets::SCAN_LIMIT as u64).read_to_end(&mut buf))
            .with_context(|| format!("reading {}", host.display()))?;
        if let Some(f) = secrets::find(&buf) {
            return Err(UserError::invalid(format!(
                "{}/{rel}:{}: {} in overlay {} ({})",
                spec.path, f.line, f.what, spec.path, spec.at
            ))
            .hint(format!(
                "remove it and provide it at deploy time; if it is deliberate, add allow-secrets = [\"{rel}\"] to this [[overlay]] in {}",
                spec.at.rsplit_once(':').map_or(spec.at.as_str(), |(file, _)| file)
            ))
            .into());
        }
    }
    Ok(())
}

/// User and group names of the image.
struct Ids {
    users: BTreeMap<String, (u32, u32)>,
    groups: BTreeMap<String, u32>,
}

impl Ids {
    fn from_tree(tree: &Tree) -> Result<Ids> {
        let passwd = tree.read("etc/passwd")?.unwrap_or_default();
        let group = tree.read("etc/group")?.unwrap_or_default();
        let mut users = BTreeMap::new();
        for l in String::from_utf8_lossy(&passwd).lines() {
            let f: Vec<&str> = l.split(':').collect();
            if let (Some(n), Some(u), Some(g)) = (f.first(), f.get(2), f.get(3))
                && let (Ok(u), Ok(g)) = (u.parse(), g.parse())
            {
                users.insert((*n).to_string(), (u, g));
            }
        }
        let mut groups = BTreeMap::new();
        for l in String::from_utf8_lossy(&group).lines() {
            let f: Vec<&str> = l.split(':').collect();
            if let (Some(n), Some(g)) = (f.first(), f.get(2).and_then(|g| g.parse().ok())) {
                groups.insert((*n).to_string(), g);
            }
        }
        Ok(Ids { users, groups })
    }

    /// "uid:gid", "user:group" or "user" (its primary group).
    fn resolve(&self, owner: &str) -> Result<(u32, u32), String> {
        let (u, g) = owner
            .split_once(':')
            .map_or((owner, None), |(u, g)| (u, Some(g)));
        let (uid, primary) = match u.parse::<u32>() {
            Ok(n) => (n, None),
            Err(_) => self
                .users
                .get(u)
                .map(|(a, b)| (*a, Some(*b)))
                .ok_or(format!("no user `{u}` in the image"))?,
        };
        let gid = match g {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => *self
                    .groups
                    .get(g)
                    .ok_or(format!("no group `{g}` in the image"))?,
            },
            None => primary.ok_or(format!("`{owner}` needs a group: write UID:GID"))?,
        };
        Ok((uid, gid))
    }
}
