#!/bin/sh
# /init of the imagebuild initramfs (busybox sh).
# Loads the listed modules, waits for root= and switch_roots into it.
# On failure it prints one "imagebuild-initramfs: ..." line and, by default, powers the
# machine off (imagebuild.onfail=poweroff|reboot|shell).
export PATH=/bin

msg() { echo "imagebuild-initramfs: $*"; }

fail() {
	msg "$*"
	msg "block devices: $(ls /sys/class/block 2>/dev/null | tr '\n' ' ')"
	case "$onfail" in
	shell) msg "starting a shell"; setsid cttyhack sh ;;
	reboot) reboot -f ;;
	*) poweroff -f ;;
	esac
	sleep 5
	exit 1
}

uptime_s() {
	read -r up _ </proc/uptime
	echo "${up%%.*}"
}

mount_api_filesystems() {
	mount -t proc -o nosuid,nodev,noexec proc /proc
	mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
	mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
}

parse_cmdline() {
	root= rootfstype=ext4 rootflags= mode=ro init=/sbin/init onfail=poweroff
	timeout=$ROOT_TIMEOUT
	set -f
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		root=*) root=${arg#root=} ;;
		rootfstype=*) rootfstype=${arg#rootfstype=} ;;
		rootflags=*) rootflags=${arg#rootflags=} ;;
		rootdelay=*) timeout=${arg#rootdelay=} ;;
		ro) mode=ro ;;
		rw) mode=rw ;;
		init=*) init=${arg#init=} ;;
		imagebuild.onfail=*) onfail=${arg#imagebuild.onfail=} ;;
		esac
	done
	set +f
	case "$root" in
	PARTUUID=*) root=PARTUUID=$(echo "${root#PARTUUID=}" | tr A-F a-f) ;;
	esac
}

# Filesystem and library modules are always loaded; disk drivers only until the root
# device shows up (on most machines its driver is built in and none is needed). Looking
# for the root forks a handful of processes, so it is looked for again only after a
# module was loaded, not before every module listed.
load_modules() {
	dev=
	looked=
	while read -r module; do
		[ -n "$module" ] || continue
		case "$module" in
		kernel/fs/* | kernel/lib/* | kernel/crypto/*) ;;
		*)
			[ -n "$dev" ] && continue
			if [ -z "$looked" ]; then
				looked=1
				dev=$(find_root) && continue
				dev=
			fi
			;;
		esac
		if ! out=$(insmod "/lib/modules/$KVER/$module" 2>&1); then
			msg "insmod $module failed (ignored): $out"
		fi
		looked=
	done </etc/imagebuild-initramfs.modules
}

# Prints the partition whose GPT unique GUID is $1 (lower case). The kernel keeps the
# PARTUUID to itself (uevent has only PARTN and PARTNAME) and busybox blkid does not read
# GPT, so read the primary GPT of every disk with od.
find_partuuid() {
	partuuid=$1
	for sys in /sys/block/*; do
		disk=${sys##*/}
		ss=$(cat "$sys/queue/logical_block_size" 2>/dev/null) || continue
		sig=$(od -A n -t x1 -j "$ss" -N 8 "/dev/$disk" 2>/dev/null) || continue
		[ "$sig" = " 45 46 49 20 50 41 52 54" ] || continue
		set -- $(od -A n -t u8 -j $((ss + 72)) -N 8 "/dev/$disk") \
			$(od -A n -t u4 -j $((ss + 80)) -N 8 "/dev/$disk")
		[ $# -eq 3 ] || continue
		number=$(od -A n -v -t x1 -w"$3" -j $(($1 * ss)) -N $(($2 * $3)) "/dev/$disk" |
			gpt_entry_number "$partuuid")
		[ -n "$number" ] || continue
		for part in "$sys/$disk"*; do
			if [ "$(cat "$part/partition" 2>/dev/null)" = "$number" ]; then
				echo "/dev/$(sed -n 's/^DEVNAME=//p' "$part/uevent")"
				return 0
			fi
		done
	done
	return 1
}

