"""A batch norm no convolution absorbed becomes one multiply-add per channel, as onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model() -> onnx.ModelProto:
    """``BatchNormalization(x + x)``: nothing for the batch norm to fold into."""
    rng = np.random.default_rng(0)
    params = {
        "gamma": rng.uniform(0.5, 2.0, 6).astype(np.float32),
        "beta": rng.standard_normal(6).astype(np.float32),
        "mean": rng.standard_normal(6).astype(np.float32),
        "var": rng.uniform(0.1, 3.0, 6).astype(np.float32),
    }
    nodes = [helper.make_node("Add", ["x", "x"], ["d"]),
             helper.make_node("BatchNormalization", ["d", "gamma", "beta", "mean", "var"], ["y"],
                              epsilon=1e-3)]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 9, 9])],
        [numpy_helper.from_array(v, k) for k, v in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_no_division_is_left():
    import tvm

    from mmopt.codegen.batch_norm import batch_norm_scale_shift
    from mmopt.codegen.relax_import import to_relax

    mod = to_relax(_model())
    assert "R.nn.batch_norm" in mod["main"].script()
    mod = tvm.transform.Sequential([batch_norm_scale_shift(),
                                    tvm.relax.transform.DecomposeOpsForInference()])(mod)
    text = mod["main"].script()
    assert "R.nn.batch_norm" not in text and "R.divide" not in text, text


def test_compiled_batch_norm_matches_onnxruntime(tmp_path):
    import mmopt
    from mmopt.runtime.ort import session as ort_session

    model = _model()
    result = mmopt.compile(model, "x86-avx2", tmp_path / "bn")
    assert result.verification.passed
    x = np.random.default_rng(1).standard_normal((1, 6, 9, 9)).astype(np.float32)
    want = ort_session(model, label="reference", optimization="off").run(None, {"x": x})[0]
    np.testing.assert_allclose(mmopt.load(result.library)(x=x)["y"], want, rtol=1e-6, atol=1e-6)
