//! Which Debian mirror to use when a profile names none: the one this host's apt is
//! configured with (deb822 `.sources` files or one-line `sources.list`).

use std::path::Path;

use crate::error::UserError;

/// The first non-security archive URI of the host's apt configuration, if the host is Debian.
pub fn host_mirror() -> Result<String, UserError> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let is_debian = os.lines().any(|l| l == "ID=debian" || l == "ID=\"debian\"");
    let found = if is_debian {
        find_in(Path::new("/etc/apt"))
    } else {
        None
    };
    found.ok_or_else(|| {
        UserError::invalid("no Debian mirror is configured on this host")
            .hint("set [base] mirror = \"URI\" in the profile (a Debian mirror or snapshot)")
    })
}

fn find_in(etc_apt: &Path) -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let ext = f
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default()
                .to_string();
            if ext == "sources" || ext == "list" {
                texts.push((ext, std::fs::read_to_string(&f).unwrap_or_default()));
            }
        }
    }
    texts.insert(
        0,
        (
            "list".into(),
            std::fs::read_to_string(etc_apt.join("sources.list")).unwrap_or_default(),
        ),
    );
    texts.iter().find_map(|(ext, t)| {
        if ext == "sources" {
            from_deb822(t)
        } else {
            from_one_line(t)
        }
    })
}

fn usable(uri: &str) -> bool {
    !uri.contains("security")
        && (uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file:"))
}

fn from_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let enabled = !stanza.lines().any(|l| l.trim() == "Enabled: no");
        let is_deb = stanza
            .lines()
            .any(|l| l.starts_with("Types:") && l.split_whitespace().any(|t| t == "deb"));
        let uri = stanza
            .lines()
            .find_map(|l| l.strip_prefix("URIs:"))?
            .split_whitespace()
            .next()?
            .to_string();
        (enabled && is_deb && usable(&uri)).then_some(uri)
    })
}

fn from_one_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
        (words.next()? == "deb").then_some(())?;
        let uri = words.next()?.to_string();
        usable(&uri).then_some(uri)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_skipping_security() {
        let t = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x-security\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: x\n";
        assert_eq!(from_deb822(t).unwrap(), "http://mirror.example/debian");
    }

    #[test]
    fn reads_one_line_format_with_options() {
        let t = "# c\ndeb-src http://a.example/x y main\ndeb [arch=amd64] http://b.example/debian y main\n";
        assert_eq!(from_one_line(t).unwrap(), "http://b.example/debian");
    }
}
