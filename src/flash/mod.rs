//! Flashing: putting a release on a whole disk, a file, or a disk of a machine booted into
//! a rescue system (`ssh://USER@HOST[:PORT]/DEVICE`).
//!
//! Every flash: the image's sha256 is recomputed and must be its release's; the target is
//! judged by the guard rails ([`guard`], from what [`facts`] gathers), shown, and confirmed;
//! the [`plan`] writes the first MiB last and keeps state partitions; the target is read
//! back and must hold the release's bytes.
//!
//! - [`local`]: files and this machine's disks; [`remote`]: over ssh;
//! - [`gpt`]: the table rewritten for a larger disk and put back for the check.

pub mod facts;
pub mod gpt;
pub mod guard;
pub mod local;
pub mod plan;
pub mod remote;
pub mod values;

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::profile::Project;
use crate::progress::{Reporter, Stage, Timings};
use crate::release::{self, Latest, Resolved};
use crate::size::Bytes;
use gpt::{BACKUP_BYTES, Gpt, PRIMARY_BYTES};
use plan::{Plan, Source};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// A release name or an image path.
    pub release: String,
    /// A disk, a file, or `ssh://USER@HOST[:PORT]/DEVICE`.
    pub target: String,
    /// A bare PROFILE may name a release that was never boot-tested.
    pub unverified: bool,
    /// Do not ask (only with `expect_serial` or a by-id path, or for a file).
    pub yes: bool,
    /// The disk must have this serial.
    pub expect_serial: Option<String>,
    /// Decide and report, write nothing.
    pub dry_run: bool,
    /// `-o` options for ssh.
    pub ssh_options: Vec<String>,
    /// Per-machine values written next to the UKI after the image is proven
    /// (`--hostname`, `--credential`).
    pub credentials: Vec<crate::machine::Credential>,
}

/// Asks the person at the terminal; None when nobody can answer (no terminal).
pub trait Ask {
    fn ask(&self, prompt: &str) -> Result<Option<String>>;
}

/// What a flash did.
#[derive(Debug, Serialize)]
pub struct Flashed {
    /// `prod-amd64@2026.12.1`, or the image path.
    pub release: String,
    pub image_sha256: String,
    pub target: String,
    /// Nothing was written (--dry-run).
    pub dry_run: bool,
    pub image_bytes: u64,
    pub target_bytes: u64,
    /// Bytes copied from the image, and bytes zeroed.
    pub written: u64,
    pub zeroed: u64,
    pub write_seconds: f64,
    pub read_back_bytes: u64,
    pub read_back_seconds: f64,
    /// The sha256 of the image's bytes read back from the target.
    pub read_back_sha256: Option<String>,
    /// The backup GPT was moved to the end of a larger target.
    pub gpt_moved: bool,
    /// State partitions of the target kept (GPT names).
    pub kept: Vec<String>,
    /// Why the GPT was left where the image has it on a larger target.
    pub note: Option<String>,
    /// Per-machine values added on the ESP after the image was proven (ESP paths).
    pub added: Vec<String>,
    pub timings: Timings,
}

