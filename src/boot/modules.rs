//! Kernel selection and the dependency closure of kernel modules.
//!
//! Dependencies come from each module's `.modinfo` ELF section (`depends=`, `softdep=pre:`),
//! read with goblin, so the closure works whether or not `modules.dep` exists (Debian ships
//! none; depmod runs at install, which an image built with `INITRD=No` may never have done).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

/// A read-only view of the target root filesystem. Paths are absolute
/// ("/usr/lib/modules/6.12.../kernel/...").
pub trait RootView {
    /// The contents of a regular file, `None` if it does not exist.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// All regular-file paths under `dir` (recursively), sorted; empty if `dir` is missing.
    fn files_under(&self, dir: &str) -> Result<Vec<String>>;
}

/// A kernel module name with `-` and `_` made equivalent (stored with `_`, as the kernel does).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    pub fn new(name: &str) -> Self {
        Self(name.replace('-', "_"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One module to put in the initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: ModuleName,
    /// Relative to /lib/modules/KVER/, without a compression suffix
    /// ("kernel/drivers/block/virtio_blk.ko").
    pub path: String,
    /// Decompressed contents.
    pub contents: Vec<u8>,
}

/// The modules for the initramfs and what happened to the wanted names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Closure {
    /// Dependencies first: insmod them in this order.
    pub modules: Vec<Module>,
    /// Wanted names that are built into the kernel (listed in modules.builtin).
    pub builtin: Vec<String>,
    /// Wanted names that are neither a module file nor listed as built in (another
    /// kernel's driver, or a kernel without modules.builtin).
    pub unknown: Vec<String>,
}

/// Finds the kernel (newest /boot/vmlinuz-*, by Debian version order) and its version.
pub fn find_kernel(root: &dyn RootView) -> Result<(String, Vec<u8>)> {
    let files = root.files_under("/boot").context("listing /boot")?;
    let kver = files
        .iter()
        .filter_map(|p| p.strip_prefix("/boot/vmlinuz-"))
        .filter(|v| !v.is_empty() && !v.contains('/'))
        .max_by(|a, b| compare_versions(a, b))
        .context("no kernel in the root: /boot/vmlinuz-* is missing (install linux-image-*)")?
        .to_string();
    let path = format!("/boot/vmlinuz-{kver}");
    let bytes = root
        .read(&path)
        .with_context(|| format!("reading {path}"))?
        .with_context(|| format!("{path} vanished"))?;
    Ok((kver, bytes))
}

/// For the wanted module names, returns the modules to put in the initramfs, dependencies
/// first, each with its path relative to /lib/modules/KVER/ and its decompressed contents.
/// Names that are built in (or unknown) are skipped and reported in the result.
pub fn module_closure(root: &dyn RootView, kver: &str, wanted: &[&str]) -> Result<Closure> {
    let dir = ModuleDir::find(root, kver)?;
    let builtin = dir.builtin_names(root)?;
    let mut walk = Walk {
        root,
        kver,
        dir: &dir,
        builtin: &builtin,
        visiting: Vec::new(),
        done: BTreeSet::new(),
        order: Vec::new(),
    };
    let mut closure = Closure::default();
    for &want in wanted {
        let name = ModuleName::new(want);
        if dir.modules.contains_key(&name) {
            walk.visit(&name)
                .with_context(|| format!("resolving module {want}"))?;
        } else if builtin.contains(&name) {
            closure.builtin.push(want.to_string());
        } else {
            closure.unknown.push(want.to_string());
        }
    }
    closure.modules = walk.order;
    Ok(closure)
}

/// The module directory of one kernel and its module files by name.
struct ModuleDir {
    /// "/usr/lib/modules/KVER" or "/lib/modules/KVER".
    base: String,
    /// Module name -> absolute path of its file.
    modules: BTreeMap<ModuleName, String>,
}

const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

impl ModuleDir {
    fn find(root: &dyn RootView, kver: &str) -> Result<Self> {
        ensure!(
            !kver.is_empty() && !kver.contains('/'),
            "bad kernel version {kver:?}"
        );
        for prefix in ["/usr/lib/modules", "/lib/modules"] {
            let base = format!("{prefix}/{kver}");
            let files = root
                .files_under(&base)
                .with_context(|| format!("listing {base}"))?;
            if !files.is_empty() {
                return Ok(Self::index(base, &files));
            }
        }
        bail!(
            "no modules for kernel {kver}: /usr/lib/modules/{kver} and /lib/modules/{kver} are empty"
        )
    }

