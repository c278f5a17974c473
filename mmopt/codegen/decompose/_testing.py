"""Helpers shared by the decompositions' tests (``*_test.py`` beside each family)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from mmopt import ir as mir
from mmopt.codegen.decompose import DecomposePass, DecomposeReport, decompose
from mmopt.codegen.relax_import import supported_ops
from mmopt.runtime.verify import run_onnxruntime


def parse(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text syntax, with numpy initializers added, checked, shapes inferred."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v), k)
                                   for k, v in initializers.items())
    onnx.checker.check_model(model)
    return mir.infer_shapes(model)


def run_decompose(model: onnx.ModelProto, supported: frozenset[str] | None = None
                  ) -> tuple[onnx.ModelProto, DecomposeReport]:
    return decompose(model, supported_ops() if supported is None else supported)


def rerun_modified(model: onnx.ModelProto, supported: frozenset[str] | None = None) -> bool:
    """Whether a second DecomposePass over an already decomposed model still changes it."""
    work = ir.serde.deserialize_model(model)
    return bool(DecomposePass(supported_ops() if supported is None else supported)(work).modified)


def assert_same_on_onnxruntime(before: onnx.ModelProto, after: onnx.ModelProto,
                               feeds: dict[str, np.ndarray], *, atol: float = 1e-5,
                               rtol: float = 1e-5) -> None:
    """The decomposed model is valid ONNX and computes the same as the original on onnxruntime."""
    onnx.checker.check_model(after)
    expected = run_onnxruntime(before, feeds)
    got = run_onnxruntime(after, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=atol, rtol=rtol, err_msg=name)


def compile_and_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Import (with decompositions) and build ``model`` for x86 with mmopt's pipeline, run it."""
    import tvm
    from tvm import relax

    from mmopt import targets
    from mmopt.codegen import build
    from mmopt.codegen.relax_import import to_relax

    executable = build.build(to_relax(model), targets.get("x86"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    names = [v.name for v in mir.graph_inputs(model)]
    result = vm["main"](*[tvm.runtime.tensor(np.array(feeds[n], order="C")) for n in names])
    arrays = [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]
    return dict(zip([o.name for o in model.graph.output], arrays))


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]
