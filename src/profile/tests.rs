use super::*;

fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let project = Project::new(dir.path());
    (dir, project)
}

fn err(project: &Project, name: &str) -> (String, Vec<String>) {
    let e = Recipe::load(project, name).unwrap_err();
    (format!("{e:#}"), crate::error::hints(&e))
}

const BASE: &str = "[image]\narch = \"amd64\"\nversion = \"1.0\"\n[base]\ndistro = \"debian\"\n[packages]\ninclude = [\"systemd\", \"vim\"]\n";

#[test]
fn extends_merges_with_removal_and_child_wins() {
    let (_d, p) = project(&[
        ("profiles/base.toml", BASE),
        (
            "profiles/web.toml",
            "extends = [\"base\"]\n[image]\nversion = \"2.0\"\n[packages]\ninclude = [\"-vim\", \"nginx\"]\n",
        ),
    ]);
    let r = Recipe::load(&p, "web").unwrap();
    assert_eq!(r.version, "2.0");
    assert_eq!(r.arch, Arch::Amd64);
    let BaseSpec::Debian {
        packages, suite, ..
    } = &r.base
    else {
        panic!()
    };
    assert_eq!(packages, &["systemd", "nginx"]);
    assert_eq!(suite, "trixie");
    assert_eq!(r.image_name, "web");
    assert!(!r.show().contains("extends"));
}

#[test]
fn malformed_toml_names_file_and_line() {
    let (_d, p) = project(&[(
        "profiles/bad.toml",
        "[image]\narch = \"amd64\"\nversion = 1.0.0\n",
    )]);
    let (msg, hints) = err(&p, "bad");
    assert!(msg.starts_with("profiles/bad.toml:3:"), "{msg}");
    assert!(hints[0].contains("syntax"));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let (_d, p) = project(&[(
        "profiles/x.toml",
        "[image]\narch = \"amd64\"\n\n[packages]\ninclud = [\"vim\"]\n",
    )]);
    let (msg, _) = err(&p, "x");
    assert!(msg.starts_with("profiles/x.toml:5:"), "{msg}");
    assert!(msg.contains("unknown field `includ`"), "{msg}");
}

#[test]
fn unknown_architecture_is_an_error_with_line() {
    let (_d, p) = project(&[(
        "profiles/x.toml",
        "[image]\nversion = \"1\"\narch = \"riscv64\"\n",
    )]);
    let (msg, _) = err(&p, "x");
    assert!(msg.starts_with("profiles/x.toml:3:"), "{msg}");
    assert!(msg.contains("riscv64") && msg.contains("amd64"), "{msg}");
}

#[test]
fn extends_cycle_is_reported_with_the_path() {
    let (_d, p) = project(&[
        ("profiles/a.toml", "extends = [\"b\"]\n"),
        ("profiles/b.toml", "\nextends = [\"a\"]\n"),
    ]);
    let (msg, _) = err(&p, "a");
    assert!(
        msg.contains("profiles/b.toml:2: extends cycle: a -> b -> a"),
        "{msg}"
    );
}

#[test]
fn missing_parent_names_the_file() {
    let (_d, p) = project(&[("profiles/a.toml", "extends = [\"nope\"]\n")]);
    let (msg, hints) = err(&p, "a");
    assert!(
        msg.contains("profiles/a.toml:1: extends `nope`, but profiles/nope.toml does not exist"),
        "{msg}"
    );
    assert!(hints[0].contains("a"), "{hints:?}");
}

#[test]
fn missing_overlay_directory_names_the_line() {
    let text = format!("{BASE}\n[[overlay]]\npath = \"overlays/gone\"\n");
    let (_d, p) = project(&[("profiles/x.toml", &text)]);
    let (msg, hints) = err(&p, "x");
    assert!(
        msg.contains("profiles/x.toml:10: overlay directory overlays/gone does not exist"),
        "{msg}"
    );
    assert!(hints[0].contains("create overlays/gone"));
}

#[test]
fn tarball_base_needs_sha256() {
    let (_d, p) = project(&[(
        "profiles/x.toml",
        "[image]\narch = \"arm64\"\nversion = \"1\"\n[base]\ntarball = \"b.tar\"\n",
    )]);
    let (msg, _) = err(&p, "x");
    assert!(msg.contains("tarball base without sha256"), "{msg}");
}

