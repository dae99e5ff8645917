#!/usr/bin/env bash
# Set-up and the whole test suite: installs what is missing, builds, runs every test through
# ctest, then does the same with AddressSanitizer + UndefinedBehaviorSanitizer.
# Set ADAMJIT_SKIP_SANITIZERS=1 to run only the first pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure

if [[ "${ADAMJIT_SKIP_SANITIZERS:-0}" != 1 ]]; then
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug \
    -DADAMJIT_SANITIZE_ADDRESS=ON -DADAMJIT_SANITIZE_UNDEFINED=ON
  cmake --build build-sanitize -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-sanitize -j"$jobs" --output-on-failure
fi
