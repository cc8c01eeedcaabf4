//! `imagebuild diff`: what changed between two images (packages, files, partitions, boot).
//!
//! It reads as little as it can: both root filesystems are walked for their directory
//! entries and inodes first. A regular file is read only when it is on both sides with the
//! same size (a different size already is a content change), then once per image, to hash
//! it. The ESP is read once per image; its files and UKI sections are compared in memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use ext4_view::Ext4;
use serde::Serialize;
use uuid::Uuid;

use super::Image;
use super::esp::{self, EspEntry, Uki};
use super::rootfs::{self, Contents, Entry};
use crate::disk::Region;
use crate::fs::fat::EspFile;
use crate::size::Bytes;
use crate::tree::Package;

/// Hex digits of a sha256 shown in the human output.
const SHORT_SHA: usize = 12;

/// Everything that differs; empty when the images hold the same things.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub packages: Vec<PackageChange>,
    pub files: Vec<FileChange>,
    pub disk_guid: Option<Changed<Uuid>>,
    pub partitions: Vec<PartitionChange>,
    pub boot: Vec<BootChange>,
}

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed<T> {
    pub old: T,
    pub new: T,
}

/// A package added (`old` is none), removed (`new` is none), or at another version or
/// architecture. Packages pair up by name, and by architecture too when a name is
/// installed for more than one (multiarch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub old: Option<Installed>,
    pub new: Option<Installed>,
}

/// A package's version and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub version: String,
    pub arch: String,
}

impl Installed {
    fn of(p: &Package) -> Installed {
        Installed {
            version: p.version.clone(),
            arch: p.arch.clone(),
        }
    }
}

/// What differs about an entry that is on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aspect {
    Type,
    Content,
    Target,
    Mode,
    Owner,
}

/// A rootfs entry added (`old` is none), removed (`new` is none) or changed (`changed`
/// says how). `sha256` is set on the entries of regular files that were hashed: those
/// whose sizes matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    pub changed: Vec<Aspect>,
    pub old: Option<Entry>,
    pub new: Option<Entry>,
}

/// A partition (matched by name) added, removed or changed (`changed` names the fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionChange {
    pub name: String,
    pub changed: Vec<&'static str>,
    pub old: Option<Region>,
    pub new: Option<Region>,
}

/// A change on the ESP. `item` is "file" (the whole file: values are sha256s), "kernel"
/// (the kernel version of `.linux`) or a UKI section: `.cmdline` and `.osrel` (values are
/// the text) or any other section (values are sha256s). A missing value: absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootChange {
    pub path: String,
    pub item: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// One image, opened for comparing.
struct Side {
    esp: Vec<EspFile>,
    fs: Ext4,
    image: Image,
}

impl Side {
    fn open(path: &Path) -> Result<Side> {
        let image = Image::open(path)?;
        let esp = image
            .esp_files()
            .with_context(|| format!("reading the ESP of {}", path.display()))?;
        let fs = image
            .root()
            .with_context(|| format!("reading the root filesystem of {}", path.display()))?;
        Ok(Side { esp, fs, image })
    }
}

/// Compares image `old` with image `new`.
pub fn diff(old: &Path, new: &Path) -> Result<Diff> {
    let a = Side::open(old)?;
    let b = Side::open(new)?;
    let walk = |s: &Side, p: &Path| {
        rootfs::walk(&s.fs)
            .with_context(|| format!("reading the root filesystem of {}", p.display()))
    };
    let (entries_a, entries_b) = (walk(&a, old)?, walk(&b, new)?);
    let limit = |s: &Side| s.image.root_region().map(|r| r.size);
    let (mut ca, mut cb) = (
        Contents::new(&a.fs).limit(limit(&a)?),
        Contents::new(&b.fs).limit(limit(&b)?),
    );
    let packages = diff_packages(
        &rootfs::packages(&entries_a, &mut ca)?,
        &rootfs::packages(&entries_b, &mut cb)?,
    );
    let files = diff_files(&entries_a, &ca, &entries_b, &cb)?;
    let disk_guid = (a.image.disk_guid != b.image.disk_guid).then_some(Changed {
        old: a.image.disk_guid,
        new: b.image.disk_guid,
    });
    let boot = diff_boot(
        &esp::entries(&a.esp),
        &esp::ukis(&a.esp)?,
        &esp::entries(&b.esp),
        &esp::ukis(&b.esp)?,
    );
    Ok(Diff {
        packages,
        files,
        disk_guid,
        partitions: diff_partitions(&a.image.partitions, &b.image.partitions),
        boot,
    })
}

