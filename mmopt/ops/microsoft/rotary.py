"""com.microsoft ``RotaryEmbedding`` (rotary position embeddings, RoPE), decomposed exactly.

onnxruntime's transformers optimizer writes it for LLaMA-style attention (the ``rotate_half``
pattern ``x·cos + rotate_half(x)·sin`` with cos/sin read from caches by position).
``RotaryEmbedding(input, position_ids, cos_cache, sin_cache)``:

* ``input`` ``[B, S, N·h]`` (``num_heads`` = N, or 0: then ``h`` = the rotated width) or
  ``[B, N, S, h]``;
* ``position_ids`` ``[B, S]``, or ``[1]``: an offset, positions ``offset + 0..S-1``;
* ``cos_cache``/``sin_cache`` ``[max positions, R/2]``; ``R`` = ``rotary_embedding_dim`` (default
  ``h``): the first ``R`` features of each head are rotated, the others pass through.

With ``c, s`` the cache rows at a token's position and ``x1, x2`` the two halves of the rotated
features (``interleaved = 1``: the even and the odd features)::

    x1' = x1·c - x2·s,   x2' = x1·s + x2·c

Not supported (the node stays, with the reason): ``is_packed_batching``, ``scale`` other than 1.
"""

from __future__ import annotations

import onnx_ir as ir

from mmopt import extend
from mmopt.extend.rules import Decomposition, attr, ints, op, static_shape

DOMAIN = "com.microsoft"


def _rank(value: ir.Value) -> int | None:
    shape = static_shape(value)
    if shape is not None:
        return len(shape)
    return None if value.shape is None else len(value.shape)


class DecomposeRotaryEmbedding(Decomposition):
    name = "decompose_rotary_embedding"
    domain = DOMAIN
    op_types = ("RotaryEmbedding",)

    @staticmethod
    def _sizes(node) -> tuple[int, int] | None:
        """``(head size h, rotated width R)``, or None when a shape they need is unknown."""
        x, cos = node.inputs[0], node.inputs[2]
        half = static_shape(cos)
        if half is None or len(half) != 2:
            return None
        rotated = int(attr(node, "rotary_embedding_dim", 0)) or 2 * half[1]
        if _rank(x) == 4:
            h = x.shape[-1] if x.shape is not None else None
            return (h, rotated) if isinstance(h, int) else None
        heads = int(attr(node, "num_heads", 0))
        if not heads:
            return rotated, rotated
        width = x.shape[-1] if x.shape is not None else None
        return (width // heads, rotated) if isinstance(width, int) else None

    def check(self, node, ctx):
        if attr(node, "is_packed_batching", 0):
            return "packed batching is not supported"
        if float(attr(node, "scale", 1.0)) != 1.0:
            return "a scale other than 1 is not supported"
        rank = _rank(node.inputs[0])
        if rank not in (3, 4):
            return "the input is not known to be 3-D or 4-D"
        if _rank(node.inputs[1]) not in (1, 2):
            return "position_ids is not known to be [1] or [batch, sequence]"
        sizes = self._sizes(node)
        if sizes is None:
            return "the head size or the caches' width is unknown"
        h, rotated = sizes
        if rotated % 2 or rotated > h or 2 * static_shape(node.inputs[2])[1] != rotated:
            return f"a rotated width of {rotated} does not fit heads of {h} and the caches"
        width = node.inputs[0].shape[-1] if rank == 3 else None
        if rank == 3 and (not isinstance(width, int) or width % h):
            return f"the hidden size ({width}) is not known to split into heads of {h}"
        return None

    def rewrite(self, node, tape, ctx):
        x, positions, cos_cache, sin_cache = node.inputs[:4]
        h, rotated = self._sizes(node)
        rank = _rank(x)
        # heads: [B, S, N, h] (3-D input, cos/sin broadcast over axis 2) or [B, N, S, h] (axis 1)
        heads = op(tape, "Reshape", x, ints(tape, [0, 0, -1, h])) if rank == 3 else x
        head_axis, seq_axis = (2, 1) if rank == 3 else (1, 2)
        if _rank(positions) == 1:  # an offset: positions offset + 0..S-1, [1, S]
            length = op(tape, "Squeeze", op(tape, "Shape", heads, start=seq_axis,
                                            end=seq_axis + 1), ints(tape, [0]))
            steps = op(tape, "Range", ints(tape, 0), length, ints(tape, 1))
            offset = op(tape, "Cast", positions, to=ir.DataType.INT64)
            positions = op(tape, "Unsqueeze", op(tape, "Add", steps, offset), ints(tape, [0]))
        out = rotate(tape, heads, positions, cos_cache, sin_cache, head_size=h, rotated=rotated,
                     interleaved=bool(attr(node, "interleaved", 0)), head_axis=head_axis)
        if rank == 3:
            out = op(tape, "Reshape", out, ints(tape, [0, 0, -1]))
        return [out]


def rotate(tape, heads: ir.Value, positions: ir.Value, cos_cache: ir.Value, sin_cache: ir.Value,
           *, head_size: int, rotated: int, interleaved: bool, head_axis: int) -> ir.Value:
    """The rotation of the module docstring on ``heads`` (4-D, features last; ``head_axis`` 2 for
    ``[B, S, N, h]``, 1 for ``[B, N, S, h]``) at ``positions`` (``[B or 1, S]``)."""
    cos = op(tape, "Unsqueeze", op(tape, "Gather", cos_cache, positions),
             ints(tape, [head_axis]))  # [B, S, 1, R/2] or [B, 1, S, R/2]
    sin = op(tape, "Unsqueeze", op(tape, "Gather", sin_cache, positions),
             ints(tape, [head_axis]))
    partial = rotated < head_size
    part = (op(tape, "Slice", heads, ints(tape, [0]), ints(tape, [rotated]), ints(tape, [-1]))
            if partial else heads)
    if interleaved:
        pairs = op(tape, "Reshape", part, ints(tape, [0, 0, 0, rotated // 2, 2]))
        x1 = op(tape, "Gather", pairs, ints(tape, 0), axis=-1)
        x2 = op(tape, "Gather", pairs, ints(tape, 1), axis=-1)
    else:
        x1, x2 = tape.op_multi_out("Split", [part, ints(tape, [rotated // 2] * 2)],
                                   {"axis": -1}, num_outputs=2)
    first = op(tape, "Sub", op(tape, "Mul", x1, cos), op(tape, "Mul", x2, sin))
    second = op(tape, "Add", op(tape, "Mul", x1, sin), op(tape, "Mul", x2, cos))
    if interleaved:
        both = op(tape, "Concat", op(tape, "Unsqueeze", first, ints(tape, [-1])),
                  op(tape, "Unsqueeze", second, ints(tape, [-1])), axis=-1)
        out = op(tape, "Reshape", both, ints(tape, [0, 0, 0, rotated]))
    else:
        out = op(tape, "Concat", first, second, axis=-1)
    if partial:
        rest = op(tape, "Slice", heads, ints(tape, [rotated]), ints(tape, [head_size]),
                  ints(tape, [-1]))
        out = op(tape, "Concat", out, rest, axis=-1)
    return out


extend.register(DecomposeRotaryEmbedding())
