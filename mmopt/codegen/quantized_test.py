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


def _quantized(model, activations, hw=12, ic=None, weight_bits=8):
    from mmopt.quantize import quantize

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(model, calib, method="minmax", activations=activations,
                      weight_bits=weight_bits)
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
    # name: (ic, oc, groups, stride, activations, weight bits)
    "vnni-u8": (16, 32, 1, 1, "uint8", 8),
    "vnni-int8-activations": (16, 32, 1, 2, "int8", 8),
    "odd-channels": (3, 24, 1, 1, "uint8", 8),
    "depthwise": (16, 16, 16, 1, "uint8", 8),
    # weights on [-64, 64]: vpmaddubsw on x86 without VNNI
    "7-bit-weights": (16, 32, 1, 1, "uint8", 7),
    # 12 output channels: 4-lane (xmm) instructions, not the plain integer loop
    "12-channels": (16, 12, 1, 1, "uint8", 8),
    # 18 output channels: padded to 20 with zero weights, cropped after the integer kernel
    "18-channels": (16, 18, 1, 1, "uint8", 8),
}

#: x86 targets whose integer kernels are tested: this machine's CPU (VNNI where it has it), AVX2
#: (vpmaddubsw / vpmaddwd on ymm: every x86-64 CI machine of the last decade runs it) and AVX-512
#: without VNNI (the same on zmm)
X86_TARGETS = ["x86", "x86-avx2", "x86-avx512"]


def _target(name):
    from mmopt.targets import get

    target = get(name)
    if not target.runs_here():
        pytest.skip(f"target {name} cannot run here: {target.why_not_here()}")
    return target


def _dot(target):
    from mmopt.codegen.int8_dot import dot_product_for

    return dot_product_for(target.tvm_target())


def _path(target, out_channels: int, weight_bits: int = 8) -> str:
    """The path a dense integer convolution with ``out_channels`` takes on ``target`` (weights
    quantized on the full int8 grid reach beyond [-64, 64]; 7-bit ones do not)."""
    from mmopt.codegen.int8_dot import dot_products_for

    dots = dot_products_for(target.tvm_target())
    if dots and out_channels > 4:  # output channels padded to a multiple of 4
        out_channels += -out_channels % 4
    fitting = [d for d in dots if out_channels % d.lanes == 0
               and (d.weight_limit is None or weight_bits == 7)]
    return fitting[0].name if fitting else "integer-loop"


