//! The version of a Linux kernel, read from the bytes of its image (a UKI's `.linux`).
//!
//! In order: the x86 setup header's `kernel_version` string (bzImage); the
//! `Linux version ` banner in the bytes (an uncompressed arm64 `Image`); the banner in
//! the decompressed payload of an EFI zboot image (gzip or zstd), of a gzip file, or of
//! imagebuild's zkernel loader (`.linuxz`).

use std::io::Read;

/// "HdrS" at 0x202 marks the x86 boot protocol's setup header.
const SETUP_MAGIC_AT: usize = 0x202;
const SETUP_MAGIC: &[u8] = b"HdrS";
/// The boot protocol version; `kernel_version` exists from 2.00 on.
const SETUP_VERSION_AT: usize = 0x206;
/// `kernel_version`: a pointer to a NUL-terminated string, relative to 0x200.
const KERNEL_VERSION_PTR_AT: usize = 0x20E;
const KERNEL_VERSION_BASE: usize = 0x200;
/// The banner every kernel carries: "Linux version 6.12.57+deb13-amd64 (...) #1 SMP ...".
const BANNER: &[u8] = b"Linux version ";
/// An EFI zboot image: "MZ\0\0" then "zimg", payload offset and size, compression type.
const ZBOOT_MAGIC_AT: usize = 4;
const ZBOOT_MAGIC: &[u8] = b"zimg";
const ZBOOT_PAYLOAD_AT: usize = 8;
const ZBOOT_COMPRESSION_AT: usize = 0x18;
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// Most bytes decompressed while looking for the banner.
const MAX_DECOMPRESSED: u64 = 512 << 20;
/// Longest version string accepted.
const MAX_VERSION_LEN: usize = 128;

/// The kernel version (e.g. "6.12.57+deb13-amd64"), or `None` if the bytes do not say.
pub fn kernel_version(linux: &[u8]) -> Option<String> {
    setup_header_version(linux)
        .or_else(|| banner_version(linux))
        .or_else(|| banner_version(&decompressed(linux)?))
        .or_else(|| banner_version(&crate::boot::zkernel::unwrap(linux)?))
}

/// bzImage: the string at `kernel_version` + 0x200, up to its NUL; its first word.
fn setup_header_version(image: &[u8]) -> Option<String> {
    if image.get(SETUP_MAGIC_AT..SETUP_MAGIC_AT + 4)? != SETUP_MAGIC {
        return None;
    }
    if u16_at(image, SETUP_VERSION_AT)? < 0x0200 {
        return None;
    }
    let ptr = usize::from(u16_at(image, KERNEL_VERSION_PTR_AT)?);
    if ptr == 0 {
        return None;
    }
    let text = image.get(ptr + KERNEL_VERSION_BASE..)?;
    let end = text.iter().take(1024).position(|&b| b == 0)?;
    first_word(&text[..end])
}

/// The word after the first `Linux version ` that is followed by a version.
fn banner_version(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while let Some(at) = find(rest, BANNER) {
        rest = &rest[at + BANNER.len()..];
        if let Some(v) = first_word(rest) {
            return Some(v);
        }
    }
    None
}

/// The payload of an EFI zboot image (gzip or zstd), or a whole gzip file, decompressed.
fn decompressed(image: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if image.get(ZBOOT_MAGIC_AT..ZBOOT_MAGIC_AT + 4) == Some(ZBOOT_MAGIC) {
        let start = u32_at(image, ZBOOT_PAYLOAD_AT)? as usize;
        let len = u32_at(image, ZBOOT_PAYLOAD_AT + 4)? as usize;
        let payload = image.get(start..start.checked_add(len)?)?;
        let kind = image.get(ZBOOT_COMPRESSION_AT..ZBOOT_COMPRESSION_AT + 32)?;
        let kind = &kind[..kind.iter().position(|&b| b == 0).unwrap_or(kind.len())];
        match kind {
            b"gzip" => read_limited(flate2::read::GzDecoder::new(payload), &mut out),
            b"zstd" => read_limited(zstd::stream::read::Decoder::new(payload).ok()?, &mut out),
            _ => return None,
        }
    } else if image.starts_with(GZIP_MAGIC) {
        read_limited(flate2::read::GzDecoder::new(image), &mut out);
    } else {
        return None;
    }
    Some(out)
}

/// Reads up to `MAX_DECOMPRESSED` bytes; what was read before an error is kept (the
/// banner is near the start, a truncated or trailing-garbage stream still has it).
fn read_limited(r: impl Read, out: &mut Vec<u8>) {
    let _ = r.take(MAX_DECOMPRESSED).read_to_end(out);
}

