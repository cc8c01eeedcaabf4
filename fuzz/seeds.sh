#!/usr/bin/env bash
# Seed corpora for the fuzz targets, from a real built image and the project's own files:
#
#   fuzz/seeds.sh IMAGE.raw BASE.tar OUT     (as root: the ESP is read through a loop mount)
#
# OUT/TARGET/ gets, per target:
#   profile   the shipped profiles, each with its parent after a NUL byte
#   compose   the shipped compose file
#   base_tar  the first 400 small entries of BASE.tar (a real bootstrapped root) as a tar
#   gpt       the image's first 34 and last 33 sectors as one file (a disk cut short), and
#             a whole 1000 KiB disk with the image's partition layout scaled down
#   ext4      a 1 MiB ext4 of files copied out of the image's root (mke2fs -d, as builds)
#   fat       a FAT image of the image's ESP files, cut to the first 1000 KiB (AFL++ takes inputs up to 1 MiB)
#   uki       the image's UKI, cut to its first MiB (headers and section table whole)
set -euo pipefail
image=$(realpath "$1") base=$(realpath "$2") out=$3
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"/{profile,compose,base_tar,gpt,ext4,fat,uki}
work=$(mktemp -d)
mnt=
cleanup() { [ -z "$mnt" ] || umount "$mnt" 2>/dev/null || true; [ -z "${loop:-}" ] || losetup -d "$loop"; rm -rf "$work"; }
trap cleanup EXIT

for p in "$here"/profiles/*.toml; do
  parent=$(sed -n 's/^extends = \["\([^"]*\)".*/\1/p' "$p")
  { cat "$p"; printf '\0'; [ -z "$parent" ] || cat "$here/profiles/$parent.toml"; } >"$out/profile/$(basename "$p" .toml)"
done
cp "$here/stacks/web/compose.yaml" "$out/compose/web"

python3 - "$base" "$out/base_tar/debian" <<'PY'
import sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
with tarfile.open(src) as t, tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as o:
    n = 0
    for m in t:
        if m.isfile() and m.size > 2048:
            continue
        o.addfile(m, t.extractfile(m) if m.isfile() else None)
        n += 1
        if n == 400:
            break
PY

size=$(stat -c %s "$image")
{ head -c $((34 * 512)) "$image"; tail -c $((33 * 512)) "$image"; } >"$out/gpt/cut"
truncate -s 1000K "$work/small"
sfdisk -q "$work/small" <<'SF'
label: gpt
start=40, size=960, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=1000, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root-x86-64
SF
cp "$work/small" "$out/gpt/small"

read -r esp_start esp_size root_start root_size < <(sfdisk -J "$image" | python3 -c '
import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"]
print(p[0]["start"] * 512, p[0]["size"] * 512, p[1]["start"] * 512, p[1]["size"] * 512)')
loop=$(losetup -f --show -r -o "$root_start" --sizelimit "$root_size" "$image")
mnt=$work/mnt; mkdir -p "$mnt" "$work/root/etc" "$work/root/usr/bin"
mount -o ro "$loop" "$mnt"
cp -a "$mnt"/etc/{hostname,os-release,fstab,passwd,group} "$work/root/etc/" 2>/dev/null || true
cp -a "$mnt"/etc/systemd "$work/root/etc/" 2>/dev/null || true
ln -s ../etc/os-release "$work/root/usr/os-release-link"
umount "$mnt"; losetup -d "$loop"; loop=
mke2fs -q -t ext4 -b 1024 -N 256 -O ^has_journal -d "$work/root" "$out/ext4/root" 1000K

"$here/fuzz/target/release/esp_files" "$image" "$work/esp"
uki=$(find "$work/esp" -iname '*.efi' | head -n1)
head -c 1024000 "$uki" >"$out/uki/uki"
mkfs.vfat -C -n ESP "$out/fat/empty" 1000 >/dev/null
dd if="$image" of="$out/fat/esp-head" bs=1000K skip="$esp_start" iflag=skip_bytes count=1 status=none
mnt=
echo "seeds in $out:"; find "$out" -type f -printf '  %P %s bytes\n'
