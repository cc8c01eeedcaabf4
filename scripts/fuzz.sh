#!/usr/bin/env bash
# make fuzz: runs every fuzz target (fuzz/src/bin/) under AFL++ for SECONDS each, two at a
# time (FUZZ_JOBS=N for N at a time), and prints what each did: executions, paths found, crashes and hangs. Crashes stay
# in fuzz/out/TARGET/default/crashes/; each becomes a regression test once fixed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default 3600 s; all targets)
#
# Needs root once for the seeds (scripts/host-setup.sh is done by make). Installs cargo-afl
# (crates.io) when missing; the seeds come from a real prod-amd64 image, built when out/
# has none.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(profile compose base_tar gpt ext4 fat uki)
command -v cargo-afl >/dev/null || cargo install --locked cargo-afl
(cd fuzz && cargo afl build --release)
image=$(ls out/prod-amd64/*/prod-amd64-*.raw 2>/dev/null | tail -n1 || true)
if [ -z "$image" ]; then
  target/release/imagebuild -q build prod-amd64 >/dev/null
  image=$(ls out/prod-amd64/*/prod-amd64-*.raw | tail -n1)
fi
base=$(ls -S "${IMAGEBUILD_CACHE:-$HOME/.cache/imagebuild}"/base/*.tar | tail -n1)
[ -d fuzz/seeds/profile ] || bash fuzz/seeds.sh "$image" "$base" fuzz/seeds
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
run() {
  local t=$1
  mkdir -p fuzz/out
  # -i - resumes a target that has run before; the first run starts from its seeds.
  local input=seeds/$t
  [ -d "fuzz/out/$t/default/queue" ] && input=-
  (cd fuzz && cargo afl fuzz -V "$seconds" -t 2000 -i "$input" -o "out/$t" "target/release/$t") \
    >"fuzz/out/$t.log" 2>&1 || true
}
i=0
for t in "${targets[@]}"; do
  run "$t" &
  i=$((i + 1))
  [ $((i % ${FUZZ_JOBS:-2})) -ne 0 ] || wait
done
wait
printf '%-10s %10s %12s %8s %8s %8s\n' target seconds execs paths crashes hangs
for t in "${targets[@]}"; do
  s=fuzz/out/$t/default/fuzzer_stats
  if [ ! -f "$s" ]; then
    printf '%-10s did not run: see fuzz/out/%s.log\n' "$t" "$t"
    continue
  fi
  v() { sed -n "s/^$1 *: //p" "$s"; }
  printf '%-10s %10s %12s %8s %8s %8s\n' "$t" "$(v run_time)" "$(v execs_done)" "$(v corpus_count)" \
    "$(v saved_crashes)" "$(v saved_hangs)"
done
