"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions: used where they apply, and within a small
factor of the direct sum's float32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

CASES = {
    # name: (ic, oc, hw, stride, pad, transformed positions: 36 = F(4x4, 3x3), 16 = F(2x2, 3x3),
    # 0 = none)
    "resnet-like": (32, 32, 16, 1, 1, 36),
    "wide-out, a map 4 does not divide": (16, 64, 14, 1, 1, 36),
    "non-square-tiles": (24, 48, 20, 1, 1, 36),
    "weights too large for F(4x4)": (128, 256, 14, 1, 1, 16),
    "stride-2": (32, 32, 16, 2, 1, 0),
    "odd-size (last tile's extra row and column dropped)": (32, 32, 15, 1, 1, 36),
    "7x7, weights too large for F(4x4) (ResNet stage 4-like)": (256, 256, 7, 1, 1, 16),
    "few-channels": (8, 32, 16, 1, 1, 0),
    "small-output": (64, 64, 6, 1, 1, 0),
}


def _model(ic, oc, hw, stride, pad, seed=0, dims=None):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((oc, ic, 3, 3)) / np.sqrt(9 * ic)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    out = (hw + 2 * pad - 3) // stride + 1 if dims is None else None
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[pad] * 4,
                            strides=[stride] * 2)
    relu = helper.make_node("Relu", ["c"], ["y"])
    x_shape, y_shape = ([1, ic, hw, hw], [1, oc, out, out]) if dims is None else (
        [dims[0], ic, dims[1], dims[2]], [dims[0], oc, dims[1], dims[2]])
    graph = helper.make_graph(
        [conv, relu], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _layout_text(model, options=None, dims=None, target_name: str = "x86") -> str:
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets import get

    target = get(target_name)
    with target.tvm_target():
        return tvm.transform.Sequential(pipeline._layout(target, options))(  # noqa: SLF001
            to_relax(model, dims=dims)).script()


@pytest.mark.parametrize("case", list(CASES))
def test_winograd_where_it_applies_and_matches_onnxruntime(case, tmp_path):
    import mmopt
    from mmopt.codegen.winograd import GEMM_BLOCK

    ic, oc, hw, stride, pad, positions = CASES[case]
    model = _model(ic, oc, hw, stride, pad)
    text = _layout_text(model)
    assert (GEMM_BLOCK in text) == bool(positions)
    if positions:
        assert f"R.Tensor(({positions}, " in text
    result = mmopt.compile(model, "x86", tmp_path / case)
    assert result.verification.passed, result.verification.to_dict()


def test_switched_off_by_option_or_environment(monkeypatch, tmp_path):
    import json

    import mmopt
    from mmopt.codegen.options import CodegenOptions
    from mmopt.codegen.winograd import GEMM_BLOCK

    model = _model(32, 32, 16, 1, 1)
    assert GEMM_BLOCK not in _layout_text(model, CodegenOptions(winograd=False))
    monkeypatch.setenv("MMOPT_WINOGRAD", "0")
    assert CodegenOptions.from_env() == CodegenOptions(winograd=False)
    assert CodegenOptions.from_env(winograd=True).winograd  # an explicit option wins
    # what the environment chose is recorded in the artifact
    result = mmopt.compile(model, "x86", tmp_path / "off")
    recorded = json.loads(result.meta_path.read_text())["codegen"]
    assert recorded == {"winograd": False, "pack_weights": True, "layout": "NHWC", "fast_math": True,
                        "lookup_tables": True}


@pytest.mark.parametrize(("ic", "oc", "hw", "factor"), [(128, 256, 14, 4), (64, 32, 16, 8)],
                         ids=["F(2x2,3x3)", "F(4x4,3x3)"])
def test_accuracy_is_that_of_the_direct_sum(ic, oc, hw, factor, tmp_path):
    """Deep inputs (576 and 1152 products per output): the Winograd result stays within float32
    rounding of a float64 reference: within ``factor`` units of ``eps32 * sum |x| |w|``, the
    scale of a float32 direct sum's rounding error (the standard bound per accumulated product).
    F(4x4, 3x3) multiplies by up to 2.5 in its transforms and loses a little more (measured here:
    9.2e-6 = 4.3 units, F(2x2, 3x3) 0.7 units); with the points 0, +-1, +-2 of the usual
    construction it would lose about twice that again. The yardstick is not onnxruntime's error,
    which depends on the CPU it runs on (measured on Zen 4: 1.7e-6 with its AVX-512 kernels,
    0.9e-6 with its AVX2 ones)."""
    import mmopt
    from mmopt.runtime.artifact import load

    model = _model(ic, oc, hw, 1, 1, seed=3)
    x = np.random.default_rng(4).standard_normal((1, ic, hw, hw)).astype(np.float32)
    result = mmopt.compile(model, "x86", tmp_path / "deep")
    ours = load(result.library)(x=x)["y"]
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    b = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, oc, hw, hw))
    for kh in range(3):
        for kw in range(3):
            ref += np.einsum("ncyx,oc->noyx", xp[:, :, kh:kh + hw, kw:kw + hw], w[:, :, kh, kw])
    magnitude = np.zeros((1, oc, hw, hw))  # sum |x| |w| per output
    for kh in range(3):
        for kw in range(3):
            magnitude += np.einsum("ncyx,oc->noyx", np.abs(xp[:, :, kh:kh + hw, kw:kw + hw]),
                                   np.abs(w[:, :, kh, kw]))
    ref = np.maximum(ref + b[None, :, None, None], 0)
    unit = np.finfo(np.float32).eps * magnitude.max()
    ours_err = np.abs(ours - ref).max()
    assert ours_err < factor * unit, (ours_err, unit)


