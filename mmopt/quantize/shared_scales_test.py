"""Shared concatenation ranges: who is joined, who keeps its own range, the QDQ model's scales, and
the output concatenations left float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmopt.quantize.shared_scales import share_concat_ranges


def _c2f_model(channels: int = 8, hw: int = 10, gain: float = 1.0) -> onnx.ModelProto:
    """A C2f-like block: Conv -> Split in halves -> Conv on the second half -> Concat(first
    half, second half, conv) -> Conv. ``gain`` scales the inner conv's weights (its output's
    range)."""
    rng = np.random.default_rng(0)

    def weight(name, oc, ic, scale=0.3):
        return numpy_helper.from_array(
            (rng.standard_normal((oc, ic, 1, 1)) * scale).astype(np.float32), name)

    half = channels // 2
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="cv1", kernel_shape=[1, 1]),
        helper.make_node("Split", ["c0", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Conv", ["b", "w1"], ["m"], name="m", kernel_shape=[1, 1]),
        helper.make_node("Concat", ["a", "b", "m"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="cv2", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "c2f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, hw, hw])],
        [weight("w0", channels, 4), weight("w1", half, half, 0.3 * gain),
         weight("w2", channels, channels + half),
         numpy_helper.from_array(np.array([half, half], np.int64), "halves")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ranges(**widths):
    return {name: (-0.1 * w, w) for name, w in widths.items()}


def test_concat_and_split_halves_share_the_union_range():
    """The concatenation's inputs, its output and the split's input (whose parameters the halves
    take) all get the union of their ranges."""
    model = _c2f_model()
    ranges = _ranges(x=1.0, c0=2.0, a=1.5, b=2.0, m=3.0, cat=3.0, y=4.0)
    out, report = share_concat_ranges(ranges, model.graph.node)
    for name in ("c0", "a", "b", "m", "cat"):
        assert out[name] == pytest.approx((-0.3, 3.0)), name
    assert out["x"] == ranges["x"] and out["y"] == ranges["y"]
    assert [g["concats"] for g in report.groups] == [["concat"]]
    assert not report.kept


def test_a_much_narrower_input_keeps_its_own_range():
    """Joining would make the narrow tensor's step 10x coarser (limit 4): nothing changes, and
    the report says why."""
    model = _c2f_model()
    ranges = _ranges(x=1.0, c0=0.3, a=0.3, b=0.3, m=3.0, cat=3.0, y=4.0)
    out, report = share_concat_ranges(ranges, model.graph.node)
    assert out == ranges
    assert not report.groups
    assert report.kept == [{"node": "concat", "factor": 10.0}]


def test_nodes_left_float_are_not_joined():
    model = _c2f_model()
    ranges = _ranges(x=1.0, c0=2.0, a=1.5, b=2.0, m=3.0, cat=3.0, y=4.0)
    out, report = share_concat_ranges(
        ranges, [n for n in model.graph.node if n.name != "concat"])
    assert out == ranges and not report.groups


def _scales(qdq: onnx.ModelProto) -> dict[str, float]:
    """Scale of every quantized activation tensor, by the name of the tensor its
    QuantizeLinear reads."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in qdq.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits
            and inits[n.input[1]].size == 1}


@pytest.mark.parametrize("share", [True, False])
def test_quantized_model_uses_one_scale_around_the_concatenation(share):
    """Through mmopt.quantize: with sharing, the concatenation's inputs (the split's input, the
    inner conv's output) and its output are quantized with one scale; without, they differ
    (before this change they always did); onnxruntime's reference runs both."""
    from mmopt.quantize import quantize

    model = _c2f_model(gain=2.0)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)} for _ in range(4)]
    qdq, report = quantize(model, calib, method="minmax", share_concat_scales=share)
    scales = _scales(qdq)
    around = {scales["c0"], scales["m"], scales["cat"]}
    if share:
        assert len(around) == 1
        assert report.shared_scales["groups"][0]["concats"] == ["concat"]
        listed = {r["tensor"]: (r["lo"], r["hi"]) for r in report.calibration_ranges}
        assert listed["c0"] == listed["m"] == listed["cat"]
    else:
        assert len(around) > 1
        assert report.shared_scales is None
    import onnxruntime as ort

    session = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, calib[0])[0].shape == (1, 8, 10, 10)


def _head_model() -> onnx.ModelProto:
    """A detector's output in small: Conv -> boxes (pixels, times 100) and Sigmoid scores
    ([0, 1]) -> Concat as the graph output."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("Split", ["f", "parts"], ["raw_box", "raw_cls"], name="split", axis=1),
        helper.make_node("Mul", ["raw_box", "stride"], ["box"], name="scale"),
        helper.make_node("Sigmoid", ["raw_cls"], ["cls"], name="sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["y"], name="output", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [numpy_helper.from_array((rng.standard_normal((8, 4, 1, 1)) * 0.5).astype(np.float32),
                                 "w"),
         numpy_helper.from_array(np.array([4, 4], np.int64), "parts"),
         numpy_helper.from_array(np.array(100.0, np.float32), "stride")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_concatenation_of_unlike_ranges_stays_float():
    """Quantizing the output Concat with the boxes' range (~100x the scores') turned every score
    into 0 or one coarse step; kept float, the scores come out as the float model's to within
    their own input's quantization (before: scores off by up to their full value)."""
    import onnxruntime as ort

    from mmopt.quantize import quantize
    from mmopt.quantize.shared_scales import float_output_concats

    model = _head_model()
    ranges = {"box": (-300.0, 300.0), "cls": (0.0, 1.0), "y": (-300.0, 300.0)}
    assert float_output_concats(model, ranges, model.graph.node) == ["output"]
    assert float_output_concats(model, {**ranges, "cls": (0.0, 200.0)}, model.graph.node) == []
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)} for _ in range(4)]
    qdq, report = quantize(model, calib, method="minmax")
    assert "output" in report.kept_float and report.details["float_concats"] == ["output"]
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "y" for n in qdq.graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model.SerializeToString()).run(None, calib[0])[0][:, 4:]
    got = ort.InferenceSession(qdq.SerializeToString(), options).run(None, calib[0])[0][:, 4:]
    assert np.abs(got - want).max() < 0.02