@pytest.mark.parametrize("target_name", X86_TARGETS)
@pytest.mark.parametrize("case", list(CASES))
def test_integer_conv_matches_onnxruntime(case, target_name, tmp_path):
    import mmopt
    from mmopt.codegen.int8_paths import record_int8_kernels

    target = _target(target_name)
    ic, oc, groups, stride, activations, weight_bits = CASES[case]
    qdq = _quantized(_float_model(ic, oc, groups=groups, stride=stride), activations,
                     weight_bits=weight_bits)
    text = _lowered(qdq, target_name).script(show_meta=False)
    # every conv became an integer conv; no quantize/dequantize op is left for the activations
    packed = text.count("R.call_tir(cls.mmopt_qconv_dot")
    grouped = text.count("R.call_tir(cls.group_conv2d_nhwc")  # mmopt.codegen.select_padding
    assert text.count('out_dtype="int32"') + packed + grouped == 2, text
    assert "R.quantize(" not in text
    dot = _dot(target)
    if dot is not None and groups == 1:  # input channels are padded; 24 channels use ymm
        assert packed == 2
    with record_int8_kernels() as kernels:
        result = mmopt.compile(qdq, target_name, tmp_path / case)
    assert result.verification.passed
    # the path each kernel took: the instruction, and the depthwise conv on plain integer code
    paths = sorted(k["path"] for k in kernels)
    path = _path(target, oc, weight_bits)
    want = sorted([path, "integer-loop" if groups > 1 else path])
    assert paths == want, kernels
    rng = np.random.default_rng(7)
    step = _output_step(qdq)
    worst = 0.0
    for _ in range(3):
        x = rng.standard_normal((1, ic, 12, 12)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        worst = max(worst, float(np.abs(ours - _plain_ort(qdq, {"x": x})).max() / step))
    # exact integer accumulation: at most a rounding flip of the requantization, never more
    assert worst <= 2.0 + 1e-3, worst


def _conv_pool_model(pads, kernel=3, stride=2) -> onnx.ModelProto:
    """Conv(3x3) -> Relu -> MaxPool -> Conv(1x1): ResNet's stem and YOLO's SPPF pools."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=pads),
        helper.make_node("Conv", ["p", "w2"], ["y"], kernel_shape=[1, 1]),
    ]
    out = (12 + pads[0] + pads[2] - kernel) // stride + 1
    graph = helper.make_graph(
        nodes, "qpool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, out, out])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activations", ["uint8", "int8"])
@pytest.mark.parametrize("pads,kernel,stride", [([1] * 4, 3, 2), ([2] * 4, 5, 1), ([0] * 4, 2, 2)])
def test_max_pool_of_quantized_tensor_pools_integers(pads, kernel, stride, activations, tmp_path):
    """MaxPool between QDQ pairs reads the 8-bit tensor (not a float32 copy) and matches the QDQ
    reference exactly (the maximum commutes with the monotone dequantization; padded positions
    never win, including for int8 activations whose padding is -128)."""
    import mmopt

    qdq = _quantized(_conv_pool_model(pads, kernel, stride), activations)
    text = _lowered(qdq).script(show_meta=False)
    pools = [line for line in text.splitlines() if "R.nn.max_pool2d(" in line
             or "max_pool2d" in line and "call_tir" in line]
    assert pools, text
    assert not any('"float32"' in line for line in pools), pools
    assert all(f'"{activations}"' in line for line in pools), pools
    result = mmopt.compile(qdq, "x86", tmp_path / "pool")
    assert result.verification.passed
    rng = np.random.default_rng(5)
    step = _output_step(qdq)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        assert np.abs(ours - _plain_ort(qdq, {"x": x})).max() / step <= 2.0 + 1e-3


def _split_concat_model(hw: int = 10) -> onnx.ModelProto:
    """YOLOv8's C2f in small: Conv -> Split in halves -> Conv(3x3) on the second half ->
    Concat(both halves, that conv) -> Conv(1x1)."""
    rng = np.random.default_rng(3)
    w0 = (rng.standard_normal((16, 8, 1, 1)) * 0.3).astype(np.float32)
    w1 = (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((16, 24, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="cv1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("Split", ["r0", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Conv", ["b", "w1"], ["m"], name="m", kernel_shape=[3, 3],
                         pads=[1] * 4),
        helper.make_node("Concat", ["a", "b", "m"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="cv2", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "c2f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, hw, hw])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array([8, 8], np.int64), "halves")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("share", [True, False])
def test_split_and_concat_copy_bytes(share, tmp_path):
    """A split of a quantized tensor splits its bytes; a concatenation whose inputs and output
    share one scale (the quantizer's default) copies bytes with no requantization left. With the
    inputs' own ranges the concatenation requantizes them. Either way the artifact matches the
    QDQ reference."""
    import mmopt
    from mmopt.codegen.relax_util import bindings, op_name, tensor_dtype
    from mmopt.quantize import quantize

    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 8, 10, 10)).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(_split_concat_model(), calib, method="minmax", share_concat_scales=share)
    table = bindings(_lowered(qdq, "x86-avx2")["main"])
    splits = [v for v, value in table.items() if op_name(value) == "relax.split"]
    assert splits and all(str(v.ty.fields[0].dtype) == "uint8" for v in splits)
    concats = [v for v, value in table.items() if op_name(value) == "relax.concat"]
    assert concats and all(tensor_dtype(v) == "uint8" for v in concats)
    # the input's and the three convolutions' output quantizations; nothing at the concatenation
    rounds = sum(op_name(value) == "relax.round" for value in table.values())
    assert rounds == 4 if share else rounds > 4
    result = mmopt.compile(qdq, "x86-avx2", tmp_path / "c2f")
    assert result.verification.passed
    step = _output_step(qdq)
    for _ in range(3):
        x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
        ours = mmopt.load(result.library)(x=x)["y"]
        assert np.abs(ours - _plain_ort(qdq, {"x": x})).max() / step <= 2.0 + 1e-3


def test_requantization_is_one_multiply_add_per_channel():
    """After the layout stage every output quantization rounds ``float(acc) * k + c`` (per-channel
    constants, mmopt.codegen.requantize): no separate dequantizing multiply is left before it."""
    from mmopt.codegen.relax_util import bindings, const_array, op_name

    qdq = _quantized(_float_model(16, 32), "uint8")
    table = bindings(_lowered(qdq, "x86-avx2")["main"])
    rounded = [v.args[0] for v in table.values() if op_name(v) == "relax.round"]
    convs = [v for v in table.values() if op_name(v) == "relax.nn.conv2d"
             or "mmopt_qconv_dot" in str(getattr(v, "args", [""])[0])]
    assert len(rounded) >= len(convs) >= 2

    def constant(expr):  # a constant, or its NHWC permutation (ConvertLayout's)
        value = table.get(expr)
        if op_name(value) == "relax.permute_dims":
            expr = value.args[0]
        return const_array(expr) is not None

    folded = 0
    for operand in rounded:
        value = table[operand]
        if op_name(value) == "relax.add" and constant(value.args[1]):
            value = table.get(value.args[0])  # the bias (and the correction) times 1/s
        if (op_name(value) == "relax.multiply" and constant(value.args[1])
                and op_name(table.get(value.args[0])) == "relax.astype"
                and str(table[value.args[0]].args[0].ty.dtype) == "int32"):
            folded += 1
    assert folded == len(convs)  # each conv's sums, rescaled once


def _depthwise_relu_model(channels: int, hw: int, expand_first: bool = False) -> onnx.ModelProto:
    """Depthwise 3x3 -> Relu -> 1x1 -> Relu: int8 outputs with zero point 0 (a ReLU'd range), as
    in MobileNet blocks. ``expand_first``: 1x1 -> Relu -> depthwise -> Relu instead (the
    depthwise convolution's input is then another kernel's output, its zero-point padding an
    explicit pad in the graph)."""
    rng = np.random.default_rng(0)
    dw = (rng.standard_normal((channels, 1, 3, 3)) * 0.3).astype(np.float32)
    pw = (rng.standard_normal((channels, channels, 1, 1)) * 0.3).astype(np.float32)
    w1, w2 = (pw, dw) if expand_first else (dw, pw)
    dw_attrs = {"kernel_shape": [3, 3], "pads": [1] * 4, "group": channels}
    pw_attrs = {"kernel_shape": [1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], **(pw_attrs if expand_first else dw_attrs)),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **(dw_attrs if expand_first else pw_attrs)),
        helper.make_node("Relu", ["c2"], ["y"]),
    ]
    shape = [1, channels, hw, hw]
    graph = helper.make_graph(
        nodes, "dw_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target_name", ["x86-avx2", "x86-avx512", "x86-vnni"])
def test_requantizing_write_back_stays_vectorized(target_name, tmp_path):
    """The int8 kernels' write-back (round, clamp, store as uint8) runs on vectors: with LLVM
    told to prefer 512-bit vectors, it scalarized the depthwise kernel's epilogue of 7-row x two
    16-lane tiles (448 vcvttss2si/vrndscaless, one per element). Compiled only: any x86 machine
    checks every target's code."""
    import mmopt
    from mmopt.quantize import quantize

    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) reads the kernels' instructions")
    model = _depthwise_relu_model(32, 28)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 32, 28, 28), dtype=np.float32)} for _ in range(4)]
    qdq, _ = quantize(model, calib, method="minmax", weight_bits=7)
    result = mmopt.compile(qdq, target_name, tmp_path / "m", verify=False)
    disassembly = subprocess.run([objdump, "-d", str(result.library)], capture_output=True,
                                 text=True, check=True).stdout
    scalar = [line for line in disassembly.splitlines()
              if any(op in line for op in ("vcvttss2si", "vroundss", "vrndscaless"))]
    assert not scalar, scalar[:5]
    assert "vrndscaleps" in disassembly or "vroundps" in disassembly


