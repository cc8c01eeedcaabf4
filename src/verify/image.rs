//! Verifying a built image: choose the QEMU machine for its architecture (the project's
//! qemu/ARCH.toml, else the built-in one), boot it, and check that the health report is
//! the image's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::firmware::{Origin, release_firmware};
use super::qemu::Firmware;
use super::{Accel, FailReason, Machine, Outcome, VerifyOptions};
use crate::cache::Cache;
use crate::disk;
use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::inspect::Image;
use crate::profile::{Arch, Project};

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub accel: Accel,
    pub timeout: Option<Duration>,
    pub memory_mib: Option<u32>,
    /// Console log; default `<image>.console.log` next to the image.
    pub log: Option<PathBuf>,
    /// Echo the console to stderr.
    pub echo: bool,
    /// The cache that keeps a release's firmware (see [`super::firmware`]); None boots on
    /// the host's firmware.
    pub cache: Option<PathBuf>,
    /// The Debian mirror to fetch the release's firmware from; None: the host's apt mirror.
    pub mirror: Option<String>,
    /// More disks, writable, after the image (serials imagebuild-disk1, ...).
    pub disks: Vec<PathBuf>,
    /// Let the guest write to the image file instead of a snapshot.
    pub writable: bool,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            accel: Accel::Auto,
            timeout: None,
            memory_mib: None,
            log: None,
            echo: false,
            cache: None,
            mirror: None,
            disks: Vec::new(),
            writable: false,
        }
    }
}

/// An image as raw bytes, for reading what it holds: the image itself, or for a cloud
/// format QEMU boots as it is (qcow2, VHD, VMDK) a sparse raw copy made by `qemu-img`.
/// The boot uses the file itself, so the bytes a cloud gets are the bytes proven.
struct RawView {
    image: PathBuf,
    copy: Option<tempfile::TempDir>,
    driver: &'static str,
}

impl RawView {
    fn of(host: &Host, image: &Path) -> Result<RawView> {
        use crate::formats::Format;
        let format = Format::of_path(image).unwrap_or(Format::Raw);
        let Some(driver) = format.qemu_driver() else {
            return Err(UserError::new(
                Kind::Unsupported,
                format!(
                    "{} is a {} file, which QEMU cannot boot as it is",
                    image.display(),
                    format.name()
                ),
            )
            .hint("verify the .raw image, or its .qcow2, .vhd or .vmdk")
            .into());
        };
        if format == Format::Raw {
            return Ok(RawView {
                image: image.to_path_buf(),
                copy: None,
                driver,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("imagebuild-view-")
            .tempdir()
            .context("making a directory for a raw view of the image")?;
        host.run(
            std::process::Command::new("qemu-img")
                .args(["convert", "-f", driver, "-O", "raw"])
                .arg(image)
                .arg(dir.path().join("view.raw")),
        )?;
        Ok(RawView {
            image: image.to_path_buf(),
            copy: Some(dir),
            driver,
        })
    }

    fn path(&self) -> PathBuf {
        match &self.copy {
            Some(d) => d.path().join("view.raw"),
            None => self.image.clone(),
        }
    }
}

/// The architecture of an image, from its root partition type.
pub fn image_arch(image: &Path) -> Result<Arch> {
    let img = Image::open(image)?;
    let root = img.root_region()?;
    Ok(if root.type_guid == disk::root_type(Arch::Arm64) {
        Arch::Arm64
    } else {
        Arch::Amd64
    })
}

/// The project's qemu/ARCH.toml if there is one, else the built-in description.
pub fn machine_for(project: &Project, arch: Arch) -> Result<Machine> {
    let p = project.root.join("qemu").join(format!("{arch}.toml"));
    if p.is_file() {
        Machine::load(&p)
    } else {
        Ok(Machine::builtin(arch))
    }
}

/// What the image's os-release says it is.
struct OsRelease {
    image_id: String,
    image_version: String,
    /// The Debian release's code name (`trixie`); None for other systems.
    debian_release: Option<String>,
}

fn os_release(image: &Path) -> Result<OsRelease> {
    let fs = Image::open(image)?.root()?;
    let text = fs
        .read_to_string("/etc/os-release")
        .context("reading /etc/os-release of the image")?;
    Ok(parse_os_release(&text))
}

fn parse_os_release(text: &str) -> OsRelease {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let codename = field("VERSION_CODENAME");
    OsRelease {
        image_id: field("IMAGE_ID"),
        image_version: field("IMAGE_VERSION"),
        debian_release: (field("ID") == "debian" && !codename.is_empty()).then_some(codename),
    }
}

/// The Debian release (`trixie`) the image's os-release names, if it is Debian.
pub fn debian_release(image: &Path) -> Result<Option<String>> {
    Ok(os_release(image)?.debian_release)
}

/// The firmware to boot an image of Debian `release` (None: not Debian) on: the machine's
/// release firmware if the machine names one and `req` has a cache, else the host's files.
/// A release firmware that cannot be had falls back to the host's files with a warning.
pub fn firmware_for(
    host: &Host,
    machine: &Machine,
    release: Option<&str>,
    req: &Request,
) -> Result<Firmware> {
    let (Some(spec), Some(cache), Some(release)) = (&machine.release_firmware, &req.cache, release)
    else {
        return machine.firmware();
    };
    let fetched = (|| {
        let mirror = match &req.mirror {
            Some(m) => m.clone(),
            None => crate::base::mirror::host_mirror()?,
        };
        let cache = Cache::new(cache);
        let origin = Origin {
            cache: &cache,
            mirror: &mirror,
            release,
            arch: machine.arch,
        };
        release_firmware(host, spec, &origin)
    })();
    match fetched {
        Ok(f) => Ok(f),
        Err(e) => {
            let why = format!("{e:#}");
            let fallback = machine.firmware().with_context(|| {
                format!(
                    "{} of {release} could not be fetched either: {why}",
                    spec.package
                )
            })?;
            let warning = format!(
                "warning: booting on {}: {} of {release} could not be fetched: {why}",
                fallback.origin, spec.package
            );
            host.note(&warning);
            crate::say!("{warning}");
            Ok(fallback)
        }
    }
}

/// Default console log path: `<image>.console.log`.
pub fn default_log(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".console.log");
    PathBuf::from(s)
}

/// One boot test of an image: its verdict, its console log and what it ran on.
#[derive(Debug)]
pub struct Tested {
    pub outcome: Outcome,
    pub log: PathBuf,
    /// `qemu-system-x86_64 10.0.2`.
    pub machine: String,
    /// Where the firmware came from (`ovmf 2025.02-8+deb13u1 of trixie`).
    pub firmware: String,
}

impl Tested {
    /// The record of this test for a release, if it passed; `at` is the time to record.
    pub fn verification(&self, at: i64) -> Option<crate::release::Verification> {
        let Outcome::Pass(_, took, timeline) = &self.outcome else {
            return None;
        };
        let accel = timeline
            .accel
            .map_or_else(String::new, |a| format!(" ({a})"));
        Some(crate::release::Verification {
            at,
            machine: format!("{}{accel}", self.machine),
            firmware: self.firmware.clone(),
            boot_seconds: (took.as_secs_f64() * 10.0).round() / 10.0,
        })
    }
}

/// `BINARY VERSION` from `BINARY --version` ("QEMU emulator version 10.0.2 (Debian ...)").
fn qemu_version(host: &Host, binary: &str) -> String {
    let out = host.run(std::process::Command::new(binary).arg("--version"));
    let version = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = text.lines().next()?.to_string();
        let v = line.split("version ").nth(1)?.split_whitespace().next()?;
        Some(v.to_string())
    });
    format!(
        "{binary} {}",
        version.as_deref().unwrap_or("(version unknown)")
    )
}

