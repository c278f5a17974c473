"""How many threads a compiled model runs on by default: this machine's physical cores.

TVM's thread pool, left to itself, takes half the logical CPUs on x86 (it assumes every core runs
two hardware threads). On a machine without SMT that is half the cores: a 2-vCPU cloud VM with one
thread per core ran every mmopt artifact on one thread (MobileNetV2-style 7.8 ms against 4.1 ms on
two, `TVM_NUM_THREADS` unset vs 2, AMD EPYC VM), while onnxruntime takes the physical cores. mmopt
sets ``TVM_NUM_THREADS`` to the physical cores this process may run on before TVM's pool starts,
unless the user set it (or ``OMP_NUM_THREADS``, which TVM reads too). Tuning measures with the same
count, so records are timed as the deployed model runs.
"""

from __future__ import annotations

import os
from pathlib import Path


def local_cores() -> int:
    """Physical cores this process may run on (at least 1): the distinct (package, core) pairs of
    the CPUs in its affinity mask (a container's cpuset, ``taskset``), from Linux's sysfs
    topology, as the native library counts them; elsewhere psutil's physical cores."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = None
    if allowed:
        cores = set()
        for cpu in allowed:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            try:
                cores.add((int((topology / "physical_package_id").read_text()),
                           int((topology / "core_id").read_text())))
            except (OSError, ValueError):  # no topology: count the CPU itself
                cores.add((-1, cpu))
        return len(cores)
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def default_thread_count() -> None:
    """Set ``TVM_NUM_THREADS`` to :func:`local_cores` unless the user chose a count
    (``TVM_NUM_THREADS`` or ``OMP_NUM_THREADS``). Takes effect only before TVM's thread pool
    starts in this process (its first parallel kernel)."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(local_cores())
