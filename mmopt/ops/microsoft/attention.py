"""com.microsoft ``Attention`` and ``MultiHeadAttention`` (no past state), decomposed exactly.

onnxruntime's transformers optimizer writes them for BERT-style encoders. With ``N`` heads,
``q, k, v`` of shape ``[B, S, N·h]`` (``[B, L, N·h]`` for keys and values):

    scores = scale · Q Kᵀ + attention_bias + mask_bias        per head, [B, N, S, L]
    output = softmax(scores) V                                  heads merged back to [B, S, N·h_v]

``scale`` defaults to ``1/√h``. ``mask_bias`` is ``mask_filter_value`` (default -10000) where a
key is masked, 0 elsewhere; masks may be (as onnxruntime reads them):

* ``[B]``: key lengths -- key ``j`` of batch ``b`` is masked when ``j >= len[b]``;
* ``[2B]``: end positions then start positions -- masked when ``j >= end[b]`` or ``j < start[b]``;
* ``[B, L]`` or ``[B, S, L]``: raw masks -- masked where the mask is 0;

and ``unidirectional = 1`` adds ``mask_filter_value`` above the diagonal (``j > i``).

* ``Attention(input, weights, bias?, mask_index?, past?, attention_bias?, ...)``: ``[q k v] =
  input @ weights + bias`` split by ``qkv_hidden_sizes`` (equal thirds by default).
* ``MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?, ...)``:
  3-D query/key/value, ``bias`` = the q, k and v biases concatenated.

Not supported (the node stays, with the reason): past/present state, packed QKV or KV inputs,
4-D (Megatron) masks, rotary embeddings, the ``qk`` output.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from mmopt import extend
from mmopt.extend.rules import (
    Decomposition,
    attr,
    const,
    constant_like,
    ints,
    op,
    present,
    static_shape,
    used,
)

DOMAIN = "com.microsoft"


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    shape = static_shape(value)
    if shape is not None:
        return len(shape)
    return None if value.shape is None else len(value.shape)


def _batch(node: ir.Node) -> int | None:
    shape = node.inputs[0].shape
    return shape[0] if shape is not None and len(shape) and isinstance(shape[0], int) else None


def _mask_check(node: ir.Node, mask: ir.Value | None) -> str | None:
    if mask is None:
        return None
    rank = _rank(mask)
    if rank is None:
        return "the mask's rank is unknown"
    if rank not in (1, 2, 3):
        return f"{rank}-D masks are not supported"
    if rank == 1:
        batch, length = _batch(node), static_shape(mask)
        if batch is None or length is None or length[0] not in (batch, 2 * batch):
            return "a 1-D mask needs static [batch] or [2 * batch] shapes"
    return None


def _heads(tape, x: ir.Value, heads: int, perm: list[int]) -> ir.Value:
    """``[B, S, N·h]`` -> ``[B, S, N, h]`` -> transposed by ``perm``."""
    split = op(tape, "Reshape", x, ints(tape, [0, 0, heads, -1]))
    return op(tape, "Transpose", split, perm=perm)


def _positions(tape, value: ir.Value, axis: int) -> ir.Value:
    """``0, 1, ..., value.shape[axis] - 1`` (int64)."""
    size = op(tape, "Shape", value, start=axis, end=axis + 1)
    end = op(tape, "Squeeze", size, ints(tape, [0]))
    return op(tape, "Range", ints(tape, 0), end, ints(tape, 1))


def _mask_bias(tape, mask: ir.Value | None, keys: ir.Value, queries: ir.Value, causal: bool,
               filter_value: float, like: ir.Value, batch: int | None) -> ir.Value | None:
    """The additive mask ``[B or 1, 1, S or 1, L]`` (see the module docstring) in ``like``'s type,
    or None."""
    fill = constant_like(tape, filter_value, like)
    zero = constant_like(tape, 0.0, like)
    bias = None
    if mask is not None:
        rank = _rank(mask)
        if rank == 1:
            j = op(tape, "Unsqueeze", _positions(tape, keys, 1), ints(tape, [0]))  # [1, L]
            bounds = op(tape, "Cast", mask, to=ir.DataType.INT64)
            end = op(tape, "Unsqueeze", op(tape, "Slice", bounds, ints(tape, [0]),
                                           ints(tape, [batch])), ints(tape, [1]))  # [B, 1]
            masked = op(tape, "GreaterOrEqual", j, end)
            if static_shape(mask)[0] == 2 * batch:  # end positions, then start positions
                start = op(tape, "Unsqueeze", op(tape, "Slice", bounds, ints(tape, [batch]),
                                                 ints(tape, [2 * batch])), ints(tape, [1]))
                masked = op(tape, "Or", masked, op(tape, "Less", j, start))
            bias = op(tape, "Where", masked, fill, zero)
            bias = op(tape, "Unsqueeze", bias, ints(tape, [1, 2]))  # [B, 1, 1, L]
        else:
            keep = op(tape, "Greater", mask, constant_like(tape, 0, mask))
            bias = op(tape, "Where", keep, zero, fill)
            bias = op(tape, "Unsqueeze", bias, ints(tape, [1, 2] if rank == 2 else [1]))
    if causal:
        i = op(tape, "Unsqueeze", _positions(tape, queries, 1), ints(tape, [1]))  # [S, 1]
        j = op(tape, "Unsqueeze", _positions(tape, keys, 1), ints(tape, [0]))  # [1, L]
        upper = op(tape, "Where", op(tape, "Greater", j, i), fill, zero)  # [S, L]
        bias = upper if bias is None else op(tape, "Add", bias, upper)
    return bias


def _attend(tape, q, k, v, *, heads: int, head_size: int, scale: float | None,
            mask: ir.Value | None, attention_bias: ir.Value | None, causal: bool,
            filter_value: float, like: ir.Value, batch: int | None) -> ir.Value:
    """Multi-head attention of 3-D ``q``/``k``/``v`` (see the module docstring); constants in
    ``like``'s type."""
    qh = _heads(tape, q, heads, [0, 2, 1, 3])  # [B, N, S, h]
    kh = _heads(tape, k, heads, [0, 2, 3, 1])  # [B, N, h, L]
    vh = _heads(tape, v, heads, [0, 2, 1, 3])  # [B, N, L, hv]
    scores = op(tape, "MatMul", qh, kh)
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    scores = op(tape, "Mul", scores, constant_like(tape, scale, like))
    if attention_bias is not None:
        scores = op(tape, "Add", scores, attention_bias)
    bias = _mask_bias(tape, mask, k, q, causal, filter_value, like, batch)
    if bias is not None:
        scores = op(tape, "Add", scores, bias)
    probs = op(tape, "Softmax", scores, axis=-1)
    context = op(tape, "Transpose", op(tape, "MatMul", probs, vh), perm=[0, 2, 1, 3])
    return op(tape, "Reshape", context, ints(tape, [0, 0, -1]))


