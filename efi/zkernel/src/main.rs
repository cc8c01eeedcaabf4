//! imagebuild's compressed-kernel loader.
//!
//! Debian's arm64 kernels are plain `Image` files (about 30 MiB; CONFIG_EFI_ZBOOT is off), and
//! no systemd-stub decompresses `.linux`. imagebuild therefore puts this small EFI application
//! in the UKI's `.linux` instead, with the kernel zlib-compressed in its own `.linuxz` section.
//! systemd-stub starts it like a kernel (LoadImage + StartImage, the command line in
//! LoadOptions, the initrd on the LINUX_EFI_INITRD_MEDIA device path); it inflates the kernel
//! into fresh pages, loads that as an EFI image, hands on its own LoadOptions, and starts it.
//! The kernel's EFI stub then finds the initrd exactly as it would have.
//!
//! `.linuxz` layout: b"IBZK", u32 LE format version (1), u64 LE inflated length, zlib stream.

#![no_std]
#![no_main]

use core::slice;
use core::time::Duration;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_COMPUTE_ADLER32, TINFL_FLAG_PARSE_ZLIB_HEADER,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};
use uefi::boot::{self, AllocateType, LoadImageSource, MemoryType};
use uefi::proto::loaded_image::LoadedImage;
use uefi::{Status, entry, println};

const SECTION: &[u8; 8] = b".linuxz\0";
const MAGIC: &[u8; 4] = b"IBZK";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const PAGE: usize = 4096;

#[entry]
fn main() -> Status {
    let Err((status, what)) = run();
    println!("imagebuild zkernel: {what} ({status:?})");
    // Leave the message on screen for someone at a console before the firmware moves on.
    boot::stall(Duration::from_secs(5));
    status
}

type Failure = (Status, &'static str);

/// Only returns on failure: on success the kernel never comes back.
fn run() -> Result<core::convert::Infallible, Failure> {
    let me = boot::image_handle();
    let loaded = boot::open_protocol_exclusive::<LoadedImage>(me)
        .map_err(|e| (e.status(), "cannot open its own LoadedImage protocol"))?;
    let (base, size) = loaded.info();
    // SAFETY: the firmware mapped this whole image at `base`, `size` bytes long.
    let image = unsafe { slice::from_raw_parts(base.cast::<u8>(), size as usize) };
    let payload = find_section(image, SECTION).ok_or((Status::LOAD_ERROR, "no .linuxz section"))?;
    let (len, stream) = parse_header(payload)?;

    let pages = len.div_ceil(PAGE);
    let out = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .map_err(|e| (e.status(), "cannot allocate pages for the kernel"))?;
    // SAFETY: allocate_pages returned `pages` pages of writable memory at `out`.
    let kernel = unsafe { slice::from_raw_parts_mut(out.as_ptr(), len) };
    inflate(stream, kernel)?;

    let child = boot::load_image(
        me,
        LoadImageSource::FromBuffer {
            buffer: kernel,
            file_path: loaded.file_path(),
        },
    )
    .map_err(|e| {
        (
            e.status(),
            "the firmware refused to load the inflated kernel",
        )
    })?;
    // LoadImage copied the kernel; the inflated bytes are no longer needed.
    // SAFETY: `out` came from allocate_pages with this page count and nothing refers to it.
    let _ = unsafe { boot::free_pages(out, pages) };

    {
        let mut kernel_image = boot::open_protocol_exclusive::<LoadedImage>(child)
            .map_err(|e| (e.status(), "cannot open the kernel's LoadedImage protocol"))?;
        if let Some(options) = loaded.load_options_as_bytes() {
            let size = u32::try_from(options.len())
                .map_err(|_| (Status::BAD_BUFFER_SIZE, "the command line is too long"))?;
            // SAFETY: the options belong to this image's LoadedImage, which outlives the
            // kernel's use of them (the kernel copies its command line before it exits boot
            // services, and this image is never unloaded before then).
            unsafe { kernel_image.set_load_options(options.as_ptr(), size) };
        }
    }
    drop(loaded);
    let status = match boot::start_image(child) {
        Ok(()) => Status::ABORTED,
        Err(e) => e.status(),
    };
    Err((status, "the kernel returned"))
}

/// The data of the named section of the PE image mapped at `image` (VirtualAddress and
/// VirtualSize, as the loader mapped them).
fn find_section<'a>(image: &'a [u8], name: &[u8; 8]) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    let coff = u32_at(0x3c)? as usize + 4;
    let count = usize::from(u16_at(coff + 2)?);
    let table = coff + 20 + usize::from(u16_at(coff + 16)?);
    (0..count).find_map(|i| {
        let header = table + i * 40;
        if image.get(header..header + 8)? != name {
            return None;
        }
        let virtual_size = u32_at(header + 8)? as usize;
        let address = u32_at(header + 12)? as usize;
        image.get(address..address.checked_add(virtual_size)?)
    })
}

fn parse_header(payload: &[u8]) -> Result<(usize, &[u8]), Failure> {
    let bad = (
        Status::LOAD_ERROR,
        "the .linuxz header is not imagebuild's format 1",
    );
    if payload.len() < HEADER_LEN || &payload[..4] != MAGIC {
        return Err(bad);
    }
    let version = u32::from_le_bytes(payload[4..8].try_into().map_err(|_| bad)?);
    let len = u64::from_le_bytes(payload[8..16].try_into().map_err(|_| bad)?);
    if version != VERSION {
        return Err(bad);
    }
    let len = usize::try_from(len).map_err(|_| bad)?;
    Ok((len, &payload[HEADER_LEN..]))
}

/// Inflates the whole zlib `stream` into `out`, checking its Adler-32 and that it fills `out`
/// exactly.
fn inflate(stream: &[u8], out: &mut [u8]) -> Result<(), Failure> {
    let mut state = DecompressorOxide::new();
    let flags = TINFL_FLAG_PARSE_ZLIB_HEADER
        | TINFL_FLAG_COMPUTE_ADLER32
        | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = decompress(&mut state, stream, out, 0, flags);
    match status {
        TINFLStatus::Done if written == out.len() => Ok(()),
        TINFLStatus::Done => Err((
            Status::LOAD_ERROR,
            "the kernel inflated to the wrong length",
        )),
        TINFLStatus::Adler32Mismatch => Err((
            Status::CRC_ERROR,
            "the compressed kernel is corrupt (Adler-32 mismatch)",
        )),
        _ => Err((Status::LOAD_ERROR, "the compressed kernel is corrupt")),
    }
}
