//! The build pipeline: profile -> base tar -> tree -> root tar -> ext4 + ESP -> GPT image
//! -> checksums and manifest, published atomically.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::base::{self, BaseTar};
use crate::boot;
use crate::cache::Cache;
use crate::disk::{self, Layout, Region, Sizing};
use crate::error::{Kind, UserError};
use crate::fs::{ext4, fat};
use crate::host::Host;
use crate::ids::ImageIds;
use crate::lock::{self, Lock};
use crate::output::{self, Staging};
use crate::profile::{BaseSpec, DiskSize, Project, Recipe};
use crate::progress::{Reporter, Timings};
use crate::release::{self, Release, Verification, record::Decision};
use crate::size::{Bytes, MIB};
use crate::stack;
use crate::tree::{self, Package, Tree};
use crate::verify::health;
use crate::verify::image::Tested;

/// Where a build reads and writes.
pub struct BuildOptions {
    pub out_root: PathBuf,
    pub cache: Cache,
    /// Boot-test the image before publishing it.
    pub verify: Option<crate::verify::image::Request>,
    /// Publish only if the image has this sha256 (hex).
    pub expect_sha256: Option<String>,
    /// Resolve every package against the mirror again and rewrite the profile's lock.
    pub relock: bool,
    /// Publish over a version that already names other bytes (the old record is kept in
    /// the release history).
    pub replace: bool,
}

/// What a build produced.
#[derive(Debug, Serialize)]
pub struct Built {
    pub profile: String,
    pub dir: PathBuf,
    pub image: PathBuf,
    pub sha256: String,
    pub timings: Timings,
    /// Bytes of file content in the root filesystem.
    pub content_bytes: u64,
    /// Bytes the raw image occupies on disk.
    pub allocated: u64,
    pub disk_size: u64,
    /// UKI and initramfs sizes, when the image has a kernel.
    pub uki_size: Option<u64>,
    pub initramfs_size: Option<u64>,
    /// Seconds from starting QEMU to the health report, with --verify.
    pub health_seconds: Option<f64>,
    /// Where those seconds went: firmware, kernel, initramfs, systemd (see verify::Timeline).
    pub boot_stages: Vec<(&'static str, f64)>,
    /// Bytes of container image archives baked into the image, and bytes fetched for
    /// them in this build (registries and local archives).
    pub baked_bytes: u64,
    pub fetched_bytes: u64,
    /// sha256 of the lock the build used (or wrote, with --relock).
    pub lock_digest: Option<String>,
    /// The lock file written by --relock.
    pub lock_written: Option<PathBuf>,
    /// The release record after this build.
    pub release: Option<Release>,
    /// What publishing did: `new`, `same` (the version already held these bytes) or
    /// `replaced`.
    pub published: &'static str,
}

/// Builds profile `name` of `project`.
pub fn build(
    host: &Host,
    project: &Project,
    name: &str,
    opts: &BuildOptions,
    rep: &dyn Reporter,
) -> Result<Built> {
    if let Some(sha) = &opts.expect_sha256 {
        check_sha256_syntax(sha)?;
    }
    let recipe = Recipe::load(project, name)?;
    let lock = if opts.relock {
        None
    } else {
        lock::load_for(project, &recipe)?
    };
    let swept = crate::leftovers::sweep(&[
        (&opts.out_root, 1),
        (opts.cache.root(), crate::leftovers::CACHE_DEPTH),
    ])?;
    let staging = Staging::begin(&opts.out_root, &recipe.profile, &recipe.version)?;
    host.log_to(&staging.path("build.log"))?;
    for r in &swept {
        host.note(&format!(
            "removed {} ({} bytes), left by a build that no longer runs",
            r.path.display(),
            r.bytes
        ));
    }
    host.note(&format!(
        "imagebuild {} building {} (recipe {})",
        env!("CARGO_PKG_VERSION"),
        recipe.profile,
        recipe.id
    ));
    let ctx = Ctx {
        host,
        project,
        recipe: &recipe,
        opts,
        staging: &staging,
        rep,
    };
    let result = ctx.run(lock.as_ref());
    host.close_log();
    let (built, relocked, verification) = match result {
        Ok(r) => r,
        Err(e) => return Err(failed(&staging, &recipe, e)),
    };
    let locked = release::record::lock(&opts.out_root, &recipe.profile)?;
    let at = recipe.merged.locate("version");
    let decision = match locked.decide(&recipe.version, &built.sha256, opts.replace, &at) {
        Ok(d) => d,
        Err(e) => return Err(failed(&staging, &recipe, e)),
    };
    let mut built = publish(
        &recipe,
        opts,
        staging,
        built,
        verification,
        &locked,
        &decision,
    )?;
    if let Some(l) = relocked {
        built.lock_written = Some(lock::write(project, &l)?);
    }
    Ok(built)
}

/// A failed build keeps its log as `out/PROFILE/VERSION.failed.log`; the error names it.
fn failed(staging: &Staging, recipe: &Recipe, e: anyhow::Error) -> anyhow::Error {
    match staging.keep_failed_log() {
        Some(l) => e.context(format!(
            "building {} failed; log: {}",
            recipe.profile,
            l.display()
        )),
        None => e,
    }
}

/// Publishes the staged build as `decision` says, under the release lock: the same bytes
/// keep their record and, unless this build was boot-tested, the directory already
/// published; a passed boot test is added to the record.
fn publish(
    recipe: &Recipe,
    opts: &BuildOptions,
    staging: Staging,
    mut built: Built,
    verification: Option<Verification>,
    locked: &release::record::Locked,
    decision: &Decision,
) -> Result<Built> {
    let out = &opts.out_root;
    let image_name = built
        .image
        .file_name()
        .context("image has no name")?
        .to_owned();
    let dest = out.join(&recipe.profile).join(&recipe.version);
    let keep_published = matches!(decision, Decision::Same(_))
        && verification.is_none()
        && dest.join(&image_name).is_file();
    built.dir = if keep_published {
        drop(staging);
        dest
    } else {
        staging.publish()?
    };
    built.image = built.dir.join(image_name);
    built.published = match decision {
        Decision::New => "new",
        Decision::Same(_) => "same",
        Decision::Replace(_) => "replaced",
    };
    let rec = Release {
        version: recipe.version.clone(),
        image_sha256: built.sha256.clone(),
        recipe_id: recipe.id.clone(),
        lock_digest: built.lock_digest.clone(),
        verified: false,
        published_at: None,
        verifications: Vec::new(),
        remotes: Vec::new(),
    };
    let rec = locked
        .record(decision, rec, verification, release::record::now())
        .with_context(|| {
            format!(
                "recording {} {} in {}",
                recipe.profile,
                recipe.version,
                release::record::path(out, &recipe.profile).display()
            )
        })?;
    built.release = Some(rec);
    Ok(built)
}

/// One build: what every stage reads.
struct Ctx<'a> {
    host: &'a Host,
    project: &'a Project,
    recipe: &'a Recipe,
    opts: &'a BuildOptions,
    staging: &'a Staging,
    rep: &'a dyn Reporter,
}

