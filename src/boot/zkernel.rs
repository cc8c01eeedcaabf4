//! Compressed arm64 kernels in UKIs.
//!
//! Debian's arm64 kernel is a plain `Image` (about 30 MiB), and systemd-stub does not
//! decompress `.linux` (257 in trixie, 262 in forky and sid). So for an uncompressed arm64
//! `Image`, `.linux` holds imagebuild's loader (`efi/zkernel`, an EFI application built with
//! imagebuild) with the kernel zlib-compressed in its `.linuxz` section. systemd-stub starts the
//! loader as it would the kernel; the loader inflates the kernel, loads it with LoadImage,
//! passes on the command line and starts it. The kernel's bytes are unchanged.
//!
//! `.linuxz`: b"IBZK", u32 LE format version 1, u64 LE inflated length, zlib stream.

use std::io::{Read, Write};

use anyhow::{Context, Result, ensure};
use flate2::Compression;

use super::uki;

/// The loader, built for aarch64-unknown-uefi by build.rs.
pub const LOADER_AARCH64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zkernel.efi"));

const SECTION: &str = ".linuxz";
const MAGIC: &[u8; 4] = b"IBZK";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
/// The arm64 `Image` header: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst).
const ARM64_MAGIC_AT: usize = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";
/// zlib level. Debian's 6.12.107 cloud-arm64 Image (30.9 MB) on this project's build host:
/// level 6 gives 11.78 MB in 2.3 s, level 9 gives 11.75 MB in 4.0 s.
const LEVEL: u32 = 6;

/// Whether `linux` is an uncompressed arm64 kernel `Image` (an EFI zboot image or a bzImage
/// is not).
pub fn is_arm64_image(linux: &[u8]) -> bool {
    linux.get(ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4) == Some(ARM64_MAGIC)
}

/// The loader with `linux` compressed into its `.linuxz` section: what goes into `.linux`.
pub fn wrap(loader: &[u8], linux: &[u8]) -> Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(linux.len() / 2);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&VERSION.to_le_bytes());
    payload.extend_from_slice(&(linux.len() as u64).to_le_bytes());
    let mut z = flate2::write::ZlibEncoder::new(payload, Compression::new(LEVEL));
    z.write_all(linux).context("compressing the kernel")?;
    let payload = z.finish().context("compressing the kernel")?;
    uki::append_sections(loader, &[(SECTION, &payload)])
        .context("adding the compressed kernel to the zkernel loader")
}

/// The kernel inside a wrapped `.linux`, or `None` if `linux` is not one.
pub fn unwrap(linux: &[u8]) -> Option<Vec<u8>> {
    let (_, payload) = uki::read_uki_sections(linux)
        .ok()?
        .into_iter()
        .find(|(name, _)| name == SECTION)?;
    let (len, stream) = parse_header(&payload).ok()?;
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(stream)
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() == len).then_some(out)
}

fn parse_header(payload: &[u8]) -> Result<(usize, &[u8])> {
    ensure!(
        payload.len() >= HEADER_LEN && payload[..4] == *MAGIC,
        "{SECTION} does not start with {MAGIC:?}"
    );
    let version = u32::from_le_bytes(payload[4..8].try_into()?);
    ensure!(
        version == VERSION,
        "{SECTION} format {version} is not {VERSION}"
    );
    let len = usize::try_from(u64::from_le_bytes(payload[8..16].try_into()?))?;
    Ok((len, &payload[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_image(len: usize) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        k[ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4].copy_from_slice(ARM64_MAGIC);
        k
    }

    #[test]
    fn the_loader_is_an_aarch64_efi_application() {
        let pe = goblin::pe::PE::parse(LOADER_AARCH64).unwrap();
        assert_eq!(
            pe.header.coff_header.machine,
            goblin::pe::header::COFF_MACHINE_ARM64
        );
        let opt = pe.header.optional_header.unwrap();
        assert_eq!(opt.windows_fields.subsystem, 10, "EFI application");
        // systemd-stub refuses a .linux below 1 ("Bad kernel image: Unsupported").
        assert!(opt.windows_fields.major_image_version >= 1);
        assert!(!pe.sections.iter().any(|s| s.name().unwrap() == SECTION));
    }

    #[test]
    fn wraps_and_unwraps_a_kernel_smaller_and_reproducibly() {
        let kernel = fake_image(3 << 20);
        let wrapped = wrap(LOADER_AARCH64, &kernel).unwrap();
        assert!(wrapped.len() < kernel.len() / 4, "{} bytes", wrapped.len());
        assert_eq!(wrap(LOADER_AARCH64, &kernel).unwrap(), wrapped);
        assert_eq!(unwrap(&wrapped).unwrap(), kernel);
        // The loader's own sections are kept, with .linuxz after them, inside SizeOfImage.
        let pe = goblin::pe::PE::parse(&wrapped).unwrap();
        let names: Vec<_> = pe
            .sections
            .iter()
            .map(|s| s.name().unwrap().to_string())
            .collect();
        assert_eq!(names.last().unwrap(), SECTION);
        assert!(names.contains(&".text".to_string()) && names.contains(&".reloc".to_string()));
        let last = pe.sections.last().unwrap();
        let size_of_image = pe
            .header
            .optional_header
            .unwrap()
            .windows_fields
            .size_of_image;
        assert!(last.virtual_address + last.virtual_size <= size_of_image);
    }

    #[test]
    fn only_plain_arm64_images_are_wrapped() {
        assert!(is_arm64_image(&fake_image(4096)));
        let mut bzimage = vec![0u8; 4096];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(!is_arm64_image(&bzimage));
        assert!(!is_arm64_image(b"short"));
    }

    #[test]
    fn a_corrupt_payload_does_not_unwrap() {
        let kernel = fake_image(1 << 20);
        let mut wrapped = wrap(LOADER_AARCH64, &kernel).unwrap();
        let pe = goblin::pe::PE::parse(&wrapped).unwrap();
        let linuxz = pe.sections.last().unwrap();
        assert_eq!(linuxz.name().unwrap(), SECTION);
        // A byte in the middle of the zlib stream, past the 16-byte header.
        let at =
            linuxz.pointer_to_raw_data as usize + HEADER_LEN + linuxz.virtual_size as usize / 2;
        wrapped[at] ^= 0xff;
        assert_eq!(unwrap(&wrapped), None);
        assert_eq!(unwrap(LOADER_AARCH64), None);
    }
}
