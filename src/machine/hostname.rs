//! Host names as RFC 1123 and the kernel take them: labels of 1-63 characters `a-z`, `0-9`
//! and `-` (not first or last), joined by `.`, at most 64 characters in all (the kernel's
//! `__NEW_UTS_LEN`). Lower case only, so that the name a machine reports is the name given.

use std::fmt;

/// Most characters the kernel keeps as the host name.
pub const HOSTNAME_MAX: usize = 64;
/// Most characters in one label.
const LABEL_MAX: usize = 63;

/// The hint for every invalid host name.
pub const HOSTNAME_HINT: &str = "a host name is labels of 1-63 characters a-z, 0-9 and '-' \
(not first or last in a label), joined by '.', at most 64 characters in all, e.g. web-3";

/// A valid host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

/// Why a host name is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHostname {
    pub name: String,
    pub reason: String,
}

impl fmt::Display for InvalidHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host name {:?} is not valid: {}", self.name, self.reason)
    }
}

impl std::error::Error for InvalidHostname {}

impl Hostname {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Hostname, InvalidHostname> {
        match problem(name) {
            None => Ok(Hostname(name.to_owned())),
            Some(reason) => Err(InvalidHostname {
                name: name.to_owned(),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with `name`, if anything.
fn problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    let chars = name.chars().count();
    if chars > HOSTNAME_MAX {
        return Some(format!(
            "it has {chars} characters, the kernel keeps at most {HOSTNAME_MAX}"
        ));
    }
    name.split('.').find_map(label_problem)
}

fn label_problem(label: &str) -> Option<String> {
    if label.is_empty() {
        return Some("it has an empty label (a dot first, last or twice)".to_owned());
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(if c.is_ascii_uppercase() {
            format!("{c:?} is upper case; use lower case")
        } else {
            format!("{c:?} is not one of a-z, 0-9, '-' and '.'")
        });
    }
    if label.len() > LABEL_MAX {
        return Some(format!(
            "label {label:?} has {} characters, at most {LABEL_MAX}",
            label.len()
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some(format!("label {label:?} starts or ends with '-'"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> String {
        Hostname::new(name).unwrap_err().reason
    }

    #[test]
    fn accepts_rfc_1123_names() {
        let longest_label = "a".repeat(63);
        let longest = format!("{}.{}", "b".repeat(31), "c".repeat(32));
        for name in [
            "web-3",
            "a",
            "0",
            "3com",
            "web-3.eu-west.example",
            &longest_label,
            &longest,
        ] {
            assert_eq!(Hostname::new(name).unwrap().as_str(), name);
        }
        assert_eq!(longest.len(), HOSTNAME_MAX);
    }

    #[test]
    fn refuses_what_the_kernel_or_rfc_1123_would_not_take() {
        for (name, wanted) in [
            ("", "it is empty"),
            ("web_3", "'_' is not one of"),
            ("Web-3", "'W' is upper case"),
            ("web 3", "' ' is not one of"),
            ("wéb", "'é' is not one of"),
            ("-web", "starts or ends with '-'"),
            ("web-", "starts or ends with '-'"),
            ("a.-b", "label \"-b\" starts or ends with '-'"),
            ("web.", "empty label"),
            (".web", "empty label"),
            ("a..b", "empty label"),
            (&"a".repeat(64), "label"),
            (
                &"a".repeat(300),
                "300 characters, the kernel keeps at most 64",
            ),
            (
                &format!("{}.{}", "b".repeat(32), "c".repeat(32)),
                "65 characters",
            ),
        ] {
            let got = reason(name);
            assert!(got.contains(wanted), "{name:?}: {got}");
        }
    }

    #[test]
    fn the_error_names_the_host_name() {
        let err = Hostname::new("a_b").unwrap_err().to_string();
        assert_eq!(
            err,
            "host name \"a_b\" is not valid: '_' is not one of a-z, 0-9, '-' and '.'"
        );
    }
}
