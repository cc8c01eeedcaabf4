//! Delivery: a release leaves `out/` for where servers boot, and comes back on another
//! machine. Every transfer is checked by digest and recorded in the release's record
//! (`releases.json`, `remotes`), and a second transfer of the same bytes sends nothing.
//!
//! - [`oci`]: `push` and `pull` through any OCI distribution registry.
//! - [`s3`]: `upload` to S3-compatible object storage.

pub mod oci;
pub mod s3;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::release::Resolved;

/// The files of a published release that travel with it.
pub struct ReleaseFiles {
    pub profile: String,
    pub record: crate::release::record::Release,
    /// `out/PROFILE/VERSION/`.
    pub dir: PathBuf,
    /// `PROFILE-VERSION` (the image's name without `.raw`).
    pub stem: String,
}

impl ReleaseFiles {
    /// The release `r` resolved to; a file outside `out/` is not a release.
    pub fn of(r: &Resolved) -> Result<ReleaseFiles> {
        let Some((profile, record)) = r.release.clone() else {
            return Err(crate::error::UserError::invalid(format!(
                "{} is not a published release: push and upload take releases (PROFILE, \
                 PROFILE@VERSION, PROFILE@sha256:PREFIX)",
                r.label
            ))
            .into());
        };
        let dir = r
            .image
            .parent()
            .context("the image has no directory")?
            .to_path_buf();
        let stem = r
            .image
            .file_stem()
            .and_then(|s| s.to_str())
            .context("the image has no name")?
            .to_string();
        Ok(ReleaseFiles {
            profile,
            record,
            dir,
            stem,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn raw(&self) -> PathBuf {
        self.path(&format!("{}.raw", self.stem))
    }

    /// `STEM.raw.zst`: the release's own when the profile lists it, else made once into
    /// `cache/zst/` (the raw image is the release; its zstd form is a function of it).
    pub fn raw_zst(&self, cache: &Path) -> Result<PathBuf> {
        let own = self.path(&format!("{}.raw.zst", self.stem));
        if own.is_file() {
            return Ok(own);
        }
        let dir = cache.join("zst");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let made = dir.join(format!("{}.raw.zst", self.record.image_sha256));
        if !made.is_file() {
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                self.record.image_sha256,
                std::process::id()
            ));
            crate::formats::write_zst(&self.raw(), &tmp)?;
            std::fs::rename(&tmp, &made)?;
        }
        Ok(made)
    }
}

/// The first 4 KiB of a service's answer, as text, for an error message.
fn answer_text(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    resp.body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default()
        .trim()
        .to_string()
}
