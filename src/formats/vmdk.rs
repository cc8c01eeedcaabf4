//! streamOptimized VMDK (VMware, AWS import), header version 3, as the VMware Virtual Disk
//! Format 1.1 specification lays it out: the header, the text descriptor, then each grain
//! (64 KiB) that is not all zeros as a zlib stream behind its grain marker, then the grain
//! tables, the grain directory, a footer (the header with the directory's offset) and the
//! end-of-stream marker. The descriptor's CID is derived from the image's sha256, where
//! qemu-img writes a random one; the compressor is the crate's own, not the host's zlib.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::Stamp;

const SECTOR: u64 = 512;
/// Sectors per grain: 64 KiB grains, as VMware and qemu write them.
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per table: one table covers 32 MiB.
const GTES: u64 = 512;
/// Sectors before the first grain: header, descriptor, padding.
const OVERHEAD: u64 = 128;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

pub fn write(raw: &Path, out: &Path, stamp: &Stamp) -> Result<()> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    let capacity = len.div_ceil(GRAIN) * GRAIN_SECTORS;
    let grains = capacity / GRAIN_SECTORS;
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = Sectors {
        inner: BufWriter::with_capacity(1 << 20, file),
        at: 0,
    };
    let descriptor = descriptor(capacity, stamp);
    let desc_sectors = (descriptor.len() as u64).div_ceil(SECTOR);
    w.put(&header(capacity, desc_sectors, u64::MAX))?;
    w.put(descriptor.as_bytes())?;
    w.zeros_to(OVERHEAD)?;

    // Grain table entries: the sector of each grain's marker, 0 for a grain of zeros.
    let mut gt = vec![0u32; usize::try_from(grains.div_ceil(GTES) * GTES)?];
    let mut grain = vec![0u8; usize::try_from(GRAIN)?];
    // OK to cast: GRAIN fits a usize.
    super::zero_aware_blocks(&src, len, GRAIN as usize, |i, b| {
        grain[..b.len()].copy_from_slice(b);
        grain[b.len()..].fill(0);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&grain)?;
        let data = z.finish()?;
        // OK to cast (below): i < grains <= len / 64 KiB.
        gt[i as usize] = u32::try_from(w.at).context("the VMDK grows past 2 TiB")?;
        let mut m = Vec::with_capacity(12 + data.len());
        m.extend_from_slice(&(i * GRAIN_SECTORS).to_le_bytes());
        m.extend_from_slice(&u32::try_from(data.len())?.to_le_bytes());
        m.extend_from_slice(&data);
        w.put(&m)?;
        Ok(())
    })?;

    let mut gd = Vec::new();
    for table in gt.chunks(usize::try_from(GTES)?) {
        w.put(&marker(GTES * 4 / SECTOR, MARKER_GT))?;
        gd.push(u32::try_from(w.at).context("the VMDK grows past 2 TiB")?);
        w.put(
            &table
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect::<Vec<_>>(),
        )?;
    }
    let gd_bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    w.put(&marker((gd_bytes.len() as u64).div_ceil(SECTOR), MARKER_GD))?;
    let gd_offset = w.at;
    w.put(&gd_bytes)?;
    w.put(&marker(1, MARKER_FOOTER))?;
    w.put(&header(capacity, desc_sectors, gd_offset))?;
    w.put(&marker(0, MARKER_EOS))?;
    let file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

/// The sparse extent header; `gd` is the grain directory's sector, or all ones ("at the
/// end") in the header that starts the stream.
fn header(capacity: u64, desc_sectors: u64, gd: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    // Valid newline test, compressed grains, markers.
    h[8..12].copy_from_slice(&0x0003_0001u32.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&desc_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&gd.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn descriptor(capacity: u64, stamp: &Stamp) -> String {
    let mut cid = crate::ids::u32_id(stamp.image_sha256, "vmdk-cid");
    if cid == u32::MAX {
        cid ^= 1; // ffffffff means "no parent"
    }
    let cylinders = (capacity / (255 * 63)).min(65535);
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\n# Extent description\nRW {capacity} SPARSE \"{}\"\n\n\
         # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n",
        stamp.file_name
    )
}

/// A writer that pads every record to whole sectors and knows its sector.
struct Sectors<W: Write> {
    inner: W,
    at: u64,
}

impl<W: Write> Sectors<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(b)?;
        let n = (b.len() as u64).div_ceil(SECTOR);
        // OK to cast: below one sector.
        let pad = (n * SECTOR - b.len() as u64) as usize;
        self.inner.write_all(&[0u8; 512][..pad])?;
        self.at += n;
        Ok(())
    }

    fn zeros_to(&mut self, sector: u64) -> std::io::Result<()> {
        while self.at < sector {
            self.put(&[0u8; 512])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_descriptor_are_fixed_by_the_image() {
        let stamp = Stamp {
            image_sha256: &"ab".repeat(32),
            epoch: 0,
            file_name: "p.vmdk",
        };
        let d = descriptor(1_343_488, &stamp);
        assert!(d.contains("RW 1343488 SPARSE \"p.vmdk\""), "{d}");
        assert!(d.contains("createType=\"streamOptimized\""));
        assert_eq!(d, descriptor(1_343_488, &stamp));
        let h = header(1_343_488, 1, u64::MAX);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 3);
    }
}
