#!/usr/bin/env bash
# make bench, flash: imagebuild flash against what a user would otherwise type (dd, then
# sha256sum of what was written), for the same release:
#  - to a file (a VM disk);
#  - to a loop device (a real block device backed by a file; root only);
#  - over ssh into a rescue VM (the project's own image with a user, sudo and zstd, booted
#    under QEMU with an empty second disk, ssh forwarded from 127.0.0.1).
# Each page cache is dropped before a run, so read-backs read the device.
#
#   scripts/bench-flash.sh [WORK]   WORK: a project copy whose out/ holds prod-amd64
#                                   (default: a fresh copy, prod-amd64 built into it)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/imagebuild
[ "$(id -u)" = 0 ] || { echo "bench-flash: run as root (loop devices, drop_caches)" >&2; exit 1; }
own=
if [ $# -ge 1 ]; then
  work=$1
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/imagebuild-bench-flash.XXXXXX")
  own=$work
  cp -a profiles overlays qemu "$work/"
  rm -f "$work"/profiles/*.lock
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/imagebuild-flash.XXXXXX")
loopdev= vm=
cleanup() {
  [ -z "$vm" ] || kill "$vm" 2>/dev/null || true
  [ -z "$loopdev" ] || losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$scratch" ${own:+"$own"}
}
trap cleanup EXIT
ib() { "$BIN" -q -C "$work" --out "$work/out" "$@"; }
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.1f\", $(now) - $1}"; }

[ -d "$work/out/prod-amd64" ] || ib build prod-amd64 >/dev/null
version=$(ib releases prod-amd64 --json | python3 -c "import json,sys; print(json.load(sys.stdin)['releases'][0]['version'])")
img=$work/out/prod-amd64/$version/prod-amd64-$version.raw
size=$(stat -c %s "$img")
alloc=$(( $(stat -c %b "$img") * 512 ))
mib() { awk "BEGIN{printf \"%.0f\", $1 / 1048576}"; }
echo "== flash: prod-amd64, $(mib "$size") MiB image, $(mib "$alloc") MiB of data =="

report() { # report LABEL JSON WALL: image MiB/s without and with the read-back
  printf '  %-34s %6.1f s  (write %.1f s = %.0f MiB/s of image, with read back %.1f s = %.0f MiB/s; %s MiB written, %s MiB zeroed) verified\n' \
    "$1" "$3" "$(json "$2" 'd["write_seconds"]')" "$(json "$2" 'd["image_bytes"]/2**20/d["write_seconds"]')" \
    "$(json "$2" 'd["write_seconds"]+d["read_back_seconds"]')" \
    "$(json "$2" 'd["image_bytes"]/2**20/(d["write_seconds"]+d["read_back_seconds"])')" \
    "$(json "$2" 'round(d["written"]/2**20)')" "$(json "$2" 'round(d["zeroed"]/2**20)')"
}
mibs() { awk "BEGIN{printf \"%.0f\", $size / 1048576 / $1}"; } # image MiB/s over SECONDS

# A file, 4 GiB (larger than the image: the GPT moves).
cold
t0=$(now)
ib flash prod-amd64 "$scratch/disk.img" --unverified --yes --json >"$scratch/f.json"
report "imagebuild flash to a file" "$scratch/f.json" "$(since "$t0")"
rm -f "$scratch/disk.img"
cold
t0=$(now)
dd if="$img" of="$scratch/dd.img" bs=4M conv=sparse,fsync status=none
cold
sha256sum "$scratch/dd.img" >/dev/null
w=$(since "$t0")
printf '  %-34s %6.1f s = %s MiB/s\n' "dd conv=sparse,fsync + sha256sum" "$w" "$(mibs "$w")"
rm -f "$scratch/dd.img"

# A loop device over a 4 GiB file.
truncate -s 4G "$scratch/loop.raw"
loopdev=$(losetup -f --show "$scratch/loop.raw")
cold
t0=$(now)
ib flash prod-amd64 "$loopdev" --unverified --yes --expect-serial "" --json >"$scratch/l.json"
report "imagebuild flash to $loopdev" "$scratch/l.json" "$(since "$t0")"
cold
t0=$(now)
dd if="$img" of="$loopdev" bs=4M oflag=direct conv=fsync status=none
head -c "$size" <(dd if="$loopdev" bs=4M iflag=direct status=none) | sha256sum >/dev/null
w=$(since "$t0")
printf '  %-34s %6.1f s = %s MiB/s\n' "dd oflag=direct + iflag=direct | sha256sum" "$w" "$(mibs "$w")"
losetup -d "$loopdev"
loopdev=
rm -f "$scratch/loop.raw"

# Over ssh into a rescue VM (TCG unless KVM works here).
ssh-keygen -q -t ed25519 -N "" -C bench -f "$scratch/id"
cat >"$work/profiles/bench-rescue.toml" <<EOF
extends = ["prod-amd64"]
[image]
name = "bench-rescue"
[packages]
include = ["sudo", "zstd"]
[[user]]
name = "ops"
ssh-keys = ["$(cat "$scratch/id.pub")"]
sudo = true
EOF
ib build bench-rescue >/dev/null
truncate -s 3G "$scratch/target.raw"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" -C "$work" --out "$work/out" run bench-rescue --ssh-port "$port" --disk "$scratch/target.raw" \
  </dev/null >"$scratch/vm.log" 2>&1 &
vm=$!
sshopts=(-i "$scratch/id" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
t0=$(now)
until ssh "${sshopts[@]}" -o ConnectTimeout=5 -p "$port" ops@127.0.0.1 true 2>/dev/null; do
  if awk "BEGIN{exit !($(now) - $t0 > 300)}"; then
    echo "bench-flash: the rescue VM did not answer ssh in 300 s; console:" >&2
    tail -n 30 "$scratch/vm.log" >&2
    exit 1
  fi
  sleep 2
done
printf '  rescue VM up (ssh answers)         %6.1f s\n' "$(since "$t0")"
disk=/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_imagebuild-disk1
opts=()
for o in BatchMode=yes StrictHostKeyChecking=no UserKnownHostsFile=/dev/null LogLevel=ERROR "IdentityFile=$scratch/id"; do
  opts+=(--ssh-option "$o")
done
t0=$(now)
ib flash prod-amd64 "ssh://ops@127.0.0.1:$port$disk" --unverified --yes "${opts[@]}" --json >"$scratch/s.json"
report "imagebuild flash over ssh" "$scratch/s.json" "$(since "$t0")"
printf '    stages: %s\n' "$(json "$scratch/s.json" '"  ".join(f"{n} {s:.1f} s" for n, s in d["timings"])')"
t0=$(now)
zstd -q -c -T0 "$img" | ssh "${sshopts[@]}" -p "$port" ops@127.0.0.1 \
  "zstd -q -dc | sudo dd of=$disk bs=4M oflag=direct conv=fsync status=none"
t1=$(now)
ssh "${sshopts[@]}" -p "$port" ops@127.0.0.1 \
  "sudo dd if=$disk bs=4M iflag=direct status=none | head -c $size | sha256sum" >/dev/null
w=$(awk "BEGIN{print $t1 - $t0}")
printf '  %-34s %6.1f s  (write %.1f s = %s MiB/s, with read back %s MiB/s)\n' "zstd | ssh dd, then ssh dd | sha256sum" \
  "$(since "$t0")" "$w" "$(mibs "$w")" "$(mibs "$(since "$t0")")"
