//! `flash` to files and, as root, to loop devices: the read-back is the release, an
//! interrupted flash leaves no partition table, a larger target gets its backup GPT at its
//! end, and the guard rails refuse what they must. Images come from the synthetic base
//! (no network); loop devices are detached in every case.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imagebuild::build::{BuildOptions, Built, build};
use imagebuild::cache::Cache;
use imagebuild::flash::{self, Ask, Request, gpt, local, plan};
use imagebuild::host::Host;
use imagebuild::profile::{Arch, Project};
use imagebuild::progress::Silent;
use imagebuild::testing::synthetic_base_tar;

/// A project with profile `t` (the synthetic base) and its build.
struct Fixture {
    dir: tempfile::TempDir,
    built: Built,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let tar = synthetic_base_tar(Arch::Amd64);
        std::fs::write(root.join("base.tar"), &tar).unwrap();
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        std::fs::write(
            root.join("profiles/t.toml"),
            format!(
                "[image]\nversion = \"1.0\"\narch = \"amd64\"\nesp-size = \"40M\"\n\n[base]\ntarball = \"base.tar\"\nsha256 = \"{}\"\n",
                imagebuild::cache::sha256(&tar)
            ),
        )
        .unwrap();
        let opts = BuildOptions {
            out_root: root.join("out"),
            cache: Cache::new(root.join("cache")),
            verify: None,
            expect_sha256: None,
            relock: false,
            replace: false,
        };
        let built = build(&Host::new(false), &Project::new(root), "t", &opts, &Silent).unwrap();
        Fixture { dir, built }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn flash(&self, release: &str, target: &Path, ask: &dyn Ask) -> anyhow::Result<flash::Flashed> {
        let req = Request {
            release: release.into(),
            target: target.to_str().unwrap().into(),
            unverified: true,
            ..Request::default()
        };
        flash::flash(
            &Host::new(false),
            &Project::new(self.dir.path()),
            &self.dir.path().join("out"),
            &req,
            ask,
            &Silent,
        )
    }
}

/// Answers every question with `0`, or nobody is there.
struct Answer(Option<&'static str>);

impl Ask for Answer {
    fn ask(&self, _: &str) -> anyhow::Result<Option<String>> {
        Ok(self.0.map(str::to_string))
    }
}

fn sha256_of(path: &Path, len: u64) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.truncate(len as usize);
    imagebuild::cache::sha256(&bytes)
}

fn error_text(e: &anyhow::Error) -> String {
    format!("{e:#}\nhints: {:?}", imagebuild::error::hints(e))
}

#[test]
fn a_new_file_gets_the_release_and_reads_back_as_it() {
    let fx = Fixture::new();
    let target = fx.path("vm.img");
    let f = fx.flash("t@1.0", &target, &Answer(None)).unwrap();
    assert_eq!(
        f.read_back_sha256.as_deref(),
        Some(fx.built.sha256.as_str())
    );
    assert_eq!(sha256_of(&target, f.image_bytes), fx.built.sha256);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), f.image_bytes);
    assert!(!f.gpt_moved);
}