    fn index(base: String, files: &[String]) -> Self {
        let mut modules = BTreeMap::new();
        for path in files {
            let Some(name) = module_file_name(path) else {
                continue;
            };
            // depmod's priority: updates/ overrides the kernel's own modules.
            let is_update = path[base.len()..].starts_with("/updates/");
            match modules.entry(name) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(path.clone());
                }
                std::collections::btree_map::Entry::Occupied(mut o) if is_update => {
                    o.insert(path.clone());
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        Self { base, modules }
    }

    /// Names listed in modules.builtin (empty if the file is missing).
    fn builtin_names(&self, root: &dyn RootView) -> Result<BTreeSet<ModuleName>> {
        let path = format!("{}/modules.builtin", self.base);
        let Some(bytes) = root
            .read(&path)
            .with_context(|| format!("reading {path}"))?
        else {
            return Ok(BTreeSet::new());
        };
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.lines().filter_map(module_file_name).collect())
    }

    /// The path relative to the module directory, without a compression suffix.
    fn relative_path(&self, path: &str) -> String {
        let rel = path[self.base.len()..].trim_start_matches('/');
        let cut = rel.rfind(".ko").map_or(rel.len(), |i| i + ".ko".len());
        rel[..cut].to_string()
    }
}

/// The module name of a path ending in .ko[.xz|.zst|.gz], else `None`.
fn module_file_name(path: &str) -> Option<ModuleName> {
    let file = path.rsplit('/').next()?;
    MODULE_SUFFIXES
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .filter(|stem| !stem.is_empty())
        .map(ModuleName::new)
}

/// Depth-first walk over `depends=` (and `softdep=pre:`), emitting dependencies first.
struct Walk<'a> {
    root: &'a dyn RootView,
    kver: &'a str,
    dir: &'a ModuleDir,
    builtin: &'a BTreeSet<ModuleName>,
    visiting: Vec<ModuleName>,
    done: BTreeSet<ModuleName>,
    order: Vec<Module>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &ModuleName) -> Result<()> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.visiting.contains(name) {
            bail!("module dependency cycle through {name}");
        }
        // OK to unwrap: callers only visit names found in the index.
        let path = self.dir.modules.get(name).unwrap().clone();
        let contents = read_module(self.root, &path)?;
        let info =
            ModInfo::parse(&contents).with_context(|| format!("reading modinfo of {path}"))?;
        info.check(name, self.kver)
            .with_context(|| format!("checking {path}"))?;
        self.visiting.push(name.clone());
        for dep in &info.depends {
            if self.dir.modules.contains_key(dep) {
                self.visit(dep)?;
            } else if !self.builtin.contains(dep) {
                bail!("module {name} depends on {dep}, which is neither a module nor built in");
            }
        }
        for dep in info
            .softdep_pre
            .iter()
            .filter(|d| self.dir.modules.contains_key(*d))
        {
            self.visit(dep)?;
        }
        self.visiting.pop();
        self.done.insert(name.clone());
        self.order.push(Module {
            name: name.clone(),
            path: self.dir.relative_path(&path),
            contents,
        });
        Ok(())
    }
}

/// Reads and decompresses one module file.
fn read_module(root: &dyn RootView, path: &str) -> Result<Vec<u8>> {
    let raw = root
        .read(path)
        .with_context(|| format!("reading {path}"))?
        .with_context(|| format!("{path} vanished"))?;
    decompress(path, &raw).with_context(|| format!("decompressing {path}"))
}

fn decompress(path: &str, raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if path.ends_with(".xz") {
        xz2::read::XzDecoder::new(raw).read_to_end(&mut out)?;
    } else if path.ends_with(".zst") {
        out = zstd::stream::decode_all(raw)?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(raw).read_to_end(&mut out)?;
    } else {
        out = raw.to_vec();
    }
    Ok(out)
}

/// The fields of a module's `.modinfo` section that the closure needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct ModInfo {
    name: Option<ModuleName>,
    depends: Vec<ModuleName>,
    softdep_pre: Vec<ModuleName>,
    vermagic: Option<String>,
}

impl ModInfo {
    fn parse(elf_bytes: &[u8]) -> Result<Self> {
        let section = modinfo_section(elf_bytes)?;
        Ok(Self::from_strings(section))
    }

    /// Parses NUL-separated `key=value` strings.
    fn from_strings(section: &[u8]) -> Self {
        let mut info = Self::default();
        for entry in section.split(|&b| b == 0) {
            let entry = String::from_utf8_lossy(entry);
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            match key {
                "name" => info.name = Some(ModuleName::new(value)),
                "vermagic" => info.vermagic = Some(value.to_string()),
                "depends" => info.depends.extend(
                    value
                        .split(',')
                        .filter(|d| !d.is_empty())
                        .map(ModuleName::new),
                ),
                "softdep" => info.softdep_pre.extend(softdep_pre(value)),
                _ => {}
            }
        }
        info
    }

