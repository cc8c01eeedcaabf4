# imagebuild flash: what the machine knows about its disks, for the guard rails. POSIX sh
# and the tools every Linux rescue system has (coreutils, util-linux). $1: the target.
# Prints sections; prints, never changes anything.
dev=$1
echo '==imagebuild:target=='
readlink -f "$dev" 2>/dev/null || echo "$dev"
echo '==imagebuild:mounts=='
cat /proc/mounts
echo '==imagebuild:swaps=='
cat /proc/swaps 2>/dev/null
echo '==imagebuild:sys-block=='
for d in /sys/class/block/*; do
	[ -e "$d/dev" ] || continue
	n=${d##*/}
	part=0 parent=-
	if [ -e "$d/partition" ]; then
		part=1
		parent=$(readlink -f "$d")
		parent=${parent%/*}
		parent=${parent##*/}
	fi
	holders=$(ls "$d/holders" 2>/dev/null | tr '\n' ',')
	rm=$(cat "$d/removable" 2>/dev/null || echo 0)
	printf '%s %s %s %s %s %s %s %s\n' "$n" "$(cat "$d/dev")" "$part" "$parent" \
		"$(cat "$d/ro")" "$(cat "$d/size")" "$rm" "${holders:--}"
done
echo '==imagebuild:lsblk=='
lsblk --json --bytes --list -o NAME,KNAME,PATH,PKNAME,TYPE,SIZE,RO,RM,MODEL,SERIAL,MOUNTPOINT,FSTYPE,LABEL,PARTLABEL 2>/dev/null
echo '==imagebuild:by-id=='
for l in /dev/disk/by-id/*; do
	[ -e "$l" ] && printf '%s %s\n' "$l" "$(readlink -f "$l")"
done
echo '==imagebuild:sizes=='
if [ -b "$dev" ]; then
	blockdev --getsize64 "$dev" 2>/dev/null
	blockdev --getss "$dev" 2>/dev/null
fi
echo '==imagebuild:gpt=='
if [ -b "$dev" ]; then
	dd if="$dev" bs=512 count=34 status=none 2>/dev/null | base64
fi
echo '==imagebuild:tools=='
for t in zstd gzip dd sha256sum blkdiscard flock base64 blockdev; do
	command -v "$t" >/dev/null 2>&1 && echo "$t"
done
echo '==imagebuild:end=='
