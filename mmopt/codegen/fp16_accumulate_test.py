"""fp16 convolutions, matmuls and averages sum in float32 on CPUs (onnxruntime's CPU kernels do)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _fp16_model() -> onnx.ModelProto:
    """fp16 throughout: Conv 1x1 (512 -> 64 channels: 512-term sums), Relu, GlobalAveragePool (a
    1024-term mean), MatMul (64 -> 32)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 512, 1, 1)) * 0.05).astype(np.float16)
    m = (rng.standard_normal((64, 32)) * 0.2).astype(np.float16)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "f16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 512, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(m, "m")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_sums_run_in_float32(tmp_path):
    import tvm

    import mmopt
    from mmopt.codegen.fp16_accumulate import accumulate_in_fp32
    from mmopt.codegen.relax_import import to_relax
    from mmopt.runtime.verify import run_onnxruntime

    model = _fp16_model()
    text = tvm.transform.Sequential([accumulate_in_fp32()])(to_relax(model)).script(show_meta=False)
    assert 'out_dtype="float32"' in text  # the conv and the matmul
    assert 'R.mean(lv' in text or "adaptive_avg_pool2d" in text

    result = mmopt.compile(model, "x86", tmp_path / "f16", verify=False)
    x = (np.random.default_rng(1).random((1, 512, 32, 32)) * 2).astype(np.float16)
    ours = mmopt.load(result.library)(x=x)["y"].astype(np.float32)
    theirs = run_onnxruntime(model, {"x": x})["y"].astype(np.float32)
    # float32 sums: the two differ by fp16 rounding of the stored tensors only (an fp16 step
    # near 1 is 2**-10); fp16 accumulators were ~8x further off here
    step = 2.0 ** -10 * max(1.0, float(np.abs(theirs).max()))
    assert np.abs(ours - theirs).max() <= 2 * step, np.abs(ours - theirs).max() / step