/// The image file and its layout, once the disk stage made it.
struct Disk {
    path: PathBuf,
    name: String,
    layout: Layout,
}

impl Ctx<'_> {
    /// The stages up to the staged outputs; with --relock, also the new lock; with
    /// --verify, the passed boot test.
    fn run(&self, lock: Option<&Lock>) -> Result<(Built, Option<Lock>, Option<Verification>)> {
        let mut t = Timings::default();
        let ids = ImageIds::derive(&self.recipe.id);
        let stacks = self.stacks(&mut t)?;
        let (base, relocked) = self.base(&mut t, lock)?;
        let lock = relocked.as_ref().or(lock);
        let tree = self.tree(&mut t, &ids, &base, &stacks, lock)?;
        let packages = tree::installed_packages(&tree)?;
        let kernel = tree::kernel_versions(&tree).pop();
        let boot = self.boot(&mut t, &tree, &ids, kernel.is_some())?;
        let rootfs = self.rootfs(&mut t, &tree)?;
        let usage = tree.usage();
        let disk = self.disk(&mut t, &ids, usage)?;
        self.ext4(&mut t, &ids, &disk, &rootfs, usage)?;
        self.esp(&mut t, &ids, &disk, boot.as_ref())?;
        let sealed = self.seal(&mut t, &disk)?;
        if let Some(want) = &self.opts.expect_sha256 {
            check_expected_sha256(&sealed.sha256, want)?;
        }
        let tested = self.verify(&mut t, &disk)?;
        let sums = self.formats(&mut t, &disk, &sealed)?;
        let lock_digest = lock.map(Lock::digest);
        let mut manifest = Manifest::new(
            self.recipe,
            &ids,
            &base,
            &disk.layout,
            packages,
            kernel,
            &sealed.sha256,
            &sums,
        );
        manifest.lock_digest = lock_digest.clone();
        self.write_outputs(&manifest, &sums)?;
        for (name, secs) in &t.0 {
            self.host.note(&format!("stage {name}: {secs:.2} s"));
        }
        let (health_seconds, boot_stages) =
            tested
                .as_ref()
                .map_or((None, Vec::new()), |tst| match &tst.outcome {
                    crate::verify::Outcome::Pass(_, took, timeline) => {
                        (Some(took.as_secs_f64()), timeline.stages())
                    }
                    crate::verify::Outcome::Fail { .. } => (None, Vec::new()),
                });
        let verification = tested
            .as_ref()
            .and_then(|tst| tst.verification(release::record::now()));
        let built = Built {
            profile: self.recipe.profile.clone(),
            dir: self.staging.dir.clone(),
            image: disk.path,
            sha256: sealed.sha256,
            timings: t,
            content_bytes: usage.file_bytes,
            allocated: sealed.allocated,
            disk_size: disk.layout.disk_size,
            uki_size: boot.as_ref().map(|b| b.uki_size as u64),
            initramfs_size: boot.as_ref().map(|b| b.initramfs_size as u64),
            health_seconds,
            boot_stages,
            baked_bytes: stacks.images.iter().map(|i| i.len).sum(),
            fetched_bytes: stacks.fetched,
            lock_digest,
            lock_written: None,
            release: None,
            published: "",
        };
        Ok((built, relocked, verification))
    }

    fn stacks(&self, t: &mut Timings) -> Result<stack::Prepared> {
        t.stage(self.rep, "stacks", |_| {
            let p = stack::prepare(self.host, &self.opts.cache, self.recipe)?;
            let bytes: u64 = p.images.iter().map(|i| i.len).sum();
            let summary = format!(
                "{} stacks, {} images, {} baked, {} fetched",
                p.stacks.len(),
                p.images.len(),
                Bytes(bytes),
                Bytes(p.fetched)
            );
            Ok((p, summary))
        })
    }

    fn base(&self, t: &mut Timings, lock: Option<&Lock>) -> Result<(BaseTar, Option<Lock>)> {
        let (host, cache, recipe) = (self.host, &self.opts.cache, self.recipe);
        t.stage(self.rep, "base", |s| {
            let (b, relocked) = if self.opts.relock {
                let (l, b) = base::make_lock(host, cache, recipe, true, s)?;
                (b, Some(l))
            } else {
                (base::produce(host, cache, recipe, lock, s)?, None)
            };
            let note = if b.cached { "cached" } else { "bootstrapped" };
            let locked = match (&relocked, lock) {
                (Some(_), _) => ", relocked",
                (None, Some(_)) => ", locked",
                (None, None) => ", no lock",
            };
            let summary = format!("{note}{locked}, sha256 {}", &b.sha256[..12]);
            Ok(((b, relocked), summary))
        })
    }

    fn tree(
        &self,
        t: &mut Timings,
        ids: &ImageIds,
        base: &BaseTar,
        stacks: &stack::Prepared,
        lock: Option<&Lock>,
    ) -> Result<Tree> {
        t.stage(self.rep, "tree", |s| {
            let tree = make_tree(self.recipe, ids, base, stacks, s)?;
            if let Some(l) = lock {
                check_stub(&tree, l)?;
            }
            let n = tree.len();
            Ok((tree, format!("{n} entries")))
        })
    }

    fn boot(
        &self,
        t: &mut Timings,
        tree: &Tree,
        ids: &ImageIds,
        has_kernel: bool,
    ) -> Result<Option<boot::Boot>> {
        let recipe = self.recipe;
        t.stage(self.rep, "boot", |_| {
            if !has_kernel && matches!(recipe.base, BaseSpec::Tarball { .. }) {
                self.host
                    .note("boot: the tarball base has no /boot/vmlinuz-*; the ESP stays empty");
                return Ok((
                    None,
                    "no kernel in the tarball base: ESP left empty".to_string(),
                ));
            }
            let b = boot::make(tree, recipe, &ids.root_partuuid.to_string())?;
            let summary = format!(
                "kernel {}, UKI {}, initramfs {}",
                b.kernel,
                Bytes(b.uki_size as u64),
                Bytes(b.initramfs_size as u64)
            );
            Ok((Some(b), summary))
        })
    }

    /// The final tree as a deterministic tar, the input of mke2fs.
    fn rootfs(&self, t: &mut Timings, tree: &Tree) -> Result<PathBuf> {
        let rootfs = self.staging.work().join("rootfs.tar");
        t.stage(self.rep, "rootfs", |_| {
            let f =
                File::create(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
            tree.write_tar(BufWriter::with_capacity(1 << 20, f))?;
            Ok(((), format!("{}", Bytes(std::fs::metadata(&rootfs)?.len()))))
        })?;
        Ok(rootfs)
    }

    fn disk(&self, t: &mut Timings, ids: &ImageIds, usage: tree::Usage) -> Result<Disk> {
        let name = format!("{}.raw", self.recipe.artifact_stem());
        let path = self.staging.path(&name);
        let layout = t.stage(self.rep, "disk", |_| {
            let layout = plan(self.recipe, ids, usage)?;
            let f = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?;
            if let Err(e) = f.set_len(layout.disk_size) {
                return Err(too_large(self.recipe, layout.disk_size, &path, &e));
            }
            disk::write_partition_table(&f, &layout, ids.disk_guid)?;
            let summary = format!(
                "{} disk, root {}",
                Bytes(layout.disk_size),
                Bytes(layout.root.size)
            );
            Ok((layout, summary))
        })?;
        Ok(Disk { path, name, layout })
    }

    fn ext4(
        &self,
        t: &mut Timings,
        ids: &ImageIds,
        disk: &Disk,
        rootfs: &Path,
        usage: tree::Usage,
    ) -> Result<()> {
        let root = &disk.layout.root;
        t.stage(self.rep, "ext4", |_| {
            ext4::make(
                self.host,
                &ext4::Ext4 {
                    image: &disk.path,
                    offset: root.start,
                    size: root.size,
                    rootfs_tar: rootfs,
                    label: "root",
                    uuid: ids.root_fs_uuid,
                    hash_seed: ids.root_hash_seed,
                    epoch: self.recipe.epoch,
                    inodes: inode_count(root.size, usage.inodes),
                    work: &self.staging.work(),
                },
            )?;
            Ok(((), format!("{} of content", Bytes(usage.file_bytes))))
        })
    }

    fn esp(
        &self,
        t: &mut Timings,
        ids: &ImageIds,
        disk: &Disk,
        boot: Option<&boot::Boot>,
    ) -> Result<()> {
        let files = boot.map(|b| b.files.clone()).unwrap_or_default();
        let esp = &disk.layout.esp;
        t.stage(self.rep, "esp", |_| {
            let f = File::options().read(true).write(true).open(&disk.path)?;
            let written = fat::write_esp(
                &f,
                esp.start,
                esp.size,
                ids.esp_volume_id,
                "ESP",
                self.recipe.epoch,
                &files,
            );
            if let Err(e) = written {
                return Err(esp_full(self.recipe, esp.size, &files, e));
            }
            Ok(((), format!("{} files", files.len())))
        })
    }

    fn seal(&self, t: &mut Timings, disk: &Disk) -> Result<output::Sealed> {
        t.stage(self.rep, "seal", |_| {
            let s = output::seal_image(&disk.path)?;
            let summary = format!(
                "sha256 {}, {} allocated",
                &s.sha256[..12],
                Bytes(s.allocated)
            );
            Ok((s, summary))
        })
    }

    /// With --verify: boots the image; a failed boot fails the build.
    fn verify(&self, t: &mut Timings, disk: &Disk) -> Result<Option<Tested>> {
        let Some(req) = &self.opts.verify else {
            return Ok(None);
        };
        let stem = self.recipe.artifact_stem();
        let tested = t.stage(self.rep, "verify", |_| {
            let mut req = req.clone();
            req.log = Some(self.staging.path(&format!("{stem}.console.log")));
            // The release's firmware comes from the mirror the base came from.
            req.mirror = crate::base::mirror_of(self.recipe).ok();
            let tested =
                crate::verify::image::verify_image(self.host, self.project, &disk.path, &req)?;
            // A failed build keeps the console next to its log (the staging goes away).
            let kept = self
                .staging
                .failed_console_log()
                .unwrap_or(tested.log.clone());
            if let Some(e) = crate::verify::image::failure(&tested.outcome, &kept) {
                return Err(e);
            }
            let summary = tested.outcome.to_string();
            Ok((tested, summary))
        })?;
        Ok(Some(tested))
    }

    /// The raw image and the other formats the profile asks for, with their sha256.
    fn formats(
        &self,
        t: &mut Timings,
        disk: &Disk,
        sealed: &output::Sealed,
    ) -> Result<Vec<(String, String)>> {
        let mut sums = vec![(disk.name.clone(), sealed.sha256.clone())];
        let recipe = self.recipe;
        t.stage(self.rep, "formats", |_| {
            // Each format reads the raw image on its own: one thread each.
            let written: Vec<Result<(String, String)>> = std::thread::scope(|s| {
                let jobs: Vec<_> = recipe
                    .formats
                    .iter()
                    .filter(|f| *f != "raw")
                    .map(|f| {
                        s.spawn(|| {
                            convert(
                                self.host,
                                &disk.path,
                                self.staging,
                                recipe,
                                &sealed.sha256,
                                f,
                            )
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| {
                        j.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a format writer panicked")))
                    })
                    .collect()
            });
            for w in written {
                sums.push(w?);
            }
            Ok(((), recipe.formats.join(", ")))
        })?;
        Ok(sums)
    }

    fn write_outputs(&self, manifest: &Manifest, sums: &[(String, String)]) -> Result<()> {
        std::fs::write(
            self.staging.path("manifest.json"),
            serde_json::to_string_pretty(manifest)? + "\n",
        )?;
        std::fs::write(self.staging.path("SHA256SUMS"), output::sha256sums(sums))?;
        Ok(())
    }
}

/// An ESP write that ran out of room is the profile's `esp-size`, not the host's disk.
fn esp_full(recipe: &Recipe, size: u64, files: &[fat::EspFile], e: anyhow::Error) -> anyhow::Error {
    // fatfs says "No space left on device" itself (no OS error) when the FAT has no free
    // cluster; the host's full disk is the OS error ENOSPC, left as it is.
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.raw_os_error().is_none() && io.to_string() == "No space left on device"
        })
    });
    if !full {
        return e;
    }
    let need: u64 = files.iter().map(|f| f.data.len() as u64).sum();
    let largest = files.iter().max_by_key(|f| f.data.len());
    UserError::invalid(format!(
        "{}: the ESP (esp-size {}) is too small for its files: {} in {} files{}",
        recipe.merged.locate_key("esp-size"),
        Bytes(size),
        Bytes(need),
        files.len(),
        largest.map_or_else(String::new, |f| format!(
            ", the largest {} ({})",
            f.path,
            Bytes(f.data.len() as u64)
        ))
    ))
    .hint(format!(
        "set [image] esp-size to at least {} MiB (the files, FAT's own tables and room for \
         an update)",
        (need * 2).div_ceil(1 << 20).max(40)
    ))
    .into()
}

