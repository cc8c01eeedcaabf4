//! The root filesystem: ext4 made by `mke2fs -d ROOTFS.tar`, written at an offset of the
//! image file, with every knob that could vary between runs pinned.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::size::Bytes;

/// mke2fs defaults for imagebuild's ext4, independent of the host's /etc/mke2fs.conf.
/// Features are the ones Debian's kernels and ext4-view both read; no orphan_file
/// (kernels before 5.15 refuse it), no metadata_csum_seed.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
\tlazy_itable_init = false
\tlazy_journal_init = false

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What makes one ext4 filesystem.
pub struct Ext4<'a> {
    pub image: &'a Path,
    pub offset: u64,
    pub size: u64,
    pub rootfs_tar: &'a Path,
    pub label: &'a str,
    pub uuid: uuid::Uuid,
    pub hash_seed: uuid::Uuid,
    pub epoch: i64,
    pub inodes: u64,
    /// A scratch directory for the pinned mke2fs.conf.
    pub work: &'a Path,
}

/// Runs mke2fs. Content that does not fit is an error giving both numbers.
pub fn make(host: &Host, fs: &Ext4<'_>) -> Result<()> {
    let conf = fs.work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).with_context(|| format!("writing {}", conf.display()))?;
    let mut cmd = Command::new("mke2fs");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", fs.epoch.to_string())
        .env("LC_ALL", "C")
        .args(["-t", "ext4", "-F", "-q", "-b", "4096", "-L", fs.label])
        .arg("-U")
        .arg(fs.uuid.to_string())
        .arg("-N")
        .arg(fs.inodes.to_string())
        .arg("-E")
        .arg(format!(
            "hash_seed={},lazy_itable_init=0,lazy_journal_init=0,nodiscard,root_owner=0:0,offset={}",
            fs.hash_seed, fs.offset
        ))
        .arg("-d")
        .arg(fs.rootfs_tar)
        .arg(fs.image)
        .arg(format!("{}k", fs.size / 1024));
    host.run(&mut cmd).map_err(|e| explain_full(e, fs.size))?;
    Ok(())
}

fn explain_full(e: anyhow::Error, size: u64) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Could not allocate")
        || text.contains("No space left")
        || text.contains("Could not allocate block")
    {
        return UserError::new(
            Kind::Invalid,
            format!(
                "the root filesystem ({}) is too small for the content",
                Bytes(size)
            ),
        )
        .hint("raise [image] size, or set size = \"auto\"")
        .into();
    }
    e
}

/// The smallest ext4 size for `content_blocks` 4 KiB blocks of data and `inodes` inodes,
/// with room for metadata and the journal, before any headroom.
pub fn minimum_size(content_blocks: u64, inodes: u64) -> u64 {
    let data = content_blocks * 4096;
    let inode_tables = inodes * 256;
    // Bitmaps, group descriptors, directory growth: ~3%; journal: up to 64 MiB.
    let meta = data / 32 + 4 * 1024 * 1024;
    let journal = journal_size(data);
    data + inode_tables + meta + journal
}

/// The journal mke2fs picks for a filesystem of about `bytes` (ext2fs_default_journal_size).
fn journal_size(bytes: u64) -> u64 {
    let blocks = bytes / 4096;
    let j = match blocks {
        0..32_768 => 1024,
        32_768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..1_048_576 => 16_384,
        _ => 32_768,
    };
    j * 4096
}
