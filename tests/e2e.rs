//! End-to-end tier: real Debian builds (mmdebstrap, the configured mirror) and QEMU boots
//! of both architectures. Slow; run by `make test` as
//! `cargo test --release --test e2e -- --ignored --test-threads=1`.
//! Bases and packages are cached in target/e2e-cache between runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagebuild::inspect::Image;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cache the builds share: `$IMAGEBUILD_CACHE` (which `make test` sets, so packages and
/// bases survive between runs), else target/e2e-cache.
fn cache() -> PathBuf {
    std::env::var_os("IMAGEBUILD_CACHE")
        .map_or_else(|| repo().join("target/e2e-cache"), PathBuf::from)
}
/// Runs imagebuild in project `dir` with output under `out`.
fn imagebuild(dir: &Path, out: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagebuild"));
    cmd.arg("-C")
        .arg(dir)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache())
        .args(args);
    eprintln!("+ imagebuild {}", args.join(" "));
    let out = cmd.output().expect("running imagebuild");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "imagebuild failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A scratch project: the repository's profiles, overlays and qemu machines, plus extra profiles.
fn scratch_project(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(repo().join("target")).unwrap();
    for sub in ["profiles", "overlays", "qemu"] {
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(repo().join(sub))
                .arg(dir.path()),
        );
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(format!("profiles/{name}.toml")), text).unwrap();
    }
    dir
}

/// Builds `profile` with --verify and checks the image the way a user would.
fn build_verify_and_check(profile: &str, arch_root_type: &str) {
    let out = tempfile::tempdir_in(repo().join("target")).unwrap();
    ok(&imagebuild(
        &repo(),
        out.path(),
        &["build", profile, "--verify"],
    ));
    let dir = out.path().join(profile).join("2026.11.1");
    let image = dir.join(format!("{profile}-2026.11.1.raw"));
    for f in [
        "SHA256SUMS",
        "manifest.json",
        "build.log",
        &format!("{profile}-2026.11.1.console.log"),
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let console =
        std::fs::read_to_string(dir.join(format!("{profile}-2026.11.1.console.log"))).unwrap();
    assert!(
        console.contains("IMAGEBUILD-HEALTH {\"image\":\"prod\",\"version\":\"2026.11.1\""),
        "no health line"
    );
    // The image was hashed before it was booted: SHA256SUMS still matches after verify.
    run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&dir),
    );
    assert!(
        run_ok(Command::new("sfdisk").arg("--verify").arg(&image)).contains("No errors detected")
    );

    let img = Image::open(&image).unwrap();
    let root = img.root_region().unwrap().clone();
    let esp = img.esp_region().unwrap().clone();
    assert_eq!(root.type_guid.to_string().to_uppercase(), arch_root_type);
    run_ok(Command::new("e2fsck").arg("-fn").arg(format!(
        "{}?offset={}",
        image.display(),
        root.start
    )));
    let esp_copy = out.path().join("esp.img");
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", image.display()))
            .arg(format!("of={}", esp_copy.display()))
            .arg("bs=1M")
            .arg(format!("skip={}", esp.start >> 20))
            .arg(format!("count={}", esp.size >> 20)),
    );
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp_copy));

    let fs = img.root().unwrap();
    let app = fs.metadata("/etc/prod/app.conf").unwrap();
    assert_eq!(
        (app.mode(), app.uid(), app.gid()),
        (0o640, 0, 4),
        "overlay file root:adm 0640"
    );
    assert!(
        fs.read_to_string("/etc/os-release")
            .unwrap()
            .contains("IMAGE_ID=prod\nIMAGE_VERSION=2026.11.1\n")
    );
    assert_eq!(
        fs.metadata("/usr/bin/passwd").unwrap().mode(),
        0o4755,
        "setuid passwd"
    );
    assert_eq!(
        fs.read_link("/etc/os-release").unwrap().to_str().unwrap(),
        "../usr/lib/os-release"
    );
    assert_eq!(
        fs.read_to_string("/etc/machine-id").unwrap(),
        "uninitialized\n"
    );
    assert!(!fs.exists("/etc/ssh/ssh_host_ed25519_key").unwrap());
    let files = img.esp_files().unwrap();
    assert_eq!(files.len(), 1);
    assert!(
        files[0].path.starts_with("EFI/BOOT/BOOT"),
        "{}",
        files[0].path
    );

    if profile != "prod-amd64" {
        return;
    }
    // verify again by hand: passes, and the image's bytes do not change.
    let before = sha256(&image);
    ok(&imagebuild(
        &repo(),
        out.path(),
        &["verify", image.to_str().unwrap()],
    ));
    assert_eq!(before, sha256(&image), "verify must not change the image");
}

#[test]
#[ignore = "end-to-end: real Debian bootstrap and QEMU boot (make test)"]
fn amd64_builds_verifies_and_checks_out() {
    build_verify_and_check("prod-amd64", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
}

#[test]
#[ignore = "end-to-end: real Debian bootstrap (arm64 through qemu-user) and QEMU boot (make test)"]
fn arm64_builds_verifies_and_checks_out() {
    build_verify_and_check("prod-arm64", "B921B045-1DF0-41C3-AF44-4C6F280D3FAE");
}

/// Two whole bootstraps of one profile, each with an empty base cache, give the same image.
/// They share the package cache, so the mirror is asked once for each package.
fn bootstraps_twice_identically(profile: &str) {
    let project = scratch_project(&[]);
    std::fs::create_dir_all(cache().join("debs")).unwrap();
    let mut shas = Vec::new();
    for name in ["cache-a", "cache-b"] {
        let c = project.path().join(name);
        std::fs::create_dir_all(&c).unwrap();
        std::os::unix::fs::symlink(cache().join("debs"), c.join("debs")).unwrap();
        let out = project.path().join("out");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagebuild"));
        cmd.arg("-C")
            .arg(project.path())
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&c)
            .args(["-q", "build", profile]);
        let stdout = run_ok(&mut cmd);
        shas.push(stdout.split_whitespace().next().unwrap().to_string());
    }
    assert_eq!(shas[0], shas[1], "two clean builds of {profile} differ");
}