/// Boots `image` and judges it.
pub fn verify_image(host: &Host, project: &Project, image: &Path, req: &Request) -> Result<Tested> {
    let view = RawView::of(host, image)?;
    let arch = image_arch(&view.path())?;
    let machine = machine_for(project, arch)?;
    let log = req.log.clone().unwrap_or_else(|| default_log(image));
    let mut opts = VerifyOptions::for_machine(&machine, &log);
    opts.accel = req.accel;
    opts.interactive = req.echo;
    if let Some(t) = req.timeout {
        opts.timeout = t;
    }
    if let Some(m) = req.memory_mib {
        opts.memory_mib = m;
    }
    opts.disks.clone_from(&req.disks);
    opts.writable = req.writable;
    opts.image_driver = view.driver;
    let osr = os_release(&view.path())?;
    opts.firmware = Some(firmware_for(
        host,
        &machine,
        osr.debian_release.as_deref(),
        req,
    )?);
    let expected = (osr.image_id, osr.image_version);
    let firmware = opts
        .firmware
        .as_ref()
        .map_or_else(String::new, |f| f.origin.clone());
    let _rig = super::state::rig(host, image, &view.path(), &machine, &mut opts)?;
    let runner = |cmd: &mut std::process::Command| host.spawn(cmd);
    let outcome = super::verify(image, &machine, &opts, &runner)?;
    let outcome = match outcome {
        Outcome::Pass(report, ..) if (report.image.clone(), report.version.clone()) != expected => {
            Outcome::Fail {
                reason: FailReason::FailedChecks(vec![format!(
                    "the health report is from {} {}, not {} {}",
                    report.image, report.version, expected.0, expected.1
                )]),
                log_tail: String::new(),
            }
        }
        o => o,
    };
    Ok(Tested {
        outcome,
        log,
        machine: qemu_version(host, &machine.binary),
        firmware,
    })
}

/// A failed outcome as a user error quoting the console's tail.
pub fn failure(outcome: &Outcome, log: &Path) -> Option<anyhow::Error> {
    let Outcome::Fail { reason, log_tail } = outcome else {
        return None;
    };
    let mut msg = format!("verify failed: {reason}");
    if !log_tail.trim().is_empty() {
        msg.push_str("\n  console (last lines):");
        for l in log_tail.lines() {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
    }
    Some(
        UserError::new(Kind::Invalid, msg)
            .hint(format!("the whole console is in {}", log.display()))
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_names_a_debian_release_only_for_debian() {
        let osr = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_CODENAME=trixie\nID=debian\n\
             IMAGE_ID=prod\nIMAGE_VERSION=\"2026.11.1\"\n",
        );
        assert_eq!(osr.debian_release.as_deref(), Some("trixie"));
        assert_eq!(
            (osr.image_id.as_str(), osr.image_version.as_str()),
            ("prod", "2026.11.1")
        );
        let other = parse_os_release("ID=fedora\nVERSION_CODENAME=\nIMAGE_ID=x\n");
        assert_eq!(other.debian_release, None);
        let no_codename = parse_os_release("ID=debian\nIMAGE_ID=x\n");
        assert_eq!(no_codename.debian_release, None);
        // IMAGE_ID= is not read as IMAGE_ID_LIKE= or the other way round.
        assert_eq!(
            parse_os_release("IMAGE_ID_LIKE=y\nIMAGE_ID=x\n").image_id,
            "x"
        );
    }
}
