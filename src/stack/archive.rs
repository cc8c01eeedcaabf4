//! Local OCI archives: a tar of an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/HEX`), as `skopeo copy ... oci-archive:FILE` writes. Blobs are read in
//! place (the tar is indexed once, not unpacked).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::oci::Descriptor;
use super::reference::{Digest, ImageRef};
use crate::error::UserError;

pub struct LocalArchive {
    pub path: PathBuf,
    /// Blob digest -> (offset of the data in the tar, size).
    blobs: BTreeMap<Digest, (u64, u64)>,
    /// The manifests `index.json` names.
    index: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct IndexJson {
    manifests: Vec<Descriptor>,
}

impl LocalArchive {
    pub fn open(path: &Path) -> Result<LocalArchive> {
        let shown = path.display();
        let f = File::open(path).with_context(|| format!("opening OCI archive {shown}"))?;
        let mut tar = tar::Archive::new(f);
        let mut blobs = BTreeMap::new();
        let mut index_json = None;
        let mut layout = false;
        for entry in tar
            .entries()
            .with_context(|| format!("reading OCI archive {shown}"))?
        {
            let mut entry = entry.with_context(|| format!("reading OCI archive {shown}"))?;
            let name = crate::tree::clean(&entry.path()?.to_string_lossy());
            if name == "oci-layout" {
                layout = true;
            } else if name == "index.json" {
                let mut v = Vec::new();
                entry.read_to_end(&mut v)?;
                index_json = Some(v);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/")
                && let Some(d) = Digest::from_hex(hex)
            {
                blobs.insert(d, (entry.raw_file_position(), entry.size()));
            }
        }
        let not_layout = || {
            UserError::invalid(format!(
                "{shown} is not an OCI image layout archive (no oci-layout or index.json)"
            ))
            .hint("write it with `skopeo copy docker://IMAGE oci-archive:FILE`")
        };
        let index_json = index_json.filter(|_| layout).ok_or_else(not_layout)?;
        let index: IndexJson = serde_json::from_slice(&index_json)
            .map_err(|e| UserError::invalid(format!("{shown}: index.json does not parse: {e}")))?;
        Ok(LocalArchive {
            path: path.to_path_buf(),
            blobs,
            index: index.manifests,
        })
    }

    /// A reader over blob `d`, if the archive has it.
    pub fn blob(&self, d: &Digest) -> Result<Option<(u64, Box<dyn Read>)>> {
        let Some(&(offset, size)) = self.blobs.get(d) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path)
            .with_context(|| format!("opening OCI archive {}", self.path.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Some((size, Box::new(f.take(size)))))
    }

    /// The manifest `index.json` names for `image`'s tag (annotation
    /// `org.opencontainers.image.ref.name` = tag or name:tag, or `io.containerd.image.name`).
    pub fn find_tag(&self, image: &ImageRef) -> Option<Digest> {
        let tag = image.tag.as_deref().unwrap_or("latest");
        let full = format!("{}:{tag}", image.name());
        self.index.iter().find_map(|d| {
            let names = [
                d.annotations.get("org.opencontainers.image.ref.name"),
                d.annotations.get("io.containerd.image.name"),
            ];
            names
                .into_iter()
                .flatten()
                .any(|n| n == tag || *n == full)
                .then(|| d.digest().ok())
                .flatten()
        })
    }
}
