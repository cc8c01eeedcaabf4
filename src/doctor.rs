//! `imagebuild doctor`: what this host lacks, and the command that fixes it.

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::host::which;

struct Need {
    what: &'static str,
    ok: bool,
    detail: String,
}

/// Prints one line per requirement; exit 1 if any is missing.
pub fn run() -> ExitCode {
    let needs = check();
    let mut missing = 0;
    for n in &needs {
        let mark = if n.ok { "ok     " } else { "MISSING" };
        crate::out!("{mark} {:<28} {}", n.what, n.detail);
        missing += usize::from(!n.ok);
    }
    if missing == 0 {
        crate::out!("\nthis host has everything imagebuild needs");
        ExitCode::SUCCESS
    } else {
        crate::out!("\n{missing} missing; fix: sudo scripts/host-setup.sh");
        ExitCode::FAILURE
    }
}

fn tool(what: &'static str, bin: &str, package: &str) -> Need {
    match which(bin) {
        Some(p) => Need {
            what,
            ok: true,
            detail: p.display().to_string(),
        },
        None => Need {
            what,
            ok: false,
            detail: format!("`{bin}` not found (package {package})"),
        },
    }
}

fn file(what: &'static str, path: &str, package: &str) -> Need {
    let ok = Path::new(path).exists();
    Need {
        what,
        ok,
        detail: if ok {
            path.to_string()
        } else {
            format!("{path} not found (package {package})")
        },
    }
}

fn check() -> Vec<Need> {
    let mut v = vec![
        tool("mmdebstrap", "mmdebstrap", "mmdebstrap"),
        mke2fs_version(),
        tool("fsck.fat", "fsck.fat", "dosfstools"),
        tool("sfdisk", "sfdisk", "fdisk"),
        tool("qemu-img", "qemu-img", "qemu-utils"),
        tool(
            "qemu-system-x86_64",
            "qemu-system-x86_64",
            "qemu-system-x86",
        ),
        tool(
            "qemu-system-aarch64",
            "qemu-system-aarch64",
            "qemu-system-arm",
        ),
        file(
            "OVMF firmware (amd64)",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "ovmf",
        ),
        file(
            "AAVMF firmware (arm64)",
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "qemu-efi-aarch64",
        ),
    ];
    if std::env::consts::ARCH == "x86_64" {
        let ok = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
            .is_ok_and(|s| s.starts_with("enabled"));
        let detail = if ok {
            "qemu-aarch64 registered".into()
        } else {
            "qemu-aarch64 not registered (qemu-user-static)".into()
        };
        v.push(Need {
            what: "arm64 binfmt",
            ok,
            detail,
        });
    }
    v
}

/// mke2fs must be >= 1.47.1 to read a tar file with -d.
fn mke2fs_version() -> Need {
    let what = "mke2fs >= 1.47.1";
    let host = crate::host::Host::new(false);
    let out = which("mke2fs").and_then(|p| host.run(Command::new(p).arg("-V")).ok());
    let Some(out) = out else {
        return Need {
            what,
            ok: false,
            detail: "mke2fs not found (package e2fsprogs)".into(),
        };
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split_whitespace().nth(1).unwrap_or("?").to_string();
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    let ok = parts >= vec![1, 47, 1];
    let detail = if ok {
        version
    } else {
        format!("{version} cannot read tar files (e2fsprogs from backports)")
    };
    Need { what, ok, detail }
}
