//! From a release name to an image file, and the check every delivery starts with: the
//! image's sha256, recomputed, must be the one its release record and SHA256SUMS name.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::name::ReleaseName;
use super::record::{self, Release};
use crate::error::{Kind, UserError};
use crate::profile::Project;

/// What a bare `PROFILE` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latest {
    /// The highest verified version; none verified is an error (delivery: `flash`).
    Verified,
    /// The highest version, verified or not (looking: `verify`, `run`, `inspect`, `diff`,
    /// and `flash --unverified`).
    Any,
}

/// An image file and what is recorded about it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `prod-amd64@2026.11.1`, or the path as given.
    pub label: String,
    pub image: PathBuf,
    /// The profile and its record, when the image is a recorded release.
    pub release: Option<(String, Release)>,
    /// `SHA256SUMS` beside the image and the sum it gives for it, when it has one.
    pub sums: Option<(PathBuf, String)>,
}

/// Resolves `arg` (see [`ReleaseName`]) against the releases under `out_root`.
pub fn resolve(project: &Project, out_root: &Path, arg: &str, latest: Latest) -> Result<Resolved> {
    let name = ReleaseName::parse(arg)?;
    // A plain name that is no profile but an existing file (`disk.raw`) is that file.
    if let ReleaseName::Latest(p) = &name
        && !project.profile_exists(p)
        && !record::path(out_root, p).is_file()
        && Path::new(arg).is_file()
    {
        return from_path(Path::new(arg));
    }
    match &name {
        ReleaseName::Path(p) => from_path(p),
        ReleaseName::Latest(p) | ReleaseName::Version(p, _) | ReleaseName::Sha256(p, _) => {
            let all = record::read(out_root, p)?;
            let rec = pick(&name, &all, latest, project, out_root)?;
            let dir = out_root.join(p).join(&rec.version);
            let image = dir.join(format!("{p}-{}.raw", rec.version));
            if !image.is_file() {
                return Err(UserError::new(
                    Kind::Corrupt,
                    format!(
                        "{p}@{} is recorded, but its image {} is missing",
                        rec.version,
                        image.display()
                    ),
                )
                .hint(format!(
                    "rebuild it (`imagebuild build {p}` with the same profile and lock gives the same bytes)"
                ))
                .into());
            }
            Ok(Resolved {
                label: format!("{p}@{}", rec.version),
                sums: sums_for(&image)?,
                image,
                release: Some((p.clone(), rec)),
            })
        }
    }
}

/// The record `name` means.
fn pick(
    name: &ReleaseName,
    all: &record::Releases,
    latest: Latest,
    project: &Project,
    out_root: &Path,
) -> Result<Release> {
    let profile = &all.profile;
    if all.releases.is_empty() {
        return Err(super::list::no_releases(project, out_root, profile).into());
    }
    let versions = || {
        all.releases
            .iter()
            .rev()
            .map(|r| r.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        ReleaseName::Latest(_) => match latest {
            Latest::Any => Ok(all.latest().cloned().context("no releases")?),
            Latest::Verified => all.latest_verified().cloned().ok_or_else(|| {
                UserError::invalid(format!(
                    "{profile} has no verified release (newest first: {})",
                    versions()
                ))
                .hint(format!(
                    "boot-test one (`imagebuild verify {profile}@VERSION`), name one \
                     ({profile}@VERSION) and pass --unverified, or build with --verify"
                ))
                .into()
            }),
        },
        ReleaseName::Version(_, v) => all.get(v).cloned().ok_or_else(|| {
            UserError::invalid(format!("{profile} has no release {v}"))
                .hint(format!("its releases, newest first: {}", versions()))
                .into()
        }),
        ReleaseName::Sha256(_, prefix) => {
            let hits: Vec<&Release> = all
                .releases
                .iter()
                .filter(|r| r.image_sha256.starts_with(prefix.as_str()))
                .collect();
            match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(UserError::invalid(format!(
                    "no release of {profile} has an image sha256 starting with {prefix}"
                ))
                .hint(format!(
                    "`imagebuild releases {profile}` lists them (newest first: {})",
                    versions()
                ))
                .into()),
                many => {
                    let list: Vec<String> = many
                        .iter()
                        .map(|r| format!("{profile}@{} ({})", r.version, r.image_sha256))
                        .collect();
                    Err(UserError::invalid(format!(
                        "sha256:{prefix} is ambiguous: it starts the image of {}",
                        list.join(", ")
                    ))
                    .hint("give more digits of the sha256")
                    .into())
                }
            }
        }
        ReleaseName::Path(_) => unreachable!("paths are resolved before"),
    }
}

