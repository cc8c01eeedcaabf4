//! `out/PROFILE/releases.json`: the record of what each published version of a profile is.
//!
//! A version, once published, names one image sha256. Publishing it again with other
//! bytes is refused (unless replaced on purpose, which keeps the old record in `replaced`);
//! the same bytes again keep the record, and a passed boot test adds a [`Verification`]
//! that nothing takes away. Records are kept in version order, oldest first; listings show
//! them newest first. Times are wall-clock seconds since the epoch: they say when
//! something happened here and are never part of an image.

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub image_sha256: String,
    pub recipe_id: String,
    /// The digest of the package lock file the build used.
    pub lock_digest: Option<String>,
    /// At least one boot test passed (`build --verify` or `verify`); see `verifications`.
    pub verified: bool,
    /// When it was first published (seconds since the epoch); none in records written
    /// before imagebuild kept it.
    #[serde(default)]
    pub published_at: Option<i64>,
    /// Every boot test that passed, oldest first.
    #[serde(default)]
    pub verifications: Vec<Verification>,
    /// Where the release was pushed, uploaded or pulled from, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<Remote>,
}

/// A copy of a release elsewhere: `push` and `upload` add one per destination, `pull`
/// one for where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    /// "pushed", "pulled" or "uploaded".
    pub how: String,
    /// `oci://HOST/REPO:TAG`, `s3://BUCKET/KEY`, ...
    pub location: String,
    /// The remote's own id: the manifest digest, the object's ETag, the AMI id.
    pub id: String,
    /// Seconds since the epoch.
    pub at: i64,
}

/// A boot test that passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Seconds since the epoch.
    pub at: i64,
    /// `qemu-system-x86_64 10.0.2 (tcg)`.
    pub machine: String,
    /// The firmware booted: `ovmf 2025.02-8+deb13u1 of trixie`.
    pub firmware: String,
    /// From starting QEMU to the health report.
    pub boot_seconds: f64,
}

/// A record that a deliberate `--replace` took out, with when and by what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replaced {
    pub release: Release,
    pub replaced_at: i64,
    pub replaced_by: String,
}

/// The releases of one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Releases {
    pub profile: String,
    /// Oldest version first.
    pub releases: Vec<Release>,
    /// Records replaced on purpose, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<Replaced>,
}

impl Releases {
    fn empty(profile: &str) -> Releases {
        Releases {
            profile: profile.to_string(),
            releases: Vec::new(),
            replaced: Vec::new(),
        }
    }

    /// The record of `version`.
    pub fn get(&self, version: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// The highest version.
    pub fn latest(&self) -> Option<&Release> {
        self.releases.last()
    }

    /// The highest version that passed a boot test.
    pub fn latest_verified(&self) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.verified)
    }
}

/// `OUT/PROFILE/releases.json`.
pub fn path(out_root: &Path, profile: &str) -> PathBuf {
    out_root.join(profile).join(FILE)
}

/// The releases of `profile`; none when nothing was published yet.
pub fn read(out_root: &Path, profile: &str) -> Result<Releases> {
    let p = path(out_root, profile);
    let bytes = match std::fs::read(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Releases::empty(profile)),
        r => r.with_context(|| format!("reading {}", p.display()))?,
    };
    let mut all: Releases = serde_json::from_slice(&bytes).map_err(|e| {
        UserError::new(Kind::Corrupt, format!("{} is not valid: {e}", p.display()))
            .hint("restore it from a backup, or remove it: the next build starts a new one")
    })?;
    all.releases
        .sort_by(|a, b| compare_versions(&a.version, &b.version));
    Ok(all)
}

/// A lock on `OUT/PROFILE/` for reading, deciding and writing its releases without losing
/// a concurrent build's record. Dropping it unlocks.
pub struct Locked {
    dir: File,
    out_root: PathBuf,
    profile: String,
}

/// Takes the lock on `OUT/PROFILE/` (created if need be).
pub fn lock(out_root: &Path, profile: &str) -> Result<Locked> {
    let dir_path = out_root.join(profile);
    std::fs::create_dir_all(&dir_path)
        .with_context(|| format!("creating {}", dir_path.display()))?;
    let dir = File::open(&dir_path).with_context(|| format!("opening {}", dir_path.display()))?;
    dir.lock()
        .with_context(|| format!("locking {}", dir_path.display()))?;
    Ok(Locked {
        dir,
        out_root: out_root.to_path_buf(),
        profile: profile.to_string(),
    })
}