#[test]
fn digest_is_stable_and_tracks_content() {
    let (_d, p) = project(&[("profiles/a.toml", BASE), ("profiles/b.toml", BASE)]);
    let a = Recipe::load(&p, "a").unwrap();
    let b = Recipe::load(&p, "b").unwrap();
    assert_eq!(a.content_id, b.content_id, "same content");
    assert_ne!(
        a.id, b.id,
        "same text under two names: two images (hostname, image name, ids)"
    );
    assert_eq!(a.id.len(), 64);
    assert_eq!(Recipe::load(&p, "a").unwrap().id, a.id, "stable");
    let (_d2, p2) = project(&[("profiles/a.toml", &BASE.replace("1.0", "1.1"))]);
    assert_ne!(Recipe::load(&p2, "a").unwrap().id, a.id);
}

#[test]
fn list_finds_profiles_sorted() {
    let (_d, p) = project(&[
        ("profiles/b.toml", ""),
        ("profiles/a.toml", ""),
        ("profiles/notes.txt", ""),
    ]);
    assert_eq!(p.list().unwrap(), ["a", "b"]);
}

#[test]
fn missing_required_key_says_where_to_add_it() {
    let (_d, p) = project(&[("profiles/x.toml", "[image]\narch = \"amd64\"\n")]);
    let (msg, hints) = err(&p, "x");
    assert!(msg.contains("no `version`"), "{msg}");
    assert!(hints[0].contains("under [image]"));
}

#[test]
fn users_and_services_are_read_with_defaults() {
    let text = format!(
        "{BASE}\n[[user]]\nname = \"deploy\"\ngroups = [\"sudo\", \"docker\"]\n\n[services]\nenable = [\"docker\", \"ssh.service\"]\ndisable = [\"apt-daily.timer\"]\n"
    );
    let (_d, p) = project(&[
        ("profiles/base.toml", &text),
        (
            "profiles/x.toml",
            "extends = [\"base\"]\n[[user]]\nname = \"ci\"\nuid = 2000\n[services]\nenable = [\"docker.service\"]\n",
        ),
    ]);
    let r = Recipe::load(&p, "x").unwrap();
    let names: Vec<_> = r.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["deploy", "ci"]);
    let deploy = &r.users[0];
    assert!(deploy.sudo, "sudo in groups means sudo");
    assert_eq!(deploy.home, "/home/deploy");
    assert_eq!(deploy.at, "profiles/base.toml:10");
    assert_eq!(deploy.groups[1].name, "docker");
    assert_eq!(deploy.groups[1].at, "profiles/base.toml:11");
    assert_eq!(r.users[1].uid, Some(2000));
    let enable: Vec<_> = r.services.enable.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        enable,
        ["docker.service", "ssh.service"],
        "a union, with .service added"
    );
    assert_eq!(r.services.disable[0].at, "profiles/base.toml:15");
}

#[test]
fn bad_users_and_services_name_file_and_line() {
    let cases = [
        (
            "[[user]]\nname = \"Deploy\"\n",
            "profiles/x.toml:10: [[user]] name \"Deploy\" must start with a lowercase letter",
        ),
        (
            "[[user]]\nname = \"a\"\ngid = 1000\ngroup = \"users\"\n",
            "profiles/x.toml:10: [[user]] a: sets both gid and group",
        ),
        (
            "[[user]]\nname = \"a\"\nssh-keys = [\"ssh-rsa AAAA\"]\n",
            "profiles/x.toml:11: [[user]] a: ssh-keys entry 1 (ssh-rsa) has a base64 blob that is not a ssh-rsa key",
        ),
        (
            "[[user]]\nname = \"a\"\n[[user]]\nname = \"a\"\n",
            "profiles/x.toml:10: [[user]] a: is defined twice",
        ),
        (
            "[services]\nenable = [\"x.timer\"]\nmask = [\"x.timer\"]\n",
            "profiles/x.toml:10: [services]: x.timer is in both enable and mask",
        ),
        (
            "[services]\nenable = [\"../x\"]\n",
            "profiles/x.toml:10: [services]: \"../x\" is not a unit name",
        ),
        (
            "[[user]]\nname = \"a\"\npassword = \"x\"\n",
            "profiles/x.toml:11: unknown field `password`",
        ),
    ];
    for (extra, want) in cases {
        let text = format!("{BASE}\n{extra}");
        let (_d, p) = project(&[("profiles/x.toml", &text)]);
        let (msg, _) = err(&p, "x");
        assert!(msg.starts_with(want), "want {want}\ngot  {msg}");
    }
}

