use super::*;
use crate::profile::Arch;
use crate::testing::synthetic_base_tar;
use crate::tree::generate::{Generated, ROOT_REPART_CONF, generate};

/// `[[state]]` srv-data on the OS disk, with two binds.
fn os_disk() -> StateSpec {
    StateSpec {
        bind: vec!["/var/lib/docker".into(), "/etc/app".into()],
        device: None,
        label: "srv-data".into(),
        mount: "/srv".into(),
        size: Some(256 << 20),
        at: "profiles/x.toml:7".into(),
    }
}

/// `[[state]]` vol-data on a cloud volume, no binds.
fn volume() -> StateSpec {
    StateSpec {
        bind: vec![],
        device: Some("/dev/disk/by-id/scsi-0HC_Volume_*".into()),
        label: "vol-data".into(),
        mount: "/data/vol".into(),
        size: None,
        at: "profiles/x.toml:13".into(),
    }
}

/// The synthetic base with mkfs.ext4, as e2fsprogs installs it.
fn base_tree() -> (tempfile::TempDir, Tree) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.tar");
    std::fs::write(&p, synthetic_base_tar(Arch::Amd64)).unwrap();
    let mut t = Tree::from_tar(&p).unwrap();
    t.insert(
        "usr/sbin/mke2fs",
        Entry::file(b"\x7fELF".to_vec(), 0o755, 0),
    );
    t.insert("usr/sbin/mkfs.ext4", Entry::symlink("mke2fs", 0));
    (dir, t)
}

fn text(t: &Tree, path: &str) -> String {
    String::from_utf8(t.read(path).unwrap().expect(path)).unwrap()
}

fn link(t: &Tree, path: &str) -> String {
    match &t.get(path).expect(path).kind {
        Kind::Symlink(target) => target.clone(),
        other => panic!("{path} is {other:?}"),
    }
}

#[test]
fn escapes_paths_as_systemd_escape_does() {
    // `systemd-escape --path` (systemd 252) printed these.
    for (path, escaped) in [
        ("/var/lib/docker", "var-lib-docker"),
        ("/srv", "srv"),
        ("/srv/my-data", "srv-my\\x2ddata"),
        ("/", "-"),
        ("/srv/.hidden", "srv-.hidden"),
        ("/.hidden", "\\x2ehidden"),
        ("/srv/x+y@z:w", "srv-x\\x2by\\x40z:w"),
        ("/srv//a/", "srv-a"),
        ("/srv/a.b/c_d", "srv-a.b-c_d"),
        ("/srv/ü", "srv-\\xc3\\xbc"),
        ("/srv/a b", "srv-a\\x20b"),
        ("/srv/-x", "srv-\\x2dx"),
        ("/a\\b", "a\\x5cb"),
    ] {
        assert_eq!(escape_path(path), escaped, "{path}");
    }
    assert_eq!(
        mount_unit_name("/var/lib/imagebuild-test"),
        "var-lib-imagebuild\\x2dtest.mount"
    );
}

#[test]
fn systemd_escape_on_this_host_agrees() {
    let paths = ["/var/lib/docker", "/srv/my-data", "/.x", "/a/b.c/d_e:f+g@h"];
    let Ok(out) = std::process::Command::new("systemd-escape")
        .arg("--path")
        .arg("--")
        .args(paths)
        .output()
    else {
        eprintln!("no systemd-escape on this host: skipped");
        return;
    };
    let host: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let ours: Vec<String> = paths.iter().map(|p| escape_path(p)).collect();
    assert_eq!(ours, host);
}

#[test]
fn state_json_has_sorted_keys_in_profile_order() {
    let (_d, mut t) = base_tree();
    install_states(&mut t, &[os_disk(), volume()], 7).unwrap();
    assert_eq!(
        text(&t, STATE_JSON),
        concat!(
            r#"{"states":[{"bind":["/var/lib/docker","/etc/app"],"device":null,"label":"srv-data","mount":"/srv","size":268435456},"#,
            r#"{"bind":[],"device":"/dev/disk/by-id/scsi-0HC_Volume_*","label":"vol-data","mount":"/data/vol","size":null}]}"#,
            "\n"
        )
    );
    let (_d, mut none) = base_tree();
    assert!(install_states(&mut none, &[], 7).unwrap().is_empty());
    assert_eq!(text(&none, STATE_JSON), "{\"states\":[]}\n");
    assert!(none.get("usr/lib/repart.d").is_none(), "nothing else");
}

