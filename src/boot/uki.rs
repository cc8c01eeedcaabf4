//! Unified Kernel Images: systemd-stub plus `.osrel`, `.cmdline`, `.initrd` and `.linux`.
//!
//! The sections are appended after the stub's last section (and after its SizeOfImage), at
//! RVAs aligned to the stub's SectionAlignment and file offsets aligned to its FileAlignment.
//! The stub's own sections (`.sbat`, `.sdmagic`, `.reloc`, ...) are kept as they are.
//!
//! Order: systemd-stub 257 looks its sections up by name in the loaded image (first match
//! wins, VirtualAddress + VirtualSize), and copies the kernel out of `.linux` into pages sized
//! by the kernel's own SizeOfImage, so any order boots. We use ukify's order, `.linux` last.
//! VirtualSize is the exact data length: the stub hands exactly that many bytes of
//! `.cmdline` and `.initrd` to the kernel.

use anyhow::{Context, Result, bail, ensure};
use goblin::pe::header::Header;
use goblin::pe::section_table::SectionTable;

/// The inputs of a UKI.
pub struct UkiParts<'a> {
    /// systemd-stub (`linuxx64.efi.stub`, `linuxaa64.efi.stub`).
    pub stub: &'a [u8],
    /// The target's `/etc/os-release` (or `/usr/lib/os-release`).
    pub osrel: &'a [u8],
    /// The kernel command line; an empty one adds no `.cmdline` section.
    pub cmdline: &'a str,
    /// The kernel (`/boot/vmlinuz-*`, itself a PE image).
    pub linux: &'a [u8],
    /// The initramfs; an empty one adds no `.initrd` section.
    pub initrd: &'a [u8],
}

/// TimeDateStamp written into the UKI: a fixed value keeps builds reproducible.
const TIME_DATE_STAMP: u32 = 0;

/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
const DATA_SECTION_CHARACTERISTICS: u32 = 0x4000_0040;

const SECTION_HEADER_LEN: usize = 40;
const PE_SIGNATURE_LEN: usize = 4;
const COFF_HEADER_LEN: usize = 20;

/// Field offsets from the start of the COFF header.
const COFF_NUMBER_OF_SECTIONS: usize = 2;
const COFF_TIME_DATE_STAMP: usize = 4;

/// Field offsets from the start of the optional header (the same for PE32 and PE32+).
const OPT_SIZE_OF_INITIALIZED_DATA: usize = 8;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_CHECK_SUM: usize = 64;

/// A power-of-two alignment taken from a PE header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Alignment(u32);

impl Alignment {
    fn new(value: u32, what: &str) -> Result<Self> {
        ensure!(
            value.is_power_of_two(),
            "{what} {value:#x} is not a power of two"
        );
        Ok(Self(value))
    }

    fn align_up(self, value: u64) -> u64 {
        let mask = u64::from(self.0) - 1;
        (value + mask) & !mask
    }
}

/// Where the stub's headers are and what they say.
struct StubLayout {
    coff_offset: usize,
    opt_offset: usize,
    section_table_end: usize,
    number_of_sections: u16,
    size_of_headers: u32,
    size_of_image: u32,
    file_alignment: Alignment,
    section_alignment: Alignment,
    size_of_initialized_data: u32,
    signed: bool,
    sections: Vec<SectionTable>,
}

/// One section to append.
struct NewSection<'a> {
    name: &'static str,
    data: &'a [u8],
}

/// A section header for an appended section, with its placement.
struct PlacedSection<'a> {
    name: &'static str,
    data: &'a [u8],
    virtual_address: u32,
    size_of_raw_data: u32,
    pointer_to_raw_data: u32,
}

/// systemd-stub + sections `.osrel .cmdline .initrd .linux` appended at page-aligned RVAs after
/// the stub's last section; NumberOfSections, SizeOfImage and SizeOfInitializedData updated,
/// TimeDateStamp = 0 and a correct PE checksum. Deterministic. Returns the UKI bytes.
pub fn build_uki(parts: &UkiParts) -> Result<Vec<u8>> {
    ensure!(!parts.linux.is_empty(), "the kernel for the uki is empty");
    append(parts.stub, &new_sections(parts)).context("assembling the uki on the systemd-stub")
}

