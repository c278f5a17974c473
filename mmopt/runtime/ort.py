"""The one place mmopt opens an onnxruntime session (CPU provider).

Two ways of executing an ONNX model matter to mmopt; ``--eval-engine`` names them:

- ``reference`` (graph optimizations off): onnxruntime executes the graph as written. A QDQ model
  runs by its ONNX definition, ``DequantizeLinear -> float op -> QuantizeLinear``, which gives the
  same numbers on every CPU (up to float summation order). Integer ops (``MatMulInteger``,
  ``QLinearConv``, com.microsoft ``DynamicQuantizeMatMul``, ...) run with their int8 weights made
  uint8 (:mod:`mmopt.runtime.exact_integer`), which onnxruntime sums exactly on every CPU, where
  its u8 x s8 kernels saturate without VNNI. Verification, calibration, per-layer comparison and,
  by default, accuracy scoring use it; mmopt's compiled int8 kernels agree with it.
- ``onnxruntime`` (onnxruntime's default, all optimizations): what a user who ships on onnxruntime
  runs. QDQ groups fuse into QLinear integer kernels whose arithmetic depends on the instruction
  set: on AVX2 without VNNI, uint8 x int8 products are summed in saturating int16 pairs, so the same
  QDQ model scores differently on different CPUs.

A third engine of ``quantize --eval-engine``, ``artifact`` (the candidate compiled by mmopt and run
here), goes through :mod:`mmopt.runtime.artifact`, not this module (:mod:`mmopt.quantize.evaluate`).

    from mmopt.runtime import ort
    session = ort.session(model, label="candidate model.int8.onnx")          # reference
    session = ort.session("m.onnx", label="bench", optimization="all", threads=2)
    outputs = ort.run(session, feeds, label="candidate model.int8.onnx")

A model onnxruntime cannot load or run raises a one-line :class:`~mmopt.errors.MmoptError` that
starts with the ``label`` given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from mmopt.errors import MmoptError, summarize

if TYPE_CHECKING:  # onnx and numpy stay unimported: benchmark workers import this module
    import numpy as np
    import onnx

#: ``--eval-engine`` values -> the graph optimization level they run ONNX models at
ENGINES = {"reference": "off", "onnxruntime": "all"}
DEFAULT_ENGINE = "reference"
#: what each engine is, for reports
ENGINE_DESCRIPTIONS = {
    "reference": "onnxruntime, graph optimizations off: QDQ as dequantize -> float op -> quantize, "
                 "integer ops exact on every CPU",
    "onnxruntime": "onnxruntime, default optimizations: fused int8 kernels, CPU-dependent",
}
#: onnxruntime graph optimization levels by mmopt's name for them
OPTIMIZATION_LEVELS = ("off", "basic", "all")


def check_engine(engine: str, option: str = "--eval-engine") -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a usage error."""
    if engine not in ENGINES:
        raise MmoptError(f"{option} {engine}: use one of {', '.join(ENGINES)}")
    return engine


def session(model: onnx.ModelProto | str | os.PathLike | bytes, *, label: str,
            optimization: str = "off", threads: int | None = None,
            inter_op_threads: int | None = None,
            optimized_model_path: str | os.PathLike | None = None,
            profile_prefix: str | os.PathLike | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU provider.

    ``model``: a ``ModelProto``, a path to an ``.onnx`` file, or serialized model bytes.
    ``optimization`` (:data:`OPTIMIZATION_LEVELS`): ``"off"`` (the reference semantics, the
    default), ``"basic"`` (standard-op rewrites only: constant folding, BatchNormalization into Conv)
    or ``"all"`` (onnxruntime's default; what the ``onnxruntime`` engine runs).
    ``threads``/``inter_op_threads``: onnxruntime's intra-/inter-op pool sizes (None: onnxruntime's
    default). ``optimized_model_path``: also write the optimized graph there. ``profile_prefix``:
    record onnxruntime's profile, written under that prefix by ``session.end_profiling()``
    (:mod:`mmopt.runtime.profile`). ``label`` starts the
    one-line :class:`MmoptError` raised when onnxruntime cannot load the model.

    At ``"off"`` the int8 weights of integer ops are made uint8 first (the module docstring).
    """
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization={optimization!r}: use one of "
                         f"{', '.join(OPTIMIZATION_LEVELS)}")
    level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
             "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    # fatal only: onnxruntime's errors come back as exceptions (mmopt's one-line errors), and
    # logged from C++ as well they were a second, colored line on stderr (fuzzing:
    # transformer_block/wrong_dims/765, a Reshape failing at run time in ``mmopt check``)
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    if optimized_model_path is not None:
        options.optimized_model_filepath = os.fspath(optimized_model_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = os.fspath(profile_prefix)
    try:
        if optimization == "off":
            model = _exact_integer(model)
        if hasattr(model, "SerializeToString"):
            source = model.SerializeToString()
        else:
            source = model if isinstance(model, bytes) else os.fspath(model)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise MmoptError(f"{label}: onnxruntime cannot load the model ({summarize(exc)})") from exc


def _exact_integer(model):
    """``model`` (a ``ModelProto``, path or bytes) with the int8 weights of its integer ops made
    uint8 (:mod:`mmopt.runtime.exact_integer`); as given when it has none."""
    import onnx

    from mmopt.runtime.exact_integer import exact_integer_weights, needs_rewrite

    if hasattr(model, "SerializeToString"):
        proto = model
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        proto = onnx.load(os.fspath(model), load_external_data=False)
        if not needs_rewrite(proto):
            return model
        # the weights stored beside the file, read only when they are to be rewritten
        onnx.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(model)))
    rewritten, count = exact_integer_weights(proto)
    return rewritten if count else model


def engine_session(model: onnx.ModelProto | str | os.PathLike, engine: str, *, label: str,
                   threads: int | None = None):
    """:func:`session` at the optimization level of ``engine`` (one of :data:`ENGINES`)."""
    return session(model, label=label, optimization=ENGINES[check_engine(engine)], threads=threads)


def run(session, feeds: Mapping[str, np.ndarray], *, label: str,
        names: Sequence[str] | None = None) -> list[np.ndarray]:
    """``session.run(names, feeds)``; a failure is a one-line :class:`MmoptError` naming
    ``label``."""
    try:
        return session.run(None if names is None else list(names), dict(feeds))
    except Exception as exc:  # noqa: BLE001
        raise MmoptError(f"{label}: onnxruntime failed to run ({summarize(exc)})") from exc
