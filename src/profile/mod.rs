//! Profiles: TOML files in `profiles/`, composed with `extends`, merged, validated and
//! digested into a [`Recipe`], the one description of an image every later stage reads.

pub mod access;
mod merge;
pub mod schema;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};
use toml::Table;

use crate::error::UserError;
use crate::size::{Bytes, MIB};
pub use access::{Located, ServicesSpec, UserSpec};
pub use schema::{Arch, ProfileFile};
pub use state::StateSpec;

/// Default Debian suite.
pub const DEFAULT_SUITE: &str = "trixie";
/// The clock used when a profile sets none: 2026-01-01T00:00:00Z. Never "now".
pub const DEFAULT_EPOCH: i64 = 1_767_225_600;
const DEFAULT_ESP_SIZE: u64 = 128 * MIB;

/// A project directory: `profiles/`, `overlays/`, `qemu/` live under it.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
}

/// One profile file as read, kept so errors can point into it.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path as shown to the user (relative to the project).
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// The 1-based line of the first occurrence of `needle`, if any.
    pub fn line_of(&self, needle: &str) -> Option<usize> {
        let at = self.text.find(needle)?;
        Some(self.text[..at].matches('\n').count() + 1)
    }

    /// The line that sets `key` (`key = ...` at the start of a line).
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|i| i + 1)
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
}

/// The merged profile and where it came from.
#[derive(Debug, Clone)]
pub struct Merged {
    pub name: String,
    pub table: Table,
    /// Every file read, parents first.
    pub sources: Vec<Source>,
}

impl Merged {
    /// "profiles/x.toml:12" for the first file (child first) that sets `key`.
    pub fn locate_key(&self, key: &str) -> String {
        self.sources
            .iter()
            .rev()
            .find_map(|s| {
                s.line_of_key(key)
                    .map(|l| format!("{}:{l}", s.path.display()))
            })
            .unwrap_or_else(|| self.locate(key))
    }

    /// "profiles/x.toml:12" for the first file (child first) mentioning `needle`.
    pub fn locate(&self, needle: &str) -> String {
        self.sources
            .iter()
            .rev()
            .find_map(|s| {
                s.line_of(needle)
                    .map(|l| format!("{}:{l}", s.path.display()))
            })
            .unwrap_or_else(|| {
                self.sources
                    .last()
                    .map_or_else(String::new, |s| s.path.display().to_string())
            })
    }
}

impl Project {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// Names of the profiles in `profiles/`, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.profiles_dir();
        let rd = std::fs::read_dir(&dir).map_err(|e| {
            UserError::invalid(format!("cannot read {}: {e}", dir.display()))
                .hint("run imagebuild in a project directory, or pass -C DIR")
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        names.sort();
        Ok(names)
    }

    fn profile_path(&self, name: &str) -> PathBuf {
        self.profiles_dir().join(format!("{name}.toml"))
    }

    /// Whether `profiles/NAME.toml` exists (`name` must be a plain name).
    pub fn profile_exists(&self, name: &str) -> bool {
        crate::release::name::is_plain(name) && self.profile_path(name).is_file()
    }

    fn shown(&self, p: &Path) -> PathBuf {
        p.strip_prefix(&self.root)
            .map_or_else(|_| p.to_path_buf(), Path::to_path_buf)
    }

    /// Reads `name` and everything it extends, and merges them (parents first). A name
    /// is a plain name (never a path): `profiles/NAME.toml`.
    pub fn load(&self, name: &str) -> Result<Merged> {
        if let Err(e) = crate::release::name::check_plain("profile name", name) {
            return Err(UserError::invalid(e)
                .hint("name a profile by its file name in profiles/ without .toml (`imagebuild list` lists them)")
                .into());
        }
        let mut merged = Merged {
            name: name.to_string(),
            table: Table::new(),
            sources: Vec::new(),
        };
        let mut stack = Vec::new();
        self.load_into(name, None, &mut stack, &mut merged)?;
        merged.table.remove("extends");
        Ok(merged)
    }

    fn load_into(
        &self,
        name: &str,
        parent: Option<&Source>,
        stack: &mut Vec<String>,
        out: &mut Merged,
    ) -> Result<()> {
        if let (Some(p), Err(e)) = (parent, crate::release::name::check_plain("extends", name)) {
            let line = p.line_of(&format!("\"{name}\"")).unwrap_or(1);
            return Err(
                UserError::invalid(format!("{}:{line}: {e}", p.path.display()))
                    .hint("extends names profiles in profiles/ by file name without .toml")
                    .into(),
            );
        }
        if let Some(pos) = stack.iter().position(|n| n == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_string());
            let at = parent.map(|p| {
                format!(
                    "{}:{}: ",
                    p.path.display(),
                    p.line_of("extends").unwrap_or(1)
                )
            });
            return Err(UserError::invalid(format!(
                "{}extends cycle: {}",
                at.unwrap_or_default(),
                cycle.join(" -> ")
            ))
            .hint("remove one of these `extends` entries")
            .into());
        }
        let source = self.read_source(name, parent)?;
        let file = parse_file(&source)?;
        stack.push(name.to_string());
        for parent_name in &file.extends {
            self.load_into(parent_name, Some(&source), stack, out)?;
        }
        stack.pop();
        // OK to unwrap: parse_file already parsed this text as a table.
        let table: Table = source.text.parse().unwrap_or_default();
        merge::merge(&mut out.table, table);
        out.sources.push(source);
        Ok(())
    }

