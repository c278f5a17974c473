#!/usr/bin/env bash
# Install everything mmopt needs on a fresh Debian/Ubuntu machine with Python 3.11:
#   - Debian packages: the aarch64 cross compiler (for --target arm), g++ (for `mmopt package`) and
#     headless Chromium with its driver (the HTML report tests load each page in it), when missing;
#   - the mmopt package (editable) with its pinned dependencies, every frontend's framework
#     (the [all] extra: PyTorch CPU build, OpenCV 4 headless) and the test tools;
#   - test data: the OCR models that ship inside the rapidocr-onnxruntime wheel
#     (installed without its dependencies: only the .onnx files are used).
# Safe to run again: each step is skipped or is a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
# `mmopt package` compiles the bundle's C API with the host's g++ (x86_64 bundles); its tests build
# the bundle's example with make
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
# the HTML report tests (tests/test_html_report.py) load every page in headless Chromium, driven
# by selenium through Debian's chromedriver (same version as the browser; nothing is downloaded)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "setup: installing mmopt and its Python dependencies"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[all,test]"
$PYTHON -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps "rapidocr-onnxruntime==1.4.4"
# The emulated arm64 farm device (qemu-user + an aarch64 Python with TVM's runtime, cached).
# Not fatal: without it the emulated-ARM tests skip with a reason.
bash scripts/setup-arm-emulation.sh || echo "setup: WARNING: emulated arm64 device not prepared"
echo "setup: done ($(mmopt --version))"
