//! Every GUID, UUID, volume id and hash seed of an image, derived from the recipe id and a
//! label, so two builds of one recipe agree and two recipes do not collide.

use sha2::{Digest, Sha256};
use uuid::Uuid;

fn bytes(recipe_id: &str, label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"imagebuild-id-v1\0");
    h.update(recipe_id.as_bytes());
    h.update(b"\0");
    h.update(label.as_bytes());
    h.finalize().into()
}

/// A random-looking (version 4 layout) UUID fixed by `recipe_id` and `label`.
pub fn uuid(recipe_id: &str, label: &str) -> Uuid {
    let b = bytes(recipe_id, label);
    let mut u = [0u8; 16];
    u.copy_from_slice(&b[..16]);
    uuid::Builder::from_random_bytes(u).into_uuid()
}

/// A 32-bit id (FAT volume id) fixed by `recipe_id` and `label`.
pub fn u32_id(recipe_id: &str, label: &str) -> u32 {
    let b = bytes(recipe_id, label);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The ids of one image.
#[derive(Debug, Clone)]
pub struct ImageIds {
    pub disk_guid: Uuid,
    pub esp_partuuid: Uuid,
    pub root_partuuid: Uuid,
    pub root_fs_uuid: Uuid,
    pub root_hash_seed: Uuid,
    pub esp_volume_id: u32,
}

impl ImageIds {
    pub fn derive(recipe_id: &str) -> Self {
        Self {
            disk_guid: uuid(recipe_id, "disk"),
            esp_partuuid: uuid(recipe_id, "esp-partition"),
            root_partuuid: uuid(recipe_id, "root-partition"),
            root_fs_uuid: uuid(recipe_id, "root-filesystem"),
            root_hash_seed: uuid(recipe_id, "root-hash-seed"),
            esp_volume_id: u32_id(recipe_id, "esp-volume"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_valid_v4() {
        let a = ImageIds::derive("r1");
        let b = ImageIds::derive("r1");
        let c = ImageIds::derive("r2");
        assert_eq!(a.root_partuuid, b.root_partuuid);
        assert_ne!(a.root_partuuid, c.root_partuuid);
        assert_ne!(a.root_partuuid, a.esp_partuuid);
        assert_eq!(a.disk_guid.get_version_num(), 4);
    }
}
