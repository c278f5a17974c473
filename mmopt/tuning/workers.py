"""Where candidates are built and measured: a builder whose worker processes live for the whole run,
the RPC runner's sessions on farm devices, the thread count a measurement runs with, and the
target MetaSchedule tunes for.

The functions that return jobs and session factories are sent to worker processes by value.
"""

from __future__ import annotations

import contextlib
import logging
import os

from mmopt.errors import summarize
from mmopt.tuning import farm as _farm

logger = logging.getLogger(__name__)


def _build_and_export(cross_compiler: str | None):
    """The builder's job for one candidate (sent to a worker process by value): lower it and link
    a shared library, so devices need no compiler (the emulated one has none)."""

    def job(mod, target):
        import os as _os
        import tempfile as _tempfile

        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc as _cc

        from mmopt.codegen.tir_pipeline import tir_pipeline_for

        # MetaSchedule's default build first imports tvm.s_tir.tensor_intrin (20-30 s per worker).
        # Candidates arrive with their intrinsics already applied; lowering does not need it.
        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        lib = tvm_build(mod, target=target, pipeline=tir_pipeline_for(target))
        path = _os.path.join(_tempfile.mkdtemp(prefix="mmopt-tune-"), "candidate.so")
        if cross_compiler:
            lib.export_library(path, fcompile=_cc.cross_compiler(cross_compiler))
        else:
            lib.export_library(path)
        return path

    return job


def make_builder(max_workers: int, timeout_s: float, cross_compiler: str | None):
    """A MetaSchedule builder whose worker processes live for the whole run.

    MetaSchedule's LocalBuilder starts new workers for every batch; each spends seconds importing
    TVM, which dominates small batches. Workers are recycled after 64 builds (TVM's reason for
    fresh pools is a slow leak in long-lived workers).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    job = _build_and_export(cross_compiler)

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s,
                                          maximum_process_uses=64)

        def build(self, build_inputs):
            results = []
            for item in self.pool.map_with_error_catching(
                    lambda x: job(*x), [(b.mod, b.target) for b in build_inputs]):
                if item.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(item.value, None))
                elif item.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {timeout_s:.0f}s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {item.value}"))
            return results

    return PersistentBuilder()


def session_function(address: tuple[str, int], key: str, wait_s: float, timeout_s: float,
                     secret: str | None = None):
    """The RPC runner's session factory (sent to its worker processes by value: the farm secret
    travels as its directory)."""

    def create_session(_rpc_config):
        from mmopt.tuning.farm import request_session

        return request_session(address, key, wait_s=wait_s, session_timeout=timeout_s,
                               secret=secret)

    return create_session


def device_facts(address: tuple[str, int], key: str, wait_s: float,
                 secret) -> tuple[int | None, dict]:
    """``(threads a model gets, mmopt.device.info)`` of a device of ``key`` (asked from one
    device); ``(None, {})`` when it cannot be asked."""
    try:
        session = _farm.request_session(address, key, wait_s=wait_s, session_timeout=60,
                                        secret=secret)
        threads = int(session.get_function("runtime.NumThreads")())
        return threads, _farm.device_info(session)
    except Exception as exc:  # noqa: BLE001 - only a default is lost
        logger.warning("could not ask a %s device for its thread count (%s)", key, summarize(exc))
        return None, {}


@contextlib.contextmanager
def measuring_threads(count: int | None):
    """Measure with ``count`` threads: candidates run in worker processes started from here, and
    TVM's default (half the logical cores on x86, for hyper-threading) is not what a deployed
    model gets (``mmopt bench --threads``, the speed suite: the physical cores)."""
    if count is None:
        yield
        return
    # Unpinned worker threads, as mmopt.runtime runs models: a pinned one cannot move off a core
    # that other work keeps busy, and every parallel kernel then waits for it.
    from mmopt._environ import patched_environ

    with patched_environ({"TVM_NUM_THREADS": str(count),
                          "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS", "0")}):
        yield


def load_tensor_intrinsics(tgt) -> None:
    """Register the tensor intrinsics MetaSchedule's rules use for ``tgt``, and only those.

    MetaSchedule's TuneContext runs ``import tvm.s_tir.tensor_intrin``, whose ``__init__``
    registers the intrinsics of every backend by parsing TVMScript: 27 s of CPU here, 17 s of it
    for CUDA's tensor-core intrinsics. For a CPU target the x86 and ARM modules (2 s) are all its
    rules look up, so the package is entered into ``sys.modules`` without running its
    ``__init__`` and just those submodules are imported; the TuneContext's import then finds it
    loaded. Other targets import the whole package as TVM does. Importing a submodule later (e.g.
    ``tvm.s_tir.tensor_intrin.cuda``) still works: the package has its normal ``__path__``.
    """
    import importlib
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if tgt.device != "cpu":
        if name in sys.modules and getattr(sys.modules[name], "_mmopt_partial", False):
            for sub in ("cuda", "rocm", "x86", "arm_cpu", "hexagon", "riscv_cpu"):
                importlib.import_module(f"{name}.{sub}")
        else:
            importlib.import_module(name)
        return
    if name not in sys.modules:
        import tvm.s_tir

        package = importlib.util.module_from_spec(importlib.util.find_spec(name))
        package._mmopt_partial = True
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


def target_for_tuning(tgt, num_cores: int):
    """The compile target plus what MetaSchedule needs to tune CPU code (the core count)."""
    import tvm

    tvm_dict = dict(tgt.tvm)
    if tvm_dict.get("kind") == "llvm":
        tvm_dict["num-cores"] = int(num_cores)
    if tgt.host is not None:
        return tvm.target.Target(tvm_dict, host=tgt.host)
    return tvm.target.Target(tvm_dict)

