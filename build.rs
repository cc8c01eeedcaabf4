//! Builds `efi/zkernel` (the compressed-kernel loader for arm64 UKIs, an EFI application) for
//! aarch64-unknown-uefi with this same toolchain, and leaves it in OUT_DIR for
//! `include_bytes!`. Paths are remapped and the link has no timestamp or debug directory
//! (/Brepro /DEBUG:NONE), so the loader's bytes depend on its source, its Cargo.lock and the
//! Rust toolchain only.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "aarch64-unknown-uefi";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let crate_dir = manifest_dir.join("efi/zkernel");
    for input in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(input).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("zkernel-target");
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let rustflags = [
        "--remap-path-prefix".to_string(),
        format!("{}=/cargo", cargo_home.display()),
        "--remap-path-prefix".to_string(),
        format!("{}=/zkernel", crate_dir.display()),
        "--remap-path-prefix".to_string(),
        format!("{}=/target", target_dir.display()),
        // No timestamp and no debug directory: without /DEBUG:NONE the /Brepro hash still
        // differed between two checkouts.
        "-Clink-arg=/Brepro".to_string(),
        "-Clink-arg=/DEBUG:NONE".to_string(),
        // MajorImageVersion 1: systemd-stub starts a `.linux` only if it says it is (like
        // the kernel's EFI stub 1.0) able to take the initrd from LINUX_EFI_INITRD_MEDIA.
        "-Clink-arg=/VERSION:1.0".to_string(),
    ]
    .join("\x1f");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&crate_dir)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (its target, flags, wrappers such as clippy-driver) are not
    // the loader's.
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
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    let output = cmd.output().expect("running cargo to build efi/zkernel");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            format!(
                "\nthe Rust target {TARGET} is missing: run `rustup target add {TARGET}` (`make setup` does)"
            )
        } else {
            String::new()
        };
        panic!("building efi/zkernel for {TARGET} failed:\n{stderr}{hint}");
    }
    let built = target_dir.join(TARGET).join("release/zkernel.efi");
    std::fs::copy(&built, out_dir.join("zkernel.efi"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}