/// `pe` with data sections `(name, bytes)` appended the same way (page-aligned RVAs after its
/// last section, headers patched, TimeDateStamp = 0, checksum). Deterministic.
pub fn append_sections(pe: &[u8], sections: &[(&'static str, &[u8])]) -> Result<Vec<u8>> {
    let new: Vec<NewSection> = sections
        .iter()
        .map(|&(name, data)| NewSection { name, data })
        .collect();
    append(pe, &new)
}

fn append(pe: &[u8], new: &[NewSection]) -> Result<Vec<u8>> {
    let layout = parse_stub(pe)?;
    check_stub(&layout, new)?;
    let placed = place_sections(&layout, pe.len(), new)?;
    let mut out = pe.to_vec();
    append_section_data(&mut out, &placed);
    patch_headers(&mut out, &layout, &placed)?;
    write_checksum(&mut out, &layout);
    Ok(out)
}

/// Reads the sections of a PE image back (for `imagebuild inspect`): (name, bytes) in file
/// order. The bytes are what the loader maps: min(SizeOfRawData, VirtualSize).
pub fn read_uki_sections(uki: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let layout = parse_stub(uki).context("parsing the uki pe headers")?;
    let mut sections = layout.sections;
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    sections.iter().map(|s| read_section(uki, s)).collect()
}

fn read_section(image: &[u8], section: &SectionTable) -> Result<(String, Vec<u8>)> {
    let name = section_name(section)?;
    let len = section.size_of_raw_data.min(section.virtual_size) as usize;
    let start = section.pointer_to_raw_data as usize;
    let bytes = image
        .get(start..)
        .and_then(|rest| rest.get(..len))
        .with_context(|| format!("section {name} extends past the end of the file"))?;
    Ok((name, bytes.to_vec()))
}

fn section_name(section: &SectionTable) -> Result<String> {
    let name = section.name().context("reading a section name")?;
    Ok(name.trim_end_matches('\0').to_string())
}

fn new_sections<'a>(parts: &'a UkiParts) -> Vec<NewSection<'a>> {
    let all = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline.as_bytes()),
        (".initrd", parts.initrd),
        (".linux", parts.linux),
    ];
    all.into_iter()
        .filter(|(_, data)| !data.is_empty())
        .map(|(name, data)| NewSection { name, data })
        .collect()
}

fn parse_stub(stub: &[u8]) -> Result<StubLayout> {
    let header = Header::parse(stub).context("reading the pe header")?;
    let opt = header
        .optional_header
        .context("the pe image has no optional header")?;
    let coff_offset = header.dos_header.pe_pointer as usize + PE_SIGNATURE_LEN;
    let opt_offset = coff_offset + COFF_HEADER_LEN;
    let mut table_offset = opt_offset + usize::from(header.coff_header.size_of_optional_header);
    let sections = header
        .coff_header
        .sections(stub, &mut table_offset)
        .context("reading the section table")?;
    Ok(StubLayout {
        coff_offset,
        opt_offset,
        section_table_end: table_offset,
        number_of_sections: header.coff_header.number_of_sections,
        size_of_headers: opt.windows_fields.size_of_headers,
        size_of_image: opt.windows_fields.size_of_image,
        file_alignment: Alignment::new(opt.windows_fields.file_alignment, "FileAlignment")?,
        section_alignment: Alignment::new(
            opt.windows_fields.section_alignment,
            "SectionAlignment",
        )?,
        size_of_initialized_data: u32::try_from(opt.standard_fields.size_of_initialized_data)
            .context("SizeOfInitializedData does not fit 32 bits")?,
        signed: opt.data_directories.get_certificate_table().is_some(),
        sections,
    })
}

