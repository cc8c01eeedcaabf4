//! The boot chain: kernel selection, module closure, initramfs and Unified Kernel Image,
//! made natively from the image's own files (no emulation, no update-initramfs).

pub mod initramfs;
pub mod modules;
pub mod uki;
pub mod zkernel;

use anyhow::{Context, Result};

use crate::fs::fat::EspFile;
use crate::profile::{Arch, Recipe};
use crate::tree::{Kind, Tree};
use modules::RootView;

/// Packages every bootable Debian image gets: the UKI stub, the initramfs's busybox, and
/// systemd-repart, which grows the root partition to fill the disk on first boot.
pub const BOOT_PACKAGES: &[&str] = &["systemd-boot-efi", "busybox-static", "systemd-repart"];

/// Modules for finding the root disk on QEMU and the common clouds (built-in ones are skipped).
const ROOT_DISK_MODULES: &[&str] = &[
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "nvme",
    "sd_mod",
    "xen_blkfront",
    "hv_storvsc",
    "ahci",
    "ext4",
];

/// Modules systemd loads itself as soon as it starts, unless they are loaded already, by
/// dlopening libkmod and reading the module indexes first. The initramfs loads them with
/// busybox instead: under TCG, switch_root to systemd's banner took 1.07 s instead of 1.2 s.
const EARLY_MODULES: &[&str] = &["autofs4"];

/// Seconds the initramfs waits for the root device.
const ROOT_TIMEOUT_SECS: u32 = 30;

impl RootView for Tree {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Tree::read(self, path)
    }

    /// Regular files under `dir` (symlinked directories followed), named under `dir`.
    fn files_under(&self, dir: &str) -> Result<Vec<String>> {
        let Some(real) = self.resolve(dir) else {
            return Ok(Vec::new());
        };
        let shown = format!("/{}", crate::tree::clean(dir));
        Ok(self
            .paths_under(&real)
            .into_iter()
            .filter(|p| {
                matches!(
                    self.get(p).map(|e| &e.kind),
                    Some(Kind::File(_) | Kind::Hardlink(_))
                )
            })
            .map(|p| format!("{shown}{}", &p[real.len()..]))
            .collect())
    }
}

/// What went onto the ESP.
pub struct Boot {
    pub files: Vec<EspFile>,
    pub kernel: String,
    pub cmdline: String,
    pub uki_size: usize,
    pub initramfs_size: usize,
}

/// The kernel command line: root first, then the profile's (so its console= comes last).
pub fn cmdline(recipe: &Recipe, root_partuuid: &str) -> String {
    let mut parts = vec![format!("root=PARTUUID={root_partuuid}"), "ro".to_string()];
    parts.extend(recipe.cmdline.iter().cloned());
    parts.join(" ")
}

/// Builds the initramfs and UKI from the tree and returns the ESP's files.
pub fn make(tree: &Tree, recipe: &Recipe, root_partuuid: &str) -> Result<Boot> {
    let (kver, linux) = modules::find_kernel(tree)?;
    let mut wanted: Vec<&str> = [ROOT_DISK_MODULES, EARLY_MODULES].concat();
    wanted.extend(recipe.modules.iter().map(String::as_str));
    let closure = modules::module_closure(tree, &kver, &wanted)?;
    let busybox = tree
        .read("usr/bin/busybox")?
        .context("the image has no /usr/bin/busybox: add busybox-static to [packages] include")?;
    let initrd = initramfs::build_initramfs(&initramfs::InitramfsSpec {
        busybox: &busybox,
        kver: &kver,
        modules: &closure,
        root_timeout_secs: ROOT_TIMEOUT_SECS,
        epoch: recipe.epoch,
    })?;
    let stub_path = stub_path(recipe.arch);
    let efi_name = match recipe.arch {
        Arch::Amd64 => "BOOTX64.EFI",
        Arch::Arm64 => "BOOTAA64.EFI",
    };
    let stub = tree.read(stub_path)?.with_context(|| {
        format!("the image has no /{stub_path}: add systemd-boot-efi to [packages] include")
    })?;
    let osrel = tree.read("etc/os-release")?.unwrap_or_default();
    let cmdline = cmdline(recipe, root_partuuid);
    // systemd-stub does not decompress: a plain arm64 Image goes in compressed, with a loader.
    let linux = if recipe.arch == Arch::Arm64 && zkernel::is_arm64_image(&linux) {
        zkernel::wrap(zkernel::LOADER_AARCH64, &linux)?
    } else {
        linux
    };
    let uki = uki::build_uki(&uki::UkiParts {
        stub: &stub,
        osrel: &osrel,
        cmdline: &cmdline,
        linux: &linux,
        initrd: &initrd,
    })?;
    Ok(Boot {
        uki_size: uki.len(),
        initramfs_size: initrd.len(),
        files: vec![EspFile {
            path: format!("EFI/BOOT/{efi_name}"),
            data: uki,
        }],
        kernel: kver,
        cmdline,
    })
}

/// Where the image's systemd-stub for `arch` is (from systemd-boot-efi).
pub fn stub_path(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        Arch::Arm64 => "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
    }
}
