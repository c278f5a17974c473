"""Output comparison: the tolerance, and the few outliers a quantized model may have."""

from __future__ import annotations

import numpy as np

from mmopt.runtime.verify import allowed_outliers, compare


def _pair(size: int, errors: dict[int, float]):
    ref = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    cand = ref.copy()
    for index, error in errors.items():
        cand[index] += error
    return {"y": ref}, {"y": cand}


def test_without_outliers_one_element_beyond_the_tolerance_fails():
    ref, cand = _pair(200_000, {5: 0.15})
    out = compare(ref, cand, atol=0.1, rtol=0.0).outputs[0]
    assert not out.passed and out.beyond == 1


def test_a_few_outliers_within_the_factor_pass_and_are_counted():
    ref, cand = _pair(200_000, {5: 0.15, 70_000: -0.3})  # allowed: 2 of 200,000 at 1e-5
    out = compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5, outlier_factor=4.0).outputs[0]
    assert out.passed and out.beyond == 2 and 2.9 < out.worst_ratio < 3.1


def test_too_many_or_too_large_outliers_fail():
    ref, cand = _pair(200_000, {5: 0.15, 6: 0.15, 7: 0.15})
    assert not compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5,
                       outlier_factor=4.0).outputs[0].passed
    ref, cand = _pair(200_000, {5: 0.45})
    assert not compare(ref, cand, atol=0.1, rtol=0.0, outliers=1e-5,
                       outlier_factor=4.0).outputs[0].passed


def test_allowed_outliers():
    assert allowed_outliers(705_600, 1e-5) == 7
    assert allowed_outliers(1000, 1e-5) == 1
    assert allowed_outliers(1000, 0.0) == 0


def test_output_step_reaches_through_element_copies():
    """An output concatenated (float) from dequantized tensors has the larger of their steps; an
    output computed in float from them (a Sigmoid) has none."""
    from onnx import TensorProto, helper, numpy_helper

    from mmopt.runtime.verify import quantized_output_step

    def model(last: str):
        inits = [numpy_helper.from_array(np.array(s, np.float32), f"s{i}")
                 for i, s in enumerate((0.5, 0.01))]
        inits.append(numpy_helper.from_array(np.array(0, np.uint8), "z"))
        nodes = [helper.make_node("QuantizeLinear", ["x", "s0", "z"], ["qa"]),
                 helper.make_node("DequantizeLinear", ["qa", "s0", "z"], ["a"]),
                 helper.make_node("QuantizeLinear", ["x", "s1", "z"], ["qb"]),
                 helper.make_node("DequantizeLinear", ["qb", "s1", "z"], ["b"])]
        if last == "Concat":
            nodes.append(helper.make_node("Concat", ["a", "b"], ["y"], axis=1))
        else:
            nodes.append(helper.make_node("Sigmoid", ["a"], ["y"]))
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        return helper.make_model(graph)

    assert quantized_output_step(model("Concat")) == 0.5
    assert quantized_output_step(model("Sigmoid")) is None