#[test]
fn a_larger_target_gets_its_backup_gpt_at_its_end() {
    let fx = Fixture::new();
    let target = fx.path("big.img");
    File::create(&target).unwrap().set_len(1 << 30).unwrap();
    // Someone's old data, where the image has holes: it must be gone.
    File::options()
        .write(true)
        .open(&target)
        .unwrap()
        .write_all_at(&[0xAB; 4096], 20 << 20)
        .unwrap();
    let f = fx.flash("t", &target, &Answer(Some("1.00 GiB"))).unwrap();
    assert!(f.gpt_moved);
    assert_eq!(
        f.read_back_sha256.as_deref(),
        Some(fx.built.sha256.as_str())
    );
    let out = Command::new("sfdisk")
        .arg("--verify")
        .arg(&target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No errors detected"), "{text}");
    let table = imagebuild::disk::read_table(&File::open(&target).unwrap()).unwrap();
    let image = imagebuild::disk::read_table(&File::open(&fx.built.image).unwrap()).unwrap();
    assert_eq!(table, image, "the same partitions and disk GUID");
    let mut old = [0u8; 4096];
    File::open(&target)
        .unwrap()
        .read_exact_at(&mut old, 20 << 20)
        .unwrap();
    let mut img = [0u8; 4096];
    File::open(&fx.built.image)
        .unwrap()
        .read_exact_at(&mut img, 20 << 20)
        .unwrap();
    assert_eq!(
        old, img,
        "old data between the image's data ranges was replaced"
    );
}

/// Fails every write after `budget` bytes, as a pulled cable would.
struct Cut<S> {
    inner: S,
    budget: u64,
}

impl<S: local::Sink> local::Sink for Cut<S> {
    fn write_at(&mut self, buf: &[u8], at: u64) -> anyhow::Result<()> {
        if self.budget < buf.len() as u64 {
            anyhow::bail!("the cable was pulled");
        }
        self.budget -= buf.len() as u64;
        self.inner.write_at(buf, at)
    }
    fn zero(&mut self, r: std::ops::Range<u64>) -> anyhow::Result<()> {
        self.inner.zero(r)
    }
    fn sync(&mut self) -> anyhow::Result<()> {
        self.inner.sync()
    }
}

#[test]
fn an_interrupted_flash_leaves_no_partition_table() {
    let fx = Fixture::new();
    for size in [None, Some(1u64 << 30)] {
        let target = fx.path("cut.img");
        let _ = std::fs::remove_file(&target);
        if let Some(s) = size {
            File::create(&target).unwrap().set_len(s).unwrap();
        }
        // A complete flash first: the target has a valid table to lose.
        fx.flash(
            "t",
            &target,
            &Answer(Some(if size.is_some() { "1.00 GiB" } else { "x" })),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(imagebuild::disk::read_table(&File::open(&target).unwrap()).is_ok());
        let image = File::open(&fx.built.image).unwrap();
        let src = flash::source(&image, &fx.built.image).unwrap();
        let len = std::fs::metadata(&target).unwrap().len();
        let mut head = vec![0u8; gpt::PRIMARY_BYTES];
        File::open(&target)
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        let p = plan::plan(&src, len, Some(&head), &[], 0).unwrap();
        // Cut just before the two last writes (the backup, then the primary table), and
        // earlier.
        let (copy, _) = p.totals();
        let last_two = (gpt::PRIMARY_BYTES + gpt::BACKUP_BYTES) as u64;
        for budget in [copy / 4, copy / 2, copy - last_two] {
            let (sink, _) = local::Local::open_file(&target, len).unwrap();
            let mut cut = Cut {
                inner: sink,
                budget,
            };
            let err = local::execute(&p, &image, &mut cut, &mut |_| {}).unwrap_err();
            assert_eq!(err.to_string(), "the cable was pulled");
            drop(cut);
            let f = File::open(&target).unwrap();
            let t = imagebuild::disk::read_table(&f);
            assert!(
                t.is_err(),
                "a GPT survived the interruption ({size:?}): {t:?}"
            );
            let mut first = vec![0u8; 1 << 20];
            f.read_exact_at(&mut first, 0).unwrap();
            assert!(
                first.iter().all(|b| *b == 0),
                "the first MiB is still all zeros"
            );
            let mut last = vec![0u8; gpt::BACKUP_BYTES];
            f.read_exact_at(&mut last, len - gpt::BACKUP_BYTES as u64)
                .unwrap();
            assert!(
                !last.windows(8).any(|w| w == b"EFI PART"),
                "no backup GPT header at the end"
            );
        }
        // Flashing again completes.
        let answer = if size.is_some() {
            "1.00 GiB"
        } else {
            &*Box::leak(format!("{}", imagebuild::size::Bytes(len)).into_boxed_str())
        };
        let again = fx.flash("t", &target, &Answer(Some(answer))).unwrap();
        assert_eq!(
            again.read_back_sha256.as_deref(),
            Some(fx.built.sha256.as_str())
        );
    }
}

#[test]
fn files_that_must_not_be_written_are_refused() {
    let fx = Fixture::new();
    let e = error_text(&fx.flash("t", &fx.built.image, &Answer(None)).unwrap_err());
    assert!(
        e.contains("refusing to flash") && e.contains("it is the image file itself"),
        "{e}"
    );
    let small = fx.path("small.img");
    File::create(&small).unwrap().set_len(1 << 20).unwrap();
    let e = error_text(&fx.flash("t", &small, &Answer(None)).unwrap_err());
    assert!(
        e.contains("it is smaller than the image (1.0 MiB < "),
        "{e}"
    );
    // An existing file is confirmed by typing its size; nobody there, or a wrong answer,
    // writes nothing.
    let existing = fx.path("old.img");
    File::create(&existing).unwrap().set_len(1 << 30).unwrap();
    let e = error_text(&fx.flash("t", &existing, &Answer(None)).unwrap_err());
    assert!(
        e.contains("nobody to confirm overwriting") && e.contains("--yes"),
        "{e}"
    );
    let e = error_text(&fx.flash("t", &existing, &Answer(Some("yes"))).unwrap_err());
    assert!(
        e.contains("\"yes\" is not \"1.00 GiB\": nothing was written"),
        "{e}"
    );
    let mut head = [0u8; 512];
    File::open(&existing)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|b| *b == 0), "nothing was written");
    // The release's image changed since it was published: refused before writing.
    std::fs::copy(&fx.built.image, fx.path("keep")).unwrap();
    File::options()
        .write(true)
        .open(&fx.built.image)
        .unwrap()
        .write_all_at(b"x", 5 << 20)
        .unwrap();
    let target = fx.path("new.img");
    let e = error_text(&fx.flash("t", &target, &Answer(None)).unwrap_err());
    assert!(
        e.contains("the image changed since it was published; nothing was written"),
        "{e}"
    );
    assert!(!target.exists());
}

