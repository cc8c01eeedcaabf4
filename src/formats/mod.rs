//! The formats a release is written in besides the raw image, each a deterministic
//! function of the raw image's bytes: two builds of one recipe give the same bytes in every
//! format, so each format's sha256 is as much the release's name as the raw one.
//!
//! | format    | file                   | for                                             |
//! |-----------|------------------------|-------------------------------------------------|
//! | `raw`     | `STEM.raw`             | flash, every hypervisor                         |
//! | `raw.zst` | `STEM.raw.zst`         | what pull, upload and remote flash move         |
//! | `qcow2`   | `STEM.qcow2`           | QEMU, libvirt, Proxmox, OpenStack               |
//! | `vhd`     | `STEM.vhd`             | Azure (page blob, Gen2), Hyper-V: fixed VHD     |
//! | `gce`     | `STEM.gce.tar.gz`      | Google Compute Engine: `disk.raw` in a tar.gz   |
//! | `vmdk`    | `STEM.vmdk`            | VMware, AWS import: streamOptimized             |
//!
//! qcow2 comes from `qemu-img convert`, which is deterministic; qemu-img's VHD and VMDK are
//! not (a timestamp, a random UUID or CID), so imagebuild writes those itself.

mod blocks;
mod gce;
mod vhd;
mod vmdk;
mod zst;

use std::path::Path;

use anyhow::Result;

use crate::host::Host;

pub use blocks::zero_aware_blocks;
pub use zst::write as write_zst;

/// One output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    RawZst,
    Qcow2,
    Vhd,
    Gce,
    Vmdk,
}

/// Every format, in the order a profile's list is written in.
pub const ALL: &[Format] = &[
    Format::Raw,
    Format::RawZst,
    Format::Qcow2,
    Format::Vhd,
    Format::Gce,
    Format::Vmdk,
];

impl Format {
    /// The name a profile's `formats` list uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Gce => "gce",
            Format::Vmdk => "vmdk",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        ALL.iter().copied().find(|f| f.name() == s)
    }

    /// What follows `STEM.` in the file's name.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Gce => "gce.tar.gz",
            f => f.name(),
        }
    }

    /// The file name of this format of the image `stem`.
    pub fn file_name(self, stem: &str) -> String {
        format!("{stem}.{}", self.extension())
    }

    /// QEMU's block driver for a file in this format, when QEMU boots it as it is.
    pub fn qemu_driver(self) -> Option<&'static str> {
        match self {
            Format::Raw => Some("raw"),
            Format::Qcow2 => Some("qcow2"),
            Format::Vhd => Some("vpc"),
            Format::Vmdk => Some("vmdk"),
            Format::RawZst | Format::Gce => None,
        }
    }

    /// The format of a file, by its name.
    pub fn of_path(p: &Path) -> Option<Format> {
        let name = p.file_name()?.to_str()?;
        ALL.iter()
            .copied()
            .filter(|f| name.ends_with(&format!(".{}", f.extension())))
            .max_by_key(|f| f.extension().len())
    }
}

/// What fixes the fields of a format that are not the disk's bytes (timestamps, UUIDs).
pub struct Stamp<'a> {
    /// The raw image's sha256: the seed of every id a format carries.
    pub image_sha256: &'a str,
    /// The recipe's source-date-epoch: every timestamp a format carries.
    pub epoch: i64,
    /// The file's own name (the VMDK descriptor names its extent).
    pub file_name: &'a str,
}

/// Writes `raw` in `format` to `out`.
pub fn write(host: &Host, format: Format, raw: &Path, out: &Path, stamp: &Stamp) -> Result<()> {
    match format {
        Format::Raw => anyhow::bail!("the raw image is the build's own output"),
        Format::Qcow2 => {
            host.run(
                std::process::Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(raw)
                    .arg(out),
            )?;
            Ok(())
        }
        Format::RawZst => zst::write(raw, out),
        Format::Vhd => vhd::write(raw, out, stamp),
        Format::Gce => gce::write(raw, out, stamp),
        Format::Vmdk => vmdk::write(raw, out, stamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        for f in ALL {
            assert_eq!(Format::parse(f.name()), Some(*f));
            let file = f.file_name("prod-1.0");
            assert_eq!(Format::of_path(Path::new(&file)), Some(*f), "{file}");
        }
        assert_eq!(Format::parse("vhdx"), None);
        assert_eq!(Format::Gce.file_name("a"), "a.gce.tar.gz");
    }
}
