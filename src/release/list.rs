//! `imagebuild releases PROFILE`: the published versions, newest first, with the age of
//! each and the two a user most often wants marked: `latest` and `latest verified`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::record::{self, Release, Releases, Replaced};
use crate::error::UserError;
use crate::profile::Project;

/// What `releases` prints (`--json` prints this as it is).
#[derive(Debug, Serialize)]
pub struct Listing {
    pub profile: String,
    pub latest: Option<String>,
    pub latest_verified: Option<String>,
    /// Newest (highest version) first.
    pub releases: Vec<Listed>,
    pub replaced: Vec<Replaced>,
    /// When the listing was made, for the ages of remotes.
    #[serde(skip)]
    pub now: Option<i64>,
}

/// One release with what the listing says about it.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub release: Release,
    /// Seconds since it was published; none when the record does not say.
    pub age_seconds: Option<i64>,
    pub latest: bool,
    pub latest_verified: bool,
}

/// The listing of `profile` at time `now`; an error when it has none, saying why.
pub fn listing(project: &Project, out_root: &Path, profile: &str, now: i64) -> Result<Listing> {
    if let Err(e) = super::name::check_plain("profile name", profile) {
        return Err(UserError::invalid(e).into());
    }
    let all = record::read(out_root, profile)?;
    if all.releases.is_empty() {
        return Err(no_releases(project, out_root, profile).into());
    }
    Ok(from_releases(all, now))
}

pub(crate) fn no_releases(project: &Project, out_root: &Path, profile: &str) -> UserError {
    let file = record::path(out_root, profile);
    if project.profile_exists(profile) {
        return UserError::invalid(format!(
            "{profile} has no releases yet ({} does not exist)",
            file.display()
        ))
        .hint(format!("build one: `imagebuild build {profile} --verify`"));
    }
    let known = project.list().unwrap_or_default();
    let hint = if known.is_empty() {
        "no profiles here: run imagebuild in a project directory, or pass -C DIR".to_string()
    } else {
        format!("profiles here: {}", known.join(", "))
    };
    UserError::invalid(format!(
        "no profile `{profile}` and no releases of it ({} does not exist)",
        file.display()
    ))
    .hint(hint)
}

/// Newest first, marked.
pub fn from_releases(all: Releases, now: i64) -> Listing {
    let latest = all.latest().map(|r| r.version.clone());
    let latest_verified = all.latest_verified().map(|r| r.version.clone());
    let releases = all
        .releases
        .into_iter()
        .rev()
        .map(|r| Listed {
            age_seconds: r.published_at.map(|t| (now - t).max(0)),
            latest: Some(&r.version) == latest.as_ref(),
            latest_verified: Some(&r.version) == latest_verified.as_ref(),
            release: r,
        })
        .collect();
    Listing {
        profile: all.profile,
        latest,
        latest_verified,
        releases,
        replaced: all.replaced,
        now: Some(now),
    }
}

impl Listing {
    /// A table, newest first: version, age, verified, image sha256, marks.
    pub fn human(&self) -> String {
        let vw = self
            .releases
            .iter()
            .map(|r| r.release.version.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            s,
            "{:vw$}  {:<13}  {:<12}  IMAGE SHA256",
            "VERSION", "PUBLISHED", "VERIFIED"
        );
        for r in &self.releases {
            let age = r.age_seconds.map_or_else(|| "unknown".into(), age);
            let verified = match r.release.verifications.last() {
                Some(v) => format!("yes, {:.1} s", v.boot_seconds),
                None if r.release.verified => "yes".into(),
                None => "no".into(),
            };
            let marks: Vec<&str> = [(r.latest, "latest"), (r.latest_verified, "latest verified")]
                .iter()
                .filter_map(|(on, m)| on.then_some(*m))
                .collect();
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!("  <- {}", marks.join(", "))
            };
            let _ = writeln!(
                s,
                "{:vw$}  {age:<13}  {verified:<12}  {}{marks}",
                r.release.version, r.release.image_sha256
            );
            for m in &r.release.remotes {
                let _ = writeln!(
                    s,
                    "{:vw$}    {} {} ({}){}",
                    "",
                    m.how,
                    m.location,
                    m.id,
                    self.now.map_or_else(String::new, |now| format!(
                        ", {}",
                        super::list::age(now - m.at)
                    ))
                );
            }
        }
        if self.latest_verified.is_none() {
            s.push_str(
                "no release is verified: `imagebuild verify PROFILE@VERSION` boot-tests one\n",
            );
        }
        s
    }
}

