"""Shared concatenation ranges on a trained network with real data (issue #14).

``quantize`` gives a ``Concat`` and its inputs one range (``share_concat_scales=True``, default)
so the compiled concatenation copies bytes; until this test that was shown on random weights only.
``models_zoo.concat_digits`` concatenates a 1x1, a 3x3 and a max-pooled branch three times
(SiLU, trained on scikit-learn's digits; 200 calibration and 500 held-out samples), so the joined
tensors are ones a trained network computes on real images, each with its own reach; its second
concatenation adds the [0, 1] image to features reaching about 5, and is kept apart.

- With shared and with own ranges, ``minmax`` and ``percentile`` calibration: int8 top-1 within 1
  point of fp32 under QDQ reference semantics (onnxruntime, graph optimizations off).
- The report accounts for every concatenation (joined, or kept apart with the step growth that
  joining would have cost), at least one was joined, and what it says holds for the model: a
  joined group's range is the union of its tensors' own ranges, no tensor's step grows past the
  limit, and the QDQ model quantizes the concatenation's inputs and output with one scale and
  zero point (with own ranges they differ).
- The shared-range model compiled for this machine's CPU (``x86``) and for ``x86-avx2`` passes
  its verification, agrees with QDQ reference semantics on >= 99% of held-out top-1 predictions,
  and is within 1 point of fp32 itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mmopt.quantize import quantize
from mmopt.runtime.verify import run_onnxruntime

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
pytest.importorskip("torch", reason="the model is trained with PyTorch (the torch extra)")

METHODS = ("minmax", "percentile")
#: this machine's CPU, and the x86 target every CI machine runs (AVX2, no AVX-512 or VNNI): on an
#: AVX-512 machine the two compile different int8 kernels
TARGETS = ("x86", "x86-avx2")


@pytest.fixture(scope="module")
def concat_digits():
    from models_zoo.concat_digits import train_concat_digits

    return train_concat_digits()


@pytest.fixture(scope="module")
def quantized(concat_digits):
    """``quantized(method, share)``: (QDQ model, report), each quantized once per module."""
    model, s = concat_digits
    done = {}

    def get(method: str, share: bool):
        if (method, share) not in done:
            done[method, share] = quantize(
                model, {"input": s.calib_x}, method=method, share_concat_scales=share,
                eval_data=({"input": s.test_x}, s.test_y), metric="top1")
        return done[method, share]

    return get


def _top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Held-out top-1 (%) under reference semantics (onnxruntime, graph optimizations off)."""
    return 100.0 * float((run_onnxruntime(model, {"input": x})["logits"].argmax(1) == y).mean())


def _concat_params(qdq: onnx.ModelProto) -> dict[str, list[tuple[float, int]]]:
    """Per ``Concat`` of the QDQ model: (scale, zero point) of the DequantizeLinear feeding each
    input, then of the QuantizeLinear reading its output."""
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in qdq.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def params(node):
        return float(inits[node.input[1]]), int(inits[node.input[2]])

    out = {}
    for node in qdq.graph.node:
        if node.op_type == "Concat":
            ins = [producer[i] for i in node.input]
            (q,) = [r for r in readers[node.output[0]] if r.op_type == "QuantizeLinear"]
            assert all(d.op_type == "DequantizeLinear" for d in ins), node.name
            out[node.name] = [*map(params, ins), params(q)]
    return out


def test_fp32_accuracy_and_concatenations(concat_digits):
    model, s = concat_digits
    assert len(s.test_y) == 500 and len(s.calib_y) == 200
    assert _top1(model, s.test_x, s.test_y) >= 97.0
    assert sum(n.op_type == "Concat" for n in model.graph.node) == 3


@pytest.mark.parametrize("share", [True, False], ids=["shared", "own"])
@pytest.mark.parametrize("method", METHODS)
def test_int8_within_a_point_of_fp32(concat_digits, quantized, method, share):
    qdq, report = quantized(method, share)
    ev = report.evaluation
    assert report.eval_engine == "reference"
    assert ev.top1_float >= 97.0
    assert ev.drop <= 1.0, ev
    s = concat_digits[1]
    assert _top1(qdq, s.test_x, s.test_y) == pytest.approx(ev.top1)
    assert (report.shared_scales is not None) == share


@pytest.mark.parametrize("method", METHODS)
def test_report_says_which_concatenations_were_joined(quantized, method):
    qdq, report = quantized(method, True)
    shared = report.shared_scales
    concats = sorted(n.name for n in qdq.graph.node if n.op_type == "Concat")
    joined = [c for g in shared["groups"] for c in g["concats"]]
    kept = [k["node"] for k in shared["kept"]]
    assert sorted(joined + kept) == concats  # each once: joined or kept apart
    assert joined
    # the ranges each tensor would have had: the same calibration without sharing
    own = {r["tensor"]: (r["lo"], r["hi"]) for r in quantized(method, False)[1].calibration_ranges}
    listed = {r["tensor"]: (r["lo"], r["hi"]) for r in report.calibration_ranges}
    for group in shared["groups"]:
        tensors = group["tensors"]
        lo, hi = min(own[t][0] for t in tensors), max(own[t][1] for t in tensors)
        assert (group["lo"], group["hi"]) == pytest.approx((lo, hi))
        for t in tensors:
            assert listed[t] == pytest.approx((lo, hi)), t
            assert (hi - lo) / (own[t][1] - own[t][0]) <= shared["limit"], t
        assert any(own[t] != pytest.approx((lo, hi)) for t in tensors)  # sharing changed ranges
    for entry in shared["kept"]:
        assert entry["factor"] > shared["limit"], entry
    # the written models: one scale and zero point around a joined concatenation, unlike without
    around = _concat_params(qdq)
    for name in joined:
        assert len(set(around[name])) == 1, (name, around[name])
    apart = _concat_params(quantized(method, False)[0])
    assert all(len(set(apart[name])) > 1 for name in joined), apart


@pytest.mark.parametrize("target", TARGETS)
def test_artifact_of_shared_ranges_agrees_with_reference(concat_digits, quantized, target,
                                                         tmp_path):
    import mmopt
    from mmopt import targets

    if not targets.get(target).runs_here():
        pytest.skip(f"{target} artifacts cannot run here ({targets.get(target).why_not_here()})")
    model, s = concat_digits
    qdq, report = quantized("minmax", True)
    result = mmopt.compile(qdq, target, tmp_path / "concat_digits",
                           input_shapes={"input": (1, *s.test_x.shape[1:])})
    assert result.passed, result.verification  # random inputs against onnxruntime
    artifact = mmopt.load(result.library)
    ours = np.array([np.asarray(artifact(input=x[None])["logits"]).argmax() for x in s.test_x])
    reference = run_onnxruntime(qdq, {"input": s.test_x})["logits"].argmax(1)
    assert 100.0 * float((ours == reference).mean()) >= 99.0
    assert 100.0 * float((ours == s.test_y).mean()) >= report.evaluation.top1_float - 1.0
