//! Files imagebuild writes into every image, and facts it reads back from the tree.

use anyhow::Result;

use super::{Entry, Kind, Tree};
use crate::profile::schema::HostKeyType;

/// Identity of the image, written into the tree.
pub struct Generated<'a> {
    pub image_id: &'a str,
    pub version: &'a str,
    pub hostname: &'a str,
    pub root_partuuid: &'a str,
    pub esp_partuuid: &'a str,
    /// SSH host key types generated on first boot.
    pub ssh_host_keys: &'a [HostKeyType],
    /// Grow the root partition over the free space after it on first boot: not when a
    /// state partition is made there (see [`super::state`]).
    pub grow_root: bool,
}

/// Writes /etc/hostname (and the unit that lets a `system.hostname` credential override
/// it), IMAGE_ID/IMAGE_VERSION into os-release, /etc/fstab, first-boot machine-id, and
/// removes what must not be shared by every machine flashed from the image (host files
/// mmdebstrap copied in, SSH host keys, the random seed).
pub fn generate(tree: &mut Tree, g: &Generated<'_>, epoch: i64) -> Result<()> {
    tree.insert(
        "etc/hostname",
        Entry::file(format!("{}\n", g.hostname).into_bytes(), 0o644, epoch),
    );
    // mmdebstrap copies the build host's resolv.conf; a symlink (systemd-resolved) is the image's own.
    if !matches!(
        tree.get("etc/resolv.conf").map(|e| &e.kind),
        Some(Kind::Symlink(_))
    ) {
        tree.insert("etc/resolv.conf", Entry::file(Vec::new(), 0o644, epoch));
    }
    // "uninitialized" (not empty) is what makes systemd treat the first boot as first boot.
    tree.insert(
        "etc/machine-id",
        Entry::file(b"uninitialized\n".to_vec(), 0o444, epoch),
    );
    tree.remove("var/lib/systemd/random-seed");
    write_os_release(tree, g, epoch)?;
    tree.insert("boot/efi", Entry::dir(0o755, epoch));
    // The ESP is mounted when something opens /boot/efi (and unmounted after two idle
    // minutes), as systemd's gpt-auto does: the boot does not wait for its device, and
    // the FAT is clean whenever it is not in use.
    let fstab = format!(
        "# written by imagebuild\nPARTUUID={} / ext4 rw,relatime,errors=remount-ro,x-systemd.growfs 0 1\nPARTUUID={} /boot/efi vfat umask=0077,nofail,x-systemd.automount,x-systemd.idle-timeout=120 0 2\n",
        g.root_partuuid, g.esp_partuuid
    );
    tree.insert("etc/fstab", Entry::file(fstab.into_bytes(), 0o644, epoch));
    super::machine::hostname_from_credential(tree, epoch);
    ssh_host_keys_on_first_boot(tree, epoch, g.ssh_host_keys);
    sshd_starts_once(tree, epoch)?;
    mark_updated(tree, epoch);
    if g.grow_root {
        grow_root_on_first_boot(tree, epoch);
    }
    Ok(())
}

/// On a disk larger than the image, systemd-repart grows the root partition (the last
/// one) and x-systemd.growfs in fstab grows the filesystem, on first boot.
fn grow_root_on_first_boot(tree: &mut Tree, epoch: i64) {
    let repart = "# written by imagebuild: grow the root partition to fill the disk\n[Partition]\nType=root\n";
    tree.insert(
        ROOT_REPART_CONF,
        Entry::file(repart.as_bytes().to_vec(), 0o644, epoch),
    );
}

/// The systemd-repart definition that grows the root.
pub const ROOT_REPART_CONF: &str = "usr/lib/repart.d/50-root.conf";