/// The image file cannot be made `size` bytes long where it is written: the error names
/// the profile's key and the directory.
fn too_large(recipe: &Recipe, size: u64, path: &Path, e: &std::io::Error) -> anyhow::Error {
    let dir = path.parent().unwrap_or(Path::new("."));
    UserError::invalid(format!(
        "{}: the image is {} ({size} bytes), which {} cannot hold as one file ({e})",
        recipe.merged.locate_key("size"),
        Bytes(size),
        dir.display()
    ))
    .hint("set [image] size smaller (or \"auto\"), or build with --out on a filesystem that takes files that large")
    .into()
}

/// The UKI's systemd-stub is the one the lock recorded.
fn check_stub(tree: &Tree, lock: &Lock) -> Result<()> {
    let Some(d) = &lock.stub else { return Ok(()) };
    let Some(bytes) = tree.read(&d.path)? else {
        return Err(UserError::invalid(format!(
            "the lock records the systemd-stub /{}, the image has none",
            d.path
        ))
        .into());
    };
    let actual = crate::cache::sha256(&bytes);
    if actual != d.sha256 {
        return Err(UserError::new(
            Kind::Corrupt,
            format!(
                "systemd-stub /{} has sha256 {actual}, the lock says {}",
                d.path, d.sha256
            ),
        )
        .hint(format!(
            "relock: `imagebuild build {} --relock`",
            lock.profile
        ))
        .into());
    }
    Ok(())
}