#[test]
fn ssh_host_keys_default_to_all_three_and_are_a_set_across_extends() {
    use schema::HostKeyType::{Ecdsa, Ed25519, Rsa};
    let (_d, p) = project(&[
        ("profiles/base.toml", BASE),
        (
            "profiles/server.toml",
            "extends = [\"base\"]\n[ssh]\nhost-keys = [\"ed25519\", \"ecdsa\", \"rsa\"]\n",
        ),
        (
            "profiles/modern.toml",
            "extends = [\"server\"]\n[ssh]\nhost-keys = [\"ed25519\", \"-rsa\"]\n",
        ),
    ]);
    assert_eq!(
        Recipe::load(&p, "base").unwrap().ssh_host_keys,
        [Rsa, Ecdsa, Ed25519]
    );
    assert_eq!(
        Recipe::load(&p, "modern").unwrap().ssh_host_keys,
        [Ed25519, Ecdsa]
    );
}

#[test]
fn bad_ssh_host_keys_name_file_and_line() {
    for (ssh, want, hint) in [
        (
            "[ssh]\nhost-keys = [\"ed25519\", \"dsa\"]\n",
            "profiles/x.toml:10: [ssh] host-keys: \"dsa\" is not an SSH host key type",
            "ecdsa",
        ),
        (
            "[ssh]\nhost-keys = []\n",
            "profiles/x.toml:10: [ssh] host-keys names no key type",
            "at least one",
        ),
    ] {
        let (_d, p) = project(&[("profiles/x.toml", &format!("{BASE}\n{ssh}"))]);
        let (msg, hints) = err(&p, "x");
        assert_eq!(msg, want);
        assert!(hints[0].contains(hint), "{hints:?}");
    }
}

/// `[[state]]` tables after BASE and a blank line: the first table starts on line 9.
fn state_error(states: &str) -> (String, Vec<String>) {
    let (_d, p) = project(&[("profiles/x.toml", &format!("{BASE}\n{states}"))]);
    err(&p, "x")
}

const SRV: &str = "[[state]]\nlabel = \"srv-data\"\nmount = \"/srv\"\nsize = \"20G\"\n";

#[test]
fn states_are_read_and_append_across_extends() {
    let (_d, p) = project(&[
        (
            "profiles/base.toml",
            &format!("{BASE}\n{SRV}bind = [\"/var/lib/docker\"]\n"),
        ),
        (
            "profiles/x.toml",
            "extends = [\"base\"]\n[[state]]\nlabel = \"vol\"\nmount = \"/data\"\ndevice = \"/dev/disk/by-id/scsi-0HC_Volume_*\"\n",
        ),
    ]);
    let r = Recipe::load(&p, "x").unwrap();
    assert_eq!(
        r.states,
        [
            StateSpec {
                bind: vec!["/var/lib/docker".into()],
                device: None,
                label: "srv-data".into(),
                mount: "/srv".into(),
                size: Some(20 << 30),
                at: "profiles/base.toml:10".into(),
            },
            StateSpec {
                bind: vec![],
                device: Some("/dev/disk/by-id/scsi-0HC_Volume_*".into()),
                label: "vol".into(),
                mount: "/data".into(),
                size: None,
                at: "profiles/x.toml:3".into(),
            },
        ]
    );
    assert!(r.states[0].on_os_disk() && !r.states[1].on_os_disk());
    assert!(r.show().contains("[[state]]"), "{}", r.show());
}

