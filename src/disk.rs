//! The disk: GPT with a protective MBR, 1 MiB-aligned partitions (ESP, then root) with
//! the discoverable-partition type GUIDs, all GUIDs derived from the recipe.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};
use uuid::Uuid;

use crate::error::UserError;
use crate::ids::ImageIds;
use crate::profile::Arch;
use crate::size::{Bytes, MIB};

const SECTOR: u64 = 512;
const ALIGN: u64 = MIB;

pub const ESP_TYPE: Uuid = uuid::uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
const ROOT_X86_64: Uuid = uuid::uuid!("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
const ROOT_ARM64: Uuid = uuid::uuid!("B921B045-1DF0-41C3-AF44-4C6F280D3FAE");

/// The discoverable-partitions root type of `arch`.
pub fn root_type(arch: Arch) -> Uuid {
    match arch {
        Arch::Amd64 => ROOT_X86_64,
        Arch::Arm64 => ROOT_ARM64,
    }
}

/// A partition's place on the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub name: String,
    pub type_guid: Uuid,
    pub uuid: Uuid,
    /// Byte offset.
    pub start: u64,
    /// Bytes.
    pub size: u64,
}

/// Where everything goes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub disk_size: u64,
    pub esp: Region,
    pub root: Region,
}

/// How big the root partition must be, or how big the whole disk is.
pub enum Sizing {
    /// Root gets exactly this (already includes headroom).
    Root(u64),
    /// The whole disk is this; root gets what the ESP leaves, and must be at least `min_root`.
    Disk { size: u64, min_root: u64 },
}

/// Plans the partitions: [1 MiB GPT] [ESP] [root] [1 MiB backup GPT].
pub fn plan(arch: Arch, ids: &ImageIds, esp_size: u64, sizing: Sizing) -> Result<Layout> {
    let esp_size = Bytes(esp_size).align_up(ALIGN).0;
    let esp_start = ALIGN;
    let root_start = esp_start + esp_size;
    let (root_size, disk_size) = match sizing {
        Sizing::Root(r) => {
            let r = Bytes(r).align_up(ALIGN).0;
            (r, root_start + r + ALIGN)
        }
        Sizing::Disk { size, min_root } => {
            let size = Bytes(size).align_up(ALIGN).0;
            let room = size.saturating_sub(root_start + ALIGN);
            if room < min_root {
                let need = root_start + Bytes(min_root).align_up(ALIGN).0 + ALIGN;
                return Err(UserError::invalid(format!(
                    "image size {} is too small: the content needs {} (root filesystem {} plus ESP {} and partition tables)",
                    Bytes(size),
                    Bytes(need),
                    Bytes(min_root),
                    Bytes(esp_size)
                ))
                .hint(format!("set [image] size to at least \"{}M\", or to \"auto\"", need.div_ceil(MIB)))
                .into());
            }
            (room, size)
        }
    };
    Ok(Layout {
        disk_size,
        esp: Region {
            name: "esp".into(),
            type_guid: ESP_TYPE,
            uuid: ids.esp_partuuid,
            start: esp_start,
            size: esp_size,
        },
        root: Region {
            name: format!(
                "root-{}",
                if arch == Arch::Amd64 {
                    "x86-64"
                } else {
                    "arm64"
                }
            ),
            type_guid: root_type(arch),
            uuid: ids.root_partuuid,
            start: root_start,
            size: root_size,
        },
    })
}

/// Sizes `file` to the disk and writes the protective MBR and both GPT headers.
pub fn write_partition_table(file: &File, layout: &Layout, disk_guid: Uuid) -> Result<()> {
    file.set_len(layout.disk_size)
        .context("sizing the image file")?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(file, Some(disk_guid))
        .context("creating the GPT")?;
    let parts: BTreeMap<u32, Partition> = [(1, &layout.esp), (2, &layout.root)]
        .into_iter()
        .map(|(i, r)| (i, partition(r)))
        .collect();
    disk.update_partitions(parts)
        .context("adding partitions to the GPT")?;
    let mut file = disk.write().context("writing the GPT")?;
    let sectors = u32::try_from(layout.disk_size / SECTOR - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(sectors)
        .overwrite_lba0(&mut file)
        .context("writing the protective MBR")?;
    Ok(())
}

fn partition(r: &Region) -> Partition {
    Partition {
        part_type_guid: Type {
            guid: r.type_guid,
            os: OperatingSystem::None,
        },
        part_guid: r.uuid,
        first_lba: r.start / SECTOR,
        last_lba: (r.start + r.size) / SECTOR - 1,
        flags: 0,
        name: r.name.clone(),
    }
}

/// A partition table read back: the disk GUID and the used partitions, in table order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub disk_guid: Uuid,
    pub partitions: Vec<Region>,
}

/// Reads the partitions back (for inspect and tests).
pub fn read_partitions(file: &File) -> Result<Vec<Region>> {
    Ok(read_table(file)?.partitions)
}

/// Reads the GPT back: disk GUID and partitions.
pub fn read_table(file: &File) -> Result<Table> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open_from_device(file)
        .context("reading the GPT")?;
    let partitions = disk
        .partitions()
        .values()
        .filter(|p| p.is_used())
        .map(|p| Region {
            name: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            uuid: p.part_guid,
            start: p.first_lba * SECTOR,
            size: (p.last_lba + 1 - p.first_lba) * SECTOR,
        })
        .collect();
    Ok(Table {
        disk_guid: *disk.guid(),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::GIB;

    #[test]
    fn gpt_is_deterministic_aligned_and_readable() {
        let ids = ImageIds::derive("recipe");
        let layout = plan(Arch::Arm64, &ids, 64 * MIB, Sizing::Root(300 * MIB + 5)).unwrap();
        assert_eq!(layout.root.start % MIB, 0);
        assert_eq!(layout.root.size, 301 * MIB);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let p = dir.path().join(name);
            let f = File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            write_partition_table(&f, &layout, ids.disk_guid).unwrap();
            std::fs::read(p).unwrap()
        };
        let a = write("a.raw");
        assert_eq!(a, write("b.raw"), "same layout, same bytes");
        assert_eq!(a.len() as u64, layout.disk_size);
        assert_eq!(&a[510..512], &[0x55, 0xAA], "protective MBR signature");
        assert_eq!(a[450], 0xEE, "protective MBR partition type");
        let f = File::open(dir.path().join("a.raw")).unwrap();
        let parts = read_partitions(&f).unwrap();
        assert_eq!(parts, vec![layout.esp.clone(), layout.root.clone()]);
        assert_eq!(parts[1].type_guid, ROOT_ARM64);
        assert_eq!(read_table(&f).unwrap().disk_guid, ids.disk_guid);
    }

    #[test]
    fn fixed_size_too_small_gives_both_numbers() {
        let ids = ImageIds::derive("r");
        let err = plan(
            Arch::Amd64,
            &ids,
            128 * MIB,
            Sizing::Disk {
                size: GIB,
                min_root: GIB,
            },
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("image size 1.00 GiB is too small: the content needs 1.13 GiB"),
            "{msg}"
        );
    }
}
