"""Run a process as if this x86-64 CPU had no AVX-512: like-for-like timings of AVX2 code.

An ``x86-avx2`` artifact run on an AVX-512 CPU uses AVX2 instructions only, while onnxruntime picks
its kernels by CPUID when it loads and takes its AVX-512 (and VNNI) ones. Timing the two against
each other compares ISAs, not engines. ``cpu_mask.c``, loaded into the onnxruntime process with
``LD_PRELOAD``, turns on Linux's CPUID faulting and answers every CPUID with the AVX-512, VNNI and
AMX bits cleared, so onnxruntime (and numpy) choose their AVX2 kernels, exactly as on an AVX2-only
CPU of the same microarchitecture. The library is compiled with the system C compiler on first use
and cached (``~/.cache/mmopt/cpu_mask``).

Needs x86-64 Linux whose kernel and CPU (or hypervisor) support CPUID faulting
(``arch_prctl(ARCH_SET_CPUID)``; ``cpuid_fault`` in ``/proc/cpuinfo``), and a C compiler.
:func:`unavailable` says why not otherwise; nothing silently runs unmasked.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from mmopt.errors import MmoptError

#: the ISA levels a process can be shown (the extensions each one hides)
LEVELS = {"avx2": "AVX-512 (every subset), AVX512-VNNI, AVX-VNNI and AMX"}

_SOURCE = Path(__file__).with_name("cpu_mask.c")
_ARCH_SET_CPUID = 0x1012
_SYS_ARCH_PRCTL = 158  # x86-64


def unavailable() -> str | None:
    """Why a process cannot be masked here, or None when it can."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"CPUID masking needs x86-64 Linux (this is {platform.system()} {platform.machine()})"
    if _compiler() is None:
        return "CPUID masking needs a C compiler (cc, gcc or clang) to build its library"
    libc = ctypes.CDLL(None, use_errno=True)
    # ARCH_SET_CPUID 1 = CPUID allowed (no change); it fails with ENODEV without CPUID faulting
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_SET_CPUID, 1) != 0:
        return ("this kernel or CPU does not support CPUID faulting (arch_prctl ARCH_SET_CPUID: "
                f"{os.strerror(ctypes.get_errno())})")
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def library() -> Path:
    """The compiled preload library (built on first use, cached by the source's hash)."""
    from mmopt.zoo import cache_dir

    reason = unavailable()
    if reason:
        raise MmoptError(reason)
    cc = _compiler()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    path = cache_dir() / "cpu_mask" / f"cpu_mask-{key}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(partial), str(_SOURCE),
                           "-ldl"], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise MmoptError(f"building the CPUID mask with {cc} failed: {tail}")
    os.replace(partial, path)
    return path


def environment(level: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the mask for ``level`` preloaded: the
    environment for a child process that is to see an ``level``-only CPU."""
    if level not in LEVELS:
        raise MmoptError(f"CPU mask {level!r}: known levels are {', '.join(LEVELS)}")
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library()} {preload}".strip()
    env["MMOPT_CPU_MASK"] = level
    return env


def seen_isa() -> str:
    """The best x86 vector ISA this process sees through CPUID (numpy's run-time dispatch reads it
    when numpy loads): "avx512_vnni", "avx512", "avx2", "sse" or, elsewhere, the machine name."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return platform.machine().lower()
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    if features.get("AVX512F"):
        return "avx512_vnni" if features.get("AVX512VNNI") else "avx512"
    if features.get("AVX2") and features.get("FMA3"):
        return "avx2"
    return "sse"


def host_has_avx512() -> bool:
    """Whether this machine's CPU has AVX-512 (as the kernel lists its flags: a mask does not
    change that; ``scripts/avx2-emulated.sh --cpuid`` hides it by a private /proc/cpuinfo)."""
    from mmopt.targets.registry import cpu_flags

    return "avx512f" in cpu_flags()


def level_for(target_name: str) -> str | None:
    """The mask under which onnxruntime matches the ISA of ``target_name``'s code on this CPU, or
    None when it already does (the target uses the CPU's best ISA) or no level fits (ARM, GPU,
    baseline x86-64 code, a CPU without AVX-512)."""
    from mmopt import targets

    try:
        target = targets.get(target_name)
    except MmoptError:
        return None
    flags = set(target.requires_cpu_flags)
    if (target.device == "cpu" and target.arch == "x86_64" and "avx2" in flags
            and not any(f.startswith("avx512") for f in flags) and host_has_avx512()):
        return "avx2"
    return None
