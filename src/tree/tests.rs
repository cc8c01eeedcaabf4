use std::collections::BTreeMap;
use std::io::Read;

use super::*;
use crate::profile::{Arch, OverlaySpec};
use crate::testing::synthetic_base_tar;

fn base_tree() -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.tar");
    std::fs::write(&p, synthetic_base_tar(Arch::Amd64)).unwrap();
    let t = Tree::from_tar(&p).unwrap();
    (dir, t)
}

fn reread(t: &Tree) -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.tar");
    t.write_tar(std::fs::File::create(&p).unwrap()).unwrap();
    let t2 = Tree::from_tar(&p).unwrap();
    (dir, t2)
}

#[test]
fn tar_round_trip_keeps_modes_links_devices_and_xattrs() {
    let (_d, t) = base_tree();
    let (_d2, t2) = reread(&t);
    assert_eq!(t2.get("usr/bin/passwd").unwrap().mode, 0o4755);
    assert!(matches!(&t2.get("bin").unwrap().kind, Kind::Symlink(s) if s == "usr/bin"));
    assert!(
        matches!(&t2.get("usr/bin/sh.hardlink").unwrap().kind, Kind::Hardlink(s) if s == "usr/bin/sh")
    );
    assert!(matches!(
        t2.get("dev/null").unwrap().kind,
        Kind::Char { major: 1, minor: 3 }
    ));
    assert_eq!(
        t2.get("usr/bin/ping").unwrap().xattrs["security.capability"],
        [1, 0, 0, 2, 0, 32, 0, 0]
    );
    assert_eq!(
        t2.read("etc/passwd").unwrap(),
        t.read("etc/passwd").unwrap()
    );
    assert_eq!(t2.len(), t.len());
}

#[test]
fn written_tar_is_deterministic() {
    let (_d, t) = base_tree();
    let mut a = Vec::new();
    let mut b = Vec::new();
    t.write_tar(&mut a).unwrap();
    t.write_tar(&mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn resolve_follows_relative_and_absolute_symlinks() {
    let (_d, mut t) = base_tree();
    assert_eq!(t.resolve("etc/os-release").unwrap(), "usr/lib/os-release");
    assert_eq!(t.resolve("bin/sh").unwrap(), "usr/bin/sh");
    t.insert("etc/abs", Entry::symlink("/usr/lib/os-release", 0));
    assert!(
        t.read("etc/abs")
            .unwrap()
            .unwrap()
            .starts_with(b"PRETTY_NAME")
    );
}

#[test]
fn insert_creates_parents_and_remove_takes_subtree() {
    let mut t = Tree::new();
    t.insert("a/b/c", Entry::file(b"x".to_vec(), 0o600, 5));
    assert!(matches!(t.get("a/b").unwrap().kind, Kind::Dir));
    t.insert("a-b", Entry::file(b"y".to_vec(), 0o644, 5));
    assert_eq!(t.remove("a"), 3);
    assert!(
        t.get("a-b").is_some(),
        "a sibling with a similar name survives"
    );
}

#[test]
fn replacing_a_hardlinked_file_keeps_the_link_content() {
    let (_d, mut t) = base_tree();
    let old = t.read("usr/bin/sh").unwrap().unwrap();
    t.insert("usr/bin/sh", Entry::file(b"new".to_vec(), 0o755, 0));
    assert_eq!(t.read("usr/bin/sh.hardlink").unwrap().unwrap(), old);
}

#[test]
fn normalise_moves_link_content_to_the_first_path_and_clamps_mtime() {
    let mut t = Tree::new();
    t.insert("z", Entry::file(b"data".to_vec(), 0o644, 9_999_999_999));
    t.insert(
        "a",
        Entry {
            kind: Kind::Hardlink("z".into()),
            ..Entry::file(Vec::new(), 0o644, 1)
        },
    );
    t.normalise(1000);
    assert!(matches!(t.get("a").unwrap().kind, Kind::File(_)));
    assert!(matches!(&t.get("z").unwrap().kind, Kind::Hardlink(s) if s == "a"));
    assert_eq!(t.get("a").unwrap().mtime, 1000);
    assert_eq!(t.get("z").unwrap().mtime, 1000);
}

#[test]
fn overlay_sets_default_and_given_attributes() {
    let (_d, mut t) = base_tree();
    let ov = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ov.path().join("etc/app")).unwrap();
    std::fs::write(ov.path().join("etc/app/secret.conf"), "k=v\n").unwrap();
    std::fs::write(ov.path().join("etc/app/plain.conf"), "p\n").unwrap();
    std::os::unix::fs::symlink("plain.conf", ov.path().join("etc/app/link")).unwrap();
    let etc_mode = t.get("etc").unwrap().mode;
    let spec = OverlaySpec {
        path: "overlays/x".into(),
        dir: ov.path().to_path_buf(),
        modes: BTreeMap::from([("etc/app/secret.conf".into(), 0o640)]),
        owners: BTreeMap::from([("etc/app/secret.conf".into(), "root:www-data".into())]),
        allow_secrets: Vec::new(),
        at: "profiles/x.toml:3".into(),
    };
    assert_eq!(apply_overlay(&mut t, &spec, 42).unwrap(), 5);
    let s = t.get("etc/app/secret.conf").unwrap();
    assert_eq!((s.mode, s.uid, s.gid, s.mtime), (0o640, 0, 33, 42));
    let p = t.get("etc/app/plain.conf").unwrap();
    assert_eq!((p.mode, p.uid, p.gid), (0o644, 0, 0));
    assert_eq!(t.get("etc/app").unwrap().mode, 0o755);
    assert_eq!(t.get("etc").unwrap().mode, etc_mode);
    assert!(matches!(&t.get("etc/app/link").unwrap().kind, Kind::Symlink(s) if s == "plain.conf"));
    let mut buf = String::new();
    let Kind::File(c) = &s.kind else { panic!() };
    t.open(c).unwrap().read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "k=v\n");
}