#[test]
fn os_disk_state_is_a_repart_partition_mounted_by_label() {
    let (_d, mut t) = base_tree();
    install_states(&mut t, &[os_disk()], 7).unwrap();
    assert_eq!(
        text(&t, "usr/lib/repart.d/60-state-srv-data.conf"),
        "# Written by imagebuild: [[state]] srv-data, a partition after the root, made and formatted\n\
         # on first boot. An existing partition of this type is kept as it is.\n\
         [Partition]\nType=linux-generic\nLabel=srv-data\nFormat=ext4\n\
         SizeMinBytes=268435456\nSizeMaxBytes=268435456\n"
    );
    let mount = text(&t, "usr/lib/systemd/system/srv.mount");
    for line in [
        "After=systemd-repart.service",
        "What=/dev/disk/by-label/srv-data",
        "Where=/srv",
        "Type=ext4",
        "WantedBy=local-fs.target",
    ] {
        assert!(mount.lines().any(|l| l == line), "{line}: {mount}");
    }
    assert!(!mount.contains("Requires="), "{mount}");
    assert!(!mount.contains("nofail"), "ordered before local-fs.target");
    assert_eq!(
        link(&t, "etc/systemd/system/local-fs.target.wants/srv.mount"),
        "/usr/lib/systemd/system/srv.mount"
    );
    assert!(t.get(DEVICE_SCRIPT_PATH).is_none());
    assert!(matches!(t.get("srv").unwrap().kind, Kind::Dir));
}

#[test]
fn binds_are_seeded_then_mounted_from_the_state() {
    let (_d, mut t) = base_tree();
    install_states(&mut t, &[os_disk()], 7).unwrap();
    let seed = text(
        &t,
        "usr/lib/systemd/system/imagebuild-state-seed-srv-data.service",
    );
    for line in [
        "DefaultDependencies=no",
        "Requires=srv.mount",
        "After=srv.mount",
        "Before=var-lib-docker.mount etc-app.mount local-fs.target shutdown.target",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/usr/lib/imagebuild/state-seed /srv /var/lib/docker /etc/app",
    ] {
        assert!(seed.lines().any(|l| l == line), "{line}: {seed}");
    }
    let bind = text(&t, "usr/lib/systemd/system/var-lib-docker.mount");
    for line in [
        "Requires=imagebuild-state-seed-srv-data.service",
        "After=imagebuild-state-seed-srv-data.service",
        "What=/srv/var/lib/docker",
        "Where=/var/lib/docker",
        "Options=bind",
        "WantedBy=local-fs.target",
    ] {
        assert!(bind.lines().any(|l| l == line), "{line}: {bind}");
    }
    assert_eq!(
        link(&t, "etc/systemd/system/local-fs.target.wants/etc-app.mount"),
        "/usr/lib/systemd/system/etc-app.mount"
    );
    assert_eq!(text(&t, SEED_SCRIPT_PATH), SEED_SCRIPT);
    assert_eq!(t.get(SEED_SCRIPT_PATH).unwrap().mode, 0o755);
    assert!(matches!(t.get("var/lib/docker").unwrap().kind, Kind::Dir));
}

#[test]
fn a_device_state_waits_for_its_device_and_formats_only_a_blank_one() {
    let (_d, mut t) = base_tree();
    install_states(&mut t, &[volume()], 7).unwrap();
    let unit = text(
        &t,
        "usr/lib/systemd/system/imagebuild-state-device-vol-data.service",
    );
    for line in [
        "DefaultDependencies=no",
        "Before=data-vol.mount shutdown.target",
        "Type=oneshot",
        "ExecStart=/usr/lib/imagebuild/state-device vol-data /dev/disk/by-id/scsi-0HC_Volume_* 30",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}: {unit}");
    }
    let mount = text(&t, "usr/lib/systemd/system/data-vol.mount");
    for line in [
        "Requires=imagebuild-state-device-vol-data.service",
        "After=imagebuild-state-device-vol-data.service",
        "What=/dev/disk/by-label/vol-data",
        "Where=/data/vol",
    ] {
        assert!(mount.lines().any(|l| l == line), "{line}: {mount}");
    }
    assert_eq!(text(&t, DEVICE_SCRIPT_PATH), DEVICE_SCRIPT);
    assert!(t.get("usr/lib/repart.d").is_none(), "no partition to make");
    assert!(t.get(SEED_SCRIPT_PATH).is_none(), "no binds");
}