/// `--expect-sha256` must be a sha256: 64 hex digits.
fn check_sha256_syntax(sha: &str) -> Result<()> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(UserError::invalid(format!(
        "--expect-sha256 {sha:?} is not a sha256 (64 hex digits)"
    ))
    .into())
}

/// The image must be the one expected; checked before it is boot-tested or published.
fn check_expected_sha256(got: &str, want: &str) -> Result<()> {
    if got.eq_ignore_ascii_case(want) {
        return Ok(());
    }
    let msg = format!(
        "the image has sha256 {got}, but --expect-sha256 is {}; nothing was published",
        want.to_ascii_lowercase()
    );
    Err(UserError::new(Kind::Corrupt, msg).into())
}

/// Base tar + removals + overlays + generated files, normalised and checked.
fn make_tree(
    recipe: &Recipe,
    ids: &ImageIds,
    base: &BaseTar,
    stacks: &stack::Prepared,
    s: &dyn crate::progress::Stage,
) -> Result<Tree> {
    s.message("reading base");
    let mut tree = Tree::from_tar(&base.path)?;
    for path in &recipe.remove {
        tree.remove(path);
    }
    for o in &recipe.overlays {
        s.message(&format!("overlay {}", o.path));
        tree::apply_overlay(&mut tree, o, recipe.epoch)?;
    }
    let root = ids.root_partuuid.to_string();
    let esp = ids.esp_partuuid.to_string();
    let g = tree::Generated {
        image_id: &recipe.image_name,
        version: &recipe.version,
        hostname: &recipe.hostname,
        root_partuuid: &root,
        esp_partuuid: &esp,
        ssh_host_keys: &recipe.ssh_host_keys,
        grow_root: !recipe.has_os_disk_state(),
    };
    tree::generate(&mut tree, &g, recipe.epoch)?;
    stack::install(&mut tree, stacks, recipe)?;
    let mut checks = recipe.checks.clone();
    checks.extend(stack::health_checks(stacks));
    checks.extend(tree::state::install(&mut tree, recipe)?);
    for f in health::image_files(&recipe.image_name, &recipe.version, &checks) {
        match f {
            health::GeneratedFile::File {
                path,
                mode,
                contents,
            } => {
                tree.insert(&path, tree::Entry::file(contents, mode, recipe.epoch));
            }
            health::GeneratedFile::Symlink { path, target } => {
                tree.insert(&path, tree::Entry::symlink(&target, recipe.epoch))
            }
        }
    }
    s.message("users");
    tree::apply_users(&mut tree, &recipe.users, recipe.epoch)?;
    // Last: every unit (packages, overlays, stacks) is in the tree by now.
    s.message("services");
    tree::apply_services(&mut tree, &recipe.services, recipe.epoch)?;
    tree.normalise(recipe.epoch);
    s.message("checking ELF architectures");
    tree::check_architecture(&tree, recipe.arch)?;
    Ok(tree)
}

