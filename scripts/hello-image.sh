#!/bin/bash
# Builds the e2e container image `hello` for amd64 and arm64 from Debian's busybox-static
# (busybox httpd serving /www/index.html on port 8080, with a healthcheck) as an OCI layout
# and pushes the multi-arch index to a registry with skopeo.
#
#   scripts/hello-image.sh DEST [WORK]
#     DEST  e.g. 127.0.0.1:5000/hello:1 (plain http; loopback registries only), or a file
#           ending in .tar: an OCI layout archive, nothing pushed (`make stack-image`)
#     WORK  directory for the downloaded packages and the layout (default: a temp dir)
#
# Prints the pushed index digest (sha256:...) on stdout. The image is built by the
# `hello-image` example deterministically: the same busybox packages give the same digest.
set -euo pipefail
dest=${1:?destination, e.g. 127.0.0.1:5000/hello:1}
work=${2:-$(mktemp -d "${TMPDIR:-/var/tmp}/imagebuild-hello.XXXXXX")}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"

# busybox-static of each architecture: the package file, no emulation, no root needed.
for arch in amd64 arm64; do
	if [ ! -x "$work/$arch/bin/busybox" ]; then
		lists="$work/apt-$arch"
		mkdir -p "$lists/lists/partial" "$work/$arch"
		apt-get -q -oAPT::Architecture="$arch" -oAPT::Architectures="$arch" \
			-oDir::State::Lists="$lists/lists" -oDir::Cache="$lists" update >&2
		(cd "$work" && apt-get -q -oAPT::Architecture="$arch" -oAPT::Architectures="$arch" \
			-oDir::State::Lists="$lists/lists" -oDir::Cache="$lists" download "busybox-static:$arch" >&2)
		dpkg-deb -x "$work"/busybox-static_*_"$arch".deb "$work/$arch"
	fi
done

case $dest in
*.tar)
	case $dest in /*) ;; *) dest=$PWD/$dest ;; esac
	(cd "$here" && cargo run -q --release --example hello-image -- \
		"$dest" "$work/amd64/bin/busybox" "$work/arm64/bin/busybox")
	exit 0
	;;
esac
rm -rf "$work/layout"
(cd "$here" && cargo run -q --release --example hello-image -- \
	"$work/layout" "$work/amd64/bin/busybox" "$work/arm64/bin/busybox") >&2
skopeo copy -q --all --dest-tls-verify=false "oci:$work/layout:1" "docker://$dest" >&2
skopeo inspect --tls-verify=false --raw "docker://$dest" | sha256sum | sed 's/^/sha256:/; s/ .*//'
