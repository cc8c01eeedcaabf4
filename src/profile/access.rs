//! `[[user]]` and `[services]`, checked as far as the profile alone allows. What depends on
//! the image (groups, units, the sudo package) is checked when the tree is made; each spec
//! keeps the `file:line` it came from for those errors.

use std::collections::BTreeSet;

use anyhow::Result;

use super::Merged;
use super::schema::{HostKeyType, ServicesSection, SshSection, UserSection};
use crate::error::UserError;

/// A name from the profile and where it is written ("profiles/x.toml:12").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub name: String,
    pub at: String,
}

/// A login account: no password, SSH keys only.
#[derive(Debug, Clone)]
pub struct UserSpec {
    pub name: String,
    pub uid: Option<u32>,
    /// The id of the user's own group; with `group`, none is made.
    pub gid: Option<u32>,
    /// An existing group as the primary group.
    pub group: Option<Located>,
    pub groups: Vec<Located>,
    /// Public keys, one authorized_keys line each.
    pub ssh_keys: Vec<String>,
    pub shell: Option<String>,
    pub home: String,
    /// Passwordless sudo (`sudo = true` or "sudo" in groups).
    pub sudo: bool,
    pub at: String,
}

/// Units to enable, disable and mask, each once, with full unit names.
#[derive(Debug, Clone, Default)]
pub struct ServicesSpec {
    pub enable: Vec<Located>,
    pub disable: Vec<Located>,
    pub mask: Vec<Located>,
}

impl ServicesSpec {
    pub fn is_empty(&self) -> bool {
        self.enable.is_empty() && self.disable.is_empty() && self.mask.is_empty()
    }
}

/// Longest user name Debian's adduser accepts by default.
const NAME_MAX: usize = 32;

pub fn users(m: &Merged, sections: &[UserSection]) -> Result<Vec<UserSpec>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for u in sections {
        let at = m.locate(&format!("\"{}\"", u.name));
        let bad = |msg: String, hint: &str| -> anyhow::Error {
            UserError::invalid(format!("{at}: [[user]] {}: {msg}", u.name))
                .hint(hint)
                .into()
        };
        check_name(&u.name).map_err(|e| {
            UserError::invalid(format!("{at}: [[user]] name {:?} {e}", u.name)).hint(
                "use lowercase letters, digits, - and _, starting with a letter, at most 32 characters",
            )
        })?;
        if !seen.insert(u.name.clone()) {
            return Err(bad(
                "is defined twice (a profile and one it extends?)".into(),
                "keep one [[user]] table per name",
            ));
        }
        for id in [u.uid, u.gid].into_iter().flatten() {
            if !(1..=65533).contains(&id) {
                return Err(bad(
                    format!("id {id} is out of range"),
                    "use an id from 1000 to 59999 (0 is root; 65534 is nobody)",
                ));
            }
        }
        if u.gid.is_some() && u.group.is_some() {
            return Err(bad(
                "sets both gid and group".into(),
                "gid makes a group of the user's own with that id; group picks an existing one: keep one",
            ));
        }
        for (key, path) in [("shell", &u.shell), ("home", &u.home)] {
            if let Some(p) = path
                .as_deref()
                .filter(|p| !p.starts_with('/') || p.contains(':'))
            {
                return Err(bad(
                    format!("{key} {p:?} is not an absolute path"),
                    "write it as /path, without ':'",
                ));
            }
        }
        for (i, key) in u.ssh_keys.iter().enumerate() {
            check_public_key(key).map_err(|e| {
                let at = m.locate(key.get(..24).unwrap_or(key));
                UserError::invalid(format!(
                    "{at}: [[user]] {}: ssh-keys entry {} {e}",
                    u.name,
                    i + 1
                ))
                .hint(
                    "put the public key here (the .pub file; `ssh-keygen -y -f KEY` prints it), never a private key",
                )
            })?;
        }
        let located = |g: &String| Located {
            name: g.clone(),
            at: m.locate(&format!("\"{g}\"")),
        };
        out.push(UserSpec {
            name: u.name.clone(),
            uid: u.uid,
            gid: u.gid,
            group: u.group.as_ref().map(located),
            groups: u.groups.iter().map(located).collect(),
            ssh_keys: u.ssh_keys.iter().map(|k| k.trim().to_string()).collect(),
            shell: u.shell.clone(),
            home: u
                .home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name)),
            sudo: u.sudo.unwrap_or(false) || u.groups.iter().any(|g| g == "sudo"),
            at,
        });
    }
    Ok(out)
}

/// adduser's default rule, without the trailing `$` of machine accounts.
fn check_name(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter");
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err("may hold only lowercase letters, digits, - and _");
    }
    if name.len() > NAME_MAX {
        return Err("is longer than 32 characters");
    }
    if name == "root" {
        return Err("is root, which stays locked");
    }
    Ok(())
}

/// Key types OpenSSH accepts in authorized_keys.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// An authorized_keys line: `[options] TYPE BASE64 [comment]`, where the base64 blob
/// starts with TYPE again (as every OpenSSH public key does). The message never quotes
/// the key, which might be a secret pasted by mistake.
pub fn check_public_key(line: &str) -> Result<(), String> {
    if let Some(f) = crate::secrets::private_key(line.as_bytes()) {
        return Err(format!("is {}, not a public key", f.what));
    }
    let line = line.trim();
    if line.contains(['\n', '\r', '\0']) {
        return Err("spans several lines; give each key as its own string".into());
    }
    let tokens = split_options(line);
    let Some(i) = tokens.iter().position(|t| KEY_TYPES.contains(&t.as_str())) else {
        return Err(format!(
            "does not look like an OpenSSH public key: no key type such as ssh-ed25519 (it starts {:?})",
            line.chars().take(12).collect::<String>()
        ));
    };
    let kind = &tokens[i];
    let blob = tokens
        .get(i + 1)
        .and_then(|b| decode_base64(b))
        .ok_or_else(|| format!("({kind}) has no base64 key after the type"))?;
    let named = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) {
        return Err(format!(
            "({kind}) has a base64 blob that is not a {kind} key"
        ));
    }
    Ok(())
}

