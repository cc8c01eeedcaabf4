//! `[[state]]` in the image: the units that find, make and mount each state filesystem,
//! bind its paths, keep docker and the stacks from starting without it, and
//! `/usr/lib/imagebuild/state.json`, which tells `flash` what to keep.
//!
//! - On the OS disk: a systemd-repart definition makes the partition after the root on
//!   first boot (named and labelled LABEL, formatted ext4 because repart made it); the root
//!   no longer grows (see [`super::generate::Generated::grow_root`]).
//! - On a device of its own: a oneshot finds the one device the glob names and formats it
//!   only when it is blank ([`DEVICE_SCRIPT`]).
//! - Either way: a mount unit mounts `/dev/disk/by-label/LABEL` on the mount, a oneshot
//!   makes each bind's source on first use from the image's own content ([`SEED_SCRIPT`]),
//!   and a bind mount unit per path. All are wanted by local-fs.target and ordered before
//!   it, so nothing else starts before its data is in place; wanted, not required, so a
//!   state that fails leaves failed units, not an emergency shell on a machine only ssh
//!   reaches.

use anyhow::Result;
use serde::Serialize;

use super::services::UNIT_DIRS;
use super::{Entry, Kind, Tree};
use crate::error::UserError;
use crate::profile::{Recipe, StateSpec};
use crate::stack::units::{LOADER_UNIT, stack_unit_name};
use crate::verify::health::{Check, CheckKind, GeneratedFile};

/// What `flash` reads from an image: `{"states":[{"bind":[..],"device":..,"label":..,
/// "mount":..,"size":..}]}`, keys sorted; written into every image (no states: `[]`).
pub const STATE_JSON: &str = "/usr/lib/imagebuild/state.json";
/// Finds and, when blank, formats a separate state device.
pub const DEVICE_SCRIPT_PATH: &str = "/usr/lib/imagebuild/state-device";
pub const DEVICE_SCRIPT: &str = include_str!("state-device.sh");
/// Makes the sources of a state's bind mounts.
pub const SEED_SCRIPT_PATH: &str = "/usr/lib/imagebuild/state-seed";
pub const SEED_SCRIPT: &str = include_str!("state-seed.sh");

const UNIT_DIR: &str = "/usr/lib/systemd/system";
const WANTS_DIR: &str = "/etc/systemd/system/local-fs.target.wants";
const REPART_DIR: &str = "/usr/lib/repart.d";
/// How long boot waits for a state's device to appear.
pub const DEVICE_WAIT_SECS: u32 = 30;
/// The drop-in that makes a unit require the state mounts.
const DROP_IN: &str = "50-imagebuild-state.conf";
/// The units that must not start without their state, besides the stacks' own.
const CONSUMERS: &[&str] = &["docker.service", LOADER_UNIT];

/// Puts the recipe's states into the tree and returns their health checks.
pub fn install(tree: &mut Tree, recipe: &Recipe) -> Result<Vec<Check>> {
    install_states(tree, &recipe.states, recipe.epoch)
}

/// Puts `states` into the tree and returns their health checks: `state LABEL`.
pub fn install_states(tree: &mut Tree, states: &[StateSpec], epoch: i64) -> Result<Vec<Check>> {
    insert(tree, state_json(states), epoch);
    let Some(first) = states.first() else {
        return Ok(Vec::new());
    };
    check_mkfs(tree, first)?;
    for s in states {
        directories(tree, s, epoch)?;
    }
    let drop_ins = consumer_drop_ins(tree, states);
    for f in files(states).into_iter().chain(drop_ins) {
        insert(tree, f, epoch);
    }
    Ok(states.iter().map(health_check).collect())
}

fn insert(tree: &mut Tree, f: GeneratedFile, epoch: i64) {
    match f {
        GeneratedFile::File {
            path,
            mode,
            contents,
        } => tree.insert(&path, Entry::file(contents, mode, epoch)),
        GeneratedFile::Symlink { path, target } => {
            tree.insert(&path, Entry::symlink(&target, epoch));
        }
    }
}

/// `state.json`: the states as the profile declares them, in profile order.
fn state_json(states: &[StateSpec]) -> GeneratedFile {
    #[derive(Serialize)]
    struct StateJson<'a> {
        states: &'a [StateSpec],
    }
    // OK to unwrap: strings, numbers and lists always serialise.
    let json = serde_json::to_string(&StateJson { states }).expect("state.json serialises");
    GeneratedFile::File {
        path: STATE_JSON.into(),
        mode: 0o644,
        contents: format!("{json}\n").into_bytes(),
    }
}

/// systemd-repart and the device script format with mkfs.ext4 (e2fsprogs), which Debian
/// 13's minbase does not install.
fn check_mkfs(tree: &Tree, first: &StateSpec) -> Result<()> {
    let found = ["usr/sbin/mkfs.ext4", "sbin/mkfs.ext4"].iter().any(|p| {
        tree.resolve(p)
            .and_then(|r| tree.get(&r))
            .is_some_and(|e| matches!(e.kind, Kind::File(_)))
    });
    if found {
        return Ok(());
    }
    Err(UserError::invalid(format!(
        "{}: [[state]] {} needs mkfs.ext4, which the image does not have",
        first.at, first.label
    ))
    .hint("add \"e2fsprogs\" to [packages] include")
    .into())
}

