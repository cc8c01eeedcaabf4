//! The GPT as flash needs it: read the primary table from a disk's first sectors, write it
//! for a disk of another size (the backup header and entries moved to the disk's end, kept
//! partitions added), and undo that to get the image's own first MiB back from what a
//! target holds. 512-byte sectors, as imagebuild writes images.

use anyhow::{Result, bail};

pub const SECTOR: u64 = 512;
/// Protective MBR, primary header and a 128-entry array: LBA 0 to 33.
pub const PRIMARY_BYTES: usize = 34 * SECTOR as usize;
/// The backup: the entry array and the header, the disk's last 33 sectors.
pub const BACKUP_BYTES: usize = 33 * SECTOR as usize;
const HEADER: usize = SECTOR as usize;
const HEADER_SIZE: usize = 92;
const ENTRY_SIZE: usize = 128;

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 0-based slot in the entry array (partition number - 1).
    pub slot: usize,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
    /// The entry's 128 bytes as stored.
    pub raw: [u8; ENTRY_SIZE],
}

impl Entry {
    /// Bytes `[start, end)` of the disk the partition covers.
    pub fn bytes(&self) -> std::ops::Range<u64> {
        self.first_lba * SECTOR..(self.last_lba + 1) * SECTOR
    }
}

/// A primary GPT read from a disk's first [`PRIMARY_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// LBA 0 to 33 as read.
    raw: Vec<u8>,
    pub alternate_lba: u64,
    pub last_usable: u64,
    pub entries: Vec<Entry>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    // OK to unwrap: callers pass offsets inside checked slices.
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    // OK to unwrap: callers pass offsets inside checked slices.
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the entry array's and then the header's CRC32 of a header at `h` in `b`
/// whose entries are `entries`.
fn seal(header: &mut [u8], entries: &[u8]) {
    put_u32(header, 88, crc32fast::hash(entries));
    put_u32(header, 16, 0);
    let crc = crc32fast::hash(&header[..HEADER_SIZE]);
    put_u32(header, 16, crc);
}

