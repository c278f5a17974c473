"""Compiled models run on the physical cores by default, and a user's thread count is kept."""

from __future__ import annotations

import os
import subprocess
import sys

from mmopt.runtime.threads import local_cores

_ASK = ("import mmopt.runtime.artifact, os, tvm; "
        "print(os.environ.get('TVM_NUM_THREADS'), tvm.get_global_func('runtime.NumThreads')())")


def _ask(**env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _ASK], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout
    return out.split()[-2:]


def test_tvm_thread_pool_takes_the_physical_cores():
    """TVM's own default is half the logical CPUs on x86: on a machine without SMT (a 2-vCPU VM
    with one thread per core) that was one thread where onnxruntime runs two."""
    assert _ask() == [str(local_cores()), str(local_cores())]


def test_a_thread_count_the_user_set_is_kept():
    assert _ask(TVM_NUM_THREADS="1") == ["1", "1"]
    assert _ask(OMP_NUM_THREADS="1")[0] == "None"


def test_local_cores_stays_within_the_affinity_mask():
    assert 1 <= local_cores() <= len(os.sched_getaffinity(0))
