"""Integer code generation for QDQ models: the rewrite happens, and the numbers match onnxruntime."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _float_model(ic, oc, *, groups=1, stride=1, pad=1, hw=12, seed=0) -> onnx.ModelProto:
    """Conv(k3, groups) -> Relu -> Conv(1x1) -> Add(residual of the first conv)."""
    rng = np.random.default_rng(seed)
    out = (hw + 2 * pad - 3) // stride + 1
    w1 = (rng.standard_normal((oc, ic // groups, 3, 3)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal(oc).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((oc, oc, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3],
                         pads=[pad] * 4, strides=[stride, stride], group=groups),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "c1"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, out, out])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(model, activations, hw=12, ic=None):
    from mmopt.quantize import quantize

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(model, calib, method="minmax", activations=activations)
    return qdq


def _lowered(qdq, target_name="x86"):
    """The Relax module after mmopt's layout stage (where the integer rewrite happens)."""
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    target = get(target_name)
    with target.tvm_target():
        return tvm.transform.Sequential(pipeline._layout(target))(to_relax(qdq))  # noqa: SLF001


def _plain_ort(model, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _output_step(qdq) -> float:
    from mmopt.runtime.verify import quantized_output_step

    return quantized_output_step(qdq)


CASES = {
    # name: (ic, oc, groups, stride, activations)
    "vnni-u8": (16, 32, 1, 1, "uint8"),
    "vnni-int8-activations": (16, 32, 1, 2, "int8"),
    "odd-channels": (3, 24, 1, 1, "uint8"),
    "depthwise": (16, 16, 16, 1, "uint8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_integer_conv_matches_onnxruntime(case, tmp_path):
    import mmopt

    ic, oc, groups, stride, activations = CASES[case]
    qdq = _quantized(_float_model(ic, oc, groups=groups, stride=stride), activations)
    text = _lowered(qdq).script(show_meta=False)
    # every conv became an integer conv; no quantize/dequantize op is left for the activations
    packed = text.count("R.call_tir(cls.mmopt_qconv_dot")
    assert text.count('out_dtype="int32"') + packed == 2, text
    assert "R.quantize(" not in text
    vnni = _host_has_vnni()
    if vnni and groups == 1:  # input channels are padded to 4; 24 output channels use ymm
        assert packed == 2
    result = mmopt.compile(qdq, "x86", tmp_path / case)
    assert result.verification.passed
    rng = np.random.default_rng(7)
    step = _output_step(qdq)
    worst = 0.0
    for _ in range(3):
        x = rng.standard_normal((1, ic, 12, 12)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        worst = max(worst, float(np.abs(ours - _plain_ort(qdq, {"x": x})).max() / step))
    # exact integer accumulation: at most a rounding flip of the requantization, never more
    assert worst <= 2.0 + 1e-3, worst


def _host_has_vnni() -> bool:
    from mmopt.codegen.quantized import VNNI, dot_product_for
    from mmopt.targets import get

    return dot_product_for(get("x86").tvm_target()) is VNNI


def test_vnni_kernel_is_tensorized_and_exact(tmp_path):
    """The packed convolution runs vpdpbusd and equals numpy's integer convolution bit for bit."""
    if not _host_has_vnni():
        pytest.skip("this CPU has no AVX-512 VNNI")
    import tvm
    from tvm import relax

    from mmopt.codegen import quantized as q
    from mmopt.targets import get

    rng = np.random.default_rng(0)
    n, h, w, ic, oc, k, stride = 1, 9, 11, 8, 32, 3, 2
    data = rng.integers(0, 256, (n, h, w, ic), dtype=np.uint8)
    weight = rng.integers(-128, 128, (k, k, ic, oc), dtype=np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, h, w, ic), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), strides=[stride, stride],
                                           data_layout="NHWC", kernel_layout="HWIO",
                                           out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    target = get("x86")
    from mmopt.codegen.build import build

    executable = build(bb.get(), target)
    lib_path = tmp_path / "k.so"
    executable.export_library(str(lib_path))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    want = np.zeros((n, oh, ow, oc), np.int64)
    for dy in range(k):
        for dx in range(k):
            patch = data[:, dy:dy + stride * oh:stride, dx:dx + stride * ow:stride, :].astype(np.int64)
            want += np.einsum("nhwc,co->nhwo", patch, weight[dy, dx].astype(np.int64))
    np.testing.assert_array_equal(got, want.astype(np.int32))
    with target.tvm_target():
        lowered = tvm.transform.Sequential([q.pack_dot_convs()])(bb.get())
    assert q.DOT_BLOCK in lowered.script(show_meta=False)
    objdump = shutil.which("objdump")
    if objdump:
        disassembly = subprocess.run([objdump, "-d", str(lib_path)], capture_output=True,
                                     text=True, check=True).stdout
        assert "vpdpbusd" in disassembly


_ARM_RUNNER = """
import sys, numpy as np, tvm
lib = tvm.runtime.load_module(sys.argv[1])
vm = lib["vm_load_executable"]()
vm["vm_initialization"](1, 0, 2, 1, 0, 2)  # cpu 0, pooled allocator; host cpu 0, pooled
np.save(sys.argv[3], vm["main"](tvm.runtime.tensor(np.load(sys.argv[2]))).numpy())
"""


def test_arm_dotprod_artifact_runs_under_emulation(tmp_path):
    """arm-a76 (+dotprod): integer convs become sdot kernels; run on the emulated arm64 device."""
    from mmopt.tuning.emulate import Arm64Root, cache_root

    root = Arm64Root(cache_root())
    if not shutil.which("aarch64-linux-gnu-g++") or not shutil.which("qemu-aarch64") \
            or not root.is_ready():
        pytest.skip("no aarch64 cross compiler / emulated arm64 device (scripts/setup-arm-emulation.sh)")
    import mmopt

    qdq = _quantized(_float_model(16, 32, stride=2), "uint8")
    assert "mmopt_qconv_dot" in _lowered(qdq, "arm-a76").script(show_meta=False)
    result = mmopt.compile(qdq, "arm-a76", tmp_path / "arm")
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        text = subprocess.run([objdump, "-d", str(result.library)], capture_output=True, text=True,
                              check=True).stdout
        assert "sdot" in text
    runner = tmp_path / "run.py"
    runner.write_text(_ARM_RUNNER)
    x = np.random.default_rng(3).standard_normal((1, 16, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(root.command([str(runner), str(result.library), str(tmp_path / "x.npy"),
                                 str(tmp_path / "y.npy")]), check=True, timeout=300)
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - _plain_ort(qdq, {"x": x})).max() <= 2 * _output_step(qdq) + 1e-6


def test_integer_matmul_and_gemm_match_onnxruntime(tmp_path):
    """MatMul (3-D activations) and Gemm (transB) become integer 1x1 convolutions over rows."""
    import mmopt
    from mmopt.quantize import quantize

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((32, 48)) * 0.2).astype(np.float32)  # MatMul [K, N]
    w2 = (rng.standard_normal((20, 48)) * 0.2).astype(np.float32)  # Gemm transB [N, K]
    b2 = rng.standard_normal(20).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "qmm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, 20])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(b2, "b2"),
         numpy_helper.from_array(np.array([10, 48], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.standard_normal((2, 5, 32)).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(model, calib, method="minmax")
    text = _lowered(qdq).script(show_meta=False)
    assert "R.matmul(" not in text
    result = mmopt.compile(qdq, "x86", tmp_path / "mm")
    assert result.verification.passed
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    got = mmopt.load(result.library)(x=x)["y"]
    assert np.abs(got - _plain_ort(qdq, {"x": x})).max() <= 2 * _output_step(qdq) + 1e-6
