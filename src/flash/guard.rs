//! The guard rails: from the facts a machine gives about its disks (see [`super::facts`]),
//! whether a target may be overwritten, and if not, every reason why. The same code judges
//! this machine's disks and a rescue system's.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::facts::{Block, Facts};
use crate::size::Bytes;

/// A whole disk that passed the guard rails, as it is shown before it is overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// As the user named it.
    pub given: String,
    /// `/dev/NAME`.
    pub dev: String,
    pub model: String,
    pub serial: String,
    pub size: u64,
    pub removable: bool,
    /// The disk's `/dev/disk/by-id` links.
    pub by_id: Vec<String>,
    /// What is on it now: one line per partition.
    pub partitions: Vec<String>,
}

/// Judges `given` (as the user named it) against `facts`: the disk, or every reason it
/// must not be written. `image_len` is the image's size; `image_dev` the `major:minor` of
/// the filesystem holding the image file, when the image is on this machine.
pub fn check(
    facts: &Facts,
    given: &str,
    image_len: u64,
    image_dev: Option<&str>,
) -> Result<Disk, Vec<String>> {
    let name = facts.target.strip_prefix("/dev/").unwrap_or(&facts.target);
    let Some(block) = facts.blocks.get(name) else {
        return Err(vec![format!(
            "{} is not a block device this machine has (/sys/class/block has no {name})",
            facts.target
        )]);
    };
    let mut why = Vec::new();
    if let Some(disk) = &block.parent {
        why.push(format!(
            "{} is a partition of /dev/{disk}, not a whole disk: flash writes whole disks \
             (name /dev/{disk} to replace everything on it)",
            facts.target
        ));
    }
    let listed = facts.listed.get(name);
    if listed.is_some_and(|l| l.kind == "rom") {
        why.push(format!("{} is an optical drive", facts.target));
    }
    if block.read_only {
        why.push(format!(
            "{} is read-only (/sys/block/{name}/ro is 1)",
            facts.target
        ));
    }
    let size = facts.size.unwrap_or(block.size);
    if size < image_len {
        why.push(format!(
            "{} is smaller than the image ({} < {})",
            facts.target,
            Bytes(size),
            Bytes(image_len)
        ));
    }
    if let Some(ss) = facts.sector_size.filter(|s| *s != 512) {
        why.push(format!(
            "{} has {ss}-byte logical sectors; imagebuild's images are laid out for 512",
            facts.target
        ));
    }
    let family = family(facts, name);
    why.extend(in_use(facts, &family, image_dev));
    if !why.is_empty() {
        return Err(why);
    }
    Ok(describe(facts, given, block, size))
}

/// The disk, its partitions, and everything built on them (holders, recursively).
fn family(facts: &Facts, name: &str) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = [name.to_string()].into();
    set.extend(
        facts
            .blocks
            .values()
            .filter(|b| b.parent.as_deref() == Some(name))
            .map(|b| b.name.clone()),
    );
    let mut todo: Vec<String> = set.iter().cloned().collect();
    while let Some(n) = todo.pop() {
        for h in facts
            .blocks
            .get(&n)
            .map(|b| b.holders.clone())
            .unwrap_or_default()
        {
            if set.insert(h.clone()) {
                todo.push(h);
            }
        }
    }
    set
}

/// Why the disk is in use: mounts, swap, holders, the image itself.
fn in_use(facts: &Facts, family: &BTreeSet<String>, image_dev: Option<&str>) -> Vec<String> {
    let mut why = Vec::new();
    let shown = |k: &str| {
        facts
            .listed
            .get(k)
            .map_or_else(|| format!("/dev/{k}"), |l| l.path.clone())
    };
    for m in &facts.mounts {
        let Some(k) = facts.kname_of(&m.source) else {
            continue;
        };
        if !family.contains(&k) {
            continue;
        }
        if m.target == "/" {
            why.push(format!(
                "it holds the running system's root filesystem (/ is {})",
                shown(&k)
            ));
        } else {
            why.push(format!("{} is mounted at {}", shown(&k), m.target));
        }
    }
    for s in &facts.swaps {
        if let Some(k) = facts.kname_of(s).filter(|k| family.contains(k)) {
            why.push(format!("{} is in use as swap", shown(&k)));
        }
    }
    for member in family {
        let Some(b) = facts.blocks.get(member) else {
            continue;
        };
        for h in &b.holders {
            let what = facts.listed.get(h).map_or_else(
                || "device-mapper, md or another holder".to_string(),
                |l| format!("{} {}", l.kind, l.path),
            );
            why.push(format!("{} is held by {h} ({what})", shown(member)));
        }
    }
    if let Some(dev) = image_dev {
        let holds_image = family
            .iter()
            .filter_map(|k| facts.blocks.get(k))
            .any(|b: &Block| b.dev == dev);
        if holds_image {
            why.push("it holds the image file being flashed".to_string());
        }
    }
    why
}

