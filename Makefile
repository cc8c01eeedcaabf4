# imagebuild: the two commands a newcomer needs are `make image` and `make test`.
# Both install what the host lacks first (scripts/host-setup.sh, Debian/Ubuntu, as root).

PROFILE ?= prod-amd64
CARGO ?= cargo
BIN := target/release/imagebuild
# Downloaded packages and bootstrapped bases are kept here between runs.
export IMAGEBUILD_CACHE ?= $(HOME)/.cache/imagebuild

.PHONY: fuzz image stack-image test test-fast test-e2e test-arm64-stack bench setup build doctor clean

setup:
	@if [ "$$(id -u)" -eq 0 ]; then bash scripts/host-setup.sh; else sudo bash scripts/host-setup.sh; fi
	@bash scripts/rust-setup.sh

build:
	$(CARGO) build --release --locked

## Build the default image (PROFILE=prod-amd64), boot-tested before it is published.
## PROFILE=stack-amd64 makes its container image first (stack-image).
image: setup build $(if $(findstring stack,$(PROFILE)),stack-image)
	$(BIN) build $(PROFILE) --verify

## The container image of the shipped stack example (stacks/web): busybox httpd for amd64
## and arm64 from this host's busybox-static packages, as the OCI archive
## profiles/stack-amd64.toml reads. Deterministic: the same packages, the same digest.
stack-image: build
	bash scripts/hello-image.sh target/stack/hello.oci.tar target/e2e-hello

## The whole test suite: fast tests, then real Debian builds and QEMU boots of both arches.
test: setup test-fast test-e2e

# Release profile for both tiers, so the crates compile once.
test-fast:
	$(CARGO) test --release --locked --lib --bins --test pipeline --test health_script --test verify_fake_qemu --test stack --test native_backend --test flash --test state_scripts --test fuzz_regressions --test publish --test upload

test-e2e: build
	$(CARGO) test --release --locked --test e2e -- --ignored --test-threads=1 --nocapture --skip arm64_stack
	bash scripts/e2e-registry-pull.sh

## The stack server profile built for arm64 and boot-tested under TCG (slow: an arm64
## bootstrap with docker.io through qemu-user, then an emulated boot; not in `make test`).
test-arm64-stack: setup build
	$(CARGO) test --release --locked --test e2e -- --ignored --nocapture --exact arm64_stack_server_boots_with_its_user_and_stack

## Timings and sizes (prints the numbers the issues ask for).
## Every fuzz target under AFL++ (cargo-afl), FUZZ_SECONDS each (default an hour), then
## executions, paths, crashes and hangs per target. Not in `make test`.
FUZZ_SECONDS ?= 3600
fuzz: setup build
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

bench: setup build
	bash scripts/bench.sh

doctor: build
	$(BIN) doctor

clean:
	rm -rf out target
