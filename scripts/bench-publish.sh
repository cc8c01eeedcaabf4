#!/usr/bin/env bash
# make bench, registries: push and pull of a release through Debian's docker-registry on
# loopback (scripts/test-registry.sh), with wall time, throughput and peak memory, next to
# curl moving the same bytes to the same registry (a monolithic blob upload, then a GET).
#
#   scripts/bench-publish.sh PROJECT OUT PROFILE   a release of PROFILE in OUT (built from
#                                                  PROJECT), e.g. the bench's 4 GiB image
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/imagebuild
project=$1 out=$2 profile=$3
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=$(bash scripts/test-registry.sh start "$port")
scratch=$(mktemp -d "${TMPDIR:-/tmp}/imagebuild-publish.XXXXXX")
trap 'bash scripts/test-registry.sh stop "$reg"; rm -rf "$scratch"' EXIT
now() { date +%s.%N; }
run() { # run LABEL MIB CMD...: wall seconds, MiB/s of MIB, peak RSS
  local label=$1 mib=$2; shift 2
  local t0; t0=$(now)
  /usr/bin/time -f %M -o "$scratch/rss" "$@" >/dev/null
  local s; s=$(awk "BEGIN{print $(now) - $t0}")
  printf '  %-48s %6.2f s  %7.1f MiB/s  peak RSS %4d MB\n' "$label" "$s" \
    "$(awk "BEGIN{print $mib / $s}")" "$(( $(tail -n1 "$scratch/rss") / 1024 ))"
}
dir=$(ls -d "$out/$profile"/*/ | tail -n1)
zst=$(ls "$dir"*.raw.zst)
raw=$(ls "$dir"*.raw)
raw_mib=$(( $(stat -c %s "$raw") >> 20 ))
zst_mib=$(awk "BEGIN{print $(stat -c %s "$zst") / 1048576}")
echo "== registry: $profile ($raw_mib MiB image, $zst_mib MiB as zstd), docker-registry on loopback =="
to=oci://127.0.0.1:$port/bench/$profile
ib=("$BIN" -q -C "$project" --out "$out" --cache-dir "$scratch/cache")
run "imagebuild push (MiB/s of zstd sent)" "$zst_mib" "${ib[@]}" push "$profile" "$to" --unverified
run "imagebuild push again (nothing to send)" "$zst_mib" "${ib[@]}" push "$profile" "$to" --unverified
version=$(basename "$dir")
run "imagebuild pull (MiB/s of zstd, then unpacked)" "$zst_mib" \
  "$BIN" -q --out "$scratch/pulled" --cache-dir "$scratch/cache2" pull "$to:$version"
cmp <(sha256sum <"$raw") <(sha256sum <"$scratch/pulled/$profile/$version/$(basename "$raw")") \
  || { echo "pulled image differs" >&2; exit 1; }
# curl: the same zstd bytes as one blob, POST then PUT ?digest=, then a GET of it.
digest=sha256:$(sha256sum "$zst" | cut -d' ' -f1)
curl_put() {
  local loc
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://127.0.0.1:$port/v2/bench/curl/blobs/uploads/" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc=http://127.0.0.1:$port$loc ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$zst" \
    "$loc&digest=$digest" -o /dev/null
}
run "curl PUT of the same zstd (one request)" "$zst_mib" bash -c "$(declare -f curl_put); zst=$zst port=$port digest=$digest curl_put"
run "curl GET of it" "$zst_mib" curl -fsS -o "$scratch/blob" "http://127.0.0.1:$port/v2/bench/curl/blobs/$digest"

# S3: the raw image to moto's server (scripts/test-moto.sh) on loopback, then again.
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto=$(bash scripts/test-moto.sh start "$mport")
trap 'bash scripts/test-moto.sh stop "$moto"; bash scripts/test-registry.sh stop "$reg"; rm -rf "$scratch"' EXIT
curl -fsS -X PUT "http://127.0.0.1:$mport/bench" >/dev/null
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
echo "== object storage: $profile raw image ($raw_mib MiB), moto's S3 on loopback =="
run "imagebuild upload (64 MiB parts)" "$raw_mib" "${ib[@]}" upload "$profile" s3://bench/ \
  --endpoint "http://127.0.0.1:$mport" --unverified
run "imagebuild upload again (nothing to send)" "$raw_mib" "${ib[@]}" upload "$profile" s3://bench/ \
  --endpoint "http://127.0.0.1:$mport" --unverified
run "curl PUT of the same raw image (one request)" "$raw_mib" \
  curl -fsS -X PUT -T "$raw" "http://127.0.0.1:$mport/bench/curl.raw" -o /dev/null
