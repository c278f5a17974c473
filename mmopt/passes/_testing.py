"""Helpers for the pass tests (``*_test.py`` beside each pass): build small models, check a pass.

Every rule test shows the five things STYLE.md asks for; :func:`check_pass` does them in one call:
the rule fired the expected number of times, the result passes ``onnx.checker``, onnxruntime agrees
before and after within the stated tolerance, and a second run reports ``modified=False``. Negative
cases use :func:`assert_not_fired`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper, parser

from mmopt.runtime.verify import run_onnxruntime

ATOL = 1e-4
RTOL = 1e-3


def make_model(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """Parse ONNX text syntax and add the given initializers (only those the graph uses)."""
    model = parser.parse_model(text)
    used = {i for n in model.graph.node for i in n.input}
    for name, value in initializers.items():
        if name in used:
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[value.name] = (rng.standard_normal(shape) * 2).astype(dtype)
    return feeds


def apply(pass_cls, model: onnx.ModelProto):
    """Run a fresh instance of ``pass_cls`` on a copy of ``model``: (ModelProto, pass, result)."""
    instance = pass_cls()
    result = instance(ir.serde.deserialize_model(model))
    return ir.serde.serialize_model(result.model), instance, result


def op_types(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto,
                        feeds: Mapping[str, np.ndarray] | None = None,
                        atol: float = ATOL, rtol: float = RTOL) -> None:
    feeds = dict(feeds) if feeds is not None else random_feeds(before)
    expected = run_onnxruntime(before, feeds)
    got = run_onnxruntime(after, feeds)
    assert list(got) == list(expected), (list(got), list(expected))
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, (name, got[name].shape, ref.shape)
        np.testing.assert_allclose(got[name], ref, atol=atol, rtol=rtol, err_msg=name)


def check_pass(pass_cls, model: onnx.ModelProto, fired: Mapping[str, int],
               feeds: Mapping[str, np.ndarray] | None = None,
               atol: float = ATOL, rtol: float = RTOL) -> onnx.ModelProto:
    """Fired counts, checker, onnxruntime equality, output names, idempotence; returns the result."""
    out, instance, result = apply(pass_cls, model)
    assert result.modified
    assert {k: v for k, v in instance.counts.items() if v} == dict(fired), instance.counts
    onnx.checker.check_model(out)
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert_same_outputs(model, out, feeds, atol, rtol)
    again, instance2, result2 = apply(pass_cls, out)
    assert not result2.modified, instance2.counts
    return out


def assert_not_fired(pass_cls, model: onnx.ModelProto) -> None:
    out, instance, result = apply(pass_cls, model)
    assert not result.modified, instance.counts
    assert sum(instance.counts.values()) == 0
    assert op_types(out) == op_types(model)