/// The root filesystem's block device, when / is on one.
fn root_device() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let dev = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, dst) = (f.next()?, f.next()?);
        (dst == "/" && src.starts_with("/dev/")).then(|| src.to_string())
    })?;
    // A partition's whole disk, as a user would name it.
    let name = std::fs::canonicalize(&dev).ok()?;
    let name = name.file_name()?.to_str()?.to_string();
    let sys = std::fs::canonicalize(format!("/sys/class/block/{name}")).ok()?;
    if sys.join("partition").exists() {
        return Some(format!("/dev/{}", sys.parent()?.file_name()?.to_str()?));
    }
    Some(format!("/dev/{name}"))
}

#[test]
fn the_machines_own_root_disk_is_refused() {
    let Some(disk) = root_device() else {
        eprintln!("skipped: / is not on a block device here");
        return;
    };
    let fx = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_imagebuild"))
        .arg("-C")
        .arg(fx.dir.path())
        .args(["flash", "--dry-run", "--unverified", "t", &disk])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("refusing to flash {disk}:"))
            && err.contains("it holds the running system's root filesystem (/ is "),
        "{err}"
    );
    assert!(err.contains("nothing was written"), "{err}");
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Loop(dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(format!("{}p2", self.0)).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn loop_devices_free_ones_are_written_and_mounted_ones_refused() {
    if !is_root() {
        eprintln!("skipped: loop devices need root");
        return;
    }
    let fx = Fixture::new();
    let backing = fx.path("disk.raw");
    File::create(&backing).unwrap().set_len(512 << 20).unwrap();
    let disk = Loop::attach(&backing);
    let flash = |yes: bool, serial: Option<&str>| {
        let req = Request {
            release: "t".into(),
            target: disk.0.clone(),
            unverified: true,
            yes,
            expect_serial: serial.map(str::to_string),
            ..Request::default()
        };
        flash::flash(
            &Host::new(false),
            &Project::new(fx.dir.path()),
            &fx.path("out"),
            &req,
            &Answer(Some("512.0 MiB")),
            &Silent,
        )
    };
    // --yes alone is not enough for a /dev/loopN name.
    let e = error_text(&flash(true, None).unwrap_err());
    assert!(e.contains("--yes needs the disk named for good"), "{e}");
    let f = flash(false, None).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        f.read_back_sha256.as_deref(),
        Some(fx.built.sha256.as_str())
    );
    assert!(f.gpt_moved);
    // The kernel sees the image's partitions.
    let _ = Command::new("partx").arg("-u").arg(&disk.0).status();
    let _ = Command::new("partx").arg("-a").arg(&disk.0).status();
    let part = format!("{}p2", disk.0);
    assert!(Path::new(&part).exists(), "{part} after the flash");
    // Mounted: refused, and nothing is written.
    let mnt = fx.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "ro"])
        .arg(&part)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let e = error_text(&flash(false, None).unwrap_err());
    assert!(
        e.contains(&format!("{part} is mounted at {}", mnt.display())),
        "{e}"
    );
    let _ = Command::new("umount").arg(&mnt).status();
}

