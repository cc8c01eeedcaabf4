//! Fast tier: imagebuild's native dpkg-deb/dpkg-split (native/dpkg-backend), which a
//! foreign-architecture bootstrap puts before the target's own. What it does must be what
//! the real programs do, byte for byte; what it does not do must reach the real program.
//! The real programs here are the host's; a stub stands in for the target's, to see which
//! requests are handed on.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagebuild::base::NATIVE_BACKEND;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// The backend under both names in bin/, and a stub "target" in real/ that logs what
    /// it is asked and exits 3.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["bin", "real"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for name in ["dpkg-deb", "dpkg-split"] {
            let path = dir.path().join("bin").join(name);
            std::fs::write(&path, NATIVE_BACKEND).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let stub = dir.path().join("real").join(name);
            let log = dir.path().join("handed-on");
            std::fs::write(
                &stub,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit 3\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Fixture { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs the backend as `name`.
    fn run(&self, name: &str, args: &[&str]) -> Output {
        Command::new(self.path("bin").join(name))
            .args(args)
            .env("DPKG_BACKEND_REAL_DIR", self.path("real"))
            .output()
            .unwrap()
    }

    /// What was handed on to the stub, one line per call.
    fn handed_on(&self) -> String {
        std::fs::read_to_string(self.path("handed-on")).unwrap_or_default()
    }

    /// A package built by the host's dpkg-deb with `compression` (xz, gzip, zstd, none):
    /// maintainer scripts with their modes, a conffile, a data file, a symlink.
    fn deb(&self, compression: &str) -> PathBuf {
        let tree = self.path(&format!("tree-{compression}"));
        let file = |rel: &str, text: &str, mode: u32| {
            let p = tree.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        file(
            "DEBIAN/control",
            "Package: t\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@example.org>\nDescription: test\n",
            0o644,
        );
        file("DEBIAN/postinst", "#!/bin/sh\nexit 0\n", 0o755);
        file("DEBIAN/conffiles", "/etc/t.conf\n", 0o644);
        file("etc/t.conf", "a = 1\n", 0o644);
        // Incompressible enough to make more than one split part below.
        let data: String = (0..6000u32)
            .map(|i| format!("{:08x}", i.wrapping_mul(2654435761)))
            .collect();
        file("usr/share/t/data", &data, 0o644);
        std::os::unix::fs::symlink("data", tree.join("usr/share/t/link")).unwrap();
        let deb = self.path(&format!("t-{compression}.deb"));
        host_ok(
            Command::new("dpkg-deb")
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["--root-owner-group", &format!("-Z{compression}"), "--build"])
                .arg(&tree)
                .arg(&deb),
        );
        deb
    }
}

/// Runs a host program, which must succeed; its output.
fn host_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir`: name, mode, owner, mtime, content.
fn listing(dir: &Path) -> Vec<(String, u32, u32, u32, i64, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (
                name,
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn fsys_tarfile_is_byte_for_byte_dpkg_debs_for_every_compression() {
    let f = Fixture::new();
    for c in ["xz", "gzip", "zstd", "none"] {
        let deb = f.deb(c);
        let ours = f.run("dpkg-deb", &["--fsys-tarfile", deb.to_str().unwrap()]);
        assert!(
            ours.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let theirs = host_ok(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(&deb));
        assert!(
            ours.stdout.len() > 40_000,
            "{c}: only {} bytes",
            ours.stdout.len()
        );
        assert!(
            ours.stdout == theirs.stdout,
            "{c}: the data archives differ"
        );
    }
    assert_eq!(f.handed_on(), "", "handled natively, nothing handed on");
}

#[test]
fn control_extracts_what_dpkg_deb_does_with_modes_owners_and_times() {
    // dpkg in a bootstrap runs as root. Another user's tar keeps neither owners nor modes
    // as they are, so then the request must go to the real dpkg-deb.
    let root = rustix::process::geteuid().is_root();
    let f = Fixture::new();
    let mut handed_on = String::new();
    for c in ["xz", "gzip", "zstd", "none"] {
        let deb = f.deb(c);
        let ours = f.path(&format!("ours-{c}"));
        let theirs = f.path(&format!("theirs-{c}"));
        let args = ["--control", deb.to_str().unwrap(), ours.to_str().unwrap()];
        let out = f.run("dpkg-deb", &args);
        if !root {
            assert_eq!(out.status.code(), Some(3), "{c}: handed on");
            handed_on += &format!("dpkg-deb {}\n", args.join(" "));
            continue;
        }
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        host_ok(
            Command::new("dpkg-deb")
                .arg("--control")
                .arg(&deb)
                .arg(&theirs),
        );
        let (a, b) = (listing(&ours), listing(&theirs));
        assert_eq!(
            a.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["conffiles", "control", "postinst"],
            "{c}"
        );
        assert_eq!(a, b, "{c}: the control files differ");
        let (ma, mb) = (
            std::fs::metadata(&ours).unwrap(),
            std::fs::metadata(&theirs).unwrap(),
        );
        assert_eq!(
            (ma.mode(), ma.mtime()),
            (mb.mode(), mb.mtime()),
            "{c}: the directory"
        );
    }
    assert_eq!(f.handed_on(), handed_on);
}

#[test]
fn split_check_says_not_a_part_natively_and_hands_on_real_parts() {
    let f = Fixture::new();
    let deb = f.deb("none");
    let out = f.run(
        "dpkg-split",
        &["-Qao", "/nonexistent/reassemble.deb", deb.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an ordinary package is not a part"
    );
    assert_eq!(f.handed_on(), "");

    let prefix = f.path("part");
    host_ok(
        Command::new("dpkg-split")
            .args(["--split", "-S", "20"])
            .arg(&deb)
            .arg(&prefix),
    );
    let part = std::fs::read_dir(f.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("part.1of"))
        .expect("dpkg-split made parts");
    let out = f.run("dpkg-split", &["-Qao", "/r.deb", part.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the target's dpkg-split reassembles parts"
    );
    assert_eq!(
        f.handed_on(),
        format!("dpkg-split -Qao /r.deb {}\n", part.display())
    );
}

#[test]
fn anything_else_reaches_the_targets_own_program_unchanged() {
    let f = Fixture::new();
    let deb = f.deb("xz");
    let not_deb = f.path("not.deb");
    std::fs::write(&not_deb, "0.939000\nold format\n").unwrap();
    let d = deb.to_str().unwrap();
    let n = not_deb.to_str().unwrap();
    for args in [
        vec!["--info", d],
        vec!["-x", d, "/tmp/x"],
        vec!["--fsys-tarfile", n],
        vec!["--control", n, "/tmp/x"],
    ] {
        let out = f.run("dpkg-deb", &args);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
    }
    assert_eq!(
        f.handed_on(),
        format!(
            "dpkg-deb --info {d}\ndpkg-deb -x {d} /tmp/x\ndpkg-deb --fsys-tarfile {n}\ndpkg-deb --control {n} /tmp/x\n"
        )
    );
}
