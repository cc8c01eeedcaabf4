#!/usr/bin/env bash
# Installs what imagebuild needs on a Debian/Ubuntu host, and nothing that is already there.
# Used by `make image` and `make test`; safe to run again. Needs root (or sudo).
#
#   scripts/host-setup.sh            # everything (build, boot tests)
#   scripts/host-setup.sh --check    # only report what is missing, exit 1 if anything is
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# Packages by the command (or file) that proves they are installed.
declare -A want=(
  [mmdebstrap]=mmdebstrap
  [mke2fs]=e2fsprogs
  [fsck.fat]=dosfstools
  [sfdisk]=fdisk
  [qemu-aarch64-static]=qemu-user-static
  [update-binfmts]=binfmt-support
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-system-aarch64]=qemu-system-arm
  [qemu-img]=qemu-utils
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [/usr/share/AAVMF/AAVMF_CODE.fd]=qemu-efi-aarch64
  [/usr/share/keyrings/debian-archive-keyring.gpg]=debian-archive-keyring
  [/usr/lib/x86_64-linux-gnu/libarchive.so.13]=libarchive13
  [zstd]=zstd
  [xz]=xz-utils
  [faketime]=faketime
  [arch-test]=arch-test
  # The [[stack]] tests: a loopback registry, pushes to it, and the test image's packages.
  [/usr/bin/docker-registry]=docker-registry
  [skopeo]=skopeo
  [curl]=curl
)

have() { case "$1" in /*) [ -e "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ;; esac; }

missing=()
for probe in "${!want[@]}"; do
  have "$probe" || missing+=("${want[$probe]}")
done

# mke2fs must read tar files (-d FILE.tar): e2fsprogs >= 1.47.1.
e2fs_old=0
if have mke2fs; then
  v=$(/usr/sbin/mke2fs -V 2>&1 | awk 'NR==1{print $2}')
  if [ "$(printf '%s\n1.47.1\n' "$v" | sort -V | head -n1)" != "1.47.1" ]; then e2fs_old=1; fi
fi

binfmt_ok=1
if [ "$(dpkg --print-architecture)" != arm64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || binfmt_ok=0
fi

if [ $check_only = 1 ]; then
  rc=0
  [ ${#missing[@]} -gt 0 ] && { echo "missing packages: ${missing[*]}"; rc=1; }
  [ $e2fs_old = 1 ] && { echo "e2fsprogs is older than 1.47.1 (tar input for mke2fs -d)"; rc=1; }
  [ $binfmt_ok = 0 ] && { echo "binfmt for arm64 (qemu-aarch64) is not registered"; rc=1; }
  exit $rc
fi

. /etc/os-release
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ] && [ $e2fs_old = 1 -o ${#missing[@]} -gt 0 ]; then
  # e2fsprogs >= 1.47.1 and a newer mmdebstrap come from bookworm-backports, on the
  # mirror this host is already configured with.
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | grep -v security | awk '{print $2}' | head -n1)
    [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | awk '{print $2}' | head -n1)
    [ -n "$uri" ] || { echo "error: no Debian mirror configured in /etc/apt/sources.list*" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uri" \
      | $SUDO tee /etc/apt/sources.list.d/imagebuild-backports.sources >/dev/null
  fi
fi

if [ ${#missing[@]} -gt 0 ] || [ $e2fs_old = 1 ]; then
  target=()
  # On Debian 12 take everything from backports where it has it: e2fsprogs 1.47.2,
  # mmdebstrap 1.5.x, and a QEMU that matches a backported qemu-utils.
  [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ] && target=(-t bookworm-backports)
  [ $e2fs_old = 1 ] && missing+=(e2fsprogs)
  echo "+ apt-get update"
  $SUDO apt-get update -qq
  echo "+ apt-get install --no-install-recommends ${target[*]} ${missing[*]}"
  $SUDO apt-get install -y -qq --no-install-recommends "${target[@]}" "${missing[@]}" </dev/null
fi

# Foreign architectures run their maintainer scripts through qemu-user binfmt.
if [ "$(dpkg --print-architecture)" != arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    echo "+ mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  fi
  # qemu-user-binfmt >= 8 ships a systemd binfmt.d file; older ones register with update-binfmts.
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ -f "$conf" ]; then
    echo "+ register $conf with binfmt_misc"
    grep -v '^#' "$conf" | $SUDO tee /proc/sys/fs/binfmt_misc/register >/dev/null || true
  else
    echo "+ update-binfmts --enable qemu-aarch64"
    $SUDO update-binfmts --enable qemu-aarch64 || true
  fi
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "error: could not register qemu-aarch64 with binfmt_misc" >&2; exit 1; }
fi
echo "host ready"
