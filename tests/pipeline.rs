//! Fast tier: the whole pipeline on a synthetic tarball base (no network, seconds).
//! Checks what a user relies on: the image verifies with the standard tools, files read
//! back with their owners and modes, two builds are identical, bad input fails cleanly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use imagebuild::build::{BuildOptions, Built, build};
use imagebuild::cache::{Cache, sha256};
use imagebuild::host::Host;
use imagebuild::inspect::Image;
use imagebuild::inspect::diff::{Aspect, diff};
use imagebuild::inspect::report::inspect;
use imagebuild::profile::{Arch, Project};
use imagebuild::progress::Silent;
use imagebuild::testing::{synthetic_base_tar, synthetic_base_tar_with_packages};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A project with profile `t`: a gzip'd synthetic base, an overlay with an owned file.
    fn new(arch: Arch) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let tgz = gzip(&synthetic_base_tar(arch));
        std::fs::write(root.join("base.tar.gz"), &tgz).unwrap();
        std::fs::create_dir_all(root.join("overlays/app/etc/app")).unwrap();
        std::fs::write(
            root.join("overlays/app/etc/app/secret.conf"),
            "token = 42\n",
        )
        .unwrap();
        std::fs::write(root.join("overlays/app/etc/motd"), "hello\n").unwrap();
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        let profile = format!(
            "[image]\nname = \"test\"\nversion = \"1.0\"\narch = \"{arch}\"\nesp-size = \"40M\"\n\n[base]\ntarball = \"base.tar.gz\"\nsha256 = \"{}\"\n\n[[overlay]]\npath = \"overlays/app\"\nowner = {{ \"etc/app/secret.conf\" = \"root:www-data\" }}\nmode = {{ \"etc/app/secret.conf\" = \"0640\" }}\n",
            sha256(&tgz)
        );
        std::fs::write(root.join("profiles/t.toml"), profile).unwrap();
        Fixture { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write_profile(&self, name: &str, text: &str) {
        std::fs::write(self.root().join(format!("profiles/{name}.toml")), text).unwrap();
    }

    /// Replaces the base tarball (and its sha256 in profile `t`).
    fn use_base(&self, tar: &[u8]) {
        let tgz = gzip(tar);
        std::fs::write(self.root().join("base.tar.gz"), &tgz).unwrap();
        let text = self.profile_text();
        let old = text.lines().find(|l| l.starts_with("sha256")).unwrap();
        let new = format!("sha256 = \"{}\"", sha256(&tgz));
        self.write_profile("t", &text.replace(old, &new));
    }

    fn profile_text(&self) -> String {
        std::fs::read_to_string(self.root().join("profiles/t.toml")).unwrap()
    }

    fn build_into(&self, name: &str, out: &str) -> anyhow::Result<Built> {
        self.build_with(name, out, None)
    }

    fn build_with(&self, name: &str, out: &str, expect: Option<&str>) -> anyhow::Result<Built> {
        self.build_opts(name, out, expect, false)
    }

    fn build_opts(
        &self,
        name: &str,
        out: &str,
        expect: Option<&str>,
        replace: bool,
    ) -> anyhow::Result<Built> {
        let opts = BuildOptions {
            out_root: self.root().join(out),
            cache: Cache::new(self.root().join("cache")),
            verify: None,
            expect_sha256: expect.map(str::to_string),
            relock: false,
            replace,
        };
        build(
            &Host::new(false),
            &Project::new(self.root()),
            name,
            &opts,
            &Silent,
        )
    }

    fn build(&self, name: &str) -> anyhow::Result<Built> {
        self.build_into(name, "out")
    }

    /// Files under out/ that look like finished outputs.
    fn finished_outputs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let out = self.root().join("out");
        let Ok(profiles) = std::fs::read_dir(&out) else {
            return found;
        };
        for p in profiles.flatten() {
            for v in std::fs::read_dir(p.path()).unwrap().flatten() {
                let name = v.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !name.ends_with(".failed.log") {
                    found.push(v.path());
                }
            }
        }
        found
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
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

fn error_text(e: &anyhow::Error) -> String {
    format!("{e:#}\nhints: {:?}", imagebuild::error::hints(e))
}

#[test]
fn image_passes_standard_checks_and_reads_back() {
    let fx = Fixture::new(Arch::Amd64);
    let built = fx.build("t").unwrap();
    let dir = &built.dir;
    for f in ["t-1.0.raw", "SHA256SUMS", "manifest.json", "build.log"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(dir),
    );
    let verify = run_ok(Command::new("sfdisk").arg("--verify").arg(&built.image));
    assert!(verify.contains("No errors detected"), "{verify}");

    let img = Image::open(&built.image).unwrap();
    let root = img.root_region().unwrap().clone();
    let esp = img.esp_region().unwrap().clone();
    assert_eq!(
        root.type_guid.to_string().to_uppercase(),
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    );
    assert_eq!(root.start % (1 << 20), 0, "1 MiB alignment");
    run_ok(Command::new("e2fsck").arg("-fn").arg(format!(
        "{}?offset={}",
        built.image.display(),
        root.start
    )));
    let esp_copy = fx.root().join("esp.img");
    let bytes = std::fs::read(&built.image).unwrap();
    std::fs::write(
        &esp_copy,
        &bytes[esp.start as usize..(esp.start + esp.size) as usize],
    )
    .unwrap();
    run_ok(Command::new("fsck.fat").arg("-n").arg(&esp_copy));

    let fs = img.root().unwrap();
    let secret = fs.metadata("/etc/app/secret.conf").unwrap();
    assert_eq!(
        (secret.mode(), secret.uid(), secret.gid()),
        (0o640, 0, 33),
        "owner and mode from the profile"
    );
    assert_eq!(
        fs.read_to_string("/etc/app/secret.conf").unwrap(),
        "token = 42\n"
    );
    assert_eq!(
        fs.metadata("/etc/motd").unwrap().mode(),
        0o644,
        "overlay default mode"
    );
    assert_eq!(
        fs.metadata("/usr/bin/passwd").unwrap().mode(),
        0o4755,
        "setuid kept"
    );
    assert_eq!(fs.read_link("/bin").unwrap().to_str().unwrap(), "usr/bin");
    let os = fs.read_to_string("/etc/os-release").unwrap();
    assert!(os.contains("IMAGE_ID=test\nIMAGE_VERSION=1.0\n"), "{os}");
    assert_eq!(fs.read_to_string("/etc/hostname").unwrap(), "test\n");
    assert_eq!(
        fs.read_to_string("/etc/machine-id").unwrap(),
        "uninitialized\n"
    );
    assert!(
        !fs.exists("/etc/ssh/ssh_host_ed25519_key").unwrap(),
        "host keys are not shipped"
    );
    let fstab = fs.read_to_string("/etc/fstab").unwrap();
    assert!(
        fstab.contains(&format!("PARTUUID={} / ext4", root.uuid)),
        "{fstab}"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["image_sha256"], built.sha256);
    assert_eq!(manifest["arch"], "amd64");
    assert_eq!(manifest["packages"][0]["name"], "base-files");
    assert_eq!(manifest["partitions"][1]["uuid"], root.uuid.to_string());
}

#[test]
fn two_builds_are_bit_identical_and_arm64_gets_its_root_type() {
    let fx = Fixture::new(Arch::Arm64);
    let a = fx.build_into("t", "out-a").unwrap();
    std::fs::remove_dir_all(fx.root().join("cache")).unwrap();
    let b = fx.build_into("t", "out-b").unwrap();
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(
        std::fs::read(a.dir.join("manifest.json")).unwrap(),
        std::fs::read(b.dir.join("manifest.json")).unwrap()
    );
    let img = Image::open(&a.image).unwrap();
    assert_eq!(
        img.root_region()
            .unwrap()
            .type_guid
            .to_string()
            .to_uppercase(),
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
    );
}

#[test]
fn overlay_change_changes_the_image() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build_into("t", "out-a").unwrap().sha256;
    std::fs::write(fx.root().join("overlays/app/etc/motd"), "changed\n").unwrap();
    let b = fx.build_into("t", "out-b").unwrap().sha256;
    assert_ne!(a, b);
}