/// An image given by path: its SHA256SUMS beside it and, inside `out/PROFILE/VERSION/`, its
/// record.
fn from_path(p: &Path) -> Result<Resolved> {
    std::fs::metadata(p).map_err(|e| {
        UserError::invalid(format!("no image {}: {e}", p.display())).hint(super::name::FORMS)
    })?;
    let sums = sums_for(p)?;
    // A cloud format of a release is checked against SHA256SUMS; the record names the
    // raw image.
    let raw = crate::formats::Format::of_path(p).is_none_or(|f| f == crate::formats::Format::Raw);
    let release = raw.then(|| {
        let dir = p.parent()?;
        let version = dir.file_name()?.to_str()?;
        let profile_dir = dir.parent()?;
        let profile = profile_dir.file_name()?.to_str()?;
        let all = record::read(profile_dir.parent()?, profile).ok()?;
        let rec = all.get(version)?.clone();
        Some((profile.to_string(), rec))
    });
    let release = release.flatten();
    Ok(Resolved {
        label: p.display().to_string(),
        image: p.to_path_buf(),
        release,
        sums,
    })
}

/// The sum `SHA256SUMS` beside `image` gives it, if that file lists it.
fn sums_for(image: &Path) -> Result<Option<(PathBuf, String)>> {
    let Some(name) = image.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let sums = image.with_file_name("SHA256SUMS");
    let text = match std::fs::read_to_string(&sums) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", sums.display())),
    };
    let sum = text.lines().find_map(|l| {
        let (sum, file) = l.split_once("  ")?;
        (file.trim_start_matches('*') == name).then(|| sum.to_ascii_lowercase())
    });
    Ok(sum.map(|s| (sums, s)))
}

impl Resolved {
    /// What the records say the image's sha256 is; the record and SHA256SUMS must agree.
    pub fn expected_sha256(&self) -> Result<Option<String>> {
        let rec = self.release.as_ref().map(|(_, r)| r.image_sha256.clone());
        match (&rec, &self.sums) {
            (Some(r), Some((path, s))) if r != s => Err(UserError::new(
                Kind::Corrupt,
                format!(
                    "{}: its release record says sha256 {r}, {} says {s}",
                    self.label,
                    path.display()
                ),
            )
            .hint("one of them was edited or damaged: rebuild the release")
            .into()),
            (Some(r), _) => Ok(Some(r.clone())),
            (None, Some((_, s))) => Ok(Some(s.clone())),
            (None, None) => Ok(None),
        }
    }

    /// Recomputes the image's sha256 and checks it against [`Self::expected_sha256`].
    /// Returns it; a mismatch is an error naming both.
    pub fn check(&self) -> Result<String> {
        let expected = self.expected_sha256()?;
        let f =
            File::open(&self.image).with_context(|| format!("opening {}", self.image.display()))?;
        let actual = crate::sparse::sha256(&f)
            .with_context(|| format!("hashing {}", self.image.display()))?;
        match expected {
            Some(e) if e != actual => Err(UserError::new(
                Kind::Corrupt,
                format!(
                    "{} has sha256 {actual}, but {} says {e}: the image changed since it \
                     was published; nothing was written",
                    self.image.display(),
                    self.recorded_where()
                ),
            )
            .hint("rebuild the release, or restore the image from where it was pushed")
            .into()),
            _ => Ok(actual),
        }
    }

    fn recorded_where(&self) -> String {
        match (&self.release, &self.sums) {
            (Some((p, r)), _) => format!("the release record of {p}@{}", r.version),
            (None, Some((path, _))) => path.display().to_string(),
            (None, None) => "nothing".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::record::{Decision, lock};

    /// A project with profile `p` and releases of it, each a small file.
    fn setup(releases: &[(&str, &[u8], bool)]) -> (tempfile::TempDir, Project, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        std::fs::write(dir.path().join("profiles/p.toml"), "").unwrap();
        let out = dir.path().join("out");
        for (v, bytes, verified) in releases {
            let d = out.join("p").join(v);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("p-{v}.raw")), bytes).unwrap();
            let sha = crate::cache::sha256(bytes);
            std::fs::write(d.join("SHA256SUMS"), format!("{sha}  p-{v}.raw\n")).unwrap();
            let l = lock(&out, "p").unwrap();
            let rec = Release {
                version: (*v).into(),
                image_sha256: sha,
                recipe_id: "r".into(),
                lock_digest: None,
                verified: false,
                published_at: None,
                verifications: Vec::new(),
                remotes: Vec::new(),
            };
            let v = verified.then(|| crate::release::record::Verification {
                at: 1,
                machine: "m".into(),
                firmware: "f".into(),
                boot_seconds: 1.0,
            });
            l.record(&Decision::New, rec, v, 1).unwrap();
        }
        let project = Project::new(dir.path());
        (dir, project, out)
    }