impl Gpt {
    /// Parses the primary GPT in `head` (at least [`PRIMARY_BYTES`]); an error says what
    /// is wrong (no signature, a bad CRC, a layout imagebuild does not write).
    pub fn parse(head: &[u8]) -> Result<Gpt> {
        if head.len() < PRIMARY_BYTES {
            bail!("too short for a GPT ({} bytes)", head.len());
        }
        let h = &head[HEADER..HEADER + HEADER_SIZE];
        if &h[..8] != b"EFI PART" {
            bail!("no GPT signature in sector 1");
        }
        let mut check = h.to_vec();
        put_u32(&mut check, 16, 0);
        if crc32fast::hash(&check) != u32_at(h, 16) {
            bail!("the GPT header's CRC32 is wrong");
        }
        let (entry_lba, count, size) = (
            u64_at(h, 72),
            u32_at(h, 80) as usize,
            u32_at(h, 84) as usize,
        );
        if u32_at(h, 12) as usize != HEADER_SIZE
            || entry_lba != 2
            || size != ENTRY_SIZE
            || count != 128
        {
            bail!(
                "a GPT layout imagebuild does not write (entries at LBA {entry_lba}, {count} of {size} bytes)"
            );
        }
        let array = &head[2 * HEADER..2 * HEADER + count * size];
        if crc32fast::hash(array) != u32_at(h, 88) {
            bail!("the GPT entry array's CRC32 is wrong");
        }
        let entries = array
            .chunks(ENTRY_SIZE)
            .enumerate()
            .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
            .map(|(slot, e)| {
                let units: Vec<u16> = e[56..]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|u| *u != 0)
                    .collect();
                Entry {
                    slot,
                    first_lba: u64_at(e, 32),
                    last_lba: u64_at(e, 40),
                    name: String::from_utf16_lossy(&units),
                    // OK to unwrap: chunks of ENTRY_SIZE.
                    raw: e.try_into().unwrap(),
                }
            })
            .collect();
        Ok(Gpt {
            raw: head[..PRIMARY_BYTES].to_vec(),
            alternate_lba: u64_at(h, 32),
            last_usable: u64_at(h, 48),
            entries,
        })
    }

    /// The end (exclusive byte offset) of the last partition.
    pub fn data_end(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.bytes().end)
            .max()
            .unwrap_or(SECTOR * 34)
    }

    /// LBA 0 to 33 for a disk of `disk_bytes` with `extra` entries added in their slots:
    /// the header's alternate LBA at the disk's last sector, the last usable LBA before the
    /// backup, the protective MBR's size, and both CRCs. With the disk's own size and no
    /// extra entries this gives back the table as read.
    pub fn primary_for(&self, disk_bytes: u64, last_usable: u64, extra: &[Entry]) -> Vec<u8> {
        let mut out = self.raw.clone();
        let last_lba = disk_bytes / SECTOR - 1;
        let (mbr, rest) = out.split_at_mut(HEADER);
        let (header, entries) = rest.split_at_mut(HEADER);
        for e in extra {
            let at = e.slot * ENTRY_SIZE;
            entries[at..at + ENTRY_SIZE].copy_from_slice(&e.raw);
        }
        put_u64(header, 32, last_lba);
        put_u64(header, 48, last_usable);
        seal(header, &entries[..128 * ENTRY_SIZE]);
        put_u32(mbr, 458, u32::try_from(last_lba).unwrap_or(u32::MAX));
        out
    }

    /// The backup for the table `primary` (from [`Gpt::primary_for`]) on a disk of
    /// `disk_bytes`: the entry array, then the header, for its last 33 sectors.
    pub fn backup_for(primary: &[u8], disk_bytes: u64) -> Vec<u8> {
        let last_lba = disk_bytes / SECTOR - 1;
        let entries = &primary[2 * HEADER..PRIMARY_BYTES];
        let mut out = entries.to_vec();
        let mut header = primary[HEADER..2 * HEADER].to_vec();
        put_u64(&mut header, 24, last_lba);
        put_u64(&mut header, 32, 1);
        put_u64(&mut header, 72, last_lba - 32);
        seal(&mut header, entries);
        out.extend_from_slice(&header);
        out
    }

    /// Slots free in this table, first to last.
    pub fn free_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..128).filter(|s| !self.entries.iter().any(|e| e.slot == *s))
    }

    /// This table with the entries in `slots` cleared (the entries a flash added back).
    pub fn without(&self, slots: &[usize]) -> Gpt {
        let mut g = self.clone();
        for s in slots {
            let at = 2 * HEADER + s * ENTRY_SIZE;
            g.raw[at..at + ENTRY_SIZE].fill(0);
        }
        g.entries.retain(|e| !slots.contains(&e.slot));
        g
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::disk::{self, Sizing};
    use crate::ids::ImageIds;
    use crate::profile::Arch;
    use crate::size::MIB;
    use std::fs::File;

    /// A disk image file with imagebuild's GPT; returns its bytes.
    pub(crate) fn image_bytes(root: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let ids = ImageIds::derive("gpt-test");
        let layout = disk::plan(Arch::Amd64, &ids, 4 * MIB, Sizing::Root(root)).unwrap();
        let p = dir.path().join("i.raw");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        disk::write_partition_table(&f, &layout, ids.disk_guid).unwrap();
        std::fs::read(p).unwrap()
    }

    #[test]
    fn reads_what_the_build_writes() {
        let img = image_bytes(8 * MIB);
        let len = img.len() as u64;
        let g = Gpt::parse(&img).unwrap();
        assert_eq!(g.entries.len(), 2);
        assert_eq!(
            (g.entries[0].name.as_str(), g.entries[1].name.as_str()),
            ("esp", "root-x86-64")
        );
        assert_eq!(g.alternate_lba, len / SECTOR - 1);
        assert_eq!(g.data_end(), len - MIB);
        // Its own size and nothing added: the same table, and its backup as written.
        assert_eq!(g.primary_for(len, g.last_usable, &[]), img[..PRIMARY_BYTES]);
        assert_eq!(Gpt::backup_for(&img, len), img[img.len() - BACKUP_BYTES..]);
    }

    #[test]
    fn a_larger_disk_gets_a_table_that_gpt_readers_accept() {
        let img = image_bytes(8 * MIB);
        let g = Gpt::parse(&img).unwrap();
        let big = 64 * MIB;
        let head = g.primary_for(big, big / SECTOR - 34, &[]);
        let mut disk = vec![0u8; big as usize];
        disk[..img.len()].copy_from_slice(&img);
        disk[img.len() - BACKUP_BYTES..img.len()].fill(0);
        disk[..PRIMARY_BYTES].copy_from_slice(&head);
        let tail = Gpt::backup_for(&head, big);
        let n = disk.len();
        disk[n - BACKUP_BYTES..].copy_from_slice(&tail);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d"), &disk).unwrap();
        let parts = disk::read_partitions(&File::open(dir.path().join("d")).unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        let out = std::process::Command::new("sfdisk")
            .arg("--verify")
            .arg(dir.path().join("d"))
            .output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("No errors detected"), "{text}");
        }
        let back = Gpt::parse(&disk).unwrap();
        assert_eq!(back.alternate_lba, big / SECTOR - 1);
        assert_eq!(
            back.primary_for(img.len() as u64, g.last_usable, &[]),
            img[..PRIMARY_BYTES]
        );
    }

    #[test]
    fn damage_is_named() {
        let mut img = image_bytes(8 * MIB);
        img[SECTOR as usize + 60] ^= 1;
        assert_eq!(
            Gpt::parse(&img).unwrap_err().to_string(),
            "the GPT header's CRC32 is wrong"
        );
        let mut img = image_bytes(8 * MIB);
        img[2 * SECTOR as usize + 5] ^= 1;
        assert_eq!(
            Gpt::parse(&img).unwrap_err().to_string(),
            "the GPT entry array's CRC32 is wrong"
        );
        assert_eq!(
            Gpt::parse(&vec![0u8; PRIMARY_BYTES])
                .unwrap_err()
                .to_string(),
            "no GPT signature in sector 1"
        );
    }
}
