#!/usr/bin/env bash
# Installs what adamjit needs to build and test, from Debian packages, only where missing.
# Usage: bash scripts/install-deps.sh [--demo]   (--demo adds gnuplot for the training plot)
set -euo pipefail

packages=(cmake make gcc libc6-dev pkg-config libcjson-dev libxxhash-dev liblua5.4-dev python3 ocl-icd-libopencl1 opencl-c-headers pocl-opencl-icd)
if [[ "${1:-}" == "--demo" ]]; then
  packages+=(gnuplot-nox)
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$pkg")
  fi
done
# A toolchain or python3 found on PATH (installed outside Debian's packages) is good enough.
filtered=()
for pkg in "${missing[@]}"; do
  case "$pkg" in
    cmake | make | gcc | python3) command -v "$pkg" >/dev/null 2>&1 && continue ;;
    pkg-config) command -v pkg-config >/dev/null 2>&1 && continue ;;
  esac
  filtered+=("$pkg")
done

if ((${#filtered[@]})); then
  echo "install-deps: installing ${filtered[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: run as root (or install these packages yourself)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${filtered[@]}"
else
  echo "install-deps: everything is installed"
fi
