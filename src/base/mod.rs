//! The base root filesystem, as an uncompressed tar in the cache: from Debian packages
//! (mmdebstrap) or from a local tarball. Every kind of base ends as the same thing.

mod debian;
pub mod mirror;
mod tarball;

use std::path::PathBuf;

use anyhow::Result;

use crate::cache::Cache;
use crate::host::Host;
use crate::profile::{BaseSpec, Recipe};
use crate::progress::Stage;

pub use debian::mmdebstrap_command;

/// A base root filesystem tar in the cache.
#[derive(Debug, Clone)]
pub struct BaseTar {
    pub path: PathBuf,
    /// sha256 of the tar's bytes (checked when it was taken from the cache).
    pub sha256: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Produces (or takes from the cache) the base of `recipe`.
pub fn produce(host: &Host, cache: &Cache, recipe: &Recipe, stage: &dyn Stage) -> Result<BaseTar> {
    match &recipe.base {
        BaseSpec::Debian { .. } => debian::produce(host, cache, recipe, stage),
        BaseSpec::Tarball { path, sha256 } => tarball::produce(host, cache, path, sha256, stage),
    }
}