#[test]
fn tarball_checksum_mismatch_stops_before_unpacking() {
    let fx = Fixture::new(Arch::Amd64);
    let text = fx.profile_text();
    let sha_line = text
        .lines()
        .find(|l| l.starts_with("sha256"))
        .unwrap()
        .to_string();
    fx.write_profile(
        "t",
        &text.replace(&sha_line, &format!("sha256 = \"{}\"", "0".repeat(64))),
    );
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("has sha256") && e.contains("but the profile expects 0000"),
        "{e}"
    );
    assert!(
        !fx.root().join("cache/base").exists()
            || std::fs::read_dir(fx.root().join("cache/base"))
                .unwrap()
                .count()
                == 0
    );
    assert!(
        fx.finished_outputs().is_empty(),
        "{:?}",
        fx.finished_outputs()
    );
}

#[test]
fn image_size_too_small_gives_both_numbers() {
    let fx = Fixture::new(Arch::Amd64);
    fx.write_profile(
        "t",
        &fx.profile_text()
            .replace("esp-size = \"40M\"", "esp-size = \"40M\"\nsize = \"41M\""),
    );
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("image size 41.0 MiB is too small: the content needs"),
        "{e}"
    );
    assert!(e.contains("set [image] size to at least"), "{e}");
    assert!(
        fx.finished_outputs().is_empty(),
        "{:?}",
        fx.finished_outputs()
    );
    assert!(
        fx.root().join("out/t/1.0.failed.log").is_file(),
        "the log of the failed build is kept"
    );
}

#[test]
fn foreign_binary_in_overlay_is_named() {
    let fx = Fixture::new(Arch::Arm64);
    std::fs::create_dir_all(fx.root().join("overlays/app/usr/local/bin")).unwrap();
    std::fs::write(
        fx.root().join("overlays/app/usr/local/bin/tool"),
        imagebuild::testing::fake_elf(62),
    )
    .unwrap();
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("/usr/local/bin/tool (X86_64)") && e.contains("not for arm64"),
        "{e}"
    );
    assert!(fx.finished_outputs().is_empty());
}

#[test]
fn missing_overlay_directory_fails_before_anything_is_written() {
    let fx = Fixture::new(Arch::Amd64);
    std::fs::remove_dir_all(fx.root().join("overlays/app")).unwrap();
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("profiles/t.toml:12: overlay directory overlays/app does not exist"),
        "{e}"
    );
    assert!(!fx.root().join("out").exists(), "nothing under out/");
}

#[test]
fn a_version_once_published_names_one_image() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build("t").unwrap();
    assert_eq!(a.published, "new");
    std::fs::write(fx.root().join("overlays/app/etc/motd"), "v2\n").unwrap();
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains(&format!(
            "t 1.0 is already published as image sha256 {}; this build made ",
            a.sha256
        )) && e.contains("A version names one image: nothing was published"),
        "{e}"
    );
    assert!(e.contains("bump `version` (profiles/t.toml:"), "{e}");
    assert_eq!(
        sha256(&std::fs::read(&a.image).unwrap()),
        a.sha256,
        "the published image is untouched"
    );
    // --replace publishes atomically and keeps the old record in the history.
    let b = fx.build_opts("t", "out", None, true).unwrap();
    assert_eq!(
        (a.dir.as_path(), b.published),
        (b.dir.as_path(), "replaced")
    );
    assert_ne!(a.sha256, b.sha256);
    assert_eq!(sha256(&std::fs::read(&b.image).unwrap()), b.sha256);
    let mut entries: Vec<_> = std::fs::read_dir(fx.root().join("out/t"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["1.0", "1.0.failed.log", "releases.json"],
        "no staging or old directories left: {entries:?}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.root().join("out/t/releases.json")).unwrap())
            .unwrap();
    assert_eq!(json["releases"][0]["image_sha256"], b.sha256.as_str());
    assert_eq!(
        json["replaced"][0]["release"]["image_sha256"],
        a.sha256.as_str()
    );
    assert_eq!(json["replaced"][0]["replaced_by"], b.sha256.as_str());
}

#[test]
fn the_same_bytes_again_keep_the_published_release() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build("t").unwrap();
    let before = std::fs::metadata(&a.image).unwrap().modified().unwrap();
    let again = fx.build("t").unwrap();
    assert_eq!(
        (again.sha256.as_str(), again.published),
        (a.sha256.as_str(), "same")
    );
    let after = std::fs::metadata(&again.image).unwrap().modified().unwrap();
    assert_eq!(before, after, "the published directory was kept as it was");
    let rec = again.release.unwrap();
    assert_eq!(rec.published_at, a.release.unwrap().published_at);
}