/// Pairs up the items of two lists by key, in key order.
fn pair_up<'a, T, K: Ord>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<(Option<&'a T>, Option<&'a T>)> {
    let mut pairs: BTreeMap<K, (Option<&T>, Option<&T>)> = BTreeMap::new();
    for o in old {
        pairs.entry(key(o)).or_default().0 = Some(o);
    }
    for n in new {
        pairs.entry(key(n)).or_default().1 = Some(n);
    }
    pairs.into_values().collect()
}

fn diff_packages(old: &[Package], new: &[Package]) -> Vec<PackageChange> {
    let multiarch = |name: &str| {
        let arches = |side: &[Package]| side.iter().filter(|p| p.name == name).count();
        arches(old) > 1 || arches(new) > 1
    };
    pair_up(old, new, |p| {
        let arch = if multiarch(&p.name) {
            p.arch.as_str()
        } else {
            ""
        };
        (p.name.as_str(), arch)
    })
    .into_iter()
    .filter(|(o, n)| o.map(Installed::of) != n.map(Installed::of))
    .filter_map(|(o, n)| {
        Some(PackageChange {
            name: o.or(n)?.name.clone(),
            old: o.map(Installed::of),
            new: n.map(Installed::of),
        })
    })
    .collect()
}

fn diff_files(
    old: &[Entry],
    ca: &Contents,
    new: &[Entry],
    cb: &Contents,
) -> Result<Vec<FileChange>> {
    let mut out = Vec::new();
    for pair in pair_up(old, new, Entry::raw_path) {
        let change = match pair {
            (Some(o), Some(n)) => compare(o, ca, n, cb)?,
            (o, n) => o.or(n).map(|e| FileChange {
                path: e.path.clone(),
                changed: Vec::new(),
                old: o.cloned(),
                new: n.cloned(),
            }),
        };
        out.extend(change);
    }
    Ok(out)
}

/// An entry on both sides: type, then content (size, else sha256) or symlink target,
/// then mode and owner. Reads the file only when the sizes match.
fn compare(o: &Entry, ca: &Contents, n: &Entry, cb: &Contents) -> Result<Option<FileChange>> {
    let mut changed = Vec::new();
    let mut hashes = None;
    if o.kind != n.kind {
        changed.push(Aspect::Type);
    } else if o.is_file() {
        if o.size != n.size {
            changed.push(Aspect::Content);
        } else if o.size > 0 {
            let h = (ca.sha256(o)?, cb.sha256(n)?);
            if h.0 != h.1 {
                changed.push(Aspect::Content);
            }
            hashes = Some(h);
        }
    } else if o.target != n.target {
        changed.push(Aspect::Target);
    }
    if o.kind == n.kind && o.mode != n.mode {
        changed.push(Aspect::Mode);
    }
    if o.kind == n.kind && (o.uid, o.gid) != (n.uid, n.gid) {
        changed.push(Aspect::Owner);
    }
    if changed.is_empty() {
        return Ok(None);
    }
    let (mut o, mut n) = (o.clone(), n.clone());
    if let Some((ho, hn)) = hashes {
        (o.sha256, n.sha256) = (Some(ho), Some(hn));
    }
    Ok(Some(FileChange {
        path: n.path.clone(),
        changed,
        old: Some(o),
        new: Some(n),
    }))
}

fn diff_partitions(old: &[Region], new: &[Region]) -> Vec<PartitionChange> {
    let mut out = Vec::new();
    for (o, n) in pair_up(old, new, |r| r.name.as_str()) {
        let changed = match (o, n) {
            (Some(o), Some(n)) => [
                ("type", o.type_guid != n.type_guid),
                ("uuid", o.uuid != n.uuid),
                ("start", o.start != n.start),
                ("size", o.size != n.size),
            ]
            .into_iter()
            .filter_map(|(field, differs)| differs.then_some(field))
            .collect(),
            _ => Vec::new(),
        };
        if o.is_some() && n.is_some() && changed.is_empty() {
            continue;
        }
        if let Some(r) = o.or(n) {
            out.push(PartitionChange {
                name: r.name.clone(),
                changed,
                old: o.cloned(),
                new: n.cloned(),
            });
        }
    }
    out
}

