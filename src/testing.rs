//! A small synthetic root filesystem, for tests that must not need the network: it has
//! what the pipeline looks at (passwd, group, shadow and gshadow as Debian 13 writes
//! them, /etc/skel, os-release symlink, dpkg status, SSH host keys and an sshd_config,
//! systemd units with [Install] sections and one enabled timer, merged /usr, a setuid
//! binary, a hard link, a device node, a file capability). It has no kernel, so images
//! built from it have an empty ESP.

use crate::profile::Arch;

/// Builds the synthetic base as an uncompressed tar; dpkg lists base-files 13.8.
pub fn synthetic_base_tar(arch: Arch) -> Vec<u8> {
    synthetic_base_tar_with_packages(arch, &[("base-files", "13.8")])
}

/// The synthetic base with dpkg listing `packages` (name, version) as installed (and one
/// package removed with its configuration kept, which is not installed).
pub fn synthetic_base_tar_with_packages(arch: Arch, packages: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dirs = [
        "boot",
        "dev",
        "etc",
        "etc/skel",
        "etc/ssh",
        "etc/ssh/sshd_config.d",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/timers.target.wants",
        "home",
        "usr",
        "usr/bin",
        "usr/lib",
        "usr/lib/systemd",
        "usr/lib/systemd/system",
        "usr/sbin",
        "var",
        "var/lib",
        "var/lib/dpkg",
    ];
    for d in dirs {
        add(&mut b, d, tar::EntryType::Directory, 0o755, b"", None);
    }
    add(
        &mut b,
        "lib",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("usr/lib"),
    );
    for (path, mode, text) in ACCOUNT_FILES.iter().chain(SKEL) {
        add(
            &mut b,
            path,
            tar::EntryType::Regular,
            *mode,
            text.as_bytes(),
            None,
        );
    }
    for (name, text) in UNITS {
        let path = format!("usr/lib/systemd/system/{name}");
        add(
            &mut b,
            &path,
            tar::EntryType::Regular,
            0o644,
            text.as_bytes(),
            None,
        );
    }
    // Debian enables apt-daily.timer when apt is installed.
    add(
        &mut b,
        "etc/systemd/system/timers.target.wants/apt-daily.timer",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("/usr/lib/systemd/system/apt-daily.timer"),
    );
    add(
        &mut b,
        "bin",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("usr/bin"),
    );
    add(
        &mut b,
        "etc/hostname",
        tar::EntryType::Regular,
        0o644,
        b"build-host\n",
        None,
    );
    add(
        &mut b,
        "etc/os-release",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("../usr/lib/os-release"),
    );
    add(
        &mut b,
        "usr/lib/os-release",
        tar::EntryType::Regular,
        0o644,
        b"PRETTY_NAME=\"Synthetic\"\nID=debian\n",
        None,
    );
    add(
        &mut b,
        "etc/ssh/ssh_host_ed25519_key",
        tar::EntryType::Regular,
        0o600,
        b"secret",
        None,
    );
    let elf = fake_elf(arch.elf_machine());
    add(
        &mut b,
        "usr/bin/passwd",
        tar::EntryType::Regular,
        0o4755,
        &elf,
        None,
    );
    add(
        &mut b,
        "usr/bin/sh",
        tar::EntryType::Regular,
        0o755,
        &elf,
        None,
    );
    add(
        &mut b,
        "usr/bin/sh.hardlink",
        tar::EntryType::Link,
        0o755,
        b"",
        Some("usr/bin/sh"),
    );
    add(
        &mut b,
        "usr/lib/systemd/systemd",
        tar::EntryType::Regular,
        0o755,
        &elf,
        None,
    );
    add(
        &mut b,
        "usr/bin/bash",
        tar::EntryType::Regular,
        0o755,
        &elf,
        None,
    );
    add(
        &mut b,
        "usr/sbin/sshd",
        tar::EntryType::Regular,
        0o755,
        &elf,
        None,
    );
    add(
        &mut b,
        "var/lib/dpkg/status",
        tar::EntryType::Regular,
        0o644,
        dpkg_status(packages).as_bytes(),
        None,
    );
    let mut h = header(tar::EntryType::Char, 0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
    // A file capability, as ping has: a PAX xattr record.
    b.append_pax_extensions([(
        "SCHILY.xattr.security.capability",
        &[1u8, 0, 0, 2, 0, 32, 0, 0][..],
    )])
    .unwrap();
    add(
        &mut b,
        "usr/bin/ping",
        tar::EntryType::Regular,
        0o755,
        &elf,
        None,
    );
    b.into_inner().unwrap()
}

/// Account files as a Debian 13 minbase has them (shadow files 0640 root:shadow in
/// Debian; root-owned here, the tar header has no group argument).
pub const ACCOUNT_FILES: &[(&str, u32, &str)] = &[
    (
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    (
        "etc/group",
        0o644,
        "root:x:0:\ndaemon:x:1:\nsudo:x:27:\nwww-data:x:33:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n",
    ),
    (
        "etc/shadow",
        0o640,
        "root:*:20454:0:99999:7:::\ndaemon:*:20454:0:99999:7:::\nwww-data:*:20454:0:99999:7:::\nnobody:*:20454:0:99999:7:::\n",
    ),
    (
        "etc/gshadow",
        0o640,
        "root:*::\ndaemon:*::\nsudo:*::\nwww-data:*::\nshadow:*::\nusers:*::\nnogroup:*::\n",
    ),
    (
        "etc/ssh/sshd_config",
        0o644,
        "\n# This is the sshd server system-wide configuration file.\n\nInclude /etc/ssh/sshd_config.d/*.conf\n\n#PermitRootLogin prohibit-password\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n",
    ),
];

/// /etc/skel as base-files and bash leave it.
const SKEL: &[(&str, u32, &str)] = &[
    ("etc/skel/.bashrc", 0o644, "# ~/.bashrc\n"),
    ("etc/skel/.profile", 0o644, "# ~/.profile\n"),
    ("etc/skel/.bash_logout", 0o644, "# ~/.bash_logout\n"),
];

/// Units in /usr/lib/systemd/system, shaped like Debian 13's (docker.io, openssh-server,
/// apt, util-linux, systemd).
pub const UNITS: &[(&str, &str)] = &[
    (
        "docker.service",
        "[Unit]\nDescription=Docker Application Container Engine\nAfter=network-online.target docker.socket\nRequires=docker.socket\n\n[Service]\nType=notify\nExecStart=/usr/sbin/dockerd -H fd://\n\n[Install]\nWantedBy=multi-user.target\n",
    ),
    (
        "docker.socket",
        "[Unit]\nDescription=Docker Socket for the API\n\n[Socket]\nListenStream=/run/docker.sock\nSocketGroup=docker\n\n[Install]\nWantedBy=sockets.target\n",
    ),
    (
        "ssh.service",
        "[Unit]\nDescription=OpenBSD Secure Shell server\nAfter=network.target auditd.service\n\n[Service]\nExecStart=/usr/sbin/sshd -D $SSHD_OPTS\n\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
    ),
    (
        "apt-daily.timer",
        "[Unit]\nDescription=Daily apt download activities\n\n[Timer]\nOnCalendar=*-*-* 6,18:00\nRandomizedDelaySec=12h\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n",
    ),
    (
        "apt-daily.service",
        "[Unit]\nDescription=Daily apt download activities\nDocumentation=man:apt(8)\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/apt/apt.systemd.daily update\n",
    ),
    (
        "getty@.service",
        "[Unit]\nDescription=Getty on %I\n\n[Service]\nExecStart=-/sbin/agetty -o '-- \\\\u' --noreset --noclear - ${TERM}\n\n[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
    ),
    (
        "serial-getty@.service",
        "[Unit]\nDescription=Serial Getty on %I\n\n[Service]\nExecStart=-/sbin/agetty -o '-- \\\\u' --keep-baud 115200,57600,38400,9600 - ${TERM}\n\n[Install]\nWantedBy=getty.target\n",
    ),
    (
        "fstrim.timer",
        "[Unit]\nDescription=Discard unused filesystem blocks once a week\n\n[Timer]\nOnCalendar=weekly\n\n[Install]\nWantedBy=timers.target\nAlso=fstrim.service\n",
    ),
    (
        "fstrim.service",
        "[Unit]\nDescription=Discard unused blocks on filesystems from /etc/fstab\n\n[Service]\nType=oneshot\nExecStart=/sbin/fstrim --listed-in /etc/fstab:/proc/self/mountinfo --verbose --quiet-unsupported\n",
    ),
];

fn dpkg_status(packages: &[(&str, &str)]) -> String {
    let mut s: String = packages
        .iter()
        .map(|(name, version)| {
            format!(
                "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
            )
        })
        .collect();
    s.push_str("Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n");
    s
}

fn header(t: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(t);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(0);
    h
}

fn add(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    t: tar::EntryType,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = header(t, mode);
    if let Some(l) = link {
        b.append_link(&mut h, path, l).unwrap();
    } else {
        h.set_size(data.len() as u64);
        let p = if t == tar::EntryType::Directory {
            format!("{path}/")
        } else {
            path.to_string()
        };
        b.append_data(&mut h, p, data).unwrap();
    }
}

/// A 64-byte ELF header for `machine`.
pub fn fake_elf(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2;
    h[5] = 1;
    h[6] = 1;
    h[16] = 2;
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20] = 1;
    h[52] = 64;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::generate::parse_dpkg_status;

    #[test]
    fn dpkg_status_lists_the_packages_as_installed() {
        let status = dpkg_status(&[("base-files", "13.9"), ("hello", "2.10")]);
        let got: Vec<_> = parse_dpkg_status(&status)
            .into_iter()
            .map(|p| (p.name, p.version))
            .collect();
        assert_eq!(
            got,
            [
                ("base-files".to_string(), "13.9".to_string()),
                ("hello".to_string(), "2.10".to_string())
            ]
        );
    }
}
