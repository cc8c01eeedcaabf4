#!/bin/bash
# Starts moto's server (S3, EC2 and EBS emulated; PyPI `moto[server]`) on 127.0.0.1:PORT
# for the tests of `upload`. Installs it once into a virtual environment in the cache
# (pip, from PyPI); python3's venv module comes from apt when the host lacks it.
#
#   scripts/test-moto.sh start PORT   starts it, waits until it answers, prints its state
#                                     directory (pid, log)
#   scripts/test-moto.sh stop DIR     stops the server started with state DIR
set -euo pipefail
venv=${IMAGEBUILD_CACHE:-$HOME/.cache/imagebuild}/moto-venv

install() {
	[ -x "$venv/bin/moto_server" ] && return
	if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2
	fi
	rm -rf "$venv"
	python3 -m venv "$venv" >&2
	"$venv/bin/pip" install -q 'moto[server]' >&2
}

start() {
	local port=$1 dir
	install
	dir=$(mktemp -d "${TMPDIR:-/var/tmp}/imagebuild-moto.XXXXXX")
	setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/log" 2>&1 </dev/null &
	echo $! >"$dir/pid"
	for _ in $(seq 300); do
		if curl -fsS -o /dev/null "http://127.0.0.1:$port/moto-api/" 2>/dev/null; then
			echo "$dir"
			return
		fi
		kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
		sleep 0.1
	done
	echo "error: moto_server did not answer on 127.0.0.1:$port; its log:" >&2
	cat "$dir/log" >&2
	exit 1
}

stop() {
	local dir=$1
	[ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
	rm -rf "$dir"
}

case "${1:-}" in
start) start "${2:?port}" ;;
stop) stop "${2:?state directory}" ;;
*) echo "usage: $0 start PORT | stop DIR" >&2; exit 2 ;;
esac
