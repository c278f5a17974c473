"""Verdicts that must not depend on the CPU's instruction set, checked on an emulated AVX2-only CPU.

Four tests once failed on an AVX2-only machine and passed on AVX-512 ones: they judged quantized
models through onnxruntime's optimized int8 kernels, whose AVX2 u8 x s8 path sums products in
saturating int16 pairs. They now judge by QDQ reference semantics or by mmopt's own artifact.
``scripts/avx2-emulated.sh`` runs them here as on such a machine (qemu's Haswell CPU model for every
Python process, ``/proc/cpuinfo`` without AVX-512), so an AVX-512 development machine or CI keeps
them honest. Emulation is slow: the quick ones run here; the zoo CNN cosine tests
(``tests/test_quantize_models.py::test_zoo_cnn_cosine``, 7 minutes emulated here) are run by hand:
``scripts/avx2-emulated.sh python3 -m pytest -n0 tests/test_quantize_models.py``.

``--cpuid`` runs the processes natively with CPUID faulting instead (AVX-512 hidden from CPUID
only, :mod:`mmopt.runtime.cpu_mask`): fast enough for all of them, the zoo CNN cosine tests included,
where the kernel and CPU support it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "avx2-emulated.sh"

#: the tests whose verdicts depended on onnxruntime's ISA (the quick ones)
ISA_SENSITIVE = [
    "tests/test_check.py::test_corrupted_scale_fails_with_exit_1",
    "tests/test_quantize_models.py::test_digits_int8_drop_within_half_a_point",
]

#: ... and the slower ones, run natively under the CPUID mask
ISA_SENSITIVE_SLOW = ["tests/test_quantize_models.py::test_zoo_cnn_cosine"]

needs_qemu = pytest.mark.skipif(
    platform.machine() != "x86_64" or not (shutil.which("qemu-x86_64")
                                           or shutil.which("qemu-x86_64-static")),
    reason="needs an x86-64 machine with qemu-user (scripts/setup-arm-emulation.sh installs it)")


def _needs_cpuid_mask():
    from mmopt.runtime import cpu_mask

    reason = cpu_mask.unavailable()
    if reason:
        pytest.skip(reason)


def _emulated(*args, cwd=ROOT, timeout=900):
    # the interpreter running these tests, emulated (the script's PYTHON)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {
        "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


_PROBE = ("import numpy, subprocess, sys\n"
             "f = numpy._core._multiarray_umath.__cpu_features__\n"
             "child = subprocess.run([sys.executable, '-c', 'import numpy; print(numpy._core."
             "_multiarray_umath.__cpu_features__[\"AVX512F\"])'], capture_output=True, text=True)\n"
             "from mmopt.targets import get\n"
             "print(f['AVX2'], f['FMA3'], f['AVX512F'], child.stdout.strip(),"
             " get('x86').tvm_target().attrs['mcpu'])\n")


@needs_qemu
def test_emulated_cpu_is_avx2_only_down_to_child_processes():
    """The emulated process and the processes it starts see AVX2 + FMA and no AVX-512 (numpy's
    runtime CPU dispatch reads CPUID, as onnxruntime's does), and mmopt's host target follows."""
    proc = _emulated("python3", "-c", _PROBE, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "False", "False", "haswell"], proc.stdout


def test_cpuid_masked_cpu_is_avx2_only_down_to_child_processes():
    """The same under --cpuid: on an AVX-512 CPU the host CPU LLVM names is the vendor's last
    AVX2-only core; a CPU without AVX-512 keeps its own name."""
    _needs_cpuid_mask()
    from mmopt.runtime.cpu_mask import host_has_avx512
    from mmopt.targets import get

    proc = _emulated("--cpuid", "python3", "-c", _PROBE, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *flags, mcpu = proc.stdout.split()
    assert flags == ["True", "True", "False", "False"], proc.stdout
    if host_has_avx512():
        assert mcpu in ("znver3", "skylake"), proc.stdout  # AMD Zen 3, Intel Coffee Lake
    else:
        assert mcpu == get("x86").tvm_target().attrs["mcpu"], proc.stdout


@needs_qemu
def test_isa_sensitive_verdicts_hold_on_an_avx2_only_cpu(tmp_path):
    proc = _emulated("python3", "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider",
                     f"--basetemp={tmp_path / 'inner'}", *ISA_SENSITIVE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 passed" in proc.stdout, proc.stdout[-3000:]


def test_isa_sensitive_verdicts_hold_with_avx512_hidden_from_cpuid(tmp_path):
    """All of them, the slow zoo CNN ones included, natively with CPUID faulting."""
    _needs_cpuid_mask()
    proc = _emulated("--cpuid", "python3", "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider",
                     f"--basetemp={tmp_path / 'inner'}", *ISA_SENSITIVE, *ISA_SENSITIVE_SLOW,
                     timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "5 passed" in proc.stdout, proc.stdout[-3000:]