fn diff_boot(
    old: &[EspEntry],
    old_ukis: &[Uki],
    new: &[EspEntry],
    new_ukis: &[Uki],
) -> Vec<BootChange> {
    let uki = |ukis: &'_ [Uki], path: &str| ukis.iter().find(|u| u.path == path).cloned();
    let mut out = Vec::new();
    for (o, n) in pair_up(old, new, |e| e.path.as_str()) {
        let Some(path) = o.or(n).map(|e| e.path.clone()) else {
            continue;
        };
        let (sha_o, sha_n) = (o.map(|e| e.sha256.clone()), n.map(|e| e.sha256.clone()));
        if sha_o == sha_n {
            continue;
        }
        let mut changes = match (uki(old_ukis, &path), uki(new_ukis, &path)) {
            (Some(uo), Some(un)) => diff_uki(&uo, &un),
            _ => Vec::new(),
        };
        if changes.is_empty() {
            changes.push(("file".to_string(), sha_o, sha_n));
        }
        out.extend(changes.into_iter().map(|(item, old, new)| BootChange {
            path: path.clone(),
            item,
            old,
            new,
        }));
    }
    out
}

type ItemChange = (String, Option<String>, Option<String>);

/// Section by section (text for `.cmdline` and `.osrel`, else sha256), then the kernel
/// version.
fn diff_uki(o: &Uki, n: &Uki) -> Vec<ItemChange> {
    let value = |u: &Uki, name: &str| -> Option<String> {
        match name {
            ".cmdline" => u.cmdline.clone(),
            ".osrel" => u.osrel.clone(),
            _ => u.section(name).map(|s| s.sha256.clone()),
        }
    };
    let mut names: Vec<&str> = n.sections.iter().map(|s| s.name.as_str()).collect();
    for s in &o.sections {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let mut out: Vec<ItemChange> = names
        .into_iter()
        .filter(|name| o.section(name).map(|s| &s.sha256) != n.section(name).map(|s| &s.sha256))
        .map(|name| (name.to_string(), value(o, name), value(n, name)))
        .collect();
    if o.kernel != n.kernel {
        out.push(("kernel".to_string(), o.kernel.clone(), n.kernel.clone()));
    }
    out
}

impl Diff {
    /// Whether the images hold the same things.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.files.is_empty()
            && self.disk_guid.is_none()
            && self.partitions.is_empty()
            && self.boot.is_empty()
    }

    /// The human listing: nothing at all when the images are the same.
    pub fn human(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_human(&mut s);
        s
    }

    fn write_human(&self, s: &mut String) -> std::fmt::Result {
        if !self.packages.is_empty() {
            writeln!(s, "packages")?;
            for p in &self.packages {
                writeln!(s, "  {}", package_line(p))?;
            }
        }
        if !self.files.is_empty() {
            writeln!(s, "files")?;
            for f in &self.files {
                writeln!(s, "  {}", file_line(f))?;
            }
        }
        if self.disk_guid.is_some() || !self.partitions.is_empty() {
            writeln!(s, "partitions")?;
            if let Some(g) = &self.disk_guid {
                writeln!(s, "  ~ disk guid {} -> {}", g.old, g.new)?;
            }
            for p in &self.partitions {
                writeln!(s, "  {}", partition_line(p))?;
            }
        }
        if !self.boot.is_empty() {
            writeln!(s, "boot")?;
            for b in &self.boot {
                writeln!(s, "  {}", boot_line(b))?;
            }
        }
        Ok(())
    }
}

fn package_line(p: &PackageChange) -> String {
    match (&p.old, &p.new) {
        (Some(o), Some(n)) if o.arch == n.arch => {
            format!("~ {} {} -> {}", p.name, o.version, n.version)
        }
        (Some(o), Some(n)) => format!(
            "~ {} {} ({}) -> {} ({})",
            p.name, o.version, o.arch, n.version, n.arch
        ),
        (None, Some(n)) => format!("+ {} {} ({})", p.name, n.version, n.arch),
        (Some(o), None) => format!("- {} {} ({})", p.name, o.version, o.arch),
        (None, None) => format!("? {}", p.name),
    }
}

