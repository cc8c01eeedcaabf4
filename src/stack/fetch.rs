//! Getting an image's blobs into the blob store, every one verified: from the store itself,
//! from the stack's local OCI archives, then from the image's registry.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;

use super::archive::LocalArchive;
use super::blobs::{BlobStore, Mismatch};
use super::oci::{self, ConfigHead, Descriptor, Parsed};
use super::reference::{Digest, ImageRef};
use super::registry::{Failure, Registry};
use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::profile::Arch;

/// An image manifest for one platform, with every blob it names in the store.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The manifest for the platform (the pinned digest itself, or an entry of its index).
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// Bytes fetched over the network for this image.
    pub downloaded: u64,
}

pub struct Fetcher<'a> {
    host: &'a Host,
    pub store: BlobStore,
    archives: Vec<LocalArchive>,
    registries: HashMap<String, Registry>,
}

impl<'a> Fetcher<'a> {
    pub fn new(host: &'a Host, store: BlobStore, archives: Vec<LocalArchive>) -> Self {
        Fetcher {
            host,
            store,
            archives,
            registries: HashMap::new(),
        }
    }

    /// The digest `image`'s tag points to now (local archives first, then the registry).
    pub fn resolve_tag(&mut self, image: &ImageRef) -> Result<Digest> {
        if let Some(d) = self.archives.iter().find_map(|a| a.find_tag(image)) {
            return Ok(d);
        }
        let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
        let (reg, repo) = self.registry(image)?;
        let bytes = match reg.manifest(&repo, &tag) {
            Ok(b) => b,
            Err(Failure::NotFound) => {
                return Err(UserError::invalid(format!(
                    "registry {} has no {repo}:{tag}",
                    reg.host()
                ))
                .into());
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        self.store.put_bytes(&bytes)
    }

    /// Fetches and verifies the manifest pinned as `pinned`, the platform manifest for `arch`
    /// if it is an index, its config and its layers.
    pub fn fetch(&mut self, image: &ImageRef, pinned: &Digest, arch: Arch) -> Result<Resolved> {
        let mut downloaded = 0;
        let top = self.manifest(image, pinned, None, &mut downloaded)?;
        let parsed = oci::parse(&top).map_err(|e| corrupt(image, &e))?;
        let (manifest, bytes) = match parsed {
            Parsed::Index(list) => {
                let d = oci::select_platform(&list, arch).map_err(|e| {
                    anyhow::Error::new(
                        UserError::new(Kind::Unsupported, format!("image {image} {e}")).hint(
                            "use an image built for this architecture, or build the image for another [image] arch",
                        ),
                    )
                })?;
                let digest = d.digest().map_err(|e| corrupt(image, &e))?;
                let bytes = self.manifest(image, &digest, Some(d.size), &mut downloaded)?;
                (digest, bytes)
            }
            Parsed::Manifest { .. } => (pinned.clone(), top),
        };
        let Parsed::Manifest {
            media_type,
            config,
            layers,
        } = oci::parse(&bytes).map_err(|e| corrupt(image, &e))?
        else {
            return Err(corrupt(image, "an index entry is itself an index"));
        };
        let config_path = self.blob(image, &config, &mut downloaded)?;
        check_config_platform(image, &std::fs::read(&config_path)?, arch)?;
        for l in &layers {
            if l.media_type.contains("nondistributable") || l.media_type.contains("foreign") {
                return Err(UserError::new(
                    Kind::Unsupported,
                    format!(
                        "image {image} has a non-distributable layer ({})",
                        l.media_type
                    ),
                )
                .into());
            }
            self.blob(image, l, &mut downloaded)?;
        }
        Ok(Resolved {
            manifest,
            manifest_media_type: media_type,
            manifest_size: bytes.len() as u64,
            config,
            layers,
            downloaded,
        })
    }

    /// The bytes of manifest `d`, verified.
    fn manifest(
        &mut self,
        image: &ImageRef,
        d: &Digest,
        size: Option<u64>,
        downloaded: &mut u64,
    ) -> Result<Vec<u8>> {
        if let Some(b) = self.store.read(d)? {
            return Ok(b);
        }
        if let Some(p) = self.copy_from_archives(image, d, size)? {
            return Ok(std::fs::read(p)?);
        }
        let (reg, repo) = self.registry(image)?;
        let host = reg.host().to_string();
        let bytes = match reg.manifest(&repo, &d.to_string()) {
            Ok(b) => b,
            Err(Failure::NotFound) => {
                return Err(UserError::invalid(format!(
                    "image {image}: registry {host} has no manifest {d} for {repo}"
                ))
                .hint("check the digest; `skopeo inspect --raw docker://NAME:TAG | sha256sum` prints the current one")
                .into());
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        *downloaded += bytes.len() as u64;
        let actual = Digest::of(&bytes);
        if &actual != d || size.is_some_and(|s| s != bytes.len() as u64) {
            return Err(mismatch(image, "manifest", d, &actual, &host));
        }
        self.host
            .note(&format!("stack: {image}: manifest {d} from {host}"));
        self.store.put_bytes(&bytes)?;
        Ok(bytes)
    }

    /// The stored path of blob `desc`, fetched and verified if it is not stored yet.
    fn blob(
        &mut self,
        image: &ImageRef,
        desc: &Descriptor,
        downloaded: &mut u64,
    ) -> Result<PathBuf> {
        let d = desc.digest().map_err(|e| corrupt(image, &e))?;
        if let Some(p) = self.store.get(&d)? {
            return Ok(p);
        }
        if let Some(p) = self.copy_from_archives(image, &d, Some(desc.size))? {
            return Ok(p);
        }
        let (reg, repo) = registry_for(&mut self.registries, image)?;
        let host = reg.host().to_string();
        let store = &self.store;
        let mut failure = None;
        let started = std::time::Instant::now();
        let put = store.put(&d, Some(desc.size), |w| {
            match reg.blob(&repo, &d, w) {
                Ok(()) => {}
                Err(Failure::NotFound) => {
                    failure = Some(format!("registry {host} has no blob {d}"))
                }
                Err(Failure::Other(e)) => return Err(e),
            }
            Ok(())
        })?;
        if let Some(f) = failure {
            return Err(UserError::invalid(format!("image {image}: {f}")).into());
        }
        match put {
            Ok(p) => {
                *downloaded += desc.size;
                self.host.note(&format!(
                    "stack: {image}: blob {d} ({} bytes) from {host} in {:.2} s",
                    desc.size,
                    started.elapsed().as_secs_f64()
                ));
                Ok(p)
            }
            Err(Mismatch { actual, size }) => {
                Err(blob_mismatch(image, &d, desc.size, &actual, size, &host))
            }
        }
    }

    /// Copies blob `d` from the first local archive that has it into the store.
    fn copy_from_archives(
        &self,
        image: &ImageRef,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<Option<PathBuf>> {
        for a in &self.archives {
            let Some((len, mut r)) = a.blob(d)? else {
                continue;
            };
            let source = a.path.display().to_string();
            return match self.store.put_reader(d, size, &mut r)? {
                Ok(p) => {
                    self.host
                        .note(&format!("stack: {image}: blob {d} from {source}"));
                    Ok(Some(p))
                }
                Err(Mismatch { actual, .. }) => Err(blob_mismatch(
                    image,
                    d,
                    size.unwrap_or(len),
                    &actual,
                    len,
                    &source,
                )),
            };
        }
        Ok(None)
    }

    fn registry(&mut self, image: &ImageRef) -> Result<(&mut Registry, String)> {
        registry_for(&mut self.registries, image)
    }
}

fn registry_for<'r>(
    registries: &'r mut HashMap<String, Registry>,
    image: &ImageRef,
) -> Result<(&'r mut Registry, String)> {
    {
        let Some(host) = &image.registry else {
            return Err(UserError::invalid(format!(
                "image {image} names no registry, and no local OCI archive of the stack has it"
            ))
            .hint("write the registry in the image name (registry.example/team/app:1@sha256:...), or list an OCI archive that has the image in `oci-archives`")
            .into());
        };
        let reg = registries
            .entry(host.clone())
            .or_insert_with(|| Registry::new(host));
        Ok((reg, image.repository.clone()))
    }
}

/// A single-platform image must be for the image's architecture.
fn check_config_platform(image: &ImageRef, config: &[u8], arch: Arch) -> Result<()> {
    let head: ConfigHead = serde_json::from_slice(config)
        .map_err(|e| corrupt(image, &format!("config does not parse: {e}")))?;
    let p = oci::Platform {
        architecture: head.architecture.unwrap_or_default(),
        os: head.os.unwrap_or_default(),
        variant: head.variant,
    };
    if oci::platform_matches(&p, arch) {
        return Ok(());
    }
    Err(UserError::new(
        Kind::Unsupported,
        format!("image {image} is for {p}, not linux/{arch}"),
    )
    .hint("pin a multi-arch index or the image built for this architecture")
    .into())
}

fn corrupt(image: &ImageRef, e: &str) -> anyhow::Error {
    UserError::new(Kind::Corrupt, format!("image {image}: {e}")).into()
}

fn mismatch(
    image: &ImageRef,
    what: &str,
    want: &Digest,
    got: &Digest,
    source: &str,
) -> anyhow::Error {
    UserError::new(
        Kind::Corrupt,
        format!("image {image}: {source} sent a {what} with digest {got}, expected {want}"),
    )
    .hint("nothing was baked; if the image was rebuilt on purpose, pin the new digest, otherwise do not trust that registry")
    .into()
}

fn blob_mismatch(
    image: &ImageRef,
    want: &Digest,
    want_size: u64,
    got: &Digest,
    got_size: u64,
    source: &str,
) -> anyhow::Error {
    UserError::new(
        Kind::Corrupt,
        format!(
            "image {image}: blob {want} ({want_size} bytes) from {source} has digest {got} ({got_size} bytes)"
        ),
    )
    .hint("nothing was baked; the source serves other content than the manifest names")
    .into()
}
