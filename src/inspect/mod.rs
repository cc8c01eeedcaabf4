//! Reading images back without root and without mounting: the GPT (gpt), the ESP (fatfs)
//! and the root filesystem (ext4-view).
//!
//! `Image` opens the pieces; `report` describes one image (`imagebuild inspect`), `diff`
//! compares two (`imagebuild diff`). `rootfs` walks the root filesystem, `esp` reads the
//! boot files and `kernel` finds a kernel's version in its bytes.

pub mod diff;
pub mod esp;
pub mod integrity;
pub mod kernel;
pub mod report;
pub mod rootfs;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::disk::{self, ESP_TYPE, Region};
use crate::error::{Kind, UserError};
use crate::fs::fat::{self, EspFile};
use crate::profile::Arch;
use uuid::Uuid;

/// An image file opened for reading.
pub struct Image {
    file: File,
    pub disk_guid: Uuid,
    pub partitions: Vec<Region>,
}

/// Reads a partition of the image for ext4-view.
struct PartitionReader {
    file: File,
    start: u64,
    size: u64,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if start_byte + dst.len() as u64 > self.size {
            return Err("read past the end of the partition".into());
        }
        self.file.read_exact_at(dst, self.start + start_byte)?;
        Ok(())
    }
}

impl Image {
    pub fn open(path: &Path) -> Result<Image> {
        let file = File::open(path).with_context(|| format!("opening image {}", path.display()))?;
        integrity::require_sound(&file, path)?;
        let table = disk::read_table(&file).map_err(|e| {
            let msg = format!("{} is not a GPT disk image ({e:#})", path.display());
            UserError::new(Kind::Corrupt, msg)
                .hint("give the .raw image (imagebuild reads raw GPT images, not qcow2)")
        })?;
        Ok(Image {
            file,
            disk_guid: table.disk_guid,
            partitions: table.partitions,
        })
    }

    fn find(&self, f: impl Fn(&Region) -> bool, what: &str) -> Result<&Region> {
        self.partitions
            .iter()
            .find(|r| f(r))
            .with_context(|| format!("the image has no {what} partition"))
    }

    pub fn root_region(&self) -> Result<&Region> {
        let types = [disk::root_type(Arch::Amd64), disk::root_type(Arch::Arm64)];
        self.find(|r| types.contains(&r.type_guid), "root")
    }

    pub fn esp_region(&self) -> Result<&Region> {
        self.find(|r| r.type_guid == ESP_TYPE, "EFI system")
    }

    /// The root filesystem.
    pub fn root(&self) -> Result<ext4_view::Ext4> {
        let r = self.root_region()?;
        let mut sb = vec![0u8; 1024];
        self.file
            .read_exact_at(&mut sb, r.start + 1024)
            .context("reading the root filesystem's superblock")?;
        integrity::check_ext4_superblock(&sb, r.size).map_err(|why| {
            UserError::new(
                Kind::Corrupt,
                format!("the root filesystem is damaged: its superblock says {why}"),
            )
        })?;
        let reader = PartitionReader {
            file: self.file.try_clone()?,
            start: r.start,
            size: r.size,
        };
        ext4_view::Ext4::load(Box::new(reader)).context("reading the root filesystem")
    }

    /// Every file on the ESP, with contents.
    pub fn esp_files(&self) -> Result<Vec<EspFile>> {
        let r = self.esp_region()?;
        fat::read_esp(&self.file, r.start, r.size)
    }
}