#[test]
fn inspect_lists_partitions_and_the_overlay_file() {
    let fx = Fixture::new(Arch::Amd64);
    let built = fx.build("t").unwrap();
    let r = inspect(&built.image, true).unwrap();
    let names: Vec<_> = r.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["esp", "root-x86-64"]);
    let secret = r
        .files
        .iter()
        .find(|e| e.path == "/etc/app/secret.conf")
        .expect("the overlay file is listed");
    let want_sha = sha256(b"token = 42\n");
    assert_eq!(
        (secret.mode.to_string(), secret.uid, secret.gid, secret.size),
        ("0640".to_string(), 0, 33, 11)
    );
    assert_eq!(secret.sha256.as_deref(), Some(want_sha.as_str()));
    let bin = r.files.iter().find(|e| e.path == "/bin").unwrap();
    assert_eq!(bin.target.as_deref(), Some("usr/bin"));
    let names: Vec<_> = r.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base-files"]);
    assert!(
        r.esp.is_empty() && r.boot.is_empty(),
        "no kernel, empty ESP"
    );

    let human = r.human(false);
    assert!(human.contains("\npackages    1\n"), "{human}");
    assert!(!human.contains("/etc/app/secret.conf"), "{human}");
    let listing = r.human(true);
    assert!(
        listing.contains(&format!(
            "  file    0640        0:33           11 /etc/app/secret.conf  {want_sha}\n"
        )),
        "{listing}"
    );
    let json = serde_json::to_value(&r).unwrap();
    let entry = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/etc/app/secret.conf")
        .unwrap();
    assert_eq!(entry["mode"], "0640");
    assert_eq!(entry["type"], "file");
    assert_eq!(entry["sha256"], want_sha.as_str());
    assert_eq!(json["partitions"][1]["name"], "root-x86-64");
}

/// Runs the imagebuild binary; returns (exit code, stdout, stderr).
fn imagebuild(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imagebuild"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn diff_reports_exactly_the_changed_overlay_file() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build_into("t", "out-a").unwrap();
    // Same size: the contents are hashed and compared.
    std::fs::write(fx.root().join("overlays/app/etc/motd"), "HELLO\n").unwrap();
    let b = fx.build_into("t", "out-b").unwrap();
    let d = diff(&a.image, &b.image).unwrap();
    assert!(!d.is_empty());
    assert!(d.packages.is_empty() && d.partitions.is_empty() && d.boot.is_empty());
    assert!(d.disk_guid.is_none());
    let paths: Vec<_> = d.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/etc/motd"]);
    assert_eq!(d.files[0].changed, [Aspect::Content]);
    let (old, new) = (sha256(b"hello\n"), sha256(b"HELLO\n"));
    assert_eq!(d.files[0].old.as_ref().unwrap().sha256.as_ref(), Some(&old));
    assert_eq!(d.files[0].new.as_ref().unwrap().sha256.as_ref(), Some(&new));
    assert_eq!(
        d.human(),
        format!(
            "files\n  ~ /etc/motd  content sha256 {} -> {}\n",
            &old[..12],
            &new[..12]
        )
    );

    // Another size: a content change without reading the file.
    std::fs::write(fx.root().join("overlays/app/etc/motd"), "changed\n").unwrap();
    let c = fx.build_into("t", "out-c").unwrap();
    let d = diff(&a.image, &c.image).unwrap();
    assert_eq!(d.human(), "files\n  ~ /etc/motd  content 6 -> 8 bytes\n");
    assert_eq!(d.files[0].new.as_ref().unwrap().sha256, None);

    // The command: 1 and the listing when they differ, 0 and nothing when they do not.
    let (code, stdout, stderr) =
        imagebuild(&["diff".as_ref(), a.image.as_os_str(), c.image.as_os_str()]);
    assert_eq!((code, stdout.as_str()), (1, d.human().as_str()), "{stderr}");
    let (code, stdout, stderr) =
        imagebuild(&["diff".as_ref(), a.image.as_os_str(), a.image.as_os_str()]);
    assert_eq!((code, stdout.as_str()), (0, ""), "{stderr}");
    let (code, stdout, _) = imagebuild(&[
        "diff".as_ref(),
        "--json".as_ref(),
        a.image.as_os_str(),
        c.image.as_os_str(),
    ]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["files"][0]["path"], "/etc/motd");
    assert_eq!(json["files"][0]["changed"][0], "content");
}

#[test]
fn diff_of_a_file_that_is_not_an_image_is_one_error() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build("t").unwrap();
    let manifest = a.dir.join("manifest.json");
    let (code, stdout, stderr) =
        imagebuild(&["diff".as_ref(), a.image.as_os_str(), manifest.as_os_str()]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(&format!(
            "error: {} is not a GPT disk image",
            manifest.display()
        )),
        "{stderr}"
    );
}

#[test]
fn diff_reports_a_package_version_change() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build_into("t", "out-a").unwrap();
    fx.use_base(&synthetic_base_tar_with_packages(
        Arch::Amd64,
        &[("base-files", "13.9"), ("hello", "2.10-3")],
    ));
    let b = fx.build_into("t", "out-b").unwrap();
    let d = diff(&a.image, &b.image).unwrap();
    let human = d.human();
    assert!(
        human.starts_with(
            "packages\n  ~ base-files 13.8 -> 13.9\n  + hello 2.10-3 (amd64)\nfiles\n"
        ),
        "{human}"
    );
    assert!(
        d.files
            .iter()
            .any(|f| f.path == "/var/lib/dpkg/status" && f.changed == [Aspect::Content]),
        "{human}"
    );
}

#[test]
fn identical_images_have_an_empty_diff() {
    let fx = Fixture::new(Arch::Amd64);
    let a = fx.build_into("t", "out-a").unwrap();
    let b = fx.build_into("t", "out-b").unwrap();
    let d = diff(&a.image, &b.image).unwrap();
    assert!(d.is_empty(), "{}", d.human());
    assert_eq!(d.human(), "");
}

fn set_version(fx: &Fixture, version: &str) {
    let text = fx.profile_text();
    let old = text.lines().find(|l| l.starts_with("version")).unwrap();
    fx.write_profile("t", &text.replace(old, &format!("version = \"{version}\"")));
}

