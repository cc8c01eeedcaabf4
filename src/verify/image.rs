//! Verifying a built image: choose the QEMU machine for its architecture (the project's
//! qemu/ARCH.toml, else the built-in one), boot it, and check that the health report is
//! the image's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Accel, FailReason, Machine, Outcome, VerifyOptions};
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
}

impl Default for Request {
    fn default() -> Self {
        Self {
            accel: Accel::Auto,
            timeout: None,
            memory_mib: None,
            log: None,
            echo: false,
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

/// IMAGE_ID and IMAGE_VERSION from the image's os-release.
fn identity(image: &Path) -> Result<(String, String)> {
    let fs = Image::open(image)?.root()?;
    let text = fs
        .read_to_string("/etc/os-release")
        .context("reading /etc/os-release of the image")?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    Ok((field("IMAGE_ID="), field("IMAGE_VERSION=")))
}

/// Default console log path: `<image>.console.log`.
pub fn default_log(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".console.log");
    PathBuf::from(s)
}

/// Boots `image` and judges it. Returns the outcome and the console log path.
pub fn verify_image(
    host: &Host,
    project: &Project,
    image: &Path,
    req: &Request,
) -> Result<(Outcome, PathBuf)> {
    let arch = image_arch(image)?;
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
    let expected = identity(image)?;
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
    Ok((outcome, log))
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