fn write_os_release(tree: &mut Tree, g: &Generated<'_>, epoch: i64) -> Result<()> {
    let target = tree
        .resolve("etc/os-release")
        .filter(|p| matches!(tree.get(p).map(|e| &e.kind), Some(Kind::File(_))));
    let old = match &target {
        Some(p) => String::from_utf8_lossy(&tree.read(p)?.unwrap_or_default()).into_owned(),
        None => String::new(),
    };
    let mut text: String = old
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "IMAGE_ID={}\nIMAGE_VERSION={}\n",
        g.image_id, g.version
    ));
    let path = target.unwrap_or_else(|| "etc/os-release".to_string());
    let mode = tree.get(&path).map_or(0o644, |e| e.mode);
    tree.insert(&path, Entry::file(text.into_bytes(), mode, epoch));
    Ok(())
}

/// Marks /etc and /var as up to date with /usr (what systemd-update-done writes), so the
/// first boot does not rerun ldconfig, the hwdb and journal catalog rebuilds
/// (ConditionNeedsUpdate) that the image build already did. Every mtime is the epoch.
fn mark_updated(tree: &mut Tree, epoch: i64) {
    let text = format!(
        "# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the time this directory\n# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC={}\n",
        i128::from(epoch) * 1_000_000_000
    );
    for dir in ["etc", "var"] {
        tree.insert(
            &format!("{dir}/.updated"),
            Entry::file(text.clone().into_bytes(), 0o644, epoch),
        );
    }
}

const KEYGEN_UNIT: &str = "imagebuild-ssh-hostkeys.service";

/// Where Debian 13's first-boot key generation is moved early (see KEYGEN_EARLY).
const KEYGEN_DROP_IN: &str = "etc/systemd/system/sshd-keygen.service.d/10-imagebuild-early.conf";

/// Ordering for the unit that makes the host keys: as soon as the root filesystem is
/// writable, beside the rest of early boot, instead of after basic.target. The RSA key
/// alone takes 2.4-4.8 s under TCG, and sshd (so multi-user.target) waited for it at the
/// end of a chain it does not belong to; the keys need nothing but /etc/ssh writable and
/// the kernel's random numbers.
const KEYGEN_EARLY: &str = "DefaultDependencies=no\nAfter=systemd-remount-fs.service\nConflicts=shutdown.target\nBefore=shutdown.target\n";

/// SSH host keys are made at package install; every server flashed from the image would
/// share them. Remove them and generate fresh ones early on first boot, before sshd starts:
/// the `types` the profile names (`ssh-keygen -A` when that is all three), and sshd told to
/// load just those.
fn ssh_host_keys_on_first_boot(tree: &mut Tree, epoch: i64, types: &[HostKeyType]) {
    let keys: Vec<String> = tree
        .paths_under("etc/ssh")
        .into_iter()
        .filter(|p| p.starts_with("etc/ssh/ssh_host_"))
        .collect();
    for k in &keys {
        tree.remove(k);
    }
    if tree.get("usr/sbin/sshd").is_none() {
        return;
    }
    let all = HostKeyType::ALL.iter().all(|t| types.contains(t));
    let exec = if all {
        "ExecStart=/usr/bin/ssh-keygen -A\n".to_string()
    } else {
        let config: String = types
            .iter()
            .map(|t| format!("HostKey /etc/ssh/ssh_host_{}_key\n", t.name()))
            .collect();
        tree.insert(
            HOST_KEYS_CONFIG,
            Entry::file(
                format!("# Written by imagebuild: the host keys of this image ([ssh] host-keys).\n{config}")
                    .into_bytes(),
                0o644,
                epoch,
            ),
        );
        // A key left by an interrupted first boot is kept (ssh-keygen would ask before
        // overwriting it, and fail on no answer).
        types
            .iter()
            .map(|t| {
                let key = format!("/etc/ssh/ssh_host_{}_key", t.name());
                format!(
                    "ExecStart=/bin/sh -c 'test -e {key} || exec /usr/bin/ssh-keygen -q -t {} -N \"\" -f {key}'\n",
                    t.name()
                )
            })
            .collect()
    };
    // Debian 13's openssh-server has its own first-boot unit; older ones need ours.
    if tree
        .get("usr/lib/systemd/system/sshd-keygen.service")
        .is_some()
    {
        let service = if all {
            String::new()
        } else {
            format!("\n[Service]\nExecStart=\n{exec}")
        };
        let drop_in = format!(
            "# Written by imagebuild: make the host keys early in the boot.\n[Unit]\n{KEYGEN_EARLY}{service}"
        );
        tree.insert(
            KEYGEN_DROP_IN,
            Entry::file(drop_in.into_bytes(), 0o644, epoch),
        );
        return;
    }
    // The key made last (ssh-keygen -A makes ed25519 last): when it exists, all do.
    let last = types.last().copied().unwrap_or(HostKeyType::Ed25519).name();
    let unit = format!(
        "[Unit]\nDescription=Generate SSH host keys on first boot\n{KEYGEN_EARLY}Before=ssh.service\nConditionPathExists=!/etc/ssh/ssh_host_{last}_key\n\n[Service]\nType=oneshot\n{exec}\n[Install]\nWantedBy=ssh.service\n"
    );
    tree.insert(
        &format!("usr/lib/systemd/system/{KEYGEN_UNIT}"),
        Entry::file(unit.into_bytes(), 0o644, epoch),
    );
    let link = format!("/usr/lib/systemd/system/{KEYGEN_UNIT}");
    tree.insert(
        &format!("etc/systemd/system/ssh.service.wants/{KEYGEN_UNIT}"),
        Entry::symlink(&link, epoch),
    );
}

