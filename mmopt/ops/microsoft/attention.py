"""com.microsoft ``Attention`` and ``MultiHeadAttention``, past/present state included, decomposed.

onnxruntime's transformers optimizer writes them for BERT-style encoders and GPT-style decoders.
With ``N`` heads, ``q, k, v`` of shape ``[B, S, N·h]`` (``[B, L, N·h]`` for keys and values):

    K = concat(past_key, k), V = concat(past_value, v)        per head, [B, N, T, h], T = P + L
    scores = scale · Q Kᵀ + attention_bias + mask_bias        per head, [B, N, S, T]
    output = softmax(scores) V                                  heads merged back to [B, S, N·h_v]

``scale`` defaults to ``1/√h``. ``mask_bias`` is ``mask_filter_value`` (default -10000) where a
key is masked, 0 elsewhere; masks may be (as onnxruntime reads them):

* ``[B]``: key lengths -- key ``j`` of batch ``b`` is masked when ``j >= len[b]``;
* ``[2B]``: end positions then start positions -- masked when ``j >= end[b]`` or ``j < start[b]``;
* ``[B, T]`` or ``[B, S, T]``: raw masks -- masked where the mask is 0;

and ``unidirectional = 1`` adds ``mask_filter_value`` where ``j > P + i`` (a query sees the past and
the keys up to its own position).

* ``Attention(input, weights, bias?, mask_index?, past?, attention_bias?, ...)``: ``[q k v] =
  input @ weights + bias`` split by ``qkv_hidden_sizes`` (equal thirds by default); ``past`` is
  ``[2, B, N, P, h]`` (keys then values), output 1 ``present`` = ``[2, B, N, T, h]``.
* ``MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?, past_key?,
  past_value?, ...)``: 3-D query; key and value 3-D (projected, ``bias`` = the q, k and v biases
  concatenated) or 4-D ``[B, N, L, h]`` (already split into heads: cross attention over cached
  keys and values, no k/v bias); ``past_key``/``past_value`` ``[B, N, P, h]``, outputs 1 and 2
  ``present_key``/``present_value`` ``[B, N, T, h]``.

Not supported (the node stays, with the reason): packed QKV/KV inputs, 4-D (Megatron) masks and
``[3B + 2]`` mask indices (onnxruntime's CPU kernels do not implement them either, so there is
nothing to verify a decomposition against), shared past/present buffers
(``past_present_share_buffer``, ``past_sequence_length``), cache indirection, rotary embeddings
inside Attention (``do_rotary``; the separate ``RotaryEmbedding`` op is supported, see
:mod:`.rotary`), the ``qk`` output.
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
    if rank == 4:
        return ("4-D (Megatron) masks are not supported (onnxruntime's CPU kernel has none to "
                "verify against)")
    if rank not in (1, 2, 3):
        return f"{rank}-D masks are not supported"
    if rank == 1:
        batch, length = _batch(node), static_shape(mask)
        if batch is None or length is None:
            return "a 1-D mask needs static [batch] or [2 * batch] shapes"
        if length[0] not in (batch, 2 * batch):
            return f"a 1-D mask of {length[0]} entries for batch {batch} is not supported"
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


def _mask_bias(tape, mask: ir.Value | None, scores: ir.Value, causal: bool,
               past_length: ir.Value | None, filter_value: float, like: ir.Value,
               batch: int | None) -> ir.Value | None:
    """The additive mask ``[B or 1, 1, S or 1, T]`` (see the module docstring) for ``scores``
    ``[B, N, S, T]``, in ``like``'s type, or None. ``past_length``: ``[1]`` int64, P."""
    fill = constant_like(tape, filter_value, like)
    zero = constant_like(tape, 0.0, like)
    bias = None
    if mask is not None:
        rank = _rank(mask)
        if rank == 1:
            j = op(tape, "Unsqueeze", _positions(tape, scores, 3), ints(tape, [0]))  # [1, T]
            bounds = op(tape, "Cast", mask, to=ir.DataType.INT64)
            end = op(tape, "Unsqueeze", op(tape, "Slice", bounds, ints(tape, [0]),
                                           ints(tape, [batch])), ints(tape, [1]))  # [B, 1]
            masked = op(tape, "GreaterOrEqual", j, end)
            if static_shape(mask)[0] == 2 * batch:  # end positions, then start positions
                start = op(tape, "Unsqueeze", op(tape, "Slice", bounds, ints(tape, [batch]),
                                                 ints(tape, [2 * batch])), ints(tape, [1]))
                masked = op(tape, "Or", masked, op(tape, "Less", j, start))
            bias = op(tape, "Where", masked, fill, zero)
            bias = op(tape, "Unsqueeze", bias, ints(tape, [1, 2]))  # [B, 1, 1, T]
        else:
            keep = op(tape, "Greater", mask, constant_like(tape, 0, mask))
            bias = op(tape, "Where", keep, zero, fill)
            bias = op(tape, "Unsqueeze", bias, ints(tape, [1, 2] if rank == 2 else [1]))
    if causal:
        i = _positions(tape, scores, 2)
        if past_length is not None:
            i = op(tape, "Add", i, past_length)
        i = op(tape, "Unsqueeze", i, ints(tape, [1]))  # [S, 1]
        j = op(tape, "Unsqueeze", _positions(tape, scores, 3), ints(tape, [0]))  # [1, T]
        upper = op(tape, "Where", op(tape, "Greater", j, i), fill, zero)  # [S, T]
        bias = upper if bias is None else op(tape, "Add", bias, upper)
    return bias


