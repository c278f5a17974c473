"""Quantize chains moved across concatenations and nearest up-sampling: 8-bit copies, same
values."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _fpn_model() -> onnx.ModelProto:
    """A small FPN neck: three convolutions at 1/1, 1/2 and 1/4 of a 16x16 input; the coarser two
    up-sampled (nearest, 2x and 4x) and concatenated with the first, then a 3x3 convolution."""
    rng = np.random.default_rng(0)
    weights = {f"w{i}": (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32)
               for i in range(3)}
    weights["w3"] = (rng.standard_normal((8, 24, 3, 3)) * 0.2).astype(np.float32)
    weights["s2"] = np.array([1, 1, 2, 2], np.float32)
    weights["s4"] = np.array([1, 1, 4, 4], np.float32)
    conv = dict(kernel_shape=[3, 3], pads=[1] * 4)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["p1"], **conv),
        helper.make_node("Conv", ["x", "w1"], ["p2"], strides=[2, 2], **conv),
        helper.make_node("Conv", ["x", "w2"], ["p4"], strides=[4, 4], **conv),
        helper.make_node("Resize", ["p2", "", "s2"], ["u2"], mode="nearest"),
        helper.make_node("Resize", ["p4", "", "s4"], ["u4"], mode="nearest"),
        helper.make_node("Concat", ["p1", "u2", "u4"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["y"], **conv),
    ]
    graph = helper.make_graph(
        nodes, "fpn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized():
    from mmopt.quantize import quantize

    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 8, 16, 16)).astype(np.float32)} for _ in range(8)]
    # each tensor its own range: the concatenation requantizes its inputs, which is what the
    # passes move (with shared scales lower_qdq makes it a byte copy by itself)
    qdq, _ = quantize(_fpn_model(), calib, method="minmax", activations="uint8",
                      share_concat_scales=False)
    return qdq


def _layout_passes(moved: bool):
    from mmopt.codegen import pipeline
    from mmopt.codegen.options import CodegenOptions
    from mmopt.targets import get

    passes = pipeline._layout(get("x86-avx2"), CodegenOptions(lookup_tables=False))
    if not moved:
        passes = [p for p in passes if "quantize_concat_inputs" not in str(p)
                  and "elementwise_before_upsampling" not in str(p)]
    return passes


def _main_after(passes):
    import tvm

    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    with get("x86-avx2").tvm_target():
        return tvm.transform.Sequential(passes)(to_relax(_quantized()))


def _resize_and_concat_types(func) -> tuple[set, set]:
    from mmopt.codegen.relax_util import bindings, op_name, tensor_dtype

    resized, concatenated = set(), set()
    for value in bindings(func).values():
        if op_name(value) == "relax.image.resize2d":
            resized.add(tensor_dtype(value))
        if op_name(value) == "relax.concat":
            concatenated.add(tensor_dtype(value))
    return resized, concatenated


def test_resizes_and_the_concatenation_copy_bytes():
    """With the passes the up-sampling and the concatenation move uint8 tensors; without them
    (the state before) the concatenation produces float32 that is quantized again afterwards.
    (The resize reads uint8 either way: ``lower_qdq`` moves a dequantize below a nearest resize.)"""
    after = _main_after(_layout_passes(moved=True))["main"]
    assert _resize_and_concat_types(after) == ({"uint8"}, {"uint8"}), after.script(
        show_meta=False)
    before = _main_after(_layout_passes(moved=False))["main"]
    assert _resize_and_concat_types(before) == ({"uint8"}, {"float32"})


def test_moving_the_chains_changes_no_value():
    """The module with the chains moved computes the same bytes as without (exact)."""
    import tvm
    from tvm import relax

    x = np.random.default_rng(2).standard_normal((1, 8, 16, 16)).astype(np.float32)
    outputs = []
    for moved in (False, True):
        mod = _main_after(_layout_passes(moved))
        ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_compiled_neck_matches_the_qdq_reference(tmp_path):
    """The compiled neck passes compile's verification and stays within two output steps of
    onnxruntime run without graph optimizations (QDQ reference semantics)."""
    import mmopt
    from mmopt.runtime.ort import session as ort_session
    from mmopt.runtime.verify import quantized_output_step

    qdq = _quantized()
    result = mmopt.compile(qdq, "x86-avx2", tmp_path / "fpn")
    assert result.verification.passed
    step = quantized_output_step(qdq)
    session = ort_session(qdq, label="reference", optimization="off")
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        want = session.run(None, {"x": x})[0]
        assert float(np.abs(ours - want).max()) <= 2 * step + 1e-6
