//! What a killed imagebuild leaves behind, and removing it. Every file or directory a run
//! writes before renaming it into place carries the writer's process id in its name:
//!
//! - `out/PROFILE/.staging-VERSION-PID/` (a build's output, [`crate::output::Staging`]) and
//!   `out/PROFILE/.old-PID/` (the version it replaces, for a moment);
//! - `.NAME.tmp-PID` files, in `out/` and in the cache ([`crate::cache::write_atomic`],
//!   cache entries, blobs);
//! - `.work-PID-*` directories in the cache (a bootstrap's or a firmware fetch's scratch).
//!
//! Those of a process that no longer runs are leftovers: the next build removes them
//! (`imagebuild clean` too, and says what it removed). Those of a running process (another
//! build, right now) are left alone; a leftover whose id a new process took is left for a
//! later run.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// How deep leftovers can sit in the cache (`debs/`, `base/RELEASE/ARCH/`, blobs).
pub const CACHE_DEPTH: usize = 3;

/// The prefix of a scratch directory in the cache: `.work-PID-`.
pub fn work_prefix() -> String {
    format!(".work-{}-", std::process::id())
}

/// The process id a leftover's name carries; None for a name that is not one of ours.
fn owner(name: &str) -> Option<u32> {
    let digits = |s: &str| -> Option<u32> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if let Some(rest) = name.strip_prefix(".staging-") {
        return digits(rest.rsplit_once('-')?.1);
    }
    if let Some(rest) = name.strip_prefix(".old-") {
        return digits(rest);
    }
    if let Some(rest) = name.strip_prefix(".work-") {
        return digits(rest.split_once('-')?.0);
    }
    if name.starts_with('.') {
        let (stem, pid) = name.rsplit_once(".tmp-")?;
        return if stem.len() > 1 { digits(pid) } else { None };
    }
    None
}

/// A process with this id runs (here, in this pid namespace).
fn alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// One leftover removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub path: PathBuf,
    /// Bytes it took on disk.
    pub bytes: u64,
}

/// Removes the leftovers of dead processes in `dirs` and in their subdirectories down to
/// `depth` levels (out/: 1, for out/PROFILE/; the cache: 3). A directory that does not
/// exist has none. Returns what was removed.
pub fn sweep(dirs: &[(&Path, usize)]) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    for (dir, depth) in dirs {
        sweep_dir(dir, *depth, &mut removed)?;
    }
    Ok(removed)
}

fn sweep_dir(dir: &Path, depth: usize, removed: &mut Vec<Removed>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        match owner(&name) {
            Some(pid) if !alive(pid) => {
                let bytes = allocated(&path);
                let gone = if ft.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                if gone.is_ok() {
                    removed.push(Removed { path, bytes });
                }
            }
            Some(_) => {}
            None if ft.is_dir() && depth > 0 => sweep_dir(&path, depth - 1, removed)?,
            None => {}
        }
    }
    Ok(())
}

/// Bytes allocated under `path` (sparse files count what they hold).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut bytes = md.blocks() * 512;
    if md.is_dir()
        && let Ok(rd) = std::fs::read_dir(path)
    {
        for e in rd.flatten() {
            bytes += allocated(&e.path());
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_our_names_only() {
        assert_eq!(owner(".staging-2026.11.1-4242"), Some(4242));
        assert_eq!(owner(".staging-1.0-rc-1-77"), Some(77));
        assert_eq!(owner(".old-9"), Some(9));
        assert_eq!(owner(".work-31-abc123"), Some(31));
        assert_eq!(owner(".base-abc.tar.tmp-123"), Some(123));
        assert_eq!(owner(".releases.json.tmp-5"), Some(5));
        for other in [
            "2026.11.1",
            "releases.json",
            ".staging-x",
            ".old-",
            ".tmp-12",
            "a.tmp-12",
            ".work-x-1",
            ".staging-1.0-12a",
        ] {
            assert_eq!(owner(other), None, "{other}");
        }
    }

    /// A process id no process has: past the kernel's largest (4194304).
    const DEAD: u32 = 4_194_305;

    #[test]
    fn dead_processes_leftovers_go_and_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let p = out.join("prod");
        let me = std::process::id();
        for dir in [
            format!(".staging-1.0-{DEAD}"),
            format!(".staging-1.0-{me}"),
            format!(".old-{DEAD}"),
            "1.0".to_string(),
        ] {
            std::fs::create_dir_all(p.join(&dir).join(".work")).unwrap();
            std::fs::write(p.join(&dir).join("x.raw"), vec![1u8; 8192]).unwrap();
        }
        std::fs::write(p.join(format!(".releases.json.tmp-{DEAD}")), "{").unwrap();
        std::fs::write(p.join("releases.json"), "{}").unwrap();
        let cache = d.path().join("cache");
        std::fs::create_dir_all(cache.join("base/trixie")).unwrap();
        std::fs::write(cache.join(format!("base/trixie/.k.tar.tmp-{DEAD}")), "x").unwrap();
        std::fs::create_dir_all(cache.join(format!(".work-{DEAD}-abc/sub"))).unwrap();
        std::fs::create_dir_all(cache.join(format!(".work-{me}-abc"))).unwrap();

        let removed = sweep(&[(&out, 1), (&cache, 3)]).unwrap();
        let mut names: Vec<String> = removed
            .iter()
            .map(|r| r.path.strip_prefix(d.path()).unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("cache/.work-{DEAD}-abc"),
                format!("cache/base/trixie/.k.tar.tmp-{DEAD}"),
                format!("out/prod/.old-{DEAD}"),
                format!("out/prod/.releases.json.tmp-{DEAD}"),
                format!("out/prod/.staging-1.0-{DEAD}"),
            ]
        );
        assert!(removed.iter().any(|r| r.bytes >= 8192));
        assert!(p.join(format!(".staging-1.0-{me}")).exists());
        assert!(p.join("1.0/x.raw").exists());
        assert!(p.join("releases.json").exists());
        assert!(cache.join(format!(".work-{me}-abc")).exists());
        assert!(sweep(&[(&out, 1), (&cache, 3)]).unwrap().is_empty());
    }
}