#[test]
fn machine_values_are_added_after_the_image_is_proven() {
    let fx = Fixture::new();
    // The synthetic base has no kernel: give its ESP a UKI-named file to sit beside.
    let image = &fx.built.image;
    let table = imagebuild::disk::read_table(&File::open(image).unwrap()).unwrap();
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_guid == imagebuild::disk::ESP_TYPE)
        .unwrap()
        .clone();
    let f = File::options().read(true).write(true).open(image).unwrap();
    let uki = imagebuild::fs::fat::EspFile {
        path: "EFI/BOOT/BOOTX64.EFI".into(),
        data: b"MZ".to_vec(),
    };
    imagebuild::fs::fat::write_esp(&f, esp.start, esp.size, 7, "ESP", 1_767_225_600, &[uki])
        .unwrap();
    drop(f);
    let loose = fx.path("loose.raw");
    std::fs::copy(image, &loose).unwrap();
    let target = fx.path("web3.img");
    let req = Request {
        release: loose.to_str().unwrap().into(),
        target: target.to_str().unwrap().into(),
        credentials: vec![
            imagebuild::machine::hostname_credential("web-3").unwrap(),
            imagebuild::machine::Credential::parse("app.token=abc").unwrap(),
        ],
        ..Request::default()
    };
    let f = flash::flash(
        &Host::new(false),
        &Project::new(fx.dir.path()),
        &fx.path("out"),
        &req,
        &Answer(None),
        &Silent,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let release = imagebuild::sparse::sha256(&File::open(&loose).unwrap()).unwrap();
    assert_eq!(
        f.read_back_sha256.as_deref(),
        Some(release.as_str()),
        "the image region was proven first"
    );
    assert_eq!(
        f.added,
        [
            "EFI/BOOT/BOOTX64.EFI.extra.d/app.token.cred",
            "EFI/BOOT/BOOTX64.EFI.extra.d/system.hostname.cred"
        ]
    );
    let files = imagebuild::inspect::Image::open(&target)
        .unwrap()
        .esp_files()
        .unwrap();
    let hostname = files
        .iter()
        .find(|f| f.path.ends_with("system.hostname.cred"))
        .unwrap();
    assert_eq!(hostname.data, b"web-3");
    // Only the ESP changed: everything before and after it is the image's.
    let (a, b) = (
        std::fs::read(&loose).unwrap(),
        std::fs::read(&target).unwrap(),
    );
    let (s, e) = (esp.start as usize, (esp.start + esp.size) as usize);
    assert_eq!(a[..s], b[..s]);
    assert_eq!(a[e..], b[e..]);
    assert_ne!(a[s..e], b[s..e]);
}
