//! Docker Compose stacks baked into the image: each `[[stack]]`'s compose file and the files
//! it refers to go to `/etc/imagebuild/stacks/NAME/`; every container image it uses, pinned
//! by digest and verified, goes to `/var/lib/imagebuild/images/HEX.tar` as an archive
//! `docker load` reads; generated units load the images once and bring each stack up after
//! docker.service. First boot needs no registry.

pub mod archive;
pub mod blobs;
pub mod compose;
pub mod docker_archive;
pub mod fetch;
pub mod oci;
pub mod ocibuild;
pub mod reference;
pub mod registry;
pub mod units;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::Cache;
use crate::error::{Kind as ErrorKind, UserError};
use crate::host::Host;
use crate::profile::{Arch, Recipe, StackSpec};
use crate::tree::{Content, Entry, Kind, Tree};
use crate::verify::health::{Check, CheckKind, GeneratedFile};
use blobs::BlobStore;
use fetch::Fetcher;
use reference::{Digest, ImageRef};

/// Where stacks live in the image.
pub const STACKS_DIR: &str = "/etc/imagebuild/stacks";
/// Where the image archives live in the image.
pub const IMAGES_DIR: &str = "/var/lib/imagebuild/images";
/// Packages a stack needs in the image.
/// (Debian 13 ships the docker command in docker-cli, only recommended by docker.io.)
pub const PACKAGES: [&str; 3] = ["docker.io", "docker-cli", "docker-compose"];

/// Everything the stacks add to the image, ready to be put into the tree.
#[derive(Debug, Default)]
pub struct Prepared {
    pub stacks: Vec<PreparedStack>,
    /// One per pinned digest, sorted.
    pub images: Vec<BakedImage>,
    /// Bytes fetched over the network or from local archives in this build.
    pub fetched: u64,
}

#[derive(Debug)]
pub struct PreparedStack {
    pub name: String,
    /// `profiles/x.toml:12`, for errors.
    pub at: String,
    /// The compose file's name in the stack directory.
    pub compose_file: String,
    /// Paths relative to the stack directory and where they are on the host.
    pub files: Vec<(String, PathBuf)>,
    pub services: Vec<StackService>,
}

#[derive(Debug)]
pub struct StackService {
    pub name: String,
    pub local_tag: String,
    pub healthcheck: bool,
}

#[derive(Debug, Clone)]
pub struct BakedImage {
    pub pinned: Digest,
    pub local_tag: String,
    /// The archive in the cache.
    pub archive: PathBuf,
    pub len: u64,
}

/// Reads every stack's compose file, checks its images are pinned and bakes them.
pub fn prepare(host: &Host, cache: &Cache, recipe: &Recipe) -> Result<Prepared> {
    let mut out = Prepared::default();
    let mut images: BTreeMap<Digest, BakedImage> = BTreeMap::new();
    for spec in &recipe.stacks {
        let stack = prepare_stack(
            host,
            cache,
            recipe.arch,
            recipe.epoch,
            spec,
            &mut images,
            &mut out.fetched,
        )?;
        out.stacks.push(stack);
    }
    out.images = images.into_values().collect();
    Ok(out)
}