#[test]
fn bad_states_name_file_line_and_the_fix() {
    let state = |label: &str, mount: &str, rest: &str| {
        format!("[[state]]\nlabel = \"{label}\"\nmount = \"{mount}\"\n{rest}")
    };
    let size = "size = \"1G\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            state("srv data", "/srv", size),
            "profiles/x.toml:10: [[state]] label \"srv data\" may hold only letters, digits, `_` and `-`",
            "an ext4 label",
        ),
        (
            state("a-very-long-label", "/srv", size),
            "profiles/x.toml:10: [[state]] label \"a-very-long-label\" is not 1 to 16 characters long",
            "1 to 16",
        ),
        (
            state("a", "srv", size),
            "profiles/x.toml:11: [[state]] a: mount \"srv\" is not an absolute path",
            "from the root",
        ),
        (
            state("a", "/srv/", size),
            "profiles/x.toml:11: [[state]] a: mount \"/srv/\" is not a normalised path",
            "without `//`",
        ),
        (
            state("a", "/srv/../x", size),
            "profiles/x.toml:11: [[state]] a: mount \"/srv/../x\" is not a normalised path",
            "without `//`",
        ),
        (
            state("a", "/", size),
            "profiles/x.toml:11: [[state]] a: mount \"/\" is the root directory",
            "a directory of its own",
        ),
        (
            state("a", "/etc/app", size),
            "profiles/x.toml:11: [[state]] a: mount \"/etc/app\" is under /etc",
            "outside /usr, /etc, /boot, /proc, /sys, /dev, /run",
        ),
        (
            state("a", "/usr", size),
            "profiles/x.toml:11: [[state]] a: mount \"/usr\" is under /usr",
            "outside",
        ),
        (
            state("a", "/srv/my data", size),
            "profiles/x.toml:11: [[state]] a: mount \"/srv/my data\" holds ' '",
            "letters, digits",
        ),
        (
            state("a", "/srv", "device = \"/srv/disk\"\n"),
            "profiles/x.toml:12: [[state]] a: device \"/srv/disk\" is not under /dev/",
            "stable path",
        ),
        (
            state("a", "/srv", "device = \"/dev/disk/by-id/$x\"\n"),
            "profiles/x.toml:12: [[state]] a: device \"/dev/disk/by-id/$x\" holds '$'",
            "device glob",
        ),
        (
            state("a", "/srv", ""),
            "profiles/x.toml:10: [[state]] a: has neither `device` nor `size`",
            "size = \"20G\"",
        ),
        (
            state("a", "/srv", "device = \"/dev/vdb\"\nsize = \"1G\"\n"),
            "profiles/x.toml:13: [[state]] a: sets both `device` and `size`",
            "remove one",
        ),
        (
            state("a", "/srv", "size = \"100K\"\n"),
            "profiles/x.toml:12: [[state]] a: size \"100K\" is not a whole number of MiB",
            "\"256M\"",
        ),
        (
            state("a", "/srv", "size = \"0\"\n"),
            "profiles/x.toml:12: [[state]] a: size \"0\" is not a whole number of MiB",
            "\"256M\"",
        ),
        (
            state("a", "/srv", "size = \"1Q\"\n"),
            "profiles/x.toml:12: `1Q` has an unknown unit; use K, M, G or T",
            "sizes look like",
        ),
        (
            format!("{}{}", state("a", "/srv", size), state("a", "/data", size)),
            "profiles/x.toml:10: [[state]] a: is defined twice (a profile and one it extends?)",
            "its own label",
        ),
        (
            format!("{}{}", state("a", "/srv", size), state("b", "/data", size)),
            "profiles/x.toml:14: [[state]] b: is a second state on the OS disk (a is the first)",
            "give this one a `device`",
        ),
        (
            format!(
                "{}{}",
                state("a", "/srv", size),
                state("b", "/srv", "device = \"/dev/vdb\"\n")
            ),
            "profiles/x.toml:14: [[state]] b: mount \"/srv\" is also the mount of [[state]] a",
            "its own directory",
        ),
        (
            format!(
                "{}{}",
                state("a", "/srv", size),
                state("b", "/srv/b", "device = \"/dev/vdb\"\n")
            ),
            "profiles/x.toml:14: [[state]] b: mount \"/srv/b\" and /srv, the mount of [[state]] a, are one inside the other",
            "beside the others",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbind = [\"var/x\"]\n"),
            "profiles/x.toml:13: [[state]] a: bind \"var/x\" is not an absolute path",
            "from the root",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbind = [\"/\"]\n"),
            "profiles/x.toml:13: [[state]] a: bind \"/\" is the root directory",
            "a directory of its own",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbind = [\"/run/x\"]\n"),
            "profiles/x.toml:13: [[state]] a: bind \"/run/x\" is under /run",
            "outside /usr, /proc, /sys, /dev, /run",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbind = [\"/var/x//y\"]\n"),
            "profiles/x.toml:13: [[state]] a: bind \"/var/x//y\" is not a normalised path",
            "without `//`",
        ),
        (
            state(
                "a",
                "/srv",
                "size = \"1G\"\nbind = [\"/var/x\", \"/var/x\"]\n",
            ),
            "profiles/x.toml:13: [[state]] a: bind \"/var/x\" is listed twice",
            "once",
        ),
        (
            format!(
                "{}{}",
                state("a", "/srv", "size = \"1G\"\nbind = [\"/var/x\"]\n"),
                state("b", "/data", "device = \"/dev/vdb\"\nbind = [\"/var/x\"]\n")
            ),
            "profiles/x.toml:15: [[state]] b: bind \"/var/x\" is also a bind of [[state]] a",
            "one state only",
        ),
        (
            state(
                "a",
                "/srv",
                "size = \"1G\"\nbind = [\"/var/lib/docker\", \"/var/lib/docker/volumes\"]\n",
            ),
            "profiles/x.toml:10: [[state]] a: binds \"/var/lib/docker\" and \"/var/lib/docker/volumes\" are one inside the other",
            "keep the outer one",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbind = [\"/srv/x\"]\n"),
            "profiles/x.toml:10: [[state]] a: bind \"/srv/x\" is inside /srv, the mount of [[state]] a",
            "remove it from `bind`",
        ),
        (
            format!(
                "{}{}",
                state("a", "/srv", "size = \"1G\"\nbind = [\"/data\"]\n"),
                state("b", "/data/b", "device = \"/dev/vdb\"\n")
            ),
            "profiles/x.toml:10: [[state]] a: bind \"/data\" holds /data/b, the mount of [[state]] b",
            "beside the mount",
        ),
        (
            state("a", "/srv", "size = \"1G\"\nbinds = [\"/x\"]\n"),
            "profiles/x.toml:13: unknown field `binds`, expected one of `label`, `mount`, `device`, `size`, `bind`",
            "spelling",
        ),
    ];
    for (states, want, hint) in cases {
        let (msg, hints) = state_error(&states);
        assert_eq!(msg, want, "for:\n{states}");
        assert!(
            hints.iter().any(|h| h.contains(hint)),
            "{want}: hint {hint:?} not in {hints:?}"
        );
    }
}