/// Splits on spaces outside double quotes (options such as `from="a, b"`).
fn split_options(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ' ' | '\t' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Standard base64 with `=` padding, strictly.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return None;
    }
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (n, chunk) in s.chunks(4).enumerate() {
        let last = n == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | u32::from(val(c)?);
        }
        acc <<= 6 * pad as u32;
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// A unit name as systemctl takes it: without a type suffix, `.service`.
fn unit_name(name: &str) -> String {
    const TYPES: &[&str] = &[
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".path",
        ".mount",
        ".automount",
        ".swap",
        ".slice",
        ".scope",
        ".device",
    ];
    if TYPES.iter().any(|t| name.ends_with(t)) {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

pub fn services(m: &Merged, s: &ServicesSection) -> Result<ServicesSpec> {
    let list = |names: &[String]| -> Result<Vec<Located>> {
        let mut out: Vec<Located> = Vec::new();
        for n in names {
            let at = m.locate(&format!("\"{n}\""));
            let ok = !n.is_empty()
                && !n.starts_with('@')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
            if !ok {
                return Err(UserError::invalid(format!(
                    "{at}: [services]: {n:?} is not a unit name"
                ))
                .hint("write unit names as systemctl does, e.g. \"docker.service\", \"apt-daily.timer\"")
                .into());
            }
            let name = unit_name(n);
            if !out.iter().any(|l| l.name == name) {
                out.push(Located { name, at });
            }
        }
        Ok(out)
    };
    let spec = ServicesSpec {
        enable: list(&s.enable)?,
        disable: list(&s.disable)?,
        mask: list(&s.mask)?,
    };
    let lists = [
        ("enable", &spec.enable),
        ("disable", &spec.disable),
        ("mask", &spec.mask),
    ];
    for (i, (a, la)) in lists.iter().enumerate() {
        for (b, lb) in &lists[i + 1..] {
            if let Some(u) = la.iter().find(|u| lb.iter().any(|v| v.name == u.name)) {
                return Err(UserError::invalid(format!(
                    "{}: [services]: {} is in both {a} and {b}",
                    u.at, u.name
                ))
                .hint(format!(
                    "keep it in one list; to drop an inherited entry write \"-{}\" in that list",
                    u.name
                ))
                .into());
            }
        }
    }
    Ok(spec)
}

/// The host key types of `[ssh] host-keys`: all three when the merged profile does not set
/// it; at least one when it does.
pub fn ssh_host_keys(m: &Merged, s: &SshSection) -> Result<Vec<HostKeyType>> {
    let set = m
        .table
        .get("ssh")
        .and_then(|t| t.get("host-keys"))
        .is_some();
    if !set {
        return Ok(HostKeyType::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in &s.host_keys {
        let Some(t) = HostKeyType::from_name(name) else {
            return Err(UserError::invalid(format!(
                "{}: [ssh] host-keys: {name:?} is not an SSH host key type",
                m.locate(&format!("\"{name}\""))
            ))
            .hint("use \"ed25519\", \"ecdsa\" or \"rsa\"")
            .into());
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(UserError::invalid(format!(
            "{}: [ssh] host-keys names no key type",
            m.locate("host-keys")
        ))
        .hint("name at least one, e.g. host-keys = [\"ed25519\"], or leave host-keys out for all three")
        .into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519` public key (no private half exists anywhere).
    pub const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqgF6LkowDlR0Cw91FyTwbjG8n14roD7C7XW2antTHi ops@laptop";

    #[test]
    fn public_keys_with_options_and_comments_pass() {
        assert_eq!(check_public_key(ED25519), Ok(()));
        let with_opts = format!("from=\"10.0.0.0/8, 192.168.0.0/16\",no-pty {ED25519}");
        assert_eq!(check_public_key(&with_opts), Ok(()));
    }

    #[test]
    fn wrong_keys_say_what_is_wrong_without_quoting_the_key() {
        let e = check_public_key("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
            .unwrap_err();
        assert_eq!(
            e,
            "is a private key (BEGIN OPENSSH PRIVATE KEY), not a public key"
        );
        let e = check_public_key(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKqgF6LkowDlR0Cw91FyTwbjG8n14roD7C7XW2antTHi",
        )
        .unwrap_err();
        assert_eq!(e, "(ssh-rsa) has a base64 blob that is not a ssh-rsa key");
        let e = check_public_key("ssh-ed25519 not*base64").unwrap_err();
        assert_eq!(e, "(ssh-ed25519) has no base64 key after the type");
        let e = check_public_key("hunter2").unwrap_err();
        assert!(
            e.starts_with("does not look like an OpenSSH public key"),
            "{e}"
        );
    }

    #[test]
    fn base64_round_trips_and_rejects_junk() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGVsbG8").as_deref(), None);
        assert_eq!(decode_base64("a=Gk").as_deref(), None);
    }

    #[test]
    fn user_names_follow_adduser() {
        assert!(check_name("deploy").is_ok());
        assert!(check_name("ci_bot-2").is_ok());
        for bad in ["Deploy", "1x", "a.b", "", "root", &"a".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unit_names_default_to_service() {
        assert_eq!(unit_name("docker"), "docker.service");
        assert_eq!(unit_name("apt-daily.timer"), "apt-daily.timer");
        assert_eq!(unit_name("getty@tty1"), "getty@tty1.service");
    }
}