/// What publishing an image as a version would do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The version is new.
    New,
    /// The version is published with these very bytes: keep its record.
    Same(Release),
    /// The version holds other bytes and `replace` was asked for.
    Replace(Release),
}

impl Locked {
    pub fn read(&self) -> Result<Releases> {
        read(&self.out_root, &self.profile)
    }

    /// Whether `version` may be published with image `sha256`: a version that holds other
    /// bytes is an error naming both, unless `replace`. `at` says where the version is set
    /// (`profiles/x.toml:3`) for the hint.
    pub fn decide(&self, version: &str, sha256: &str, replace: bool, at: &str) -> Result<Decision> {
        let all = self.read()?;
        let Some(old) = all.get(version) else {
            return Ok(Decision::New);
        };
        if old.image_sha256 == sha256 {
            return Ok(Decision::Same(old.clone()));
        }
        if replace {
            return Ok(Decision::Replace(old.clone()));
        }
        Err(UserError::invalid(format!(
            "{} {version} is already published as image sha256 {}; this build made {sha256}. \
             A version names one image: nothing was published",
            self.profile, old.image_sha256
        ))
        .hint(format!(
            "bump `version` ({at}), or pass --replace to publish over it (the old record \
             stays in {})",
            path(&self.out_root, &self.profile).display()
        ))
        .into())
    }

    /// Writes `release` as decided: adds it ([`Decision::New`]), moves the old record to
    /// `replaced` ([`Decision::Replace`]) or keeps the old record ([`Decision::Same`]);
    /// `verification` is added to the record either way and marks it verified. Atomic.
    pub fn record(
        &self,
        decision: &Decision,
        release: Release,
        verification: Option<Verification>,
        now: i64,
    ) -> Result<Release> {
        let mut all = self.read()?;
        let version = release.version.clone();
        let mut rec = match decision {
            Decision::Same(_) => all
                .releases
                .iter()
                .find(|r| r.version == version)
                .cloned()
                .unwrap_or(release),
            Decision::Replace(old) => {
                all.replaced.push(Replaced {
                    release: old.clone(),
                    replaced_at: now,
                    replaced_by: release.image_sha256.clone(),
                });
                Release {
                    published_at: Some(now),
                    ..release
                }
            }
            Decision::New => Release {
                published_at: Some(now),
                ..release
            },
        };
        if let Some(v) = verification {
            rec.verified = true;
            rec.verifications.push(v);
        }
        all.releases.retain(|r| r.version != version);
        all.releases.push(rec.clone());
        self.write(&mut all)?;
        Ok(rec)
    }

    /// Adds `remote` to the record of `version` whose image is `sha256` (once: the same
    /// location and id again only updates the time).
    pub fn add_remote(&self, version: &str, sha256: &str, remote: Remote) -> Result<()> {
        self.update(version, sha256, |rec| {
            rec.remotes.retain(|r| {
                !(r.how == remote.how && r.location == remote.location && r.id == remote.id)
            });
            rec.remotes.push(remote);
        })
    }

    /// Adds a passed boot test to the record of `version` whose image is `sha256`.
    pub fn add_verification(&self, version: &str, sha256: &str, v: Verification) -> Result<()> {
        self.update(version, sha256, |rec| {
            rec.verified = true;
            rec.verifications.push(v);
        })
    }

    /// Changes the record of `version` whose image is `sha256` and writes the file.
    fn update(&self, version: &str, sha256: &str, change: impl FnOnce(&mut Release)) -> Result<()> {
        let mut all = self.read()?;
        let rec = all
            .releases
            .iter_mut()
            .find(|r| r.version == version && r.image_sha256 == sha256)
            .with_context(|| format!("{} {version} has no record", self.profile))?;
        change(rec);
        self.write(&mut all)
    }

    fn write(&self, all: &mut Releases) -> Result<()> {
        all.releases
            .sort_by(|a, b| compare_versions(&a.version, &b.version));
        let p = path(&self.out_root, &self.profile);
        let json = serde_json::to_string_pretty(all)? + "\n";
        write_atomic(&p, json.as_bytes())
            .with_context(|| format!("recording in {}", p.display()))?;
        self.dir
            .sync_all()
            .context("syncing the releases directory")
    }
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn release(version: &str, sha: &str) -> Release {
        Release {
            version: version.into(),
            image_sha256: sha.into(),
            recipe_id: "0123456789abcdef".into(),
            lock_digest: None,
            verified: false,
            published_at: None,
            verifications: Vec::new(),
            remotes: Vec::new(),
        }
    }

