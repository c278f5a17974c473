"""SkipLayerNormalization and EmbedLayerNormalization against onnxruntime's kernels."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.ops.microsoft._testing import check_decomposition, ms_model, rand


def test_skip_layer_norm_with_bias_statistics_and_the_input_sum():
    model = ms_model(
        "y, mean, inv, total = com.microsoft.SkipLayerNormalization <epsilon = 0.00001> "
        "(x, skip, gamma, beta, bias)",
        "float[2,5,32] x, float[2,5,32] skip",
        "float[2,5,32] y, float[2,5,1] mean, float[2,5,1] inv, float[2,5,32] total",
        gamma=rand(32, seed=1), beta=rand(32, seed=2), bias=rand(32, seed=3))
    check_decomposition(model, {"x": rand(2, 5, 32), "skip": rand(2, 5, 32, seed=4)},
                        "decompose_skip_layer_norm", rtol=1e-4)


def test_skip_layer_norm_without_beta_and_broadcast_skip():
    model = ms_model("y = com.microsoft.SkipLayerNormalization (x, skip, gamma)",
                     "float[2,5,16] x, float[5,16] skip", "float[2,5,16] y",
                     gamma=rand(16, seed=1))
    check_decomposition(model, {"x": rand(2, 5, 16, scale=3.0), "skip": rand(5, 16, seed=4)},
                        "decompose_skip_layer_norm", rtol=1e-4)


@pytest.mark.parametrize("with_mask, with_segments, with_positions", [
    (True, True, False), (False, False, False), (True, False, True)])
def test_embed_layer_norm(with_mask, with_segments, with_positions):
    ids = "ids"
    seg = "seg" if with_segments else '""'
    seg_emb = "seg_emb" if with_segments else '""'
    mask = "mask" if with_mask else '""'
    pos = ", pos" if with_positions else ""
    inputs = ["int32[2,6] ids"] + (["int32[2,6] seg"] if with_segments else []) + (
        ["int32[2,6] mask"] if with_mask else []) + (["int32[2,6] pos"] if with_positions else [])
    model = ms_model(
        f"y, mask_index, total = com.microsoft.EmbedLayerNormalization <epsilon = 0.00001> "
        f"({ids}, {seg}, word, position, {seg_emb}, gamma, beta, {mask}{pos})",
        ", ".join(inputs), "float[2,6,16] y, int32[2] mask_index, float[2,6,16] total",
        word=rand(30, 16, seed=1), position=rand(8, 16, seed=2), seg_emb=rand(2, 16, seed=3),
        gamma=rand(16, seed=4), beta=rand(16, seed=5))
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 30, (2, 6)).astype(np.int32),
             "seg": rng.integers(0, 2, (2, 6)).astype(np.int32),
             "mask": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.int32),
             "pos": rng.integers(0, 8, (2, 6)).astype(np.int32)}
    names = [i.name for i in model.graph.input]
    check_decomposition(model, {k: v for k, v in feeds.items() if k in names},
                        "decompose_embed_layer_norm", rtol=1e-4)


def _onnx_domain_model(body: str, inputs: str, outputs: str, **initializers):
    """Like ``ms_model``, without onnx's checker: ``SimplifiedLayerNormalization`` is an op of
    ONNX's own domain that only onnxruntime defines."""
    import onnx

    from mmopt import ir as mir

    model = onnx.parser.parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g ({inputs}) => ({outputs}) {{ {body} }}""")
    model.graph.initializer.extend(onnx.numpy_helper.from_array(v, k)
                                   for k, v in initializers.items())
    return mir.infer_shapes(model)


@pytest.mark.parametrize("axis, outputs", [(-1, 2), (-2, 1)])
def test_simplified_layer_norm(axis, outputs):
    scale_shape = (5, 32) if axis == -2 else (32,)
    out = "y, inv" if outputs == 2 else "y"
    inv_shape = "float[2,5,1]" if axis == -1 else "float[2,1,1]"
    model = _onnx_domain_model(
        f"{out} = SimplifiedLayerNormalization <axis = {axis}, epsilon = 0.000001> (x, scale)",
        "float[2,5,32] x", "float[2,5,32] y" + (f", {inv_shape} inv" if outputs == 2 else ""),
        scale=rand(*scale_shape, seed=1))
    check_decomposition(model, {"x": rand(2, 5, 32, scale=2.0)}, "decompose_simplified_layer_norm",
                        rtol=1e-4)


def test_skip_simplified_layer_norm_with_bias_and_the_input_sum():
    model = ms_model(
        'y, "", inv, total = com.microsoft.SkipSimplifiedLayerNormalization <epsilon = 0.00001> '
        "(x, skip, gamma, bias)",
        "float[2,5,32] x, float[2,5,32] skip",
        "float[2,5,32] y, float[2,5,1] inv, float[2,5,32] total",
        gamma=rand(32, seed=1), bias=rand(32, seed=3))
    check_decomposition(model, {"x": rand(2, 5, 32), "skip": rand(2, 5, 32, seed=4)},
                        "decompose_skip_simplified_layer_norm", rtol=1e-4)


def test_skip_simplified_layer_norm_mean_output_is_declined():
    from mmopt.ops.microsoft._testing import declined

    model = ms_model("y, mean = com.microsoft.SkipSimplifiedLayerNormalization (x, skip, gamma)",
                     "float[2,5,16] x, float[2,5,16] skip", "float[2,5,16] y, float[2,5,1] mean",
                     gamma=rand(16, seed=1))
    assert "mean" in declined(model, "decompose_skip_simplified_layer_norm")
