//! `[[state]]`: filesystems that keep a server's data when its OS disk is reflashed. Each
//! is an ext4 filesystem found by its label, either a partition on the OS disk after the
//! root (`size`) or a disk of its own (`device`, a glob under /dev/), mounted at `mount`,
//! with paths of the root filesystem (`bind`) bind-mounted from it. Checked here as far as
//! the profile alone allows; the tree (`crate::tree::state`) checks what depends on the
//! image.

use anyhow::Result;
use serde::Serialize;

use super::Merged;
use super::schema::StateSection;
use crate::error::UserError;
use crate::size::MIB;

/// A checked `[[state]]`. Serialised, it is one entry of the image's
/// `/usr/lib/imagebuild/state.json`, which `flash` reads to know which partition to keep:
/// the fields are declared in key order, so that the JSON's keys are sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateSpec {
    /// Absolute paths bind-mounted from `mount`/PATH.
    pub bind: Vec<String>,
    /// The glob naming the separate device; None: a partition on the OS disk.
    pub device: Option<String>,
    /// The ext4 label, and on the OS disk the GPT partition name.
    pub label: String,
    pub mount: String,
    /// Bytes of the partition on the OS disk; None with a device.
    pub size: Option<u64>,
    /// Where the `[[state]]` is (`profiles/x.toml:12`), for errors about it.
    #[serde(skip)]
    pub at: String,
}

impl StateSpec {
    /// A partition on the OS disk (no `device`).
    pub fn on_os_disk(&self) -> bool {
        self.device.is_none()
    }
}

impl super::Recipe {
    /// A state is a partition on the OS disk (so the root must not grow over it).
    pub fn has_os_disk_state(&self) -> bool {
        self.states.iter().any(StateSpec::on_os_disk)
    }
}

/// Longest ext4 volume label.
const LABEL_MAX: usize = 16;

/// Where no state may be mounted: the image's own directories and the kernel's.
const MOUNT_FORBIDDEN: &[&str] = &["/usr", "/etc", "/boot", "/proc", "/sys", "/dev", "/run"];

/// What no bind may cover: the image's programs and the kernel's directories.
const BIND_FORBIDDEN: &[&str] = &["/usr", "/proc", "/sys", "/dev", "/run"];

/// Characters of mount and bind paths besides `/`: what unit files and the generated
/// scripts take without quoting.
const PATH_PUNCTUATION: &str = "._+@:-";

/// Characters of a device glob besides letters and digits.
const GLOB_PUNCTUATION: &str = "/._+@:,=-*?[]!";

pub fn states(m: &Merged, sections: &[StateSection]) -> Result<Vec<StateSpec>> {
    let mut out: Vec<StateSpec> = Vec::new();
    for s in sections {
        let spec = state(m, s)?;
        check_against(&out, &spec)?;
        out.push(spec);
    }
    Ok(out)
}

/// The error about `[[state]] label` at `at`.
fn bad(at: &str, label: &str, msg: &str, hint: impl Into<String>) -> anyhow::Error {
    UserError::invalid(format!("{at}: [[state]] {label}: {msg}"))
        .hint(hint)
        .into()
}

/// `"text"` located in the profile: the line where the string is written.
fn at_string(m: &Merged, text: &str) -> String {
    m.locate(&format!("\"{text}\""))
}

