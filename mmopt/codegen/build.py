"""Relax module -> compiled executable -> shared library on disk."""

from __future__ import annotations

import logging
from pathlib import Path

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
    """
    import tvm

    try:
        # a pass that fails mid-function destroys its C++ BlockBuilder unwinding, which warns on
        # fd 2: TVM's output is passed on after a success, only logged (--debug) after a failure
        with native_output_captured() as native:
            executable = tvm.compile(mod, target=target.tvm_target(),
                                     relax_pipeline=relax_pipeline(target, database, options))
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types from C++
        if "".join(native).strip():
            logger.debug("TVM's output before the failure:\n%s", "".join(native).rstrip())
        release_native_objects(exc)  # a BlockBuilder left mid-function warns when destroyed
        raise MmoptError(f"code generation for target {target.name} failed: {summarize(exc)}") from exc
    replay(native)
    return executable


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

