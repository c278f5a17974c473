"""Relax module -> compiled executable -> shared library on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from mmopt.codegen.tir_pipeline import tir_pipeline_for
from mmopt.codegen.pipeline import relax_pipeline
from mmopt.errors import MmoptError, summarize
from mmopt.frontends._native import (
    native_output_captured,
    release_native_objects,
    replay,
)
from mmopt.targets import Target, require_toolchain

logger = logging.getLogger(__name__)


def build(mod, target: Target, database=None, options=None):
    """Compile a Relax ``IRModule`` for ``target`` with mmopt's pipeline; returns a TVM Executable.

    ``database``: optional MetaSchedule database of tuning records to apply; ``options``: the
    :class:`mmopt.codegen.options.CodegenOptions` (see
    :func:`mmopt.codegen.pipeline.relax_pipeline`).

    A module with symbolic input dims whose first attempt fails in TVM's FuseTIR is compiled again
    with its dynamic convolutions on unpacked (HWIO) weights (:data:`PACK_SYMBOLIC`): TVM 0.27's
    FuseTIR fails on some fused groups around packed convolutions with symbolic spatial dims (a
    YOLOv8 neck). That degradation is recorded (:func:`mmopt.codegen.schedule_fallbacks.note_skip`),
    so the compile report and the artifact JSON state it.
    """
    executable, exc = _attempt(mod, target, database, options)
    if exc is None:
        return executable
    from mmopt.codegen.symbolic_dims import has_symbolic_inputs

    if not (has_symbolic_inputs(mod) and _fusetir_failed(exc)):
        raise MmoptError(f"code generation for target {target.name} failed: {summarize(exc)}") from exc
    from mmopt.codegen.schedule_fallbacks import note_skip
    from mmopt.codegen.packed_conv import PACK_SYMBOLIC

    logger.warning("code generation with packed weights failed on symbolic shapes (%s); "
                   "compiling the dynamic convolutions on unpacked weights (slower)",
                   summarize(exc))
    note_skip("dynamic convolutions", "pack_weights",
              f"TVM FuseTIR failed with packed weights ({summarize(exc)[:120]}): the dynamic "
              "convolutions run on unpacked HWIO weights")
    token = PACK_SYMBOLIC.set(False)
    try:
        executable, again = _attempt(mod, target, database, options)
    finally:
        PACK_SYMBOLIC.reset(token)
    if again is not None:
        raise MmoptError(f"code generation for target {target.name} failed: "
                         f"{summarize(again)}") from again
    return executable


def _attempt(mod, target: Target, database, options):
    """``(executable, None)``, or ``(None, exception)`` when ``tvm.compile`` failed."""
    import tvm

    try:
        # a pass that fails mid-function destroys its C++ BlockBuilder unwinding, which warns on
        # fd 2: TVM's output is passed on after a success, only logged (--debug) after a failure
        with native_output_captured() as native:
            executable = tvm.compile(mod, target=target.tvm_target(),
                                     relax_pipeline=relax_pipeline(target, database, options),
                                     tir_pipeline=tir_pipeline_for(target.tvm_target()))
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types from C++
        if "".join(native).strip():
            logger.debug("TVM's output before the failure:\n%s", "".join(native).rstrip())
        release_native_objects(exc)  # a BlockBuilder left mid-function warns when destroyed
        return None, exc
    replay(native)
    return executable, None


def _fusetir_failed(exc: BaseException) -> bool:
    """Whether ``exc`` came from TVM's FuseTIR pass (its message or its traceback names it)."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    return "FuseTIR" in text or "Parameter expression" in str(exc)


def export(executable, target: Target, path: Path) -> None:
    """Write the shared library, cross-linked with the target's compiler when it has one."""
    import tvm

    require_toolchain(target)
    kwargs = {}
    if target.cross_compiler:
        kwargs["fcompile"] = tvm.support.cc.cross_compiler(target.cross_compiler)
    try:
        executable.export_library(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise MmoptError(f"linking {path.name} for target {target.name} failed: "
                         f"{summarize(exc)}") from exc

