"""One dequantization per consumer: a shared 8-bit tensor stays 8-bit between kernels."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _se_model() -> onnx.ModelProto:
    """Conv -> squeeze-and-excitation (GlobalAveragePool -> 1x1 Conv -> HardSigmoid -> Mul) ->
    Add of the conv's output: the conv's output has three consumers (pool, rescale, add)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["c1"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w2"], ["squeezed"], kernel_shape=[1, 1]),
        helper.make_node("HardSigmoid", ["squeezed"], ["gate"]),
        helper.make_node("Mul", ["c1", "gate"], ["scaled"]),
        helper.make_node("Add", ["scaled", "c1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 20, 20])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized():
    from mmopt.quantize import quantize

    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 8, 20, 20)).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(_se_model(), calib, method="minmax", activations="uint8")
    return qdq


def _main_after(passes):
    import tvm

    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    with get("x86-avx2").tvm_target():
        return tvm.transform.Sequential(passes)(to_relax(_quantized()))["main"]


def test_each_consumer_dequantizes_for_itself():
    """Before the pass the conv's dequantized output is one float tensor read by the pool, the
    rescale and the add; after it no dequantized tensor has two readers, and the mean reads the
    8-bit tensor itself."""
    from mmopt.codegen import pipeline
    from mmopt.codegen.dequantize_per_use import _shared_dequantizations, dequantize_per_use
    from mmopt.codegen.options import CodegenOptions
    from mmopt.targets import get

    layout = [p for p in pipeline._layout(get("x86-avx2"), CodegenOptions(lookup_tables=False))
              if "dequantize_per_use" not in str(p)]
    before = _main_after(layout)
    shared = _shared_dequantizations(before)
    assert shared, before.script(show_meta=False)
    after = _main_after([*layout, dequantize_per_use()])
    assert not _shared_dequantizations(after)
    text = after.script(show_meta=False)
    assert "R.mean(" not in text and "dequantized_mean" in text


def test_se_block_matches_the_qdq_reference(tmp_path):
    """The compiled SE block (the conv kernel now ends at its 8-bit output; the mean, rescale and
    add dequantize it themselves) passes compile's verification against the QDQ reference, is
    reported without float fallbacks, and stays within two output steps of onnxruntime run
    without graph optimizations."""
    import mmopt
    from mmopt.runtime.ort import session as ort_session
    from mmopt.runtime.verify import quantized_output_step

    from mmopt.codegen.int8_paths import record_int8_kernels

    qdq = _quantized()
    with record_int8_kernels() as kernels:
        result = mmopt.compile(qdq, "x86-avx2", tmp_path / "se")
    assert result.verification.passed
    # the mean sums (q - z) * s: no contraction, so no float fallback is reported for it
    assert "float" not in [k["path"] for k in kernels], kernels
    step = quantized_output_step(qdq)
    session = ort_session(qdq, label="reference", optimization="off")
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        want = session.run(None, {"x": x})[0]
        assert float(np.abs(ours - want).max()) <= 2 * step + 1e-6
