#!/bin/bash
# make test-e2e: the pull path against a real registry for both architectures. Starts
# Debian's docker-registry on loopback, pushes the multi-arch test image `hello` with
# skopeo, and runs the stack test that bakes it into an amd64 and an arm64 image (the
# arm64 image must get the arm64 variant of the index).
set -euo pipefail
cd "$(dirname "$0")/.."
port=5125
reg=$(bash scripts/test-registry.sh start "$port")
trap 'bash scripts/test-registry.sh stop "$reg"' EXIT
digest=$(bash scripts/hello-image.sh "127.0.0.1:$port/hello:1" "$PWD/target/e2e-hello")
IMAGEBUILD_E2E_HELLO="127.0.0.1:$port/hello:1@$digest" \
	cargo test --release --locked --test stack -- --ignored --nocapture
