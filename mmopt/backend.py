"""An ONNX backend (:class:`onnx.backend.base.Backend`) that runs models through mmopt's compiler.

    from mmopt.backend import MmoptBackend
    rep = MmoptBackend.prepare(model)           # or: onnx.backend.test.BackendTest(MmoptBackend, ...)
    outputs = rep.run([x, y])                   # compiled for x86 by mmopt, run by TVM's VM

Each model goes the way ``mmopt compile`` takes it: IR preparation (opset normalization, static
shapes), the graph passes of the chosen level (default ``-O0``: none, the cheapest compile; the
import-time decompositions in :mod:`mmopt.codegen.decompose` always run), Relax import, mmopt's
target pipeline, a shared library written to a temporary directory, loaded with
:func:`mmopt.runtime.load` and called.

Shape specialization. A compiled artifact has static shapes. Some operators take what decides an
output *shape* (or an axis) as a tensor input: ``Reshape``'s shape, ``Slice``'s starts/ends, the axes
of reductions, ``TopK``'s ``k``, ``Resize``'s scales... ONNX's node tests feed those as graph inputs.
With ``bind_shape_inputs=True`` (the default) the graph inputs such operands are computed from
(directly, or through other nodes such as ``Range``'s bounds feeding a loop's trip count, but not
through ``Shape``) are bound to the values of the first call and the model is compiled for them, exactly as a user fixes them with ``--input-shape`` or an
initializer; a later call with different values compiles again (one artifact per distinct value set,
cached on the rep). Data inputs stay inputs of the artifact, except inputs with no elements (a
zero-size dimension): they carry no data, only a shape, and are bound like shape operands.
:data:`SHAPE_INPUTS` lists the operand positions.
"""

from __future__ import annotations

import logging
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

#: op type -> input positions that decide an output's shape, an axis, a count or the mode
#: (default domain).
#: A graph input feeding one of these positions is bound to its value with ``bind_shape_inputs``.
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
    "Pad": (1, 2, 3), "Resize": (1, 2, 3), "Upsample": (1,), "CenterCropPad": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,),
    "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "TopK": (1,), "OneHot": (1,), "CumSum": (1,), "CumProd": (1,), "Range": (0, 1, 2),
    "Trilu": (1,), "AffineGrid": (1,), "Col2Im": (1, 2), "SplitToSequence": (1,),
    "DFT": (1, 2), "STFT": (1, 3), "BlackmanWindow": (0,), "HannWindow": (0,),
    "HammingWindow": (0,), "MelWeightMatrix": (0, 1, 2, 3, 4),
    "NonMaxSuppression": (2, 3, 4), "Loop": (0, 1),
    # not shapes, but what selects the computation: inference or training behaviour
    "Dropout": (1, 2),
    # the mask decides how many elements the output has
    "Compress": (1,),
}


#: ops whose output depends on their input's shape only, not its values
_SHAPE_ONLY = {"Shape", "Size"}


def shape_input_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs (not initializers) that a :data:`SHAPE_INPUTS` operand is computed from (directly
    or through other nodes, but not through ``Shape``/``Size``), in graph order."""
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    operands: set[str] = set()
    producer: dict[str, onnx.NodeProto] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            producer.update((out, node) for out in node.output if out)
            if node.domain in ("", "ai.onnx"):
                for pos in SHAPE_INPUTS.get(node.op_type, ()):
                    if pos < len(node.input) and node.input[pos]:
                        operands.add(node.input[pos])
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g)

    def reads(node: onnx.NodeProto) -> list[str]:
        """The node's inputs and every name its subgraphs read (outer-scope values included)."""
        names = [i for i in node.input if i]
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                      a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
                for inner in g.node:
                    names.extend(reads(inner))
                names.extend(o.name for o in g.output)
        return names

    walk(model.graph)
    reached, stack = set(), list(operands)
    while stack:
        name = stack.pop()
        if name in reached:
            continue
        reached.add(name)
        node = producer.get(name)
        if node is not None and node.op_type not in _SHAPE_ONLY:
            stack.extend(reads(node))
    return [name for name in graph_inputs if name in reached]