/// Flashes `req.release` onto `req.target`.
pub fn flash(
    host: &Host,
    project: &Project,
    out_root: &Path,
    req: &Request,
    ask: &dyn Ask,
    rep: &dyn Reporter,
) -> Result<Flashed> {
    let mut t = Timings::default();
    let latest = if req.unverified {
        Latest::Any
    } else {
        Latest::Verified
    };
    let resolved = release::resolve(project, out_root, &req.release, latest)?;
    let sha = t.stage(rep, "check", |_| {
        let sha = resolved.check()?;
        Ok((
            sha.clone(),
            format!("{}: sha256 {}", resolved.label, &sha[..12]),
        ))
    })?;
    let image = File::open(&resolved.image)
        .with_context(|| format!("opening {}", resolved.image.display()))?;
    let src = source(&image, &resolved.image)?;
    let states = state_labels(&resolved.image);
    if let Some(remote) = remote::Target::parse(&req.target)? {
        return remote::flash(
            host, &remote, req, &resolved, &sha, &image, &src, &states, ask, rep, t,
        );
    }
    let target = PathBuf::from(&req.target);
    let kind = local_kind(&target, &resolved.image)?;
    let (plan, shown) = match &kind {
        LocalKind::Disk => {
            let facts = probe_here(host, &target)?;
            let image_dev = image_device(&resolved.image);
            let disk = guard::check(&facts, &req.target, src.len, image_dev.as_deref())
                .map_err(|why| refused(&req.target, &why))?;
            confirm_disk(&disk, req, ask)?;
            let size = facts.size.unwrap_or(disk.size);
            let p = plan::plan(&src, size, Some(&facts.head), &states, 0)?;
            (p, disk.describe())
        }
        LocalKind::File { len } => {
            let size = len.unwrap_or(src.len);
            if size < src.len {
                return Err(refused(
                    &req.target,
                    &[format!(
                        "it is smaller than the image ({} < {})",
                        Bytes(size),
                        Bytes(src.len)
                    )],
                ));
            }
            let head = match len {
                Some(_) => Some(read_head(&target)?),
                None => None,
            };
            let shown = match len {
                Some(l) => format!(
                    "target: {} (an existing file of {})\n",
                    target.display(),
                    Bytes(*l)
                ),
                None => format!(
                    "target: {} (a new file of {})\n",
                    target.display(),
                    Bytes(src.len)
                ),
            };
            if len.is_some_and(|l| l > 0) && !req.dry_run {
                confirm_file(&shown, size, req, ask)?;
            }
            (plan::plan(&src, size, head.as_deref(), &states, 0)?, shown)
        }
    };
    let mut flashed = summary(&resolved, &sha, &req.target, &plan);
    if req.dry_run {
        flashed.dry_run = true;
        crate::say_part!("{shown}");
        flashed.timings = t;
        return Ok(flashed);
    }
    let (write, read) = write_local(&plan, &image, &target, &kind, host, &sha, rep, &mut t)?;
    flashed.write_seconds = write;
    flashed.read_back_seconds = read.1;
    flashed.read_back_bytes = read.0.bytes;
    flashed.read_back_sha256 = Some(read.0.sha256);
    if !req.credentials.is_empty() {
        flashed.added = t.stage(rep, "machine", |_| {
            let added = values_local(&image, &target, &kind, plan.target_len, &req.credentials)?;
            let summary = format!("added {}", added.join(", "));
            Ok((added, summary))
        })?;
    }
    flashed.timings = t;
    Ok(flashed)
}

/// Adds the per-machine values to a local target's ESP and reads the ESP back.
fn values_local(
    image: &File,
    target: &Path,
    kind: &LocalKind,
    target_len: u64,
    creds: &[crate::machine::Credential],
) -> Result<Vec<String>> {
    let patch = values::patch(image, target_len, creds)?;
    let mut sink = match kind {
        LocalKind::Disk => local::Local::open_disk(target)?,
        LocalKind::File { .. } => local::Local::open_file(target, target_len)?.0,
    };
    local::execute(&patch.plan, image, &mut sink, &mut |_| {})?;
    drop(sink);
    let got = local::sha256_of(target, patch.esp.clone())?;
    if got != patch.esp_sha256 {
        return Err(UserError::new(
            Kind::Corrupt,
            format!(
                "the ESP with the machine's values read back as sha256 {got}, {} was written",
                patch.esp_sha256
            ),
        )
        .into());
    }
    Ok(patch.added)
}

/// Writes, syncs and reads back a local target; the read-back must be the release.
#[allow(clippy::too_many_arguments)]
fn write_local(
    plan: &Plan,
    image: &File,
    target: &Path,
    kind: &LocalKind,
    host: &Host,
    sha: &str,
    rep: &dyn Reporter,
    t: &mut Timings,
) -> Result<(f64, (local::ReadBack, f64))> {
    let (copy, zero) = plan.totals();
    let t0 = Instant::now();
    t.stage(rep, "write", |s| {
        let mut sink = match kind {
            LocalKind::Disk => local::Local::open_disk(target)?,
            LocalKind::File { .. } => local::Local::open_file(target, plan.image_len)?.0,
        };
        let mut meter = Meter::new(s, copy + zero);
        local::execute(plan, image, &mut sink, &mut |d| meter.at(d))?;
        drop(sink);
        Ok((
            (),
            format!("{} written, {} zeroed", Bytes(copy), Bytes(zero)),
        ))
    })?;
    let write = t0.elapsed().as_secs_f64();
    if matches!(kind, LocalKind::Disk) {
        // The kernel learns the new partitions (best effort: a disk in use says why).
        if let Err(e) = host.run(
            std::process::Command::new("blockdev")
                .arg("--rereadpt")
                .arg(target),
        ) {
            crate::say!("warning: the kernel did not re-read the partition table: {e:#}");
        }
    }
    let t1 = Instant::now();
    let rb = t.stage(rep, "read back", |s| {
        let mut meter = Meter::new(s, plan.image_len);
        let rb = local::read_back(plan, target, &mut |d| meter.at(d))?;
        check_read_back(&rb.sha256, sha)?;
        let how = if rb.direct {
            "O_DIRECT"
        } else {
            "page cache dropped"
        };
        Ok((
            rb.clone(),
            format!(
                "{} read back ({how}): sha256 {} = the release",
                Bytes(rb.bytes),
                &rb.sha256[..12]
            ),
        ))
    })?;
    Ok((write, (rb, t1.elapsed().as_secs_f64())))
}

