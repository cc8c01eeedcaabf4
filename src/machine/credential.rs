//! One systemd credential: a name and a value, as `imagebuild flash --credential` takes it.
//!
//! A name must be one systemd accepts (`credential_name_valid`: a file name and an fd name,
//! i.e. printable ASCII without `/` and `:`, not `.` or `..`, at most 255 bytes) and one
//! that survives the way to the machine: the FAT long name `NAME.cred` (none of
//! `"*<>?\|`, at most 255 characters) that systemd-stub packs (it skips names starting
//! with `.`). A value is at most `CREDENTIAL_SIZE_MAX` bytes, systemd's limit.

use std::fmt;
use std::path::Path;

use anyhow::Result;

use crate::error::UserError;

/// systemd's limit on one credential (CREDENTIAL_SIZE_MAX, 1 MiB); a larger one is skipped
/// when systemd imports it.
pub const CREDENTIAL_SIZE_MAX: usize = 1 << 20;
/// systemd's limit on all the credentials it imports at boot together
/// (CREDENTIALS_TOTAL_SIZE_MAX, the same 1 MiB); credentials past it are skipped.
pub const CREDENTIALS_TOTAL_SIZE_MAX: usize = CREDENTIAL_SIZE_MAX;
/// The suffix systemd-stub and systemd look for on the ESP.
pub const CRED_SUFFIX: &str = ".cred";
/// Longest name: `NAME.cred` must fit the 255 characters of a FAT long name (and of the
/// file name systemd-stub accepts).
const NAME_MAX: usize = 255 - CRED_SUFFIX.len();
/// Characters a FAT long name cannot hold, besides control characters.
const NOT_ON_FAT: &str = "\"*/:<>?\\|";

/// A credential for the machine: `name` (e.g. `system.hostname`) and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub value: Vec<u8>,
}

/// The value is left out: credentials may be secrets.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

impl Credential {
    /// A credential with a checked name and size.
    pub fn new(name: &str, value: Vec<u8>) -> Result<Credential> {
        check_name(name)?;
        if value.len() > CREDENTIAL_SIZE_MAX {
            return Err(UserError::invalid(format!(
                "credential {name} has {} bytes, more than systemd takes ({CREDENTIAL_SIZE_MAX})",
                value.len()
            ))
            .hint("keep each credential at most 1 MiB (systemd skips larger ones)")
            .into());
        }
        Ok(Credential {
            name: name.to_owned(),
            value,
        })
    }

    /// `NAME=VALUE` (the value as given, without a newline added) or `NAME=@FILE` (the
    /// file's bytes). A value that starts with `@` always names a file.
    pub fn parse(arg: &str) -> Result<Credential> {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(UserError::invalid(format!(
                "credential {arg:?} has no '=' between name and value"
            ))
            .hint("give NAME=VALUE or NAME=@FILE, e.g. --credential app.token=@token.txt")
            .into());
        };
        check_name(name)?;
        match value.strip_prefix('@') {
            Some(path) => Credential::new(name, read_value(name, Path::new(path))?),
            None => Credential::new(name, value.as_bytes().to_vec()),
        }
    }

    /// The file name on the ESP: `NAME.cred`.
    pub fn file_name(&self) -> String {
        format!("{}{CRED_SUFFIX}", self.name)
    }
}

/// The value of credential `name` from `path`, checked for size before it is read whole.
fn read_value(name: &str, path: &Path) -> Result<Vec<u8>> {
    let cannot = |e: std::io::Error| {
        UserError::invalid(format!(
            "credential {name}: cannot read {}: {e}",
            path.display()
        ))
        .hint(format!(
            "give a readable file after '@', or the value itself: {name}=VALUE"
        ))
    };
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > CREDENTIAL_SIZE_MAX as u64 {
        return Err(UserError::invalid(format!(
            "credential {name}: {} has {size} bytes, more than systemd takes ({CREDENTIAL_SIZE_MAX})",
            path.display()
        ))
        .hint("keep each credential at most 1 MiB (systemd skips larger ones)")
        .into());
    }
    Ok(std::fs::read(path).map_err(cannot)?)
}

