"""Integer Winograd F(2x2, 3x3) (mmopt.codegen.int8_winograd): exact, and taken where it applies."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest

#: x86 targets without a byte dot product (vpmaddwd on ymm and on zmm)
TARGETS = ["x86-avx2", "x86-avx512"]


def _target(name):
    from mmopt.targets import get

    target = get(name)
    if not target.runs_here():
        pytest.skip(f"target {name} cannot run here: {target.why_not_here()}")
    return target


def _direct(data: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The exact "valid" 3x3 integer convolution of NHWC ``data`` by HWIO ``weight``."""
    n, h, w, _ = data.shape
    out = np.zeros((n, h - 2, w - 2, weight.shape[3]), np.int64)
    for dy in range(3):
        for dx in range(3):
            patch = data[:, dy:dy + h - 2, dx:dx + w - 2].astype(np.int64)
            out += np.einsum("nhwc,co->nhwo", patch, weight[dy, dx].astype(np.int64))
    return out


def test_transformed_weights_are_four_times_g_g_gt_exactly():
    from mmopt.codegen import int8_winograd as iw
    from mmopt.codegen.winograd import POINTS

    rng = np.random.default_rng(0)
    hwio = rng.integers(-128, 128, (3, 3, 4, 16), dtype=np.int8)
    lanes = 8
    packed = iw.transform_weights(hwio, lanes)
    assert packed.dtype == np.int16 and packed.shape == (4, 4, 16 // lanes, 2, lanes, 2)
    u = packed.transpose(0, 1, 3, 5, 2, 4).reshape(4, 4, 4, 16)  # back to [a, b, IC, OC]
    # G of F(2, 3) over (0, 1, -1) and infinity, in exact fractions (independent of the code)
    points = [Fraction(p) for p in POINTS[2]]
    g = []
    for j, p in enumerate(points):
        den = Fraction(1)
        for q in points[:j] + points[j + 1:]:
            den *= p - q
        g.append([p ** k / den for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    for ci, co in [(0, 0), (3, 15), (2, 7)]:
        f = [[Fraction(int(hwio[y, x, ci, co])) for x in range(3)] for y in range(3)]
        want = [[4 * sum(g[a][k] * f[k][l] * g[b][l] for k in range(3) for l in range(3))
                 for b in range(4)] for a in range(4)]
        assert [[Fraction(int(v)) for v in row] for row in u[:, :, ci, co]] == want


@pytest.mark.parametrize("padded", [True, False], ids=["zero-point-pad", "valid"])
@pytest.mark.parametrize("target_name", TARGETS)
def test_winograd_conv_equals_the_direct_sum_bit_for_bit(target_name, padded, tmp_path):
    """A 3x3 uint8 x int8 -> int32 convolution taken as integer Winograd equals numpy's direct
    sum exactly, with full-range weights and the extremes (255 x -128, 255 x 127), whether its
    input is a zero-point pad (the transform pads by itself) or a tensor read as it is."""
    import tvm
    from tvm import relax

    from mmopt.codegen.build import build

    target = _target(target_name)
    rng = np.random.default_rng(1)
    n, h, w, ic, oc, zero = 2, 16, 18, 64, 64, 37
    size = (h, w) if padded else (h + 2, w + 2)
    data = rng.integers(0, 256, (n, *size, ic), dtype=np.uint8)
    weight = rng.integers(-128, 128, (3, 3, ic, oc), dtype=np.int8)
    data[0, :3] = 255  # batch 2: tiles of both images in one GEMM
    weight[..., :8] = -128
    weight[..., 8:16] = 127
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, *size, ic), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            src = bb.emit(relax.op.nn.pad(x, [0, 0, 1, 1, 1, 1, 0, 0], "constant", float(zero))
                          ) if padded else x
            y = bb.emit(relax.op.nn.conv2d(src, relax.const(weight), data_layout="NHWC",
                                           kernel_layout="HWIO", out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with target.tvm_target():
        from mmopt.codegen.int8_dot import pack_dot_convs

        lowered = tvm.transform.Sequential([pack_dot_convs()])(bb.get()).script(show_meta=False)
    assert "mmopt_winograd_igemm" in lowered and "mmopt_qconv_dot" not in lowered
    executable = build(bb.get(), target)
    lib_path = tmp_path / "k.so"
    executable.export_library(str(lib_path))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    full = np.pad(data, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=zero) if padded else data
    np.testing.assert_array_equal(got, _direct(full, weight).astype(np.int32))
    objdump = shutil.which("objdump")
    if objdump:
        disassembly = subprocess.run([objdump, "-d", str(lib_path)], capture_output=True,
                                     text=True, check=True).stdout
        assert "vpmaddwd" in disassembly


def test_where_it_applies():
    from mmopt.codegen import int8_winograd as iw

    w = np.ones((3, 3, 64, 64), np.int8)
    assert iw.applies([1, 82, 82, 64], w, [1, 1], [1, 1], 8)
    assert not iw.applies([1, 82, 82, 64], w, [2, 2], [1, 1], 8)  # strided
    assert not iw.applies([1, 81, 81, 64], w, [1, 1], [1, 1], 8)  # odd output
    assert not iw.applies([1, 12, 12, 64], w, [1, 1], [1, 1], 8)  # 10x10: too small
    assert not iw.applies([1, None, 82, 64], w, [1, 1], [1, 1], 8)  # symbolic
    assert not iw.applies([1, 82, 82, 64], np.ones((1, 1, 64, 64), np.int8), [1, 1], [1, 1], 8)
    # narrow layers: the transforms cost more than the products save
    assert not iw.applies([1, 82, 82, 32], np.ones((3, 3, 32, 32), np.int8), [1, 1], [1, 1], 8)
    assert iw.applies([1, 42, 42, 48], np.ones((3, 3, 48, 96), np.int8), [1, 1], [1, 1], 8)
    # V and M within MAX_TRANSFORMED_BYTES (M of 96 channels at 80x80: 9.8 MB)
    assert not iw.applies([1, 82, 82, 48], np.ones((3, 3, 48, 96), np.int8), [1, 1], [1, 1], 8)
    # output channels in whole vectors
    assert not iw.applies([1, 82, 82, 64], np.ones((3, 3, 64, 60), np.int8), [1, 1], [1, 1], 8)
    # 4x the sum must fit int32: 36 * IC * 255 * 128 < 2^31 up to IC = 1827
    big = np.full((3, 3, 1900, 64), -128, np.int8)
    assert not iw.fits_int32(big) and iw.fits_int32(big[:, :, :1800])


def test_byte_dot_products_keep_the_direct_convolution():
    """VNNI and sdot multiply 4 bytes per lane per instruction: integer Winograd is not used."""
    from mmopt.codegen import int8_winograd as iw
    from mmopt.codegen.int8_dot import SDOT, VNNI

    for dot in (VNNI, SDOT):
        assert iw.rewrite(None, np.ones((3, 3, 64, 64), np.int8), None, [dot]) is None


def _silu_convs(channels: int, hw: int):
    """Two 3x3 convolutions with SiLU ("same" padding), float32, NCHW."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []
    nodes = []
    x = "x"
    for i in range(2):
        w = (rng.standard_normal((channels, channels, 3, 3)) * (2 / (9 * channels)) ** 0.5)
        b = rng.standard_normal(channels) * 0.1
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        y = "y" if i == 1 else f"a{i}"
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [y])]
        x = y
    shape = [1, channels, hw, hw]
    graph = helper.make_graph(nodes, "silu_convs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_quantized_model_runs_it_and_no_winograd_turns_it_off(tmp_path):
    """A QDQ model of two 3x3 conv + SiLU layers (the SiLU a byte-table read in the output
    transform's epilogue; the second conv's input padding done by its input transform): the GEMMs
    are reported as ``winograd-pmaddwd``, the artifact verifies against onnxruntime, and it equals
    the ``--no-winograd`` artifact bit for bit."""
    import mmopt
    from mmopt.codegen.options import CodegenOptions
    from mmopt.quantize import quantize

    _target("x86-avx2")
    rng = np.random.default_rng(1)
    shape = (1, 64, 16, 16)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    qdq, _ = quantize(_silu_convs(64, 16), calib, method="minmax")
    on = mmopt.compile(qdq, "x86-avx2", tmp_path / "on")
    off = mmopt.compile(qdq, "x86-avx2", tmp_path / "off",
                        codegen=CodegenOptions(winograd=False))
    assert on.verification.passed and off.verification.passed
    paths = [k["path"] for k in on.meta.extra["int8_kernels"]]
    assert paths.count("winograd-pmaddwd") == 2, on.meta.extra["int8_kernels"]
    assert not any("winograd" in k["path"] for k in off.meta.extra["int8_kernels"])
    a, b = mmopt.load(on.library), mmopt.load(off.library)
    for _ in range(3):
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(a(x=x)["y"], b(x=x)["y"])


def test_tuned_database_keeps_the_kernel_paths(tmp_path):
    """Compiled with a tuning database (its functions arrive scheduled), the Winograd transforms
    are not reported as integer loops: the paths are those of the untuned compile."""
    import mmopt
    from mmopt.quantize import quantize

    _target("x86-avx2")
    rng = np.random.default_rng(1)
    shape = (1, 64, 16, 16)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    qdq, _ = quantize(_silu_convs(64, 16), calib, method="minmax")
    mmopt.tune(qdq, "x86-avx2", tmp_path / "db", trials_per_task=1)
    tuned = mmopt.compile(qdq, "x86-avx2", tmp_path / "tuned", db=tmp_path / "db")
    assert tuned.verification.passed
    paths = sorted(k["path"] for k in tuned.meta.extra["int8_kernels"])
    assert paths == ["winograd-pmaddwd", "winograd-pmaddwd"], tuned.meta.extra["int8_kernels"]