#[test]
fn the_root_grows_only_without_a_state_on_the_os_disk() {
    let generated = |grow_root: bool| {
        let (d, mut t) = base_tree();
        let g = Generated {
            image_id: "prod",
            version: "1",
            hostname: "h",
            root_partuuid: "r",
            esp_partuuid: "e",
            ssh_host_keys: &crate::profile::schema::HostKeyType::ALL,
            grow_root,
        };
        generate(&mut t, &g, 7).unwrap();
        (d, t)
    };
    let (_d, t) = generated(true);
    assert_eq!(text(&t, ROOT_REPART_CONF).lines().last(), Some("Type=root"));
    let (_d, t) = generated(false);
    assert!(t.get(ROOT_REPART_CONF).is_none());
}

#[test]
fn docker_the_loader_and_every_stack_require_the_state_mounts() {
    let (_d, mut t) = base_tree();
    for unit in [
        "docker.service",
        "imagebuild-images.service",
        "imagebuild-stack-web.service",
        "imagebuild-stack-db.service",
    ] {
        t.insert(
            &format!("usr/lib/systemd/system/{unit}"),
            Entry::file(b"[Unit]\n".to_vec(), 0o644, 0),
        );
    }
    install_states(&mut t, &[os_disk(), volume()], 7).unwrap();
    for unit in [
        "docker.service",
        "imagebuild-images.service",
        "imagebuild-stack-db.service",
        "imagebuild-stack-web.service",
    ] {
        let drop_in = text(
            &t,
            &format!("etc/systemd/system/{unit}.d/50-imagebuild-state.conf"),
        );
        assert!(
            drop_in
                .ends_with("[Unit]\nRequiresMountsFor=/srv /var/lib/docker /etc/app /data/vol\n"),
            "{unit}: {drop_in}"
        );
    }
    assert_eq!(
        t.paths_under("etc/systemd/system")
            .iter()
            .filter(|p| p.ends_with("50-imagebuild-state.conf"))
            .count(),
        4,
        "none for units the image does not have"
    );
}

#[test]
fn each_state_gets_a_health_check() {
    let (_d, mut t) = base_tree();
    let checks = install_states(&mut t, &[os_disk(), volume()], 7).unwrap();
    let labels: Vec<String> = checks.iter().map(Check::label).collect();
    assert_eq!(labels, ["state srv-data", "state vol-data"]);
    assert_eq!(
        checks[0].kind,
        CheckKind::State {
            label: "srv-data".into(),
            mount: "/srv".into(),
            binds: vec!["/var/lib/docker".into(), "/etc/app".into()],
        }
    );
}

#[test]
fn a_state_needs_mkfs_ext4_in_the_image() {
    let (_d, mut t) = base_tree();
    t.remove("usr/sbin/mke2fs");
    let e = install_states(&mut t, &[os_disk()], 7).unwrap_err();
    assert_eq!(
        e.to_string(),
        "profiles/x.toml:7: [[state]] srv-data needs mkfs.ext4, which the image does not have"
    );
    assert_eq!(
        crate::error::hints(&e),
        ["add \"e2fsprogs\" to [packages] include"]
    );
}

#[test]
fn mounts_and_binds_must_be_directories_of_the_image() {
    for (path, entry, key) in [
        (
            "srv",
            Entry::file(b"x".to_vec(), 0o644, 0),
            "mount \"/srv\"",
        ),
        (
            "var/lib/docker",
            Entry::symlink("/opt/docker", 0),
            "bind \"/var/lib/docker\"",
        ),
        ("etc", Entry::symlink("usr/etc", 0), "bind \"/etc/app\""),
    ] {
        let (_d, mut t) = base_tree();
        t.insert(path, entry);
        let e = install_states(&mut t, &[os_disk()], 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("profiles/x.toml:7: [[state]] srv-data: {key} is not a directory in the image"),
        );
    }
}

#[test]
fn the_same_states_give_the_same_tree() {
    let tar = || {
        let (_d, mut t) = base_tree();
        install_states(&mut t, &[os_disk(), volume()], 7).unwrap();
        let mut bytes = Vec::new();
        t.write_tar(&mut bytes).unwrap();
        bytes
    };
    assert_eq!(tar(), tar());
}