def _host_has_vnni() -> bool:
    from mmopt.codegen.int8_dot import VNNI, dot_product_for
    from mmopt.targets import get

    return dot_product_for(get("x86").tvm_target()) is VNNI


@pytest.mark.parametrize("limit", [128, 64], ids=["8-bit-weights", "7-bit-weights"])
@pytest.mark.parametrize("target_name", X86_TARGETS)
def test_dot_kernel_is_tensorized_and_exact(target_name, limit, tmp_path):
    """The packed convolution runs the target's instruction (vpdpbusd with VNNI; else vpmaddubsw
    when every weight is in [-64, 64], vpmaddwd otherwise, never the saturating vpmaddubsw on
    larger weights) and equals numpy's integer convolution bit for bit, also at the extremes
    (255 x -128: a pair sum that overflows int16; 255 x -64 and 255 x 64: the largest that do
    not)."""
    import tvm
    from tvm import relax

    from mmopt.codegen import int8_dot as q
    from mmopt.codegen.build import build

    target = _target(target_name)
    if _dot(target) is None:
        pytest.skip(f"{target_name} has no integer dot-product instruction")
    rng = np.random.default_rng(0)
    n, h, w, ic, oc, k, stride = 1, 9, 11, 8, 32, 3, 2
    data = rng.integers(0, 256, (n, h, w, ic), dtype=np.uint8)
    weight = rng.integers(-limit, min(limit + 1, 128), (k, k, ic, oc), dtype=np.int8)
    data[0, :4] = 255
    weight[..., :8] = -limit
    weight[..., 8:16] = min(limit, 127)
    dot = next(d for d in q.dot_products_for(target.tvm_target()) if d.accepts(weight))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, h, w, ic), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), strides=[stride, stride],
                                           data_layout="NHWC", kernel_layout="HWIO",
                                           out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
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
        assert dot.mnemonic in disassembly
        if limit > 64:
            assert "pmaddubsw" not in disassembly
        if dot.lanes == 16:  # 512-bit registers
            assert any("zmm" in line for line in disassembly.splitlines() if dot.mnemonic in line)


