"""A quantized (QDQ) model compiles, and the artifact agrees with onnxruntime's reference execution
of it (graph optimizations off: dequantize -> float op -> quantize, the same on every CPU;
onnxruntime's fused int8 kernels differ from CPU to CPU)."""

from __future__ import annotations

import numpy as np
import pytest

import mmopt
from mmopt import ir as mir


@pytest.mark.parametrize(("target", "weight_bits"), [("x86", 8), ("x86-avx2", 7)])
def test_int8_digits_artifact_agrees_with_onnxruntime(target, weight_bits, tmp_path):
    """This machine's int8 kernels, and AVX2's vpmaddubsw ones on 7-bit weights (x86-avx2 runs on
    every x86-64 CI machine)."""
    pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
    from mmopt.quantize import quantize
    from mmopt.runtime import ort
    from mmopt.targets import get
    from models_zoo.digits import train_digits_cnn

    if not get(target).runs_here():
        pytest.skip(f"{target} cannot run here")
    model, splits = train_digits_cnn()
    fixed = mir.fix_input_shapes(model, {"input": (1, 1, 8, 8)})
    calib = [{"input": x[None].astype(np.float32)} for x in splits.calib_x]
    qdq, _ = quantize(fixed, calib, method="entropy", weight_bits=weight_bits)
    result = mmopt.compile(qdq, target, tmp_path / "digits_int8")
    assert result.verification.passed
    # the artifact JSON says which arithmetic each conv/matmul kernel runs
    kernels = result.meta.extra["int8_kernels"]
    assert kernels and all(k["path"] in ("vnni", "vnni256", "pmaddubsw", "pmaddwd", "sdot",
                                         "winograd-pmaddwd",
                                         "integer-loop", "float") for k in kernels)
    assert any(k["path"] != "float" for k in kernels)
    if target == "x86-avx2":  # 7-bit weights: no widening to int16
        assert any(k["path"] == "pmaddubsw" for k in kernels)
        assert not any(k["path"] == "pmaddwd" for k in kernels), kernels
    compiled = mmopt.load(result.library)
    session = ort.session(qdq, label="int8 digits")  # reference semantics
    xs, ys = splits.test_x.astype(np.float32), splits.test_y
    ours = np.array([np.argmax(next(iter(compiled(input=x[None]).values()))) for x in xs])
    theirs = np.array([np.argmax(session.run(None, {"input": x[None]})[0]) for x in xs])
    agreement = float((ours == theirs).mean())
    assert agreement >= 0.99, agreement
    assert float((ours == ys).mean()) >= 0.97
