//! Per-machine values for an image that stays the same: systemd credentials written next to
//! the UKI on the ESP when the image is flashed (`imagebuild flash --hostname web-3
//! --credential NAME=VALUE|@FILE`).
//!
//! How they reach the machine: systemd-stub packs `<UKI path>.extra.d/*.cred` (here
//! `\EFI\BOOT\BOOTX64.EFI.extra.d\NAME.cred`) into an extra initrd cpio that unpacks to
//! `/.extra/credentials/`; imagebuild's initramfs copies each `NAME.cred` to
//! `/run/credentials/@initrd/NAME`, which systemd (>= 254) in the root imports as a system
//! credential (`systemd-creds --system cat NAME`). They are plain, not encrypted: these
//! images have no Secure Boot, and whoever can write the ESP can replace the UKI as well.
//! The hostname is the credential `system.hostname`; the image's `imagebuild-hostname.service`
//! makes it the machine's hostname.

mod credential;
mod hostname;

use std::fs::File;
use std::io::{Read, Seek, Write};

use anyhow::{Context, Result};

use crate::disk::{self, ESP_TYPE};
use crate::error::{Kind, UserError};
use crate::fs::fat::{self, EspFile};
use crate::fs::range::FileRange;
pub use credential::{
    CRED_SUFFIX, CREDENTIAL_SIZE_MAX, CREDENTIALS_TOTAL_SIZE_MAX, Credential, check_name,
};
pub use hostname::{HOSTNAME_HINT, HOSTNAME_MAX, Hostname, InvalidHostname};

/// The credential systemd (and the image's hostname unit) takes the hostname from.
pub const HOSTNAME_CREDENTIAL: &str = "system.hostname";

/// Where the UKI of an imagebuild ESP is: `EFI/BOOT/BOOT<ARCH>.EFI`.
const UKI_DIR: &str = "EFI/BOOT";

/// The `system.hostname` credential for host name `name`, checked as RFC 1123 names are.
pub fn hostname_credential(name: &str) -> Result<Credential> {
    let hostname =
        Hostname::new(name).map_err(|e| UserError::invalid(e.to_string()).hint(HOSTNAME_HINT))?;
    Credential::new(HOSTNAME_CREDENTIAL, hostname.as_str().as_bytes().to_vec())
}

/// The directory systemd-stub reads the UKI's own credentials from: `<uki_path>.extra.d`.
pub fn credentials_dir(uki_path: &str) -> String {
    format!("{uki_path}.extra.d")
}

/// The path of the UKI on the ESP in `esp` (one `EFI/BOOT/BOOT*.EFI`, as imagebuild writes
/// it), e.g. `EFI/BOOT/BOOTX64.EFI`.
pub fn find_uki<F: Read + Write + Seek>(esp: F) -> Result<String> {
    let ukis: Vec<String> = fat::list_dir(esp, UKI_DIR)?
        .into_iter()
        .map(|f| f.name)
        .filter(|n| is_boot_efi(n))
        .collect();
    match ukis.as_slice() {
        [one] => Ok(format!("{UKI_DIR}/{one}")),
        [] => Err(UserError::new(
            Kind::Corrupt,
            format!("the ESP has no {UKI_DIR}/BOOT*.EFI"),
        )
        .hint("give an image imagebuild built (its UKI is EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI)")
        .into()),
        more => Err(UserError::new(
            Kind::Unsupported,
            format!(
                "the ESP has {} UKIs in {UKI_DIR} ({}); credentials belong to one",
                more.len(),
                more.join(", ")
            ),
        )
        .hint("give an image imagebuild built: it has one UKI")
        .into()),
    }
}

/// `BOOT*.EFI`, in any case, as firmware matches it.
fn is_boot_efi(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("BOOT") && upper.ends_with(".EFI")
}

