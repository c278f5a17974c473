"""Matrix-vector products streamed in the weight's storage order (:mod:`mmopt.codegen.gemv`): which
kernels take the path, and that their results match onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def _head(rows: int, k: int, n: int, *, trans_b: bool = True, relu: bool = False, seed: int = 0):
    """``Gemm(x, W, b)`` (a classifier's head: PyTorch exports ``W`` as ``N x K``, transB=1), with
    an optional ReLU after it."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g" if relu else "y"],
                              transB=1 if trans_b else 0)]
    if relu:
        nodes.append(helper.make_node("Relu", ["g"], ["y"]))
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scheduled_texts(model, target_name: str = "x86") -> list[str]:
    """The default schedule of every fused kernel of ``model``, as TVMScript."""
    from mmopt.codegen.cpu_schedules import schedule_prim_func
    from mmopt.codegen.pipeline import tuning_module
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    import tvm

    target = get(target_name)
    mod = tuning_module(to_relax(model), target)
    texts = []
    for _gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            sch = schedule_prim_func(func, target.tvm_target())
            texts.append(sch.mod.script() if sch is not None else func.script())
    return texts


#: (rows, K, N, transB, ReLU, streamed)
CASES = {
    "MobileNetV2's head (N not a multiple of 16)": (1, 1280, 1000, True, False, True),
    "ResNet-50's head": (1, 2048, 1000, True, False, True),
    "weight stored K x N, ReLU after": (1, 1024, 96, False, True, True),
    "K with a few divisors only (3 blocks of 32 rows)": (1, 96, 2048, True, False, True),
    "four rows: a register tile reuses each weight four times": (4, 1280, 1000, True, False, False),
    "a small weight (48 KiB)": (1, 96, 128, True, False, False),
    "a prime K: no blocks of rows": (1, 1021, 256, True, False, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_where_it_applies_and_matches_onnxruntime(case, tmp_path):
    import mmopt

    rows, k, n, trans_b, relu, streamed = CASES[case]
    model = _head(rows, k, n, trans_b=trans_b, relu=relu)
    texts = _scheduled_texts(model)
    assert any("matmul_rf" in t for t in texts) == streamed, texts
    if streamed:
        text = next(t for t in texts if "matmul_rf" in t)
        assert "T.parallel" in text and "T.vectorized" in text
    result = mmopt.compile(model, "x86", tmp_path / "m")
    assert result.verification.passed, result.verification.to_dict()


def test_arm_streams_with_its_own_vectors():
    texts = _scheduled_texts(_head(1, 1280, 1000), "arm")
    assert any("matmul_rf" in t for t in texts)


@pytest.mark.parametrize(("k", "blocks"), [(1280, 16), (2048, 16), (96, 3), (64, 2), (1000, 10),
                                           (63, 0), (1021, 0), (32, 0)])
def test_blocks_of_rows(k, blocks):
    from mmopt.codegen import gemv

    assert gemv.chunks(k) == blocks
    if blocks:
        assert k % blocks == 0 and k // blocks >= gemv.MIN_CHUNK_ROWS


def test_not_a_knob_tuning_task():
    """The register tile's knobs do not apply to a streamed product: tuning skips it instead of
    measuring schedules the default does not use."""
    from mmopt.codegen.cpu_schedules import tunable_contraction
    from mmopt.codegen.pipeline import tuning_module
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    import tvm

    target = get("x86")
    found = {}
    for rows in (1, 4):
        mod = tuning_module(to_relax(_head(rows, 1280, 1000)), target)
        funcs = [f for _gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        found[rows] = [tunable_contraction(f, target.tvm_target()) for f in funcs]
    assert all(x is None for x in found[1])
    assert any(x is not None for x in found[4])