/// Checks a credential name (see the module documentation).
pub fn check_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(UserError::invalid(format!(
            "credential name {name:?} is not valid: {reason}"
        ))
        .hint(format!(
            "use printable ASCII without {NOT_ON_FAT} and not starting with '.', at most {NAME_MAX} bytes, e.g. app.token"
        ))
        .into()),
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    if name.starts_with('.') {
        return Some("it starts with '.' (systemd-stub skips such files)".to_owned());
    }
    if name.len() > NAME_MAX {
        return Some(format!(
            "it has {} bytes, at most {NAME_MAX} fit the ESP's file name",
            name.len()
        ));
    }
    name.chars()
        .find(|&c| !(' '..='~').contains(&c) || NOT_ON_FAT.contains(c))
        .map(|c| format!("{c:?} is not allowed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(arg: &str) -> String {
        format!("{:#}", Credential::parse(arg).unwrap_err())
    }

    #[test]
    fn parses_a_value() {
        let c = Credential::parse("system.hostname=web-3").unwrap();
        assert_eq!(
            (c.name.as_str(), c.value.as_slice()),
            ("system.hostname", &b"web-3"[..])
        );
        assert_eq!(c.file_name(), "system.hostname.cred");
        let c = Credential::parse("a=b=c").unwrap();
        assert_eq!((c.name.as_str(), c.value.as_slice()), ("a", &b"b=c"[..]));
        assert_eq!(Credential::parse("empty=").unwrap().value, b"");
    }

    #[test]
    fn parses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, b"secret\n\0binary").unwrap();
        let c = Credential::parse(&format!("app.token=@{}", path.display())).unwrap();
        assert_eq!(c.value, b"secret\n\0binary");
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
    }

    #[test]
    fn a_missing_file_is_named_with_a_hint() {
        let e = Credential::parse("app.token=@/nonexistent/token").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("credential app.token: cannot read /nonexistent/token: "),
            "{msg}"
        );
        assert_eq!(
            crate::error::hints(&e),
            ["give a readable file after '@', or the value itself: app.token=VALUE"]
        );
    }

    #[test]
    fn refuses_bad_names() {
        for (arg, wanted) in [
            ("novalue", "has no '='"),
            ("=x", "it is empty"),
            (".hidden=x", "starts with '.'"),
            ("..=x", "starts with '.'"),
            ("a/b=x", "'/' is not allowed"),
            ("a:b=x", "':' is not allowed"),
            ("a*b=x", "'*' is not allowed"),
            ("a\\b=x", "'\\\\' is not allowed"),
            ("a\tb=x", "'\\t' is not allowed"),
            ("é=x", "'é' is not allowed"),
            (&format!("{}=x", "n".repeat(251)), "251 bytes, at most 250"),
        ] {
            let got = err(arg);
            assert!(got.contains(wanted), "{arg:?}: {got}");
        }
        assert!(Credential::parse(&format!("{}=x", "n".repeat(250))).is_ok());
        assert!(Credential::parse("with space and ~!#$%&'()+,;[]^`{}=x").is_ok());
    }

    #[test]
    fn refuses_values_over_one_mib() {
        assert!(Credential::new("a", vec![0; CREDENTIAL_SIZE_MAX]).is_ok());
        let e = format!(
            "{:#}",
            Credential::new("a", vec![0; CREDENTIAL_SIZE_MAX + 1]).unwrap_err()
        );
        assert!(
            e.contains("1048577 bytes, more than systemd takes (1048576)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(CREDENTIAL_SIZE_MAX as u64 + 1)
            .unwrap();
        let e = err(&format!("big=@{}", path.display()));
        assert!(e.contains("1048577 bytes"), "{e}");
    }
}