fn state(m: &Merged, s: &StateSection) -> Result<StateSpec> {
    let at = at_string(m, &s.label);
    check_label(&s.label).map_err(|e| {
        UserError::invalid(format!("{at}: [[state]] label {:?} {e}", s.label))
            .hint("an ext4 label: 1 to 16 letters, digits, `_` and `-`, e.g. \"srv-data\"")
    })?;
    let label = s.label.as_str();
    check_path(&s.mount, "mount", MOUNT_FORBIDDEN)
        .map_err(|(msg, hint)| bad(&at_string(m, &s.mount), label, &msg, hint))?;
    if let Some(d) = &s.device {
        check_device(d).map_err(|(msg, hint)| bad(&at_string(m, d), label, &msg, hint))?;
    }
    let size = match (&s.device, &s.size) {
        (None, None) => {
            return Err(bad(
                &at,
                label,
                "has neither `device` nor `size`",
                "add size = \"20G\" for a partition on the OS disk after the root, or device = \"/dev/disk/by-id/...\" for a disk of its own",
            ));
        }
        (Some(_), Some(size)) => {
            return Err(bad(
                &at_string(m, size),
                label,
                "sets both `device` and `size`",
                "a separate device is used whole and `size` is for a partition on the OS disk: remove one",
            ));
        }
        (Some(_), None) => None,
        (None, Some(size)) => Some(partition_size(m, label, size)?),
    };
    let mut bind: Vec<String> = Vec::new();
    for b in &s.bind {
        let b_at = at_string(m, b);
        check_path(b, "bind", BIND_FORBIDDEN)
            .map_err(|(msg, hint)| bad(&b_at, label, &msg, hint))?;
        if bind.contains(b) {
            return Err(bad(
                &b_at,
                label,
                &format!("bind {b:?} is listed twice"),
                "list each path once",
            ));
        }
        bind.push(b.clone());
    }
    Ok(StateSpec {
        bind,
        device: s.device.clone(),
        label: s.label.clone(),
        mount: s.mount.clone(),
        size,
        at,
    })
}

/// An ext4 label imagebuild also uses in unit and partition names.
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() || label.len() > LABEL_MAX {
        return Err("is not 1 to 16 characters long");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may hold only letters, digits, `_` and `-`");
    }
    Ok(())
}