/// Root filesystem size for the content: the ext4 minimum plus headroom (auto), or what
/// a fixed disk size leaves.
fn plan(recipe: &Recipe, ids: &ImageIds, usage: tree::Usage) -> Result<Layout> {
    let min_root = ext4::minimum_size(usage.blocks_4k, usage.inodes + usage.inodes / 2);
    let sizing = match recipe.size {
        DiskSize::Auto => Sizing::Root(min_root + (min_root / 4).max(256 * MIB)),
        DiskSize::Fixed(b) => Sizing::Disk {
            size: b.0,
            min_root,
        },
    };
    disk::plan(recipe.arch, ids, recipe.esp_size.0, sizing)
}

/// Inodes for a root filesystem: the default ratio, or more if the content needs them.
fn inode_count(root_size: u64, used: u64) -> u64 {
    (root_size / 16384).max(used + used / 2 + 4096)
}

/// Writes `raw` in `format` into the staging directory; the file's name and sha256.
fn convert(
    host: &Host,
    raw: &Path,
    staging: &Staging,
    recipe: &Recipe,
    sha256: &str,
    format: &str,
) -> Result<(String, String)> {
    // OK to unwrap: the profile loader accepts only the names formats::ALL knows.
    let format = crate::formats::Format::parse(format).unwrap();
    let name = format.file_name(&recipe.artifact_stem());
    let out = staging.path(&name);
    let stamp = crate::formats::Stamp {
        image_sha256: sha256,
        epoch: recipe.epoch,
        file_name: &name,
    };
    crate::formats::write(host, format, raw, &out, &stamp)
        .with_context(|| format!("writing the {} image", format.name()))?;
    Ok((name, crate::cache::sha256_file(&out)?))
}

