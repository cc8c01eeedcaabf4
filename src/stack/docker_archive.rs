//! The archive `docker load` reads: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) plus docker's `manifest.json` ({Config, RepoTags, Layers}), the shape
//! `docker save` writes since docker 25. Written deterministically: sorted entries, root
//! owned, every mtime the recipe epoch; blobs streamed from the blob store.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use super::blobs::BlobStore;
use super::fetch::Resolved;
use super::oci::OCI_INDEX;
use super::reference::Digest;

/// Writes the archive of `r` tagged `repo_tag` (`NAME:TAG`) to `out`.
pub fn write(
    out: impl Write,
    store: &BlobStore,
    r: &Resolved,
    repo_tag: &str,
    epoch: i64,
) -> Result<()> {
    let (_, tag) = repo_tag.rsplit_once(':').context("repo tag has no tag")?;
    let config = r.config.digest().map_err(anyhow::Error::msg)?;
    let mut blobs: BTreeMap<Digest, PathBuf> = BTreeMap::new();
    for d in std::iter::once(&r.manifest)
        .chain(std::iter::once(&config))
        .cloned()
        .chain(
            r.layers
                .iter()
                .map(|l| l.digest().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?,
        )
    {
        let path = store
            .get(&d)?
            .with_context(|| format!("blob {d} is not in the cache"))?;
        blobs.insert(d, path);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": r.manifest_media_type,
            "digest": r.manifest.to_string(),
            "size": r.manifest_size,
            "annotations": {
                "io.containerd.image.name": repo_tag,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let layers: Vec<String> = r
        .layers
        .iter()
        .map(|l| format!("blobs/sha256/{}", l.digest.trim_start_matches("sha256:")))
        .collect();
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", config.hex()),
        "RepoTags": [repo_tag],
        "Layers": layers,
    }]);
    let mut tar = tar::Builder::new(out);
    dir(&mut tar, "blobs/", epoch)?;
    dir(&mut tar, "blobs/sha256/", epoch)?;
    for (d, path) in &blobs {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = f.metadata()?.len();
        let mut h = header(tar::EntryType::Regular, 0o644, len, epoch);
        tar.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), f)?;
    }
    file(&mut tar, "index.json", &json_line(&index)?, epoch)?;
    file(&mut tar, "manifest.json", &json_line(&manifest)?, epoch)?;
    file(
        &mut tar,
        "oci-layout",
        b"{\"imageLayoutVersion\":\"1.0.0\"}\n",
        epoch,
    )?;
    tar.into_inner()?.flush()?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64, epoch: i64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    // OK to ignore: empty names always fit.
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h.set_mtime(u64::try_from(epoch).unwrap_or(0));
    h.set_size(size);
    h
}

fn dir(tar: &mut tar::Builder<impl Write>, path: &str, epoch: i64) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0, epoch);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn file(tar: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8], epoch: i64) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, epoch);
    tar.append_data(&mut h, path, bytes)?;
    Ok(())
}

/// `v` as compact JSON with a final newline.
fn json_line(v: &serde_json::Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec(v)?;
    b.push(b'\n');
    Ok(b)
}