/// The mount point and the bind targets are directories of the image (made if missing):
/// not files, and not symlinks that would move the mount elsewhere.
fn directories(tree: &mut Tree, s: &StateSpec, epoch: i64) -> Result<()> {
    for (key, path) in
        std::iter::once(("mount", &s.mount)).chain(s.bind.iter().map(|b| ("bind", b)))
    {
        let rel = super::clean(path);
        let kind = tree.get(&rel).map(|e| &e.kind);
        if parent_is_link(tree, &rel) || kind.is_some_and(|k| !matches!(k, Kind::Dir)) {
            return Err(UserError::invalid(format!(
                "{}: [[state]] {}: {key} {path:?} is not a directory in the image",
                s.at, s.label
            ))
            .hint(format!(
                "name a directory (the image has a file or a symlink at {path} or above it)"
            ))
            .into());
        }
        if tree.get(&rel).is_none() {
            tree.insert(&rel, Entry::dir(0o755, epoch));
        }
    }
    Ok(())
}

/// Some directory above `rel` is a symlink in the tree.
fn parent_is_link(tree: &Tree, rel: &str) -> bool {
    let mut prefix = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    parts[..parts.len().saturating_sub(1)].iter().any(|c| {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        tree.get(&prefix)
            .is_some_and(|e| matches!(e.kind, Kind::Symlink(_)))
    })
}

/// Every generated file of the states, the same for the same states.
pub fn files(states: &[StateSpec]) -> Vec<GeneratedFile> {
    let mut out = vec![];
    if states.iter().any(|s| !s.on_os_disk()) {
        out.push(script(DEVICE_SCRIPT_PATH, DEVICE_SCRIPT));
    }
    if states.iter().any(|s| !s.bind.is_empty()) {
        out.push(script(SEED_SCRIPT_PATH, SEED_SCRIPT));
    }
    for s in states {
        out.extend(state_files(s));
    }
    out
}

fn script(path: &str, text: &str) -> GeneratedFile {
    GeneratedFile::File {
        path: path.into(),
        mode: 0o755,
        contents: text.as_bytes().to_vec(),
    }
}

/// The units of one state, with the links that enable the mounts.
fn state_files(s: &StateSpec) -> Vec<GeneratedFile> {
    let mut out = vec![match (&s.device, s.size) {
        (Some(glob), _) => unit(&device_unit(&s.label), device_service(s, glob)),
        (None, size) => repart_definition(s, size.unwrap_or_default()),
    }];
    out.extend(enabled(&mount_unit_name(&s.mount), state_mount(s)));
    if !s.bind.is_empty() {
        out.push(unit(&seed_unit(&s.label), seed_service(s)));
    }
    for b in &s.bind {
        out.extend(enabled(&mount_unit_name(b), bind_mount(s, b)));
    }
    out
}

fn unit(name: &str, text: String) -> GeneratedFile {
    GeneratedFile::File {
        path: format!("{UNIT_DIR}/{name}"),
        mode: 0o644,
        contents: text.into_bytes(),
    }
}

/// The unit and its link in local-fs.target.wants.
fn enabled(name: &str, text: String) -> [GeneratedFile; 2] {
    [
        unit(name, text),
        GeneratedFile::Symlink {
            path: format!("{WANTS_DIR}/{name}"),
            target: format!("{UNIT_DIR}/{name}"),
        },
    ]
}

/// `imagebuild-state-device-LABEL.service`
pub fn device_unit(label: &str) -> String {
    format!("imagebuild-state-device-{label}.service")
}

/// `imagebuild-state-seed-LABEL.service`
pub fn seed_unit(label: &str) -> String {
    format!("imagebuild-state-seed-{label}.service")
}

/// `usr/lib/repart.d/60-state-LABEL.conf`: the partition after the root, made on first
/// boot. repart formats only partitions it creates, so a partition that exists (this
/// boot's second run, or kept by `flash`) is never formatted again.
fn repart_definition(s: &StateSpec, size: u64) -> GeneratedFile {
    let text = format!(
        "# Written by imagebuild: [[state]] {label}, a partition after the root, made and formatted\n\
         # on first boot. An existing partition of this type is kept as it is.\n\
         [Partition]\n\
         Type=linux-generic\n\
         Label={label}\n\
         Format=ext4\n\
         SizeMinBytes={size}\n\
         SizeMaxBytes={size}\n",
        label = s.label
    );
    GeneratedFile::File {
        path: format!("{REPART_DIR}/60-state-{}.conf", s.label),
        mode: 0o644,
        contents: text.into_bytes(),
    }
}

