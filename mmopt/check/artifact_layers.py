"""Per-layer localization inside a compiled artifact: which kernel computes a wrong tensor?

An artifact's fused kernels keep their intermediate tensors in registers and scratch memory, so
they cannot be read back from the artifact itself. Instead a *debug variant* is built: the
optimized ONNX model the artifact was compiled from (the reference model through the same graph
passes, at the artifact's ``-O`` level and input shapes), with every float node output added as a
graph output, compiled for the artifact's target with the artifact's code-generation settings.
The kernels stay what they are (a fused kernel whose intermediate is an output writes it out as
well), so a miscompiled kernel is just as wrong in the debug variant, and every tensor can be
compared with onnxruntime running the same optimized model (QDQ reference semantics). The layer
statistics and the culprit are those of :mod:`mmopt.check.per_layer`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx

from mmopt.check.per_layer import DEFAULT_CAP_DB, DEFAULT_JUMP_DB, PerLayerReport, _graph_order, analyse_layers
from mmopt.errors import MmoptError
from mmopt.runtime import ort


def debug_model(reference, meta) -> onnx.ModelProto:
    """The optimized model an artifact (``meta``: its :class:`ArtifactMeta`) was compiled from,
    rebuilt from ``reference`` (path or ModelProto), with its float intermediate tensors exposed."""
    from mmopt import ir as mir
    from mmopt.api import front_end

    shapes = {t.name: tuple(t.shape) for t in meta.inputs}
    _reference, optimized, _report = front_end(reference, shapes, meta.opt_level or 0)
    typed = {v.name: v for v in mir.infer_shapes(optimized).graph.value_info
             if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
             and v.type.tensor_type.HasField("shape")}
    exposed = onnx.ModelProto.FromString(optimized.SerializeToString())
    have = {o.name for o in exposed.graph.output}
    for node in exposed.graph.node:
        for o in node.output:
            if o in typed and o not in have and node.op_type != "Constant":
                exposed.graph.output.append(typed[o])
                have.add(o)
    return exposed


def compare_artifact_layers(reference, artifact, samples: Iterable[Mapping[str, np.ndarray]], *,
                            jump_db: float = DEFAULT_JUMP_DB, cap_db: float = DEFAULT_CAP_DB,
                            progress=None) -> PerLayerReport:
    """Compare every intermediate tensor of the compiled ``artifact`` (a loaded
    :class:`~mmopt.runtime.CompiledModel`) with onnxruntime, over ``samples``."""
    from mmopt.api import compile as compile_model
    from mmopt.codegen.options import CodegenOptions
    from mmopt.runtime import CompiledModel

    step = progress or (lambda _msg: None)
    meta = artifact.meta
    model = debug_model(reference, meta)
    codegen = CodegenOptions(**{k: v for k, v in meta.codegen.items()
                                if k in ("winograd", "pack_weights", "layout")})
    with tempfile.TemporaryDirectory(prefix="mmopt-debug-") as tmp:
        step(f"compiling a debug variant for {meta.target.get('name', '?')}")
        try:
            compile_model(model, meta.target["name"], Path(tmp) / "debug", opt_level=0,
                          verify=False, codegen=codegen)
        except MmoptError as exc:
            raise MmoptError(f"--per-layer: the debug variant of {artifact.so_path} does not "
                             f"compile ({exc})") from exc
        debug = CompiledModel(Path(tmp) / "debug")
        session = ort.session(model, label="reference (per-layer)")
        names = [o.name for o in session.get_outputs()]
        exposed = set(debug.output_names)
        order = _graph_order(model)
        pairs = {name: (name, name) for name, _ in order if name in exposed or
                 name in {i.name for i in model.graph.input}}

        def values():
            for feeds in samples:
                expected = dict(zip(names, ort.run(session, feeds, label="reference")))
                got = debug(**feeds)
                yield {**expected, **feeds}, {**got, **feeds}

        step("comparing the kernels' tensors layer by layer")
        return analyse_layers(model, order, pairs, values(), jump_db=jump_db, cap_db=cap_db)
