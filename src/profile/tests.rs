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
    assert_eq!(a.id, b.id, "same content, same recipe id");
    assert_eq!(a.id.len(), 64);
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
