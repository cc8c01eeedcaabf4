//! What a machine knows about its disks, gathered by one probe script (`probe.sh`) that runs
//! the same way on this machine and, over ssh, in a rescue system: `/proc/mounts`,
//! `/proc/swaps`, a line per `/sys/class/block` device, `lsblk --json`, the by-id links,
//! the target's size and its first 34 sectors. Parsing is separate from gathering, so the
//! guard rails are tested on recorded fixtures.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The probe, run as `sh -c PROBE sh TARGET`.
pub const PROBE: &str = include_str!("probe.sh");

/// One `/sys/class/block` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    /// `major:minor`.
    pub dev: String,
    /// The whole disk a partition belongs to.
    pub parent: Option<String>,
    pub read_only: bool,
    /// Bytes.
    pub size: u64,
    pub removable: bool,
    /// Kernel names of the devices built on it (dm-0, md127).
    pub holders: Vec<String>,
}

/// One device as lsblk lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    pub kname: String,
    pub path: String,
    /// disk, part, lvm, crypt, raid1, loop, rom, ...
    pub kind: String,
    pub model: String,
    pub serial: String,
    pub mountpoint: String,
    pub fstype: String,
    pub label: String,
    pub partlabel: String,
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
}

/// Everything the probe printed, parsed.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The target as the machine resolves it (`/dev/nvme1n1` for a by-id link).
    pub target: String,
    pub mounts: Vec<Mount>,
    /// Device paths in use as swap.
    pub swaps: Vec<String>,
    pub blocks: BTreeMap<String, Block>,
    /// By kernel name.
    pub listed: BTreeMap<String, Listed>,
    /// `/dev/disk/by-id/...` -> the device it points to.
    pub by_id: Vec<(String, String)>,
    /// The target's size and logical sector size, from blockdev.
    pub size: Option<u64>,
    pub sector_size: Option<u64>,
    /// The target's first 34 sectors.
    pub head: Vec<u8>,
    /// Tools found on the machine (zstd, gzip, ...).
    pub tools: Vec<String>,
}

/// Splits the probe's output into its sections.
fn sections(out: &str) -> Result<BTreeMap<&str, &str>> {
    let mut map = BTreeMap::new();
    let mut rest = out;
    while let Some(start) = rest.find("==imagebuild:") {
        let after = &rest[start + "==imagebuild:".len()..];
        let Some(end) = after.find("==") else { break };
        let name = &after[..end];
        let body = after[end + 2..]
            .strip_prefix('\n')
            .unwrap_or(&after[end + 2..]);
        let next = body.find("==imagebuild:").unwrap_or(body.len());
        map.insert(name, &body[..next]);
        rest = &body[next..];
    }
    if !map.contains_key("end") {
        bail!("the disk probe's output is cut short (no end marker)");
    }
    Ok(map)
}

impl Facts {
    /// Parses the probe's whole output.
    pub fn parse(out: &str) -> Result<Facts> {
        let s = sections(out)?;
        let get = |k: &str| s.get(k).copied().unwrap_or("");
        let mut sizes = get("sizes").split_whitespace().map(str::parse::<u64>);
        Ok(Facts {
            target: get("target").trim().to_string(),
            mounts: parse_mounts(get("mounts")),
            swaps: parse_swaps(get("swaps")),
            blocks: parse_sys_block(get("sys-block"))?,
            listed: parse_lsblk(get("lsblk"))?,
            by_id: get("by-id")
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            size: sizes.next().and_then(Result::ok),
            sector_size: sizes.next().and_then(Result::ok),
            head: decode_base64(get("gpt")).context("decoding the target's first sectors")?,
            tools: get("tools")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }

    /// The kernel name of a device path (`/dev/sdb1`, `/dev/mapper/vg-root`), if known.
    pub fn kname_of(&self, path: &str) -> Option<String> {
        if let Some(l) = self.listed.values().find(|l| l.path == path) {
            return Some(l.kname.clone());
        }
        let name = path.strip_prefix("/dev/")?;
        self.blocks.contains_key(name).then(|| name.to_string())
    }
}

pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some(Mount {
                source: unescape(f.next()?),
                target: unescape(f.next()?),
                fstype: f.next()?.to_string(),
            })
        })
        .collect()
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|d| d.starts_with("/dev/"))
        .map(unescape)
        .collect()
}

/// `NAME MAJ:MIN PARTITION PARENT RO SIZE REMOVABLE HOLDERS` per line (see probe.sh).
pub fn parse_sys_block(text: &str) -> Result<BTreeMap<String, Block>> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [name, dev, part, parent, ro, size, rm, holders] = f[..] else {
            bail!("a /sys/block line the probe does not write: {line:?}");
        };
        let sectors: u64 = size.parse().with_context(|| format!("size in {line:?}"))?;
        out.insert(
            name.to_string(),
            Block {
                name: name.to_string(),
                dev: dev.to_string(),
                parent: (part == "1" && parent != "-").then(|| parent.to_string()),
                read_only: ro == "1",
                size: sectors * 512,
                removable: rm == "1",
                holders: holders
                    .split(',')
                    .filter(|h| !h.is_empty() && *h != "-")
                    .map(str::to_string)
                    .collect(),
            },
        );
    }
    Ok(out)
}

/// `lsblk --json --list` of any util-linux since 2.27: values may be strings, numbers,
/// booleans or null.
pub fn parse_lsblk(text: &str) -> Result<BTreeMap<String, Listed>> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let v: Value = serde_json::from_str(text).context("parsing lsblk --json")?;
    let s = |d: &Value, k: &str| match &d[k] {
        Value::String(s) => s.trim().to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = BTreeMap::new();
    for d in v["blockdevices"].as_array().into_iter().flatten() {
        let kname = s(d, "kname");
        let kname = if kname.is_empty() {
            s(d, "name")
        } else {
            kname
        };
        out.insert(
            kname.clone(),
            Listed {
                path: {
                    let p = s(d, "path");
                    if p.is_empty() {
                        format!("/dev/{kname}")
                    } else {
                        p
                    }
                },
                kname,
                kind: s(d, "type"),
                model: s(d, "model"),
                serial: s(d, "serial"),
                mountpoint: s(d, "mountpoint"),
                fstype: s(d, "fstype"),
                label: s(d, "label"),
                partlabel: s(d, "partlabel"),
            },
        );
    }
    Ok(out)
}

/// Standard base64 (what coreutils' base64 prints), whitespace ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // OK to cast: masked to 8 bits.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_mount_escapes() {
        assert_eq!(decode_base64("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(unescape("/mnt/my\\040disk"), "/mnt/my disk");
    }

    #[test]
    fn sections_need_the_end_marker() {
        let out = "==imagebuild:target==\n/dev/sdb\n==imagebuild:end==\n";
        assert_eq!(Facts::parse(out).unwrap().target, "/dev/sdb");
        assert!(Facts::parse("==imagebuild:target==\n/dev/sdb\n").is_err());
    }
}