/// Refuses signed stubs, stubs that already carry a UKI section and stubs without room for
/// the new section headers.
fn check_stub(layout: &StubLayout, new: &[NewSection]) -> Result<()> {
    ensure!(
        !layout.signed,
        "the stub is signed (it has a certificate table); appending sections would break the \
         signature: use the unsigned stub and sign the uki afterwards"
    );
    ensure!(
        layout.section_alignment.0 >= layout.file_alignment.0,
        "SectionAlignment is smaller than FileAlignment"
    );
    for section in &layout.sections {
        let name = section_name(section)?;
        ensure!(
            !new.iter().any(|n| n.name == name),
            "the stub already has a {name} section"
        );
    }
    let needed = layout.section_table_end + new.len() * SECTION_HEADER_LEN;
    let room = header_room(layout);
    if needed > room {
        bail!(
            "no room for {} more section headers in the stub: they would end at {needed:#x}, \
             section data starts at {room:#x}",
            new.len()
        );
    }
    Ok(())
}

/// The end of the header area: SizeOfHeaders (the loader maps no more of the headers, and
/// systemd-stub reads the section table from the loaded image), or the first section's raw
/// data if that comes earlier.
fn header_room(layout: &StubLayout) -> usize {
    layout
        .sections
        .iter()
        .filter(|s| s.size_of_raw_data > 0)
        .map(|s| s.pointer_to_raw_data as usize)
        .fold(layout.size_of_headers as usize, usize::min)
}

/// The first RVA after every section of the stub and after its SizeOfImage.
fn stub_virtual_end(layout: &StubLayout) -> u64 {
    layout
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.size_of_raw_data)))
        .fold(u64::from(layout.size_of_image), u64::max)
}

fn place_sections<'a>(
    layout: &StubLayout,
    stub_len: usize,
    new: &[NewSection<'a>],
) -> Result<Vec<PlacedSection<'a>>> {
    let mut rva = layout.section_alignment.align_up(stub_virtual_end(layout));
    let mut raw = layout.file_alignment.align_up(stub_len as u64);
    let mut placed = Vec::with_capacity(new.len());
    for section in new {
        let len = section.data.len() as u64;
        let raw_len = layout.file_alignment.align_up(len);
        placed.push(PlacedSection {
            name: section.name,
            data: section.data,
            virtual_address: to_u32(rva, "a section address")?,
            size_of_raw_data: to_u32(raw_len, "a section size")?,
            pointer_to_raw_data: to_u32(raw, "a section offset")?,
        });
        rva = layout.section_alignment.align_up(rva + len);
        raw += raw_len;
    }
    to_u32(rva, "SizeOfImage")?;
    Ok(placed)
}

fn to_u32(value: u64, what: &str) -> Result<u32> {
    u32::try_from(value).with_context(|| format!("{what} ({value:#x}) does not fit a pe header"))
}

fn append_section_data(out: &mut Vec<u8>, placed: &[PlacedSection]) {
    for section in placed {
        out.resize(section.pointer_to_raw_data as usize, 0);
        out.extend_from_slice(section.data);
        out.resize(
            (section.pointer_to_raw_data + section.size_of_raw_data) as usize,
            0,
        );
    }
}

fn patch_headers(out: &mut [u8], layout: &StubLayout, placed: &[PlacedSection]) -> Result<()> {
    let count = u16::try_from(placed.len())
        .ok()
        .and_then(|n| layout.number_of_sections.checked_add(n))
        .context("too many sections")?;
    let added: u64 = placed.iter().map(|s| u64::from(s.size_of_raw_data)).sum();
    let init_data = u64::from(layout.size_of_initialized_data) + added;
    let image_end = placed.last().map_or_else(
        || layout.section_alignment.align_up(stub_virtual_end(layout)),
        |s| {
            layout
                .section_alignment
                .align_up(u64::from(s.virtual_address) + s.data.len() as u64)
        },
    );
    put_u16(out, layout.coff_offset + COFF_NUMBER_OF_SECTIONS, count);
    put_u32(
        out,
        layout.coff_offset + COFF_TIME_DATE_STAMP,
        TIME_DATE_STAMP,
    );
    put_u32(
        out,
        layout.opt_offset + OPT_SIZE_OF_INITIALIZED_DATA,
        to_u32(init_data, "SizeOfInitializedData")?,
    );
    put_u32(
        out,
        layout.opt_offset + OPT_SIZE_OF_IMAGE,
        to_u32(image_end, "SizeOfImage")?,
    );
    for (i, section) in placed.iter().enumerate() {
        let at = layout.section_table_end + i * SECTION_HEADER_LEN;
        out[at..at + SECTION_HEADER_LEN].copy_from_slice(&section_header(section));
    }
    Ok(())
}