    fn read_source(&self, name: &str, parent: Option<&Source>) -> Result<Source> {
        let path = self.profile_path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Source {
                path: self.shown(&path),
                text,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = self.list().unwrap_or_default().join(", ");
                let msg = match parent {
                    Some(p) => format!(
                        "{}:{}: extends `{name}`, but {} does not exist",
                        p.path.display(),
                        p.line_of(&format!("\"{name}\"")).unwrap_or(1),
                        self.shown(&path).display()
                    ),
                    None => format!(
                        "no profile `{name}`: {} does not exist",
                        self.shown(&path).display()
                    ),
                };
                let hint = if known.is_empty() {
                    format!(
                        "no profiles in {}: run imagebuild in a project directory, or pass -C DIR",
                        self.shown(&self.profiles_dir()).display()
                    )
                } else {
                    format!("profiles here: {known}")
                };
                Err(UserError::invalid(msg).hint(hint).into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(not_utf8(
                &self.shown(&path),
                &std::fs::read(&path).unwrap_or_default(),
            )),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }
}

/// The error for a profile that is not UTF-8: where the first bad byte is.
fn not_utf8(shown: &Path, bytes: &[u8]) -> anyhow::Error {
    let good = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) => e.valid_up_to(),
    };
    let before = &bytes[..good];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = good
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    UserError::invalid(format!(
        "{}:{line}:{column}: not UTF-8 (byte 0x{:02x}); profiles are TOML, which is UTF-8",
        shown.display(),
        bytes.get(good).copied().unwrap_or(0)
    ))
    .hint("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")
    .into()
}

/// Parses one file strictly (unknown keys and wrong types are errors with file:line).
fn parse_file(source: &Source) -> Result<ProfileFile> {
    toml::from_str::<ProfileFile>(&source.text).map_err(|e| {
        let line = e.span().map_or(1, |s| source.line_at(s.start));
        let msg = e.message().trim().to_string();
        let hint = if msg.contains("unknown field") {
            "check the key's spelling; README.md lists every profile key"
        } else if msg.contains("unknown variant") {
            "use one of the values listed"
        } else {
            "fix the TOML syntax at that line"
        };
        UserError::invalid(format!("{}:{line}: {msg}", source.path.display()))
            .hint(hint)
            .into()
    })
}

/// What the base root filesystem is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSpec {
    Debian {
        suite: String,
        variant: String,
        components: Vec<String>,
        mirror: Option<String>,
        packages: Vec<String>,
    },
    Tarball {
        path: PathBuf,
        sha256: String,
    },
}

/// How big the disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSize {
    Auto,
    Fixed(Bytes),
}

