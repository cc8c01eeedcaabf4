//! The profile file format: what each key means. Every table denies unknown keys, so a
//! typo is an error with its file and line rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One profile file, before or after `extends` merging. Every key is optional here;
/// [`super::Recipe`] applies defaults and checks what is required.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileFile {
    /// Profiles merged before this one, by name (`profiles/NAME.toml`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extends: Vec<String>,
    #[serde(default)]
    pub image: ImageSection,
    #[serde(default)]
    pub base: BaseSection,
    #[serde(default)]
    pub packages: PackagesSection,
    /// Directory trees copied over the root filesystem, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlay: Vec<OverlaySection>,
    #[serde(default)]
    pub files: FilesSection,
    #[serde(default)]
    pub boot: BootSection,
    #[serde(default)]
    pub verify: VerifySection,
    /// Docker Compose stacks baked into the image, each with its container images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<StackSection>,
    /// Login accounts, in order (uids are allocated in this order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<UserSection>,
    /// systemd units enabled, disabled or masked at build time.
    #[serde(default)]
    pub services: ServicesSection,
    /// The SSH server's host keys.
    #[serde(default)]
    pub ssh: SshSection,
    /// Filesystems that keep a server's data across a reflash, each found by its label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<StateSection>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSection {
    /// Image name (IMAGE_ID); defaults to the profile name.
    pub name: Option<String>,
    /// Image version (IMAGE_VERSION), part of every output file name.
    pub version: Option<String>,
    /// Target architecture.
    pub arch: Option<Arch>,
    /// Whole-disk size ("4G") or "auto" (content plus headroom).
    pub size: Option<String>,
    /// Size of the EFI system partition (default 128M).
    pub esp_size: Option<String>,
    /// Output formats besides the raw image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
    /// /etc/hostname; defaults to the image name.
    pub hostname: Option<String>,
    /// The one clock of the build (SOURCE_DATE_EPOCH), in seconds since 1970.
    pub source_date_epoch: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BaseSection {
    /// "debian": bootstrap with mmdebstrap.
    pub distro: Option<String>,
    /// Debian suite (default trixie).
    pub suite: Option<String>,
    /// mmdebstrap variant (default minbase).
    pub variant: Option<String>,
    /// Archive components (default ["main"]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// Mirror URI; default: the mirror the host's apt is configured with.
    pub mirror: Option<String>,
    /// A local root filesystem tarball (.tar, .tar.gz, .tar.xz, .tar.zst) instead of a distro.
    pub tarball: Option<String>,
    /// The tarball's sha256; required with `tarball`.
    pub sha256: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackagesSection {
    /// Packages installed on top of the variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OverlaySection {
    /// Directory, relative to the project, copied onto `/`.
    pub path: String,
    /// Modes of overlay paths ("etc/app/key.conf" = "0600"); default 0644 files, 0755 dirs
    /// (executables keep 0755).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mode: BTreeMap<String, String>,
    /// Owners of overlay paths ("srv/app" = "1000:1000" or "www-data:www-data"); default root:root.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owner: BTreeMap<String, String>,
    /// Overlay paths that may hold a private key or a password hash, deliberately.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_secrets: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilesSection {
    /// Paths removed from the root filesystem (with everything below them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootSection {
    /// Kernel command line; imagebuild adds root=PARTUUID=... itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
    /// Extra kernel modules for the initramfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifySection {
    /// Health checks run inside the booted image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub check: Vec<toml::Table>,
}

/// One `[[stack]]`: a Docker Compose project started at boot from images baked into the image.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StackSection {
    /// The compose project name, `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    /// The compose file, relative to the project.
    pub compose: String,
    /// Resolve `name:tag` images without a digest at build time instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unpinned: bool,
    /// Local OCI image-layout archives (tar), relative to the project, searched before any
    /// registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oci_archives: Vec<String>,
}

/// One `[[user]]`: a login account with SSH keys and no password.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserSection {
    /// Login name (a valid Debian user name).
    pub name: String,
    /// Fixed uid; default: the first free id >= 1000, in profile order.
    pub uid: Option<u32>,
    /// Fixed gid of the user's own group (named like the user); default: the uid.
    pub gid: Option<u32>,
    /// An existing group as the primary group instead of a group of the user's own.
    pub group: Option<String>,
    /// Supplementary groups; each must exist in the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// OpenSSH public keys for ~/.ssh/authorized_keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Login shell; default /bin/bash if the image has it, else /bin/sh.
    pub shell: Option<String>,
    /// Home directory; default /home/NAME.
    pub home: Option<String>,
    /// Passwordless sudo through /etc/sudoers.d (also implied by "sudo" in groups).
    pub sudo: Option<bool>,
}

/// One `[[state]]`: an ext4 filesystem, found by its label, that survives a reflash.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateSection {
    /// The ext4 label (and, on the OS disk, the GPT partition name): 1-16 of
    /// `[A-Za-z0-9_-]`.
    pub label: String,
    /// Where it is mounted (an absolute path).
    pub mount: String,
    /// A separate disk or cloud volume, as a glob under /dev/; none: a partition on the OS
    /// disk after the root.
    pub device: Option<String>,
    /// Size of the partition on the OS disk ("20G"); only without `device`.
    pub size: Option<String>,
    /// Paths bind-mounted from MOUNT/PATH, seeded with the image's content on first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServicesSection {
    /// Units enabled as `systemctl enable` would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<String>,
    /// Units disabled as `systemctl disable` would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Units masked (linked to /dev/null) as `systemctl mask` would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SshSection {
    /// Host key types generated on first boot: "ed25519", "ecdsa", "rsa" (default: all
    /// three, as `ssh-keygen -A` makes them). A set, like the lists of [services].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<String>,
}

/// An SSH host key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyType {
    Ed25519,
    Ecdsa,
    Rsa,
}

impl HostKeyType {
    /// What `ssh-keygen -A` makes.
    pub const ALL: [HostKeyType; 3] = [HostKeyType::Rsa, HostKeyType::Ecdsa, HostKeyType::Ed25519];

    /// The name in profiles, in `ssh-keygen -t` and in `/etc/ssh/ssh_host_NAME_key`.
    pub fn name(self) -> &'static str {
        match self {
            HostKeyType::Ed25519 => "ed25519",
            HostKeyType::Ecdsa => "ecdsa",
            HostKeyType::Rsa => "rsa",
        }
    }

    pub fn from_name(name: &str) -> Option<HostKeyType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A target architecture, named the Debian way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// ELF e_machine of the architecture's binaries.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => goblin::elf::header::EM_X86_64,
            Arch::Arm64 => goblin::elf::header::EM_AARCH64,
        }
    }

    /// The architecture of the machine imagebuild runs on, if it is one it builds for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}
