//! `[services]`: units enabled, disabled and masked at build time, without running
//! systemctl, with the symlinks `systemctl enable|disable|mask` writes (checked against
//! `systemctl --root` in the tests). Units are looked up as systemd does, in
//! /etc/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system (and
//! /lib/systemd/system when /lib is not a link to /usr/lib). The choices also go into a
//! preset file, so that a later `systemctl preset-all` keeps them. The image's own preset
//! files are not applied: Debian enables units when their packages are installed.

use std::collections::BTreeSet;

use anyhow::Result;

use super::{Entry, Kind, Tree};
use crate::error::UserError;
use crate::profile::{Located, ServicesSpec};

const CONFIG_DIR: &str = "etc/systemd/system";
pub(crate) const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// Written when the profile has a [services] table. "50-" sorts before Debian's and
/// systemd's own preset files (90-systemd.preset), and the first match wins.
pub const PRESET_PATH: &str = "etc/systemd/system-preset/50-imagebuild.preset";

/// What changed under /etc/systemd/system.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// "path -> target", paths relative to `/`.
    pub linked: Vec<String>,
    pub removed: Vec<String>,
}

/// Disables, then masks, then enables; then writes the preset file. Call it last, when
/// every unit of the image (packages, overlays, stacks) is in the tree.
pub fn apply_services(tree: &mut Tree, spec: &ServicesSpec, epoch: i64) -> Result<Applied> {
    let mut applied = Applied::default();
    if spec.is_empty() {
        return Ok(applied);
    }
    for u in &spec.disable {
        disable(tree, u, &mut applied)?;
    }
    for u in &spec.mask {
        mask(tree, u, epoch, &mut applied)?;
    }
    for u in &spec.enable {
        enable(tree, u, epoch, &mut applied)?;
    }
    tree.insert(
        PRESET_PATH,
        Entry::file(preset(spec).into_bytes(), 0o644, epoch),
    );
    Ok(applied)
}

fn preset(spec: &ServicesSpec) -> String {
    let line = |verb: &str, name: &str| match split_instance(name) {
        Some((prefix, instance, suffix)) if !instance.is_empty() => {
            format!("{verb} {prefix}@{suffix} {instance}\n")
        }
        _ => format!("{verb} {name}\n"),
    };
    let mut text = String::from("# written by imagebuild from the profile's [services]\n");
    text.extend(spec.enable.iter().map(|u| line("enable", &u.name)));
    text.extend(spec.disable.iter().map(|u| line("disable", &u.name)));
    text.extend(spec.mask.iter().map(|u| line("disable", &u.name)));
    text
}

/// `foo@bar.service` -> ("foo", "bar", ".service"); `foo@.service` -> ("foo", "", ".service").
fn split_instance(name: &str) -> Option<(&str, &str, &str)> {
    let (prefix, rest) = name.split_once('@')?;
    let dot = rest.rfind('.')?;
    Some((prefix, &rest[..dot], &rest[dot..]))
}

/// A unit file found in the tree.
#[derive(Debug, Clone)]
struct UnitFile {
    /// The name asked for, after following aliases (`getty@tty1.service`).
    name: String,
    /// Tree path of the file (`usr/lib/systemd/system/getty@.service`).
    path: String,
    masked: bool,
}

impl UnitFile {
    /// What links point at: the file's absolute path, as systemctl writes it.
    fn target(&self) -> String {
        format!("/{}", self.path)
    }
}

fn unit_dirs(tree: &Tree) -> Vec<&'static str> {
    let lib_is_link = matches!(tree.get("lib").map(|e| &e.kind), Some(Kind::Symlink(_)));
    UNIT_DIRS
        .iter()
        .copied()
        .filter(|d| !(lib_is_link && d.starts_with("lib/")))
        .collect()
}

