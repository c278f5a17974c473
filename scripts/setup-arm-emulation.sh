#!/usr/bin/env bash
# Prepare the emulated arm64 device (`mmopt farm emulate arm64`) on a Debian/Ubuntu x86 machine:
#   - Debian packages: qemu-user (qemu-aarch64) and the aarch64 cross compiler, when missing;
#   - the emulated environment, cached in $MMOPT_CACHE/arm64-root (default ~/.cache/mmopt):
#     Debian arm64 python3.11 unpacked from .debs + the aarch64 wheels of TVM's runtime and numpy,
#     downloaded from Debian and PyPI by `mmopt farm emulate arm64 --prepare-only`.
# Run after scripts/setup.sh (which installs mmopt). Safe to run again: every step is skipped
# when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

missing=()
command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-arm-emulation: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "setup-arm-emulation: preparing the emulated arm64 environment (cached after the first time)"
start=$(date +%s)
mmopt farm emulate arm64 --prepare-only
echo "setup-arm-emulation: done in $(( $(date +%s) - start ))s"
