//! Runs the scripts `[[state]]` puts into an image under this host's sh, on sparse files
//! standing in for devices: the device script must format only a blank device, use its
//! own filesystem again, and refuse everything else without writing to it; the seed
//! script makes each bind's source once, from the image's content.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagebuild::tree::state::{DEVICE_SCRIPT, SEED_SCRIPT};
use tempfile::TempDir;

/// A directory with the script and the files standing in for devices.
struct Dir {
    dir: TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("state-device", DEVICE_SCRIPT), ("state-seed", SEED_SCRIPT)] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Dir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A sparse file of 64 MiB: what a new cloud volume reads as.
    fn blank(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        p
    }

    /// state-device LABEL GLOB 1, with udevadm a no-op.
    fn device(&self, label: &str, glob: &str) -> Output {
        self.device_with(label, glob, &[])
    }

    /// state-device LABEL GLOB 1 with `credentials` (name, value) in $CREDENTIALS_DIRECTORY,
    /// as systemd's ImportCredential= gives them.
    fn device_with(&self, label: &str, glob: &str, credentials: &[(&str, &str)]) -> Output {
        let creds = tempfile::tempdir().unwrap();
        for (name, value) in credentials {
            std::fs::write(creds.path().join(name), value).unwrap();
        }
        Command::new(self.path("state-device"))
            .args([label, &self.path(glob).to_string_lossy(), "1"])
            .env("IMAGEBUILD_UDEVADM", "true")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CREDENTIALS_DIRECTORY", creds.path())
            .output()
            .unwrap()
    }
}

/// blkid's view of a file: (TYPE, LABEL, UUID), empty where there is none.
fn probe(file: &Path) -> (String, String, String) {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    (field("TYPE"), field("LABEL"), field("UUID"))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

fn says(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_blank_device_is_formatted_once_and_then_used_as_it_is() {
    let d = Dir::new();
    let vol = d.blank("vol1");
    let out = d.device("vol-data", "vol*");
    assert!(out.status.success(), "{}", says(&out));
    assert!(says(&out).contains("is blank: formatting it ext4 with the label vol-data"));
    let (fs, label, uuid) = probe(&vol);
    assert_eq!((fs.as_str(), label.as_str()), ("ext4", "vol-data"));

    let out = d.device("vol-data", "vol*");
    assert!(out.status.success(), "{}", says(&out));
    assert!(says(&out).contains("holds ext4 labelled vol-data: using it"));
    assert_eq!(probe(&vol).2, uuid, "not formatted again");
}

#[test]
fn a_device_with_anything_on_it_is_refused_and_left_alone() {
    let d = Dir::new();
    let other = d.blank("other");
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "other"])
            .arg(&other),
    );
    let before = probe(&other);
    let out = d.device("vol-data", "other");
    assert!(!out.status.success());
    assert!(
        says(&out).contains(
            "holds ext4 labelled 'other', not ext4 labelled vol-data: not formatting over it"
        ),
        "{}",
        says(&out)
    );
    assert_eq!(probe(&other), before);

    let gpt = d.blank("gpt");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("echo 'label: gpt' | sfdisk -q \"$0\"")
            .arg(&gpt),
    );
    let out = d.device("vol-data", "gpt");
    assert!(!out.status.success());
    assert!(
        says(&out).contains("holds gpt labelled ''"),
        "{}",
        says(&out)
    );
    assert_eq!(probe(&gpt).0, "");

    // No signature anything knows, but not zeros either: it may be data.
    let data = d.blank("data");
    std::fs::write(&data, b"precious bytes").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = d.device("vol-data", "data");
    assert!(!out.status.success());
    assert!(
        says(&out).contains("its first MiB is not zeros: it may hold data; not formatting it"),
        "{}",
        says(&out)
    );
    assert!(std::fs::read(&data).unwrap().starts_with(b"precious bytes"));
}