/// The read-back must be the release's sha256.
fn check_read_back(got: &str, want: &str) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(UserError::new(
        Kind::Corrupt,
        format!(
            "the target read back as sha256 {got}, the release is {want}: the disk does not \
             hold the image (a failing disk, cable or USB adapter?)"
        ),
    )
    .hint("flash again; if it fails again, the target is faulty")
    .into())
}

fn summary(resolved: &Resolved, sha: &str, target: &str, plan: &Plan) -> Flashed {
    let (written, zeroed) = plan.totals();
    Flashed {
        release: resolved.label.clone(),
        image_sha256: sha.to_string(),
        target: target.to_string(),
        dry_run: false,
        image_bytes: plan.image_len,
        target_bytes: plan.target_len,
        written,
        zeroed,
        write_seconds: 0.0,
        read_back_bytes: 0,
        read_back_seconds: 0.0,
        read_back_sha256: None,
        gpt_moved: plan.moved.is_some() && plan.target_len != plan.image_len,
        kept: plan
            .moved
            .iter()
            .flat_map(|m| m.kept.iter().map(|e| e.name.clone()))
            .collect(),
        note: plan.not_moved.clone(),
        added: Vec::new(),
        timings: Timings::default(),
    }
}

/// What a local target is.
enum LocalKind {
    Disk,
    /// A file; its size when it exists.
    File {
        len: Option<u64>,
    },
}

fn local_kind(target: &Path, image: &Path) -> Result<LocalKind> {
    let md = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if target.starts_with("/dev") {
                return Err(UserError::invalid(format!("{} does not exist", target.display()))
                    .hint("`lsblk -o NAME,SIZE,MODEL,SERIAL` lists the disks; /dev/disk/by-id/ names them for good")
                    .into());
            }
            return Ok(LocalKind::File { len: None });
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    if md.file_type().is_block_device() {
        return Ok(LocalKind::Disk);
    }
    if !md.is_file() {
        return Err(refused(
            &target.display().to_string(),
            &["it is neither a block device nor a regular file".into()],
        ));
    }
    let img = std::fs::metadata(image)?;
    if (md.dev(), md.ino()) == (img.dev(), img.ino()) {
        return Err(refused(
            &target.display().to_string(),
            &["it is the image file itself".into()],
        ));
    }
    Ok(LocalKind::File {
        len: Some(md.len()),
    })
}

/// `major:minor` of the filesystem holding `image`, as /sys/block writes it.
fn image_device(image: &Path) -> Option<String> {
    let dev = std::fs::metadata(image).ok()?.dev();
    Some(format!(
        "{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    ))
}

fn probe_here(host: &Host, target: &Path) -> Result<facts::Facts> {
    let out = host.run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(facts::PROBE)
            .arg("sh")
            .arg(target),
    )?;
    facts::Facts::parse(&String::from_utf8_lossy(&out.stdout))
}

fn read_head(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; PRIMARY_BYTES];
    let n = f.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// The image's size, GPT, ends and data ranges; `path` names it in errors.
pub fn source(image: &File, path: &Path) -> Result<Source> {
    use std::os::unix::fs::FileExt;
    crate::inspect::integrity::require_sound(image, path)?;
    let len = image.metadata()?.len();
    let shown = path.display();
    let mut primary = vec![0u8; PRIMARY_BYTES];
    image
        .read_exact_at(&mut primary, 0)
        .with_context(|| format!("reading {shown}"))?;
    let gpt = Gpt::parse(&primary).map_err(|e| {
        UserError::new(Kind::Corrupt, format!("{shown} has no valid GPT: {e}"))
            .hint("flash writes raw GPT disk images (the .raw of a build)")
    })?;
    let mut backup = vec![0u8; BACKUP_BYTES];
    image.read_exact_at(&mut backup, len - BACKUP_BYTES as u64)?;
    let data_end = gpt.data_end();
    let gap_start = data_end.min(len - BACKUP_BYTES as u64);
    let mut gap = vec![0u8; usize::try_from(len - BACKUP_BYTES as u64 - gap_start)?];
    image.read_exact_at(&mut gap, gap_start)?;
    Ok(Source {
        len,
        gap_is_zero: gap.iter().all(|b| *b == 0),
        primary,
        backup,
        gpt,
        data: crate::sparse::data_ranges(image, len)?,
    })
}

/// The GPT names of the image's state partitions on the OS disk, from
/// `/usr/lib/imagebuild/state.json` in its root filesystem; none when it has none.
pub fn state_labels(image: &Path) -> Vec<String> {
    crate::verify::state::image_states(image)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.device.is_none())
        .map(|s| s.label)
        .collect()
}

