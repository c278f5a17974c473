"""GroupQueryAttention against onnxruntime's kernel: a prompt, decoding steps after a cache (ragged
batches too), packed QKV with rotary embeddings, and what is declined."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.ops.microsoft._testing import check_decomposition, declined, ms_model, rand

HEADS, KV_HEADS, H = 4, 2, 16  # onnxruntime rotates heads of multiples of 16 only


def _model(batch: int, steps: int, past: int, *, packed: bool = False, rotary: bool = False,
           presents: bool = True, extra: str = ""):
    q_width = HEADS * H + (2 * KV_HEADS * H if packed else 0)
    kv = "" if packed else f", float[{batch},{steps},{KV_HEADS * H}] k, " \
                           f"float[{batch},{steps},{KV_HEADS * H}] v"
    inputs = (f"float[{batch},{steps},{q_width}] q{kv}, "
              f"float[{batch},{KV_HEADS},{past},{H}] pk, float[{batch},{KV_HEADS},{past},{H}] pv, "
              f"int32[{batch}] seqlens")
    total = past + steps
    outputs = f"float[{batch},{steps},{HEADS * H}] y" + (
        f", float[{batch},{KV_HEADS},{total},{H}] ok, float[{batch},{KV_HEADS},{total},{H}] ov"
        if presents else "")
    args = ("q, \"\", \"\"" if packed else "q, k, v") + ", pk, pv, seqlens, total" + (
        ", cos, sin" if rotary else "")
    attrs = f"num_heads = {HEADS}, kv_num_heads = {KV_HEADS}" + (
        ", do_rotary = 1" if rotary else "") + extra
    inits = {"total": np.array(total, np.int32)}  # a scalar: the longest sequence after the step
    if rotary:
        angles = np.arange(32)[:, None] / 10000 ** (np.arange(0, H, 2) / H)[None]
        inits |= {"cos": np.cos(angles).astype(np.float32),
                  "sin": np.sin(angles).astype(np.float32)}
    y = "y, ok, ov" if presents else "y"
    return ms_model(f"{y} = com.microsoft.GroupQueryAttention <{attrs}> ({args})", inputs,
                    outputs, **inits)


def _feeds(batch, steps, past, seqlens, *, packed=False):
    q_width = HEADS * H + (2 * KV_HEADS * H if packed else 0)
    feeds = {"q": rand(batch, steps, q_width), "pk": rand(batch, KV_HEADS, past, H, seed=3),
             "pv": rand(batch, KV_HEADS, past, H, seed=4),
             "seqlens": np.array(seqlens, np.int32)}
    if not packed:
        feeds |= {"k": rand(batch, steps, KV_HEADS * H, seed=1),
                  "v": rand(batch, steps, KV_HEADS * H, seed=2)}
    return feeds


@pytest.mark.parametrize("batch, steps, past", [(2, 1, 4), (1, 3, 4), (2, 5, 0)])
def test_group_query_attention(batch, steps, past):
    model = _model(batch, steps, past)
    check_decomposition(model, _feeds(batch, steps, past, [past + steps - 1] * batch),
                        "decompose_group_query_attention", atol=1e-5, rtol=1e-4)


def test_group_query_attention_packed_with_rotary_embeddings():
    model = _model(1, 2, 3, packed=True, rotary=True)
    check_decomposition(model, _feeds(1, 2, 3, [4], packed=True),
                        "decompose_group_query_attention", atol=1e-5, rtol=1e-4)


def test_group_query_attention_ragged_batch():
    # a decoding step where the second sequence is two tokens shorter (its cache rows 2 and 3 are
    # stale); present rows past a sequence's end are zeros
    model = _model(2, 1, 4, rotary=True)
    check_decomposition(model, _feeds(2, 1, 4, [4, 2]), "decompose_group_query_attention",
                        atol=1e-5, rtol=1e-4)


def test_local_window_and_a_past_without_presents_are_declined():
    model = _model(2, 1, 4, extra=", local_window_size = 2")
    assert "window" in declined(model, "decompose_group_query_attention")
    assert "present" in declined(_model(2, 1, 4, presents=False),
                                 "decompose_group_query_attention")
