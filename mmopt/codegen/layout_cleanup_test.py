"""Transposes left by ConvertLayout: depth-to-space in NHWC, element-wise sandwiches cancelled,
constant-first binary ops. Each case checks the Relax program (transposes gone) and the compiled
artifact against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def _graph_model(nodes, inits, c_in=8, hw=6, out_shape=None, name="m"):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(name, x, out, c_in, c_out, rng, k=1):
    w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32) * 0.3
    b = rng.standard_normal(c_out).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], kernel_shape=[k, k],
                            pads=[k // 2] * 4)
    return node, {f"{name}.w": w, f"{name}.b": b}


def _layout_text(model) -> str:
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.import_legalize import legalize_for_import
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    target = get("x86")
    with target.tvm_target():
        mod = to_relax(legalize_for_import(model))
        return tvm.transform.Sequential(pipeline._layout(target))(mod).script()  # noqa: SLF001


def _activation_transposes(text: str) -> int:
    """NCHW<->NHWC transposes of activations (per-channel constants are permuted too, and fold;
    the depth-to-space's own 6-D shuffle is not counted)."""
    return sum(1 for line in text.splitlines()
               if ("R.permute_dims(lv" in line or "R.permute_dims(x," in line)
               and ("axes=[0, 3, 1, 2]" in line or "axes=[0, 2, 3, 1]" in line)
               and "R.Tensor((1, 1, 1," not in line)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_between_convs_runs_in_nhwc(mode, tmp_path):
    import mmopt

    rng = np.random.default_rng(0)
    c1, c2 = _conv("c1", "x", "a", 8, 16, rng)
    d2s = helper.make_node("DepthToSpace", ["a"], ["d"], blocksize=2, mode=mode)
    relu = helper.make_node("Relu", ["d"], ["r"])
    scale = helper.make_node("Mul", ["r", "s"], ["m"])
    c3, c4 = _conv("c2", "m", "y", 4, 8, rng, k=3)
    model = _graph_model([c1, d2s, relu, scale, c3], {
        **c2, **c4, "s": rng.standard_normal((1, 4, 1, 1)).astype(np.float32)},
        out_shape=[1, 8, 12, 12])
    text = _layout_text(model)
    # only the network's input and output transposes are left
    assert _activation_transposes(text) == 2, text
    result = mmopt.compile(model, "x86", tmp_path / mode)
    assert result.verification.passed, result.verification.to_dict()


def test_conv_transpose_head_has_no_transposes_inside(tmp_path):
    """ConvTranspose(k=stride) becomes Conv + DepthToSpace(DCR); with BatchNorm and ReLU after it
    and a conv consuming it, the whole head stays NHWC."""
    import mmopt

    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)
    up = helper.make_node("ConvTranspose", ["x", "up.w"], ["u"], kernel_shape=[2, 2], strides=[2, 2])
    bn = helper.make_node("BatchNormalization", ["u", "g", "be", "mu", "var"], ["n"])
    relu = helper.make_node("Relu", ["n"], ["r"])
    conv, inits = _conv("c", "r", "y", 4, 8, rng, k=3)
    model = _graph_model([up, bn, relu, conv], {
        "up.w": w, **inits, "g": rng.random(4).astype(np.float32) + 0.5,
        "be": rng.standard_normal(4).astype(np.float32),
        "mu": rng.standard_normal(4).astype(np.float32), "var": rng.random(4).astype(np.float32) + 0.5},
        out_shape=[1, 8, 12, 12])
    text = _layout_text(model)
    assert _activation_transposes(text) == 2, text
    result = mmopt.compile(model, "x86", tmp_path / "head")
    assert result.verification.passed, result.verification.to_dict()


def test_constant_first_scale_and_shift_stay_in_nhwc(tmp_path):
    """``s * x + b`` with the constant first (PP-LCNet's learnable affine blocks) between two
    convs: no transposes around it."""
    import mmopt

    rng = np.random.default_rng(2)
    c1, i1 = _conv("c1", "x", "a", 8, 16, rng, k=3)
    mul = helper.make_node("Mul", ["s", "a"], ["m"])
    add = helper.make_node("Add", ["b", "m"], ["t"])
    c2, i2 = _conv("c2", "t", "y", 16, 8, rng, k=3)
    model = _graph_model([c1, mul, add, c2], {
        **i1, **i2, "s": rng.standard_normal((1, 16, 1, 1)).astype(np.float32),
        "b": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)}, out_shape=[1, 8, 6, 6])
    text = _layout_text(model)
    assert _activation_transposes(text) == 2, text
    result = mmopt.compile(model, "x86", tmp_path / "affine")
    assert result.verification.passed, result.verification.to_dict()


def test_a_chain_with_another_use_is_left_alone():
    """The element-wise result between the transposes is also a graph output: moving the chain
    would compute it twice, so the program keeps it."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from mmopt.codegen.layout_cleanup import cancel_transposes

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((1, 4, 4, 8), "float32")):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 3, 1, 2])
                b = R.nn.relu(a)
                c = R.permute_dims(b, axes=[0, 2, 3, 1])
                R.output(b, c)
            return (b, c)

    out = cancel_transposes()(Mod)
    tvm.ir.assert_structural_equal(out, Mod)

    @tvm.script.ir_module
    class Single:
        @R.function
        def main(x: R.Tensor((1, 4, 4, 8), "float32"), s: R.Tensor((1, 8, 1, 1), "float32")):
            with R.dataflow():
                a = R.permute_dims(x, axes=[0, 3, 1, 2])
                b = R.multiply(a, s)
                c = R.nn.relu(b)
                d = R.permute_dims(c, axes=[0, 2, 3, 1])
                R.output(d)
            return d

    text = cancel_transposes()(Single).script()
    assert "R.permute_dims(x" not in text and "R.permute_dims(s, axes=[0, 2, 3, 1])" in text, text
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 8)).astype(np.float32)
    s = np.random.default_rng(1).standard_normal((1, 8, 1, 1)).astype(np.float32)
    outputs = []
    for mod in (Single, cancel_transposes()(Single)):
        exe = relax.build(mod, "llvm")
        vm = relax.VirtualMachine(exe, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(s)).numpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=0)
