//! Recognising secrets that must not be baked into an image: private keys (PEM, OpenSSH,
//! PGP, PuTTY, ssh.com) and password hashes (crypt(3) strings, shadow-like lines).
//! Pure functions on bytes, shared by the overlay check and the `ssh-keys` check.

use memchr::memmem;

/// How much of a file is looked at. Keys and shadow lines are near the top of the files
/// that hold them; a certificate bundle with a key after 256 KiB goes unseen.
pub const SCAN_LIMIT: usize = 256 * 1024;

/// A file whose first this many bytes hold a NUL is binary and not looked at.
const BINARY_PROBE: usize = 8 * 1024;

/// What was found, and on which (1-based) line. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub what: String,
}

/// The first secret in `text` (at most [`SCAN_LIMIT`] bytes are read), if any.
pub fn find(text: &[u8]) -> Option<Finding> {
    let text = &text[..text.len().min(SCAN_LIMIT)];
    if memchr::memchr(0, &text[..text.len().min(BINARY_PROBE)]).is_some() {
        return None;
    }
    let mut found = [private_key(text), password_hash(text)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    found.sort_by_key(|f| f.line);
    found.into_iter().next()
}

/// A private key in `text`, if any: what kind it is.
pub fn private_key(text: &[u8]) -> Option<Finding> {
    let mut first: Option<Finding> = None;
    let mut note = |at: usize, what: String| {
        if first.as_ref().is_none_or(|f| line_of(text, at) < f.line) {
            first = Some(Finding {
                line: line_of(text, at),
                what,
            });
        }
    };
    for at in memmem::find_iter(text, b"PRIVATE KEY") {
        let (start, end) = line_bounds(text, at);
        let line = String::from_utf8_lossy(&text[start..end]);
        if let Some(b) = line.find("BEGIN ") {
            let from = start + b + 6;
            let mut to = at + "PRIVATE KEY".len();
            if text[to..].starts_with(b" BLOCK") {
                to += " BLOCK".len();
            }
            if from <= at {
                let label = String::from_utf8_lossy(&text[from..to]);
                note(at, format!("a private key (BEGIN {label})"));
                break;
            }
        }
    }
    for at in memmem::find_iter(text, b"PuTTY-User-Key-File-") {
        if at == 0 || text[at - 1] == b'\n' {
            note(at, "a private key (PuTTY)".to_string());
            break;
        }
    }
    first
}

/// A password hash in `text`, if any: a crypt(3) string as a token anywhere, or a
/// non-empty, non-locked password field in a shadow- or passwd-like line.
pub fn password_hash(text: &[u8]) -> Option<Finding> {
    let mut offset = 0;
    for line in text.split(|b| *b == b'\n') {
        if let Some(what) = hash_in_line(line) {
            return Some(Finding {
                line: line_of(text, offset),
                what,
            });
        }
        offset += line.len() + 1;
    }
    None
}

fn hash_in_line(line: &[u8]) -> Option<String> {
    if let Some(what) = crypt_token(line) {
        return Some(what);
    }
    if memchr::memchr_iter(b':', line).count() >= 6 {
        return account_line(line);
    }
    None
}

/// Crypt(3) prefixes and their names.
const CRYPT_IDS: &[(&str, &str)] = &[
    ("1", "MD5 crypt"),
    ("apr1", "Apache MD5 crypt"),
    ("2a", "bcrypt"),
    ("2b", "bcrypt"),
    ("2x", "bcrypt"),
    ("2y", "bcrypt"),
    ("5", "SHA-256 crypt"),
    ("6", "SHA-512 crypt"),
    ("7", "scrypt"),
    ("y", "yescrypt"),
    ("gy", "gost-yescrypt"),
    ("sha1", "SHA-1 crypt"),
    ("md5", "Sun MD5 crypt"),
    ("argon2i", "argon2"),
    ("argon2d", "argon2"),
    ("argon2id", "argon2"),
    ("pbkdf2-sha256", "PBKDF2"),
    ("pbkdf2-sha512", "PBKDF2"),
];

fn is_crypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"./$=,+-/".contains(&b)
}

/// A `$id$...$hash` token: a known id, at least two more fields, the last one 20 or more
/// characters of the crypt alphabet. Shell and Perl variables (`$1$2`) are too short.
fn crypt_token(line: &[u8]) -> Option<String> {
    for at in memchr::memchr_iter(b'$', line) {
        if at > 0 && (is_crypt_char(line[at - 1]) || line[at - 1] == b'\\') {
            continue;
        }
        // Cheap test first: `$ID$` with a known ID.
        let rest = &line[at + 1..];
        let Some(n) = rest.iter().take(16).position(|b| *b == b'$') else {
            continue;
        };
        let Some((id, name)) = CRYPT_IDS.iter().find(|(id, _)| id.as_bytes() == &rest[..n]) else {
            continue;
        };
        let end = rest
            .iter()
            .position(|b| !is_crypt_char(*b))
            .unwrap_or(rest.len());
        let fields: Vec<&[u8]> = rest[..end].split(|b| *b == b'$').collect();
        let last = fields.last().copied().unwrap_or_default();
        let hashy = last.len() >= 20
            && last
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"./+".contains(b));
        if fields.len() >= 3 && hashy {
            return Some(format!("a password hash (${id}$, {name})"));
        }
    }
    None
}

