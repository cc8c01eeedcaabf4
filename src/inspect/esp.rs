//! The ESP as a list of files with sizes and hashes, and what each EFI binary on it holds:
//! its PE sections and, for a UKI, the os-release, command line and kernel version.

use anyhow::{Context, Result};
use serde::Serialize;

use super::kernel::kernel_version;
use crate::boot::uki::read_uki_sections;
use crate::cache::sha256;
use crate::fs::fat::EspFile;

/// A file on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspEntry {
    /// E.g. "EFI/BOOT/BOOTX64.EFI".
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A PE section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// An EFI binary on the ESP; `osrel`, `cmdline` and `kernel` when it is a UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uki {
    pub path: String,
    pub sections: Vec<Section>,
    pub osrel: Option<String>,
    pub cmdline: Option<String>,
    /// The version of the kernel in `.linux`, when its bytes say.
    pub kernel: Option<String>,
}

impl Uki {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Paths, sizes and hashes of the ESP's files.
pub fn entries(files: &[EspFile]) -> Vec<EspEntry> {
    files
        .iter()
        .map(|f| EspEntry {
            path: f.path.clone(),
            size: f.data.len() as u64,
            sha256: sha256(&f.data),
        })
        .collect()
}

/// Whether the ESP file is an EFI binary (by name, as firmware decides).
pub fn is_efi(path: &str) -> bool {
    path.rsplit('.')
        .next()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("efi"))
        && path.contains('.')
}

/// Every EFI binary on the ESP, read as a PE image.
pub fn ukis(files: &[EspFile]) -> Result<Vec<Uki>> {
    files.iter().filter(|f| is_efi(&f.path)).map(read).collect()
}

fn read(file: &EspFile) -> Result<Uki> {
    let sections = read_uki_sections(&file.data)
        .with_context(|| format!("reading {} on the ESP", file.path))?;
    let text = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
    };
    let osrel = text(".osrel");
    let cmdline = text(".cmdline");
    let kernel = sections
        .iter()
        .find(|(n, _)| n == ".linux")
        .and_then(|(_, b)| kernel_version(b));
    Ok(Uki {
        path: file.path.clone(),
        sections: sections
            .iter()
            .map(|(name, bytes)| Section {
                name: name.clone(),
                size: bytes.len() as u64,
                sha256: sha256(bytes),
            })
            .collect(),
        osrel,
        cmdline,
        kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efi_by_extension() {
        assert!(is_efi("EFI/BOOT/BOOTX64.EFI"));
        assert!(is_efi("EFI/Linux/debian.efi"));
        assert!(!is_efi("EFI/BOOT/EFI"));
        assert!(!is_efi("loader/loader.conf"));
    }

    #[test]
    fn a_non_pe_efi_file_is_named_in_the_error() {
        let files = [EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: b"not a pe".to_vec(),
        }];
        let err = ukis(&files).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("reading EFI/BOOT/BOOTX64.EFI on the ESP: "),
            "{err:#}"
        );
    }
}