# Reads GPT entries as hex bytes, one per line; prints the number of the entry whose
# unique GUID (bytes 16-31, mixed endian) is $1.
gpt_entry_number() {
	wanted=$1
	n=0
	while read -r line; do
		n=$((n + 1))
		set -- $line
		[ $# -ge 32 ] || continue
		guid=${20}${19}${18}${17}-${22}${21}-${24}${23}-${25}${26}-${27}${28}${29}${30}${31}${32}
		if [ "$guid" = "$wanted" ]; then
			echo "$n"
			return 0
		fi
	done
	return 1
}

# Prints the block device for $root, or fails.
find_root() {
	case "$root" in
	PARTUUID=*)
		dev=$(find_partuuid "${root#PARTUUID=}") && [ -b "$dev" ] && echo "$dev" && return 0
		;;
	PARTLABEL=*)
		for uevent in /sys/class/block/*/uevent; do
			if grep -qx "PARTNAME=${root#PARTLABEL=}" "$uevent" 2>/dev/null; then
				dev=/dev/$(sed -n 's/^DEVNAME=//p' "$uevent")
				[ -b "$dev" ] && echo "$dev" && return 0
			fi
		done
		;;
	UUID=* | LABEL=*)
		dev=$(findfs "$root" 2>/dev/null) && [ -b "$dev" ] && echo "$dev" && return 0
		;;
	/dev/*)
		[ -b "$root" ] && echo "$root" && return 0
		;;
	esac
	return 1
}

wait_for_root() {
	[ -n "$dev" ] && return 0
	deadline=$(($(uptime_s) + timeout))
	until dev=$(find_root); do
		if [ "$(uptime_s)" -ge "$deadline" ]; then
			fail "root device $root not found after $timeout s"
		fi
		sleep 0.1
	done
}

# systemd-stub packs the ESP's <UKI>.extra.d/*.cred (what `imagebuild flash` writes) and
# \loader\credentials\*.cred into $1/credentials/ and $1/global_credentials/. systemd
# (>= 254) imports what an initrd leaves in $2 (/run/credentials/@initrd) as system
# credentials once it runs in the root. A systemd initrd would take the ESP's files as
# encrypted (untrusted) credentials; these images have no Secure Boot and whoever can
# write the ESP can replace the UKI too, so here they are plain values. The UKI's own
# credential wins over a global one of the same name, as in systemd.
import_credentials() {
	names=
	for cred in "$1"/credentials/*.cred "$1"/global_credentials/*.cred; do
		[ -f "$cred" ] || continue
		name=${cred##*/}
		name=${name%.cred}
		[ -e "$2/$name" ] && continue
		if mkdir -p -m 0700 "$2" && cat "$cred" >"$2/$name" && chmod 0400 "$2/$name"; then
			names="$names $name"
		else
			msg "credential $name could not be copied to $2 (ignored)"
		fi
	done
	[ -z "$names" ] || msg "credentials from the ESP:$names"
}

switch_to_root() {
	mount -t "$rootfstype" -o "$mode${rootflags:+,$rootflags}" "$dev" /newroot ||
		fail "mounting $root ($dev) on /newroot failed"
	if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
		fail "$init not found on $root ($dev)"
	fi
	for fs in dev proc sys run; do
		if [ -d "/newroot/$fs" ]; then
			mount --move "/$fs" "/newroot/$fs"
		else
			umount -l "/$fs"
		fi
	done
	exec switch_root /newroot "$init"
}

. /etc/imagebuild-initramfs.conf
mount_api_filesystems
parse_cmdline
[ -n "$root" ] || fail "no root= on the kernel command line"
load_modules
wait_for_root
import_credentials /.extra /run/credentials/@initrd
msg "mounting $root ($dev) on /newroot"
switch_to_root
fail "switch_root to $init failed"
