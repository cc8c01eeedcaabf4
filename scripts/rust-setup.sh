#!/usr/bin/env bash
# Adds the Rust target imagebuild's build needs besides the host's: aarch64-unknown-uefi, for
# efi/zkernel (the loader that lets arm64 UKIs carry a compressed kernel). Runs as the user
# who owns the toolchain (not through sudo). Safe to run again.
set -euo pipefail
target=aarch64-unknown-uefi
if ! command -v rustup >/dev/null 2>&1; then
  sysroot=$(rustc --print sysroot 2>/dev/null || true)
  if [ -n "$sysroot" ] && [ -d "$sysroot/lib/rustlib/$target" ]; then exit 0; fi
  echo "error: the Rust target $target is missing and there is no rustup to add it;" >&2
  echo "       install Rust with rustup, then: rustup target add $target" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx "$target"; then
  echo "+ rustup target add $target"
  rustup target add "$target"
fi
