//! Is an image file whole? Before anything reads an image (inspect, diff, verify, flash of a
//! path), its structure is checked against its length, so that a truncated copy or a
//! damaged table is named instead of read as a smaller, sound image:
//!
//! - the primary GPT header and its entry array (signature, CRC32s), and the backup header
//!   and its array where the primary says the backup is (the disk's last sector);
//! - the file's length against that backup's place: a file shorter than its GPT says was
//!   cut short;
//! - every partition ends inside the file;
//! - the root's ext4 superblock: the filesystem fits its partition.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::error::{Kind, UserError};

const SECTOR: u64 = 512;

/// What the first bytes say the file is, when it is no GPT disk at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Whole, as far as these checks see.
    Sound,
    /// Neither a primary nor a backup GPT header: not a disk image (or another format,
    /// named when known: "a qcow2 image").
    NotGpt(Option<&'static str>),
    /// A GPT disk with these problems, each a sentence.
    Damaged(Vec<String>),
}

/// A GPT header as read, with what is wrong with it.
struct Header {
    alternate_lba: u64,
    entries_lba: u64,
    entries: u64,
    entry_size: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read(file: &File, at: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, at).ok()?;
    Some(buf)
}

/// The GPT header at `lba`: None when there is no signature, Err(why) when it or its entry
/// array is damaged.
fn header(file: &File, lba: u64, which: &str) -> Option<Result<Header, String>> {
    let h = read(file, lba * SECTOR, SECTOR as usize)?;
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let size = u32_at(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Some(Err(format!(
            "the {which} GPT header (LBA {lba}) gives its size as {size} bytes"
        )));
    }
    let mut check = h[..size].to_vec();
    check[16..20].fill(0);
    if crc32fast::hash(&check) != u32_at(&h, 16) {
        return Some(Err(format!(
            "the {which} GPT header (LBA {lba}) has a wrong CRC32"
        )));
    }
    let hd = Header {
        alternate_lba: u64_at(&h, 32),
        entries_lba: u64_at(&h, 72),
        entries: u64::from(u32_at(&h, 80)),
        entry_size: u64::from(u32_at(&h, 84)),
    };
    let array_len = hd.entries.saturating_mul(hd.entry_size);
    if hd.entry_size < 128 || array_len > 1 << 20 {
        return Some(Err(format!(
            "the {which} GPT header (LBA {lba}) describes {} entries of {} bytes",
            hd.entries, hd.entry_size
        )));
    }
    let Some(array) = read(file, hd.entries_lba * SECTOR, array_len as usize) else {
        return Some(Err(format!(
            "the {which} GPT's entry array (LBA {}) is past the end of the file",
            hd.entries_lba
        )));
    };
    if crc32fast::hash(&array) != u32_at(&h, 88) {
        return Some(Err(format!(
            "the {which} GPT's entry array (LBA {}) has a wrong CRC32",
            hd.entries_lba
        )));
    }
    Some(Ok(hd))
}