/// An overlay directory and the attributes given for its paths.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    /// As written in the profile (relative to the project).
    pub path: String,
    pub dir: PathBuf,
    pub modes: BTreeMap<String, u32>,
    pub owners: BTreeMap<String, String>,
    /// Paths (relative to the overlay) that may hold a private key or password hash.
    pub allow_secrets: Vec<String>,
    /// Where the overlay is declared ("profiles/x.toml:12").
    pub at: String,
}

/// A merged, validated profile: everything a build needs to know.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Profile name (`prod-arm64`).
    pub profile: String,
    /// The recipe id: hex sha256 of the profile's name and the canonical merged profile,
    /// everything of the profile that reaches the image's bytes (the name is the image
    /// name and hostname by default, and seeds the disk and filesystem ids through this).
    pub id: String,
    /// The digest of the merged profile alone: the recipe id of locks written before the
    /// id covered the name, still accepted for them.
    pub content_id: String,
    pub image_name: String,
    pub version: String,
    pub arch: Arch,
    pub size: DiskSize,
    pub esp_size: Bytes,
    pub formats: Vec<String>,
    pub hostname: String,
    pub epoch: i64,
    pub base: BaseSpec,
    pub overlays: Vec<OverlaySpec>,
    pub remove: Vec<String>,
    pub cmdline: Vec<String>,
    pub modules: Vec<String>,
    pub checks: Vec<crate::verify::health::Check>,
    pub stacks: Vec<StackSpec>,
    /// Login accounts, in profile order.
    pub users: Vec<UserSpec>,
    pub services: ServicesSpec,
    /// SSH host key types generated on first boot.
    pub ssh_host_keys: Vec<schema::HostKeyType>,
    /// Filesystems that survive a reflash, in profile order.
    pub states: Vec<StateSpec>,
    pub merged: Merged,
}

/// A `[[stack]]` with its paths resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    pub name: String,
    /// The compose file as written in the profile (relative to the project).
    pub compose: String,
    /// The compose file on the host.
    pub compose_path: PathBuf,
    /// Where the `[[stack]]` is (`profiles/x.toml:12`), for errors about it.
    pub at: String,
    pub allow_unpinned: bool,
    /// Local OCI archives on the host, in the order given.
    pub oci_archives: Vec<PathBuf>,
}

impl Recipe {
    /// Loads, merges and validates profile `name` of `project`.
    pub fn load(project: &Project, name: &str) -> Result<Recipe> {
        let merged = project.load(name)?;
        Self::from_merged(project, merged)
    }

    fn from_merged(project: &Project, merged: Merged) -> Result<Recipe> {
        let shown = merged
            .sources
            .last()
            .map(|s| s.path.display().to_string())
            .unwrap_or_default();
        // Each file was checked on its own; the merge of valid files is valid TOML for the schema.
        let p: ProfileFile = merged
            .table
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| {
                UserError::invalid(format!("{shown}: {}", e.message().trim()))
            })?;
        let need = |what: &str, key: &str| {
            UserError::invalid(format!("{shown}: the merged profile has no `{key}`")).hint(format!(
                "add `{key} = ...` under [{what}] in {shown} or a profile it extends"
            ))
        };
        let arch = p.image.arch.ok_or_else(|| need("image", "arch"))?;
        let version = p
            .image
            .version
            .clone()
            .ok_or_else(|| need("image", "version"))?;
        check_name(&merged, "version", &version, "2026.11.1")?;
        let image_name = p.image.name.clone().unwrap_or_else(|| merged.name.clone());
        check_name(&merged, "name", &image_name, "prod")?;
        let size = match p.image.size.as_deref() {
            None | Some("auto") => DiskSize::Auto,
            Some(s) => DiskSize::Fixed(parse_size(&merged, s)?),
        };
        let esp_size = p
            .image
            .esp_size
            .as_deref()
            .map_or(Ok(Bytes(DEFAULT_ESP_SIZE)), |s| parse_size(&merged, s))?;
        let formats = check_formats(&merged, &p.image.formats)?;
        let base = base_spec(project, &merged, &p)?;
        let overlays = p
            .overlay
            .iter()
            .map(|o| overlay_spec(project, &merged, o))
            .collect::<Result<_>>()?;
        let content_id = digest(&merged.table);
        let id = recipe_id(&merged.name, &merged.table);
        let hostname = p
            .image
            .hostname
            .clone()
            .unwrap_or_else(|| image_name.clone());
        check_hostname(&merged, &p, &hostname)?;
        Ok(Recipe {
            profile: merged.name.clone(),
            id,
            content_id,
            hostname,
            image_name,
            version,
            arch,
            size,
            esp_size,
            formats,
            epoch: check_epoch(&merged, p.image.source_date_epoch)?,
            base,
            overlays,
            remove: p.files.remove.clone(),
            cmdline: p.boot.cmdline.clone(),
            modules: p.boot.modules.clone(),
            checks: parse_checks(&merged, &p.verify.check)?,
            stacks: stack_specs(project, &merged, &p.stack)?,
            users: access::users(&merged, &p.user)?,
            services: access::services(&merged, &p.services)?,
            ssh_host_keys: access::ssh_host_keys(&merged, &p.ssh)?,
            states: state::states(&merged, &p.state)?,
            merged,
        })
    }

    /// The merged profile as TOML (`imagebuild show`).
    pub fn show(&self) -> String {
        toml::to_string_pretty(&self.merged.table).unwrap_or_default()
    }

    /// `prod-arm64-2026.11.1`
    pub fn artifact_stem(&self) -> String {
        format!("{}-{}", self.profile, self.version)
    }
}