fn prepare_stack(
    host: &Host,
    cache: &Cache,
    arch: Arch,
    epoch: i64,
    spec: &StackSpec,
    images: &mut BTreeMap<Digest, BakedImage>,
    fetched: &mut u64,
) -> Result<PreparedStack> {
    let text = std::fs::read_to_string(&spec.compose_path)
        .with_context(|| format!("reading {}", spec.compose))?;
    let parsed = compose::parse(&text).map_err(|e| {
        let at = e
            .line
            .map_or(spec.compose.clone(), |l| format!("{}:{l}", spec.compose));
        UserError::invalid(format!("{at}: {}", e.message)).hint(e.hint)
    })?;
    let dir = spec.compose_path.parent().unwrap_or(Path::new("."));
    let compose_file = compose_file_name(spec)?;
    let files = referenced_files(spec, dir, &compose_file, &parsed.files)?;
    let archives = spec
        .oci_archives
        .iter()
        .map(|p| archive::LocalArchive::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut fetcher = Fetcher::new(host, BlobStore::new(cache), archives);
    let mut pinned = Vec::new();
    let mut unpinned = Vec::new();
    for svc in &parsed.services {
        let at = format!("{}:{}", spec.compose, svc.line);
        let image = ImageRef::parse(&svc.image).map_err(|e| {
            UserError::invalid(format!("{at}: service `{}`: {e}", svc.name))
                .hint("write `image: NAME:TAG@sha256:DIGEST`")
        })?;
        match image.digest.clone() {
            Some(d) => pinned.push((svc, image, d)),
            None if spec.allow_unpinned => {
                let d = fetcher.resolve_tag(&image)?;
                host.note(&format!(
                    "stack {}: allow-unpinned: {image} resolved to {d}; baking {}",
                    spec.name,
                    image.pinned(&d)
                ));
                crate::say!(
                    "note: stack {}: {image} is not pinned; baking {}",
                    spec.name,
                    image.pinned(&d)
                );
                pinned.push((svc, image, d));
            }
            None => unpinned.push((at, svc, image)),
        }
    }
    if let Some(e) = unpinned_error(&mut fetcher, spec, &unpinned) {
        return Err(e.into());
    }
    let mut services = Vec::new();
    for (svc, image, d) in pinned {
        let local_tag = image.local_tag(&d);
        if !images.contains_key(&d) {
            let baked = bake(
                host,
                cache,
                &mut fetcher,
                &image,
                &d,
                &local_tag,
                arch,
                epoch,
                fetched,
            )?;
            images.insert(d.clone(), baked);
        }
        services.push(StackService {
            name: svc.name.clone(),
            // Two references to one digest share the first one's archive and tag.
            local_tag: images[&d].local_tag.clone(),
            healthcheck: svc.healthcheck,
        });
    }
    Ok(PreparedStack {
        name: spec.name.clone(),
        at: spec.at.clone(),
        compose_file,
        files,
        services,
    })
}

/// The error for images without a digest; its hint prints the digests to pin where they
/// can be resolved.
fn unpinned_error(
    fetcher: &mut Fetcher,
    spec: &StackSpec,
    unpinned: &[(String, &compose::Service, ImageRef)],
) -> Option<UserError> {
    let (at, first, _) = unpinned.first()?;
    let mut hint = String::from("pin every image by digest:");
    for (at, svc, image) in unpinned {
        match fetcher.resolve_tag(image) {
            Ok(d) => hint.push_str(&format!("\n  image: {}    # {at}, service {}", image.pinned(&d), svc.name)),
            Err(e) => hint.push_str(&format!(
                "\n  {at}: service {}: could not resolve {image} ({e}); `skopeo inspect docker://{image}` prints its digest",
                svc.name
            )),
        }
    }
    hint.push_str(&format!(
        "\nor set allow-unpinned = true in the [[stack]] `{}` to bake what the tag points to at build time",
        spec.name
    ));
    let more = match unpinned.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Some(
        UserError::invalid(format!(
            "{at}: image `{}` of service `{}` is not pinned by digest{more}",
            first.image, first.name
        ))
        .hint(hint),
    )
}

/// The docker archive of `image` for `arch` from the cache, or fetched and written into it.
#[allow(clippy::too_many_arguments)]
fn bake(
    host: &Host,
    cache: &Cache,
    fetcher: &mut Fetcher,
    image: &ImageRef,
    d: &Digest,
    local_tag: &str,
    arch: Arch,
    epoch: i64,
    fetched: &mut u64,
) -> Result<BakedImage> {
    let key = crate::cache::sha256(
        format!("imagebuild-docker-archive-v1\0{d}\0{arch}\0{local_tag}\0{epoch}").as_bytes(),
    );
    let started = std::time::Instant::now();
    let hit = match cache.get(host, "docker-archives", &key)? {
        Some(hit) => {
            host.note(&format!("stack: {image}: archive from the cache ({key})"));
            hit
        }
        None => {
            let resolved = fetcher
                .fetch(image, d, arch)
                .with_context(|| format!("fetching {image}"))?;
            *fetched += resolved.downloaded;
            cache.put("docker-archives", &key, |path| {
                let f =
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                docker_archive::write(
                    BufWriter::with_capacity(1 << 20, f),
                    &fetcher.store,
                    &resolved,
                    local_tag,
                    epoch,
                )
            })?
        }
    };
    let len = std::fs::metadata(&hit.path)?.len();
    host.note(&format!(
        "stack: {image}: baked as {local_tag}, {len} bytes, {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(BakedImage {
        pinned: d.clone(),
        local_tag: local_tag.to_string(),
        archive: hit.path,
        len,
    })
}

/// The compose file's name, which goes into unit command lines: plain characters only.
fn compose_file_name(spec: &StackSpec) -> Result<String> {
    let name = spec
        .compose_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ok = !name.is_empty()
        && name != units::OVERRIDE_FILE
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        return Ok(name);
    }
    Err(UserError::invalid(format!(
        "{}: compose file name `{name}` cannot be used",
        spec.at
    ))
    .hint(format!(
        "name it compose.yaml (letters, digits and ._- only; not {})",
        units::OVERRIDE_FILE
    ))
    .into())
}

/// The compose file, `.env` beside it (compose reads it) and every referenced file, with
/// directories walked; paths relative to the compose file's directory.
fn referenced_files(
    spec: &StackSpec,
    dir: &Path,
    compose_file: &str,
    refs: &[compose::FileRef],
) -> Result<Vec<(String, PathBuf)>> {
    let mut out = BTreeMap::new();
    out.insert(compose_file.to_string(), spec.compose_path.clone());
    if dir.join(".env").is_file() {
        out.insert(".env".to_string(), dir.join(".env"));
    }
    for r in refs {
        let host = dir.join(&r.path);
        if std::fs::symlink_metadata(&host).is_err() {
            if !r.required {
                continue;
            }
            let shown = Path::new(&spec.compose)
                .parent()
                .unwrap_or(Path::new(""))
                .join(&r.path);
            return Err(UserError::invalid(format!(
                "{}: {}: {} does not exist",
                spec.compose,
                r.what,
                shown.display()
            ))
            .hint(format!(
                "create {} (a directory needs a file in it to be kept by git), or change the compose file",
                shown.display()
            ))
            .into());
        }
        walk(&host, &r.path, &mut out)?;
    }
    if out.contains_key(units::OVERRIDE_FILE) {
        return Err(UserError::invalid(format!(
            "{}: the stack has a file named {}, which imagebuild writes",
            spec.compose,
            units::OVERRIDE_FILE
        ))
        .hint("rename it")
        .into());
    }
    Ok(out.into_iter().collect())
}

