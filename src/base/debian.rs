//! Debian bases: mmdebstrap into a tar, with SOURCE_DATE_EPOCH, no initramfs (imagebuild
//! makes its own), and downloaded packages kept in the cache between runs.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::BaseTar;
use crate::cache::{Cache, sha256_file};
use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::lock::{self, Lock, LockedPackage};
use crate::profile::{Arch, BaseSpec, Recipe};
use crate::progress::Stage;
use crate::tree::{Tree, installed_packages};

/// Bumped when the way a base is made changes, so old cache entries are not reused.
const FORMAT: &str = "debian-base-v1";

struct Params<'a> {
    suite: &'a str,
    variant: &'a str,
    components: &'a [String],
    mirror: String,
    packages: Vec<String>,
    arch: Arch,
    epoch: i64,
}

impl Params<'_> {
    fn key(&self) -> String {
        let desc = serde_json::json!({
            "format": FORMAT, "suite": self.suite, "variant": self.variant, "components": self.components,
            "mirror": self.mirror, "packages": self.packages, "arch": self.arch.debian(), "epoch": self.epoch,
        });
        hex::encode(Sha256::digest(desc.to_string().as_bytes()))
    }

    /// The key of a locked bootstrap: the locked packages instead of the mirror.
    fn locked_key(&self, lock: &Lock) -> String {
        let mut pinned: Vec<String> = lock
            .packages
            .iter()
            .map(|p| format!("{} {} {} {}", p.name, p.version, p.arch, p.sha256))
            .collect();
        pinned.sort();
        let desc = serde_json::json!({
            "format": FORMAT, "suite": self.suite, "variant": self.variant, "components": self.components,
            "packages": self.packages, "arch": self.arch.debian(), "epoch": self.epoch, "locked": pinned,
        });
        hex::encode(Sha256::digest(desc.to_string().as_bytes()))
    }

    fn source_line(&self) -> String {
        format!(
            "deb {} {} {}",
            self.mirror,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// Everything a Debian base depends on, resolved (the mirror, the boot packages added).
fn params(recipe: &Recipe) -> Result<Params<'_>> {
    let BaseSpec::Debian {
        suite,
        variant,
        components,
        mirror,
        packages,
    } = &recipe.base
    else {
        unreachable!("debian base asked for another base")
    };
    let mirror = match mirror {
        Some(m) => m.clone(),
        None => super::mirror::host_mirror()?,
    };
    let mut packages = packages.clone();
    for p in crate::boot::BOOT_PACKAGES {
        if !packages.iter().any(|x| x == p) {
            packages.push((*p).to_string());
        }
    }
    Ok(Params {
        suite,
        variant,
        components,
        mirror,
        packages,
        arch: recipe.arch,
        epoch: recipe.epoch,
    })
}

/// The base of `recipe`. With a lock, the cache key is the locked package set (not the
/// mirror: the bytes are pinned), cached .debs are checked against the lock before they
/// are used, apt is pinned to the locked versions, and the result must install exactly
/// the locked packages from .debs with the locked sha256. `fresh` skips the cache lookup.
pub fn produce(
    host: &Host,
    cache: &Cache,
    recipe: &Recipe,
    lock: Option<&Lock>,
    fresh: bool,
    stage: &dyn Stage,
) -> Result<BaseTar> {
    let p = params(recipe)?;
    let key = match lock {
        Some(l) => p.locked_key(l),
        None => p.key(),
    };
    if !fresh && let Some(hit) = cache.get(host, "base", &format!("{key}.tar"))? {
        return Ok(BaseTar {
            path: hit.path,
            sha256: hit.sha256,
            cached: true,
        });
    }
    check_foreign_arch(p.arch)?;
    let debs = cache.debs_dir();
    std::fs::create_dir_all(&debs)?;
    let work = tempfile::Builder::new()
        .prefix(&crate::leftovers::work_prefix())
        .tempdir_in(cache.root())
        .context("making a work directory")?;
    let prefs = match lock {
        Some(l) => {
            stage.message("checking cached packages against the lock");
            check_cached_debs(l, &debs)?;
            let f = work.path().join(PREFS_NAME);
            std::fs::write(&f, preferences(l))?;
            Some(f)
        }
        None => None,
    };
    if let Some(l) = lock
        && l.mirror.as_deref() != Some(p.mirror.as_str())
    {
        host.note(&format!(
            "lock: packages were locked from {}, now fetched from {} (checked by sha256)",
            l.mirror.as_deref().unwrap_or("-"),
            p.mirror
        ));
    }
    let native = if Arch::host() == Some(p.arch) {
        None
    } else {
        Some(write_native_backend(work.path())?)
    };
    let hit = cache.put("base", &format!("{key}.tar"), |out| {
        let mut cmd = mmdebstrap_command(
            &p.suite_args(),
            out,
            &debs,
            p.epoch,
            prefs.as_deref(),
            native.as_deref(),
        );
        host.stream(&mut cmd, &mut |line| {
            if let Some(msg) = line.strip_prefix("I: ") {
                stage.message(msg);
            }
        })
        .map_err(|e| explain(e, &p))?;
        if let Some(l) = lock {
            stage.message("checking installed packages against the lock");
            check_installed(l, out, &debs, &p)?;
        }
        Ok(())
    })?;
    Ok(BaseTar {
        path: hit.path,
        sha256: hit.sha256,
        cached: false,
    })
}

/// The key a locked build of `recipe` uses in the cache, so that `imagebuild lock` can
/// file the base it locked under it.
pub fn locked_key(recipe: &Recipe, lock: &Lock) -> Result<String> {
    Ok(format!("{}.tar", params(recipe)?.locked_key(lock)))
}

/// The mirror a Debian base of `recipe` is fetched from.
pub fn mirror_of(recipe: &Recipe) -> Result<String> {
    Ok(params(recipe)?.mirror)
}

/// The locked package list of a bootstrapped base: each installed package with the
/// sha256 of its .deb from the package cache.
pub fn locked_packages(tree: &Tree, debs: &Path) -> Result<Vec<LockedPackage>> {
    let mut out = Vec::new();
    for pkg in installed_packages(tree)? {
        let mut lp = LockedPackage {
            name: pkg.name,
            version: pkg.version,
            arch: pkg.arch,
            sha256: String::new(),
        };
        let deb = debs.join(lp.deb_file_name());
        if !deb.is_file() {
            return Err(UserError::new(
                Kind::Corrupt,
                format!(
                    "package {} {} is installed in the base but {} is not in the package cache",
                    lp.name,
                    lp.version,
                    deb.display()
                ),
            )
            .hint("lock again with `--relock`, which bootstraps afresh and downloads every package")
            .into());
        }
        lp.sha256 = sha256_file(&deb)?;
        out.push(lp);
    }
    Ok(out)
}

/// Every locked package already in the cache must have the locked sha256; missing ones
/// are downloaded (and checked after the bootstrap).
fn check_cached_debs(lock: &Lock, debs: &Path) -> Result<()> {
    for pkg in &lock.packages {
        let deb = debs.join(pkg.deb_file_name());
        if deb.is_file() {
            let actual = sha256_file(&deb)?;
            if actual != pkg.sha256 {
                return Err(lock::tampered_deb(&deb, pkg, &actual));
            }
        }
    }
    Ok(())
}

/// After a locked bootstrap: the installed packages are exactly the locked ones, at the
/// locked versions, installed from .debs with the locked sha256.
fn check_installed(lock: &Lock, base_tar: &Path, debs: &Path, p: &Params<'_>) -> Result<()> {
    let tree = Tree::from_tar(base_tar)?;
    let installed = installed_packages(&tree)?;
    let relock = |what: String| -> anyhow::Error {
        UserError::invalid(format!("{what} (the lock is {}'s)", lock.profile))
            .hint(format!(
                "the mirror ({}) moved on since the lock was made: point [base] mirror at a \
                 snapshot mirror of the lock's date, or relock with `imagebuild build {} \
                 --relock` and review the lock's diff",
                p.mirror, lock.profile
            ))
            .into()
    };
    for pkg in &installed {
        match lock.package(&pkg.name, &pkg.arch) {
            None => {
                return Err(relock(format!(
                    "package {} {} ({}) was installed but is not in the lock",
                    pkg.name, pkg.version, pkg.arch
                )));
            }
            Some(l) if l.version != pkg.version => {
                return Err(relock(format!(
                    "package {} ({}): the lock pins version {}, the mirror has {} (version {} \
                     is no longer on the mirror)",
                    pkg.name, pkg.arch, l.version, pkg.version, l.version
                )));
            }
            Some(_) => {}
        }
    }
    for l in &lock.packages {
        if !installed
            .iter()
            .any(|i| i.name == l.name && i.arch == l.arch)
        {
            return Err(relock(format!(
                "package {} {} ({}) is in the lock but was not installed",
                l.name, l.version, l.arch
            )));
        }
        let deb = debs.join(l.deb_file_name());
        let actual = sha256_file(&deb).with_context(|| {
            format!(
                "package {} {}: its .deb is not in the package cache",
                l.name, l.version
            )
        })?;
        if actual != l.sha256 {
            return Err(lock::tampered_deb(&deb, l, &actual));
        }
    }
    Ok(())
}

/// apt preferences that pin every locked package to its version.
fn preferences(lock: &Lock) -> String {
    let mut names: Vec<(&str, &str)> = lock
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    names.sort();
    names.dedup();
    let mut out = String::from("# imagebuild: the lock's versions\n");
    for (name, version) in names {
        out.push_str(&format!(
            "\nPackage: {name}\nPin: version {version}\nPin-Priority: 1001\n"
        ));
    }
    out
}

/// The preferences file's name in the chroot's /etc/apt/preferences.d/.
const PREFS_NAME: &str = "imagebuild-lock.pref";

/// What identifies a bootstrap to mmdebstrap, as arguments.
pub struct SuiteArgs {
    pub suite: String,
    pub variant: String,
    pub arch: String,
    pub packages: Vec<String>,
    pub source: String,
}

impl Params<'_> {
    fn suite_args(&self) -> SuiteArgs {
        SuiteArgs {
            suite: self.suite.to_string(),
            variant: self.variant.to_string(),
            arch: self.arch.debian().to_string(),
            packages: self.packages.clone(),
            source: self.source_line(),
        }
    }
}