/// `manifest.json`: what the image is and what is in it. Deterministic.
#[derive(Serialize)]
pub struct Manifest {
    pub profile: String,
    pub image: String,
    pub version: String,
    pub arch: String,
    pub recipe_id: String,
    pub source_date_epoch: i64,
    pub base: serde_json::Value,
    pub kernel: Option<String>,
    pub disk_guid: String,
    pub partitions: Vec<Region>,
    pub packages: Vec<Package>,
    pub files: Vec<FileSum>,
    pub image_sha256: String,
    /// sha256 of the lock file the base was pinned by.
    pub lock_digest: Option<String>,
}

#[derive(Serialize)]
pub struct FileSum {
    pub name: String,
    pub sha256: String,
}

impl Manifest {
    #[allow(clippy::too_many_arguments)]
    fn new(
        r: &Recipe,
        ids: &ImageIds,
        base: &BaseTar,
        layout: &Layout,
        packages: Vec<Package>,
        kernel: Option<String>,
        sha: &str,
        sums: &[(String, String)],
    ) -> Self {
        let base_json = match &r.base {
            BaseSpec::Debian { suite, variant, .. } => {
                serde_json::json!({"kind": "debian", "suite": suite, "variant": variant, "sha256": base.sha256})
            }
            BaseSpec::Tarball { sha256, .. } => {
                serde_json::json!({"kind": "tarball", "sha256": sha256})
            }
        };
        Manifest {
            profile: r.profile.clone(),
            image: r.image_name.clone(),
            version: r.version.clone(),
            arch: r.arch.to_string(),
            recipe_id: r.id.clone(),
            source_date_epoch: r.epoch,
            base: base_json,
            kernel,
            disk_guid: ids.disk_guid.to_string(),
            partitions: vec![layout.esp.clone(), layout.root.clone()],
            packages,
            files: sums
                .iter()
                .map(|(n, s)| FileSum {
                    name: n.clone(),
                    sha256: s.clone(),
                })
                .collect(),
            image_sha256: sha.to_string(),
            lock_digest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_sha256_is_checked_for_syntax_then_compared() {
        let sha = "ab".repeat(32);
        assert!(check_sha256_syntax(&sha).is_ok());
        let err = check_sha256_syntax("abc").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--expect-sha256 \"abc\" is not a sha256 (64 hex digits)"
        );
        assert!(check_expected_sha256(&sha, &sha.to_uppercase()).is_ok());
        let other = "cd".repeat(32);
        let err = check_expected_sha256(&sha, &other).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the image has sha256 {sha}, but --expect-sha256 is {other}; nothing was published"
            )
        );
    }

    #[test]
    fn a_uki_larger_than_the_esp_names_esp_size() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("profiles")).unwrap();
        std::fs::write(
            d.path().join("profiles/x.toml"),
            "[image]\narch = \"amd64\"\nversion = \"1\"\nesp-size = \"33M\"\n[base]\ndistro = \"debian\"\n",
        )
        .unwrap();
        let recipe = Recipe::load(&Project::new(d.path()), "x").unwrap();
        let size = 66_576 * 512;
        let disk = d.path().join("esp.img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        f.set_len(size).unwrap();
        let files = [fat::EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: vec![1u8; 40 << 20],
        }];
        let e = fat::write_esp(&f, 0, size, 1, "ESP", 1_767_225_600, &files).unwrap_err();
        let e = esp_full(&recipe, size, &files, e);
        assert_eq!(
            e.to_string(),
            "profiles/x.toml:4: the ESP (esp-size 32.5 MiB) is too small for its files: 40.0 MiB in 1 files, the largest EFI/BOOT/BOOTX64.EFI (40.0 MiB)"
        );
        assert!(
            crate::error::hints(&e)
                .iter()
                .any(|h| h.contains("esp-size to at least 80 MiB")),
            "{:?}",
            crate::error::hints(&e)
        );
    }
}