#[test]
fn hostnames_must_be_rfc_1123_names() {
    let with = |image: &str| BASE.replace("[image]\n", &format!("[image]\n{image}"));
    let too_long = format!("hostname = \"{}\"\n", "a".repeat(300));
    for (image, want) in [
        (
            "hostname = \"\"\n",
            "profiles/x.toml:2: host name \"\" is not valid: it is empty",
        ),
        (
            "hostname = \"web_3\"\n",
            "profiles/x.toml:2: host name \"web_3\" is not valid: '_' is not one of a-z, 0-9, '-' and '.'",
        ),
        (&too_long, "profiles/x.toml:2: host name \"aaaa"),
        (
            "name = \"Prod\"\n",
            "profiles/x.toml:2: the image name is the hostname when [image] hostname is not set, and host name \"Prod\" is not valid: 'P' is upper case; use lower case",
        ),
    ] {
        let (_d, p) = project(&[("profiles/x.toml", &with(image))]);
        let (msg, hints) = err(&p, "x");
        assert!(msg.starts_with(want), "want {want}\ngot  {msg}");
        assert!(
            hints.last().unwrap().contains("labels of 1-63 characters"),
            "{hints:?}"
        );
    }
    let (_d, p) = project(&[("profiles/x.toml", &with(&too_long))]);
    let (msg, _) = err(&p, "x");
    assert!(
        msg.ends_with("it has 300 characters, the kernel keeps at most 64"),
        "{msg}"
    );
    let (_d, p) = project(&[("profiles/x.toml", &with("hostname = \"web-3.example\"\n"))]);
    assert_eq!(Recipe::load(&p, "x").unwrap().hostname, "web-3.example");
    // Without a name either, the profile's name is the image name and the hostname.
    let (_d, p) = project(&[("profiles/web_1.toml", BASE)]);
    let (msg, hints) = err(&p, "web_1");
    assert!(
        msg.starts_with("profiles/web_1.toml:1: the image name is the hostname"),
        "{msg}"
    );
    assert!(hints[0].starts_with("set [image] hostname; "), "{hints:?}");
}