/// `path` (the value of `key`) is absolute, normalised, not `/`, outside `forbidden`, and
/// made of characters units take as they are. Err: the message and the hint.
fn check_path(path: &str, key: &str, forbidden: &[&str]) -> Result<(), (String, String)> {
    if !path.starts_with('/') {
        return Err((
            format!("{key} {path:?} is not an absolute path"),
            "write it from the root, e.g. \"/srv/data\"".into(),
        ));
    }
    let cleaned = format!("/{}", crate::tree::clean(path));
    if path.split('/').any(|c| c == "..") || cleaned != path {
        return Err((
            format!("{key} {path:?} is not a normalised path"),
            "write it without `//`, `.`, `..` or a trailing `/`, e.g. \"/srv/data\"".into(),
        ));
    }
    if path == "/" {
        return Err((
            format!("{key} {path:?} is the root directory"),
            "name a directory of its own, e.g. \"/srv\"".into(),
        ));
    }
    if let Some(dir) = forbidden.iter().find(|d| under(path, d)) {
        return Err((
            format!("{key} {path:?} is under {dir}"),
            format!("{key} paths must be outside {}", forbidden.join(", ")),
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '/' && !PATH_PUNCTUATION.contains(*c))
    {
        return Err((
            format!("{key} {path:?} holds {c:?}"),
            format!("use letters, digits, `/` and `{PATH_PUNCTUATION}` in paths"),
        ));
    }
    Ok(())
}

fn check_device(device: &str) -> Result<(), (String, String)> {
    if !device.starts_with("/dev/") {
        return Err((
            format!("device {device:?} is not under /dev/"),
            "name the disk by a stable path, e.g. \"/dev/disk/by-id/scsi-0HC_Volume_*\"".into(),
        ));
    }
    if let Some(c) = device
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !GLOB_PUNCTUATION.contains(*c))
    {
        return Err((
            format!("device {device:?} holds {c:?}"),
            format!("use letters, digits and `{GLOB_PUNCTUATION}` in a device glob"),
        ));
    }
    Ok(())
}

/// The size of a partition on the OS disk: whole MiB, so that the partition systemd-repart
/// makes is exactly this size (it rounds to 4 KiB).
fn partition_size(m: &Merged, label: &str, size: &str) -> Result<u64> {
    let bytes = super::parse_size(m, size)?.0;
    if bytes == 0 || bytes % MIB != 0 {
        return Err(bad(
            &at_string(m, size),
            label,
            &format!("size {size:?} is not a whole number of MiB"),
            "use a size such as \"256M\" or \"20G\"",
        ));
    }
    Ok(bytes)
}

/// `path` is `dir` or below it.
fn under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What `new` must not share with the states before it: its label, its mount (or one
/// inside the other), its binds; and only one state may be on the OS disk.
fn check_against(before: &[StateSpec], new: &StateSpec) -> Result<()> {
    let (at, label) = (new.at.as_str(), new.label.as_str());
    if before.iter().any(|s| s.label == new.label) {
        return Err(bad(
            at,
            label,
            "is defined twice (a profile and one it extends?)",
            "give each [[state]] its own label",
        ));
    }
    if new.on_os_disk()
        && let Some(first) = before.iter().find(|s| s.on_os_disk())
    {
        return Err(bad(
            at,
            label,
            &format!(
                "is a second state on the OS disk ({} is the first)",
                first.label
            ),
            "imagebuild makes one state partition on the OS disk: give this one a `device`, or keep its paths on the first with `bind`",
        ));
    }
    for s in before {
        check_mounts(at, new, s)?;
    }
    let all: Vec<&StateSpec> = before.iter().chain(std::iter::once(new)).collect();
    for b in &new.bind {
        check_bind(at, label, b, &all)?;
    }
    // Binds of states before this one must not hold or be inside this one's mount.
    for s in before {
        for b in &s.bind {
            check_bind_and_mount(&s.at, &s.label, b, new)?;
        }
    }
    Ok(())
}

fn check_mounts(at: &str, new: &StateSpec, old: &StateSpec) -> Result<()> {
    let (label, m) = (new.label.as_str(), new.mount.as_str());
    if m == old.mount {
        return Err(bad(
            at,
            label,
            &format!("mount {m:?} is also the mount of [[state]] {}", old.label),
            "give each state its own directory",
        ));
    }
    if under(m, &old.mount) || under(&old.mount, m) {
        return Err(bad(
            at,
            label,
            &format!(
                "mount {m:?} and {}, the mount of [[state]] {}, are one inside the other",
                old.mount, old.label
            ),
            "mount each state on a directory of its own, beside the others (e.g. /srv/a and /srv/b)",
        ));
    }
    Ok(())
}

/// Bind `b` of `[[state]] label` against every state (its own included): not bound twice,
/// not inside another bind, not inside or above a state's mount.
fn check_bind(at: &str, label: &str, b: &str, all: &[&StateSpec]) -> Result<()> {
    for s in all {
        for other in s.bind.iter().filter(|o| !(s.label == label && *o == b)) {
            if other == b {
                return Err(bad(
                    at,
                    label,
                    &format!("bind {b:?} is also a bind of [[state]] {}", s.label),
                    "bind each path from one state only",
                ));
            }
            if under(b, other) || under(other, b) {
                return Err(bad(
                    at,
                    label,
                    &format!("binds {b:?} and {other:?} are one inside the other"),
                    "keep the outer one: what is below it is on the state already",
                ));
            }
        }
        check_bind_and_mount(at, label, b, s)?;
    }
    Ok(())
}

fn check_bind_and_mount(at: &str, label: &str, b: &str, s: &StateSpec) -> Result<()> {
    if under(b, &s.mount) {
        return Err(bad(
            at,
            label,
            &format!(
                "bind {b:?} is inside {}, the mount of [[state]] {}",
                s.mount, s.label
            ),
            "it is on that state already: remove it from `bind`",
        ));
    }
    if under(&s.mount, b) {
        return Err(bad(
            at,
            label,
            &format!(
                "bind {b:?} holds {}, the mount of [[state]] {}",
                s.mount, s.label
            ),
            "bind a directory beside the mount, not above it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_ext4_labels() {
        assert!(check_label("srv-data").is_ok());
        assert!(check_label("A_1-b").is_ok());
        assert!(check_label(&"a".repeat(16)).is_ok());
        for bad in ["", &"a".repeat(17), "srv data", "srv/data", "dätä"] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn under_means_the_directory_or_below() {
        assert!(under("/usr", "/usr"));
        assert!(under("/usr/local", "/usr"));
        assert!(!under("/usrdata", "/usr"));
        assert!(!under("/srv", "/srv/a"));
    }
}