/// The bytes up to the first whitespace, if they look like a version: a digit first,
/// printable ASCII, not too long.
fn first_word(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == 0)
        .unwrap_or(bytes.len());
    let word = &bytes[..end];
    let ok = word.first().is_some_and(u8::is_ascii_digit)
        && word.len() <= MAX_VERSION_LEN
        && word.iter().all(u8::is_ascii_graphic);
    // OK to unwrap: every byte is printable ASCII.
    ok.then(|| String::from_utf8(word.to_vec()).unwrap())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DEBIAN: &str = "6.12.57+deb13-amd64 (kernel@example.org) #1 SMP";

    /// A bzImage-like prefix: setup header with kernel_version pointing at `version`.
    fn bzimage(version: &str, ptr: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x2000];
        b[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        b[SETUP_MAGIC_AT..SETUP_MAGIC_AT + 4].copy_from_slice(SETUP_MAGIC);
        b[SETUP_VERSION_AT..SETUP_VERSION_AT + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b[KERNEL_VERSION_PTR_AT..KERNEL_VERSION_PTR_AT + 2].copy_from_slice(&ptr.to_le_bytes());
        let at = usize::from(ptr) + KERNEL_VERSION_BASE;
        b[at..at + version.len()].copy_from_slice(version.as_bytes());
        b
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn arm64_image() -> Vec<u8> {
        let mut b = vec![0x11u8; 4096];
        // A format string first: no version after it, so it is skipped.
        b.extend_from_slice(b"Linux version %s\0");
        b.extend_from_slice(b"Linux version 6.12.57+deb13-arm64 (debian-kernel@lists) #1\0");
        b.extend_from_slice(&[0x22; 100]);
        b
    }

    #[test]
    fn bzimage_setup_header() {
        let b = bzimage(DEBIAN, 0x1c0);
        assert_eq!(kernel_version(&b).as_deref(), Some("6.12.57+deb13-amd64"));
    }

    #[test]
    fn bzimage_pointer_past_the_end_falls_back_to_the_banner() {
        let mut b = bzimage("", 0x100);
        b[KERNEL_VERSION_PTR_AT..KERNEL_VERSION_PTR_AT + 2]
            .copy_from_slice(&0xfff0u16.to_le_bytes());
        assert_eq!(kernel_version(&b), None);
        b.extend_from_slice(b"Linux version 6.1.0-9-amd64 (x)");
        assert_eq!(kernel_version(&b).as_deref(), Some("6.1.0-9-amd64"));
    }

    #[test]
    fn banner_in_a_kernel_behind_the_zkernel_loader() {
        use crate::boot::zkernel;
        let wrapped = zkernel::wrap(zkernel::LOADER_AARCH64, &arm64_image()).unwrap();
        assert_eq!(banner_version(&wrapped), None, "the banner is compressed");
        assert_eq!(
            kernel_version(&wrapped).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
    }

    #[test]
    fn banner_in_an_uncompressed_image() {
        assert_eq!(
            kernel_version(&arm64_image()).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
    }

    #[test]
    fn banner_in_a_gzip_file_and_a_zboot_image() {
        let gz = gzip(&arm64_image());
        assert_eq!(kernel_version(&gz).as_deref(), Some("6.12.57+deb13-arm64"));
        let mut zboot = vec![0u8; 0x200];
        zboot[..2].copy_from_slice(b"MZ");
        zboot[ZBOOT_MAGIC_AT..ZBOOT_MAGIC_AT + 4].copy_from_slice(ZBOOT_MAGIC);
        zboot[ZBOOT_PAYLOAD_AT..ZBOOT_PAYLOAD_AT + 4].copy_from_slice(&0x200u32.to_le_bytes());
        zboot[ZBOOT_PAYLOAD_AT + 4..ZBOOT_PAYLOAD_AT + 8]
            .copy_from_slice(&(gz.len() as u32).to_le_bytes());
        zboot[ZBOOT_COMPRESSION_AT..ZBOOT_COMPRESSION_AT + 4].copy_from_slice(b"gzip");
        zboot.extend_from_slice(&gz);
        assert_eq!(
            kernel_version(&zboot).as_deref(),
            Some("6.12.57+deb13-arm64")
        );
    }

    #[test]
    fn no_version_in_random_bytes() {
        assert_eq!(kernel_version(&[0x42; 10_000]), None);
        assert_eq!(kernel_version(b"Linux version "), None);
        assert_eq!(kernel_version(b""), None);
    }
}