/// Writes `creds` as `<uki_path>.extra.d/NAME.cred` on the FAT ESP in `esp` (a partition's
/// bytes), making the directory when needed and replacing a credential of the same name.
/// Other files stay as they are. Returns the ESP paths of the given credentials, sorted
/// (one already holding its value is left untouched but listed). The new entries carry the
/// UKI's timestamp (the build's epoch), so the same image and credentials give the same bytes.
pub fn add_to_esp<F: Read + Write + Seek>(
    mut esp: F,
    uki_path: &str,
    creds: &[Credential],
) -> Result<Vec<String>> {
    check_unique(creds)?;
    check_uki(&mut esp, uki_path)?;
    let dir = credentials_dir(uki_path);
    check_total(&mut esp, &dir, creds)?;
    let mut files: Vec<EspFile> = creds
        .iter()
        .map(|c| EspFile {
            path: format!("{dir}/{}", c.file_name()),
            data: c.value.clone(),
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    fat::put_files(&mut esp, uki_path, &files)
        .with_context(|| format!("writing credentials to {dir} on the ESP"))?;
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// [`add_to_esp`] on a whole disk (an image file, or a disk opened read-write): its GPT's
/// EFI system partition and the UKI on it.
pub fn add_to_disk(disk: &File, creds: &[Credential]) -> Result<Vec<String>> {
    let table = disk::read_table(disk).map_err(|e| {
        UserError::new(
            Kind::Corrupt,
            format!("the disk has no readable GPT ({e:#})"),
        )
        .hint("give a raw imagebuild image or the disk it was written to")
    })?;
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .ok_or_else(|| {
            UserError::new(Kind::Corrupt, "the disk has no EFI system partition")
                .hint("give a raw imagebuild image or the disk it was written to")
        })?;
    let range = || FileRange::new(disk, esp.start, esp.size);
    let uki = find_uki(range()?)?;
    add_to_esp(range()?, &uki, creds)
}

/// FAT ignores case: two names that differ only in case would be one file.
fn check_unique(creds: &[Credential]) -> Result<()> {
    let mut names: Vec<String> = creds.iter().map(|c| c.name.to_ascii_uppercase()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        let same: Vec<&str> = creds
            .iter()
            .filter(|c| c.name.to_ascii_uppercase() == w[0])
            .map(|c| c.name.as_str())
            .collect();
        return Err(UserError::invalid(format!(
            "credential {} is given more than once (the ESP's FAT ignores case)",
            same.join(" and ")
        ))
        .hint("give each credential once")
        .into());
    }
    Ok(())
}

fn check_uki<F: Read + Write + Seek>(esp: &mut F, uki_path: &str) -> Result<()> {
    let (dir, name) = uki_path.rsplit_once('/').unwrap_or(("", uki_path));
    let found = fat::list_dir(&mut *esp, dir)?
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case(name));
    if found {
        return Ok(());
    }
    Err(
        UserError::new(Kind::Invalid, format!("the ESP has no {uki_path}"))
            .hint("give the UKI's path on this ESP (find_uki finds it), e.g. EFI/BOOT/BOOTX64.EFI")
            .into(),
    )
}

/// systemd imports at most CREDENTIALS_TOTAL_SIZE_MAX bytes of credentials in all: the
/// given ones and those already in `dir` that they do not replace.
fn check_total<F: Read + Write + Seek>(esp: &mut F, dir: &str, creds: &[Credential]) -> Result<()> {
    let replaced = |name: &str| {
        creds
            .iter()
            .any(|c| c.file_name().eq_ignore_ascii_case(name))
    };
    let kept: u64 = fat::list_dir(&mut *esp, dir)?
        .iter()
        .filter(|f| f.name.ends_with(CRED_SUFFIX) && !replaced(&f.name))
        .map(|f| f.size)
        .sum();
    let total = kept + creds.iter().map(|c| c.value.len() as u64).sum::<u64>();
    if total <= CREDENTIALS_TOTAL_SIZE_MAX as u64 {
        return Ok(());
    }
    Err(UserError::invalid(format!(
        "the credentials come to {total} bytes ({kept} of them already on the ESP), more than systemd imports ({CREDENTIALS_TOTAL_SIZE_MAX})"
    ))
    .hint("keep all credentials of a machine together at most 1 MiB; systemd skips the ones past it")
    .into())
}

#[cfg(test)]
mod tests;