def test_symbolic_heights_and_widths_of_any_parity(tmp_path):
    """A dynamic input: one Winograd kernel for every size in range. The width has no multiple, so
    odd widths round the tile count up (the extra column is computed and dropped), and the tile
    count (batch x tiles) is a symbolic GEMM row count that the input transform pads to whole
    register tiles; heights are multiples of 8. Matches onnxruntime at odd and even sizes."""
    import onnxruntime as ort

    import mmopt
    from mmopt.codegen.winograd import GEMM_BLOCK
    from mmopt.ir.dims import parse_dim_option
    from mmopt.runtime.artifact import load

    dims = [parse_dim_option(d) for d in ("n=1..3", "h=16..48:8", "w=15..61")]
    model = _model(24, 32, None, 1, 1, seed=5, dims=("n", "h", "w"))
    assert GEMM_BLOCK in _layout_text(model, dims={d.name: d for d in dims})
    result = mmopt.compile(model, "x86", tmp_path / "dyn", dims=dims, verify=False)
    ours = load(result.library)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    for shape in [(1, 24, 16, 15), (2, 24, 24, 33), (3, 24, 48, 61), (1, 24, 40, 16)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(ours(x=x)["y"], theirs.run(None, {"x": x})[0], rtol=1e-4,
                                   atol=1e-4, err_msg=str(shape))


@pytest.mark.parametrize(("target_name", "ic", "oc", "hw", "positions", "rows"),
                         [("x86-avx2", 128, 256, 14, 16, 50), ("x86-avx512", 128, 256, 26, 16, 170),
                          ("x86-avx2", 32, 64, 28, 36, 50)])
def test_tile_counts_without_a_good_register_tile_are_rounded_up(target_name, ic, oc, hw,
                                                                 positions, rows, tmp_path):
    """The GEMM's rows are the output tiles. F(2x2, 3x3): 7 x 7 = 49 of them (a 14 x 14 map) tile
    7 x 1 on AVX2, 13 x 13 = 169 (26 x 26, YOLOX at 416) 1 x 8 on AVX-512; F(4x4, 3x3) on a 28 x
    28 map: 49 again. The input transform writes 50 and 170 rows (zeros beyond the tiles) for
    5-row register tiles, and the result matches onnxruntime."""
    import mmopt
    from mmopt.targets import get

    model = _model(ic, oc, hw, 1, 1)
    text = _layout_text(model, target_name=target_name)
    target = get(target_name)
    m = 2 if positions == 16 else 4
    tiles = -(-hw // m) ** 2
    assert (f"R.Tensor(({positions}, {rows}, {oc})" in text
            and f"R.Tensor(({positions}, {tiles}, {oc})" not in text)
    if target.runs_here():
        result = mmopt.compile(model, target_name, tmp_path / "conv")
        assert result.verification.passed, result.verification.to_dict()


@pytest.mark.parametrize("m", [2, 4])
def test_toom_cook_matrices_compute_the_correlation(m):
    """``A^T [(G g) * (B^T d)]`` is the 3-tap correlation of an (m + 2)-element input, exactly."""
    from mmopt.codegen.winograd import matrices

    at, g_mat, bt = matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        expected = [sum(g[k] * d[i + k] for k in range(3)) for i in range(m)]
        np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), expected, rtol=0, atol=1e-12)


