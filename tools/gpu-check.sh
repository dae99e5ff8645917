#!/bin/sh
# The CUDA backend's check on a machine with an NVIDIA GPU, in one go: a Release build, the
# CUDA tests (ctest -L cuda), and the benchmarks `adamjit bench --backend cuda --json` and
# `adamjit bench --jit --json`. Everything goes to one output directory, printed at the end
# together with the step bandwidth against the device-copy roofline (issue targets: fp32 at
# least 0.85 of it, 8-bit at least 0.75).
#
# Usage: tools/gpu-check.sh [output directory]
#   ADAMJIT_GPU_CHECK_BUILD  build directory (default: <source>/build-gpu-check)
#   ADAMJIT_GPU_CHECK_JOBS   parallel build jobs (default: all processors)
#   CUDA_PATH                the toolkit, if its cuda.h is not in /usr/local/cuda/include
# Exit status: 0 when the build, every CUDA test and both benchmarks succeeded; 1 otherwise
# (a skipped CUDA test counts as a failure here: this script is for GPU machines). The
# benchmark targets are reported, not enforced.
set -u

src=$(cd "$(dirname "$0")/.." && pwd)
build=${ADAMJIT_GPU_CHECK_BUILD:-$src/build-gpu-check}
out=${1:-$build/gpu-check-$(date +%Y%m%d-%H%M%S)}
jobs=${ADAMJIT_GPU_CHECK_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)}
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
status=0

step() { printf '%s\n' "gpu-check: $*"; }
fail() {
  printf '%s\n' "gpu-check: FAILED: $*" >&2
  status=1
}

step "output in $out"
{ nvidia-smi 2>&1 || echo "nvidia-smi: not found or failed"; } > "$out/nvidia-smi.txt"

step "configure and build (Release) in $build"
if ! cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release > "$out/configure.log" 2>&1; then
  fail "configure (see $out/configure.log)"
  exit 1
fi
if ! grep -q "backends built:.*cuda" "$out/configure.log"; then
  fail "the CUDA backend was not configured: cuda.h not found (set CUDA_PATH); see $out/configure.log"
  exit 1
fi
if ! cmake --build "$build" -j "$jobs" > "$out/build.log" 2>&1; then
  fail "build (see $out/build.log)"
  exit 1
fi

"$build/adamjit" info > "$out/info.txt" 2>&1
if ! grep -q "^  cuda    built, available" "$out/info.txt"; then
  fail "CUDA is not available here:"
  grep "^  cuda" "$out/info.txt" >&2
  exit 1
fi
grep -A3 "^  cuda" "$out/info.txt"

step "ctest -L cuda"
(cd "$build" && ctest -L cuda --output-on-failure) > "$out/ctest-cuda.log" 2>&1 ||
  fail "CUDA tests (see $out/ctest-cuda.log)"
if grep -q "(Skipped)" "$out/ctest-cuda.log"; then
  fail "CUDA tests were skipped on a GPU machine (see $out/ctest-cuda.log)"
fi
grep -E "tests passed|Skipped|Failed" "$out/ctest-cuda.log"

step "adamjit bench --backend cuda --json"
"$build/adamjit" bench --backend cuda --json > "$out/bench-cuda.jsonl" 2> "$out/bench-cuda.err" ||
  fail "bench --backend cuda (see $out/bench-cuda.err)"

step "adamjit bench --jit --json"
"$build/adamjit" bench --jit --json > "$out/bench-jit.jsonl" 2> "$out/bench-jit.err" ||
  fail "bench --jit (see $out/bench-jit.err)"

# One line per case and variant: bandwidth, roofline, and whether the issue's target is met.
step "step bandwidth against the device copy (bench-cuda.jsonl)"
pattern='.*"variant":"\([^"]*\)","case":"\([^"]*\)".*"gbps":\([0-9.]*\),"roofline_gbps":\([0-9.]*\),"ratio":\([0-9.]*\).*'
sed -n "s/$pattern/\\2 \\1 \\3 \\4 \\5/p" "$out/bench-cuda.jsonl" |
  awk '{ target = ($2 == "fp32") ? 0.85 : 0.75;
         printf "  %-9s %-10s %9.1f GB/s  roofline %9.1f GB/s  ratio %.3f  (target %.2f: %s)\n",
                $1, $2, $3, $4, $5, target, ($5 >= target) ? "met" : "MISSED" }' | tee "$out/summary.txt"

step "output in $out:"
for f in "$out"/*; do printf "  %s\n" "$(basename "$f")"; done
if [ "$status" -eq 0 ]; then step "all CUDA checks passed"; else step "some CUDA checks FAILED"; fi
exit "$status"
