"""Relax module -> compiled executable -> shared library on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from mmopt.codegen.pipeline import relax_pipeline
from mmopt.errors import MmoptError, summarize
from mmopt.targets import Target, require_toolchain

logger = logging.getLogger(__name__)


def build(mod, target: Target, database=None, options=None):
    """Compile a Relax ``IRModule`` for ``target`` with mmopt's pipeline; returns a TVM Executable.

    ``database``: optional MetaSchedule database of tuning records to apply; ``options``: the
    :class:`mmopt.codegen.options.CodegenOptions` (see
    :func:`mmopt.codegen.pipeline.relax_pipeline`).
    """
    import tvm

    try:
        return tvm.compile(mod, target=target.tvm_target(),
                           relax_pipeline=relax_pipeline(target, database, options))
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types from C++
        if _symbolic(mod) and ("FuseTIR" in _where(exc) or "Parameter expression" in str(exc)):
            # TVM 0.27's FuseTIR fails on some fused groups around the packed convolutions of a
            # model with symbolic spatial dims (a YOLOv8 neck): compile again with those
            # convolutions on unpacked weights; the degradation is recorded (note_skip)
            from mmopt.codegen.cpu_schedules import note_skip
            from mmopt.codegen.packed_conv import PACK_SYMBOLIC

            logger.warning("code generation with packed weights failed on symbolic shapes (%s); "
                           "compiling the dynamic convolutions on unpacked weights",
                           summarize(exc))
            note_skip("dynamic convolutions", "pack_weights",
                      f"TVM FuseTIR failed with packed weights: {summarize(exc)[:120]}")
            token = PACK_SYMBOLIC.set(False)
            try:
                return tvm.compile(mod, target=target.tvm_target(),
                                   relax_pipeline=relax_pipeline(target, database, options))
            except Exception as again:  # noqa: BLE001
                raise MmoptError(f"code generation for target {target.name} failed: "
                                 f"{summarize(again)}") from again
            finally:
                PACK_SYMBOLIC.reset(token)
        raise MmoptError(f"code generation for target {target.name} failed: {summarize(exc)}") from exc


def _symbolic(mod) -> bool:
    """Whether ``mod``'s ``main`` has symbolic input dims."""
    main = mod["main"] if "main" in [g.name_hint for g in mod.get_global_vars()] else None
    if main is None:
        return False
    return any(not all(hasattr(d, "value") for d in getattr(p.ty, "shape", None) or [])
               for p in main.params)


def _where(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


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