/// The recipe id of profile `name` with the merged `table`: two profiles with the same
/// text under different names make different images (their hostnames, image names and ids
/// differ), so the name is part of it. `[image] formats` is not: it chooses which files
/// are written from the image, not the image's bytes, so adding a cloud format keeps the
/// release's sha256 and its lock.
pub fn recipe_id(name: &str, table: &Table) -> String {
    let canonical = serde_json::to_vec(&image_bytes_only(table)).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"imagebuild-recipe-v2\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// sha256 over the canonical (sorted-key JSON) form of the merged profile.
pub fn digest(table: &Table) -> String {
    let canonical = serde_json::to_vec(&image_bytes_only(table)).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"imagebuild-recipe-v1\0");
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// `table` without the keys that do not reach the raw image's bytes.
fn image_bytes_only(table: &Table) -> Table {
    let mut t = table.clone();
    if let Some(toml::Value::Table(image)) = t.get_mut("image") {
        image.remove("formats");
    }
    t
}

/// `[image] name` and `version` become parts of paths and file names: plain names only.
fn check_name(m: &Merged, key: &str, v: &str, example: &str) -> Result<()> {
    let Err(e) = crate::release::name::check_plain(key, v) else {
        return Ok(());
    };
    let at = m.locate(&format!("{key} = "));
    Err(UserError::invalid(format!("{at}: {e}"))
        .hint(format!(
            "set [image] {key} to a plain name, e.g. \"{example}\""
        ))
        .into())
}

/// The earliest clock every part of an image can hold: FAT (the ESP) starts in 1980.
const EPOCH_MIN: i64 = 315_532_800;
/// The latest: the initramfs's cpio (newc) keeps 32-bit unsigned times, 2106-02-07.
const EPOCH_MAX: i64 = u32::MAX as i64;

/// `source-date-epoch` within what the ESP, the initramfs, ext4 and shadow can hold.
fn check_epoch(m: &Merged, epoch: Option<i64>) -> Result<i64> {
    let Some(e) = epoch else {
        return Ok(DEFAULT_EPOCH);
    };
    if (EPOCH_MIN..=EPOCH_MAX).contains(&e) {
        return Ok(e);
    }
    Err(UserError::invalid(format!(
        "{}: source-date-epoch {e} is outside what the image can hold \
         ({EPOCH_MIN}, 1980-01-01, to {EPOCH_MAX}, 2106-02-07: the ESP's FAT dates start \
         in 1980, the initramfs keeps 32-bit times)",
        m.locate("source-date-epoch")
    ))
    .hint(format!(
        "set source-date-epoch to seconds since 1970 in that range, e.g. {DEFAULT_EPOCH} \
         (2026-01-01), or `date -d 2026-01-01 +%s`"
    ))
    .into())
}

/// The hostname lands in /etc/hostname and the kernel: an RFC 1123 name. Without
/// `[image] hostname` it is the image name, and the error says so.
fn check_hostname(m: &Merged, p: &ProfileFile, hostname: &str) -> Result<()> {
    let Err(e) = crate::machine::Hostname::new(hostname) else {
        return Ok(());
    };
    let err = if p.image.hostname.is_some() {
        UserError::invalid(format!("{}: {e}", m.locate("hostname")))
            .hint(crate::machine::HOSTNAME_HINT)
    } else {
        let at = match &p.image.name {
            Some(name) => m.locate(&format!("\"{name}\"")),
            None => m.locate("[image]"),
        };
        UserError::invalid(format!(
            "{at}: the image name is the hostname when [image] hostname is not set, and {e}"
        ))
        .hint(format!(
            "set [image] hostname; {}",
            crate::machine::HOSTNAME_HINT
        ))
    };
    Err(err.into())
}

fn parse_checks(m: &Merged, tables: &[Table]) -> Result<Vec<crate::verify::health::Check>> {
    tables
        .iter()
        .map(|t| {
            toml::Value::Table(t.clone()).try_into().map_err(|e: toml::de::Error| {
                UserError::invalid(format!("{}: [[verify.check]]: {}", m.locate("[[verify.check]]"), e.message().trim()))
                    .hint("a check is one of: unit = \"x.service\", tcp = PORT, command = \"...\", http = \"http://localhost:PORT/path\"")
                    .into()
            })
        })
        .collect()
}

fn parse_size(m: &Merged, s: &str) -> Result<Bytes> {
    Bytes::parse(s).map_err(|e| {
        UserError::invalid(format!("{}: {e}", m.locate(&format!("\"{s}\""))))
            .hint("sizes look like \"4G\", \"512M\" or \"auto\"")
            .into()
    })
}

fn check_formats(m: &Merged, formats: &[String]) -> Result<Vec<String>> {
    let mut out = vec!["raw".to_string()];
    for f in formats {
        if crate::formats::Format::parse(f).is_none() {
            return Err(UserError::new(
                crate::error::Kind::Unsupported,
                format!(
                    "{}: unknown image format `{f}`",
                    m.locate(&format!("\"{f}\""))
                ),
            )
            .hint(format!(
                "formats imagebuild writes: {}",
                crate::formats::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        if !out.contains(f) {
            out.push(f.clone());
        }
    }
    Ok(out)
}

fn base_spec(project: &Project, m: &Merged, p: &ProfileFile) -> Result<BaseSpec> {
    let b = &p.base;
    match (b.distro.as_deref(), b.tarball.as_deref()) {
        (Some("debian"), None) => Ok(BaseSpec::Debian {
            suite: b.suite.clone().unwrap_or_else(|| DEFAULT_SUITE.into()),
            variant: b.variant.clone().unwrap_or_else(|| "minbase".into()),
            components: if b.components.is_empty() {
                vec!["main".into()]
            } else {
                b.components.clone()
            },
            mirror: b.mirror.clone(),
            packages: p.packages.include.clone(),
        }),
        (Some(other), None) => Err(UserError::new(
            crate::error::Kind::Unsupported,
            format!(
                "{}: unknown distro `{other}`",
                m.locate(&format!("\"{other}\""))
            ),
        )
        .hint("set distro = \"debian\", or use tarball = \"FILE\" with sha256 = \"...\"")
        .into()),
        (None, Some(path)) => {
            let sha = b.sha256.clone().ok_or_else(|| {
                UserError::invalid(format!(
                    "{}: tarball base without sha256",
                    m.locate("tarball")
                ))
                .hint("add sha256 = \"...\" (the output of `sha256sum FILE`) under [base]")
            })?;
            Ok(BaseSpec::Tarball {
                path: project.root.join(path),
                sha256: sha.to_ascii_lowercase(),
            })
        }
        (Some(_), Some(_)) => Err(UserError::invalid(format!(
            "{}: [base] sets both distro and tarball",
            m.locate("tarball")
        ))
        .hint("keep one of them")
        .into()),
        (None, None) => Err(UserError::invalid(format!(
            "{}: [base] has no distro or tarball",
            m.locate("[base]")
        ))
        .hint("add distro = \"debian\" under [base] (or extend profiles/base.toml)")
        .into()),
    }
}

fn overlay_spec(project: &Project, m: &Merged, o: &schema::OverlaySection) -> Result<OverlaySpec> {
    let dir = project.root.join(&o.path);
    let at = m.locate(&format!("\"{}\"", o.path));
    if dir.exists() && !dir.is_dir() {
        return Err(UserError::invalid(format!(
            "{at}: overlay {} is a file, not a directory",
            o.path
        ))
        .hint(format!(
            "point [[overlay]] path at a directory whose files are laid out as in the image \
             (e.g. overlays/web/etc/motd for /etc/motd), or move {} into one",
            o.path
        ))
        .into());
    }
    if !dir.is_dir() {
        return Err(UserError::invalid(format!(
            "{at}: overlay directory {} does not exist",
            o.path
        ))
        .hint(format!("create {} or remove this [[overlay]]", o.path))
        .into());
    }
    let mut modes = BTreeMap::new();
    for (path, mode) in &o.mode {
        let v = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .ok_or_else(|| {
                UserError::invalid(format!(
                    "{}: mode `{mode}` of {path} is not an octal mode",
                    m.locate(mode)
                ))
                .hint("write modes as octal strings, e.g. \"0600\"")
            })?;
        modes.insert(path.trim_matches('/').to_string(), v);
    }
    let owners = o
        .owner
        .iter()
        .map(|(k, v)| (k.trim_matches('/').to_string(), v.clone()))
        .collect();
    Ok(OverlaySpec {
        path: o.path.clone(),
        dir,
        modes,
        owners,
        allow_secrets: o
            .allow_secrets
            .iter()
            .map(|p| p.trim_matches('/').to_string())
            .collect(),
        at,
    })
}

fn stack_specs(
    project: &Project,
    m: &Merged,
    stacks: &[schema::StackSection],
) -> Result<Vec<StackSpec>> {
    let mut out: Vec<StackSpec> = Vec::new();
    for s in stacks {
        let at = m.locate(&format!("\"{}\"", s.name));
        if !valid_stack_name(&s.name) {
            return Err(UserError::invalid(format!(
                "{at}: stack name `{}` is not a compose project name",
                s.name
            ))
            .hint("use lowercase letters, digits, `_` and `-`, starting with a letter or digit")
            .into());
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(
                UserError::invalid(format!("{at}: two stacks are named `{}`", s.name))
                    .hint("give each [[stack]] its own name")
                    .into(),
            );
        }
        let compose_at = m.locate(&format!("\"{}\"", s.compose));
        let compose_path = project.root.join(&s.compose);
        if !compose_path.is_file() {
            return Err(UserError::invalid(format!(
                "{compose_at}: compose file {} of stack `{}` does not exist",
                s.compose, s.name
            ))
            .hint(format!(
                "create {} or fix `compose` of this [[stack]]",
                s.compose
            ))
            .into());
        }
        let mut oci_archives = Vec::new();
        for a in &s.oci_archives {
            let path = project.root.join(a);
            if !path.is_file() {
                return Err(UserError::invalid(format!(
                    "{}: OCI archive {a} of stack `{}` does not exist",
                    m.locate(&format!("\"{a}\"")),
                    s.name
                ))
                .hint(format!(
                    "make {a} (an OCI layout tar, e.g. `skopeo copy docker://IMAGE \
                     oci-archive:{a}`; the shipped stack example's: `make stack-image`) or \
                     remove it from `oci-archives`"
                ))
                .into());
            }
            oci_archives.push(path);
        }
        out.push(StackSpec {
            name: s.name.clone(),
            compose: s.compose.clone(),
            compose_path,
            at,
            allow_unpinned: s.allow_unpinned,
            oci_archives,
        });
    }
    Ok(out)
}

/// A compose project name: `[a-z0-9][a-z0-9_-]*`.
fn valid_stack_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests;