#[test]
fn releases_are_recorded_in_version_order_and_listed_newest_first() {
    let fx = Fixture::new(Arch::Amd64);
    let first = fx.build("t").unwrap();
    set_version(&fx, "1.10");
    let ten = fx.build("t").unwrap();
    set_version(&fx, "1.9");
    let nine = fx.build("t").unwrap();

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.root().join("out/t/releases.json")).unwrap())
            .unwrap();
    assert_eq!(json["profile"], "t");
    let records = json["releases"].as_array().unwrap();
    let got: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["image_sha256"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("1.0", first.sha256.as_str()),
            ("1.9", nine.sha256.as_str()),
            ("1.10", ten.sha256.as_str())
        ]
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(records[0]["recipe_id"], manifest["recipe_id"]);
    assert_eq!(records[0]["lock_digest"], serde_json::Value::Null);
    assert_eq!(records[0]["verified"], false);
    assert!(records[0]["published_at"].as_i64().unwrap() > 1_700_000_000);

    let (code, stdout, stderr) = imagebuild(&[
        "-C".as_ref(),
        fx.root().as_os_str(),
        "releases".as_ref(),
        "t".as_ref(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let versions: Vec<_> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split(' ').next())
        .filter(|v| !v.is_empty() && v.starts_with('1'))
        .collect();
    assert_eq!(versions, ["1.10", "1.9", "1.0"], "{stdout}");
    let newest = stdout.lines().nth(1).unwrap();
    assert!(
        newest.contains(&ten.sha256)
            && newest.contains("just now")
            && newest.ends_with("<- latest"),
        "{stdout}"
    );
    assert!(stdout.contains("no release is verified"), "{stdout}");
}

#[test]
fn expect_sha256_mismatch_publishes_nothing() {
    let fx = Fixture::new(Arch::Amd64);
    let reference = fx.build_into("t", "out-reference").unwrap();
    let wrong = "0".repeat(64);
    let e = error_text(&fx.build_with("t", "out", Some(&wrong)).unwrap_err());
    assert!(
        e.contains(&format!(
            "the image has sha256 {}, but --expect-sha256 is {wrong}; nothing was published",
            reference.sha256
        )),
        "{e}"
    );
    assert!(
        fx.finished_outputs().is_empty(),
        "{:?}",
        fx.finished_outputs()
    );
    assert!(!fx.root().join("out/t/releases.json").exists());
    // The right sha256 (in any case) publishes.
    let built = fx
        .build_with("t", "out", Some(&reference.sha256.to_uppercase()))
        .unwrap();
    assert_eq!(built.sha256, reference.sha256);
    assert!(fx.root().join("out/t/releases.json").is_file());
}

/// Runs the imagebuild binary in the fixture's project with its cache.
fn imagebuild_in(fx: &Fixture, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<std::ffi::OsString> = vec![
        "-C".into(),
        fx.root().into(),
        "--cache-dir".into(),
        fx.root().join("cache").into(),
    ];
    all.extend(args.iter().map(Into::into));
    let refs: Vec<&std::ffi::OsStr> = all.iter().map(|a| a.as_os_str()).collect();
    imagebuild(&refs)
}

#[test]
fn lock_round_trips_and_a_locked_build_records_its_digest() {
    let fx = Fixture::new(Arch::Amd64);
    let (code, stdout, stderr) = imagebuild_in(&fx, &["lock", "t"]);
    assert_eq!(code, 0, "{stderr}");
    let lock_path = fx.root().join("profiles/t.lock");
    let text = std::fs::read_to_string(&lock_path).unwrap();
    let digest = stdout.split_whitespace().next().unwrap().to_string();
    assert_eq!(
        digest,
        sha256(text.as_bytes()),
        "stdout names the lock's digest"
    );
    let lock = imagebuild::lock::Lock::parse(&text, &lock_path).unwrap();
    assert_eq!(lock.render(), text, "the lock reads back as written");
    assert_eq!(lock.profile, "t");
    assert_eq!(lock.arch, "amd64");
    let tarball = lock.tarball.as_ref().expect("the tarball is pinned");
    assert!(text.contains(&tarball.sha256));
    assert!(fx.profile_text().contains(&tarball.sha256));

    let built = fx.build("t").unwrap();
    assert_eq!(built.lock_digest.as_deref(), Some(digest.as_str()));
    let releases = std::fs::read_to_string(fx.root().join("out/t/releases.json")).unwrap();
    assert!(releases.contains(&digest), "{releases}");
    let manifest = std::fs::read_to_string(built.dir.join("manifest.json")).unwrap();
    assert!(manifest.contains(&digest), "{manifest}");
    // Locking again gives the same bytes.
    let (code, stdout2, _) = imagebuild_in(&fx, &["lock", "t"]);
    assert_eq!(code, 0);
    assert_eq!(stdout2, stdout);
}

#[test]
fn a_stale_lock_is_refused_until_relocked() {
    let fx = Fixture::new(Arch::Amd64);
    let (code, _, stderr) = imagebuild_in(&fx, &["lock", "t"]);
    assert_eq!(code, 0, "{stderr}");
    let old_lock = std::fs::read_to_string(fx.root().join("profiles/t.lock")).unwrap();
    // The profile changes after the lock was made.
    fx.write_profile(
        "t",
        &(fx.profile_text() + "\n[boot]\ncmdline = [\"quiet\"]\n"),
    );
    let (code, _, stderr) = imagebuild_in(&fx, &["build", "t"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("profiles/t.lock is stale: its recipe-id is"),
        "{stderr}"
    );
    assert!(stderr.contains("imagebuild build t --relock"), "{stderr}");
    assert!(fx.finished_outputs().is_empty(), "nothing is published");
    // --relock rewrites the lock for the new recipe and builds.
    let (code, _, stderr) = imagebuild_in(&fx, &["build", "t", "--relock"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("relocked: wrote"), "{stderr}");
    let new_lock = std::fs::read_to_string(fx.root().join("profiles/t.lock")).unwrap();
    assert_ne!(new_lock, old_lock);
    let (code, _, stderr) = imagebuild_in(&fx, &["build", "t"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_lock_for_another_tarball_is_refused() {
    let fx = Fixture::new(Arch::Amd64);
    let (code, _, stderr) = imagebuild_in(&fx, &["lock", "t"]);
    assert_eq!(code, 0, "{stderr}");
    let path = fx.root().join("profiles/t.lock");
    let text = std::fs::read_to_string(&path).unwrap();
    let lock = imagebuild::lock::Lock::parse(&text, &path).unwrap();
    let pinned = lock.tarball.unwrap().sha256;
    std::fs::write(&path, text.replace(&pinned, &"e".repeat(64))).unwrap();
    let (code, _, stderr) = imagebuild_in(&fx, &["build", "t"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "the lock pins base tarball sha256 {}, the profile says {pinned}",
            "e".repeat(64)
        )),
        "{stderr}"
    );
}

/// A Debian profile whose lock pins one package; its .deb in the package cache was
/// changed. The build refuses it before anything is bootstrapped (no network needed).
#[test]
fn a_tampered_deb_in_the_cache_is_rejected() {
    let fx = Fixture::new(Arch::Amd64);
    fx.write_profile(
        "deb",
        "[image]\nversion = \"1.0\"\narch = \"amd64\"\n[base]\ndistro = \"debian\"\nsuite = \"trixie\"\nmirror = \"http://127.0.0.1:9/debian\"\n",
    );
    let recipe = imagebuild::profile::Recipe::load(&Project::new(fx.root()), "deb").unwrap();
    let good = b"the package as the mirror served it";
    let lock = imagebuild::lock::Lock {
        format: imagebuild::lock::FORMAT,
        profile: "deb".into(),
        recipe_id: recipe.id.clone(),
        arch: "amd64".into(),
        source_date_epoch: recipe.epoch,
        mirror: Some("http://127.0.0.1:9/debian".into()),
        suite: Some("trixie".into()),
        tarball: None,
        stub: None,
        packages: vec![imagebuild::lock::LockedPackage {
            name: "bsdutils".into(),
            version: "1:2.41-5".into(),
            arch: "amd64".into(),
            sha256: sha256(good),
        }],
    };
    imagebuild::lock::write(&Project::new(fx.root()), &lock).unwrap();
    let debs = fx.root().join("cache/debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = debs.join("bsdutils_1%3a2.41-5_amd64.deb");
    std::fs::write(&deb, b"the package after somebody changed it").unwrap();
    let e = error_text(&fx.build("deb").unwrap_err());
    assert!(
        e.contains("package bsdutils 1:2.41-5 (amd64): the cached")
            && e.contains(&format!("the lock says {}", sha256(good))),
        "{e}"
    );
    assert!(e.contains(&format!("delete {}", deb.display())), "{e}");
    assert!(fx.finished_outputs().is_empty());
}
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqgF6LkowDlR0Cw91FyTwbjG8n14roD7C7XW2antTHi ops@laptop";

/// Profile `t` plus a deploy user (line 17 is its name, 19 its groups) and [services]
/// (line 22).
fn access_profile(base: &str, groups: &str, services: &str) -> String {
    format!(
        "{base}\n[[user]]\nname = \"deploy\"\nssh-keys = [\"{KEY}\"]\ngroups = [{groups}]\n\n[services]\n{services}\n"
    )
}

fn access_fixture() -> Fixture {
    let fx = Fixture::new(Arch::Amd64);
    fx.use_base(&synthetic_base_tar_with_packages(
        Arch::Amd64,
        &[
            ("base-files", "13.8"),
            ("openssh-server", "1:10.0p1-7"),
            ("sudo", "1.9.16p2-3"),
        ],
    ));
    fx
}

#[test]
fn users_and_services_read_back_from_the_image() {
    let fx = access_fixture();
    let text = access_profile(
        &fx.profile_text(),
        "\"sudo\"",
        "enable = [\"docker.service\"]\ndisable = [\"apt-daily.timer\"]",
    );
    fx.write_profile("t", &text);
    let a = fx.build_into("t", "out-a").unwrap();
    let img = Image::open(&a.image).unwrap();
    let fs = img.root().unwrap();
    let keys = fs.metadata("/home/deploy/.ssh/authorized_keys").unwrap();
    assert_eq!((keys.mode(), keys.uid(), keys.gid()), (0o600, 1000, 1000));
    assert_eq!(
        fs.read_to_string("/home/deploy/.ssh/authorized_keys")
            .unwrap(),
        format!("{KEY}\n")
    );
    let ssh = fs.metadata("/home/deploy/.ssh").unwrap();
    assert_eq!((ssh.mode(), ssh.uid(), ssh.gid()), (0o700, 1000, 1000));
    let home = fs.metadata("/home/deploy").unwrap();
    assert_eq!((home.mode(), home.uid(), home.gid()), (0o700, 1000, 1000));
    assert_eq!(fs.metadata("/home/deploy/.profile").unwrap().uid(), 1000);
    let shadow = fs.read_to_string("/etc/shadow").unwrap();
    assert!(
        shadow.starts_with("root:!*:20454:"),
        "root is locked: {shadow}"
    );
    assert!(
        shadow.ends_with("\ndeploy:!*:20454:0:99999:7:::\n"),
        "{shadow}"
    );
    assert!(
        fs.read_to_string("/etc/passwd")
            .unwrap()
            .ends_with("\ndeploy:x:1000:1000::/home/deploy:/bin/bash\n")
    );
    assert!(
        fs.read_to_string("/etc/group")
            .unwrap()
            .contains("\nsudo:x:27:deploy\n")
    );
    let sudoers = fs.metadata("/etc/sudoers.d/imagebuild-deploy").unwrap();
    assert_eq!((sudoers.mode(), sudoers.uid()), (0o440, 0));
    let dropin = fs
        .read_to_string("/etc/ssh/sshd_config.d/10-imagebuild.conf")
        .unwrap();
    for line in [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin no",
    ] {
        assert!(dropin.contains(&format!("\n{line}\n")), "{dropin}");
    }
    assert_eq!(
        fs.read_link("/etc/systemd/system/multi-user.target.wants/docker.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/usr/lib/systemd/system/docker.service"
    );
    assert!(
        !fs.exists("/etc/systemd/system/timers.target.wants/apt-daily.timer")
            .unwrap()
    );
    assert!(
        fs.read_to_string("/etc/systemd/system-preset/50-imagebuild.preset")
            .unwrap()
            .contains("enable docker.service\ndisable apt-daily.timer\n")
    );

    std::fs::remove_dir_all(fx.root().join("cache")).unwrap();
    let b = fx.build_into("t", "out-b").unwrap();
    assert_eq!(a.sha256, b.sha256, "two builds are identical");
}

#[test]
fn bad_users_and_services_name_the_profile_line() {
    let fx = access_fixture();
    let base = fx.profile_text();
    let cases = [
        (
            "\"docker\"",
            "",
            "profiles/t.toml:19: [[user]] deploy: group \"docker\" does not exist in the image",
        ),
        (
            "",
            "enable = [\"nginx.service\"]",
            "profiles/t.toml:22: [services] enable: unit nginx.service does not exist in the image",
        ),
        (
            "",
            "enable = [\"apt-daily.service\"]",
            "profiles/t.toml:22: [services] enable: apt-daily.service has no [Install] section",
        ),
    ];
    for (groups, services, want) in cases {
        fx.write_profile("t", &access_profile(&base, groups, services));
        let e = error_text(&fx.build("t").unwrap_err());
        assert!(e.contains(want), "want {want}\ngot {e}");
    }
    assert!(fx.finished_outputs().is_empty());
}

#[test]
fn private_key_in_ssh_keys_is_refused_without_echoing_it() {
    let fx = access_fixture();
    let text = format!(
        "{}\n[[user]]\nname = \"deploy\"\nssh-keys = [\"\"\"\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n\"\"\"]\n",
        fx.profile_text()
    );
    fx.write_profile("t", &text);
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("profiles/t.toml:19: [[user]] deploy: ssh-keys entry 1 is a private key (BEGIN OPENSSH PRIVATE KEY), not a public key"),
        "{e}"
    );
    assert!(
        !e.contains("b3BlbnNzaC1rZXktdjE"),
        "the key is not echoed: {e}"
    );
    assert!(e.contains("ssh-keygen -y -f KEY"), "{e}");
}

#[test]
fn secrets_in_overlays_are_refused_unless_allowed() {
    let fx = Fixture::new(Arch::Amd64);
    let key = fx.root().join("overlays/app/etc/app/tls.key");
    std::fs::write(&key, "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n").unwrap();
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("overlays/app/etc/app/tls.key:1: a private key (BEGIN RSA PRIVATE KEY) in overlay overlays/app (profiles/t.toml:12)"),
        "{e}"
    );
    assert!(
        e.contains("provide it at deploy time")
            && e.contains("allow-secrets = [\\\"etc/app/tls.key\\\"]"),
        "{e}"
    );
    assert!(fx.finished_outputs().is_empty());

    let text = fx.profile_text();
    let allowed = text.replace(
        "mode = {",
        "allow-secrets = [\"etc/app/tls.key\"]\nmode = {",
    );
    fx.write_profile("t", &allowed);
    let built = fx.build("t").unwrap();
    let img = Image::open(&built.image).unwrap();
    assert!(img.root().unwrap().exists("/etc/app/tls.key").unwrap());

    std::fs::write(
        fx.root().join("overlays/app/etc/app/users.conf"),
        format!("# users\nadmin = \"$6$saltsalt${}\"\n", "x".repeat(86)),
    )
    .unwrap();
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("overlays/app/etc/app/users.conf:2: a password hash ($6$, SHA-512 crypt) in overlay overlays/app"),
        "{e}"
    );
}

/// Profile names, image names and versions become parts of paths: one rule (a plain name)
/// for all, checked before anything is written, so nothing lands outside out/.
#[test]
fn names_that_are_paths_are_refused_before_anything_is_written() {
    let fx = Fixture::new(Arch::Amd64);
    // A profile outside profiles/ that `../` would reach.
    std::fs::write(fx.root().join("escape.toml"), fx.profile_text()).unwrap();
    let e = error_text(&fx.build("../escape").unwrap_err());
    assert!(
        e.starts_with(
            "profile name \"../escape\" is not a plain name: it must start with a letter or digit"
        ),
        "{e}"
    );
    assert!(e.contains("imagebuild list"), "{e}");
    let text = fx.profile_text();
    for (key, bad, line) in [
        ("version", "..", 3),
        ("version", ".", 3),
        ("name", "../x", 2),
        ("name", "a/b", 2),
    ] {
        let old = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap();
        fx.write_profile("bad", &text.replace(old, &format!("{key} = \"{bad}\"")));
        let e = error_text(&fx.build("bad").unwrap_err());
        assert!(
            e.starts_with(&format!(
                "profiles/bad.toml:{line}: {key} \"{bad}\" is not a plain name"
            )),
            "{key} {bad}: {e}"
        );
    }
    fx.write_profile("child", "extends = [\"../escape\"]\n");
    let e = error_text(&fx.build("child").unwrap_err());
    assert!(
        e.starts_with("profiles/child.toml:1: extends \"../escape\" is not a plain name"),
        "{e}"
    );
    assert!(!fx.root().join("out").exists(), "nothing under out/");
    let siblings: Vec<_> = std::fs::read_dir(fx.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !siblings
            .iter()
            .any(|n| n.contains("staging") || n == "1.0" || n == "releases.json"),
        "{siblings:?}"
    );
}

/// Leftovers of builds (unfinished directories, temporary files) under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".staging-")
            || name.starts_with(".old-")
            || name.starts_with(".work-")
            || (name.starts_with('.') && name.contains(".tmp-"))
        {
            found.push(e.path());
        } else if e.file_type().unwrap().is_dir() {
            found.extend(leftovers(&e.path()));
        }
    }
    found
}

#[test]
fn a_closed_stderr_does_not_stop_a_build() {
    let fx = Fixture::new(Arch::Amd64);
    let clean = fx.build_into("t", "out-clean").unwrap();
    // What `imagebuild build t 2>&1 | head -c 20` gives it: a pipe nobody reads.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_imagebuild"))
        .arg("-C")
        .arg(fx.root())
        .arg("--cache-dir")
        .arg(fx.root().join("cache"))
        .args(["build", "t"])
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let image = fx.root().join("out").join(
        clean
            .image
            .strip_prefix(fx.root().join("out-clean"))
            .unwrap(),
    );
    assert_eq!(
        sha256(&std::fs::read(&image).unwrap()),
        clean.sha256,
        "the build went on to the same image"
    );
}

/// The build stages in the order `--verbose`-less runs print them (`==> NAME`).
const STAGES: &[&str] = &[
    "stacks", "base", "tree", "boot", "rootfs", "disk", "ext4", "esp", "seal", "formats",
];

#[test]
fn a_build_killed_at_any_stage_leaves_nothing_and_the_next_one_is_clean() {
    use std::io::{BufRead, BufReader};
    let fx = Fixture::new(Arch::Amd64);
    let clean = fx.build_into("t", "out-clean").unwrap();
    let cache = fx.root().join("cache");
    let out = fx.root().join("out");
    for stage in STAGES {
        // A cold cache every time, so the base stage has work to be killed in.
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagebuild"))
            .arg("-C")
            .arg(fx.root())
            .arg("--cache-dir")
            .arg(&cache)
            .args(["build", "t"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mark = format!("==> {stage}");
        let reached = lines.any(|l| l.is_ok_and(|l| l == mark));
        assert!(reached, "the build never printed {mark}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Killed at the last stage, the build may have published just before: then the
        // release is whole. Otherwise nothing looks finished.
        let published = out.join(
            clean
                .image
                .strip_prefix(fx.root().join("out-clean"))
                .unwrap(),
        );
        if published.exists() {
            assert_eq!(*stage, "formats", "published although killed at {stage}");
            assert_eq!(sha256(&std::fs::read(&published).unwrap()), clean.sha256);
        } else {
            assert!(
                fx.finished_outputs().is_empty(),
                "killed at {stage}: {:?} looks finished",
                fx.finished_outputs()
            );
        }

        let again = fx.build_into("t", "out").unwrap();
        assert_eq!(again.sha256, clean.sha256, "after a kill at {stage}");
        let mut left = leftovers(&out);
        left.extend(leftovers(&cache));
        assert!(left.is_empty(), "after a kill at {stage}: {left:?}");
    }
}

/// Profile `t` with `bytes` as its base tarball, as they are (no gzip).
fn use_raw_base(fx: &Fixture, bytes: &[u8]) {
    std::fs::write(fx.root().join("base.tar.gz"), bytes).unwrap();
    let text = fx.profile_text();
    let old = text.lines().find(|l| l.starts_with("sha256")).unwrap();
    let new = format!("sha256 = \"{}\"", sha256(bytes));
    fx.write_profile("t", &text.replace(old, &new));
}

/// The synthetic base without the entries `keep` refuses, as an uncompressed tar.
fn synthetic_without(keep: impl Fn(&tar::Header, &str) -> bool) -> Vec<u8> {
    let full = synthetic_base_tar(Arch::Amd64);
    let mut archive = tar::Archive::new(full.as_slice());
    let mut b = tar::Builder::new(Vec::new());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if !keep(e.header(), &name) {
            continue;
        }
        let mut h = e.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        b.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn bases_that_are_not_root_filesystems_are_named_and_refused() {
    let fx = Fixture::new(Arch::Amd64);
    let tarball = fx.root().join("base.tar.gz");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("empty", Vec::new(), "it holds nothing".to_string()),
        ("empty tar", vec![0u8; 10240], "it holds nothing".to_string()),
        (
            "random bytes",
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
            "it is not a readable tar".to_string(),
        ),
        (
            "a corrupt gzip",
            gzip(&synthetic_base_tar(Arch::Amd64))[..2000].to_vec(),
            "it does not decompress".to_string(),
        ),
        (
            "no init",
            synthetic_without(|_, n| !n.contains("systemd/systemd")),
            "it has no init (none of /usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init, /usr/sbin/init)".to_string(),
        ),
        (
            "no /usr",
            synthetic_without(|_, n| !n.starts_with("usr")),
            "it has no /usr".to_string(),
        ),
    ];
    for (what, bytes, why) in cases {
        use_raw_base(&fx, &bytes);
        let e = error_text(&fx.build("t").unwrap_err());
        let want = format!(
            "base tarball {} is not a root filesystem: {why}",
            tarball.display()
        );
        assert!(e.contains(&want), "{what}: {e}");
        assert!(
            !e.chars().any(|c| c.is_control() && c != '\n'),
            "{what}: raw bytes in the message: {e:?}"
        );
        assert!(fx.finished_outputs().is_empty(), "{what}");
    }
}

#[test]
fn a_tarball_without_its_directories_builds_as_with_them() {
    let fx = Fixture::new(Arch::Amd64);
    let with = fx.build_into("t", "out-with").unwrap();
    // What `tar cf base.tar usr/bin/sh etc/hostname ...` gives: no directory entries.
    use_raw_base(
        &fx,
        &synthetic_without(|h, _| h.entry_type() != tar::EntryType::Directory),
    );
    let without = fx.build_into("t", "out-without").unwrap();
    let fs = Image::open(&without.image).unwrap().root().unwrap();
    assert!(fs.exists("/etc/app/secret.conf").unwrap());
    assert!(fs.exists("/usr/lib/systemd/systemd").unwrap());
    // The directories tar(1) would make: root:root 0755.
    let with_fs = Image::open(&with.image).unwrap().root().unwrap();
    assert!(with_fs.exists("/var/lib/dpkg").unwrap());
    assert!(fs.exists("/var/lib/dpkg").unwrap());
}

#[test]
fn a_tarball_base_must_exist_even_when_the_cache_has_it() {
    let fx = Fixture::new(Arch::Amd64);
    fx.build_into("t", "out-a").unwrap();
    let tarball = fx.root().join("base.tar.gz");
    std::fs::remove_file(&tarball).unwrap();
    let e = error_text(&fx.build_into("t", "out-b").unwrap_err());
    assert!(
        e.contains(&format!(
            "base tarball {} does not exist",
            tarball.display()
        )),
        "{e}"
    );
    // Another file under the same name: its sha256 is checked though the cache has the
    // profile's.
    std::fs::write(&tarball, b"other").unwrap();
    let e = error_text(&fx.build_into("t", "out-b").unwrap_err());
    assert!(e.contains("but the profile expects"), "{e}");
}

#[test]
fn two_profiles_with_the_same_text_are_two_images() {
    let fx = Fixture::new(Arch::Amd64);
    // web1.toml and web2.toml: the image name, and so the hostname, is the profile's name.
    let text = fx.profile_text().replace("name = \"test\"\n", "");
    fx.write_profile("web1", &text);
    fx.write_profile("web2", &text);
    let a = fx.build("web1").unwrap();
    let b = fx.build("web2").unwrap();
    let id = |b: &Built| b.release.as_ref().unwrap().recipe_id.clone();
    assert_ne!(id(&a), id(&b));
    assert_ne!(a.sha256, b.sha256);
    let ta = imagebuild::disk::read_table(&std::fs::File::open(&a.image).unwrap()).unwrap();
    let tb = imagebuild::disk::read_table(&std::fs::File::open(&b.image).unwrap()).unwrap();
    assert_ne!(ta.disk_guid, tb.disk_guid, "one disk GUID for two profiles");
    let fs = |i: &Path| {
        Image::open(i)
            .unwrap()
            .root()
            .unwrap()
            .read_to_string("/etc/hostname")
            .unwrap()
    };
    assert_eq!(
        (fs(&a.image), fs(&b.image)),
        ("web1\n".to_string(), "web2\n".to_string())
    );
}

/// A copy of `image` at `to`, with `damage` done to it.
fn damaged_copy(image: &Path, to: &Path, damage: impl FnOnce(&std::fs::File, u64)) -> PathBuf {
    std::fs::copy(image, to).unwrap();
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(to)
        .unwrap();
    let len = f.metadata().unwrap().len();
    damage(&f, len);
    to.to_path_buf()
}

fn poke(f: &std::fs::File, at: u64) {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
}

#[test]
fn damaged_images_are_named_never_read_as_sound() {
    let fx = Fixture::new(Arch::Amd64);
    let built = fx.build("t").unwrap();
    let image = &built.image;
    let len = std::fs::metadata(image).unwrap().len();
    let table = imagebuild::disk::read_table(&std::fs::File::open(image).unwrap()).unwrap();
    let root = table.partitions[1].clone();
    let p = |n: &str| fx.root().join(n);
    let cases: Vec<(PathBuf, String)> = vec![
        (
            damaged_copy(image, &p("cut.raw"), |f, _| {
                f.set_len(root.start + root.size / 2).unwrap()
            }),
            format!(
                "its GPT says the disk is {:.1} MiB ({len} bytes): it was cut short",
                len as f64 / 1048576.0
            ),
        ),
        (
            damaged_copy(image, &p("cut.raw"), |f, _| {
                f.set_len(root.start + root.size / 2).unwrap()
            }),
            format!(
                "partition 2 (root-x86-64) ends at byte {}, past the end of the file",
                root.start + root.size
            ),
        ),
        (
            damaged_copy(image, &p("primary.raw"), |f, _| poke(f, 512 + 24)),
            "the primary GPT header (LBA 1) has a wrong CRC32".to_string(),
        ),
        (
            damaged_copy(image, &p("entries.raw"), |f, _| poke(f, 1024 + 60)),
            "the primary GPT's entry array (LBA 2) has a wrong CRC32".to_string(),
        ),
        (
            damaged_copy(image, &p("backup.raw"), |f, len| poke(f, len - 512 + 24)),
            format!(
                "the backup GPT header (LBA {}) has a wrong CRC32",
                len / 512 - 1
            ),
        ),
        (
            // The root's superblock says the filesystem has twice its blocks.
            damaged_copy(image, &p("ext4.raw"), |f, _| {
                use std::os::unix::fs::FileExt;
                let at = root.start + 1024 + 4;
                let mut b = [0u8; 4];
                f.read_exact_at(&mut b, at).unwrap();
                let blocks = u32::from_le_bytes(b) * 2;
                f.write_all_at(&blocks.to_le_bytes(), at).unwrap();
            }),
            "the ext4 filesystem of partition 2 (root-x86-64) is".to_string(),
        ),
    ];
    for (copy, why) in &cases {
        let name = copy.file_name().unwrap().to_string_lossy().into_owned();
        let (code, _, err) = imagebuild(&["inspect".as_ref(), copy.as_os_str()]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains(&format!("{} is damaged:", copy.display())),
            "{name}: {err}"
        );
        assert!(err.contains(why.as_str()), "{name}: want {why:?} in {err}");
        // diff neither says "the same" (0) nor "different" (1): it cannot compare (2).
        let (code, out, err) = imagebuild(&["diff".as_ref(), image.as_os_str(), copy.as_os_str()]);
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(err.contains(why.as_str()), "{name}: {err}");
    }
    // Not an image at all, and a qcow2.
    std::fs::write(p("noise.raw"), vec![7u8; 1 << 20]).unwrap();
    let (_, _, err) = imagebuild(&["inspect".as_ref(), p("noise.raw").as_os_str()]);
    assert!(
        err.contains("is not a GPT disk image (no GPT header at its start or end)"),
        "{err}"
    );
    let mut qcow = b"QFI\xfb".to_vec();
    qcow.resize(1 << 16, 0);
    std::fs::write(p("disk.qcow2"), qcow).unwrap();
    let (_, _, err) = imagebuild(&["inspect".as_ref(), p("disk.qcow2").as_os_str()]);
    assert!(
        err.contains("is a qcow2 image, not a raw GPT disk image"),
        "{err}"
    );
    // The sound image still reads.
    let (code, _, err) = imagebuild(&["inspect".as_ref(), image.as_os_str()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_size_no_file_can_have_names_the_key() {
    let fx = Fixture::new(Arch::Amd64);
    fx.write_profile(
        "t",
        &fx.profile_text()
            .replace("esp-size = \"40M\"", "esp-size = \"40M\"\nsize = \"9000T\""),
    );
    let e = error_text(&fx.build("t").unwrap_err());
    assert!(
        e.contains("t.toml:6: the image is 9216000.00 GiB (9895604649984000 bytes), which"),
        "{e}"
    );
    assert!(e.contains("cannot hold as one file"), "{e}");
    assert!(fx.finished_outputs().is_empty());
}

#[test]
fn a_full_output_filesystem_is_named() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let fx = Fixture::new(Arch::Amd64);
    let small = fx.root().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, _, err) =
        imagebuild_in(&fx, &["--out", small.to_str().unwrap(), "-q", "build", "t"]);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains(&format!(
            "hint: a filesystem is full: the output {} has",
            small.display()
        )) && err.contains(&format!(
            "the cache {} has",
            fx.root().join("cache").display()
        )),
        "{err}"
    );
}

/// Every cloud format, twice: identical bytes each time, and each holds the raw image as
/// the standard tools read it (qemu-img for qcow2, VHD and VMDK; GNU tar for GCE's tar.gz;
/// zstd for raw.zst).
#[test]
fn cloud_formats_are_deterministic_and_hold_the_raw_image() {
    let fx = Fixture::new(Arch::Amd64);
    let text = fx.profile_text().replace(
        "esp-size = \"40M\"\n",
        "esp-size = \"40M\"\nformats = [\"raw\", \"raw.zst\", \"qcow2\", \"vhd\", \"gce\", \"vmdk\"]\n",
    );
    let plain = fx.build_into("t", "out-plain").unwrap();
    fx.write_profile("t", &text);
    let a = fx.build_into("t", "out-a").unwrap();
    let b = fx.build_into("t", "out-b").unwrap();
    assert_eq!(
        a.sha256, plain.sha256,
        "the formats list changed the raw image"
    );
    let stem = a.image.file_stem().unwrap().to_string_lossy().into_owned();
    let sums = std::fs::read_to_string(a.dir.join("SHA256SUMS")).unwrap();
    for ext in ["raw.zst", "qcow2", "vhd", "gce.tar.gz", "vmdk"] {
        let name = format!("{stem}.{ext}");
        let (pa, pb) = (a.dir.join(&name), b.dir.join(&name));
        let sha = imagebuild::cache::sha256_file(&pa).unwrap();
        assert_eq!(
            sha,
            imagebuild::cache::sha256_file(&pb).unwrap(),
            "{name} differs"
        );
        assert!(
            sums.contains(&format!("{sha}  {name}")),
            "{name} not in SHA256SUMS:\n{sums}"
        );
    }
    let raw = &a.image;
    let file = |ext: &str| a.dir.join(format!("{stem}.{ext}"));
    for (ext, driver) in [("qcow2", "qcow2"), ("vhd", "vpc"), ("vmdk", "vmdk")] {
        let said = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", driver])
                .arg(raw)
                .arg(file(ext)),
        );
        assert!(said.contains("Images are identical"), "{ext}: {said}");
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json", "-f", driver])
                .arg(file(ext)),
        );
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(
            info["virtual-size"].as_u64(),
            Some(std::fs::metadata(raw).unwrap().len()),
            "{ext}: {info}"
        );
    }
    // The VHD: N MiB of disk, then the footer, its checksum right.
    let vhd = std::fs::read(file("vhd")).unwrap();
    let raw_len = std::fs::metadata(raw).unwrap().len();
    assert_eq!(
        vhd.len() as u64,
        raw_len.div_ceil(1 << 20) * (1 << 20) + 512
    );
    let footer = &vhd[vhd.len() - 512..];
    assert_eq!(&footer[..8], b"conectix");
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    assert_eq!(u32::from_be_bytes(footer[64..68].try_into().unwrap()), !sum);
    // GCE: exactly disk.raw, its size a whole GiB; extracted, it is the raw image padded
    // with zeros.
    let listing = run_ok(Command::new("tar").arg("-tvzf").arg(file("gce.tar.gz")));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 1, "{listing}");
    let size = raw_len.div_ceil(1 << 30) * (1 << 30);
    assert!(
        lines[0].contains(&format!(" {size} ")) && lines[0].ends_with(" disk.raw"),
        "{listing}"
    );
    let x = fx.root().join("gce-x");
    std::fs::create_dir_all(&x).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(file("gce.tar.gz"))
            .arg("-C")
            .arg(&x),
    );
    assert_eq!(std::fs::metadata(x.join("disk.raw")).unwrap().len(), size);
    let said = run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(raw)
            .arg(x.join("disk.raw")),
    );
    assert!(said.contains("Images are identical"), "gce: {said}");
    // raw.zst: zstd gives back the raw image byte for byte.
    let unz = fx.root().join("unz.raw");
    run_ok(
        Command::new("zstd")
            .args(["-q", "-d"])
            .arg(file("raw.zst"))
            .arg("-o")
            .arg(&unz),
    );
    assert_eq!(
        imagebuild::cache::sha256_file(&unz).unwrap(),
        a.sha256,
        "raw.zst does not give back the raw image"
    );
}