fn file_line(f: &FileChange) -> String {
    let (o, n) = match (&f.old, &f.new) {
        (Some(o), Some(n)) => (o, n),
        (None, Some(n)) => return format!("+ {}  ({})", f.path, describe(n)),
        (Some(o), None) => return format!("- {}  ({})", f.path, describe(o)),
        (None, None) => return format!("? {}", f.path),
    };
    let parts: Vec<String> = f
        .changed
        .iter()
        .map(|a| match a {
            Aspect::Type => format!("type {} -> {}", o.kind, n.kind),
            Aspect::Content => match (&o.sha256, &n.sha256) {
                (Some(ho), Some(hn)) => format!("content sha256 {} -> {}", short(ho), short(hn)),
                _ => format!("content {} -> {} bytes", o.size, n.size),
            },
            Aspect::Target => format!(
                "target {} -> {}",
                o.target.as_deref().unwrap_or(""),
                n.target.as_deref().unwrap_or("")
            ),
            Aspect::Mode => format!("mode {} -> {}", o.mode, n.mode),
            Aspect::Owner => format!("owner {} -> {}", o.owner(), n.owner()),
        })
        .collect();
    format!("~ {}  {}", f.path, parts.join(", "))
}

/// "file, 12 bytes", "symlink to usr/bin", "dir".
fn describe(e: &Entry) -> String {
    match (&e.target, e.is_file()) {
        (Some(t), _) => format!("symlink to {t}"),
        (None, true) => format!("file, {} bytes", e.size),
        (None, false) => e.kind.to_string(),
    }
}

fn partition_line(p: &PartitionChange) -> String {
    let (o, n) = match (&p.old, &p.new) {
        (Some(o), Some(n)) => (o, n),
        (None, Some(n)) => return format!("+ {}  ({}, {})", p.name, n.type_guid, Bytes(n.size)),
        (Some(o), None) => return format!("- {}  ({}, {})", p.name, o.type_guid, Bytes(o.size)),
        (None, None) => return format!("? {}", p.name),
    };
    let parts: Vec<String> = p
        .changed
        .iter()
        .map(|field| match *field {
            "type" => format!("type {} -> {}", o.type_guid, n.type_guid),
            "uuid" => format!("uuid {} -> {}", o.uuid, n.uuid),
            "start" => format!("start {} -> {}", Bytes(o.start), Bytes(n.start)),
            _ => format!("size {} -> {}", Bytes(o.size), Bytes(n.size)),
        })
        .collect();
    format!("~ {}  {}", p.name, parts.join(", "))
}

fn boot_line(b: &BootChange) -> String {
    let (path, item) = (&b.path, b.item.as_str());
    let text = |v: &str| match item {
        ".cmdline" => format!("{:?}", v.trim_end_matches(['\0', '\n'])),
        "kernel" => v.to_string(),
        _ => short(v).to_string(),
    };
    let what = match item {
        "file" => "",
        ".cmdline" | "kernel" => " ",
        _ => " sha256 ",
    };
    match (&b.old, &b.new) {
        _ if item == ".osrel" => format!("~ {path}  .osrel {}", osrel_lines(b)),
        (None, Some(n)) if item == "file" => format!("+ {path}  sha256 {}", short(n)),
        (Some(o), None) if item == "file" => format!("- {path}  sha256 {}", short(o)),
        (None, Some(n)) => format!("~ {path}  {item} added:{what}{}", text(n)),
        (Some(o), None) => format!("~ {path}  {item} removed (was{what}{})", text(o)),
        (Some(o), Some(n)) if item == "file" => {
            format!("~ {path}  sha256 {} -> {}", short(o), short(n))
        }
        (Some(o), Some(n)) => format!("~ {path}  {item}{what}{} -> {}", text(o), text(n)),
        (None, None) => format!("? {path}  {item}"),
    }
}