def test_register_tiles_fit_the_registers():
    """Every tile a dot-product schedule may choose fits the ISA's vector registers: the
    accumulators, one weight vector per column, and the instruction's temporaries (vpmaddwd: the
    broadcast and the product; AVX2 has 16 registers)."""
    from mmopt.codegen.int8_x86 import PMADDUBSW_256, PMADDUBSW_512, PMADDWD_256, PMADDWD_512
    from mmopt.codegen.int8_dot import SDOT, VNNI, VNNI_256

    for dot in (VNNI, VNNI_256, SDOT, PMADDWD_256, PMADDWD_512, PMADDUBSW_256, PMADDUBSW_512):
        for blocks in (1, 2, 3, 4, 6, 8, 12, 16, 20, 48, 125):
            for width in (1, 7, 12, 14, 28, 56, 112):
                for window, steps in ((9, 288), (1, 8), (1, 512)):
                    rows, nv = dot.register_tile(blocks, width, 8, window, steps)
                    assert blocks % nv == 0 and width % rows == 0
                    assert rows * nv <= dot.accumulators
                    # a one-row tile of a 1x1 conv reads its weights from L1 as memory operands
                    weights = 0 if rows == 1 and window == 1 else nv
                    assert rows * nv + weights + dot.temporaries <= dot.registers, (dot, blocks,
                                                                                    width)
    assert PMADDWD_256.registers == 16 and PMADDWD_512.registers == 32
    # the measured choices on AVX2: 2x4 for 3x3 layers, one row of 8 (or 6) vectors for 1x1
    # layers with small weights, 2x4 for 1x1 layers whose weights do not stay in L1
    assert PMADDWD_256.register_tile(8, 56, 8, 9, 9 * 32) == (2, 4)
    assert PMADDWD_256.register_tile(32, 56, 8, 1, 32) == (1, 8)
    assert PMADDWD_256.register_tile(18, 56, 8, 1, 12) == (1, 6)
    assert PMADDWD_256.register_tile(8, 56, 8, 1, 128) == (2, 4)


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


