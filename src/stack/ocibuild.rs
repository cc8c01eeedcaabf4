//! A tiny, deterministic OCI image builder: one gzip layer of given files per architecture,
//! a config, a manifest per architecture and an index over them. For tests and the e2e
//! image (busybox-static serving HTTP); the same inputs always give the same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::oci::{OCI_INDEX, OCI_MANIFEST};
use super::reference::Digest;
use crate::profile::Arch;

/// A file of the layer: path (relative), mode, bytes; or a symlink with `link`.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Option<String>,
}

/// One architecture's image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub arch: Arch,
    pub files: Vec<LayerFile>,
    pub cmd: Vec<String>,
    /// `config.Healthcheck.Test`, if any.
    pub healthcheck: Option<Vec<String>>,
    pub epoch: i64,
}

/// The built image: every blob, the index and the manifest of each architecture.
#[derive(Debug, Clone)]
pub struct OciImage {
    pub blobs: BTreeMap<Digest, Vec<u8>>,
    pub index: Vec<u8>,
    pub index_digest: Digest,
    pub manifests: Vec<(Arch, Digest)>,
}

/// Builds one manifest per spec and an index over them.
pub fn build(specs: &[ImageSpec]) -> Result<OciImage> {
    let mut blobs = BTreeMap::new();
    let mut entries = Vec::new();
    let mut manifests = Vec::new();
    for s in specs {
        let layer_tar = layer(&s.files, s.epoch)?;
        let diff_id = Digest::of(&layer_tar);
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&layer_tar)?;
        let layer_gz = gz.finish()?;
        let mut config = json!({
            "architecture": s.arch.debian(),
            "os": "linux",
            "config": { "Cmd": s.cmd, "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        });
        if s.arch == Arch::Arm64 {
            config["variant"] = json!("v8");
        }
        if let Some(test) = &s.healthcheck {
            config["config"]["Healthcheck"] = json!({ "Test": test });
        }
        let config = serde_json::to_vec(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer_gz)],
        }))?;
        let mut entry = desc(OCI_MANIFEST, &manifest);
        let mut platform = json!({ "architecture": s.arch.debian(), "os": "linux" });
        if s.arch == Arch::Arm64 {
            platform["variant"] = json!("v8");
        }
        entry["platform"] = platform;
        entries.push(entry);
        manifests.push((s.arch, Digest::of(&manifest)));
        for b in [layer_gz, config, manifest] {
            blobs.insert(Digest::of(&b), b);
        }
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    }))?;
    let index_digest = Digest::of(&index);
    blobs.insert(index_digest.clone(), index.clone());
    Ok(OciImage {
        blobs,
        index,
        index_digest,
        manifests,
    })
}

fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len() })
}

fn layer(files: &[LayerFile], epoch: i64) -> Result<Vec<u8>> {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let mut p = Path::new(&f.path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("{}/", d.display()));
            p = d.parent();
        }
    }
    let header = |kind, mode, size| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::try_from(epoch).unwrap_or(0));
        h.set_size(size);
        h
    };
    for d in &dirs {
        tar.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )?;
    }
    for f in &files {
        match &f.link {
            Some(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, &f.path, target)?;
            }
            None => {
                let mut h = header(tar::EntryType::Regular, f.mode, f.data.len() as u64);
                tar.append_data(&mut h, &f.path, &f.data[..])?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

impl OciImage {
    /// Writes the image as an OCI layout directory (`skopeo copy oci:DIR ...` reads it),
    /// the index named `tag`.
    pub fn write_layout_dir(&self, dir: &Path, tag: &str) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        for (d, b) in &self.blobs {
            std::fs::write(blobs.join(d.hex()), b)?;
        }
        for (name, bytes) in self.layout_files(tag)? {
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }

    /// The image as an OCI layout tar (an `oci-archive`), the index named `tag`.
    pub fn layout_tar(&self, tag: &str) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, bytes: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            tar.append_data(&mut h, path, bytes)?;
            Ok(())
        };
        for (name, bytes) in self.layout_files(tag)? {
            add(name, &bytes)?;
        }
        for (d, b) in &self.blobs {
            add(&format!("blobs/sha256/{}", d.hex()), b)?;
        }
        Ok(tar.into_inner()?)
    }

    fn layout_files(&self, tag: &str) -> Result<[(&'static str, Vec<u8>); 2]> {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_INDEX,
                "digest": self.index_digest.to_string(),
                "size": self.index.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        }))?;
        Ok([
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json", index),
        ])
    }
}

/// The e2e test image: busybox `httpd` serving `/www/index.html` on port 8080, with a
/// healthcheck that fetches it. `busybox` is the busybox-static binary of `arch`.
pub fn hello_spec(arch: Arch, busybox: Vec<u8>, epoch: i64) -> ImageSpec {
    let file = |path: &str, mode, data: &[u8]| LayerFile {
        path: path.into(),
        mode,
        data: data.to_vec(),
        link: None,
    };
    let link = |path: &str| LayerFile {
        path: path.into(),
        mode: 0o777,
        data: Vec::new(),
        link: Some("busybox".into()),
    };
    ImageSpec {
        arch,
        files: vec![
            file("bin/busybox", 0o755, &busybox),
            link("bin/sh"),
            link("bin/wget"),
            file(
                "www/index.html",
                0o644,
                format!("hello from imagebuild ({arch})\n").as_bytes(),
            ),
        ],
        cmd: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
        healthcheck: Some(
            [
                "CMD",
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                "http://127.0.0.1:8080/",
            ]
            .map(String::from)
            .to_vec(),
        ),
        epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_digests() {
        let specs = [
            hello_spec(Arch::Amd64, b"x86".to_vec(), 1),
            hello_spec(Arch::Arm64, b"arm".to_vec(), 1),
        ];
        let a = build(&specs).unwrap();
        let b = build(&specs).unwrap();
        assert_eq!(a.index_digest, b.index_digest);
        assert_eq!(a.manifests.len(), 2);
        for (d, bytes) in &a.blobs {
            assert_eq!(&Digest::of(bytes), d);
        }
    }
}