#[test]
fn overlay_owner_must_exist_in_the_image() {
    let (_d, mut t) = base_tree();
    let ov = tempfile::tempdir().unwrap();
    std::fs::write(ov.path().join("f"), "x").unwrap();
    let spec = OverlaySpec {
        path: "overlays/x".into(),
        dir: ov.path().to_path_buf(),
        modes: BTreeMap::new(),
        owners: BTreeMap::from([("f".into(), "nobody-here".into())]),
        allow_secrets: Vec::new(),
        at: "profiles/x.toml:3".into(),
    };
    let msg = format!("{:#}", apply_overlay(&mut t, &spec, 0).unwrap_err());
    assert!(msg.contains("no user `nobody-here`"), "{msg}");
}

/// The identity the generate tests give an image.
fn identity() -> Generated<'static> {
    Generated {
        image_id: "prod",
        version: "1.2",
        hostname: "web1",
        root_partuuid: "r-uuid",
        esp_partuuid: "e-uuid",
        ssh_host_keys: &crate::profile::schema::HostKeyType::ALL,
        grow_root: true,
    }
}

#[test]
fn generate_writes_identity_and_drops_host_and_secret_files() {
    let (_d, mut t) = base_tree();
    generate(&mut t, &identity(), 7).unwrap();
    assert_eq!(t.read("etc/hostname").unwrap().unwrap(), b"web1\n");
    let osr = String::from_utf8(t.read("etc/os-release").unwrap().unwrap()).unwrap();
    assert!(
        osr.contains("ID=debian\nIMAGE_ID=prod\nIMAGE_VERSION=1.2\n"),
        "{osr}"
    );
    assert!(
        matches!(t.get("etc/os-release").unwrap().kind, Kind::Symlink(_)),
        "symlink kept"
    );
    assert_eq!(
        t.read("etc/machine-id").unwrap().unwrap(),
        b"uninitialized\n"
    );
    assert!(t.get("etc/ssh/ssh_host_ed25519_key").is_none());
    assert!(
        t.get("etc/systemd/system/ssh.service.wants/imagebuild-ssh-hostkeys.service")
            .is_some()
    );
    let unit = String::from_utf8(
        t.read("usr/lib/systemd/system/imagebuild-ssh-hostkeys.service")
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        unit.contains("DefaultDependencies=no\nAfter=systemd-remount-fs.service\n"),
        "keys are made early: {unit}"
    );
    // Runs until the key ssh-keygen -A makes last exists.
    assert!(
        unit.contains("ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n"),
        "{unit}"
    );
    let fstab = String::from_utf8(t.read("etc/fstab").unwrap().unwrap()).unwrap();
    assert!(fstab.contains("PARTUUID=r-uuid / ext4"));
    assert!(
        fstab.contains("PARTUUID=e-uuid /boot/efi vfat umask=0077,nofail,x-systemd.automount,"),
        "the boot does not wait for the ESP: {fstab}"
    );
}

/// A tree with Debian 13's first-boot key unit, through generate with host key `types`.
fn generated_with_sshd_keygen(
    types: &[crate::profile::schema::HostKeyType],
) -> (tempfile::TempDir, Tree) {
    let (d, mut t) = base_tree();
    t.insert(
        "usr/lib/systemd/system/sshd-keygen.service",
        Entry::file(b"[Unit]\nConditionFirstBoot=yes\n".to_vec(), 0o644, 0),
    );
    let mut g = identity();
    g.ssh_host_keys = types;
    generate(&mut t, &g, 7).unwrap();
    (d, t)
}

/// The text of `path` in `t`, which must exist.
fn text(t: &Tree, path: &str) -> String {
    String::from_utf8(t.read(path).unwrap().expect(path)).unwrap()
}

const KEYGEN_DROP_IN: &str = "etc/systemd/system/sshd-keygen.service.d/10-imagebuild-early.conf";

#[test]
fn debian_first_boot_key_generation_is_moved_early() {
    let (_d, t) = generated_with_sshd_keygen(&crate::profile::schema::HostKeyType::ALL);
    let drop_in = text(&t, KEYGEN_DROP_IN);
    assert!(
        drop_in.contains("[Unit]\nDefaultDependencies=no\nAfter=systemd-remount-fs.service\n"),
        "{drop_in}"
    );
    assert!(drop_in.contains("Conflicts=shutdown.target\nBefore=shutdown.target\n"));
    assert!(
        t.get("usr/lib/systemd/system/imagebuild-ssh-hostkeys.service")
            .is_none(),
        "no second key unit"
    );
}

