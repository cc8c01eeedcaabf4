//! Flashing a disk of a machine booted into a rescue system, over ssh.

use std::fs::File;

use anyhow::Result;

use super::plan::Source;
use super::{Ask, Flashed, Request};
use crate::host::Host;
use crate::progress::{Reporter, Timings};
use crate::release::Resolved;

/// `ssh://USER@HOST[:PORT]/DEVICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub device: String,
}

impl Target {
    /// None when `s` is not an ssh URL.
    pub fn parse(s: &str) -> Result<Option<Target>> {
        let Some(_rest) = s.strip_prefix("ssh://") else {
            return Ok(None);
        };
        anyhow::bail!("ssh targets are not done yet")
    }
}

#[allow(clippy::too_many_arguments)]
pub fn flash(
    _host: &Host,
    _t: &Target,
    _req: &Request,
    _resolved: &Resolved,
    _sha: &str,
    _image: &File,
    _src: &Source,
    _states: &[String],
    _ask: &dyn Ask,
    _rep: &dyn Reporter,
    _timings: Timings,
) -> Result<Flashed> {
    anyhow::bail!("ssh targets are not done yet")
}