/// Finds `name` (or its template) in the unit directories, following an alias symlink
/// to the unit it names.
fn find_unit(tree: &Tree, name: &str, hops: u32) -> Option<UnitFile> {
    let template = split_instance(name)
        .filter(|(_, i, _)| !i.is_empty())
        .map(|(p, _, s)| format!("{p}@{s}"));
    for file in std::iter::once(name.to_string()).chain(template) {
        for dir in unit_dirs(tree) {
            let path = format!("{dir}/{file}");
            let Some(e) = tree.get(&path) else { continue };
            if let Kind::Symlink(t) = &e.kind {
                if t == "/dev/null" {
                    return Some(UnitFile {
                        name: name.into(),
                        path,
                        masked: true,
                    });
                }
                let real = tree.resolve(&path)?;
                let base = real.rsplit('/').next()?.to_string();
                if base != file && hops < 8 {
                    // An alias: the unit is the one it points at.
                    let real_name = match split_instance(name) {
                        Some((_, i, _)) if !i.is_empty() && base.contains("@.") => {
                            let (p, _, s) = split_instance(&base)?;
                            format!("{p}@{i}{s}")
                        }
                        _ => base,
                    };
                    return find_unit(tree, &real_name, hops + 1);
                }
                return Some(UnitFile {
                    name: name.into(),
                    path: real,
                    masked: false,
                });
            }
            return Some(UnitFile {
                name: name.into(),
                path,
                masked: false,
            });
        }
    }
    None
}

/// The [Install] section of a unit file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    upheld_by: Vec<String>,
    alias: Vec<String>,
    also: Vec<String>,
    default_instance: Option<String>,
}

impl Install {
    fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.upheld_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

/// Parses the [Install] section: list settings accumulate, an empty assignment resets.
fn parse_install(text: &str) -> Install {
    let mut ins = Install::default();
    let mut in_install = false;
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if logical.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_install) else {
            continue;
        };
        let list = match key.trim() {
            "WantedBy" => &mut ins.wanted_by,
            "RequiredBy" => &mut ins.required_by,
            "UpheldBy" => &mut ins.upheld_by,
            "Alias" => &mut ins.alias,
            "Also" => &mut ins.also,
            "DefaultInstance" => {
                let v = value.trim();
                ins.default_instance = (!v.is_empty()).then(|| v.to_string());
                continue;
            }
            _ => continue,
        };
        if value.trim().is_empty() {
            list.clear();
        }
        list.extend(value.split_whitespace().map(str::to_owned));
    }
    ins
}

/// Expands the specifiers systemctl expands in [Install]: %n %N %p %i %j %%.
fn expand(value: &str, unit: &str) -> Result<String, String> {
    let stem = unit.rsplit_once('.').map_or(unit, |(s, _)| s);
    let (prefix, instance) = stem.split_once('@').unwrap_or((stem, ""));
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(unit),
            Some('N') => out.push_str(stem),
            Some('p') => out.push_str(prefix),
            Some('i') => out.push_str(instance),
            Some('j') => out.push_str(prefix.rsplit('-').next().unwrap_or(prefix)),
            Some('%') => out.push('%'),
            Some(o) => return Err(format!("specifier %{o}")),
            None => return Err("a lone % at the end".into()),
        }
    }
    Ok(out)
}

fn not_found(u: &Located, name: &str, verb: &str) -> anyhow::Error {
    let what = if name == u.name {
        format!("unit {name} does not exist in the image")
    } else {
        format!("{name} (Also= of {}) does not exist in the image", u.name)
    };
    UserError::invalid(format!("{}: [services] {verb}: {what}", u.at))
        .hint("check the name (`systemctl list-unit-files` on a machine with the package), and that the package that ships it is in [packages] include")
        .into()
}

