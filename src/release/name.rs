//! Names: the one rule for every name that becomes part of a path (profile names, image
//! names, versions), and release names as users type them (`PROFILE`, `PROFILE@VERSION`,
//! `PROFILE@sha256:PREFIX`, or the path of an image file).

use std::fmt;
use std::path::PathBuf;

use crate::error::UserError;

/// The longest plain name accepted.
pub const NAME_MAX: usize = 100;
/// The shortest sha256 prefix accepted in `PROFILE@sha256:PREFIX`.
pub const PREFIX_MIN: usize = 4;

/// Whether `s` is a plain name: a letter or digit, then letters, digits and `. _ + ~ -`,
/// at most [`NAME_MAX`] bytes. A plain name is one path component that is never `.`, `..`,
/// absolute, hidden or an option: it can be joined under `out/` and `profiles/` safely.
pub fn is_plain(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= NAME_MAX
        && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
}

/// `what` (`profile name`, `version`, ...) must be a plain name; the error says the rule.
pub fn check_plain(what: &str, s: &str) -> Result<(), String> {
    if is_plain(s) {
        return Ok(());
    }
    Err(format!(
        "{what} {s:?} is not a plain name: it must start with a letter or digit and hold \
         only letters, digits and . _ + ~ - (at most {NAME_MAX})"
    ))
}

/// A release as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseName {
    /// `PROFILE`: the profile's latest (verified) release.
    Latest(String),
    /// `PROFILE@VERSION`.
    Version(String, String),
    /// `PROFILE@sha256:PREFIX` (lower-case hex).
    Sha256(String, String),
    /// An image file.
    Path(PathBuf),
}

impl ReleaseName {
    /// Parses `arg`. Anything with a `/` is a path; `NAME@...` is a release; a plain name
    /// is a profile. What is neither is an error that shows the forms.
    pub fn parse(arg: &str) -> Result<ReleaseName, UserError> {
        if arg.contains('/') {
            return Ok(ReleaseName::Path(PathBuf::from(arg)));
        }
        let (profile, at) = match arg.split_once('@') {
            Some((p, rest)) => (p, Some(rest)),
            None => (arg, None),
        };
        if let Err(e) = check_plain("profile name", profile) {
            return Err(UserError::invalid(e).hint(FORMS));
        }
        let profile = profile.to_string();
        let Some(at) = at else {
            return Ok(ReleaseName::Latest(profile));
        };
        if let Some(prefix) = at.strip_prefix("sha256:") {
            let ok = prefix.len() >= PREFIX_MIN
                && prefix.len() <= 64
                && prefix.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(UserError::invalid(format!(
                    "{arg}: `{prefix}` is not a sha256 prefix ({PREFIX_MIN} to 64 hex digits)"
                ))
                .hint(FORMS));
            }
            return Ok(ReleaseName::Sha256(profile, prefix.to_ascii_lowercase()));
        }
        if let Err(e) = check_plain("version", at) {
            return Err(UserError::invalid(format!("{arg}: {e}")).hint(FORMS));
        }
        Ok(ReleaseName::Version(profile, at.to_string()))
    }

    /// The profile the name belongs to, unless it is a path.
    pub fn profile(&self) -> Option<&str> {
        match self {
            ReleaseName::Latest(p) | ReleaseName::Version(p, _) | ReleaseName::Sha256(p, _) => {
                Some(p)
            }
            ReleaseName::Path(_) => None,
        }
    }
}

impl fmt::Display for ReleaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseName::Latest(p) => f.write_str(p),
            ReleaseName::Version(p, v) => write!(f, "{p}@{v}"),
            ReleaseName::Sha256(p, s) => write!(f, "{p}@sha256:{s}"),
            ReleaseName::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The forms a release name takes, for hints.
pub const FORMS: &str = "name a release as PROFILE (its latest verified release), PROFILE@VERSION, \
     PROFILE@sha256:PREFIX, or the path of an image file (./disk.raw)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_one_safe_path_component() {
        for ok in [
            "prod-amd64",
            "2026.11.1",
            "1.0~rc1",
            "a",
            "v1+build.2",
            "web_1",
        ] {
            assert!(is_plain(ok), "{ok}");
        }
        let long = "a".repeat(NAME_MAX + 1);
        for bad in [
            "", ".", "..", "../x", "a/b", "/etc", ".hidden", "-rf", "a b", "a\nb", "é", &long,
        ] {
            assert!(!is_plain(bad), "{bad:?}");
        }
        assert_eq!(
            check_plain("version", "..").unwrap_err(),
            "version \"..\" is not a plain name: it must start with a letter or digit and hold \
             only letters, digits and . _ + ~ - (at most 100)"
        );
    }

    #[test]
    fn release_names_parse() {
        use ReleaseName::*;
        assert_eq!(
            ReleaseName::parse("prod-amd64").unwrap(),
            Latest("prod-amd64".into())
        );
        assert_eq!(
            ReleaseName::parse("prod-amd64@2026.12.1").unwrap(),
            Version("prod-amd64".into(), "2026.12.1".into())
        );
        assert_eq!(
            ReleaseName::parse("prod-amd64@sha256:677D876A").unwrap(),
            Sha256("prod-amd64".into(), "677d876a".into())
        );
        assert_eq!(
            ReleaseName::parse("out/p/1/p-1.raw").unwrap(),
            Path("out/p/1/p-1.raw".into())
        );
        assert_eq!(
            ReleaseName::parse("./disk.raw").unwrap(),
            Path("./disk.raw".into())
        );
        for (bad, msg) in [
            (
                "p@sha256:67",
                "p@sha256:67: `67` is not a sha256 prefix (4 to 64 hex digits)",
            ),
            (
                "p@sha256:xyz1",
                "p@sha256:xyz1: `xyz1` is not a sha256 prefix (4 to 64 hex digits)",
            ),
            ("p@..", "p@..: version \"..\" is not a plain name"),
            ("..", "profile name \"..\" is not a plain name"),
            ("@1", "profile name \"\" is not a plain name"),
        ] {
            let err = ReleaseName::parse(bad).unwrap_err();
            assert!(err.message.starts_with(msg), "{bad}: {}", err.message);
            assert_eq!(err.hint.as_deref(), Some(FORMS));
        }
    }
}