def _scale(node) -> float | None:
    scale = attr(node, "scale", 0.0)
    return float(scale) if scale else None


class DecomposeAttention(Decomposition):
    name = "decompose_attention"
    domain = DOMAIN
    op_types = ("Attention",)

    def _sizes(self, node) -> list[int] | None:
        sizes = attr(node, "qkv_hidden_sizes", None)
        if sizes:
            return [int(s) for s in sizes]
        shape = static_shape(node.inputs[1])
        return None if shape is None or shape[-1] % 3 else [shape[-1] // 3] * 3

    def check(self, node, ctx):
        if present(node, 4) is not None or (len(node.outputs) > 1 and used(node.outputs[1])):
            return "past/present state is not supported"
        if present(node, 6) is not None:
            return "past_sequence_length is not supported"
        if attr(node, "do_rotary", 0):
            return "rotary embeddings (do_rotary) are not supported"
        sizes = self._sizes(node)
        heads = int(attr(node, "num_heads", 0))
        if sizes is None:
            return "the weights' shape is unknown"
        if heads <= 0 or any(s % heads for s in sizes) or sizes[0] != sizes[1]:
            return f"qkv sizes {sizes} do not split into {heads} heads"
        return _mask_check(node, present(node, 3))

    def rewrite(self, node, tape, ctx):
        x, weights, bias = node.inputs[0], node.inputs[1], present(node, 2)
        sizes = self._sizes(node)
        heads = int(attr(node, "num_heads"))
        qkv = op(tape, "MatMul", x, weights)
        if bias is not None:
            qkv = op(tape, "Add", qkv, bias)
        q, k, v = tape.op_multi_out("Split", [qkv, ints(tape, sizes)], {"axis": -1},
                                    num_outputs=3)
        out = _attend(tape, q, k, v, heads=heads, head_size=sizes[0] // heads,
                      scale=_scale(node), mask=present(node, 3), attention_bias=present(node, 5),
                      causal=bool(attr(node, "unidirectional", 0)),
                      filter_value=float(attr(node, "mask_filter_value", -10000.0)),
                      like=node.inputs[0], batch=_batch(node))
        return [out, None][:len(node.outputs)]


class DecomposeMultiHeadAttention(Decomposition):
    name = "decompose_multi_head_attention"
    domain = DOMAIN
    op_types = ("MultiHeadAttention",)

    def check(self, node, ctx):
        if any(present(node, i) is not None for i in (6, 7, 8, 9)) or any(
                used(v) for v in node.outputs[1:]):
            return "past/present state, cache indirection and the qk output are not supported"
        q, k, v = node.inputs[0], present(node, 1), present(node, 2)
        if k is None or v is None:
            return "packed QKV/KV inputs are not supported"
        if any(_rank(t) != 3 for t in (k, v)):
            return "key and value are not known to be 3-D (4-D and packed forms are not supported)"
        heads = int(attr(node, "num_heads", 0))
        d = self._width(node)
        if d is None:
            return "the query's width is unknown"
        if heads <= 0 or d % heads:
            return f"the query's width {d} does not split into {heads} heads"
        return _mask_check(node, present(node, 4))

    @staticmethod
    def _width(node) -> int | None:
        """The query's (and key's) hidden size: its last dim, else a third of a constant bias."""
        shape = node.inputs[0].shape
        if shape is not None and len(shape) and isinstance(shape[-1], int):
            return shape[-1]
        bias = const(present(node, 3))
        return None if bias is None or bias.shape[0] % 3 else bias.shape[0] // 3

    def rewrite(self, node, tape, ctx):
        q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
        bias = present(node, 3)
        heads = int(attr(node, "num_heads"))
        d = self._width(node)
        if bias is not None:
            dv = static_shape(bias)[0] - 2 * d
            qb, kb, vb = tape.op_multi_out("Split", [bias, ints(tape, [d, d, dv])], {"axis": 0},
                                           num_outputs=3)
            q, k, v = op(tape, "Add", q, qb), op(tape, "Add", k, kb), op(tape, "Add", v, vb)
        out = _attend(tape, q, k, v, heads=heads, head_size=d // heads, scale=_scale(node),
                      mask=present(node, 4), attention_bias=present(node, 5),
                      causal=bool(attr(node, "unidirectional", 0)),
                      filter_value=float(attr(node, "mask_filter_value", -10000.0)),
                      like=node.inputs[0], batch=_batch(node))
        return [out] + [None] * (len(node.outputs) - 1)


extend.register(DecomposeAttention())
extend.register(DecomposeMultiHeadAttention())