fn enable(tree: &mut Tree, u: &Located, epoch: i64, applied: &mut Applied) -> Result<()> {
    let mut todo = vec![u.name.clone()];
    let mut done = BTreeSet::new();
    while let Some(asked) = todo.pop() {
        if !done.insert(asked.clone()) {
            continue;
        }
        let unit = find_unit(tree, &asked, 0).ok_or_else(|| not_found(u, &asked, "enable"))?;
        let fail = |msg: String, hint: &str| -> anyhow::Error {
            UserError::invalid(format!("{}: [services] enable: {msg}", u.at))
                .hint(hint)
                .into()
        };
        if unit.masked {
            return Err(fail(
                format!("{} is masked (/{} -> /dev/null)", unit.name, unit.path),
                "remove the mask from the overlay or from [services] mask",
            ));
        }
        let text = tree.read(&unit.path)?.unwrap_or_default();
        let install = parse_install(&String::from_utf8_lossy(&text));
        let mut name = unit.name.clone();
        if let Some((p, "", s)) = split_instance(&name) {
            match &install.default_instance {
                Some(i) => name = format!("{p}@{i}{s}"),
                None if install.also.is_empty() => {
                    return Err(fail(
                        format!("{name} is a template without DefaultInstance="),
                        &format!("enable an instance, e.g. \"{p}@NAME{s}\""),
                    ));
                }
                None => {}
            }
        }
        if install.is_empty() && asked == u.name {
            return Err(fail(
                format!(
                    "{} has no [Install] section (WantedBy=, RequiredBy=, UpheldBy=, Alias=, Also=), so there is nothing to enable",
                    unit.name
                ),
                "such a unit starts when another unit, a socket, timer or path pulls it in; enable that one, or add a drop-in with an [Install] section through an overlay",
            ));
        }
        let spec_err = |e: String| {
            fail(
                format!(
                    "{}: [Install] uses {e}, which imagebuild does not expand",
                    unit.name
                ),
                "enable it with a symlink in an overlay instead",
            )
        };
        let instance = split_instance(&name).map(|(_, i, _)| i.to_string());
        let instance = instance.filter(|i| !i.is_empty());
        let depend = |target: &str| -> Result<String> {
            let t = expand(target, &name).map_err(spec_err)?;
            Ok(match (split_instance(&t), &instance) {
                (Some((p, "", s)), Some(i)) => format!("{p}@{i}{s}"),
                _ => t,
            })
        };
        for (list, dir) in [
            (&install.wanted_by, "wants"),
            (&install.required_by, "requires"),
            (&install.upheld_by, "upholds"),
        ] {
            if instance.is_none() && split_instance(&name).is_some() {
                break; // a template with no instance: only Also= applies
            }
            for t in list {
                let t = depend(t)?;
                let path = format!("{CONFIG_DIR}/{t}.{dir}/{name}");
                link(tree, &path, &unit.target(), epoch, applied).map_err(&fail_link(u))?;
            }
        }
        for a in &install.alias {
            let a = expand(a, &name).map_err(spec_err)?;
            let a = match (split_instance(&a), &instance) {
                (Some((p, "", s)), Some(i)) => format!("{p}@{i}{s}"),
                _ => a,
            };
            let same_type = a.rsplit('.').next() == name.rsplit('.').next();
            if !same_type || instance.is_some() != a.contains('@') {
                return Err(fail(
                    format!("{name} cannot be aliased as {a}"),
                    "aliases must be of the same type, and instances of templates",
                ));
            }
            if a != name {
                let path = format!("{CONFIG_DIR}/{a}");
                link(tree, &path, &unit.target(), epoch, applied).map_err(&fail_link(u))?;
            }
        }
        for also in &install.also {
            todo.push(expand(also, &name).map_err(spec_err)?);
        }
    }
    Ok(())
}

fn fail_link(u: &Located) -> impl Fn(String) -> anyhow::Error + '_ {
    move |msg| {
        UserError::invalid(format!("{}: [services] enable {}: {msg}", u.at, u.name))
            .hint("remove the conflicting file from the overlay")
            .into()
    }
}

/// Writes a symlink as systemctl does; an identical one already there is kept.
fn link(
    tree: &mut Tree,
    path: &str,
    target: &str,
    epoch: i64,
    applied: &mut Applied,
) -> Result<(), String> {
    match tree.get(path).map(|e| &e.kind) {
        None => {}
        Some(Kind::Symlink(t)) if t == target || tree.resolve(t) == tree.resolve(target) => {
            return Ok(());
        }
        Some(Kind::Symlink(t)) => return Err(format!("/{path} already links to {t}")),
        Some(_) => return Err(format!("/{path} exists and is not a symlink")),
    }
    tree.insert(path, Entry::symlink(target, epoch));
    applied.linked.push(format!("{path} -> {target}"));
    Ok(())
}