fn describe(facts: &Facts, given: &str, block: &Block, size: u64) -> Disk {
    let name = &block.name;
    let listed = facts.listed.get(name).cloned().unwrap_or_default();
    let dev = format!("/dev/{name}");
    let by_id = facts
        .by_id
        .iter()
        .filter(|(_, to)| *to == dev)
        .map(|(link, _)| link.clone())
        .collect();
    let partitions = facts
        .blocks
        .values()
        .filter(|b| b.parent.as_deref() == Some(name))
        .map(|b| {
            let l = facts.listed.get(&b.name).cloned().unwrap_or_default();
            let path = if l.path.is_empty() {
                format!("/dev/{}", b.name)
            } else {
                l.path.clone()
            };
            let mut s = format!("{path} {}", Bytes(b.size));
            for (k, v) in [
                ("", &l.fstype),
                ("label ", &l.label),
                ("name ", &l.partlabel),
            ] {
                if !v.is_empty() {
                    // Writing to a String cannot fail.
                    let _ = write!(s, ", {k}{v}");
                }
            }
            s
        })
        .collect();
    Disk {
        given: given.to_string(),
        dev,
        model: listed.model,
        serial: listed.serial,
        size,
        removable: block.removable,
        by_id,
        partitions,
    }
}

impl Disk {
    /// The lines shown before the user confirms.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let arrow = if self.given == self.dev {
            String::new()
        } else {
            format!(" ({})", self.given)
        };
        let _ = writeln!(s, "target: {}{arrow}", self.dev);
        let model = if self.model.is_empty() {
            "unknown model"
        } else {
            &self.model
        };
        let serial = if self.serial.is_empty() {
            "none"
        } else {
            &self.serial
        };
        let rm = if self.removable { ", removable" } else { "" };
        let _ = writeln!(s, "  {model}, serial {serial}, {}{rm}", Bytes(self.size));
        if let Some(id) = self.by_id.first() {
            let _ = writeln!(s, "  {id}");
        }
        if self.partitions.is_empty() {
            s.push_str("  no partitions now\n");
        } else {
            for p in &self.partitions {
                let _ = writeln!(s, "  now: {p}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::MIB;

    const IMAGE: u64 = 656 * MIB;

    fn judge(probe: &str, image_dev: Option<&str>) -> Result<Disk, Vec<String>> {
        let facts = Facts::parse(probe).unwrap();
        let given = facts.target.clone();
        check(&facts, &given, IMAGE, image_dev)
    }

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/flash/", $name, ".probe"))
        };
    }

    #[test]
    fn the_machines_own_root_disk_is_refused() {
        let why = judge(fixture!("host-root"), None).unwrap_err();
        assert_eq!(
            why,
            ["it holds the running system's root filesystem (/ is /dev/vda)"]
        );
    }

    #[test]
    fn a_disk_with_a_mounted_partition_is_refused() {
        let why = judge(fixture!("mounted"), None).unwrap_err();
        assert_eq!(why, ["/dev/loop0p2 is mounted at /mnt/imagebuild-fixture"]);
    }

    #[test]
    fn a_partition_is_not_a_disk() {
        let why = judge(fixture!("partition"), None).unwrap_err();
        assert_eq!(
            why[0],
            "/dev/loop0p2 is a partition of /dev/loop0, not a whole disk: flash writes whole \
             disks (name /dev/loop0 to replace everything on it)"
        );
        assert!(why.contains(&"/dev/loop0p2 is mounted at /mnt/imagebuild-fixture".to_string()));
        assert!(why[0].contains("partition"));
    }

    #[test]
    fn swap_read_only_small_and_held_disks_are_refused() {
        let swap = judge(fixture!("swap"), None).unwrap_err();
        assert_eq!(swap, ["/dev/loop1 is in use as swap"]);
        let ro = judge(fixture!("read-only"), None).unwrap_err();
        assert!(
            ro.len() == 1 && ro[0].ends_with("is read-only (/sys/block/loop2/ro is 1)"),
            "{ro:?}"
        );
        let small = judge(fixture!("too-small"), None).unwrap_err();
        assert_eq!(
            small,
            ["/dev/loop3 is smaller than the image (64.0 MiB < 656.0 MiB)"]
        );
        let held = judge(fixture!("holder"), None).unwrap_err();
        assert_eq!(
            held,
            ["/dev/loop0p2 is held by dm-0 (lvm /dev/mapper/vg-srv)"]
        );
    }

    #[test]
    fn a_free_disk_passes_and_is_described() {
        let disk = judge(fixture!("free"), None).unwrap();
        assert_eq!((disk.dev.as_str(), disk.size), ("/dev/loop0", 2 << 30));
        let text = disk.describe();
        assert!(
            text.starts_with("target: /dev/loop0\n  unknown model, serial none, 2.00 GiB\n"),
            "{text}"
        );
        // Without udev (where these were recorded) lsblk knows no filesystem types or labels.
        assert!(
            text.contains("  now: /dev/loop0p1 128.0 MiB\n  now: /dev/loop0p2 526.0 MiB\n"),
            "{text}"
        );
        // The image file on one of its partitions makes it busy.
        let why = judge(fixture!("free"), Some("259:1")).unwrap_err();
        assert_eq!(why, ["it holds the image file being flashed"]);
        // Its first sectors hold the image's GPT.
        let facts = Facts::parse(fixture!("free")).unwrap();
        let gpt = super::super::gpt::Gpt::parse(&facts.head).unwrap();
        assert_eq!(gpt.entries.len(), 2);
        assert!(facts.tools.iter().any(|t| t == "sha256sum"));
    }

    #[test]
    fn an_unknown_device_is_refused() {
        let mut facts = Facts::parse(fixture!("free")).unwrap();
        facts.target = "/dev/sdz".into();
        let why = check(&facts, "/dev/sdz", IMAGE, None).unwrap_err();
        assert_eq!(
            why,
            ["/dev/sdz is not a block device this machine has (/sys/class/block has no sdz)"]
        );
    }
}
