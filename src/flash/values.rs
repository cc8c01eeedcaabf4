//! Per-machine values at flash time (`--hostname`, `--credential`): systemd credentials
//! next to the UKI on the target's ESP (see [`crate::machine`]). They are added after the
//! target was read back as the release: the image region was proven first, then only the
//! ESP's changed 4 KiB blocks are written, and the ESP is read back again.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::plan::{Plan, Step};
use crate::disk::ESP_TYPE;
use crate::machine::{self, Credential};

const BLOCK: usize = 4096;

/// What adding the credentials changes on a target that holds the image.
pub struct Patch {
    /// Writes (and a final sync) of the ESP's changed blocks.
    pub plan: Plan,
    /// The ESP's bytes afterwards, and its sha256.
    pub esp: Range<u64>,
    pub esp_sha256: String,
    /// The ESP paths written.
    pub added: Vec<String>,
}

/// The patch that puts `creds` on the ESP of a target holding `image` (of `target_len`).
pub fn patch(image: &File, target_len: u64, creds: &[Credential]) -> Result<Patch> {
    let len = image.metadata()?.len();
    let table = crate::disk::read_table(image)?;
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .context("the image has no EFI system partition for the credentials")?;
    let range = esp.start..esp.start + esp.size;
    // A sparse scratch copy holding the GPT and the ESP, where fatfs may write.
    let scratch = tempfile::tempfile().context("creating a scratch file for the ESP")?;
    scratch.set_len(len)?;
    let gpt = super::gpt::PRIMARY_BYTES as u64;
    let backup = len - super::gpt::BACKUP_BYTES as u64;
    for r in [0..gpt, range.clone(), backup..len] {
        copy(image, &scratch, r)?;
    }
    let added = machine::add_to_disk(&scratch, creds)?;
    let mut steps = Vec::new();
    let mut old = vec![0u8; BLOCK];
    let mut new = vec![0u8; BLOCK];
    let mut h = Sha256::new();
    let mut pos = range.start;
    while pos < range.end {
        image.read_exact_at(&mut old, pos)?;
        scratch.read_exact_at(&mut new, pos)?;
        h.update(&new);
        if old != new {
            match steps.last_mut() {
                Some(Step::Write(at, bytes)) if *at + bytes.len() as u64 == pos => {
                    bytes.extend_from_slice(&new);
                }
                _ => steps.push(Step::Write(pos, new.clone())),
            }
        }
        pos += BLOCK as u64;
    }
    steps.push(Step::Sync);
    Ok(Patch {
        plan: Plan {
            steps,
            image_len: len,
            target_len,
            head: 0,
            data_end: 0,
            moved: None,
            not_moved: None,
        },
        esp: range,
        esp_sha256: hex::encode(h.finalize()),
        added,
    })
}

fn copy(from: &File, to: &File, r: Range<u64>) -> Result<()> {
    let mut buf = vec![0u8; crate::sparse::CHUNK];
    let mut pos = r.start;
    while pos < r.end {
        let n = usize::try_from(r.end - pos)
            .unwrap_or(buf.len())
            .min(buf.len());
        from.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|b| *b != 0) {
            to.write_all_at(&buf[..n], pos)?;
        }
        pos += n as u64;
    }
    Ok(())
}