    #[test]
    fn names_pick_their_release() {
        let (_d, project, out) = setup(&[
            ("1.0", b"one", true),
            ("1.1", b"two", true),
            ("2.0", b"three", false),
        ]);
        let r = |arg: &str, l| resolve(&project, &out, arg, l);
        assert_eq!(r("p", Latest::Verified).unwrap().label, "p@1.1");
        assert_eq!(r("p", Latest::Any).unwrap().label, "p@2.0");
        assert_eq!(r("p@1.0", Latest::Verified).unwrap().label, "p@1.0");
        let sha = crate::cache::sha256(b"two");
        let got = r(&format!("p@sha256:{}", &sha[..8]), Latest::Verified).unwrap();
        assert_eq!(got.label, "p@1.1");
        assert_eq!(got.check().unwrap(), sha);
        assert!(got.image.ends_with("out/p/1.1/p-1.1.raw"));
        let err = r("p@9", Latest::Verified).unwrap_err();
        assert_eq!(err.to_string(), "p has no release 9");
        assert_eq!(
            crate::error::hints(&err),
            ["its releases, newest first: 2.0, 1.1, 1.0"]
        );
        let err = r("p@sha256:ffff", Latest::Verified).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no release of p has an image sha256 starting with ffff")
        );
    }

    #[test]
    fn an_ambiguous_prefix_lists_the_candidates() {
        // Find two contents whose sha256 share a first hex digit pair... search a few.
        let mut by_prefix: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
        for i in 0..600u32 {
            let b = i.to_string().into_bytes();
            by_prefix
                .entry(crate::cache::sha256(&b)[..4].to_string())
                .or_default()
                .push(b);
        }
        let (prefix, pair) = by_prefix.into_iter().find(|(_, v)| v.len() >= 2).unwrap();
        let (_d, project, out) = setup(&[("1", &pair[0], true), ("2", &pair[1], true)]);
        let err = resolve(&project, &out, &format!("p@sha256:{prefix}"), Latest::Any).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "sha256:{prefix} is ambiguous: it starts the image of p@1 ("
            )),
            "{msg}"
        );
        assert!(msg.contains(", p@2 ("), "{msg}");
        assert_eq!(
            crate::error::hints(&err),
            ["give more digits of the sha256"]
        );
    }

    #[test]
    fn nothing_verified_is_refused_for_delivery() {
        let (_d, project, out) = setup(&[("1", b"x", false)]);
        let err = resolve(&project, &out, "p", Latest::Verified).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p has no verified release (newest first: 1)"
        );
        assert!(crate::error::hints(&err)[0].contains("--unverified"));
        assert_eq!(
            resolve(&project, &out, "p", Latest::Any).unwrap().label,
            "p@1"
        );
    }

    #[test]
    fn a_changed_image_is_refused_naming_both_sums() {
        let (_d, project, out) = setup(&[("1", b"x", true)]);
        let r = resolve(&project, &out, "p@1", Latest::Any).unwrap();
        std::fs::write(&r.image, b"y").unwrap();
        let err = r.check().unwrap_err().to_string();
        assert!(
            err.contains(&format!("has sha256 {}", crate::cache::sha256(b"y")))
                && err.contains(&format!(
                    "the release record of p@1 says {}",
                    crate::cache::sha256(b"x")
                )),
            "{err}"
        );
        // SHA256SUMS edited to agree with the new bytes: the record still disagrees.
        std::fs::write(
            r.image.with_file_name("SHA256SUMS"),
            format!("{}  p-1.raw\n", crate::cache::sha256(b"y")),
        )
        .unwrap();
        let r = resolve(&project, &out, "p@1", Latest::Any).unwrap();
        let err = r.check().unwrap_err().to_string();
        assert!(err.contains("its release record says sha256"), "{err}");
    }

    #[test]
    fn paths_find_their_record_and_sums() {
        let (_d, project, out) = setup(&[("1", b"x", true)]);
        let path = out.join("p/1/p-1.raw");
        let r = resolve(&project, &out, path.to_str().unwrap(), Latest::Verified).unwrap();
        assert_eq!(r.release.as_ref().unwrap().1.version, "1");
        assert!(r.sums.is_some());
        assert_eq!(r.check().unwrap(), crate::cache::sha256(b"x"));
        let loose = _d.path().join("loose.raw");
        std::fs::write(&loose, b"z").unwrap();
        let r = resolve(&project, &out, loose.to_str().unwrap(), Latest::Verified).unwrap();
        assert!(r.release.is_none() && r.sums.is_none());
        let err = resolve(&project, &out, "./nope.raw", Latest::Any).unwrap_err();
        assert!(err.to_string().starts_with("no image ./nope.raw"), "{err}");
    }
}