/// `5 min ago`, `3 hours ago`, `6 days ago`.
fn age(secs: i64) -> String {
    let (n, unit) = match secs {
        s if s < 60 => return "just now".into(),
        s if s < 3600 => (s / 60, "min"),
        s if s < 2 * 86400 => (s / 3600, "hours"),
        s => (s / 86400, "days"),
    };
    let unit = if n == 1 {
        unit.trim_end_matches('s')
    } else {
        unit
    };
    format!("{n} {unit} ago")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::record::Verification;

    fn rel(v: &str, sha: &str, at: i64, verified: bool) -> Release {
        Release {
            version: v.into(),
            image_sha256: sha.into(),
            recipe_id: "r".into(),
            lock_digest: None,
            verified,
            published_at: Some(at),
            verifications: if verified {
                vec![Verification {
                    at,
                    machine: "m".into(),
                    firmware: "f".into(),
                    boot_seconds: 14.25,
                }]
            } else {
                Vec::new()
            },
            remotes: Vec::new(),
        }
    }

    #[test]
    fn newest_first_with_ages_and_marks() {
        let day = 86400;
        let all = Releases {
            profile: "p".into(),
            releases: vec![
                rel("2026.11.1", "aaaa", 0, true),
                rel("2026.11.2", "bbbb", 5 * day, true),
                rel("2026.12.1", "cccc", 6 * day - 7200, false),
            ],
            replaced: Vec::new(),
        };
        let l = from_releases(all, 6 * day);
        assert_eq!(l.latest.as_deref(), Some("2026.12.1"));
        assert_eq!(l.latest_verified.as_deref(), Some("2026.11.2"));
        assert_eq!(
            l.human(),
            "VERSION    PUBLISHED      VERIFIED      IMAGE SHA256\n\
             2026.12.1  2 hours ago    no            cccc  <- latest\n\
             2026.11.2  24 hours ago   yes, 14.2 s   bbbb  <- latest verified\n\
             2026.11.1  6 days ago     yes, 14.2 s   aaaa\n"
        );
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["releases"][0]["version"], "2026.12.1");
        assert_eq!(json["releases"][0]["age_seconds"], 7200);
        assert_eq!(json["releases"][1]["latest_verified"], true);
        assert_eq!(json["latest_verified"], "2026.11.2");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(5), "just now");
        assert_eq!(age(60), "1 min ago");
        assert_eq!(age(3 * 3600), "3 hours ago");
        assert_eq!(age(3 * 86400), "3 days ago");
    }

    #[test]
    fn nothing_verified_is_said() {
        let all = Releases {
            profile: "p".into(),
            releases: vec![rel("1", "a", 0, false)],
            replaced: Vec::new(),
        };
        assert!(
            from_releases(all, 10)
                .human()
                .contains("no release is verified")
        );
    }

    #[test]
    fn no_releases_says_whether_the_profile_exists() {
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir(project.path().join("profiles")).unwrap();
        std::fs::write(project.path().join("profiles/p.toml"), "").unwrap();
        let p = Project::new(project.path());
        let out = project.path().join("out");
        let err = listing(&p, &out, "p", 0).unwrap_err();
        assert!(
            err.to_string().starts_with("p has no releases yet"),
            "{err}"
        );
        assert_eq!(
            crate::error::hints(&err),
            ["build one: `imagebuild build p --verify`"]
        );
        let err = listing(&p, &out, "nope", 0).unwrap_err();
        assert!(err.to_string().starts_with("no profile `nope`"), "{err}");
        assert_eq!(crate::error::hints(&err), ["profiles here: p"]);
        let err = listing(&p, &out, "../x", 0).unwrap_err();
        assert!(err.to_string().contains("not a plain name"), "{err}");
    }
}
