//! Container image references: `[registry/]repository[:tag][@sha256:HEX]`, parsed the way
//! docker does (the first component is a registry when it has a `.` or `:` or is
//! `localhost`).

use std::fmt;

/// A sha256 content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Digest, String> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest `{text}` is not a sha256 digest"))?;
        Digest::from_hex(hex)
            .ok_or_else(|| format!("digest `{text}` needs 64 lowercase hex digits"))
    }

    pub fn from_hex(hex: &str) -> Option<Digest> {
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Digest(hex.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(crate::cache::sha256(bytes))
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, if the reference names one.
    pub registry: Option<String>,
    /// The repository path on the registry (`team/app`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        if text.contains('$') {
            return Err(format!(
                "image `{text}` uses a variable; imagebuild bakes images at build time and needs the reference written out"
            ));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (text, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|e| format!("image `{text}`: {e}"))?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(format!(
                "image `{text}`: `{repository}` is not a repository name (lowercase letters, digits, `._-`, `/`)"
            ));
        }
        Ok(ImageRef {
            registry,
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// `registry/repository` (or `repository`), without tag or digest.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// `name[:tag]@digest` with the given digest.
    pub fn pinned(&self, digest: &Digest) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}@{digest}", self.name()),
            None => format!("{}@{digest}", self.name()),
        }
    }

    /// The local tag the baked image gets in the machine's docker: docker load keeps no
    /// repository digests, so the tag carries the digest.
    pub fn local_tag(&self, digest: &Digest) -> String {
        format!("{}:{}", self.name(), local_tag_of(digest))
    }
}

/// `imagebuild-sha256-HEX`: 82 characters, within docker's tag rule `[\w][\w.-]{0,127}`.
pub fn local_tag_of(digest: &Digest) -> String {
    format!("imagebuild-sha256-{}", digest.hex())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{tag}` is not a tag"))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_port_tag_and_digest() {
        let hex = "ab".repeat(32);
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/app:1.2@sha256:{hex}")).unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.digest.as_ref().unwrap().hex(), hex);
        assert_eq!(
            r.to_string(),
            format!("127.0.0.1:5000/team/app:1.2@sha256:{hex}")
        );
        let short = ImageRef::parse("app").unwrap();
        assert_eq!(
            (short.registry, short.tag, short.digest),
            (None, None, None)
        );
        let port_only = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!(port_only.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(port_only.tag, None);
        let d = Digest::from_hex(&hex).unwrap();
        let tag = r.local_tag(&d);
        assert!(tag.ends_with(&format!(":imagebuild-sha256-{hex}")));
        assert!(local_tag_of(&d).len() <= 128);
    }

    #[test]
    fn refuses_bad_references() {
        for (text, want) in [
            ("registry.example/App:1", "not a repository name"),
            ("registry.example/app@sha256:abc", "64 lowercase hex"),
            ("registry.example/app@md5:abc", "not a sha256 digest"),
            ("registry.example/app:-x", "not a tag"),
            ("registry.example/app:${TAG}", "uses a variable"),
        ] {
            let e = ImageRef::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