/// `name:PASSWORD:...` with 9 fields (shadow) or 7 (passwd), numeric fields where those
/// files have them, and a password that is neither empty nor a lock or placeholder.
fn account_line(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let f: Vec<&str> = line.split(':').collect();
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let name_ok = f[0]
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && f[0]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b));
    let kind = match f.len() {
        9 if f[2..7].iter().all(|s| numeric(s)) => "shadow",
        7 if !f[2].is_empty() && numeric(f[2]) && numeric(f[3]) => "passwd",
        _ => return None,
    };
    let pw = f[1].trim_start_matches('!');
    let placeholder = matches!(pw, "" | "*" | "x" | "*LK*" | "*NP*");
    if !name_ok || placeholder {
        return None;
    }
    Some(format!("a password hash (in a {kind}-like line)"))
}

fn line_of(text: &[u8], at: usize) -> usize {
    memchr::memchr_iter(b'\n', &text[..at]).count() + 1
}

fn line_bounds(text: &[u8], at: usize) -> (usize, usize) {
    let start = memchr::memrchr(b'\n', &text[..at]).map_or(0, |i| i + 1);
    let end = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(text: &str) -> Option<(usize, String)> {
        find(text.as_bytes()).map(|f| (f.line, f.what))
    }

    #[test]
    fn private_keys_of_every_common_format() {
        for (text, label) in [
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
                "BEGIN RSA PRIVATE KEY",
            ),
            ("-----BEGIN EC PRIVATE KEY-----\n", "BEGIN EC PRIVATE KEY"),
            ("-----BEGIN DSA PRIVATE KEY-----\n", "BEGIN DSA PRIVATE KEY"),
            ("-----BEGIN PRIVATE KEY-----\n", "BEGIN PRIVATE KEY"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
                "BEGIN ENCRYPTED PRIVATE KEY",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl",
                "BEGIN OPENSSH PRIVATE KEY",
            ),
            (
                "-----BEGIN PGP PRIVATE KEY BLOCK-----\n",
                "BEGIN PGP PRIVATE KEY BLOCK",
            ),
            (
                "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\n",
                "BEGIN SSH2 ENCRYPTED PRIVATE KEY",
            ),
        ] {
            let text = format!("# config\n\n{text}");
            assert_eq!(
                what(&text),
                Some((3, format!("a private key ({label})"))),
                "{text}"
            );
        }
        assert_eq!(
            what("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"),
            Some((1, "a private key (PuTTY)".into()))
        );
    }

    #[test]
    fn public_keys_and_certificates_are_not_secrets() {
        for text in [
            "-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nMIIB\n",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG ops@laptop\n",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n",
            "# the PRIVATE KEY goes in /etc/app/key.pem\n",
        ] {
            assert_eq!(what(text), None, "{text}");
        }
    }

    #[test]
    fn crypt_hashes_anywhere_as_tokens() {
        let cases = [
            ("$6$rounds=5000$saltsalt$", "$6$, SHA-512 crypt"),
            ("$5$saltsalt$", "$5$, SHA-256 crypt"),
            ("$1$saltsalt$", "$1$, MD5 crypt"),
            ("$y$j9T$saltsaltsaltsalt$", "$y$, yescrypt"),
            ("$2b$12$", "$2b$, bcrypt"),
            (
                "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$",
                "$argon2id$, argon2",
            ),
        ];
        for (prefix, name) in cases {
            let text = format!("[db]\npassword_hash = \"{prefix}{}\"\n", "A".repeat(43));
            assert_eq!(
                what(&text),
                Some((2, format!("a password hash ({name})"))),
                "{text}"
            );
        }
    }

    #[test]
    fn shell_and_perl_dollars_are_not_hashes() {
        for text in [
            "echo \"$1$2$3\"\n",
            "my $x = $6;\n",
            "PS1='\\$ '\n",
            "price: $5$ per month\n",
            "sed 's/$1$abcdefghijklmnopqrstuvwxyz/x/'\n",
        ] {
            assert_eq!(what(text), None, "{text}");
        }
    }

    #[test]
    fn shadow_and_passwd_lines_with_a_password() {
        assert_eq!(
            what("root:*:19000:0:99999:7:::\nbob:ab01FAX.bQRSU:19000:0:99999:7:::\n"),
            Some((2, "a password hash (in a shadow-like line)".into()))
        );
        assert_eq!(
            what("bob:!ab01FAX.bQRSU:19000:0:99999:7:::\n"),
            Some((1, "a password hash (in a shadow-like line)".into())),
            "a locked hash is still a hash"
        );
        assert_eq!(
            what("bob:ab01FAX.bQRSU:1000:1000::/home/bob:/bin/sh\n"),
            Some((1, "a password hash (in a passwd-like line)".into()))
        );
        for text in [
            "root:*:19000:0:99999:7:::\ndaemon:!*:19000::::::\nx:!:1::::::\n",
            "root:x:0:0:root:/root:/bin/bash\n",
            "12:30:00:1:2:3:4\n",
        ] {
            assert_eq!(what(text), None, "{text}");
        }
    }

    #[test]
    fn binary_files_are_skipped_and_only_the_head_is_read() {
        let mut bin = b"\x7fELF\0\0".to_vec();
        bin.extend_from_slice(b"-----BEGIN RSA PRIVATE KEY-----");
        assert_eq!(find(&bin), None);
        let mut big = vec![b'a'; SCAN_LIMIT];
        big.extend_from_slice(b"\n-----BEGIN RSA PRIVATE KEY-----\n");
        assert_eq!(find(&big), None);
    }
}
