//! `out/PROFILE/releases.json`: what each published version of a profile is. A build
//! records its version after the version's directory is in place; a rebuild of the same
//! version replaces the record. Records are kept in version order. Nothing in a record
//! depends on the time of the build.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::boot::modules::compare_versions;
use crate::cache::write_atomic;
use crate::error::{Kind, UserError};

/// The name of the file, in `out/PROFILE/`.
pub const FILE: &str = "releases.json";

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub image_sha256: String,
    pub recipe_id: String,
    /// The digest of the package lock file; none until builds have lock files.
    pub lock_digest: Option<String>,
    /// The image was boot-tested (`--verify`) before it was published.
    pub verified: bool,
}

/// The releases of one profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases {
    pub profile: String,
    pub releases: Vec<Release>,
}

/// `OUT/PROFILE/releases.json`.
pub fn path(out_root: &Path, profile: &str) -> PathBuf {
    out_root.join(profile).join(FILE)
}

/// The releases of `profile`; none when nothing was published yet.
pub fn read(out_root: &Path, profile: &str) -> Result<Releases> {
    let p = path(out_root, profile);
    let bytes = match std::fs::read(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Releases {
                profile: profile.to_string(),
                releases: Vec::new(),
            });
        }
        r => r.with_context(|| format!("reading {}", p.display()))?,
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        UserError::new(Kind::Corrupt, format!("{} is not valid: {e}", p.display()))
            .hint("restore it from a backup, or remove it: the next build starts a new one")
            .into()
    })
}

/// The releases of `profile` for `imagebuild releases`: an error when there are none.
pub fn list(out_root: &Path, profile: &str) -> Result<Releases> {
    let releases = read(out_root, profile)?;
    if releases.releases.is_empty() {
        let msg = format!(
            "{profile} has no releases ({} is missing)",
            path(out_root, profile).display()
        );
        return Err(UserError::invalid(msg)
            .hint(format!("run `imagebuild build {profile}` first"))
            .into());
    }
    Ok(releases)
}

/// Adds `release` to the releases of `profile`, replacing a record of the same version.
/// Holds a lock on `OUT/PROFILE/` so concurrent builds do not lose each other's records,
/// and writes atomically (temporary file, fsync, rename, fsync of the directory).
pub fn record(out_root: &Path, profile: &str, release: Release) -> Result<()> {
    let dir = out_root.join(profile);
    let p = path(out_root, profile);
    let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", dir.display()))?;
    let mut all = read(out_root, profile)?;
    all.releases.retain(|r| r.version != release.version);
    all.releases.push(release);
    all.releases
        .sort_by(|a, b| compare_versions(&a.version, &b.version));
    let json = serde_json::to_string_pretty(&all)? + "\n";
    write_atomic(&p, json.as_bytes())?;
    lock.sync_all()
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

impl Releases {
    /// One line per release: version, image sha256, recipe id (abbreviated), verified.
    pub fn human(&self) -> String {
        let w = self
            .releases
            .iter()
            .map(|r| r.version.len())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        for r in &self.releases {
            let recipe = r.recipe_id.get(..12).unwrap_or(&r.recipe_id);
            let verified = if r.verified {
                "verified"
            } else {
                "not verified"
            };
            // Writing to a String cannot fail.
            let _ = writeln!(
                s,
                "{:w$}  {}  recipe {recipe}  {verified}",
                r.version, r.image_sha256
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str, sha: &str) -> Release {
        Release {
            version: version.into(),
            image_sha256: sha.into(),
            recipe_id: "0123456789abcdef".into(),
            lock_digest: None,
            verified: false,
        }
    }

    #[test]
    fn records_replace_by_version_and_sort_by_version_order() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("p")).unwrap();
        for (v, sha) in [("1.10", "a"), ("1.9", "b"), ("1.10", "c"), ("1.0", "d")] {
            record(out.path(), "p", release(v, sha)).unwrap();
        }
        let got = read(out.path(), "p").unwrap();
        assert_eq!(
            got.releases,
            [
                release("1.0", "d"),
                release("1.9", "b"),
                release("1.10", "c")
            ]
        );
        assert_eq!(
            got.human(),
            "1.0   d  recipe 0123456789ab  not verified\n\
             1.9   b  recipe 0123456789ab  not verified\n\
             1.10  c  recipe 0123456789ab  not verified\n"
        );
        let names: Vec<_> = std::fs::read_dir(out.path().join("p"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE], "no temporary file left");
    }

    #[test]
    fn no_releases_is_an_error_with_a_hint() {
        let out = tempfile::tempdir().unwrap();
        let err = list(out.path(), "p").unwrap_err();
        assert!(err.to_string().starts_with("p has no releases"), "{err}");
        assert_eq!(
            crate::error::hints(&err),
            ["run `imagebuild build p` first"]
        );
    }

    #[test]
    fn a_damaged_file_is_named() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("p")).unwrap();
        std::fs::write(path(out.path(), "p"), "{").unwrap();
        let err = record(out.path(), "p", release("1", "a")).unwrap_err();
        assert!(
            err.to_string().contains("releases.json is not valid"),
            "{err}"
        );
    }
}
