//! OCI and Docker v2 manifests and indexes: just what baking needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::reference::Digest;
use crate::profile::Arch;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The Accept header of a manifest request: every kind baking understands.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn digest(&self) -> Result<Digest, String> {
        Digest::parse(&self.digest)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest {
        media_type: String,
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses manifest or index bytes.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    match (
        doc.media_type.as_deref(),
        doc.manifests,
        doc.config,
        doc.layers,
    ) {
        (Some(OCI_INDEX | DOCKER_LIST) | None, Some(m), None, None) => Ok(Parsed::Index(m)),
        (mt @ (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None), None, Some(config), Some(layers)) => {
            Ok(Parsed::Manifest {
                media_type: mt.unwrap_or(OCI_MANIFEST).to_string(),
                config,
                layers,
            })
        }
        (Some(other), ..) => Err(format!("unsupported manifest media type {other}")),
        _ => Err("neither an image index nor an image manifest".into()),
    }
}

/// The `architecture` (and accepted variants) of `arch` in OCI platforms.
fn oci_arch(arch: Arch) -> (&'static str, &'static [&'static str]) {
    match arch {
        Arch::Amd64 => ("amd64", &[]),
        Arch::Arm64 => ("arm64", &["v8"]),
    }
}

/// Whether `p` is linux on `arch` (arm64: variant v8 or none).
pub fn platform_matches(p: &Platform, arch: Arch) -> bool {
    let (name, variants) = oci_arch(arch);
    p.os == "linux"
        && p.architecture == name
        && p.variant.as_deref().is_none_or(|v| variants.contains(&v))
}

/// Picks the manifest of an index for linux/`arch`; the error lists the platforms it has.
pub fn select_platform(manifests: &[Descriptor], arch: Arch) -> Result<&Descriptor, String> {
    if let Some(d) = manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| platform_matches(p, arch))
    }) {
        return Ok(d);
    }
    let mut have: Vec<String> = manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(ToString::to_string)
        .collect();
    have.dedup();
    let have = if have.is_empty() {
        "none".to_string()
    } else {
        have.join(", ")
    };
    Err(format!(
        "has no linux/{} image; the index has: {have}",
        oci_arch(arch).0
    ))
}

/// The parts of an image config that are checked.
#[derive(Deserialize)]
pub struct ConfigHead {
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub variant: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, os: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(Into::into),
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn index_resolves_to_the_platform_of_the_arch() {
        let m = vec![
            desc("arm", Some("v7"), "linux"),
            desc("arm64", Some("v8"), "linux"),
            desc("amd64", None, "linux"),
            desc("unknown", None, "unknown"),
        ];
        assert_eq!(
            select_platform(&m, Arch::Amd64)
                .unwrap()
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            "amd64"
        );
        let arm = select_platform(&m, Arch::Arm64).unwrap();
        assert_eq!(
            arm.platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
        let plain = vec![desc("arm64", None, "linux")];
        assert!(select_platform(&plain, Arch::Arm64).is_ok());
        let windows = vec![desc("amd64", None, "windows")];
        assert!(select_platform(&windows, Arch::Amd64).is_err());
    }

    #[test]
    fn missing_arch_lists_what_the_index_has() {
        let m = vec![
            desc("arm", Some("v7"), "linux"),
            desc("amd64", None, "linux"),
            desc("unknown", None, "unknown"),
        ];
        let e = select_platform(&m, Arch::Arm64).unwrap_err();
        assert_eq!(
            e,
            "has no linux/arm64 image; the index has: linux/arm/v7, linux/amd64"
        );
    }

    #[test]
    fn parses_index_and_manifest_kinds() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse(idx), Ok(Parsed::Index(_))));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"sha256:{0}","size":2}},"layers":[]}}"#,
            "1".repeat(64)
        );
        assert!(
            matches!(parse(m.as_bytes()), Ok(Parsed::Manifest { media_type, .. }) if media_type == DOCKER_MANIFEST)
        );
        assert!(parse(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v1+json","config":{},"layers":[]}"#).is_err());
    }
}
