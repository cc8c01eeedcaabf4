//! `imagebuild inspect`: everything about one image, read without root and without
//! mounting: partitions, ESP files, UKI sections, packages and every rootfs entry.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use uuid::Uuid;

use super::Image;
use super::esp::{self, EspEntry, Uki};
use super::rootfs::{self, Contents, Entry};
use crate::disk::Region;
use crate::size::Bytes;
use crate::tree::Package;

/// What `imagebuild inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub image: String,
    pub disk_guid: Uuid,
    pub partitions: Vec<Region>,
    pub esp: Vec<EspEntry>,
    pub boot: Vec<Uki>,
    pub packages: Vec<Package>,
    pub files: Vec<Entry>,
}

/// Reads `image`'s metadata; with `hash`, every file's content once too, to hash it
/// (the summary needs only the metadata, the dpkg status and the ESP).
pub fn inspect(image: &Path, hash: bool) -> Result<Report> {
    let img = Image::open(image)?;
    let esp_files = img
        .esp_files()
        .with_context(|| format!("reading the ESP of {}", image.display()))?;
    let fs = img
        .root()
        .with_context(|| format!("reading the root filesystem of {}", image.display()))?;
    let mut files = rootfs::walk(&fs)?;
    let mut contents = Contents::new(&fs).limit(img.root_region()?.size);
    let packages = rootfs::packages(&files, &mut contents)?;
    if hash {
        contents.hash_all(&mut files)?;
    }
    Ok(Report {
        image: image.display().to_string(),
        disk_guid: img.disk_guid,
        partitions: img.partitions.clone(),
        esp: esp::entries(&esp_files),
        boot: esp::ukis(&esp_files)?,
        packages,
        files,
    })
}

impl Report {
    /// Regular files and their total size.
    pub fn file_totals(&self) -> (usize, u64) {
        self.files
            .iter()
            .filter(|e| e.is_file())
            .fold((0, 0), |(n, size), e| (n + 1, size + e.size))
    }

    /// The human summary; with `files`, every rootfs entry too.
    pub fn human(&self, files: bool) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_human(&mut s, files);
        s
    }

    fn write_human(&self, s: &mut String, files: bool) -> std::fmt::Result {
        writeln!(s, "image {} (disk {})", self.image, self.disk_guid)?;
        writeln!(s, "partitions")?;
        let w = self
            .partitions
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        for p in &self.partitions {
            writeln!(
                s,
                "  {:w$}  type {}  uuid {}  start {}  size {}",
                p.name,
                p.type_guid,
                p.uuid,
                Bytes(p.start),
                Bytes(p.size)
            )?;
        }
        writeln!(s, "esp files")?;
        if self.esp.is_empty() {
            writeln!(s, "  (none)")?;
        }
        for f in &self.esp {
            writeln!(s, "  {}  {}  sha256 {}", f.path, Bytes(f.size), f.sha256)?;
        }
        for u in &self.boot {
            write_uki(s, u)?;
        }
        let kernels: Vec<&str> = self
            .boot
            .iter()
            .filter_map(|u| u.kernel.as_deref())
            .collect();
        if kernels.is_empty() {
            writeln!(s, "kernel      none")?;
        } else {
            writeln!(s, "kernel      {}", kernels.join(", "))?;
        }
        writeln!(s, "packages    {}", self.packages.len())?;
        let (n, size) = self.file_totals();
        writeln!(
            s,
            "files       {n} regular files, {}, {} entries",
            Bytes(size),
            self.files.len()
        )?;
        if files {
            writeln!(s, "rootfs")?;
            for e in &self.files {
                writeln!(s, "  {}", entry_line(e))?;
            }
        }
        Ok(())
    }
}

fn write_uki(s: &mut String, u: &Uki) -> std::fmt::Result {
    writeln!(s, "uki {}", u.path)?;
    for x in &u.sections {
        let size = Bytes(x.size).to_string();
        writeln!(s, "  {:<9} {size:>12}  sha256 {}", x.name, x.sha256)?;
    }
    if let Some(osrel) = &u.osrel {
        writeln!(s, "  osrel     {}", osrel_summary(osrel))?;
    }
    if let Some(cmdline) = &u.cmdline {
        writeln!(s, "  cmdline   {}", cmdline.trim_end_matches(['\0', '\n']))?;
    }
    Ok(())
}

/// PRETTY_NAME, IMAGE_ID and IMAGE_VERSION of an os-release, on one line.
fn osrel_summary(osrel: &str) -> String {
    let keys = ["PRETTY_NAME=", "IMAGE_ID=", "IMAGE_VERSION="];
    let picked: Vec<&str> = osrel
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .collect();
    if picked.is_empty() {
        format!("{} lines", osrel.lines().count())
    } else {
        picked.join(" ")
    }
}

/// `TYPE MODE UID:GID SIZE PATH`, then ` -> TARGET` or `  SHA256`: one line of `--files`.
pub fn entry_line(e: &Entry) -> String {
    let mut line = format!(
        "{:<7} {} {:>11} {:>12} {}",
        e.kind,
        e.mode,
        e.owner(),
        e.size,
        e.path
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(t);
    }
    if let Some(sha) = &e.sha256 {
        line.push_str("  ");
        line.push_str(sha);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osrel_summary_picks_the_identity() {
        let osrel = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\nIMAGE_ID=prod\nIMAGE_VERSION=1.0\n";
        assert_eq!(
            osrel_summary(osrel),
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\" IMAGE_ID=prod IMAGE_VERSION=1.0"
        );
        assert_eq!(osrel_summary("ID=x\n"), "1 lines");
    }
}