/// The used entries of the array `hd` describes: (number, name, first byte, end byte).
fn partitions(file: &File, hd: &Header) -> Vec<(usize, String, u64, u64)> {
    let Some(array) = read(
        file,
        hd.entries_lba * SECTOR,
        (hd.entries * hd.entry_size) as usize,
    ) else {
        return Vec::new();
    };
    array
        .chunks(hd.entry_size as usize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
        .map(|(i, e)| {
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            (
                i + 1,
                String::from_utf16_lossy(&units),
                u64_at(e, 32) * SECTOR,
                (u64_at(e, 40) + 1) * SECTOR,
            )
        })
        .collect()
}

/// The bytes of the ext4 filesystem whose partition starts at `start`, from its
/// superblock; None when there is none there.
fn ext4_bytes(file: &File, start: u64) -> Option<u64> {
    let sb = read(file, start + 1024, 1024)?;
    let (block, blocks) = ext4_geometry(&sb).ok()?;
    Some(blocks.saturating_mul(block))
}

/// An ext4 superblock's block size and block count; Err when it is none.
fn ext4_geometry(sb: &[u8]) -> std::result::Result<(u64, u64), String> {
    if sb.len() < 1024 {
        return Err("no room for an ext4 superblock".into());
    }
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return Err("no ext4 superblock (magic)".into());
    }
    let log = u32_at(sb, 24);
    if log > 6 {
        return Err(format!("a block size of 2^{} bytes", 10 + log));
    }
    let block = 1024u64 << log;
    let hi = if u32_at(sb, 96) & 0x80 != 0 {
        u64::from(u32_at(sb, 0x150))
    } else {
        0
    };
    Ok((block, (hi << 32) | u64::from(u32_at(sb, 4))))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Checks `file` (its length `len`); see the module's text.
pub fn check(file: &File, len: u64) -> Verdict {
    let magic = read(file, 0, 4);
    if magic.as_deref() == Some(b"QFI\xfb") {
        return Verdict::NotGpt(Some("a qcow2 image"));
    }
    let last = (len / SECTOR).saturating_sub(1);
    let primary = header(file, 1, "primary");
    let mut problems = Vec::new();
    // Where the backup is: where the primary says, else the file's last sector.
    let backup_lba = match &primary {
        Some(Ok(h)) => h.alternate_lba,
        _ => last,
    };
    let backup = header(file, backup_lba, "backup");
    let table = match (&primary, &backup) {
        (None, None) if backup_lba <= last => return Verdict::NotGpt(None),
        (None, None) => None,
        (Some(Ok(p)), _) => Some(p),
        (_, Some(Ok(b))) => Some(b),
        _ => None,
    };
    match &primary {
        None => problems.push("it has no primary GPT header (LBA 1)".to_string()),
        Some(Err(e)) => problems.push(e.clone()),
        Some(Ok(_)) => {}
    }
    let wanted = (backup_lba + 1) * SECTOR;
    if backup_lba > last {
        problems.push(format!(
            "the file is {} ({len} bytes), its GPT says the disk is {} ({wanted} bytes): it was cut short",
            mib(len),
            mib(wanted)
        ));
    } else {
        match &backup {
            None => problems.push(format!(
                "it has no backup GPT header where the primary says (LBA {backup_lba})"
            )),
            Some(Err(e)) => problems.push(e.clone()),
            Some(Ok(_)) => {}
        }
    }
    if let Some(t) = table {
        for (n, name, start, end) in partitions(file, t) {
            if end > len {
                problems.push(format!(
                    "partition {n} ({name}) ends at byte {end}, past the end of the file ({len})"
                ));
                continue;
            }
            if let Some(fs) = ext4_bytes(file, start)
                && fs > end - start
            {
                problems.push(format!(
                    "the ext4 filesystem of partition {n} ({name}) is {} but its partition is {}",
                    mib(fs),
                    mib(end - start)
                ));
            }
        }
    }
    if problems.is_empty() {
        Verdict::Sound
    } else {
        Verdict::Damaged(problems)
    }
}

/// [`check`] as an error naming `path` and every problem; Ok for a sound image.
pub fn require_sound(file: &File, path: &Path) -> Result<()> {
    let len = file
        .metadata()
        .with_context(|| format!("reading image {}", path.display()))?
        .len();
    match check(file, len) {
        Verdict::Sound => {}
        Verdict::NotGpt(Some(format)) => {
            return Err(UserError::new(
                Kind::Corrupt,
                format!("{} is {format}, not a raw GPT disk image", path.display()),
            )
            .hint("give the .raw image of the release (qemu-img convert -O raw makes one)")
            .into());
        }
        Verdict::NotGpt(None) => {
            return Err(UserError::new(
                Kind::Corrupt,
                format!(
                    "{} is not a GPT disk image (no GPT header at its start or end)",
                    path.display()
                ),
            )
            .hint("give the .raw image of a release")
            .into());
        }
        Verdict::Damaged(problems) => {
            let mut msg = format!("{} is damaged:", path.display());
            for p in &problems {
                msg.push_str("\n  - ");
                msg.push_str(p);
            }
            return Err(UserError::new(Kind::Corrupt, msg)
                .hint(
                    "copy the image again from its release (compare its sha256 with \
                     SHA256SUMS); nothing read from this file can be trusted",
                )
                .into());
        }
    }
    Ok(())
}

/// Checks an ext4 superblock (the 1024 bytes at the filesystem's offset 1024) against the
/// `size` bytes the filesystem has, before ext4-view reads it: ext4-view sizes its tables
/// from these fields, and a damaged one made it ask for 68 GB and abort (found by the
/// `ext4` fuzz target). Err says what is impossible.
pub fn check_ext4_superblock(sb: &[u8], size: u64) -> std::result::Result<(), String> {
    let (block, blocks) = ext4_geometry(sb)?;
    let incompat = u32_at(sb, 96);
    if blocks.saturating_mul(block) > size {
        return Err(format!("{blocks} blocks of {block} bytes in {size} bytes"));
    }
    let per_group = u64::from(u32_at(sb, 0x20));
    let inodes_per_group = u64::from(u32_at(sb, 0x28));
    if per_group == 0 || per_group > 8 * block {
        return Err(format!("{per_group} blocks per group"));
    }
    if inodes_per_group == 0 || inodes_per_group > 8 * block {
        return Err(format!("{inodes_per_group} inodes per group"));
    }
    let groups = blocks.div_ceil(per_group);
    let inodes = u64::from(u32_at(sb, 0));
    if inodes > groups.saturating_mul(inodes_per_group) {
        return Err(format!(
            "{inodes} inodes in {groups} groups of {inodes_per_group}"
        ));
    }
    let inode_size = u64::from(u16::from_le_bytes([sb[0x58], sb[0x59]]));
    if u32_at(sb, 0x4c) >= 1 && !(128..=block).contains(&inode_size) {
        return Err(format!("inodes of {inode_size} bytes"));
    }
    if incompat & 0x80 != 0 {
        let desc = u64::from(u16::from_le_bytes([sb[0xfe], sb[0xff]]));
        if !(32..=1024).contains(&desc) || !desc.is_power_of_two() {
            return Err(format!("group descriptors of {desc} bytes"));
        }
    }
    Ok(())
}
