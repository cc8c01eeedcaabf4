//! Debian bases: mmdebstrap into a tar, with SOURCE_DATE_EPOCH, no initramfs (imagebuild
//! makes its own), and downloaded packages kept in the cache between runs.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use sha2::{Digest, Sha256};

use super::BaseTar;
use crate::cache::Cache;
use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::profile::{Arch, BaseSpec, Recipe};
use crate::progress::Stage;

/// Bumped when the way a base is made changes, so old cache entries are not reused.
const FORMAT: &str = "debian-base-v1";

struct Params<'a> {
    suite: &'a str,
    variant: &'a str,
    components: &'a [String],
    mirror: String,
    packages: &'a [String],
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

    fn source_line(&self) -> String {
        format!(
            "deb {} {} {}",
            self.mirror,
            self.suite,
            self.components.join(" ")
        )
    }
}

pub fn produce(host: &Host, cache: &Cache, recipe: &Recipe, stage: &dyn Stage) -> Result<BaseTar> {
    let BaseSpec::Debian {
        suite,
        variant,
        components,
        mirror,
        packages,
    } = &recipe.base
    else {
        unreachable!("debian::produce called for another base")
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
    let p = Params {
        suite,
        variant,
        components,
        mirror,
        packages: &packages,
        arch: recipe.arch,
        epoch: recipe.epoch,
    };
    let key = p.key();
    if let Some(hit) = cache.get(host, "base", &format!("{key}.tar"))? {
        return Ok(BaseTar {
            path: hit.path,
            sha256: hit.sha256,
            cached: true,
        });
    }
    check_foreign_arch(p.arch)?;
    let debs = cache.debs_dir();
    std::fs::create_dir_all(&debs)?;
    let hit = cache.put("base", &format!("{key}.tar"), |out| {
        let mut cmd = mmdebstrap_command(&p.suite_args(), out, &debs, p.epoch);
        host.stream(&mut cmd, &mut |line| {
            if let Some(msg) = line.strip_prefix("I: ") {
                stage.message(msg);
            }
        })
        .map_err(|e| explain(e, &p))
    })?;
    Ok(BaseTar {
        path: hit.path,
        sha256: hit.sha256,
        cached: false,
    })
}

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
            packages: self.packages.to_vec(),
            source: self.source_line(),
        }
    }
}

/// The mmdebstrap command line imagebuild runs (also used by `make bench` for the bare
/// comparison, without the cache hooks when `debs` is empty).
pub fn mmdebstrap_command(a: &SuiteArgs, out: &Path, debs: &Path, epoch: i64) -> Command {
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("INITRD", "No")
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .arg(format!("--variant={}", a.variant))
        .arg(format!("--architectures={}", a.arch))
        .arg("--format=tar");
    if !a.packages.is_empty() {
        cmd.arg(format!("--include={}", a.packages.join(",")));
    }
    if !debs.as_os_str().is_empty() {
        let d = debs.display();
        cmd.arg("--skip=essential/unlink")
            .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
            .arg(format!("--setup-hook=sync-in {d} /var/cache/apt/archives/"))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {d}"
            ));
    }
    cmd.arg(&a.suite).arg(out).arg(&a.source);
    cmd
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