#[test]
fn source_date_epoch_must_fit_the_image() {
    for bad in ["-1", "0", "315532799", "4294967296", "13569465600"] {
        let text = BASE.replace("[base]", &format!("source-date-epoch = {bad}\n[base]"));
        let (_d, p) = project(&[("profiles/x.toml", &text)]);
        let (msg, hints) = err(&p, "x");
        assert!(
            msg.contains(&format!(
                "x.toml:4: source-date-epoch {bad} is outside what the image can hold"
            )),
            "{bad}: {msg}"
        );
        assert!(hints.iter().any(|h| h.contains("1767225600")), "{hints:?}");
    }
    for good in ["315532800", "1767225600", "4294967295"] {
        let text = BASE.replace("[base]", &format!("source-date-epoch = {good}\n[base]"));
        let (_d, p) = project(&[("profiles/x.toml", &text)]);
        assert_eq!(Recipe::load(&p, "x").unwrap().epoch.to_string(), good);
    }
}

#[test]
fn messages_name_the_file_the_line_and_the_fix() {
    // An overlay path that is a file.
    let text = format!("{BASE}[[overlay]]\npath = \"motd\"\n");
    let (_d, p) = project(&[("profiles/x.toml", &text), ("motd", "hi\n")]);
    let (msg, hints) = err(&p, "x");
    assert!(
        msg.contains("x.toml:9: overlay motd is a file, not a directory"),
        "{msg}"
    );
    assert!(
        hints[0].contains("point [[overlay]] path at a directory"),
        "{hints:?}"
    );

    // Not UTF-8: where the first bad byte is.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("profiles")).unwrap();
    std::fs::write(
        d.path().join("profiles/l.toml"),
        b"[image]\nname = \"caf\xe9\"\n",
    )
    .unwrap();
    let (msg, hints) = err(&Project::new(d.path()), "l");
    assert!(
        msg.ends_with(
            "profiles/l.toml:2:12: not UTF-8 (byte 0xe9); profiles are TOML, which is UTF-8"
        ),
        "{msg}"
    );
    assert!(hints[0].contains("save the file as UTF-8"), "{hints:?}");

    // Outside a project: say so, and how to point at one.
    let empty = tempfile::tempdir().unwrap();
    let (msg, hints) = err(&Project::new(empty.path()), "prod");
    assert!(msg.contains("no profile `prod`"), "{msg}");
    assert!(
        hints[0].contains("run imagebuild in a project directory, or pass -C DIR"),
        "{hints:?}"
    );
}

#[test]
fn the_shipped_stack_example_says_how_to_make_its_image() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    for dir in ["profiles", "overlays", "stacks"] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join(dir))
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let _ = std::fs::remove_file(d.path().join("profiles/stack-amd64.lock"));
    let p = Project::new(d.path());
    let (msg, hints) = err(&p, "stack-amd64");
    assert!(
        msg.contains("OCI archive target/stack/hello.oci.tar of stack `web` does not exist"),
        "{msg}"
    );
    assert!(hints[0].contains("`make stack-image`"), "{hints:?}");
    // With the archive `make stack-image` writes, the example loads.
    std::fs::create_dir_all(d.path().join("target/stack")).unwrap();
    std::fs::write(d.path().join("target/stack/hello.oci.tar"), b"").unwrap();
    Recipe::load(&p, "stack-amd64").unwrap();
}
