//! Lock files: `profiles/NAME.lock` pins what a profile's base is made of, so a build on
//! another day or another machine installs the same bytes or fails.
//!
//! A lock records the recipe id it was made for, the mirror and SOURCE_DATE_EPOCH, every
//! installed package (name, version, architecture, sha256 of its .deb), the tarball of a
//! tarball base and the systemd-stub the UKI is made from. It is TOML, sorted, one package
//! per line, so a relock reads well in a code review:
//!
//! ```toml
//! format = 1
//! profile = "prod-amd64"
//! recipe-id = "3f1c..."
//! packages = [
//!   { name = "adduser", version = "3.152", arch = "all", sha256 = "..." },
//! ]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cache::{sha256, write_atomic};
use crate::error::{Kind, UserError};
use crate::profile::{Project, Recipe};

/// The lock file format written by this version.
pub const FORMAT: u32 = 1;

/// A parsed lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lock {
    pub format: u32,
    pub profile: String,
    /// The recipe id (sha256 of the merged profile) the lock was made for.
    pub recipe_id: String,
    pub arch: String,
    pub source_date_epoch: i64,
    /// Debian bases: the mirror the packages came from, and the suite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// Tarball bases: the tarball and its sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tarball: Option<Digest>,
    /// The systemd-stub the UKI is assembled from, when the base has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stub: Option<Digest>,
    /// Every installed package, sorted by name and architecture.
    #[serde(default)]
    pub packages: Vec<LockedPackage>,
}

/// A file and its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub path: String,
    pub sha256: String,
}

/// One installed package and the sha256 of the .deb it was installed from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
}

impl LockedPackage {
    /// The name apt gives the .deb in its archive cache (`bsdutils_1%3a2.41_amd64.deb`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// `profiles/NAME.lock` of `project`.
pub fn path(project: &Project, profile: &str) -> PathBuf {
    project.profiles_dir().join(format!("{profile}.lock"))
}

impl Lock {
    /// The lock as TOML: top-level keys, then tables, then one package per line.
    pub fn render(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = format!(
            "# imagebuild lock for profile {}: what its base is made of, pinned.\n\
             # Written by `imagebuild lock {}`; a build fails when anything differs.\n",
            self.profile, self.profile
        );
        let _ = writeln!(out, "format = {}", self.format);
        let _ = writeln!(out, "profile = {}", q(&self.profile));
        let _ = writeln!(out, "recipe-id = {}", q(&self.recipe_id));
        let _ = writeln!(out, "arch = {}", q(&self.arch));
        let _ = writeln!(out, "source-date-epoch = {}", self.source_date_epoch);
        if let Some(m) = &self.mirror {
            let _ = writeln!(out, "mirror = {}", q(m));
        }
        if let Some(s) = &self.suite {
            let _ = writeln!(out, "suite = {}", q(s));
        }
        for (name, d) in [("tarball", &self.tarball), ("stub", &self.stub)] {
            if let Some(d) = d {
                let _ = writeln!(
                    out,
                    "{name} = {{ path = {}, sha256 = {} }}",
                    q(&d.path),
                    q(&d.sha256)
                );
            }
        }
        let mut packages = self.packages.clone();
        packages.sort();
        out.push_str("packages = [\n");
        for p in &packages {
            let _ = writeln!(
                out,
                "  {{ name = {}, version = {}, arch = {}, sha256 = {} }},",
                q(&p.name),
                q(&p.version),
                q(&p.arch),
                q(&p.sha256)
            );
        }
        out.push_str("]\n");
        out
    }

    /// Parses lock file text; errors name `file` and the line.
    pub fn parse(text: &str, file: &Path) -> Result<Lock> {
        let lock: Lock = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            UserError::invalid(format!("{}:{line}: {}", file.display(), e.message().trim())).hint(
                "lock files are written by `imagebuild lock PROFILE`; rewrite it with that \
                 command instead of editing it",
            )
        })?;
        if lock.format != FORMAT {
            return Err(UserError::invalid(format!(
                "{}: lock format {} is not the format this imagebuild reads ({FORMAT})",
                file.display(),
                lock.format
            ))
            .hint("rewrite it with `imagebuild lock PROFILE`")
            .into());
        }
        Ok(lock)
    }

    /// sha256 of the rendered lock: what a release records.
    pub fn digest(&self) -> String {
        sha256(self.render().as_bytes())
    }

    /// The package named `name` for `arch`.
    pub fn package(&self, name: &str, arch: &str) -> Option<&LockedPackage> {
        self.packages
            .iter()
            .find(|p| p.name == name && p.arch == arch)
    }
}

