"""Attention and MultiHeadAttention against onnxruntime's kernels: each mask form, past/present
state (GPT-style decoding steps), keys and values already split into heads, what is declined."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.ops.microsoft._testing import check_decomposition, declined, ms_model, rand

B, S, HIDDEN, HEADS = 2, 6, 16, 4

#: mask form -> (ONNX type, value)
MASKS = {
    "lengths": ("int32[2]", np.array([4, 6], np.int32)),
    "end_start": ("int32[4]", np.array([5, 6, 1, 2], np.int32)),
    "raw_2d": ("int32[2,6]", np.array([[1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], np.int32)),
    "raw_3d": ("int32[2,6,6]", np.tril(np.ones((S, S), np.int32))[None].repeat(B, 0)),
}


@pytest.mark.parametrize("mask", [None, *MASKS])
def test_attention_masks(mask):
    mask_type, mask_value = MASKS.get(mask, (None, None))
    inputs = "float[2,6,16] x" + (f", {mask_type} m" if mask else "")
    model = ms_model(f"y = com.microsoft.Attention <num_heads = {HEADS}> (x, w, b, "
                     f"{'m' if mask else chr(34) * 2})", inputs, "float[2,6,16] y",
                     w=rand(HIDDEN, 3 * HIDDEN, seed=1, scale=0.5), b=rand(3 * HIDDEN, seed=2))
    feeds = {"x": rand(B, S, HIDDEN)} | ({"m": mask_value} if mask else {})
    check_decomposition(model, feeds, "decompose_attention", atol=1e-5, rtol=1e-4)


def test_attention_causal_bias_scale_and_sizes():
    # q/k of width 16, v of width 8; unidirectional; an additive attention bias; a custom scale
    model = ms_model(
        "y = com.microsoft.Attention <num_heads = 2, qkv_hidden_sizes = [16, 16, 8], "
        "unidirectional = 1, scale = 0.3, mask_filter_value = -1000.0> (x, w, b, m, \"\", ab)",
        "float[2,6,12] x, int32[2,6] m, float[1,2,6,6] ab", "float[2,6,8] y",
        w=rand(12, 40, seed=1, scale=0.5), b=rand(40, seed=2))
    feeds = {"x": rand(B, S, 12), "m": MASKS["raw_2d"][1], "ab": rand(1, 2, S, S, seed=3)}
    check_decomposition(model, feeds, "decompose_attention", atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("steps, mask", [(1, None), (1, "raw_2d"), (3, "lengths")])
def test_attention_with_past_state(steps, mask):
    # a unidirectional decoder's step: `steps` new tokens after 4 cached ones
    past_len, total = 4, 4 + steps
    masks = {"raw_2d": ("int32[2,{t}]", np.array([[1] * total, [0] + [1] * (total - 1)],
                                                  np.int32)),
             "lengths": ("int32[2]", np.array([total, total - 1], np.int32))}
    mask_type, mask_value = masks.get(mask, (None, None))
    inputs = f"float[2,{steps},16] x, float[2,2,4,{past_len},4] past" + (
        f", {mask_type.format(t=total)} m" if mask else "")
    model = ms_model(f"y, present = com.microsoft.Attention <num_heads = 4, unidirectional = 1> "
                     f"(x, w, b, {'m' if mask else chr(34) * 2}, past)", inputs,
                     f"float[2,{steps},16] y, float[2,2,4,{total},4] present",
                     w=rand(16, 48, seed=1, scale=0.5), b=rand(48, seed=2))
    feeds = {"x": rand(2, steps, 16), "past": rand(2, 2, 4, past_len, 4, seed=3)} | (
        {"m": mask_value} if mask else {})
    check_decomposition(model, feeds, "decompose_attention", atol=1e-5, rtol=1e-4)


def test_attention_present_without_past():
    model = ms_model("y, present = com.microsoft.Attention <num_heads = 4, unidirectional = 1> "
                     "(x, w, b)", "float[2,6,16] x", "float[2,6,16] y, float[2,2,4,6,4] present",
                     w=rand(16, 48, seed=1, scale=0.5), b=rand(48, seed=2))
    check_decomposition(model, {"x": rand(B, S, HIDDEN)}, "decompose_attention", atol=1e-5,
                        rtol=1e-4)


def test_attention_4d_mask_is_declined():
    model = ms_model("y = com.microsoft.Attention <num_heads = 4> (x, w, b, m)",
                     "float[2,6,16] x, int32[2,1,8,8] m", "float[2,6,16] y",
                     w=rand(16, 48, seed=1), b=rand(48, seed=2))
    assert "4-D" in declined(model, "decompose_attention")


@pytest.mark.parametrize("mask", [None, "lengths", "raw_2d"])
def test_multi_head_attention(mask):
    mask_type, mask_value = MASKS.get(mask, (None, None))
    inputs = "float[2,6,16] q, float[2,6,16] k, float[2,6,16] v" + (
        f", {mask_type} m" if mask else "")
    model = ms_model(f"y = com.microsoft.MultiHeadAttention <num_heads = {HEADS}> "
                     f"(q, k, v, bias{', m' if mask else ''})", inputs, "float[2,6,16] y",
                     bias=rand(3 * HIDDEN, seed=2))
    feeds = {"q": rand(B, S, HIDDEN), "k": rand(B, S, HIDDEN, seed=3),
             "v": rand(B, S, HIDDEN, seed=4)} | ({"m": mask_value} if mask else {})
    check_decomposition(model, feeds, "decompose_multi_head_attention", atol=1e-5, rtol=1e-4)


def test_multi_head_cross_attention_without_bias():
    model = ms_model("y = com.microsoft.MultiHeadAttention <num_heads = 2> (q, k, v)",
                     "float[1,3,8] q, float[1,5,8] k, float[1,5,8] v", "float[1,3,8] y")
    feeds = {"q": rand(1, 3, 8), "k": rand(1, 5, 8, seed=1), "v": rand(1, 5, 8, seed=2)}
    check_decomposition(model, feeds, "decompose_multi_head_attention", atol=1e-5, rtol=1e-4)


def test_packed_multi_head_attention_is_declined():
    model = ms_model("y = com.microsoft.MultiHeadAttention <num_heads = 2> (qkv)",
                     "float[1,3,2,3,4] qkv", "float[1,3,8] y")
    assert "packed" in declined(model, "decompose_multi_head_attention")


@pytest.mark.parametrize("causal", [0, 1])
def test_multi_head_attention_with_past_state(causal):
    model = ms_model(
        f"y, present_k, present_v = com.microsoft.MultiHeadAttention <num_heads = {HEADS}, "
        f"unidirectional = {causal}> (q, k, v, bias, \"\", \"\", past_k, past_v)",
        "float[2,2,16] q, float[2,2,16] k, float[2,2,16] v, float[2,4,5,4] past_k, "
        "float[2,4,5,4] past_v",
        "float[2,2,16] y, float[2,4,7,4] present_k, float[2,4,7,4] present_v",
        bias=rand(3 * HIDDEN, seed=2))
    feeds = {"q": rand(B, 2, HIDDEN), "k": rand(B, 2, HIDDEN, seed=3),
             "v": rand(B, 2, HIDDEN, seed=4), "past_k": rand(B, HEADS, 5, 4, seed=5),
             "past_v": rand(B, HEADS, 5, 4, seed=6)}
    check_decomposition(model, feeds, "decompose_multi_head_attention", atol=1e-5, rtol=1e-4)


def test_multi_head_cross_attention_over_keys_in_heads():
    # a decoder's cross attention over the encoder's keys and values, cached split into heads
    model = ms_model("y = com.microsoft.MultiHeadAttention <num_heads = 2> (q, k, v, \"\", m)",
                     "float[2,3,8] q, float[2,2,5,4] k, float[2,2,5,4] v, int32[2,5] m",
                     "float[2,3,8] y")
    feeds = {"q": rand(2, 3, 8), "k": rand(2, 2, 5, 4, seed=1), "v": rand(2, 2, 5, 4, seed=2),
             "m": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)}
    check_decomposition(model, feeds, "decompose_multi_head_attention", atol=1e-5, rtol=1e-4)
