"""RotaryEmbedding against onnxruntime's kernel: 3-D and 4-D inputs, position ids or an offset,
halves or interleaved pairs, full or partial rotation."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.ops.microsoft._testing import check_decomposition, declined, ms_model, rand

B, S, N, H, MAX = 2, 5, 3, 8, 16


def _caches(rotated: int) -> dict[str, np.ndarray]:
    inverse = 1.0 / 10000 ** (np.arange(0, rotated, 2) / rotated)
    angles = np.arange(MAX)[:, None] * inverse[None]
    return {"cos": np.cos(angles).astype(np.float32), "sin": np.sin(angles).astype(np.float32)}


@pytest.mark.parametrize("layout, positions, interleaved, rotated", [
    ("3d", "ids", 0, H), ("3d", "offset", 1, H), ("4d", "ids", 1, H), ("4d", "offset", 0, 4),
    ("3d", "ids", 0, 4)])
def test_rotary_embedding(layout, positions, interleaved, rotated):
    shape = [B, S, N * H] if layout == "3d" else [B, N, S, H]
    pos_type = "int64[2,5]" if positions == "ids" else "int64[1]"
    attrs = [f"interleaved = {interleaved}"]
    if layout == "3d" or rotated != H:  # onnxruntime wants num_heads with a partial rotation
        attrs.append(f"num_heads = {N}")
    if rotated != H:
        attrs.append(f"rotary_embedding_dim = {rotated}")
    dims = ",".join(map(str, shape))
    model = ms_model(f"y = com.microsoft.RotaryEmbedding <{', '.join(attrs)}> (x, p, cos, sin)",
                     f"float[{dims}] x, {pos_type} p", f"float[{dims}] y", **_caches(rotated))
    rng = np.random.default_rng(0)
    p = (rng.integers(0, MAX, (B, S)) if positions == "ids" else np.array([3])).astype(np.int64)
    check_decomposition(model, {"x": rand(*shape), "p": p}, "decompose_rotary_embedding",
                        atol=1e-5, rtol=1e-5)


def test_packed_batching_is_declined():
    model = ms_model("y = com.microsoft.RotaryEmbedding <is_packed_batching = 1> (x, p, cos, sin)",
                     "float[2,3,5,8] x, int64[2,5] p", "float[2,3,5,8] y", **_caches(H))
    assert "packed" in declined(model, "decompose_rotary_embedding")
