//! Command line: clap definitions, progress display and exit codes. No build logic.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::build::{self, BuildOptions};
use crate::cache::Cache;
use crate::host::Host;
use crate::profile::{Project, Recipe};
use crate::progress::{Reporter, Silent, Stage};
use crate::size::Bytes;

/// Build reproducible, bootable disk images from profiles.
#[derive(Parser, Debug)]
#[command(name = "imagebuild", version, max_term_width = 80)]
pub struct Cli {
    /// Project directory (holds profiles/, overlays/, qemu/).
    #[arg(short = 'C', long = "directory", global = true, default_value = ".")]
    pub directory: PathBuf,
    /// Where images are written (default: out/ in the project).
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Cache directory (default: $IMAGEBUILD_CACHE or ~/.cache/imagebuild).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print every command run and its output.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the profiles in profiles/.
    List,
    /// Print a profile fully merged (extends applied), as TOML.
    Show {
        /// Profile name (profiles/NAME.toml).
        profile: String,
    },
    /// Build a profile into out/PROFILE/VERSION/.
    Build {
        /// Profile name (profiles/NAME.toml).
        profile: String,
        /// Boot the image in QEMU and require a clean health report before publishing.
        #[arg(long)]
        verify: bool,
        /// Print what was built (paths, sha256, stage timings, sizes) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Fail, publishing nothing, unless the image has this sha256 (a rebuild check).
        #[arg(long, value_name = "SHA256")]
        expect_sha256: Option<String>,
        /// Resolve packages against the mirror again and rewrite profiles/PROFILE.lock.
        #[arg(long)]
        relock: bool,
        /// Publish over a version that already names other bytes (the old record
        /// stays in releases.json's history). Bumping `version` is the better fix.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        boot: BootArgs,
    },
    /// Pin a profile's packages: write profiles/PROFILE.lock.
    ///
    /// Records every package with its version and .deb sha256, the mirror, the epoch,
    /// the stub and tarball digests. Builds then install exactly that or fail.
    Lock {
        /// Profile name (profiles/NAME.toml).
        profile: String,
        /// Bootstrap afresh instead of locking the cached base (takes the mirror's
        /// current versions).
        #[arg(long)]
        refresh: bool,
    },
    /// Boot an image in QEMU and check its health report.
    ///
    /// The image is not changed (a snapshot) unless --writable is given (never for a
    /// release). A release that passes gets the boot test added to its record.
    Verify {
        /// A release (PROFILE: its latest, PROFILE@VERSION, PROFILE@sha256:PREFIX) or
        /// the path of a raw image.
        image: String,
        #[command(flatten)]
        boot: BootArgs,
        /// Keep the console log (IMAGE.console.log) when verify passes too.
        #[arg(long)]
        keep_log: bool,
        /// Attach FILE as one more disk, writable (repeatable); the guest sees the
        /// serial imagebuild-disk1, imagebuild-disk2, ...
        #[arg(long = "disk", value_name = "FILE")]
        disks: Vec<PathBuf>,
        /// Let the guest write to the image file (e.g. a copy, booted twice).
        #[arg(long)]
        writable: bool,
    },
    /// Boot a profile's latest image (or an image file) with the console attached.
    ///
    /// The image is not changed (a snapshot) unless --writable is given.
    Run {
        /// A release (PROFILE: its latest, PROFILE@VERSION, PROFILE@sha256:PREFIX) or
        /// the path of a raw image.
        target: String,
        #[command(flatten)]
        boot: BootArgs,
        /// Let the guest write to the image file (a disk that keeps its state).
        #[arg(long)]
        writable: bool,
        /// Attach FILE as one more disk, writable (repeatable); the guest sees the
        /// serial imagebuild-disk1, imagebuild-disk2, ...
        #[arg(long = "disk", value_name = "FILE")]
        disks: Vec<PathBuf>,
        /// Forward 127.0.0.1:PORT to the guest's ssh port (QEMU user networking).
        #[arg(long, value_name = "PORT")]
        ssh_port: Option<u16>,
    },
    /// Show what an image holds: partitions, ESP, UKIs, kernel, packages, files.
    ///
    /// Reads the image file; needs no root and mounts nothing.
    Inspect {
        /// A release (PROFILE: its latest, PROFILE@VERSION, PROFILE@sha256:PREFIX) or
        /// the path of a raw image.
        image: String,
        /// Print everything (every file with its sha256 too) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// List every file of the root filesystem.
        #[arg(long)]
        files: bool,
    },
    /// Compare two images: packages, files, partitions, boot.
    ///
    /// Prints nothing and exits 0 when they hold the same things, lists the changes and
    /// exits 1 when they differ, exits 2 on errors.
    Diff {
        /// The older image: a release name or a path.
        old: String,
        /// The newer image: a release name or a path.
        new: String,
        /// Print the changes as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the published versions of a profile, newest first.
    ///
    /// Version, when it was published, whether and how fast it was boot-tested, the
    /// image sha256; `latest` and `latest verified` are marked. A version names one
    /// image for good.
    Releases {
        /// Profile name.
        profile: String,
        /// Print the listing (with every record and boot test) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Write a release to a whole disk, a file, or a disk in a rescue system over ssh.
    ///
    /// The image's sha256 is checked against its release first; the target is refused
    /// when anything on it is mounted, swap or held, when it is a partition, read-only or
    /// too small; a disk is confirmed by typing its serial. The first MiB (the partition
    /// table) is written last and everything is read back and checked. Partitions of the
    /// target that are the image's [[state]] are kept.
    ///
    /// Examples:
    ///   imagebuild flash prod-amd64 /dev/disk/by-id/nvme-Samsung_SSD_980_S64...
    ///   imagebuild flash prod-amd64@2026.12.1 /dev/sdb
    ///   imagebuild flash prod-arm64 ssh://root@203.0.113.7/dev/sda
    ///   imagebuild flash ./disk.raw vm.img
    Flash {
        /// PROFILE (its latest verified release), PROFILE@VERSION,
        /// PROFILE@sha256:PREFIX, or the path of an image.
        release: String,
        /// A whole disk (/dev/sdX, /dev/disk/by-id/...), a file, or
        /// ssh://USER@HOST[:PORT]/DEVICE.
        target: String,
        /// Let a bare PROFILE name its latest release even if it was never boot-tested.
        #[arg(long)]
        unverified: bool,
        /// Do not ask; for a disk only with --expect-serial or a /dev/disk/by-id path.
        #[arg(short, long)]
        yes: bool,
        /// Refuse unless the disk has this serial.
        #[arg(long, value_name = "SERIAL")]
        expect_serial: Option<String>,
        /// Check the release and the target and say what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// An option for ssh (as `ssh -o OPTION`), repeatable.
        #[arg(long = "ssh-option", value_name = "OPTION")]
        ssh_options: Vec<String>,
        /// This machine's hostname (the system.hostname credential), set on the
        /// target's ESP after the image is written and proven.
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        /// A systemd credential for this machine: NAME=VALUE or NAME=@FILE
        /// (repeatable); services read it with ImportCredential=NAME. Not secret:
        /// anyone who can read the ESP can read it.
        #[arg(long = "credential", value_name = "NAME=VALUE")]
        credentials: Vec<String>,
        /// Print what was done as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Push a release to an OCI registry as an artifact (its image in zstd layers, its
    /// manifest, checksums, boot log and record), tagged with its version.
    ///
    /// A rerun after a broken connection skips the blobs the registry has and goes on
    /// with an unfinished one from the registry's offset. Recorded in releases.json.
    Push {
        /// A release: PROFILE (its latest verified), PROFILE@VERSION, PROFILE@sha256:PREFIX.
        release: String,
        /// oci://HOST/REPO or oci://HOST/REPO:TAG (default tag: the version).
        to: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// The largest layer of the image (the zstd image is split into such layers).
        #[arg(long, default_value = "256M", value_parser = parse_bytes)]
        layer_size: Bytes,
        /// The largest request of a blob upload.
        #[arg(long, default_value = "16M", value_parser = parse_bytes, hide = true)]
        chunk_size: Bytes,
        /// Push a release that has not passed a boot test.
        #[arg(long)]
        unverified: bool,
        /// Also move the tag `latest-verified` to this release (it must have passed a
        /// boot test).
        #[arg(long)]
        latest_verified: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pull a release from an OCI registry into out/, checking every blob and the image's
    /// sha256; then flash, verify, inspect and diff take it by name.
    Pull {
        /// oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:DIGEST.
        from: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Upload a release's raw image to S3-compatible object storage (AWS, Hetzner, DO
    /// Spaces, MinIO, Garage): multipart, resumable, skipped when the object already holds
    /// the release. Credentials and region from the AWS environment and files.
    Upload {
        /// A release: PROFILE (its latest verified), PROFILE@VERSION, PROFILE@sha256:PREFIX.
        release: String,
        /// s3://BUCKET/ or s3://BUCKET/PREFIX/ (the object is PREFIX/PROFILE-VERSION.raw).
        to: String,
        /// The service's URL for a store that is not AWS (default: $AWS_ENDPOINT_URL_S3,
        /// $AWS_ENDPOINT_URL, else AWS in the region).
        #[arg(long)]
        endpoint: Option<String>,
        /// Default: $AWS_REGION, $AWS_DEFAULT_REGION, ~/.aws/config, us-east-1.
        #[arg(long)]
        region: Option<String>,
        /// The size of each part of the multipart upload (one is in memory at a time).
        #[arg(long, default_value = "64M", value_parser = parse_bytes)]
        part_size: Bytes,
        /// Upload a release that has not passed a boot test.
        #[arg(long)]
        unverified: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check that this host has what imagebuild needs, and say how to fix what is missing.
    Doctor,
    /// Remove what killed runs left behind: unfinished build directories in out/ and
    /// temporary files in out/ and the cache, of processes that no longer run. Builds do
    /// this too, before they start. Published releases and the cache's entries stay.
    Clean,
}

/// How to reach a registry.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Talk plain http to this registry (loopback registries always are).
    #[arg(long)]
    insecure_registry: bool,
}

fn parse_bytes(s: &str) -> Result<Bytes, String> {
    let b = Bytes::parse(s)?;
    if b.0 < 4096 {
        return Err("at least 4K".into());
    }
    Ok(b)
}

/// How to boot an image in QEMU.
#[derive(clap::Args, Debug, Clone)]
pub struct BootArgs {
    /// Seconds to wait for the health report (default: the machine's, qemu/ARCH.toml).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Accelerator: auto (KVM if a short probe works, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Guest memory in MiB (default: the machine's).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
}

impl BootArgs {
    fn request(&self, echo: bool, cache: &Cache) -> crate::verify::image::Request {
        use crate::verify::Accel;
        crate::verify::image::Request {
            accel: match self.accel.as_str() {
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                _ => Accel::Auto,
            },
            timeout: self.timeout.map(Duration::from_secs),
            memory_mib: self.memory,
            log: None,
            echo,
            cache: Some(cache.root().to_path_buf()),
            mirror: None,
            disks: Vec::new(),
            writable: false,
        }
    }
}

/// `imagebuild diff`: the images differ.
const DIFFERENT: u8 = 1;
/// `imagebuild diff`: it could not compare them (1 already means "different").
const DIFF_ERROR: u8 = 2;

/// Runs the command line; prints the error once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            print_error(&e);
            if let Some(note) = disk_full(&cli, &e) {
                crate::say!("hint: {note}");
            }
            if matches!(cli.command, Command::Diff { .. }) {
                ExitCode::from(DIFF_ERROR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// For an error that is a full filesystem: how much room the output and the cache have,
/// so the full one is named (they are often on different filesystems).
fn disk_full(cli: &Cli, e: &anyhow::Error) -> Option<String> {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            || c.to_string().contains("No space left on device")
    });
    if !full {
        return None;
    }
    let project = Project::new(&cli.directory);
    let free = |what: &str, dir: &std::path::Path| -> String {
        // The directory may not exist yet: its nearest existing parent is where it goes.
        let mut d = dir;
        while !d.exists() {
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        match rustix::fs::statvfs(d) {
            Ok(st) => format!(
                "{what} {} has {} free",
                dir.display(),
                Bytes(st.f_bavail * st.f_frsize)
            ),
            Err(e) => format!("{what} {}: {e}", dir.display()),
        }
    };
    Some(format!(
        "a filesystem is full: {}; {} (move one with --out or --cache-dir, or `imagebuild clean`)",
        free("the output", &out_root(cli, &project)),
        free("the cache", cache(cli).root())
    ))
}

fn print_error(e: &anyhow::Error) {
    let mut chain = e.chain();
    if let Some(top) = chain.next() {
        crate::say!("error: {top}");
    }
    for cause in chain {
        crate::say!("caused by: {cause}");
    }
    for h in crate::error::hints(e) {
        crate::say!("hint: {h}");
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    crate::host::pin_umask();
    let project = Project::new(&cli.directory);
    match &cli.command {
        Command::List => {
            let mut out = String::new();
            for name in project.list()? {
                out.push_str(&name);
                out.push('\n');
            }
            print_stdout(&out)
        }
        Command::Show { profile } => print_stdout(&Recipe::load(&project, profile)?.show()),
        Command::Build {
            profile,
            verify,
            json,
            expect_sha256,
            relock,
            replace,
            boot,
        } => cmd_build(
            cli,
            &project,
            profile,
            BuildChecks {
                verify: verify.then(|| boot.request(false, &cache(cli))),
                expect_sha256: expect_sha256.clone(),
                relock: *relock,
                replace: *replace,
            },
            *json,
        ),
        Command::Lock { profile, refresh } => cmd_lock(cli, &project, profile, *refresh),
        Command::Verify {
            image,
            disks,
            boot,
            keep_log,
            writable,
        } => {
            let mut req = boot.request(cli.verbose, &cache(cli));
            req.disks = disks.clone();
            req.writable = *writable;
            cmd_verify(cli, &project, image, &req, *keep_log)
        }
        Command::Run {
            target,
            boot,
            writable,
            disks,
            ssh_port,
        } => {
            let attach = Attach {
                writable: *writable,
                disks: disks.clone(),
                ssh_port: *ssh_port,
            };
            cmd_run(cli, &project, target, boot, attach)
        }
        Command::Inspect { image, json, files } => {
            let image = look_at(cli, &project, image)?;
            let report = crate::inspect::report::inspect(&image.image, *json || *files)?;
            if *json {
                print_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))
            } else {
                print_stdout(&report.human(*files))
            }
        }
        Command::Diff { old, new, json } => {
            let (old, new) = (look_at(cli, &project, old)?, look_at(cli, &project, new)?);
            let diff = crate::inspect::diff::diff(&old.image, &new.image)?;
            if *json {
                print_stdout(&(serde_json::to_string_pretty(&diff)? + "\n"))?;
            } else {
                print_stdout(&diff.human())?;
            }
            Ok(if diff.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(DIFFERENT)
            })
        }
        Command::Releases { profile, json } => {
            let now = crate::release::record::now();
            let listing =
                crate::release::list::listing(&project, &out_root(cli, &project), profile, now)?;
            if *json {
                print_stdout(&(serde_json::to_string_pretty(&listing)? + "\n"))
            } else {
                print_stdout(&listing.human())
            }
        }
        Command::Flash {
            release,
            target,
            unverified,
            yes,
            expect_serial,
            dry_run,
            ssh_options,
            hostname,
            credentials,
            json,
        } => {
            let mut creds = Vec::new();
            if let Some(h) = hostname {
                creds.push(crate::machine::hostname_credential(h)?);
            }
            for c in credentials {
                creds.push(crate::machine::Credential::parse(c)?);
            }
            let req = crate::flash::Request {
                credentials: creds,
                release: release.clone(),
                target: target.clone(),
                unverified: *unverified,
                yes: *yes,
                expect_serial: expect_serial.clone(),
                dry_run: *dry_run,
                ssh_options: ssh_options.clone(),
            };
            cmd_flash(cli, &project, &req, *json)
        }
        Command::Push {
            release,
            to,
            registry,
            layer_size,
            chunk_size,
            unverified,
            latest_verified,
            json,
        } => {
            let mut opts = oci_options(cli, registry, *layer_size, *chunk_size);
            opts.latest_verified = *latest_verified;
            cmd_push(cli, &project, release, to, &opts, *unverified, *json)
        }
        Command::Pull {
            from,
            registry,
            json,
        } => {
            let opts = oci_options(cli, registry, Bytes(256 << 20), Bytes(16 << 20));
            cmd_pull(cli, &project, from, &opts, *json)
        }
        Command::Upload {
            release,
            to,
            endpoint,
            region,
            part_size,
            unverified,
            json,
        } => {
            let opts = crate::publish::s3::Options {
                endpoint: endpoint.clone(),
                region: region.clone(),
                part_size: part_size.0,
                state_dir: cache(cli).root().join("s3-uploads"),
            };
            cmd_upload(cli, &project, release, to, &opts, *unverified, *json)
        }
        Command::Doctor => Ok(crate::doctor::run()),
        Command::Clean => {
            let cache = cache(cli);
            let removed = crate::leftovers::sweep(&[
                (&out_root(cli, &project), 1),
                (cache.root(), crate::leftovers::CACHE_DEPTH),
            ])?;
            let mut text = String::new();
            for r in &removed {
                text.push_str(&format!(
                    "removed {} ({})\n",
                    r.path.display(),
                    Bytes(r.bytes)
                ));
            }
            let total: u64 = removed.iter().map(|r| r.bytes).sum();
            text.push_str(&format!(
                "{} leftovers of runs that no longer run, {} freed\n",
                removed.len(),
                Bytes(total)
            ));
            print_stdout(&text)
        }
    }
}

/// Writes data to stdout; a closed pipe is not an error.
fn oci_options(
    cli: &Cli,
    registry: &RegistryArgs,
    layer_size: Bytes,
    chunk_size: Bytes,
) -> crate::publish::oci::Options {
    crate::publish::oci::Options {
        insecure: registry.insecure_registry,
        layer_size: layer_size.0,
        chunk_size: chunk_size.0,
        state_dir: cache(cli).root().join("oci-uploads"),
        latest_verified: false,
    }
}

fn cmd_push(
    cli: &Cli,
    project: &Project,
    release: &str,
    to: &str,
    opts: &crate::publish::oci::Options,
    unverified: bool,
    json: bool,
) -> Result<ExitCode> {
    let to = crate::publish::oci::Reference::parse(to)?;
    let out = out_root(cli, project);
    let files = release_to_send(cli, project, release, unverified)?;
    let quiet = cli.quiet;
    let say = |m: &str| {
        if !quiet {
            crate::say!("{m}");
        }
    };
    let p = crate::publish::oci::push(&files, cache(cli).root(), &to, opts, &say)?;
    let locked = crate::release::record::lock(&out, &files.profile)?;
    locked.add_remote(
        &files.record.version,
        &files.record.image_sha256,
        crate::publish::oci::pushed_remote(&p),
    )?;
    say(&format!(
        "pushed {}@{} as {}@{}: {} blobs, {} already there, {} sent",
        files.profile,
        files.record.version,
        p.reference,
        p.digest,
        p.blobs,
        p.skipped,
        Bytes(p.sent)
    ));
    if json {
        return print_stdout(&(serde_json::to_string_pretty(&p)? + "\n"));
    }
    print_stdout(&format!("{}  {}\n", p.digest, p.reference))
}

/// The release `name` for a transfer: verified unless `unverified`, its bytes checked.
fn release_to_send(
    cli: &Cli,
    project: &Project,
    name: &str,
    unverified: bool,
) -> Result<crate::publish::ReleaseFiles> {
    let latest = if unverified {
        crate::release::Latest::Any
    } else {
        crate::release::Latest::Verified
    };
    let target = crate::release::resolve(project, &out_root(cli, project), name, latest)?;
    let files = crate::publish::ReleaseFiles::of(&target)?;
    if !files.record.verified && !unverified {
        return Err(crate::error::UserError::invalid(format!(
            "{} has not passed a boot test",
            target.label
        ))
        .hint(format!(
            "verify it first (imagebuild verify {}), or send it anyway with --unverified",
            target.label
        ))
        .into());
    }
    target.check()?;
    Ok(files)
}

fn cmd_upload(
    cli: &Cli,
    project: &Project,
    release: &str,
    to: &str,
    opts: &crate::publish::s3::Options,
    unverified: bool,
    json: bool,
) -> Result<ExitCode> {
    if to.starts_with("aws://") {
        return Err(crate::error::UserError::new(
            crate::error::Kind::Unsupported,
            format!("upload to {to}: AMIs through the EBS direct APIs are not built yet"),
        )
        .hint("upload the raw image to S3 (s3://BUCKET/) and import it, or use the VMDK")
        .into());
    }
    let to = crate::publish::s3::Target::parse(to)?;
    let files = release_to_send(cli, project, release, unverified)?;
    let quiet = cli.quiet;
    let say = |m: &str| {
        if !quiet {
            crate::say!("{m}");
        }
    };
    let u = crate::publish::s3::upload(&files, &to, opts, &say)?;
    let locked = crate::release::record::lock(&out_root(cli, project), &files.profile)?;
    locked.add_remote(
        &files.record.version,
        &files.record.image_sha256,
        crate::publish::s3::uploaded_remote(&u),
    )?;
    say(&if u.already {
        format!("{} already holds this release: nothing sent", u.location)
    } else {
        format!(
            "uploaded {}: {} parts, {} already there, {} sent, ETag {}",
            u.location,
            u.parts,
            u.parts_skipped,
            Bytes(u.sent),
            u.etag
        )
    });
    if json {
        return print_stdout(&(serde_json::to_string_pretty(&u)? + "\n"));
    }
    print_stdout(&format!("{}  {}\n", u.etag, u.location))
}

fn cmd_pull(
    cli: &Cli,
    project: &Project,
    from: &str,
    opts: &crate::publish::oci::Options,
    json: bool,
) -> Result<ExitCode> {
    let from = crate::publish::oci::Reference::parse(from)?;
    let quiet = cli.quiet;
    let say = |m: &str| {
        if !quiet {
            crate::say!("{m}");
        }
    };
    let p = crate::publish::oci::pull(&from, &out_root(cli, project), opts, &say)?;
    say(&format!(
        "{} {}@{} (image sha256 {}) from {from}",
        if p.already { "already had" } else { "pulled" },
        p.profile,
        p.version,
        p.image_sha256
    ));
    if json {
        return print_stdout(&(serde_json::to_string_pretty(&p)? + "\n"));
    }
    print_stdout(&format!(
        "{}  {}\n",
        p.image_sha256,
        p.dir
            .join(format!("{}-{}.raw", p.profile, p.version))
            .display()
    ))
}

fn print_stdout(s: &str) -> Result<ExitCode> {
    match std::io::stdout().lock().write_all(s.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => r.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

fn out_root(cli: &Cli, project: &Project) -> PathBuf {
    cli.out.clone().unwrap_or_else(|| project.root.join("out"))
}

/// The image a looking command (verify, run, inspect, diff) names: a bare PROFILE is its
/// latest release, verified or not.
fn look_at(cli: &Cli, project: &Project, name: &str) -> Result<crate::release::Resolved> {
    crate::release::resolve(
        project,
        &out_root(cli, project),
        name,
        crate::release::Latest::Any,
    )
}

/// What a build must pass before it is published.
struct BuildChecks {
    verify: Option<crate::verify::image::Request>,
    expect_sha256: Option<String>,
    relock: bool,
    replace: bool,
}

fn cache(cli: &Cli) -> Cache {
    Cache::new(cli.cache_dir.clone().unwrap_or_else(Cache::default_root))
}

fn cmd_lock(cli: &Cli, project: &Project, profile: &str, refresh: bool) -> Result<ExitCode> {
    let host = Host::new(cli.verbose);
    let recipe = Recipe::load(project, profile)?;
    let reporter = reporter(cli);
    let mut t = crate::progress::Timings::default();
    let cache = cache(cli);
    let lock = t.stage(reporter.as_ref(), "lock", |s| {
        let (lock, base) = crate::base::make_lock(&host, &cache, &recipe, refresh, s)?;
        let how = if base.cached {
            "cached base"
        } else {
            "new bootstrap"
        };
        let n = lock.packages.len();
        Ok((lock, format!("{n} packages, from the {how}")))
    })?;
    let path = crate::lock::write(project, &lock)?;
    if !cli.quiet {
        crate::say!(
            "locked {profile}: {} packages, recipe {} -> {}",
            lock.packages.len(),
            &lock.recipe_id[..12],
            path.display()
        );
    }
    print_stdout(&format!("{}  {}\n", lock.digest(), path.display()))
}

fn cmd_build(
    cli: &Cli,
    project: &Project,
    profile: &str,
    checks: BuildChecks,
    json: bool,
) -> Result<ExitCode> {
    let host = Host::new(cli.verbose);
    let opts = BuildOptions {
        out_root: out_root(cli, project),
        cache: cache(cli),
        verify: checks.verify,
        expect_sha256: checks.expect_sha256,
        relock: checks.relock,
        replace: checks.replace,
    };
    let reporter = reporter(cli);
    let built = build::build(&host, project, profile, &opts, reporter.as_ref())?;
    if !cli.quiet {
        crate::say!(
            "built {} ({} disk, {} allocated, {} of files)",
            built.image.display(),
            Bytes(built.disk_size),
            Bytes(built.allocated),
            Bytes(built.content_bytes)
        );
        if let Some(p) = &built.lock_written {
            crate::say!("relocked: wrote {}", p.display());
        }
        if let Some(r) = &built.release {
            let verified = if r.verified {
                "verified"
            } else {
                "not verified"
            };
            let how = match built.published {
                "same" => "already published with these bytes; kept",
                "replaced" => "replaced (the old record is in the history)",
                _ => "published",
            };
            crate::say!("release {}@{}: {how}, {verified}", built.profile, r.version);
        }
    }
    if json {
        return print_stdout(&(serde_json::to_string_pretty(&built)? + "\n"));
    }
    print_stdout(&format!("{}  {}\n", built.sha256, built.image.display()))
}

fn cmd_verify(
    cli: &Cli,
    project: &Project,
    name: &str,
    req: &crate::verify::image::Request,
    keep_log: bool,
) -> Result<ExitCode> {
    let host = Host::new(cli.verbose);
    let target = look_at(cli, project, name)?;
    if req.writable && target.release.is_some() {
        return Err(crate::error::UserError::invalid(format!(
            "{} is a release: its image never changes, and --writable would let the guest write to it",
            target.label
        ))
        .hint("boot a copy with --writable (cp --sparse=always IMAGE copy.raw)")
        .into());
    }
    let tested = crate::verify::image::verify_image(&host, project, &target.image, req)?;
    if let Some(e) = crate::verify::image::failure(&tested.outcome, &tested.log) {
        return Err(e);
    }
    if !keep_log {
        let _ = std::fs::remove_file(&tested.log);
    }
    // A release that passed gets this boot test in its record; its bytes must still be
    // the recorded ones.
    let mut recorded = String::new();
    if let (Some((profile, rec)), Some(v)) = (
        &target.release,
        tested.verification(crate::release::record::now()),
    ) {
        target.check()?;
        let locked = crate::release::record::lock(&out_root(cli, project), profile)?;
        locked.add_verification(&rec.version, &rec.image_sha256, v)?;
        recorded = format!("; recorded as a boot test of {profile}@{}", rec.version);
    }
    if !cli.quiet {
        crate::say!("{}: {}{recorded}", target.label, tested.outcome);
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_flash(
    cli: &Cli,
    project: &Project,
    req: &crate::flash::Request,
    json: bool,
) -> Result<ExitCode> {
    let host = Host::new(cli.verbose);
    let reporter = reporter(cli);
    // A release in a registry is pulled (checked, recorded) first, then flashed by name.
    let mut req = req.clone();
    if req.release.starts_with("oci://") {
        let from = crate::publish::oci::Reference::parse(&req.release)?;
        let opts = oci_options(
            cli,
            &RegistryArgs {
                insecure_registry: false,
            },
            Bytes(256 << 20),
            Bytes(16 << 20),
        );
        let quiet = cli.quiet;
        let say = |m: &str| {
            if !quiet {
                crate::say!("{m}");
            }
        };
        let p = crate::publish::oci::pull(&from, &out_root(cli, project), &opts, &say)?;
        req.release = format!("{}@{}", p.profile, p.version);
    }
    let req = &req;
    let f = crate::flash::flash(
        &host,
        project,
        &out_root(cli, project),
        req,
        &Terminal,
        reporter.as_ref(),
    )?;
    if !cli.quiet {
        crate::say_part!("{}", flash_summary(&f));
    }
    if json {
        return print_stdout(&(serde_json::to_string_pretty(&f)? + "\n"));
    }
    if f.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    print_stdout(&format!("{}  {}\n", f.image_sha256, f.target))
}

/// What a flash did (or would do), for people.
fn flash_summary(f: &crate::flash::Flashed) -> String {
    let mut s = String::new();
    let layout = if f.gpt_moved {
        format!(
            "; the backup GPT goes to the end of the {} target",
            Bytes(f.target_bytes)
        )
    } else {
        String::new()
    };
    let kept = if f.kept.is_empty() {
        String::new()
    } else {
        format!("; kept: {}", f.kept.join(", "))
    };
    if f.dry_run {
        s.push_str(&format!(
            "dry run: would flash {} (sha256 {}) to {}: {} to write, {} to zero{layout}{kept}; nothing was written\n",
            f.release,
            &f.image_sha256[..12],
            f.target,
            Bytes(f.written),
            Bytes(f.zeroed)
        ));
    } else {
        let rate = f.written as f64 / f.write_seconds.max(0.001);
        s.push_str(&format!(
            "flashed {} to {} in {:.1} s: {} written ({}/s), {} zeroed{layout}{kept}\n",
            f.release,
            f.target,
            f.write_seconds,
            Bytes(f.written),
            Bytes(rate as u64),
            Bytes(f.zeroed)
        ));
        if let Some(sha) = &f.read_back_sha256 {
            s.push_str(&format!(
                "verified: {} read back in {:.1} s, sha256 {sha} = the release\n",
                Bytes(f.read_back_bytes),
                f.read_back_seconds
            ));
        }
    }
    if let Some(n) = &f.note {
        s.push_str(&format!(
            "note: the GPT stays where the image has it: {n}\n"
        ));
    }
    s
}

/// Questions go to the terminal, when there is one.
struct Terminal;

impl crate::flash::Ask for Terminal {
    fn ask(&self, prompt: &str) -> Result<Option<String>> {
        if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
            return Ok(None);
        }
        crate::say_part!("{prompt}");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(Some(line))
    }
}

/// What `run` attaches besides the image.
struct Attach {
    writable: bool,
    disks: Vec<PathBuf>,
    ssh_port: Option<u16>,
}

fn cmd_run(
    cli: &Cli,
    project: &Project,
    target: &str,
    boot: &BootArgs,
    attach: Attach,
) -> Result<ExitCode> {
    let host = Host::new(cli.verbose);
    let image = look_at(cli, project, target)?.image;
    let arch = crate::verify::image::image_arch(&image)?;
    let machine = crate::verify::image::machine_for(project, arch)?;
    let req = boot.request(true, &cache(cli));
    let mut opts = crate::verify::VerifyOptions::for_machine(
        &machine,
        crate::verify::image::default_log(&image),
    );
    opts.accel = req.accel;
    if let Some(m) = req.memory_mib {
        opts.memory_mib = m;
    }
    opts.writable = attach.writable;
    opts.disks = attach.disks;
    opts.ssh_port = attach.ssh_port;
    let release = crate::verify::image::debian_release(&image)?;
    opts.firmware = Some(crate::verify::image::firmware_for(
        &host,
        &machine,
        release.as_deref(),
        &req,
    )?);
    let rig = crate::verify::state::rig(&host, &image, &image, &machine, &mut opts)?;
    for note in rig.iter().flat_map(|r| &r.notes) {
        crate::say!("{note}");
    }
    let runner = |cmd: &mut std::process::Command| host.spawn(cmd);
    let status = crate::verify::run_interactive(&image, &machine, &opts, &runner)?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn reporter(cli: &Cli) -> Box<dyn Reporter> {
    if cli.quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() && !cli.verbose {
        Box::new(Bars)
    } else {
        Box::new(Lines)
    }
}

/// A spinner per stage, on a terminal.
struct Bars;

struct BarStage(ProgressBar);

impl Stage for BarStage {
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
}

impl Drop for BarStage {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Reporter for Bars {
    fn start(&self, name: &str) -> Box<dyn Stage + '_> {
        let pb = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {prefix:>8} [{elapsed}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.set_prefix(name.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        Box::new(BarStage(pb))
    }

    fn finish(&self, name: &str, took: Duration, summary: &str) {
        crate::say!("  {name:>8} {:>6.1}s  {summary}", took.as_secs_f64());
    }
}

/// Plain lines, when stderr is not a terminal.
struct Lines;

struct NoteStage;

impl Stage for NoteStage {
    fn message(&self, _: &str) {}
}

impl Reporter for Lines {
    fn start(&self, name: &str) -> Box<dyn Stage + '_> {
        crate::say!("==> {name}");
        Box::new(NoteStage)
    }

    fn finish(&self, name: &str, took: Duration, summary: &str) {
        crate::say!("  {name:>8} {:>6.1}s  {summary}", took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_help_fits_80_columns() {
        super::Cli::command().debug_assert();
        let mut cmd = super::Cli::command();
        let mut helps = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            helps.push(sub.render_long_help().to_string());
        }
        for h in helps {
            for line in h.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "help line over 80 columns: {line}"
                );
            }
        }
    }
}
