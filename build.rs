//! Builds the two helper programs imagebuild carries, with this same toolchain, and leaves
//! them in OUT_DIR for `include_bytes!`:
//!
//! - `efi/zkernel`, the compressed-kernel loader for arm64 UKIs, an EFI application for
//!   aarch64-unknown-uefi. Paths are remapped and the link has no timestamp or debug
//!   directory (/Brepro /DEBUG:NONE), so the loader's bytes depend on its source, its
//!   Cargo.lock and the Rust toolchain only.
//! - `native/dpkg-backend`, dpkg-deb and dpkg-split for foreign-architecture bootstraps,
//!   statically linked for the host imagebuild is built for, so that it runs inside the
//!   target's root.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const UEFI_TARGET: &str = "aarch64-unknown-uefi";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());

    let zkernel = manifest_dir.join("efi/zkernel");
    let flags = [
        // No timestamp and no debug directory: without /DEBUG:NONE the /Brepro hash still
        // differed between two checkouts.
        "-Clink-arg=/Brepro",
        "-Clink-arg=/DEBUG:NONE",
        // MajorImageVersion 1: systemd-stub starts a `.linux` only if it says it is (like
        // the kernel's EFI stub 1.0) able to take the initrd from LINUX_EFI_INITRD_MEDIA.
        "-Clink-arg=/VERSION:1.0",
    ];
    let built = build(
        &zkernel,
        UEFI_TARGET,
        &flags,
        &out_dir.join("zkernel-target"),
    );
    copy(&built.join("zkernel.efi"), &out_dir.join("zkernel.efi"));

    let backend = manifest_dir.join("native/dpkg-backend");
    let host = env::var("TARGET").unwrap();
    let built = build(
        &backend,
        &host,
        &["-Ctarget-feature=+crt-static"],
        &out_dir.join("dpkg-backend-target"),
    );
    copy(&built.join("dpkg-backend"), &out_dir.join("dpkg-backend"));
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}

/// `cargo build --release` of the crate in `crate_dir` for `target`, with paths remapped
/// and `flags` added; returns the directory that holds what it built.
fn build(crate_dir: &Path, target: &str, flags: &[&str], target_dir: &Path) -> PathBuf {
    for input in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(input).display());
    }
    let name = crate_dir.file_name().unwrap().to_string_lossy();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let mut rustflags = vec![
        "--remap-path-prefix".to_string(),
        format!("{}=/cargo", cargo_home.display()),
        "--remap-path-prefix".to_string(),
        format!("{}=/{name}", crate_dir.display()),
        "--remap-path-prefix".to_string(),
        format!("{}=/target", target_dir.display()),
    ];
    rustflags.extend(flags.iter().map(|f| f.to_string()));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate_dir)
        .args(["build", "--release", "--locked", "--target", target])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings (its target, flags, wrappers such as clippy-driver) are not
    // the helper's.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key.as_ref(),
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if outer {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {name}: {e}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!(
                "\nthe Rust target {target} is missing: run `rustup target add {target}` (`make setup` does)"
            )
        } else {
            String::new()
        };
        panic!("building {name} for {target} failed:\n{stderr}{hint}");
    }
    target_dir.join(target).join("release")
}
