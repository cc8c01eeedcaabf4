//! Fixed VHD (Azure, Hyper-V): the raw disk, its size rounded up to a whole MiB, then the
//! 512-byte `conectix` footer of the Virtual Hard Disk Image Format Specification. The
//! footer's time is the recipe's epoch and its UUID is derived from the image's sha256,
//! where qemu-img writes the clock and a random UUID.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::Stamp;

const MIB: u64 = 1 << 20;
/// Seconds from 1970-01-01 to 2000-01-01, VHD's epoch.
const VHD_EPOCH: i64 = 946_684_800;
const CREATOR: &[u8; 4] = b"imgb";
/// The CHS geometry: the largest there is, as `qemu-img convert -o force_size` writes it.
/// A CHS geometry cannot express most sizes; readers that size a disk by its geometry
/// (qemu, Virtual PC) take the footer's current size when the geometry is the maximum.
const GEOMETRY: (u16, u8, u8) = (65535, 16, 255);

pub fn write(raw: &Path, out: &Path, stamp: &Stamp) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    let size = len.div_ceil(MIB) * MIB;
    let dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    dst.set_len(size + 512)?;
    // OK to cast: MIB fits a usize.
    super::zero_aware_blocks(&src, len, MIB as usize, |i, b| {
        dst.write_all_at(b, i * MIB)
            .with_context(|| format!("writing {}", out.display()))
    })?;
    dst.write_all_at(&footer(size, stamp), size)?;
    dst.sync_all()?;
    Ok(())
}

/// The footer of a fixed disk of `size` bytes.
pub fn footer(size: u64, stamp: &Stamp) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    let t = (stamp.epoch - VHD_EPOCH).clamp(0, i64::from(u32::MAX));
    // OK to unwrap: clamped to u32's range.
    f[24..28].copy_from_slice(&u32::try_from(t).unwrap().to_be_bytes());
    f[28..32].copy_from_slice(CREATOR);
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = GEOMETRY;
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    let id = crate::ids::uuid(stamp.image_sha256, "vhd-unique-id");
    f[68..84].copy_from_slice(id.as_bytes());
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The one's complement of the sum of the footer's bytes, its checksum field read as 0.
pub fn checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &b)| a.wrapping_add(u32::from(b)));
    !sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_fields_and_checksum() {
        let stamp = Stamp {
            image_sha256: &"ab".repeat(32),
            epoch: 1_767_225_600,
            file_name: "x.vhd",
        };
        let f = footer(656 << 20, &stamp);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 656 << 20);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        assert_eq!(&f[56..60], &[0xff, 0xff, 16, 255]);
        assert_eq!(
            u32::from_be_bytes(f[24..28].try_into().unwrap()),
            1_767_225_600 - 946_684_800
        );
        assert_eq!(
            u32::from_be_bytes(f[64..68].try_into().unwrap()),
            checksum(&f)
        );
        // Another image, another UUID; the same image, the same footer.
        let other = Stamp {
            image_sha256: &"cd".repeat(32),
            ..stamp
        };
        assert_ne!(f[68..84], footer(656 << 20, &other)[68..84]);
        assert_eq!(f, footer(656 << 20, &stamp));
    }
}
