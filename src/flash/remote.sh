# imagebuild flash: writes the stream on stdin to the disk $1, as the plan's steps below say.
# Needs only what a rescue system has: sh, dd, head, sync, and blkdiscard/flock/blockdev
# from util-linux when there (zeros are written when blkdiscard is missing).
set -eu
dev=$1
if command -v flock >/dev/null 2>&1; then
	exec 9<"$dev"
	flock -x 9
fi
# w OFFSET LENGTH: the next LENGTH bytes of the stream, at OFFSET.
w() {
	dd of="$dev" bs=1M iflag=fullblock,count_bytes count="$2" oflag=seek_bytes seek="$1" \
		conv=notrunc status=none
}
# z OFFSET LENGTH: zeros (the kernel's zeroing where it has it).
z() {
	blkdiscard -z -o "$1" -l "$2" "$dev" 2>/dev/null ||
		head -c "$2" /dev/zero | dd of="$dev" bs=1M iflag=fullblock oflag=seek_bytes \
			seek="$1" conv=notrunc status=none
}
s() {
	sync
	blockdev --flushbufs "$dev" 2>/dev/null || true
}
# m: the stream is whole up to here; only then the partition table is written.
m() {
	got=$(dd bs=16 count=1 iflag=fullblock status=none)
	if [ "$got" != imagebuild-last ]; then
		echo "imagebuild: the stream broke off before the partition table" >&2
		exit 3
	fi
}
