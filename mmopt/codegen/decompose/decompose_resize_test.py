"""decompose_resize: the interpolation matrices reproduce every Resize node test of onnx (all modes,
coordinate transformations, antialias, axes, aspect-ratio policies, tf_crop_and_resize), checked by
running the decomposed graph on onnxruntime against the tests' expected outputs."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest

from mmopt import ir as mir
from mmopt.codegen.decompose import decompose_resize
from mmopt.codegen.decompose._testing import op_types, parse, rerun_modified, run_decompose
from mmopt.runtime.verify import run_onnxruntime


@functools.cache
def _resize_cases():
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    # every case, filtered here: onnx collects into one process-wide list, and a filtered first
    # collection would hide the other ops from tests/test_onnx_backend.py
    with warnings.catch_warnings():  # onnx's case generators compute expected values noisily
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {c.name: c for c in cases
            if [n.op_type for n in c.model.graph.node] == ["Resize"]}


def _arrays(values):
    return [onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


@pytest.mark.parametrize("name", sorted(_resize_cases()))
def test_every_resize_node_test_decomposes_exactly(name, monkeypatch):
    case = _resize_cases()[name]
    inputs, expected = (_arrays(v) for v in case.data_sets[0])
    if inputs[0].dtype != np.float32:
        pytest.skip("integer images are left to TVM's Resize")
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    # roi / scales / sizes as initializers, as in a real model
    names = [i.name for i in model.graph.input]
    for name_, value in list(zip(names, inputs))[1:]:
        model.graph.initializer.append(onnx.numpy_helper.from_array(value, name_))
    keep = [i for i in model.graph.input if i.name == names[0]]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model = mir.infer_shapes(model)
    monkeypatch.setattr(decompose_resize.DecomposeResize, "wanted", lambda self, node, ctx: True)
    decomposed, report = run_decompose(model)
    assert report.counts.get("decompose_resize") == 1, report.rejections
    assert "Resize" not in op_types(decomposed)
    got = run_onnxruntime(decomposed, {names[0]: inputs[0]})
    np.testing.assert_allclose(list(got.values())[0], expected[0], rtol=1e-4, atol=1e-5)


def test_plain_integer_upsampling_is_left_to_tvm():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,2,4,4] x) => (float[1,2,8,8] y) { y = Resize <mode = "linear"> (x, roi, scales) }""",
                  roi=np.zeros(0, np.float32), scales=np.array([1, 1, 2, 2], np.float32))
    decomposed, report = run_decompose(model)
    assert report.counts == {} and op_types(decomposed) == ["Resize"]


def test_fractional_scale_is_decomposed_once():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,1,5,7] x) => (float[1,1,3,4] y) { y = Resize <mode = "cubic"> (x, roi, scales) }""",
                  roi=np.zeros(0, np.float32), scales=np.array([1, 1, 0.7, 0.6], np.float32))
    decomposed, report = run_decompose(model)
    assert report.counts == {"decompose_resize": 1}
    x = np.random.default_rng(0).standard_normal((1, 1, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(decomposed, {"x": x})["y"],
                               run_onnxruntime(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)
    assert not rerun_modified(decomposed)