/// The mmdebstrap command line imagebuild runs (also used by `make bench` for the bare
/// comparison, without the cache hooks when `debs` is empty). `prefs` is an apt
/// preferences file that is in force while packages are resolved and installed and is
/// not in the result. `native` holds the native backend, for a foreign architecture.
pub fn mmdebstrap_command(
    a: &SuiteArgs,
    out: &Path,
    debs: &Path,
    epoch: i64,
    prefs: Option<&Path>,
    native: Option<&Path>,
) -> Command {
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("INITRD", "No")
        .arg(format!("--variant={}", a.variant))
        .arg(format!("--architectures={}", a.arch))
        .arg("--format=tar");
    if !a.packages.is_empty() {
        cmd.arg(format!("--include={}", a.packages.join(",")));
    }
    if Some(a.arch.as_str()) != Arch::host().map(Arch::debian) {
        // Maintainer scripts of another architecture run under qemu-user: a CPU model
        // without the costliest extensions emulates about 20% faster (nothing of it
        // reaches the files).
        if a.arch == "arm64" {
            cmd.env("QEMU_CPU", "neoverse-n1");
        }
    }
    // dpkg syncs every unpacked file to disk; the bootstrap's only product is the tar
    // written at the end (a crash means bootstrapping again), so those syncs buy nothing.
    // Measured on cold arm64 bootstraps, two back-to-back pairs: 284 s instead of 363 s,
    // 188 s instead of 198 s (it depends on how slow syncs are at the time). mmdebstrap keeps the
    // option in /etc/dpkg/dpkg.cfg.d/99mmdebstrap; it is removed so the image's own dpkg
    // syncs as Debian's does.
    cmd.arg("--dpkgopt=force-unsafe-io")
        .arg("--customize-hook=rm -f \"$1\"/etc/dpkg/dpkg.cfg.d/99mmdebstrap");
    // openssh-server's postinst makes host keys only when they are missing; imagebuild
    // removes them anyway (each machine makes its own on first boot), so empty
    // placeholders spare the key generation (12 s under emulation) and are removed again.
    cmd.arg(
        "--essential-hook=mkdir -p \"$1\"/etc/ssh && for t in rsa ecdsa ed25519; do \
         touch \"$1\"/etc/ssh/ssh_host_${t}_key \"$1\"/etc/ssh/ssh_host_${t}_key.pub; done",
    )
    .arg(
        "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*_key \"$1\"/etc/ssh/ssh_host_*_key.pub \
         && rmdir --ignore-fail-on-non-empty \"$1\"/etc/ssh",
    );
    if !debs.as_os_str().is_empty() {
        let d = debs.display();
        cmd.arg("--skip=essential/unlink")
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!("--setup-hook=sync-in {d} /var/cache/apt/archives/"))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {d}"
            ));
    }
    if let Some(f) = prefs {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        cmd.arg("--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d")
            .arg(format!(
                "--setup-hook=copy-in {} /etc/apt/preferences.d/",
                f.display()
            ))
            .arg(format!(
                "--customize-hook=rm -f \"$1\"/etc/apt/preferences.d/{name}"
            ));
    }
    if let Some(dir) = native {
        with_native_backend(&mut cmd, dir);
    }
    cmd.arg(&a.suite).arg(out).arg(&a.source);
    cmd
}

