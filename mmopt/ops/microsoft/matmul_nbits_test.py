"""MatMulNBits: the weight layout (numpy reference vs onnxruntime), the kernel vs onnxruntime, the
packed weights kept packed, and what is declined."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import compile_and_run
from mmopt.ops.microsoft import matmul_nbits
from mmopt.ops.microsoft._testing import declined, ms_model, rand
from mmopt.runtime.verify import run_onnxruntime


def _model(k: int, n: int, block: int, *, zero_points: bool, bias: bool, flat: bool = True,
           rows: str = "2,3", seed: int = 0):
    rng = np.random.default_rng(seed)
    blocks = (k + block - 1) // block
    packed = rng.integers(0, 256, (n, blocks, block // 2)).astype(np.uint8)
    scales = (rng.random((n, blocks)) * 0.1 + 0.01).astype(np.float32)
    inits = {"b": packed, "scales": scales.reshape(-1) if flat else scales}
    args = ["a", "b", "scales"]
    if zero_points:
        zp = rng.integers(0, 256, (n, (blocks + 1) // 2)).astype(np.uint8)
        inits["zp"] = zp.reshape(-1) if flat else zp
        args.append("zp")
    if bias:
        inits["bias"] = rand(n, seed=seed + 1)
        args += [""] * (5 - len(args)) + ["bias"]
    model = ms_model(f"y = com.microsoft.MatMulNBits <K = {k}, N = {n}, bits = 4, "
                     f"block_size = {block}> ({', '.join(a or chr(34) * 2 for a in args)})",
                     f"float[{rows},{k}] a", f"float[{rows},{n}] y", **inits)
    return model, inits


@pytest.mark.parametrize("k, n, block, zero_points, bias, flat", [
    (64, 24, 32, True, True, True), (40, 8, 16, True, False, False),
    (128, 16, 64, False, True, True), (48, 5, 16, False, False, False)])
def test_reference_layout_matches_onnxruntime(k, n, block, zero_points, bias, flat):
    model, inits = _model(k, n, block, zero_points=zero_points, bias=bias, flat=flat)
    a = rand(2, 3, k, seed=7)
    expected = run_onnxruntime(model, {"a": a})["y"]
    got = matmul_nbits.reference(a, inits["b"], inits["scales"], inits.get("zp"), None,
                                 inits.get("bias"), K=k, N=n, block_size=block)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k, n, block, zero_points, bias", [
    (64, 24, 32, True, True), (40, 12, 16, False, False)])
def test_kernel_matches_onnxruntime(k, n, block, zero_points, bias):
    model, _ = _model(k, n, block, zero_points=zero_points, bias=bias, flat=zero_points)
    a = rand(2, 3, k, seed=7)
    got = compile_and_run(model, {"a": a})["y"]
    np.testing.assert_allclose(got, run_onnxruntime(model, {"a": a})["y"], rtol=1e-5, atol=1e-5)


def test_weights_stay_packed_in_the_kernel():
    import tvm
    from tvm import relax

    from mmopt.codegen.relax_import import to_relax

    model, inits = _model(64, 32, 32, zero_points=True, bias=False)
    mod = to_relax(model)
    constants = []
    relax.analysis.post_order_visit(mod["main"], lambda e: constants.append(e.value.numpy())
                                    if isinstance(e, tvm.ir.GenericConst) else None)
    shapes = {(str(c.dtype), c.shape) for c in constants}
    assert ("uint8", inits["b"].shape) in shapes  # the 4-bit codes, two per byte
    assert not [s for s in shapes if s[0] == "float32" and s[1] == (32, 64)]  # no float weights
    kernels = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert any("matmul_nbits" in name for name in kernels)


def test_declined_forms():
    model, _ = _model(64, 8, 32, zero_points=False, bias=False)
    node = model.graph.node[0]
    for attribute in node.attribute:
        if attribute.name == "bits":
            attribute.i = 8
    assert "4-bit" in declined(model, "kernel_matmul_nbits")