def test_tile_size_follows_products_weights_and_transformed_sizes():
    """F(4x4, 3x3) where it saves products and its 36 x IC x OC weights are small; F(2x2, 3x3)
    where they are not, down to 7 x 7 maps; neither where the transformed tensors outgrow the
    caches (the PP-OCR detector's 160 x 160 x 96 -> 24 layer), on tiny maps, or where rounding up
    to whole tiles leaves too little saved."""
    from mmopt.codegen.winograd import MIN_PIXELS_SYMBOLIC, tile_size

    def choice(h, ic, oc):
        return tile_size([1, h, h, ic], [3, 3, ic, oc], [1, 1], [1, 1, 1, 1], [1, 1])

    assert choice(56, 64, 64) == 4      # ResNet-50 stage 1: 0.56x F(2x2)'s products
    assert choice(28, 128, 128) == 4    # stage 2: 2.4 MB of weights
    assert choice(14, 256, 256) == 2    # stage 3: 9.4 MB
    assert choice(160, 96, 24) is None
    assert choice(7, 512, 512) == 2     # stage 4: an 8 x 8 map of 4 x 4 tiles, 0.58x the products
    assert choice(6, 64, 64) is None    # below MIN_PIXELS
    # a map with symbolic sides keeps the 14 x 14 limit (winograd.MIN_PIXELS_SYMBOLIC)
    assert tile_size([1, 12, 12, 64], [3, 3, 64, 64], [1, 1], [1, 1, 1, 1], [1, 1],
                     MIN_PIXELS_SYMBOLIC) is None
    # a 1 x 49 strip: 2-row tiles would compute twice its rows (0.91x the direct products)
    assert tile_size([1, 1, 49, 64], [3, 3, 64, 64], [1, 1], [1, 1, 1, 1], [1, 1]) is None


def test_output_transform_runs_tile_by_tile():
    """The output transform is scheduled per 4 x 4 tile, the tile's outputs unrolled into a local
    tile that its bias and ReLU then read in a loop of their own, also on a 14 x 14 map (the last
    tile predicated); nothing degraded."""
    import tvm

    from mmopt.codegen.schedule_fallbacks import record_fallbacks
    from mmopt.codegen.pipeline import _schedule_cpu, tuning_module  # noqa: PLC2701
    from mmopt.targets import get
    from mmopt.tuning.measure import relax_module

    target = get("x86")
    model = _model(16, 64, 14, 1, 1)
    # a 1x1 convolution after it: the ReLU stays in NHWC (the model's output is transposed back)
    model.graph.node[1].output[0] = "r"
    model.graph.node.append(helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1]))
    model.graph.initializer.append(numpy_helper.from_array(
        np.full((64, 64, 1, 1), 0.01, np.float32), "w2"))
    with record_fallbacks() as found:
        mod = tuning_module(relax_module(model)[0], target)
        with target.tvm_target():
            mod = tvm.transform.Sequential(_schedule_cpu())(mod)
    outputs = [fn for gv, fn in mod.functions.items() if "winograd_output" in gv.name_hint]
    assert len(outputs) == 1
    text = outputs[0].script()
    assert text.count("T.unroll(T.int64(4))") == 2 and "T.parallel" in text, text
    assert 'scope="local"' in text and text.count("T.sblock(") == 3, text  # with the root
    assert found == [], found