#[test]
#[ignore = "end-to-end: two whole amd64 bootstraps (make test)"]
fn amd64_two_clean_builds_are_identical() {
    bootstraps_twice_identically("prod-amd64");
}

#[test]
#[ignore = "end-to-end: two whole arm64 bootstraps (make test)"]
fn arm64_two_clean_builds_are_identical() {
    bootstraps_twice_identically("prod-arm64");
}

#[test]
#[ignore = "end-to-end: mmdebstrap against the mirror (make test)"]
fn unknown_package_is_named() {
    let project = scratch_project(&[(
        "nopkg",
        "extends = [\"prod-amd64\"]\n[packages]\ninclude = [\"imagebuild-no-such-package\"]\n",
    )]);
    let out = project.path().join("out");
    let res = imagebuild(project.path(), &out, &["build", "nopkg"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains(
            "package `imagebuild-no-such-package` does not exist in Debian trixie for amd64"
        ),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.join("nopkg"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".failed.log")),
        "{leftovers:?}"
    );
}

/// Builds `profile` in `project` (no verify) and returns the image path.
fn build_plain(project: &Path, profile: &str) -> PathBuf {
    let out = project.join("out");
    ok(&imagebuild(project, &out, &["build", profile]));
    out.join(profile)
        .join("2026.11.1")
        .join(format!("{profile}-2026.11.1.raw"))
}

fn verify_fails_with(project: &Path, image: &Path, expected: &str) {
    let res = imagebuild(
        project,
        &project.join("out"),
        &["verify", "--timeout", "300", image.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success(),
        "verify passed but should fail with {expected}"
    );
    assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
}

#[test]
#[ignore = "end-to-end: QEMU boots that must fail (make test)"]
fn verify_reports_why_a_boot_failed() {
    let project = scratch_project(&[
        (
            "bad-unit",
            "extends = [\"prod-amd64\"]\n[[verify.check]]\nunit = \"imagebuild-missing.service\"\n",
        ),
        (
            "bad-port",
            "extends = [\"prod-amd64\"]\n[[verify.check]]\ntcp = 9\n[[verify.check]]\ntcp = 22\n",
        ),
        (
            "bad-root",
            "extends = [\"prod-amd64\"]\n[boot]\ncmdline = [\"root=PARTUUID=00000000-0000-4000-8000-000000000000\", \"rootdelay=5\"]\n",
        ),
        ("bad-initrd", "extends = [\"prod-amd64\"]\n"),
    ]);
    let p = project.path();
    verify_fails_with(
        p,
        &build_plain(p, "bad-unit"),
        "failed checks: unit imagebuild-missing.service",
    );
    let port = project
        .path()
        .join("out/bad-port/2026.11.1/bad-port-2026.11.1.raw");
    build_plain(p, "bad-port");
    verify_fails_with(p, &port, "failed checks: tcp 9");
    verify_fails_with(p, &build_plain(p, "bad-root"), "root device not found");
    // A kernel whose initramfs does not unpack mounts root= itself when the disk driver is
    // built in (NVMe); on virtio-blk (a module) it cannot, and panics.
    let image = build_plain(p, "bad-initrd");
    corrupt_initramfs(&image);
    let toml = p.join("qemu/amd64.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "disk_interface = \"nvme\"",
        "disk_interface = \"virtio-blk\"",
    );
    std::fs::write(&toml, text).unwrap();
    verify_fails_with(p, &image, "kernel panic");
}

/// Overwrites the start of the UKI's .initrd section (the compressed archive's header)
/// where it lies in the image file.
fn corrupt_initramfs(image: &Path) {
    let img = Image::open(image).unwrap();
    let uki = &img.esp_files().unwrap()[0].data;
    let sections = imagebuild::boot::uki::read_uki_sections(uki).unwrap();
    let initrd = &sections.iter().find(|(n, _)| n == ".initrd").unwrap().1;
    let probe = &initrd[..4096];
    let mut bytes = std::fs::read(image).unwrap();
    let at = bytes
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("initrd bytes in the image");
    bytes[at..at + 4096].fill(0xA5);
    std::fs::write(image, bytes).unwrap();
}

#[test]
#[ignore = "end-to-end: QEMU boot of an image written to a larger disk (make test)"]
fn image_on_a_larger_disk_grows_its_root() {
    // The check passes only when the root filesystem spans 90% of the disk it booted from.
    let check = "test $(df -B1 --output=size / | tail -n1) -gt $(( $(cat /sys/block/nvme0n1/size) * 512 * 9 / 10 ))";
    let project = scratch_project(&[(
        "grow",
        &format!("extends = [\"prod-amd64\"]\n[[verify.check]]\ncommand = '{check}'\n"),
    )]);
    let image = build_plain(project.path(), "grow");
    let big = project.path().join("big.raw");
    std::fs::copy(&image, &big).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args(["resize", "-f", "raw"])
            .arg(&big)
            .arg("3G"),
    );
    ok(&imagebuild(
        project.path(),
        &project.path().join("out"),
        &["verify", "--timeout", "300", big.to_str().unwrap()],
    ));
}
