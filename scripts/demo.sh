#!/usr/bin/env bash
# Set-up and the main job: installs what is missing, builds (Release), and runs the
# `adamjit train` demo on the best available backend. Extra arguments go to `adamjit train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --demo
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
./build/adamjit info
./build/adamjit train --out build/train "$@"