/// Reads the lock of `recipe` if the profile has one, and checks it was made for this
/// recipe: a stale lock is an error that names the file and the fix.
pub fn load_for(project: &Project, recipe: &Recipe) -> Result<Option<Lock>> {
    let p = path(project, &recipe.profile);
    let text = match std::fs::read_to_string(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        r => r.with_context(|| format!("reading {}", p.display()))?,
    };
    let lock = Lock::parse(&text, &p)?;
    let stale = |key: &str, locked: &str, now: &str| -> anyhow::Error {
        UserError::invalid(format!(
            "{} is stale: its {key} is {locked}, the profile's is now {now}",
            p.display()
        ))
        .hint(format!(
            "relock: `imagebuild build {} --relock` (or `imagebuild lock {}`), then review \
             the lock's diff",
            recipe.profile, recipe.profile
        ))
        .into()
    };
    if lock.profile != recipe.profile {
        return Err(stale("profile", &lock.profile, &recipe.profile));
    }
    // The recipe id covers everything else the lock depends on (arch, epoch, mirror,
    // packages): any change to the merged profile makes the lock stale. Locks written
    // before the id covered the profile's name hold the merged profile's digest.
    if lock.recipe_id != recipe.id && lock.recipe_id != recipe.content_id {
        return Err(stale(
            "recipe-id",
            &lock.recipe_id[..lock.recipe_id.len().min(12)],
            &recipe.id[..12],
        ));
    }
    Ok(Some(lock))
}

/// Writes `lock` to `profiles/NAME.lock` atomically.
pub fn write(project: &Project, lock: &Lock) -> Result<PathBuf> {
    let p = path(project, &lock.profile);
    write_atomic(&p, lock.render().as_bytes())
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// A .deb in the package cache does not have the sha256 the lock gives it.
pub fn tampered_deb(deb: &Path, package: &LockedPackage, actual: &str) -> anyhow::Error {
    UserError::new(
        Kind::Corrupt,
        format!(
            "package {} {} ({}): the cached {} has sha256 {actual}, the lock says {}",
            package.name,
            package.version,
            package.arch,
            deb.display(),
            package.sha256
        ),
    )
    .hint(format!(
        "the package cache was changed or the file is damaged: delete {} and build again \
         (it is downloaded and checked again); if the mirror serves these bytes, relock with \
         --relock and review the change",
        deb.display()
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        Lock {
            format: FORMAT,
            profile: "prod-amd64".into(),
            recipe_id: "ab".repeat(32),
            arch: "amd64".into(),
            source_date_epoch: 1_767_225_600,
            mirror: Some("http://mirror.example/debian".into()),
            suite: Some("trixie".into()),
            tarball: None,
            stub: Some(Digest {
                path: "usr/lib/systemd/boot/efi/linuxx64.efi.stub".into(),
                sha256: "cd".repeat(32),
            }),
            packages: vec![
                LockedPackage {
                    name: "zlib1g".into(),
                    version: "1:1.3.dfsg+really1.3.1-1+b1".into(),
                    arch: "amd64".into(),
                    sha256: "01".repeat(32),
                },
                LockedPackage {
                    name: "adduser".into(),
                    version: "3.152".into(),
                    arch: "all".into(),
                    sha256: "02".repeat(32),
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_sorts_packages() {
        let lock = sample();
        let text = lock.render();
        let back = Lock::parse(&text, Path::new("p.lock")).unwrap();
        let mut sorted = lock.clone();
        sorted.packages.sort();
        assert_eq!(back, sorted);
        assert_eq!(back.render(), text, "rendering is stable");
        let adduser = text.find("\"adduser\"").unwrap();
        let zlib = text.find("\"zlib1g\"").unwrap();
        assert!(adduser < zlib, "packages sorted by name");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("  { name = "))
                .count(),
            2,
            "one package per line:\n{text}"
        );
    }

    #[test]
    fn deb_file_names_follow_apt() {
        let p = &sample().packages[0];
        assert_eq!(
            p.deb_file_name(),
            "zlib1g_1%3a1.3.dfsg+really1.3.1-1+b1_amd64.deb"
        );
    }

    #[test]
    fn a_bad_key_names_the_line() {
        let text = sample().render().replace("suite =", "suit =");
        let e = Lock::parse(&text, Path::new("profiles/p.lock")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("profiles/p.lock:9: unknown field `suit`"),
            "{msg}"
        );
    }

    #[test]
    fn another_format_is_refused() {
        let text = sample().render().replace("format = 1", "format = 9");
        let e = Lock::parse(&text, Path::new("p.lock")).unwrap_err();
        assert!(format!("{e:#}").contains("lock format 9"), "{e:#}");
    }
}