fn walk(host: &Path, rel: &str, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    out.insert(rel.to_string(), host.to_path_buf());
    let meta =
        std::fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
    if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(host)
            .with_context(|| format!("reading {}", host.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            walk(
                &host.join(&n),
                &format!("{rel}/{}", n.to_string_lossy()),
                out,
            )?;
        }
    }
    Ok(())
}

/// Puts the stacks into the tree: files, archives, units, the loader; enables docker.service.
pub fn install(tree: &mut Tree, p: &Prepared, recipe: &Recipe) -> Result<()> {
    let Some(first) = p.stacks.first() else {
        return Ok(());
    };
    check_docker(tree, &first.at, &first.name)?;
    let epoch = recipe.epoch;
    for s in &p.stacks {
        let dir = format!("{STACKS_DIR}/{}", s.name);
        tree.insert(&dir, Entry::dir(0o755, epoch));
        for (rel, host) in &s.files {
            tree.insert(&format!("{dir}/{rel}"), host_entry(host, epoch)?);
        }
        for f in units::stack_files(s) {
            insert_generated(tree, f, epoch);
        }
    }
    let mut loads = Vec::new();
    for img in &p.images {
        let mut e = Entry::file(Vec::new(), 0o644, epoch);
        e.kind = Kind::File(Content::Host {
            path: img.archive.clone(),
            len: img.len,
        });
        tree.insert(&format!("{IMAGES_DIR}/{}.tar", img.pinned.hex()), e);
        loads.push((img.pinned.hex().to_string(), img.local_tag.clone()));
    }
    for f in units::loader(&loads) {
        insert_generated(tree, f, epoch);
    }
    enable_docker(tree, epoch);
    Ok(())
}

/// The stacks' checks for the health report: `stack NAME`.
pub fn health_checks(p: &Prepared) -> Vec<Check> {
    p.stacks
        .iter()
        .map(|s| Check {
            kind: CheckKind::Stack {
                project: s.name.clone(),
                services: s
                    .services
                    .iter()
                    .map(|v| (v.name.clone(), v.healthcheck))
                    .collect(),
            },
        })
        .collect()
}

fn check_docker(tree: &Tree, at: &str, name: &str) -> Result<()> {
    let installed = crate::tree::installed_packages(tree)?;
    let missing: Vec<&str> = PACKAGES
        .into_iter()
        .filter(|p| !installed.iter().any(|i| i.name == *p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(UserError::new(
        ErrorKind::Invalid,
        format!(
            "{at}: stack `{name}` needs docker, but the image does not have {}",
            missing.join(", ")
        ),
    )
    .hint(format!(
        "add {} to [packages] include",
        PACKAGES.map(|p| format!("\"{p}\"")).join(", ")
    ))
    .into())
}

/// Enables docker.service the way `systemctl enable` would, if the image has it.
fn enable_docker(tree: &mut Tree, epoch: i64) {
    let link = format!("{}/docker.service", units::WANTS_DIR);
    if tree.get(&link).is_some() {
        return;
    }
    for unit in [
        "usr/lib/systemd/system/docker.service",
        "lib/systemd/system/docker.service",
    ] {
        let Some(real) = tree.resolve(unit) else {
            continue;
        };
        if matches!(tree.get(&real).map(|e| &e.kind), Some(Kind::File(_))) {
            tree.insert(&link, Entry::symlink(&format!("/{unit}"), epoch));
            return;
        }
    }
}

fn host_entry(host: &Path, epoch: i64) -> Result<Entry> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::symlink_metadata(host).with_context(|| format!("reading {}", host.display()))?;
    Ok(if meta.file_type().is_symlink() {
        Entry::symlink(&std::fs::read_link(host)?.to_string_lossy(), epoch)
    } else if meta.is_dir() {
        Entry::dir(0o755, epoch)
    } else if meta.is_file() {
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let mut e = Entry::file(Vec::new(), mode, epoch);
        e.kind = Kind::File(Content::Host {
            path: host.to_path_buf(),
            len: meta.len(),
        });
        e
    } else {
        return Err(UserError::invalid(format!(
            "{} is not a file, directory or symlink",
            host.display()
        ))
        .into());
    })
}

fn insert_generated(tree: &mut Tree, f: GeneratedFile, epoch: i64) {
    match f {
        GeneratedFile::File {
            path,
            mode,
            contents,
        } => {
            tree.insert(&path, Entry::file(contents, mode, epoch));
        }
        GeneratedFile::Symlink { path, target } => {
            tree.insert(&path, Entry::symlink(&target, epoch))
        }
    }
}
