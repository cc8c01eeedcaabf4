//! The base root filesystem, as an uncompressed tar in the cache: from Debian packages
//! (mmdebstrap) or from a local tarball. Every kind of base ends as the same thing.

mod debian;
pub mod mirror;
mod tarball;

use std::path::PathBuf;

use anyhow::Result;

use crate::cache::{Cache, Hit, sha256};
use crate::host::Host;
use crate::lock::{self, Digest, Lock};
use crate::profile::{BaseSpec, Recipe};
use crate::progress::Stage;
use crate::tree::Tree;

pub use debian::{NATIVE_BACKEND, mirror_of, mmdebstrap_command};

/// A base root filesystem tar in the cache.
#[derive(Debug, Clone)]
pub struct BaseTar {
    pub path: PathBuf,
    /// sha256 of the tar's bytes (checked when it was taken from the cache).
    pub sha256: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Produces (or takes from the cache) the base of `recipe`, as `lock` pins it.
pub fn produce(
    host: &Host,
    cache: &Cache,
    recipe: &Recipe,
    lock: Option<&Lock>,
    stage: &dyn Stage,
) -> Result<BaseTar> {
    match &recipe.base {
        BaseSpec::Debian { .. } => debian::produce(host, cache, recipe, lock, false, stage),
        BaseSpec::Tarball { path, sha256 } => {
            if let Some(t) = lock.and_then(|l| l.tarball.as_ref())
                && t.sha256 != *sha256
            {
                return Err(crate::error::UserError::invalid(format!(
                    "the lock pins base tarball sha256 {}, the profile says {sha256}",
                    t.sha256
                ))
                .hint(format!(
                    "relock: `imagebuild build {} --relock`",
                    recipe.profile
                ))
                .into());
            }
            tarball::produce(host, cache, path, sha256, stage)
        }
    }
}

/// Makes the lock of `recipe` from its base: the cached one, or (with `fresh`, or when
/// none is cached) a new bootstrap that resolves every package against the mirror now.
/// The base is filed in the cache under its locked key too, so the next build uses it.
pub fn make_lock(
    host: &Host,
    cache: &Cache,
    recipe: &Recipe,
    fresh: bool,
    stage: &dyn Stage,
) -> Result<(Lock, BaseTar)> {
    let base = match &recipe.base {
        BaseSpec::Debian { .. } => debian::produce(host, cache, recipe, None, fresh, stage)?,
        BaseSpec::Tarball { path, sha256 } => tarball::produce(host, cache, path, sha256, stage)?,
    };
    stage.message("recording packages");
    let tree = Tree::from_tar(&base.path)?;
    let stub_path = crate::boot::stub_path(recipe.arch);
    let stub = tree.read(stub_path)?.map(|bytes| Digest {
        path: stub_path.to_string(),
        sha256: sha256(&bytes),
    });
    let mut lock = Lock {
        format: lock::FORMAT,
        profile: recipe.profile.clone(),
        recipe_id: recipe.id.clone(),
        arch: recipe.arch.debian().to_string(),
        source_date_epoch: recipe.epoch,
        mirror: None,
        suite: None,
        tarball: None,
        stub,
        packages: Vec::new(),
    };
    match &recipe.base {
        BaseSpec::Debian { suite, .. } => {
            lock.mirror = Some(debian::mirror_of(recipe)?);
            lock.suite = Some(suite.clone());
            lock.packages = debian::locked_packages(&tree, &cache.debs_dir())?;
            lock.packages.sort();
            let hit = Hit {
                path: base.path.clone(),
                sha256: base.sha256.clone(),
            };
            cache.alias("base", &debian::locked_key(recipe, &lock)?, &hit)?;
        }
        BaseSpec::Tarball { path, sha256 } => {
            lock.tarball = Some(Digest {
                path: path.display().to_string(),
                sha256: sha256.clone(),
            });
        }
    }
    Ok((lock, base))
}