/// sshd's host key list when the profile names the types.
const HOST_KEYS_CONFIG: &str = "etc/ssh/sshd_config.d/10-imagebuild-host-keys.conf";

/// Where Debian's ssh.service loses its separate configuration test.
const SSHD_START_DROP_IN: &str = "etc/systemd/system/ssh.service.d/10-imagebuild-start.conf";

/// Debian's ssh.service runs `sshd -t` and then `sshd -D`, and both load the configuration
/// and every host key: under TCG the start took about 1 s, on the path to
/// multi-user.target. `sshd -D` refuses a bad configuration itself, with exit status 255,
/// which the unit's RestartPreventExitStatus= does not retry; so the first run is dropped
/// from start (reload still tests first). Only when the unit's one ExecStartPre= is that test.
fn sshd_starts_once(tree: &mut Tree, epoch: i64) -> Result<()> {
    let Some(unit) = tree.read("usr/lib/systemd/system/ssh.service")? else {
        return Ok(());
    };
    let unit = String::from_utf8_lossy(&unit);
    let pre: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecStartPre="))
        .collect();
    if pre != ["/usr/sbin/sshd -t"] {
        return Ok(());
    }
    let drop_in = "# Written by imagebuild: sshd -D checks its configuration itself (exit status 255,\n# not retried); the separate `sshd -t` before it only doubled the start.\n[Service]\nExecStartPre=\n";
    tree.insert(
        SSHD_START_DROP_IN,
        Entry::file(drop_in.as_bytes().to_vec(), 0o644, epoch),
    );
    Ok(())
}

/// An installed package, from the image's dpkg status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The packages dpkg lists as installed, sorted by name.
pub fn installed_packages(tree: &Tree) -> Result<Vec<Package>> {
    let status = tree.read("var/lib/dpkg/status")?.unwrap_or_default();
    Ok(parse_dpkg_status(&String::from_utf8_lossy(&status)))
}

pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let installed = field("Status").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package"), field("Version")) {
            out.push(Package {
                name,
                version,
                arch: field("Architecture").unwrap_or_default(),
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    out
}

/// Kernel versions with a /boot/vmlinuz-VERSION, newest (by version order) last.
pub fn kernel_versions(tree: &Tree) -> Vec<String> {
    let mut v: Vec<String> = tree
        .paths_under("boot")
        .iter()
        .filter_map(|p| p.strip_prefix("boot/vmlinuz-").map(str::to_owned))
        .filter(|v| !v.contains('/'))
        .collect();
    v.sort_by(|a, b| crate::boot::modules::compare_versions(a, b));
    v
}