def bind_inputs(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the graph inputs in ``values`` turned into initializers."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    keep = [i for i in bound.graph.input if i.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    for name, value in values.items():
        bound.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return bound


class MmoptRep(BackendRep):
    """A prepared model: compiled on the first :meth:`run` (and again for new shape-input values)."""

    def __init__(self, model: onnx.ModelProto, *, target: str = "x86", opt_level: int = 0,
                 bind_shape_inputs: bool = True):
        self.model = model
        self.target = target
        self.opt_level = opt_level
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_names = [o.name for o in model.graph.output]
        self.bound_names = shape_input_names(model) if bind_shape_inputs else []
        self._compiled: dict[bytes, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="mmopt-backend-")
        weakref.finalize(self, self._tmp.cleanup)
        declared_empty = any(d.HasField("dim_value") and d.dim_value == 0
                             for i in model.graph.input if i.name in self.input_names
                             for d in i.type.tensor_type.shape.dim)
        if not self.bound_names and not declared_empty:
            self._artifact({})  # compile now; otherwise at the first run, for its values

    def _artifact(self, bound: Mapping[str, np.ndarray]):
        key = b"".join(name.encode() + b"\0" + np.asarray(v).tobytes() + str(np.asarray(v).dtype).encode()
                       + str(np.asarray(v).shape).encode() for name, v in bound.items())
        if key not in self._compiled:
            import mmopt
            from mmopt.runtime import load

            model = bind_inputs(self.model, bound) if bound else self.model
            prefix = Path(self._tmp.name) / f"model{len(self._compiled)}"
            mmopt.compile(model, self.target, prefix, opt_level=self.opt_level, verify=False)
            self._compiled[key] = load(prefix)
        return self._compiled[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) != len(self.input_names):
                raise MmoptError(f"expected {len(self.input_names)} input(s) "
                                 f"({', '.join(self.input_names)}), got {len(inputs)}")
            feeds = dict(zip(self.input_names, inputs))
        bound = {name: np.asarray(feeds.pop(name)) for name in self.bound_names}
        # an input with no elements carries no data, only its shape: it becomes a constant
        bound.update({name: np.asarray(feeds.pop(name)) for name in list(feeds)
                      if np.asarray(feeds[name]).size == 0})
        compiled = self._artifact(bound)
        got = _call(compiled, {name: feeds[name] for name in compiled.input_names})
        outputs = [got[name] for name in self.output_names]
        return namedtupledict("Outputs", self.output_names)(*outputs)


def _call(compiled, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call a loaded artifact. Workaround: ``CompiledModel`` converts inputs with
    ``np.ascontiguousarray``, which makes a 0-d array 1-d, and the VM then rejects a scalar input
    (Clip's bounds, ...); scalars are passed here directly until that is fixed there."""
    if all(np.ndim(v) for v in feeds.values()):
        return compiled(**feeds)
    import tvm

    from mmopt.runtime.artifact import _flatten

    compiled._arguments((), feeds)  # the same checks (names, shapes, dtypes) as a normal call
    tensors = []
    for spec in compiled.meta.inputs:
        array = np.array(feeds[spec.name], dtype=spec.dtype, order="C")
        tensors.append(tvm.runtime.tensor(array, device=compiled.device))
    arrays = _flatten(compiled._main(*tensors))  # noqa: SLF001
    return dict(zip(compiled.output_names, arrays))


class MmoptBackend(Backend):
    """``onnx.backend.base.Backend`` over mmopt (device ``CPU``: the ``x86`` target by default).

    ``prepare`` options: ``target`` (an mmopt target name that runs on this machine), ``opt_level``
    (graph pass level, default 0), ``bind_shape_inputs`` (see the module docstring).
    """

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> MmoptRep:
        if not cls.supports_device(device):
            raise MmoptError(f"mmopt's ONNX backend runs on CPU, not {device}")
        super().prepare(model, device)  # onnx.checker
        options = {k: kwargs[k] for k in ("target", "opt_level", "bind_shape_inputs") if k in kwargs}
        return MmoptRep(model, **options)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node on ``inputs`` (in the order of ``node.input``, empty names skipped)."""
        super().run_node(node, inputs, device, **({"opset_version": kwargs["opset_version"]}
                                                  if "opset_version" in kwargs else {}))
        arrays = [np.asarray(x) for x in (inputs.values() if isinstance(inputs, Mapping) else inputs)]
        names = [n for n in node.input if n]
        graph_inputs = [onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in zip(names, arrays)]
        if outputs_info is not None:
            graph_outputs = [onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for n, (dt, shape) in zip([o for o in node.output if o], outputs_info)]
        else:
            graph_outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
        opsets = [onnx.helper.make_opsetid(node.domain, kwargs["opset_version"])] \
            if "opset_version" in kwargs else None
        model = onnx.helper.make_model(onnx.helper.make_graph([node], "node", graph_inputs,
                                                              graph_outputs),
                                       opset_imports=opsets)
        model = onnx.shape_inference.infer_shapes(model)
        options = {k: kwargs[k] for k in ("target", "opt_level", "bind_shape_inputs") if k in kwargs}
        return MmoptRep(model, **options).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.split(":")[0].upper() == "CPU"


prepare = MmoptBackend.prepare
run_model = MmoptBackend.run_model
run_node = MmoptBackend.run_node
supports_device = MmoptBackend.supports_device