    fn check(&self, file_name: &ModuleName, kver: &str) -> Result<()> {
        if let Some(name) = &self.name {
            ensure!(name == file_name, "the module calls itself {name}");
        }
        if let Some(vermagic) = &self.vermagic {
            let built_for = vermagic.split_whitespace().next().unwrap_or_default();
            ensure!(
                built_for == kver,
                "the module was built for kernel {built_for}, not {kver}"
            );
        }
        Ok(())
    }
}

/// The names after `pre:` in a softdep value ("pre: crc32c post: foo").
fn softdep_pre(value: &str) -> Vec<ModuleName> {
    let mut pre = Vec::new();
    let mut in_pre = false;
    for token in value.split_whitespace() {
        match token {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => pre.push(ModuleName::new(name)),
            _ => {}
        }
    }
    pre
}

fn modinfo_section(elf_bytes: &[u8]) -> Result<&[u8]> {
    let elf = goblin::elf::Elf::parse(elf_bytes).context("parsing the elf headers")?;
    let header = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".modinfo"))
        .context("the module has no .modinfo section")?;
    let range = header
        .file_range()
        .context("the .modinfo section has no data")?;
    elf_bytes
        .get(range)
        .context("the .modinfo section extends past the end of the file")
}

/// dpkg's version order (verrevcmp), so 6.12.10 > 6.12.9 and `~` sorts first.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    verrevcmp(a.as_bytes(), b.as_bytes()).then_with(|| a.cmp(b))
}

fn char_order(c: Option<&u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
        Some(c) => i32::from(*c) + 256,
    }
}

fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let is_digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (ac, bc) = (char_order(a.get(i)), char_order(b.get(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            first_diff = first_diff.then(a[i].cmp(&b[j]));
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A root filesystem unpacked in a host directory. Symlinks are resolved inside it (an
/// absolute link target starts again at the directory), never on the host.
pub struct DirRoot {
    dir: PathBuf,
}

const MAX_SYMLINK_HOPS: usize = 40;

impl DirRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The host path of `path`, with every symlink resolved inside the root; `None` if a
    /// component does not exist.
    fn resolve(&self, path: &str) -> Result<Option<PathBuf>> {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components(path).rev().collect();
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            let host = self.host_path(&done).join(&part);
            let meta = match std::fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("inspecting {}", host.display())),
            };
            if !meta.file_type().is_symlink() {
                done.push(part);
                continue;
            }
            hops += 1;
            ensure!(
                hops <= MAX_SYMLINK_HOPS,
                "too many symlinks resolving {path}"
            );
            let target = std::fs::read_link(&host)
                .with_context(|| format!("reading link {}", host.display()))?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(components(&target).rev());
        }
        Ok(Some(self.host_path(&done)))
    }

    fn host_path(&self, parts: &[String]) -> PathBuf {
        parts.iter().fold(self.dir.clone(), |p, c| p.join(c))
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

impl RootView for DirRoot {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(host) = self.resolve(path)? else {
            return Ok(None);
        };
        if !host.is_file() {
            return Ok(None);
        }
        std::fs::read(&host)
            .map(Some)
            .with_context(|| format!("reading {}", host.display()))
    }

    fn files_under(&self, dir: &str) -> Result<Vec<String>> {
        let Some(host) = self.resolve(dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if host.is_dir() {
            walk_dir(&host, dir.trim_end_matches('/'), &mut out)?;
        }
        out.sort();
        Ok(out)
    }
}

/// Collects regular files below `host`, named as `view` + relative path; symlinks are not
/// followed.
fn walk_dir(host: &Path, view: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(host).with_context(|| format!("listing {}", host.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", host.display()))?;
        let kind = entry
            .file_type()
            .with_context(|| format!("inspecting {}", entry.path().display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = format!("{view}/{name}");
        if kind.is_dir() {
            walk_dir(&entry.path(), &child, out)?;
        } else if kind.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory root.
    #[derive(Default)]
    struct MemRoot(BTreeMap<String, Vec<u8>>);

    impl RootView for MemRoot {
        fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
            Ok(self.0.get(path).cloned())
        }
        fn files_under(&self, dir: &str) -> Result<Vec<String>> {
            let prefix = format!("{}/", dir.trim_end_matches('/'));
            Ok(self
                .0
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect())
        }
    }

    #[test]
    fn versions_sort_like_dpkg() {
        use Ordering::{Greater, Less};
        assert_eq!(
            compare_versions("6.12.10+deb13-cloud-amd64", "6.12.9+deb13-cloud-amd64"),
            Greater
        );
        assert_eq!(
            compare_versions("6.1.0-30-cloud-amd64", "6.12.9+deb13-cloud-amd64"),
            Less
        );
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_versions("1.0", "1.0a"), Less);
        assert_eq!(compare_versions("1.010", "1.9"), Greater);
    }

    #[test]
    fn newest_kernel_wins() {
        let mut root = MemRoot::default();
        for v in ["6.12.9+deb13-cloud-amd64", "6.12.10+deb13-cloud-amd64"] {
            root.0
                .insert(format!("/boot/vmlinuz-{v}"), v.as_bytes().to_vec());
            root.0.insert(format!("/boot/config-{v}"), Vec::new());
        }
        let (kver, bytes) = find_kernel(&root).unwrap();
        assert_eq!(kver, "6.12.10+deb13-cloud-amd64");
        assert_eq!(bytes, kver.as_bytes());
    }

    #[test]
    fn no_kernel_is_an_error() {
        let err = find_kernel(&MemRoot::default()).unwrap_err();
        assert!(err.to_string().contains("vmlinuz"), "{err:#}");
    }

    #[test]
    fn modinfo_strings() {
        let info = ModInfo::from_strings(
            b"license=GPL\0depends=scsi_mod,scsi-common\0softdep=pre: crc32c post: x\0\
              name=sd_mod\0vermagic=6.12.1 SMP mod_unload \0\0",
        );
        assert_eq!(info.name, Some(ModuleName::new("sd_mod")));
        assert_eq!(
            info.depends,
            [ModuleName::new("scsi_mod"), ModuleName::new("scsi_common")]
        );
        assert_eq!(info.softdep_pre, [ModuleName::new("crc32c")]);
        info.check(&ModuleName::new("sd-mod"), "6.12.1").unwrap();
        let err = info
            .check(&ModuleName::new("sd_mod"), "6.12.2")
            .unwrap_err();
        assert!(
            err.to_string().contains("built for kernel 6.12.1"),
            "{err:#}"
        );
    }

    #[test]
    fn module_names_and_paths() {
        assert_eq!(
            module_file_name("/lib/modules/v/kernel/fs/nls/nls_iso8859-9.ko.xz"),
            Some(ModuleName::new("nls_iso8859_9"))
        );
        assert_eq!(module_file_name("/lib/modules/v/modules.order"), None);
        let dir = ModuleDir::index(
            "/lib/modules/v".into(),
            &[
                "/lib/modules/v/kernel/a.ko.xz".into(),
                "/lib/modules/v/updates/a.ko".into(),
                "/lib/modules/v/kernel/b.ko".into(),
            ],
        );
        assert_eq!(
            dir.modules[&ModuleName::new("a")],
            "/lib/modules/v/updates/a.ko"
        );
        assert_eq!(
            dir.relative_path("/lib/modules/v/kernel/a.ko.xz"),
            "kernel/a.ko"
        );
    }

    #[test]
    fn dir_root_resolves_links_inside_the_root() {
        let tmp = std::env::temp_dir().join(format!("boot-dirroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("usr/lib/modules/v/kernel")).unwrap();
        std::fs::write(tmp.join("usr/lib/modules/v/kernel/x.ko"), b"x").unwrap();
        std::os::unix::fs::symlink("/usr/lib", tmp.join("lib")).unwrap();
        let root = DirRoot::new(&tmp);
        assert_eq!(
            root.files_under("/lib/modules/v").unwrap(),
            ["/lib/modules/v/kernel/x.ko"]
        );
        assert_eq!(
            root.read("/lib/modules/v/kernel/x.ko").unwrap().unwrap(),
            b"x"
        );
        assert_eq!(root.read("/lib/../etc/passwd").unwrap(), None);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    /// With IMAGEBUILD_BOOT_FIXTURES=DIR (root-amd64/, root-arm64/ from the trixie debs).
    #[test]
    fn real_cloud_kernels() {
        let Some(dir) = std::env::var_os("IMAGEBUILD_BOOT_FIXTURES") else {
            return;
        };
        for arch in ["amd64", "arm64"] {
            let root = DirRoot::new(PathBuf::from(&dir).join(format!("root-{arch}")));
            let (kver, _) = find_kernel(&root).unwrap();
            let closure = module_closure(
                &root,
                &kver,
                &[
                    "virtio_blk",
                    "virtio_scsi",
                    "sd_mod",
                    "nvme",
                    "ext4",
                    "vfat",
                    "no_such",
                ],
            )
            .unwrap();
            let names: Vec<_> = closure.modules.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "virtio_blk",
                    "scsi_common",
                    "scsi_mod",
                    "virtio_scsi",
                    "sd_mod",
                    "fat",
                    "vfat"
                ],
                "{arch}"
            );
            assert_eq!(closure.builtin, ["nvme", "ext4"]);
            assert_eq!(closure.unknown, ["no_such"]);
            assert_eq!(
                closure.modules[0].path,
                "kernel/drivers/block/virtio_blk.ko"
            );
            assert!(closure.modules[0].contents.starts_with(b"\x7fELF"));
        }
    }
}