#[test]
fn chosen_host_key_types_are_generated_and_loaded_and_no_others() {
    use crate::profile::schema::HostKeyType;
    let (_d, t) = generated_with_sshd_keygen(&[HostKeyType::Ed25519, HostKeyType::Ecdsa]);
    let drop_in = text(&t, KEYGEN_DROP_IN);
    // Debian's `ssh-keygen -A` is replaced by one command per type, in the profile's order.
    let exec: Vec<&str> = drop_in
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec.len(), 3, "{drop_in}");
    assert_eq!(exec[0], "ExecStart=");
    assert!(
        exec[1].contains("-t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key'"),
        "{drop_in}"
    );
    assert!(
        exec[2].contains("-t ecdsa -N \"\" -f /etc/ssh/ssh_host_ecdsa_key'"),
        "{drop_in}"
    );
    assert!(!drop_in.contains("rsa"), "{drop_in}");
    let config = text(&t, "etc/ssh/sshd_config.d/10-imagebuild-host-keys.conf");
    let keys: Vec<&str> = config
        .lines()
        .filter(|l| l.starts_with("HostKey"))
        .collect();
    assert_eq!(
        keys,
        [
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            "HostKey /etc/ssh/ssh_host_ecdsa_key"
        ]
    );

    // All three (the default) leaves Debian's command and sshd's own list alone.
    let (_d, t) = generated_with_sshd_keygen(&HostKeyType::ALL);
    let drop_in = text(&t, KEYGEN_DROP_IN);
    assert!(!drop_in.contains("ExecStart"), "{drop_in}");
    assert!(
        t.get("etc/ssh/sshd_config.d/10-imagebuild-host-keys.conf")
            .is_none()
    );
}

#[test]
fn sshd_start_skips_the_separate_config_test_only_in_debians_unit() {
    let unit = |pre: &str| {
        format!(
            "[Service]\n{pre}ExecStart=/usr/sbin/sshd -D $SSHD_OPTS\nExecReload=/usr/sbin/sshd -t\n"
        )
    };
    let drop_in = "etc/systemd/system/ssh.service.d/10-imagebuild-start.conf";
    for (pre, expected) in [
        ("ExecStartPre=/usr/sbin/sshd -t\n", true),
        ("", false),
        (
            "ExecStartPre=/usr/sbin/sshd -t\nExecStartPre=/usr/local/bin/x\n",
            false,
        ),
    ] {
        let (_d, mut t) = base_tree();
        t.insert(
            "usr/lib/systemd/system/ssh.service",
            Entry::file(unit(pre).into_bytes(), 0o644, 0),
        );
        generate(&mut t, &identity(), 7).unwrap();
        let got = t.read(drop_in).unwrap();
        assert_eq!(got.is_some(), expected, "{pre:?}");
        if let Some(d) = got {
            let d = String::from_utf8(d).unwrap();
            assert!(d.ends_with("[Service]\nExecStartPre=\n"), "{d}");
        }
    }
}

#[test]
fn dpkg_status_lists_only_installed_packages() {
    let (_d, mut t) = base_tree();
    t.insert(
        "boot/vmlinuz-6.12.9-cloud",
        Entry::file(b"k".to_vec(), 0o644, 0),
    );
    t.insert(
        "boot/vmlinuz-6.12.10-cloud",
        Entry::file(b"k".to_vec(), 0o644, 0),
    );
    let p = generate::installed_packages(&t).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].name.as_str(), p[0].version.as_str()),
        ("base-files", "13.8")
    );
    assert_eq!(
        generate::kernel_versions(&t),
        ["6.12.9-cloud", "6.12.10-cloud"],
        "newest last"
    );
}

#[test]
fn generate_adds_the_enabled_hostname_unit_and_its_script() {
    use super::machine::{HOSTNAME_SCRIPT, HOSTNAME_UNIT, HOSTNAME_WANTS};
    let (_d, mut t) = base_tree();
    generate(&mut t, &identity(), 7).unwrap();
    assert!(
        matches!(&t.get(HOSTNAME_WANTS).unwrap().kind, Kind::Symlink(s) if *s == format!("/{HOSTNAME_UNIT}"))
    );
    assert_eq!(t.get(HOSTNAME_UNIT).unwrap().mode, 0o644);
    assert_eq!(t.get(HOSTNAME_SCRIPT).unwrap().mode, 0o755);
    let unit = String::from_utf8(t.read(HOSTNAME_UNIT).unwrap().unwrap()).unwrap();
    assert!(
        unit.contains(&format!("\nExecStart=/{HOSTNAME_SCRIPT}\n")),
        "{unit}"
    );
    // The profile's hostname is still the image's.
    assert_eq!(t.read("etc/hostname").unwrap().unwrap(), b"web1\n");
}
