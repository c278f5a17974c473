"""Float convolutions on pre-packed weights: used where they apply, and exact."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

CASES = {
    # name: (ic, oc, kernel, stride, pad, dilation, groups)
    "3x3-pad": (16, 64, 3, 1, 1, 1, 1),
    "1x1-stride2": (32, 48, 1, 2, 0, 1, 1),
    "7x7-stride2-pad3": (3, 32, 7, 2, 3, 1, 1),
    "dilated": (8, 32, 3, 1, 2, 2, 1),
    "depthwise-not-packed": (32, 32, 3, 1, 1, 1, 32),
}


def _model(ic, oc, k, stride, pad, dilation, groups, hw=15):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((oc, ic // groups, k, k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    out = (hw + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    node = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], pads=[pad] * 4,
                            strides=[stride] * 2, dilations=[dilation] * 2, group=groups)
    relu = helper.make_node("Relu", ["c"], ["y"])
    graph = helper.make_graph(
        [node, relu], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, out, out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _direct():
    """Code-generation options with Winograd off: these tests are about the direct packed
    kernels, and 3x3 convolutions of 7 x 7 maps and up would otherwise run as Winograd."""
    from mmopt.codegen.options import CodegenOptions

    return CodegenOptions(winograd=False)


def _layout_text(model, target) -> str:
    """The model's Relax after mmopt's layout passes for ``target`` (a :class:`Target`), direct
    kernels."""
    import tvm

    from mmopt.codegen import pipeline
    from mmopt.codegen.relax_import import to_relax

    with target.tvm_target():
        passes = tvm.transform.Sequential(pipeline._layout(target, _direct()))  # noqa: SLF001
        return passes(to_relax(model)).script()


@pytest.mark.parametrize("case", list(CASES))
def test_packed_conv_matches_onnxruntime(case, tmp_path):
    import mmopt
    from mmopt.codegen.packed_conv import PACKED_BLOCK
    from mmopt.targets import get

    ic, oc, k, stride, pad, dilation, groups = CASES[case]
    model = _model(ic, oc, k, stride, pad, dilation, groups)
    text = _layout_text(model, get("x86"))
    assert (PACKED_BLOCK in text) == (groups == 1), text
    result = mmopt.compile(model, "x86", tmp_path / case, codegen=_direct())
    assert result.verification.passed, result.verification.to_dict()


def test_output_tile_follows_the_default_schedule():
    from mmopt.codegen.register_tiles import register_tile
    from mmopt.codegen.packed_conv import output_tile

    # AVX-512 (16 lanes, 32 registers): 2 vectors across, 14 rows of 56
    assert output_tile(64, 56, 16, 32) == 32
    assert output_tile(48, 56, 16, 32) == 48  # 3 vectors of 16
    assert output_tile(24, 56, 16, 32) == 24  # 3 vectors of 8
    assert output_tile(10, 56, 16, 32) == 1   # does not vectorize: left as HWIO
    # AVX2 (8 lanes, 16 registers): a 7-wide output cannot hold 7 x 2 vectors: 7 x 1 (the packer
    # computes such an output 8 wide instead: test_avx2_seven_wide_conv_is_computed_eight_wide)
    assert output_tile(512, 7, 8, 16) == 8
    assert output_tile(256, 14, 8, 16) == 32  # 2 rows x 4 vectors
    for oc, rows, lanes, registers in [(64, 56, 16, 32), (512, 7, 8, 16), (96, 28, 8, 16),
                                       (256, 14, 4, 32)]:
        nv = register_tile(oc, rows, lanes, registers)[1]
        assert output_tile(oc, rows, lanes, registers) == nv * lanes


@pytest.mark.parametrize(("target_name", "oc"), [("x86-avx2", 8), ("x86-avx512", 64)])
@pytest.mark.parametrize(("k", "stride", "pad", "hw"), [(3, 1, 1, 13), (3, 2, 1, 26), (1, 1, 0, 13)])
def test_conv_of_a_prime_width_runs_on_whole_register_tiles(k, stride, pad, hw, target_name, oc,
                                                            tmp_path):
    """An output 13 wide (YOLOX at 416 x 416) has 1-row register tiles on its exact width: it is
    computed 14 wide (7-row tiles) and cropped, padded with zeros or, without padding, reading the
    last input column again; the cropped result matches onnxruntime (where the target runs)."""
    import mmopt
    from mmopt.codegen.packed_conv import PACKED_BLOCK
    from mmopt.targets import get

    model = _model(16, oc, k, stride, pad, 1, 1, hw=hw)
    target = get(target_name)
    text = _layout_text(model, target)
    assert f"{PACKED_BLOCK}_crop" in text and f"T.int64(14), T.int64({oc})" in text, text
    if target.runs_here():
        result = mmopt.compile(model, target_name, tmp_path / "conv", codegen=_direct())
        assert result.verification.passed, result.verification.to_dict()


@pytest.mark.parametrize(("k", "stride", "pad", "hw"), [(3, 1, 1, 7), (3, 2, 1, 14), (1, 1, 0, 7)])
def test_avx2_seven_wide_conv_is_computed_eight_wide(k, stride, pad, hw, tmp_path):
    """AVX2's register tile on a 7-wide output is 7 x 1 (7 accumulators); the convolution is
    computed 8 wide in 4 x 2 tiles and cropped (:func:`mmopt.codegen.register_tiles.rounded_rows`),
    and the cropped result matches onnxruntime. AVX-512 keeps the exact width (7 x 2 tiles)."""
    import mmopt
    from mmopt.codegen.packed_conv import PACKED_BLOCK
    from mmopt.targets import get

    model = _model(32, 64, k, stride, pad, 1, 1, hw=hw)
    for name, crop in (("x86-avx2", True), ("x86-avx512", False)):
        text = _layout_text(model, get(name))
        assert (f"{PACKED_BLOCK}_crop" in text) == crop, (name, text)
        assert ("T.int64(8), T.int64(64)" in text) == crop, (name, text)
    target = get("x86-avx2")
    if target.runs_here():
        result = mmopt.compile(model, "x86-avx2", tmp_path / "conv", codegen=_direct())
        assert result.verification.passed, result.verification.to_dict()


def test_channels_are_padded_to_whole_vectors_where_that_does_more_work():
    from mmopt.codegen.register_tiles import padded_channels

    # AVX-512: 24 channels run in 8-lane vectors (half of each FMA idle); 32 wide, 3/4 useful
    assert padded_channels(24, 56 * 56, 16) == 32
    assert padded_channels(40, 28 * 28, 16) == 48
    assert padded_channels(255, 20 * 20, 16) == 256  # YOLO heads: scalar code otherwise
    assert padded_channels(12, 30 * 30, 16) == 16
    assert padded_channels(64, 56 * 56, 16) == 64    # whole vectors already
    assert padded_channels(8, 56 * 56, 16) == 8      # 16 wide would do no more useful work
    assert padded_channels(24, 7 * 7, 16) == 24      # too few positions to spread the waste
    # AVX2 and NEON vectors divide these counts
    assert padded_channels(24, 56 * 56, 8) == 24
    assert padded_channels(40, 28 * 28, 4) == 40
    # Zen 4 runs AVX-512 on 256-bit units: 8-lane vectors are at full rate, padding only adds
    # work; 4-lane ones are not, and scalar code never is
    assert padded_channels(24, 56 * 56, 16, full_rate_lanes=8) == 24
    assert padded_channels(40, 28 * 28, 16, full_rate_lanes=8) == 40
    assert padded_channels(12, 30 * 30, 16, full_rate_lanes=8) == 16
    assert padded_channels(255, 20 * 20, 16, full_rate_lanes=8) == 256
    assert padded_channels(24, 56 * 56, 16, full_rate_lanes=16) == 32


@pytest.mark.parametrize(("target_name", "oc", "computed"),
                         [("x86-avx512", 24, 32), ("x86-avx512", 40, 48),
                          ("x86-avx512", 255, 256), ("x86-avx2", 24, None)])
@pytest.mark.parametrize(("k", "stride", "pad", "hw"), [(1, 1, 0, 28), (3, 2, 1, 28)])
def test_conv_channels_no_vector_divides_run_padded_and_cropped(target_name, oc, computed, k,
                                                               stride, pad, hw, tmp_path):
    """AVX-512 computes 24, 40 or 255 output channels as 32, 48 or 256 (zero weights) and crops
    them; AVX2's 8-lane vectors divide 24 and keep it. The cropped result matches onnxruntime
    (where the target runs)."""
    import mmopt
    from mmopt.codegen.packed_conv import PACKED_BLOCK
    from mmopt.targets import get

    model = _model(16, oc, k, stride, pad, 1, 1, hw=hw)
    target = get(target_name)
    text = _layout_text(model, target)
    out = (hw + 2 * pad - k) // stride + 1
    if computed is not None:
        assert f"{PACKED_BLOCK}_crop" in text, text
        assert f"T.int64({out}), T.int64({computed})" in text, text
    else:  # (AVX2 may still round the width up: 14 columns computed as 16)
        assert "T.int64(32)" not in text, text
    if target.runs_here():
        result = mmopt.compile(model, target_name, tmp_path / "conv", codegen=_direct())
        assert result.verification.passed, result.verification.to_dict()


def _se_model(c: int, oc: int, hw: int):
    """x -> 3x3 convolution h -> squeeze-and-excitation gate of h (mean, 1x1 conv, ReLU, 1x1
    conv, sigmoid) -> h * gate -> 1x1 convolution to ``oc`` channels."""
    rng = np.random.default_rng(0)

    def const(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["h"], ["m"]),
             helper.make_node("Conv", ["m", "w1", "b1"], ["f1"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["f1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["f2"], kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["f2"], ["g"]),
             helper.make_node("Mul", ["h", "g"], ["xg"]),
             helper.make_node("Conv", ["xg", "w3", "b3"], ["y"], kernel_shape=[1, 1])]
    inits = [const("w0", (c, c, 3, 3)), const("w1", (8, c, 1, 1)), const("b1", (8,)), const("w2", (c, 8, 1, 1)),
             const("b2", (c,)), const("w3", (oc, c, 1, 1)), const("b3", (oc,))]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("c", "oc", "hw", "on_weights"),
                         [(64, 32, 28, True), (48, 24, 16, True), (64, 96, 7, False)])
def test_channel_gate_before_a_conv_scales_its_weights(c, oc, hw, on_weights, tmp_path):
    """A squeeze-and-excitation gate feeding a convolution scales the convolution's packed
    weights per input channel (``conv(x * s, W) = conv(x, W * s)``) where the weights per
    channel are fewer than the map's positions (28 x 28 by 32 outputs), and the map otherwise
    (7 x 7 by 96); the result matches onnxruntime either way."""
    import mmopt
    from mmopt.targets import get

    model = _se_model(c, oc, hw)
    text = _layout_text(model, get("x86"))
    assert (f"R.shape([1, 1, 1, {c}, 1])" in text) == on_weights, text
    map_multiplies = [line for line in text.splitlines() if "R.multiply" in line
                      and f"R.Tensor((1, {hw}, {hw}, {c})" in line]
    assert bool(map_multiplies) != on_weights, text
    result = mmopt.compile(model, "x86", tmp_path / "se", codegen=_direct())
    assert result.verification.passed, result.verification.to_dict()


def test_vectors_wider_than_the_fma_units_take_narrower_tiles():
    """Zen 4 runs a 16-lane FMA as two 8-lane passes: the tile keeps the rows the full-rate model
    chose and drops to the fewest vectors whose accumulators (counted in passes) hide the FMA
    latency; full-rate vectors and CPUs are left as they were."""
    from mmopt.codegen.register_tiles import part_rate, register_tile

    assert part_rate(16, 8) == 2 and part_rate(8, 8) == 1 and part_rate(16, None) == 1
    assert register_tile(256, 49, 16, 32) == (7, 2)
    assert register_tile(256, 49, 16, 32, full_rate_lanes=8) == (7, 1)  # Winograd GEMM, 49 tiles
    assert register_tile(512, 16, 16, 32, full_rate_lanes=8) == (8, 1)
    assert register_tile(96, 170, 16, 32) == (5, 3)
    assert register_tile(96, 170, 16, 32, full_rate_lanes=8) == (5, 1)
    for v_ext in (16, 24, 48, 64, 96, 128, 160, 256, 384, 960, 2048):
        for r_ext in (1, 2, 3, 7, 13, 14, 16, 28, 49, 56, 170):
            rows, nv = register_tile(v_ext, r_ext, 16, 32)
            n_rows, n_nv = register_tile(v_ext, r_ext, 16, 32, full_rate_lanes=8)
            assert n_rows == rows and n_nv <= nv and (v_ext // 16) % n_nv == 0 or v_ext % 16
            assert n_nv == nv or n_rows * n_nv * 2 >= 8, (v_ext, r_ext)
            # full-rate vectors: AVX-512 on 512-bit units, 8-lane vectors on Zen 4, AVX2
            assert register_tile(v_ext, r_ext, 16, 32, full_rate_lanes=16) == (rows, nv)
            assert (register_tile(v_ext, r_ext, 8, 16, full_rate_lanes=8)
                    == register_tile(v_ext, r_ext, 8, 16))


def _two_convs(hw=14, c=256):
    """A 3x3 convolution (Winograd at 14 x 14) followed by a 1x1 one, ``c`` channels."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, c, k, k)).astype(np.float32) * 0.05,
                                     f"w{k}") for k in (3, 1)]
    nodes = [helper.make_node("Conv", ["x", "w3"], ["a"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["y"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("mcpu", "streamed", "tile"),
                         [("znver4", True, 16), ("znver4", False, 32), ("znver5", True, 32)])
def test_packed_weights_and_schedule_agree_on_the_tile_when_weights_stream(
        mcpu, streamed, tile, monkeypatch):
    """Where the weights stream from memory (a model larger than the last-level cache; here the
    decision is forced) a Zen 4 target packs the direct and the Winograd weights for 1-vector
    tiles (16 floats) and its schedules choose those tiles; weights in cache, or 512-bit FMA units
    (Zen 5), keep 2 vectors (32). Compiled, not run: the host may lack AVX-512."""
    import tvm
    from tvm import s_tir

    from mmopt.codegen import pipeline, prefetch
    from mmopt.codegen.cpu_contraction import _contraction_names, _contraction_shape, default_knobs
    from mmopt.codegen.cpu_schedules import _target_params
    from mmopt.codegen.relax_import import to_relax
    from mmopt.targets.registry import _x86

    monkeypatch.setattr(prefetch, "weights_from_memory", lambda mod, target: streamed)
    target = _x86(f"x86-{mcpu}", mcpu, "test", ())
    mod = pipeline.tuning_module(to_relax(_two_convs()), target)
    tvm_target = target.tvm_target()
    lanes, registers = _target_params(tvm_target)
    tiles = []
    for gv, func in mod.functions.items():
        if type(func).__name__ != "PrimFunc":
            continue
        sch = s_tir.Schedule(func)
        for name in _contraction_names(sch):
            if name.startswith(("mmopt_conv2d_nhwc_packed", "mmopt_winograd_gemm")):
                weight = func.params[1]  # the packed weights: (..., tile)
                with prefetch.streaming(streamed):
                    shape = _contraction_shape(sch, name, lanes, registers, tvm_target)
                tiles.append((gv.name_hint, int(weight.shape[-1]),
                              default_knobs(shape, registers).nv * shape.vec))
    assert len(tiles) == 2, tiles
    assert all(packed == scheduled == tile for _name, packed, scheduled in tiles), tiles
