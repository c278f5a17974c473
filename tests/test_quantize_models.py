"""Quantization on real models: the trained digits CNN (accuracy), zoo CNNs (cosine), and an
accuracy-aware case where plain int8 breaks the budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mmopt.quantize import quantize
from mmopt.runtime.verify import run_onnxruntime

pytest.importorskip("sklearn", reason="the digits model needs scikit-learn for its data")


@pytest.fixture(scope="module")
def digits():
    from models_zoo.digits import train_digits_cnn

    return train_digits_cnn()


def _accuracy(model, x, y) -> float:
    return 100.0 * float((run_onnxruntime(model, {"input": x})["logits"].argmax(1) == y).mean())


def test_digits_fp32_accuracy(digits):
    model, splits = digits
    assert len(splits.test_y) == 500 and len(splits.calib_y) == 200
    assert _accuracy(model, splits.test_x, splits.test_y) >= 97.0


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_digits_int8_drop_within_half_a_point(digits, method):
    model, s = digits
    qmodel, report = quantize(model, {"input": s.calib_x}, method=method, per_channel=True,
                              eval_data=({"input": s.test_x}, s.test_y), metric="top1")
    ev = report.evaluation
    assert ev.top1_float >= 97.0
    assert ev.drop <= 0.5, ev
    assert _accuracy(qmodel, s.test_x, s.test_y) == pytest.approx(ev.top1)


def _imbalanced(model: onnx.ModelProto, channel: int = 0,
                factor: float = 1000.0) -> onnx.ModelProto:
    """The same function in float, hostile to int8: conv1's output channel ``channel`` scaled up by
    ``factor`` (weights and bias; Relu and MaxPool commute with a positive scale) and conv2's
    weights reading it scaled down by as much. The per-tensor activation range of conv1's output is
    then set by that one channel, and conv2's per-channel weight scales by its other inputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}

    def scale(name, index, by):
        array = numpy_helper.to_array(inits[name]).copy()
        array[index] *= by
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    scale("conv1.weight", channel, factor)
    scale("conv1.bias", channel, factor)
    scale("conv2.weight", (slice(None), channel), 1.0 / factor)
    return out


def test_accuracy_aware_restores_a_broken_model(digits):
    model, s = digits
    hostile = _imbalanced(model)
    assert _accuracy(hostile, s.test_x, s.test_y) == _accuracy(model, s.test_x, s.test_y)
    qmodel, report = quantize(hostile, {"input": s.calib_x}, method="minmax",
                              eval_data=({"input": s.test_x}, s.test_y), metric="top1",
                              max_drop="0.5%")
    aa = report.accuracy_aware
    first = aa.steps[0]
    assert first.action == "all int8" and first.score.drop > 10.0  # plain int8 breaks the budget
    assert aa.met and report.evaluation.drop <= 0.5
    assert set(aa.kept_float) == {"conv1", "conv2"}  # the two layers around the hostile tensor
    assert aa.sensitivities[0].node in {"conv1", "conv2"}
    assert [st.kept_float for st in aa.steps if st.within_budget][-1] == aa.kept_float
    convs = {n.name: n for n in qmodel.graph.node if n.op_type == "Conv"}
    assert convs["conv1"].input[1] == "conv1.weight"  # float weights: no DequantizeLinear
    assert convs["conv2"].input[1] == "conv2.weight"
    assert _accuracy(qmodel, s.test_x, s.test_y) >= report.evaluation.top1_float - 0.5


def test_accuracy_aware_is_a_no_op_within_budget(digits):
    model, s = digits
    _, report = quantize(model, {"input": s.calib_x}, method="minmax",
                         eval_data=({"input": s.test_x}, s.test_y), max_drop="0.5%")
    assert report.accuracy_aware.met and report.kept_float == []
    assert len(report.accuracy_aware.steps) == 1


@pytest.mark.parametrize("name,method", [("mobilenet_v2_style", "percentile"),
                                         ("resnet18_style", "entropy")])
def test_zoo_cnn_cosine(name, method):
    import models_zoo

    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((24, 3, 224, 224)).astype(np.float32)}
    evaluation = {"input": rng.standard_normal((8, 3, 224, 224)).astype(np.float32)}
    _, report = quantize(models_zoo.build(name), calib, method=method, eval_data=evaluation,
                         metric="cosine")
    assert report.evaluation.cosine >= 0.99, report.evaluation