/// Removes the symlinks in /etc/systemd/system (and below: .wants, .requires, .upholds)
/// named like the unit, its aliases and its Also= units, or pointing at them; directories
/// left empty go too. A masked unit stays masked, as with systemctl.
fn disable(tree: &mut Tree, u: &Located, applied: &mut Applied) -> Result<()> {
    let mut names = BTreeSet::new();
    let mut todo = vec![u.name.clone()];
    while let Some(asked) = todo.pop() {
        if names.contains(&asked) {
            continue;
        }
        let unit = find_unit(tree, &asked, 0).ok_or_else(|| not_found(u, &asked, "disable"))?;
        if unit.masked {
            continue;
        }
        let text = tree.read(&unit.path)?.unwrap_or_default();
        let install = parse_install(&String::from_utf8_lossy(&text));
        names.insert(asked.clone());
        names.insert(unit.name.clone());
        let expanded = |list: &[String]| -> Vec<String> {
            list.iter()
                .filter_map(|a| expand(a, &unit.name).ok())
                .collect()
        };
        names.extend(expanded(&install.alias));
        todo.extend(expanded(&install.also));
    }
    let mut dirs = BTreeSet::new();
    for p in tree.paths_under(CONFIG_DIR) {
        let Some(Kind::Symlink(t)) = tree.get(&p).map(|e| &e.kind) else {
            continue;
        };
        let own = p.rsplit('/').next().unwrap_or_default();
        let dest = t.rsplit('/').next().unwrap_or_default();
        if t != "/dev/null" && (names.contains(own) || names.contains(dest)) {
            applied.removed.push(p.clone());
            tree.remove(&p);
            if let Some((dir, _)) = p.rsplit_once('/') {
                dirs.insert(dir.to_string());
            }
        }
    }
    for d in dirs {
        if d != CONFIG_DIR && tree.paths_under(&d).is_empty() {
            tree.remove(&d);
        }
    }
    Ok(())
}