    fn boot(at: i64) -> Verification {
        Verification {
            at,
            machine: "qemu-system-x86_64 10.0.2 (tcg)".into(),
            firmware: "ovmf 2025.02-8+deb13u1 of trixie".into(),
            boot_seconds: 14.2,
        }
    }

    fn publish(out: &Path, v: &str, sha: &str, verified: bool, now: i64) -> Result<Release> {
        let l = lock(out, "p")?;
        let d = l.decide(v, sha, false, "profiles/p.toml:3")?;
        l.record(&d, release(v, sha), verified.then(|| boot(now)), now)
    }

    #[test]
    fn records_sort_by_version_and_keep_their_first_publication() {
        let out = tempfile::tempdir().unwrap();
        for (v, sha, t) in [("1.10", "a", 10), ("1.9", "b", 20), ("1.10", "a", 30)] {
            publish(out.path(), v, sha, false, t).unwrap();
        }
        let got = read(out.path(), "p").unwrap();
        let versions: Vec<_> = got.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["1.9", "1.10"]);
        assert_eq!(got.get("1.10").unwrap().published_at, Some(10));
        let names: Vec<_> = std::fs::read_dir(out.path().join("p"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE], "no temporary file left");
    }

    #[test]
    fn a_version_names_one_image() {
        let out = tempfile::tempdir().unwrap();
        publish(out.path(), "1", "aaaa", true, 10).unwrap();
        let err = publish(out.path(), "1", "bbbb", false, 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p 1 is already published as image sha256 aaaa; this build made bbbb. \
             A version names one image: nothing was published"
        );
        let hint = &crate::error::hints(&err)[0];
        assert!(
            hint.starts_with("bump `version` (profiles/p.toml:3), or pass --replace"),
            "{hint}"
        );
        assert_eq!(
            read(out.path(), "p")
                .unwrap()
                .get("1")
                .unwrap()
                .image_sha256,
            "aaaa"
        );
    }

    #[test]
    fn an_unverified_rebuild_of_the_same_bytes_stays_verified() {
        let out = tempfile::tempdir().unwrap();
        publish(out.path(), "1", "aaaa", true, 10).unwrap();
        let rec = publish(out.path(), "1", "aaaa", false, 20).unwrap();
        assert!(rec.verified);
        assert_eq!(rec.verifications, [boot(10)]);
        let rec = publish(out.path(), "1", "aaaa", true, 30).unwrap();
        assert_eq!(
            rec.verifications,
            [boot(10), boot(30)],
            "a verification adds"
        );
        assert_eq!(rec.published_at, Some(10));
    }

    #[test]
    fn replace_keeps_the_old_record_in_the_history() {
        let out = tempfile::tempdir().unwrap();
        publish(out.path(), "1", "aaaa", true, 10).unwrap();
        let l = lock(out.path(), "p").unwrap();
        let d = l.decide("1", "bbbb", true, "x").unwrap();
        assert!(matches!(d, Decision::Replace(_)));
        let rec = l.record(&d, release("1", "bbbb"), None, 40).unwrap();
        assert!(!rec.verified, "the new bytes were not boot-tested");
        let all = read(out.path(), "p").unwrap();
        assert_eq!(all.replaced.len(), 1);
        assert_eq!(all.replaced[0].release.image_sha256, "aaaa");
        assert_eq!(all.replaced[0].replaced_by, "bbbb");
        assert_eq!(all.replaced[0].replaced_at, 40);
    }

    #[test]
    fn records_of_older_imagebuilds_still_read() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("p")).unwrap();
        std::fs::write(
            path(out.path(), "p"),
            r#"{"profile":"p","releases":[{"version":"1","image_sha256":"a","recipe_id":"r","lock_digest":null,"verified":true}]}"#,
        )
        .unwrap();
        let all = read(out.path(), "p").unwrap();
        assert!(all.releases[0].verified);
        assert_eq!(all.releases[0].published_at, None);
    }

    #[test]
    fn a_damaged_file_is_named() {
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir(out.path().join("p")).unwrap();
        std::fs::write(path(out.path(), "p"), "{").unwrap();
        let err = publish(out.path(), "1", "a", false, 1).unwrap_err();
        assert!(
            err.to_string().contains("releases.json is not valid"),
            "{err}"
        );
    }
}