def _attend(tape, q, k, v, *, heads: int, head_size: int, scale: float | None,
            mask: ir.Value | None, attention_bias: ir.Value | None, causal: bool,
            filter_value: float, like: ir.Value, batch: int | None,
            past_key: ir.Value | None = None, past_value: ir.Value | None = None,
            kv_in_heads: bool = False, want_kv: bool = False
            ) -> tuple[ir.Value, ir.Value | None, ir.Value | None]:
    """Multi-head attention of 3-D ``q`` and 3-D (or with ``kv_in_heads`` ``[B, N, L, h]``)
    ``k``/``v`` after ``past_key``/``past_value`` ``[B, N, P, h]`` (see the module docstring);
    constants in ``like``'s type. Returns the output and, when asked (``want_kv``) or with a
    past, the keys and values of every position, ``[B, N, T, h]``."""
    qh = _heads(tape, q, heads, [0, 2, 1, 3])  # [B, N, S, h]
    split = kv_in_heads or past_key is not None or want_kv
    if not split:
        kt = _heads(tape, k, heads, [0, 2, 3, 1])  # [B, N, h, L]
        kh = None
        vh = _heads(tape, v, heads, [0, 2, 1, 3])  # [B, N, L, hv]
    else:
        kh = k if kv_in_heads else _heads(tape, k, heads, [0, 2, 1, 3])  # [B, N, L, h]
        vh = v if kv_in_heads else _heads(tape, v, heads, [0, 2, 1, 3])
        if past_key is not None:
            kh = op(tape, "Concat", past_key, kh, axis=2)  # [B, N, T, h]
            vh = op(tape, "Concat", past_value, vh, axis=2)
        kt = op(tape, "Transpose", kh, perm=[0, 1, 3, 2])
    scores = op(tape, "MatMul", qh, kt)
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    scores = op(tape, "Mul", scores, constant_like(tape, scale, like))
    if attention_bias is not None:
        scores = op(tape, "Add", scores, attention_bias)
    past_length = (None if past_key is None
                   else op(tape, "Shape", past_key, start=2, end=3))
    bias = _mask_bias(tape, mask, scores, causal, past_length, filter_value, like, batch)
    if bias is not None:
        scores = op(tape, "Add", scores, bias)
    probs = op(tape, "Softmax", scores, axis=-1)
    context = op(tape, "Transpose", op(tape, "MatMul", probs, vh), perm=[0, 2, 1, 3])
    return op(tape, "Reshape", context, ints(tape, [0, 0, -1])), kh, vh


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
        if attr(node, "past_present_share_buffer", 0) or present(node, 6) is not None:
            return "shared past/present buffers (past_sequence_length) are not supported"
        if attr(node, "do_rotary", 0):
            return "rotary embeddings (do_rotary) are not supported"
        sizes = self._sizes(node)
        heads = int(attr(node, "num_heads", 0))
        if sizes is None:
            return "the weights' shape is unknown"
        if heads <= 0 or any(s % heads for s in sizes) or sizes[0] != sizes[1]:
            return f"qkv sizes {sizes} do not split into {heads} heads"
        if present(node, 4) is not None:
            if len(set(sizes)) != 1:
                return f"past state with unequal q/k/v sizes {sizes}"
            if _rank(node.inputs[4]) not in (None, 5):
                return "past is not [2, batch, heads, past length, head size]"
        return _mask_check(node, present(node, 3))

    def rewrite(self, node, tape, ctx):
        x, weights, bias = node.inputs[0], node.inputs[1], present(node, 2)
        past = present(node, 4)
        sizes = self._sizes(node)
        heads = int(attr(node, "num_heads"))
        qkv = op(tape, "MatMul", x, weights)
        if bias is not None:
            qkv = op(tape, "Add", qkv, bias)
        q, k, v = tape.op_multi_out("Split", [qkv, ints(tape, sizes)], {"axis": -1},
                                    num_outputs=3)
        past_key = past_value = None
        if past is not None:
            past_key = op(tape, "Gather", past, ints(tape, 0), axis=0)  # [B, N, P, h]
            past_value = op(tape, "Gather", past, ints(tape, 1), axis=0)
        want_present = len(node.outputs) > 1 and used(node.outputs[1])
        out, keys, values = _attend(
            tape, q, k, v, heads=heads, head_size=sizes[0] // heads, scale=_scale(node),
            mask=present(node, 3), attention_bias=present(node, 5),
            causal=bool(attr(node, "unidirectional", 0)),
            filter_value=float(attr(node, "mask_filter_value", -10000.0)),
            like=node.inputs[0], batch=_batch(node), past_key=past_key, past_value=past_value,
            want_kv=want_present)
        present_state = None
        if want_present:
            present_state = op(tape, "Concat", op(tape, "Unsqueeze", keys, ints(tape, [0])),
                               op(tape, "Unsqueeze", values, ints(tape, [0])), axis=0)
        return [out, present_state][:len(node.outputs)]