/// imagebuild's own `dpkg-deb` and `dpkg-split` (native/dpkg-backend), statically linked for
/// this host.
pub const NATIVE_BACKEND: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dpkg-backend"));

/// The programs of NATIVE_BACKEND, named as dpkg calls them.
const NATIVE_NAMES: [&str; 2] = ["dpkg-deb", "dpkg-split"];

/// Writes NATIVE_BACKEND into `work`/native under both names; returns that directory.
fn write_native_backend(work: &Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = work.join("native");
    std::fs::create_dir_all(&dir)?;
    for name in NATIVE_NAMES {
        let path = dir.join(name);
        std::fs::write(&path, NATIVE_BACKEND)
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// For a bootstrap of another architecture: the emulated dpkg runs `dpkg-split`,
/// `dpkg-deb --control` (and its `tar`) and `dpkg-deb --fsys-tarfile` for every package, so
/// each package is decompressed by emulated code. The native backend in /usr/sbin (before
/// /usr/bin on the chroot's PATH and on apt's DPkg::Path; no package ships these names
/// there) does those natively from the moment the essential packages are extracted. It is
/// removed before the tar is made, so the base's bytes are the same; should a package ever
/// put its own file there, that file is left alone. Measured on 153 arm64 packages:
/// `--control` 34 s emulated, 0.9 s native; `--fsys-tarfile` 62 s emulated.
fn with_native_backend(cmd: &mut Command, dir: &Path) {
    let files: Vec<String> = NATIVE_NAMES
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    cmd.arg(format!("--extract-hook=copy-in {} /usr/sbin/", files.join(" ")))
        .arg(format!(
            "--customize-hook=for n in {}; do if cmp -s {}/$n \"$1\"/usr/sbin/$n; then rm \"$1\"/usr/sbin/$n; fi; done",
            NATIVE_NAMES.join(" "),
            dir.display()
        ));
}

/// Turns apt's "no such package" into an error naming the package.
fn explain(e: anyhow::Error, p: &Params<'_>) -> anyhow::Error {
    let text = format!("{e:#}");
    let missing = text.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("E: Unable to locate package ")
            .or_else(|| {
                l.strip_prefix("E: Package '")
                    .and_then(|r| r.split('\'').next())
            })
            .map(str::to_owned)
    });
    match missing {
        Some(pkg) => UserError::invalid(format!(
            "package `{pkg}` does not exist in Debian {} for {} (mirror {})",
            p.suite, p.arch, p.mirror
        ))
        .hint("check the name in [packages] include (`apt-cache policy NAME` on a machine of that suite)")
        .into(),
        None => e,
    }
}

/// Building for another architecture runs its maintainer scripts through qemu-user binfmt.
fn check_foreign_arch(arch: Arch) -> Result<()> {
    if Arch::host() == Some(arch) {
        return Ok(());
    }
    let name = match arch {
        Arch::Arm64 => "qemu-aarch64",
        Arch::Amd64 => "qemu-x86_64",
    };
    let entry = Path::new("/proc/sys/fs/binfmt_misc").join(name);
    let enabled = std::fs::read_to_string(&entry).is_ok_and(|s| s.starts_with("enabled"));
    if enabled {
        return Ok(());
    }
    Err(UserError::new(
        Kind::Tool,
        format!(
            "building for {arch} on this host needs qemu-user binfmt ({name} is not registered)"
        ),
    )
    .hint("run `scripts/host-setup.sh` (installs qemu-user-static and registers it)")
    .into())
}
