#!/usr/bin/env bash
# Run a command as it runs on an x86-64 CPU with AVX2 + FMA and no AVX-512 (qemu's Haswell model),
# on any x86-64 machine, AVX-512 ones included:
#   - every Python process runs under qemu's user-mode emulation of that CPU: `python3`, `python`
#     and `mmopt` on PATH are wrappers, and sys.executable points at the wrapper, so the processes
#     the command starts (pytest workers, `subprocess.run([sys.executable, ...])`) are emulated too;
#     the CPUID they see has no AVX-512, so onnxruntime, numpy and LLVM's host CPU (`--target x86`)
#     pick their AVX2 code;
#   - as root, /proc/cpuinfo without the AVX-512 flags, in a private mount namespace (mmopt reads the
#     flags to decide which targets run here); elsewhere a note says it is left as it is.
# Emulation is slow (10-20x): it is meant for the few tests whose verdicts could depend on the ISA,
# such as those that run onnxruntime's int8 kernels (its AVX2 u8 x s8 path saturates where its
# VNNI one does not). Needs qemu-user (scripts/setup-arm-emulation.sh installs it). Example:
#   scripts/avx2-emulated.sh python3 -m pytest -n0 tests/test_check.py
#
# --cpuid: no emulation, native speed. Every process runs on the real CPU with CPUID faulting
# (mmopt/runtime/cpu_mask.c, preloaded): its CPUID answers have no AVX-512 / VNNI / AMX bits and
# name the vendor's last AVX2-only core (AMD Zen 3, Intel Coffee Lake), so onnxruntime, numpy and
# LLVM's host CPU pick AVX2 code as they do on such a machine; the README test command runs in
# about its usual time. What it cannot do is fault on an AVX-512 instruction that some code uses
# without asking CPUID (qemu's Haswell model does). Needs a kernel and CPU with CPUID faulting
# (`cpuid_fault` in /proc/cpuinfo) and a C compiler. Example:
#   scripts/avx2-emulated.sh --cpuid python3 -m pytest -q
set -euo pipefail

MODE=qemu
if [ "${1:-}" = --cpuid ]; then MODE=cpuid; shift; fi
if [ $# -eq 0 ]; then
  echo "usage: $0 [--cpuid] COMMAND [ARG...]" >&2
  exit 2
fi
[ "$(uname -m)" = x86_64 ] || { echo "$0: needs an x86-64 machine" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmopt-avx2.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ "$MODE" = cpuid ]; then
  LIB=$("$PYTHON" - <<'EOF'
import sys
from mmopt.errors import MmoptError
from mmopt.runtime import cpu_mask
try:
    print(cpu_mask.library())
except MmoptError as exc:
    sys.exit(f"--cpuid: {exc.message}")
EOF
) || exit 2
  export LD_PRELOAD="$LIB${LD_PRELOAD:+ $LD_PRELOAD}" MMOPT_CPU_MASK=avx2
else
QEMU=$(command -v qemu-x86_64 || command -v qemu-x86_64-static || true)
[ -n "$QEMU" ] || { echo "$0: qemu-x86_64 not found (install qemu-user)" >&2; exit 2; }

# the interpreter's ELF file, where its standard library is, and a virtual environment's packages
read -r REAL HOME_DIR EXTRA < <("$PYTHON" - <<'EOF'
import os, site, sys
extra = os.pathsep.join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "-"
print(os.path.realpath(sys.executable), sys.base_prefix, extra)
EOF
)

# Haswell: AVX2, FMA, F16C, BMI2, no AVX-512; less the system features qemu's TCG does not emulate
# (each would print a warning per process)
CPU=Haswell,-invpcid,-rtm,-hle,-pcid,-x2apic,-tsc-deadline
mkdir -p "$WORK/bin"
cat > "$WORK/bin/python3" <<EOF
#!/bin/sh
exec "$QEMU" -cpu "$CPU" -0 "$WORK/bin/python3" "$REAL" "\$@"
EOF
cat > "$WORK/bin/mmopt" <<EOF
#!/bin/sh
exec "$WORK/bin/python3" -m mmopt.cli.main "\$@"
EOF
chmod +x "$WORK/bin/python3" "$WORK/bin/mmopt"
ln -s python3 "$WORK/bin/python"
# the wrapper's directory looks like the interpreter's home (its lib/), so the emulated
# interpreter finds its standard library from sys.executable, without a PYTHONHOME that other
# programs' interpreters (an aarch64 Python under qemu, the system one) would inherit
ln -s "$HOME_DIR/lib" "$WORK/lib"

export PATH="$WORK/bin:$PATH"
if [ "$EXTRA" != "-" ]; then export PYTHONPATH="$EXTRA${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
# /proc/cpuinfo without AVX-512, as the emulated CPU reports it
sed -E 's/ (avx512[a-z0-9_]*|avx_vnni)\b//g' /proc/cpuinfo > "$WORK/cpuinfo"
status=0
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$WORK/cpuinfo" "$@" || status=$?
else
  echo "$0: note: not root, /proc/cpuinfo still shows the host's flags" >&2
  "$@" || status=$?
fi
exit $status