#[test]
fn the_glob_must_name_exactly_one_device() {
    let d = Dir::new();
    let out = d.device("vol-data", "nothing*");
    assert!(!out.status.success());
    let msg = says(&out);
    assert!(
        msg.contains(&format!(
            "state vol-data: no device matches {} after 1 s; {} holds: state-device state-seed",
            d.path("nothing*").display(),
            d.dir.path().display()
        )),
        "{msg}"
    );

    let a = d.blank("vol-a");
    let b = d.blank("vol-b");
    let out = d.device("vol-data", "vol-*");
    assert!(!out.status.success());
    assert!(
        says(&out).contains(&format!(
            "matches 2 devices: {} {} - it must match one",
            a.display(),
            b.display()
        )),
        "{}",
        says(&out)
    );
    assert_eq!(probe(&a).0, "", "nothing formatted");

    // udev makes several links to one disk (`..._1` beside the serial): one device.
    std::os::unix::fs::symlink(&a, d.path("link-a")).unwrap();
    std::os::unix::fs::symlink(&a, d.path("link-a_1")).unwrap();
    let out = d.device("vol-data", "link-a*");
    assert!(out.status.success(), "{}", says(&out));
    assert_eq!(probe(&a).1, "vol-data");
}

#[test]
fn a_machine_credential_names_the_device_in_place_of_the_glob() {
    let d = Dir::new();
    let vol = d.blank("vol1");
    // The glob would find vol1; the credential sends the script elsewhere, so nothing is
    // formatted.
    let out = d.device_with(
        "vol-data",
        "vol*",
        &[(
            "imagebuild.state.vol-data.device",
            "/dev/disk/by-id/imagebuild-test-absent\n",
        )],
    );
    assert!(!out.status.success());
    let msg = says(&out);
    assert!(
        msg.contains("the credential imagebuild.state.vol-data.device names /dev/disk/by-id/imagebuild-test-absent"),
        "{msg}"
    );
    assert!(
        msg.contains("no device matches /dev/disk/by-id/imagebuild-test-absent after 1 s"),
        "{msg}"
    );
    assert_eq!(probe(&vol).0, "", "the glob's device is left alone");

    // Another state's credential does not apply; a value outside /dev/ is refused.
    let out = d.device_with(
        "vol-data",
        "vol*",
        &[("imagebuild.state.other.device", "/dev/null")],
    );
    assert!(out.status.success(), "{}", says(&out));
    assert_eq!(probe(&vol).1, "vol-data");
    let out = d.device_with("logs", "vol*", &[("imagebuild.state.logs.device", "vol1")]);
    assert!(!out.status.success());
    assert!(
        says(&out).contains(
            "the credential imagebuild.state.logs.device is 'vol1', not a path under /dev/"
        ),
        "{}",
        says(&out)
    );
}

#[test]
fn bind_sources_are_copied_from_the_image_once() {
    let d = Dir::new();
    let root = d.path("root");
    let image_dir = root.join("var/lib/app");
    std::fs::create_dir_all(image_dir.join("sub")).unwrap();
    std::fs::write(image_dir.join("sub/seed.txt"), "from the image").unwrap();
    std::fs::set_permissions(&image_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mount = d.path("srv");
    std::fs::create_dir(&mount).unwrap();
    // Paths are absolute in the image; here they are below `root`.
    let app = image_dir.to_string_lossy().into_owned();
    let empty = root.join("var/lib/none").to_string_lossy().into_owned();
    let seed = || {
        let out = Command::new(d.path("state-seed"))
            .arg(&mount)
            .args([&app, &empty])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", says(&out));
        says(&out)
    };
    let said = seed();
    let copied = PathBuf::from(format!("{}{app}", mount.display()));
    assert!(said.contains(&format!("{} made from the image's {app}", copied.display())));
    assert_eq!(
        std::fs::read_to_string(copied.join("sub/seed.txt")).unwrap(),
        "from the image"
    );
    let mode = std::fs::metadata(&copied).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "the copy keeps the image's mode");
    let made = PathBuf::from(format!("{}{empty}", mount.display()));
    assert!(
        made.is_dir(),
        "an empty directory where the image has nothing"
    );

    // Later boots keep what the state holds, whatever the image has.
    std::fs::write(copied.join("sub/seed.txt"), "written on the machine").unwrap();
    std::fs::write(image_dir.join("sub/seed.txt"), "a newer image").unwrap();
    assert_eq!(seed(), "");
    assert_eq!(
        std::fs::read_to_string(copied.join("sub/seed.txt")).unwrap(),
        "written on the machine"
    );
    let leftovers: Vec<_> = std::fs::read_dir(copied.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().ends_with(".imagebuild-seed")),
        "{leftovers:?}"
    );
}
