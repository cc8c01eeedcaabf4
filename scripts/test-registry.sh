#!/bin/bash
# Starts Debian's docker-registry on 127.0.0.1:PORT (default 5000) with its storage in a
# fresh directory, without systemd, for the e2e tests of [[stack]] pulls. Installs
# docker-registry and skopeo first if they are missing (apt, as root).
#
#   scripts/test-registry.sh start [PORT]   starts it, waits until /v2/ answers, prints
#                                           the state directory (pid, log, storage)
#   scripts/test-registry.sh stop DIR       stops the registry started with state DIR
set -euo pipefail

install() {
	local missing=()
	command -v skopeo >/dev/null || missing+=(skopeo)
	[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
	[ "${#missing[@]}" -eq 0 ] && return
	# The package's postinst would start it under systemd; policy-rc.d keeps it stopped.
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

start() {
	local port=${1:-5000} dir
	install
	dir=$(mktemp -d "${TMPDIR:-/var/tmp}/imagebuild-registry.XXXXXX")
	mkdir -p "$dir/storage"
	cat >"$dir/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  # A fixed secret: upload sessions stay valid across a restart (resumed pushes).
  secret: imagebuild-test-registry
CONF
	setsid /usr/bin/docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	for _ in $(seq 100); do
		if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
			echo "$dir"
			return
		fi
		kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
		sleep 0.1
	done
	echo "error: docker-registry did not answer on 127.0.0.1:$port; its log:" >&2
	cat "$dir/log" >&2
	exit 1
}

stop() {
	local dir=$1
	[ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
	rm -rf "$dir"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) stop "${2:?state directory}" ;;
*) echo "usage: $0 start [PORT] | stop DIR" >&2; exit 2 ;;
esac