fn section_header(section: &PlacedSection) -> [u8; SECTION_HEADER_LEN] {
    let mut h = [0u8; SECTION_HEADER_LEN];
    h[..section.name.len()].copy_from_slice(section.name.as_bytes());
    // OK to unwrap: place_sections checked that every placed offset fits u32, and the data
    // length is at most its file-aligned size.
    let virtual_size = u32::try_from(section.data.len()).unwrap();
    h[8..12].copy_from_slice(&virtual_size.to_le_bytes());
    h[12..16].copy_from_slice(&section.virtual_address.to_le_bytes());
    h[16..20].copy_from_slice(&section.size_of_raw_data.to_le_bytes());
    h[20..24].copy_from_slice(&section.pointer_to_raw_data.to_le_bytes());
    h[36..40].copy_from_slice(&DATA_SECTION_CHARACTERISTICS.to_le_bytes());
    h
}

fn put_u16(out: &mut [u8], at: usize, value: u16) {
    out[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut [u8], at: usize, value: u32) {
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn write_checksum(out: &mut [u8], layout: &StubLayout) {
    let at = layout.opt_offset + OPT_CHECK_SUM;
    put_u32(out, at, 0);
    let sum = pe_checksum(out, at);
    put_u32(out, at, sum);
}

/// The PE image checksum (as in imagehlp's CheckSumMappedFile): the 16-bit one's-complement
/// style sum of the file with the CheckSum field read as zero, plus the file length.
fn pe_checksum(image: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in image.chunks(2).enumerate() {
        let at = i * 2;
        if at == checksum_offset || at == checksum_offset + 2 {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    // The length is added modulo 2^32, as the reference implementation does.
    (sum as u32).wrapping_add(image.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_ALIGN: u32 = 0x200;
    const SECTION_ALIGN: u32 = 0x1000;
    const PE_OFFSET: usize = 0x40;
    const OPT_OFFSET: usize = PE_OFFSET + 24;
    const OPT_LEN: usize = 240;

    /// A minimal PE32+ EFI application: one `.text` section of 0x200 bytes at RVA 0x1000.
    fn fake_stub(size_of_headers: u32) -> Vec<u8> {
        let mut pe = vec![0u8; size_of_headers as usize + 0x200];
        pe[0..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3c, PE_OFFSET as u32);
        pe[PE_OFFSET..PE_OFFSET + 4].copy_from_slice(b"PE\0\0");
        let coff = PE_OFFSET + 4;
        put_u16(&mut pe, coff, 0x8664);
        put_u16(&mut pe, coff + 2, 1);
        put_u32(&mut pe, coff + 4, 0x1234_5678);
        put_u16(&mut pe, coff + 16, OPT_LEN as u16);
        put_u16(&mut pe, coff + 18, 0x0206);
        let opt = OPT_OFFSET;
        put_u16(&mut pe, opt, 0x20b);
        put_u32(&mut pe, opt + 4, 0x200); // SizeOfCode
        put_u32(&mut pe, opt + 8, 0x400); // SizeOfInitializedData
        put_u32(&mut pe, opt + 16, 0x1000); // AddressOfEntryPoint
        put_u32(&mut pe, opt + 20, 0x1000); // BaseOfCode
        pe[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
        put_u32(&mut pe, opt + 32, SECTION_ALIGN);
        put_u32(&mut pe, opt + 36, FILE_ALIGN);
        put_u32(&mut pe, opt + 56, 0x2000); // SizeOfImage
        put_u32(&mut pe, opt + 60, size_of_headers);
        put_u16(&mut pe, opt + 68, 10); // EFI application
        put_u32(&mut pe, opt + 108, 16); // NumberOfRvaAndSizes
        let text = opt + OPT_LEN;
        pe[text..text + 5].copy_from_slice(b".text");
        put_u32(&mut pe, text + 8, 0x1f0);
        put_u32(&mut pe, text + 12, 0x1000);
        put_u32(&mut pe, text + 16, 0x200);
        put_u32(&mut pe, text + 20, size_of_headers);
        put_u32(&mut pe, text + 36, 0x6000_0020);
        let code = size_of_headers as usize;
        pe[code..code + 0x1f0].fill(0xc3);
        pe
    }

    fn get_u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn parts<'a>(stub: &'a [u8], linux: &'a [u8]) -> UkiParts<'a> {
        UkiParts {
            stub,
            osrel: b"ID=debian\n",
            cmdline: "console=ttyS0 root=PARTUUID=x rw",
            linux,
            initrd: &[7u8; 0x1001],
        }
    }

    #[test]
    fn header_math() {
        let stub = fake_stub(0x400);
        let linux = vec![0xaa; 0x2345];
        let uki = build_uki(&parts(&stub, &linux)).unwrap();
        let coff = PE_OFFSET + 4;
        assert_eq!(u16::from_le_bytes([uki[coff + 2], uki[coff + 3]]), 5);
        assert_eq!(get_u32(&uki, coff + 4), 0, "TimeDateStamp");
        let header = Header::parse(&uki).unwrap();
        let mut off = OPT_OFFSET + OPT_LEN;
        let sections = header.coff_header.sections(&uki, &mut off).unwrap();
        let got: Vec<_> = sections
            .iter()
            .map(|s| {
                (
                    s.name().unwrap().to_string(),
                    s.virtual_address,
                    s.virtual_size,
                    s.pointer_to_raw_data,
                    s.size_of_raw_data,
                )
            })
            .collect();
        let want = vec![
            (".text".to_string(), 0x1000, 0x1f0, 0x400, 0x200),
            (".osrel".to_string(), 0x2000, 10, 0x600, 0x200),
            (".cmdline".to_string(), 0x3000, 32, 0x800, 0x200),
            (".initrd".to_string(), 0x4000, 0x1001, 0xa00, 0x1200),
            (".linux".to_string(), 0x6000, 0x2345, 0x1c00, 0x2400),
        ];
        assert_eq!(got, want);
        assert_eq!(get_u32(&uki, OPT_OFFSET + OPT_SIZE_OF_IMAGE), 0x9000);
        assert_eq!(
            get_u32(&uki, OPT_OFFSET + OPT_SIZE_OF_INITIALIZED_DATA),
            0x400 + 0x200 + 0x200 + 0x1200 + 0x2400
        );
        assert_eq!(uki.len(), 0x1c00 + 0x2400);
        for s in &sections {
            assert_eq!(s.pointer_to_raw_data % FILE_ALIGN, 0);
            assert_eq!(s.virtual_address % SECTION_ALIGN, 0);
        }
    }

    #[test]
    fn checksum_is_correct_and_build_is_deterministic() {
        let stub = fake_stub(0x400);
        let linux = vec![0x55; 999];
        let a = build_uki(&parts(&stub, &linux)).unwrap();
        let b = build_uki(&parts(&stub, &linux)).unwrap();
        assert_eq!(a, b);
        let at = OPT_OFFSET + OPT_CHECK_SUM;
        let stored = get_u32(&a, at);
        assert_ne!(stored, 0);
        assert_eq!(pe_checksum(&a, at), stored);
        assert_eq!(stored, reference_checksum(&a, at));
    }

    /// A deliberately naive checksum: 32-bit words summed as two halves, folded at the end.
    fn reference_checksum(image: &[u8], at: usize) -> u32 {
        let mut copy = image.to_vec();
        copy[at..at + 4].fill(0);
        if copy.len() % 2 == 1 {
            copy.push(0);
        }
        let mut sum: u64 = copy
            .chunks(2)
            .map(|w| u64::from(u16::from_le_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u32 + image.len() as u32
    }

    #[test]
    fn checksum_of_known_bytes() {
        // Words 0x0201 + 0x0403 = 0x0604; checksum field (bytes 4..8) skipped; length 9.
        let bytes = [1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0x10];
        assert_eq!(pe_checksum(&bytes, 4), 0x0604 + 0x10 + 9);
        // Carries fold back into the low 16 bits.
        let bytes = [0xff, 0xff, 0x02, 0x00, 0, 0, 0, 0];
        assert_eq!(pe_checksum(&bytes, 4), 0x0002 + 8);
    }

    #[test]
    fn refuses_stub_without_room_for_headers() {
        // Headers end at 0x40 + 24 + 240 + 40 = 0x170; four more need 0x210 > 0x200.
        let stub = fake_stub(0x200);
        let linux = [1u8; 16];
        let err = build_uki(&parts(&stub, &linux)).unwrap_err();
        assert!(
            format!("{err:#}").contains("no room for 4 more section headers"),
            "{err:#}"
        );
    }

    #[test]
    fn refuses_stub_that_already_has_a_kernel() {
        let stub = fake_stub(0x400);
        let uki = build_uki(&parts(&stub, &[1u8; 16])).unwrap();
        let err = build_uki(&parts(&uki, &[1u8; 16])).unwrap_err();
        assert!(
            format!("{err:#}").contains("already has a .osrel"),
            "{err:#}"
        );
    }

    #[test]
    fn empty_cmdline_and_initrd_add_no_sections() {
        let stub = fake_stub(0x400);
        let uki = build_uki(&UkiParts {
            stub: &stub,
            osrel: b"ID=debian\n",
            cmdline: "",
            linux: &[9u8; 3],
            initrd: &[],
        })
        .unwrap();
        let names: Vec<_> = read_uki_sections(&uki)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [".text", ".osrel", ".linux"]);
    }

    #[test]
    fn sections_read_back() {
        let stub = fake_stub(0x400);
        let linux = vec![0x42; 0x1234];
        let p = parts(&stub, &linux);
        let uki = build_uki(&p).unwrap();
        let sections = read_uki_sections(&uki).unwrap();
        let names: Vec<_> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".initrd", ".linux"]);
        assert_eq!(sections[1].1, p.osrel);
        assert_eq!(sections[2].1, p.cmdline.as_bytes());
        assert_eq!(sections[3].1, p.initrd);
        assert_eq!(sections[4].1, linux);
    }

    #[test]
    fn truncated_uki_is_an_error() {
        let stub = fake_stub(0x400);
        let uki = build_uki(&parts(&stub, &[3u8; 0x3000])).unwrap();
        let err = read_uki_sections(&uki[..0x1000]).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err:#}");
    }

    /// With IMAGEBUILD_BOOT_FIXTURES=DIR (holding root-amd64/ and root-arm64/ extracted from
    /// the trixie debs), builds UKIs from the real stubs and kernels.
    #[test]
    fn real_stubs() {
        let Some(dir) = std::env::var_os("IMAGEBUILD_BOOT_FIXTURES") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        for (arch, stub) in [("amd64", "linuxx64"), ("arm64", "linuxaa64")] {
            let root = dir.join(format!("root-{arch}"));
            let stub =
                std::fs::read(root.join(format!("usr/lib/systemd/boot/efi/{stub}.efi.stub")))
                    .unwrap();
            let linux = vec![0x11; 0x10_0001];
            let uki = build_uki(&parts(&stub, &linux)).unwrap();
            let names: Vec<_> = read_uki_sections(&uki)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            assert_eq!(
                names,
                [
                    ".text", ".rodata", ".data", ".sbat", ".sdmagic", ".reloc", ".osrel",
                    ".cmdline", ".initrd", ".linux"
                ],
                "{arch}"
            );
            let layout = parse_stub(&uki).unwrap();
            let at = layout.opt_offset + OPT_CHECK_SUM;
            assert_eq!(pe_checksum(&uki, at), get_u32(&uki, at), "{arch}");
            assert_eq!(get_u32(&uki, layout.coff_offset + COFF_TIME_DATE_STAMP), 0);
            let stub_layout = parse_stub(&stub).unwrap();
            let first_new = &layout.sections[stub_layout.sections.len()];
            assert!(
                first_new.virtual_address >= stub_layout.size_of_image,
                "{arch}"
            );
        }
    }
}