/// `systemctl mask`: /etc/systemd/system/UNIT -> /dev/null (replacing a symlink there).
fn mask(tree: &mut Tree, u: &Located, epoch: i64, applied: &mut Applied) -> Result<()> {
    if find_unit(tree, &u.name, 0).is_none() {
        return Err(not_found(u, &u.name, "mask"));
    }
    let path = format!("{CONFIG_DIR}/{}", u.name);
    match tree.get(&path).map(|e| &e.kind) {
        None | Some(Kind::Symlink(_)) => {}
        Some(_) => {
            return Err(UserError::invalid(format!(
                "{}: [services] mask: /{path} is a unit file, not a link",
                u.at
            ))
            .hint("remove the unit file from the overlay instead of masking it")
            .into());
        }
    }
    tree.insert(&path, Entry::symlink("/dev/null", epoch));
    applied.linked.push(format!("{path} -> /dev/null"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Arch;
    use crate::testing::synthetic_base_tar;

    fn base() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("base.tar");
        std::fs::write(&p, synthetic_base_tar(Arch::Amd64)).unwrap();
        let t = Tree::from_tar(&p).unwrap();
        (dir, t)
    }

    fn located(names: &[&str]) -> Vec<Located> {
        names
            .iter()
            .map(|n| Located {
                name: (*n).into(),
                at: "profiles/t.toml:7".into(),
            })
            .collect()
    }

    /// Symlinks under /etc/systemd/system, "path -> target", sorted.
    fn links(t: &Tree) -> Vec<String> {
        t.paths_under(CONFIG_DIR)
            .into_iter()
            .filter_map(|p| match &t.get(&p)?.kind {
                Kind::Symlink(target) => Some(format!("/{p} -> {target}")),
                _ => None,
            })
            .collect()
    }

    const ENABLE: &[&str] = &[
        "docker.service",
        "ssh.service",
        "getty@.service",
        "serial-getty@ttyS0.service",
        "fstrim.timer",
    ];
    const DISABLE: &[&str] = &["apt-daily.timer"];

    /// What `systemctl --root enable ENABLE; systemctl --root disable DISABLE` leaves
    /// (systemd 252 on Debian 12 and 257 on Debian 13, but for /lib vs /usr/lib).
    const EXPECTED: &[&str] = &[
        "/etc/systemd/system/getty.target.wants/getty@tty1.service -> /usr/lib/systemd/system/getty@.service",
        "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service -> /usr/lib/systemd/system/serial-getty@.service",
        "/etc/systemd/system/multi-user.target.wants/docker.service -> /usr/lib/systemd/system/docker.service",
        "/etc/systemd/system/multi-user.target.wants/ssh.service -> /usr/lib/systemd/system/ssh.service",
        "/etc/systemd/system/sshd.service -> /usr/lib/systemd/system/ssh.service",
        "/etc/systemd/system/timers.target.wants/fstrim.timer -> /usr/lib/systemd/system/fstrim.timer",
    ];

    #[test]
    fn enable_and_disable_write_what_systemctl_writes() {
        let (_d, mut t) = base();
        let spec = ServicesSpec {
            enable: located(ENABLE),
            disable: located(DISABLE),
            mask: Vec::new(),
        };
        let applied = apply_services(&mut t, &spec, 7).unwrap();
        assert_eq!(links(&t), EXPECTED);
        assert_eq!(
            applied.removed,
            ["etc/systemd/system/timers.target.wants/apt-daily.timer"]
        );
        let p = t.get(PRESET_PATH).unwrap();
        assert_eq!(p.mode, 0o644);
        assert!(
            String::from_utf8(t.read(PRESET_PATH).unwrap().unwrap())
                .unwrap()
                .contains("\nenable getty@.service\nenable serial-getty@.service ttyS0\nenable fstrim.timer\ndisable apt-daily.timer\n")
        );
        let again = apply_services(&mut t, &spec, 7).unwrap();
        assert_eq!(
            again.linked,
            Vec::<String>::new(),
            "enabling twice changes nothing"
        );
        assert_eq!(links(&t), EXPECTED);
    }

    /// The oracle: the real systemctl on the same unit files, where the host has one.
    #[test]
    fn systemctl_on_this_host_agrees() {
        let Some(systemctl) = crate::host::which("systemctl") else {
            eprintln!("no systemctl on this host: oracle skipped");
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib/systemd/system")).unwrap();
        std::fs::create_dir_all(r.join("etc/systemd/system/timers.target.wants")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        for (name, text) in crate::testing::UNITS {
            std::fs::write(r.join("usr/lib/systemd/system").join(name), text).unwrap();
        }
        std::os::unix::fs::symlink(
            "/usr/lib/systemd/system/apt-daily.timer",
            r.join("etc/systemd/system/timers.target.wants/apt-daily.timer"),
        )
        .unwrap();
        for (verb, units) in [("enable", ENABLE), ("disable", DISABLE)] {
            let out = std::process::Command::new(&systemctl)
                .arg(format!("--root={}", r.display()))
                .arg(verb)
                .args(units)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut got = Vec::new();
        let mut todo = vec![r.join("etc/systemd/system")];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_symlink() {
                    let target = std::fs::read_link(&p).unwrap();
                    let target = target.to_string_lossy();
                    // Debian 12's systemd is built for split /usr: it writes /lib/....
                    let target = match target.strip_prefix("/lib/") {
                        Some(rest) => format!("/usr/lib/{rest}"),
                        None => target.into_owned(),
                    };
                    let rel = p.strip_prefix(r).unwrap().display().to_string();
                    got.push(format!("/{rel} -> {target}"));
                } else if p.is_dir() {
                    todo.push(p);
                }
            }
        }
        got.sort();
        assert_eq!(got, EXPECTED);
        assert!(
            !r.join("etc/systemd/system/timers.target.wants").exists()
                || EXPECTED.iter().any(|l| l.contains("timers.target.wants")),
        );
    }

    #[test]
    fn disable_removes_emptied_directories_and_keeps_masks() {
        let (_d, mut t) = base();
        let spec = ServicesSpec {
            disable: located(&["apt-daily.timer"]),
            ..ServicesSpec::default()
        };
        apply_services(&mut t, &spec, 7).unwrap();
        assert!(t.get("etc/systemd/system/timers.target.wants").is_none());
        let spec = ServicesSpec {
            mask: located(&["apt-daily.timer"]),
            ..ServicesSpec::default()
        };
        apply_services(&mut t, &spec, 7).unwrap();
        let spec = ServicesSpec {
            disable: located(&["apt-daily.timer"]),
            ..ServicesSpec::default()
        };
        apply_services(&mut t, &spec, 7).unwrap();
        assert_eq!(
            links(&t),
            ["/etc/systemd/system/apt-daily.timer -> /dev/null"]
        );
    }

    #[test]
    fn disabling_through_an_alias_disables_the_unit() {
        let (_d, mut t) = base();
        let spec = ServicesSpec {
            enable: located(&["ssh.service"]),
            ..ServicesSpec::default()
        };
        apply_services(&mut t, &spec, 7).unwrap();
        let spec = ServicesSpec {
            disable: located(&["sshd.service"]),
            ..ServicesSpec::default()
        };
        let applied = apply_services(&mut t, &spec, 7).unwrap();
        assert_eq!(
            applied.removed,
            [
                "etc/systemd/system/multi-user.target.wants/ssh.service",
                "etc/systemd/system/sshd.service"
            ]
        );
    }

    #[test]
    fn bad_units_name_the_profile_line() {
        let err = |enable: &[&str]| {
            let (_d, mut t) = base();
            let spec = ServicesSpec {
                enable: located(enable),
                ..ServicesSpec::default()
            };
            let e = apply_services(&mut t, &spec, 7).unwrap_err();
            format!("{e:#} / hint: {:?}", crate::error::hints(&e))
        };
        let e = err(&["nginx.service"]);
        assert!(
            e.starts_with("profiles/t.toml:7: [services] enable: unit nginx.service does not exist in the image"),
            "{e}"
        );
        let e = err(&["apt-daily.service"]);
        assert!(
            e.starts_with(
                "profiles/t.toml:7: [services] enable: apt-daily.service has no [Install] section"
            ),
            "{e}"
        );
        let e = err(&["serial-getty@.service"]);
        assert!(
            e.contains("serial-getty@.service is a template without DefaultInstance=")
                && e.contains("serial-getty@NAME.service"),
            "{e}"
        );
    }

    #[test]
    fn install_section_lists_accumulate_and_reset() {
        let text = "[Unit]\nWantedBy=nope.target\n[Install]\nWantedBy=a.target b.target\n# c\nWantedBy=c.target\nAlias=x.service\nAlias=\nAlias=y.service\nAlso=z.socket \\\n  w.socket\nDefaultInstance=tty1\n";
        let i = parse_install(text);
        assert_eq!(i.wanted_by, ["a.target", "b.target", "c.target"]);
        assert_eq!(i.alias, ["y.service"]);
        assert_eq!(i.also, ["z.socket", "w.socket"]);
        assert_eq!(i.default_instance.as_deref(), Some("tty1"));
        assert!(parse_install("[Unit]\n[Service]\nExecStart=/bin/true\n").is_empty());
    }

    #[test]
    fn specifiers_expand_like_systemctl() {
        assert_eq!(
            expand("foo-%i.target", "ser@ttyS0.service").unwrap(),
            "foo-ttyS0.target"
        );
        assert_eq!(
            expand("%p-%j:%N:%n:%%", "a-b@x.socket").unwrap(),
            "a-b-b:a-b@x:a-b@x.socket:%"
        );
        assert_eq!(expand("%H", "a.service").unwrap_err(), "specifier %H");
    }

    #[test]
    fn preset_lines_name_templates_with_their_instance() {
        let l = |n: &str| Located {
            name: n.into(),
            at: String::new(),
        };
        let spec = ServicesSpec {
            enable: vec![l("docker.service"), l("getty@tty1.service")],
            disable: vec![l("apt-daily.timer")],
            mask: vec![l("e2scrub_all.timer")],
        };
        assert_eq!(
            preset(&spec),
            "# written by imagebuild from the profile's [services]\nenable docker.service\nenable getty@.service tty1\ndisable apt-daily.timer\ndisable e2scrub_all.timer\n"
        );
    }
}