/// The error for a target the guard rails refuse: every reason.
pub fn refused(target: &str, why: &[String]) -> anyhow::Error {
    let mut msg = format!("refusing to flash {target}:");
    for w in why {
        msg.push_str("\n  - ");
        msg.push_str(w);
    }
    msg.push_str("\nnothing was written");
    UserError::invalid(msg)
        .hint("check the target: `lsblk -o NAME,SIZE,MODEL,SERIAL,MOUNTPOINTS`")
        .into()
}

/// `--yes` only with `--expect-serial` or a by-id path; else the serial (or, without one,
/// the size) typed at the terminal.
pub fn confirm_disk(disk: &guard::Disk, req: &Request, ask: &dyn Ask) -> Result<()> {
    if let Some(want) = &req.expect_serial
        && *want != disk.serial
    {
        return Err(refused(
            &req.target,
            &[format!(
                "its serial is {:?}, not {want:?} (--expect-serial)",
                disk.serial
            )],
        ));
    }
    let by_id = req.target.starts_with("/dev/disk/by-id/");
    if req.yes {
        if by_id || req.expect_serial.is_some() {
            return Ok(());
        }
        return Err(UserError::invalid(format!(
            "--yes needs the disk named for good: {} could be another disk tomorrow",
            req.target
        ))
        .hint(format!(
            "add --expect-serial {} or name it by one of its /dev/disk/by-id links{}",
            if disk.serial.is_empty() {
                "SERIAL"
            } else {
                &disk.serial
            },
            disk.by_id
                .first()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        ))
        .into());
    }
    let word = if disk.serial.is_empty() {
        Bytes(disk.size).to_string()
    } else {
        disk.serial.clone()
    };
    let what = if disk.serial.is_empty() {
        "its size"
    } else {
        "its serial"
    };
    let prompt = format!(
        "{}Everything on {} will be replaced. Type {what} ({word}) to go on: ",
        disk.describe(),
        disk.dev
    );
    typed(ask, &prompt, &word, &req.target)
}

fn confirm_file(shown: &str, size: u64, req: &Request, ask: &dyn Ask) -> Result<()> {
    if req.yes {
        return Ok(());
    }
    let word = Bytes(size).to_string();
    let prompt = format!("{shown}It will be overwritten. Type its size ({word}) to go on: ");
    typed(ask, &prompt, &word, &req.target)
}

fn typed(ask: &dyn Ask, prompt: &str, word: &str, target: &str) -> Result<()> {
    match ask.ask(prompt)? {
        Some(answer) if answer.trim() == word => Ok(()),
        Some(answer) => Err(UserError::invalid(format!(
            "{:?} is not {word:?}: nothing was written to {target}",
            answer.trim()
        ))
        .into()),
        None => Err(UserError::invalid(format!(
            "nobody to confirm overwriting {target} (no terminal); nothing was written"
        ))
        .hint("pass --yes together with --expect-serial SERIAL or a /dev/disk/by-id/ path")
        .into()),
    }
}

/// Progress with throughput, at most five times a second.
struct Meter<'a> {
    stage: &'a dyn Stage,
    total: u64,
    start: Instant,
    last: Instant,
}

impl<'a> Meter<'a> {
    fn new(stage: &'a dyn Stage, total: u64) -> Self {
        let now = Instant::now();
        Meter {
            stage,
            total,
            start: now,
            last: now,
        }
    }

    fn at(&mut self, done: u64) {
        if self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        // OK to cast: a rate for display.
        let rate = (done as f64 / secs) as u64;
        self.stage.message(&format!(
            "{} of {}, {}/s",
            Bytes(done),
            Bytes(self.total),
            Bytes(rate)
        ));
    }
}