class DecomposeMultiHeadAttention(Decomposition):
    name = "decompose_multi_head_attention"
    domain = DOMAIN
    op_types = ("MultiHeadAttention",)

    def check(self, node, ctx):
        if any(present(node, i) is not None for i in (8, 9)):
            return "past_sequence_length and cache indirection are not supported"
        if len(node.outputs) > 3 and used(node.outputs[3]):
            return "the qk output is not supported"
        q, k, v = node.inputs[0], present(node, 1), present(node, 2)
        if k is None or v is None:
            return ("packed QKV/KV inputs are not supported (onnxruntime's CPU kernel has none to "
                    "verify against)")
        past_key, past_value = present(node, 6), present(node, 7)
        if (past_key is None) != (past_value is None):
            return "past_key and past_value must be given together"
        ranks = {_rank(t) for t in (k, v)}
        if ranks == {4}:
            if present(node, 3) is not None:
                return "a bias with keys and values already split into heads is not supported"
            if past_key is not None:
                return "past state with keys and values already split into heads"
        elif ranks != {3}:
            return "key and value are not known to be both 3-D or both 4-D (packed KV?)"
        if _rank(q) != 3:
            return "the query is not known to be 3-D (packed QKV is not supported)"
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
        in_heads = _rank(k) == 4
        if bias is not None:
            dv = static_shape(bias)[0] - 2 * d
            qb, kb, vb = tape.op_multi_out("Split", [bias, ints(tape, [d, d, dv])], {"axis": 0},
                                           num_outputs=3)
            q, k, v = op(tape, "Add", q, qb), op(tape, "Add", k, kb), op(tape, "Add", v, vb)
        want_present = any(used(o) for o in node.outputs[1:3])
        out, keys, values = _attend(
            tape, q, k, v, heads=heads, head_size=d // heads, scale=_scale(node),
            mask=present(node, 4), attention_bias=present(node, 5),
            causal=bool(attr(node, "unidirectional", 0)),
            filter_value=float(attr(node, "mask_filter_value", -10000.0)),
            like=node.inputs[0], batch=_batch(node), past_key=present(node, 6),
            past_value=present(node, 7), kv_in_heads=in_heads, want_kv=want_present)
        presents = [keys, values] if want_present else [None, None]
        return ([out] + presents + [None])[:len(node.outputs)]


extend.register(DecomposeAttention())
extend.register(DecomposeMultiHeadAttention())