fn device_service(s: &StateSpec, glob: &str) -> String {
    format!(
        "# Generated by imagebuild: finds the device of [[state]] {label} ({glob}) and formats it\n\
         # ext4 only if it is blank.\n\
         [Unit]\n\
         Description=imagebuild state {label}: device {glob}\n\
         DefaultDependencies=no\n\
         After=systemd-udev-trigger.service\n\
         Before={mount} shutdown.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ImportCredential=imagebuild.state.{label}.device\n\
         ExecStart={DEVICE_SCRIPT_PATH} {label} {glob} {DEVICE_WAIT_SECS}\n\
         TimeoutStartSec=10min\n",
        label = s.label,
        mount = mount_unit_name(&s.mount),
    )
}

/// The state's filesystem on its mount, found by its label.
fn state_mount(s: &StateSpec) -> String {
    let after = match &s.device {
        None => "After=systemd-repart.service\n".to_string(),
        Some(_) => {
            let d = device_unit(&s.label);
            format!("Requires={d}\nAfter={d}\n")
        }
    };
    format!(
        "# Generated by imagebuild: [[state]] {label}, the ext4 filesystem labelled {label}.\n\
         [Unit]\n\
         Description=imagebuild state {label}\n\
         {after}\
         \n\
         [Mount]\n\
         What={what}\n\
         Where={mount}\n\
         Type=ext4\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        label = s.label,
        what = by_label(&s.label),
        mount = s.mount,
    )
}

/// Where udev links the filesystem labelled `label` (labels need no escaping).
pub fn by_label(label: &str) -> String {
    format!("/dev/disk/by-label/{label}")
}

fn seed_service(s: &StateSpec) -> String {
    let binds: Vec<String> = s.bind.iter().map(|b| mount_unit_name(b)).collect();
    format!(
        "# Generated by imagebuild: the sources of the bind mounts of [[state]] {label}, made on\n\
         # first use from the image's content.\n\
         [Unit]\n\
         Description=imagebuild state {label}: bind sources\n\
         DefaultDependencies=no\n\
         Requires={mount}\n\
         After={mount}\n\
         Before={binds} local-fs.target shutdown.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={SEED_SCRIPT_PATH} {mount_path} {paths}\n",
        label = s.label,
        mount = mount_unit_name(&s.mount),
        binds = binds.join(" "),
        mount_path = s.mount,
        paths = s.bind.join(" "),
    )
}

fn bind_mount(s: &StateSpec, bind: &str) -> String {
    let seed = seed_unit(&s.label);
    format!(
        "# Generated by imagebuild: {bind} lives on [[state]] {label}, at {mount}{bind}.\n\
         [Unit]\n\
         Description=imagebuild state {label}: {bind}\n\
         Requires={seed}\n\
         After={seed}\n\
         \n\
         [Mount]\n\
         What={mount}{bind}\n\
         Where={bind}\n\
         Type=none\n\
         Options=bind\n\
         \n\
         [Install]\n\
         WantedBy=local-fs.target\n",
        label = s.label,
        mount = s.mount,
    )
}

/// Drop-ins that make docker, the image loader and every stack in the tree require every
/// state mount and bind: without their data they must not start (docker would make a new,
/// empty data root).
fn consumer_drop_ins(tree: &Tree, states: &[StateSpec]) -> Vec<GeneratedFile> {
    let paths: Vec<&str> = states
        .iter()
        .flat_map(|s| std::iter::once(&s.mount).chain(&s.bind))
        .map(String::as_str)
        .collect();
    consumers(tree)
        .into_iter()
        .map(|u| GeneratedFile::File {
            path: format!("/etc/systemd/system/{u}.d/{DROP_IN}"),
            mode: 0o644,
            contents: format!(
                "# Written by imagebuild: {u} starts only with its [[state]] mounted.\n[Unit]\nRequiresMountsFor={}\n",
                paths.join(" ")
            )
            .into_bytes(),
        })
        .collect()
}

/// docker.service, the image loader and the stacks' units the tree has, sorted.
fn consumers(tree: &Tree) -> Vec<String> {
    let has = |name: &str| {
        UNIT_DIRS
            .iter()
            .any(|d| tree.get(&format!("{d}/{name}")).is_some())
    };
    let mut out: Vec<String> = CONSUMERS
        .iter()
        .filter(|u| has(u))
        .map(|u| (*u).to_string())
        .collect();
    let prefix = stack_unit_name("");
    let prefix = prefix.trim_end_matches(".service");
    for d in UNIT_DIRS {
        for p in tree.paths_under(d) {
            let name = &p[d.len() + 1..];
            if name.starts_with(prefix) && name.ends_with(".service") && !name.contains('/') {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn health_check(s: &StateSpec) -> Check {
    Check {
        kind: CheckKind::State {
            label: s.label.clone(),
            mount: s.mount.clone(),
            binds: s.bind.clone(),
        },
    }
}

/// `NAME.mount` for the mount point `path`.
pub fn mount_unit_name(path: &str) -> String {
    format!("{}.mount", escape_path(path))
}

/// A path as `systemd-escape --path` writes it: slashes around it dropped, `/` -> `-`, and
/// every byte but ASCII letters, digits, `:`, `_` and `.` (and `.` first) as `\xNN`.
pub fn escape_path(path: &str) -> String {
    let cleaned = super::clean(path);
    if cleaned.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(cleaned.len());
    for (i, b) in cleaned.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b":_.".contains(&b) => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