@pytest.mark.parametrize("target_name", X86_TARGETS)
def test_integer_matmul_and_gemm_match_onnxruntime(target_name, tmp_path):
    """MatMul (3-D activations) and Gemm (transB) become integer 1x1 convolutions over rows: the
    MatMul's 48 output channels run the target's instruction, the Gemm's 20 plain integer code."""
    import mmopt
    from mmopt.codegen.int8_paths import record_int8_kernels
    from mmopt.quantize import quantize

    target = _target(target_name)

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
    text = _lowered(qdq, target_name).script(show_meta=False)
    assert "R.matmul(" not in text
    with record_int8_kernels() as kernels:
        result = mmopt.compile(qdq, target_name, tmp_path / "mm")
    assert result.verification.passed
    paths = sorted(k["path"] for k in kernels)
    assert paths == sorted([_path(target, 48), _path(target, 20)]), kernels
    x = rng.standard_normal((2, 5, 32)).astype(np.float32)
    got = mmopt.load(result.library)(x=x)["y"]
    assert np.abs(got - _plain_ort(qdq, {"x": x})).max() <= 2 * _output_step(qdq) + 1e-6


def test_float_model_records_no_int8_kernels(tmp_path):
    """Only a model with integer kernels gets the per-kernel path list."""
    import mmopt
    from mmopt.codegen.int8_paths import record_int8_kernels

    _target("x86-avx2")
    with record_int8_kernels() as kernels:
        result = mmopt.compile(_float_model(8, 16), "x86-avx2", tmp_path / "f")
    assert result.verification.passed
    assert kernels == []


def test_quantized_model_with_dynamic_height_and_width_compiles(tmp_path):
    """A QDQ model whose height and width are symbolic (``--dim``): its 1x1 integer convolution
    is packed for the dot-product kernels with a symbolic output size (compile failed before:
    the packed convolution read the data shape as integers), and it verifies at every size."""
    import mmopt
    from mmopt.ir.dims import parse_dim_option
    from mmopt.quantize import quantize

    model = _depthwise_relu_model(32, 28)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 32, 28, 28), dtype=np.float32)} for _ in range(4)]
    qdq, _ = quantize(model, calib, method="minmax", weight_bits=7)
    for value in list(qdq.graph.input) + list(qdq.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "h", "w"
    result = mmopt.compile(qdq, "x86-avx2", tmp_path / "dyn",
                           dims=[parse_dim_option("h=16..64:8"), parse_dim_option("w=16..64:8")])
    assert result.verification.passed and len(result.verification.runs) >= 3


def test_failed_dot_product_schedule_is_reported_not_silent(monkeypatch, tmp_path):
    """When the instruction schedule of a packed integer convolution fails, the kernel still runs
    (the default schedule's integer loop, several times slower) and the compile says so: a
    warning line, and the reason under ``extra.degraded_kernels`` in the artifact JSON."""
    import json

    from click.testing import CliRunner

    from mmopt.cli.main import cli
    from mmopt.codegen import int8_dot

    _target("x86-avx2")

    def failing(*_args, **_kwargs):
        raise RuntimeError("no tile fits")

    monkeypatch.setattr(int8_dot, "schedule_dot_conv", failing)
    qdq = _quantized(_float_model(16, 32), "uint8", weight_bits=7)
    onnx.save(qdq, tmp_path / "q.onnx")
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "q.onnx"), "--target", "x86-avx2",
                                      "-o", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "degraded kernels: pmaddubsw dot-product schedule: no tile fits; the integer loop " \
           "runs instead (2)" in " ".join(result.output.split()), result.output
    meta = json.loads((tmp_path / "q.json").read_text())
    [entry] = meta["extra"]["degraded_kernels"]["degradations"]
    assert entry["count"] == 2 and "no tile fits" in entry["what"]
    assert {k["path"] for k in meta["extra"]["int8_kernels"]} == {"integer-loop"}
    assert meta["verification"]["passed"]