/// The lines an os-release lost and gained: "-IMAGE_VERSION=1.0 +IMAGE_VERSION=1.1".
fn osrel_lines(b: &BootChange) -> String {
    let lines = |v: &Option<String>| -> Vec<String> {
        v.as_deref()
            .unwrap_or("")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (o, n) = (lines(&b.old), lines(&b.new));
    let gone = o.iter().filter(|l| !n.contains(l)).map(|l| format!("-{l}"));
    let came = n.iter().filter(|l| !o.contains(l)).map(|l| format!("+{l}"));
    gone.chain(came).collect::<Vec<_>>().join(" ")
}

fn short(sha: &str) -> &str {
    sha.get(..SHORT_SHA).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::esp::Section;

    fn pkg(name: &str, version: &str, arch: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
        }
    }

    #[test]
    fn packages_added_removed_and_changed() {
        let old = [
            pkg("a", "1", "amd64"),
            pkg("b", "1", "amd64"),
            pkg("c", "1", "amd64"),
        ];
        let new = [
            pkg("a", "1", "amd64"),
            pkg("b", "2", "amd64"),
            pkg("d", "1", "all"),
        ];
        let d = Diff {
            packages: diff_packages(&old, &new),
            ..Diff::default()
        };
        assert_eq!(
            d.human(),
            "packages\n  ~ b 1 -> 2\n  - c 1 (amd64)\n  + d 1 (all)\n"
        );
    }

    #[test]
    fn packages_pair_by_arch_only_when_multiarch() {
        let old = [
            pkg("apt", "3", "amd64"),
            pkg("libc6", "2", "amd64"),
            pkg("libc6", "2", "i386"),
        ];
        let new = [pkg("apt", "3", "all"), pkg("libc6", "2", "amd64")];
        let d = Diff {
            packages: diff_packages(&old, &new),
            ..Diff::default()
        };
        assert_eq!(
            d.human(),
            "packages\n  ~ apt 3 (amd64) -> 3 (all)\n  - libc6 2 (i386)\n"
        );
    }

    fn uki(cmdline: &str, linux: &str, kernel: &str) -> Uki {
        let section = |name: &str, sha: &str| Section {
            name: name.into(),
            size: 1,
            sha256: sha.into(),
        };
        Uki {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            sections: vec![
                section(".text", "t"),
                section(".osrel", "o"),
                section(".cmdline", cmdline),
                section(".linux", linux),
            ],
            osrel: Some("ID=debian\n".into()),
            cmdline: Some(cmdline.into()),
            kernel: Some(kernel.into()),
        }
    }

    #[test]
    fn uki_changes_by_section_then_kernel() {
        let esp = |sha: &str| {
            vec![EspEntry {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                size: 1,
                sha256: sha.into(),
            }]
        };
        let o = [uki("ro", &"a".repeat(64), "6.12.1")];
        let n = [uki("ro quiet", &"b".repeat(64), "6.12.2")];
        let d = Diff {
            boot: diff_boot(&esp("x"), &o, &esp("y"), &n),
            ..Diff::default()
        };
        assert_eq!(
            d.human(),
            "boot\n  ~ EFI/BOOT/BOOTX64.EFI  .cmdline \"ro\" -> \"ro quiet\"\n  \
             ~ EFI/BOOT/BOOTX64.EFI  .linux sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb\n  \
             ~ EFI/BOOT/BOOTX64.EFI  kernel 6.12.1 -> 6.12.2\n"
        );
        let same = diff_boot(&esp("x"), &o, &esp("x"), &o);
        assert!(same.is_empty());
        // Same sections, different bytes (headers): the file itself is reported.
        let headers = diff_boot(&esp("x"), &o, &esp("y"), &o);
        assert_eq!(headers[0].item, "file");
    }

    #[test]
    fn osrel_change_shows_the_lines() {
        let b = BootChange {
            path: "E".into(),
            item: ".osrel".into(),
            old: Some("ID=debian\nIMAGE_VERSION=1.0\n".into()),
            new: Some("ID=debian\nIMAGE_VERSION=1.1\n".into()),
        };
        assert_eq!(
            boot_line(&b),
            "~ E  .osrel -IMAGE_VERSION=1.0 +IMAGE_VERSION=1.1"
        );
        let added = BootChange {
            path: "E".into(),
            item: ".initrd".into(),
            old: None,
            new: Some("b".repeat(64)),
        };
        assert_eq!(boot_line(&added), "~ E  .initrd added: sha256 bbbbbbbbbbbb");
        let gone = BootChange {
            path: "E".into(),
            item: "file".into(),
            old: Some("a".repeat(64)),
            new: None,
        };
        assert_eq!(boot_line(&gone), "- E  sha256 aaaaaaaaaaaa");
    }

    #[test]
    fn partitions_matched_by_name() {
        let r = |name: &str, size: u64| Region {
            name: name.into(),
            type_guid: crate::disk::ESP_TYPE,
            uuid: Uuid::nil(),
            start: 1 << 20,
            size,
        };
        let changes = diff_partitions(&[r("esp", 1 << 20), r("old", 1)], &[r("esp", 2 << 20)]);
        let d = Diff {
            partitions: changes,
            ..Diff::default()
        };
        assert_eq!(
            d.human(),
            "partitions\n  ~ esp  size 1.0 MiB -> 2.0 MiB\n  \
             - old  (c12a7328-f81f-11d2-ba4b-00a0c93ec93b, 1 bytes)\n"
        );
    }

    #[test]
    fn an_empty_diff_prints_nothing() {
        assert!(Diff::default().is_empty());
        assert_eq!(Diff::default().human(), "");
    }
}
