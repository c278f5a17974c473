"""com.microsoft ``GroupQueryAttention`` (LLM decoders' attention with a KV cache), decomposed.

``GroupQueryAttention(query, key?, value?, past_key?, past_value?, seqlens_k,
total_sequence_length, cos_cache?, sin_cache?, position_ids?, ...)`` with ``N = num_heads`` query
heads sharing ``Nk = kv_num_heads`` key/value heads (query head ``n`` reads kv head ``n // (N /
Nk)``), head size ``h``:

* ``query`` ``[B, S, N·h]`` and ``key``/``value`` ``[B, S, Nk·h]``, or a packed ``query``
  ``[B, S, (N + 2·Nk)·h]`` without key and value;
* ``past_key``/``past_value`` ``[B, Nk, P, h]``; ``seqlens_k`` ``[B]`` = ``T_b - 1``, the number of
  tokens of batch entry ``b`` after this step, minus one. The step's tokens sit at positions
  ``P_b .. P_b + S - 1``, ``P_b = T_b - min(S, T_b)``;
* ``do_rotary``: queries and keys are rotated first (:func:`.rotary.rotate`, caches
  ``[max positions, R/2]``, ``rotary_interleaved``) at positions ``P_b + s``.

The cache grows by the step: ``present_key[b, :, t] = past_key[b, :, t]`` for ``t < P_b``, the new
key ``t - P_b`` for ``P_b <= t < T_b`` (rows past ``T_b`` are unspecified, as onnxruntime defines
them; zeros, as onnxruntime's CPU kernel writes), ``[B, Nk, P + S, h]``. Query ``s`` attends to keys ``t <= P_b + s`` (``causal = 1``; else
``t < T_b``) with ``softmax(scale · q·k)``, ``scale`` default ``1/√h``.

Not supported (the node stays, with the reason): a present cache that does not grow by the step
(past/present buffer sharing, sliding windows: ``total_sequence_length`` a constant other than
``P + S``, ``sliding_window_cache``, ``local_window_size``), quantized caches, ``softcap``,
``smooth_softmax`` and ``head_sink``, ``attention_bias``, ``position_ids``, per-head Q/K norms,
``query_seqlens``, the ``output_qk`` output; a past cache on a node without present outputs (what
onnxruntime computes then is undefined).
"""

from __future__ import annotations

import math

import numpy as np
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
from mmopt.ops.microsoft.rotary import rotate

DOMAIN = "com.microsoft"

#: inputs that select features this decomposition does not implement, by index
_UNSUPPORTED_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink", 12: "k_scale", 13: "v_scale",
                       14: "q_norm_weight", 15: "k_norm_weight", 16: "query_seqlens"}


def _width(value: ir.Value | None) -> int | None:
    shape = None if value is None else value.shape
    if shape is None or len(shape) != 3 or not isinstance(shape[-1], int):
        return None
    return shape[-1]


class DecomposeGroupQueryAttention(Decomposition):
    name = "decompose_group_query_attention"
    domain = DOMAIN
    op_types = ("GroupQueryAttention",)

    @staticmethod
    def _head_size(node) -> int | None:
        heads, kv_heads = int(attr(node, "num_heads", 0)), int(attr(node, "kv_num_heads", 0))
        width = _width(node.inputs[0])
        if width is None or heads <= 0 or kv_heads <= 0:
            return None
        packed = present(node, 1) is None
        total = heads + 2 * kv_heads if packed else heads
        return width // total if width % total == 0 else None

    def check(self, node, ctx):
        for index, what in _UNSUPPORTED_INPUTS.items():
            if present(node, index) is not None:
                return f"{what} is not supported"
        if len(node.outputs) > 3 and used(node.outputs[3]):
            return "the output_qk output is not supported"
        for name, default in (("softcap", 0.0), ("smooth_softmax", 0), ("sliding_window_cache", 0),
                              ("qk_output", 0)):
            if attr(node, name, default) not in (default, None):
                return f"{name} is not supported"
        if int(attr(node, "local_window_size", -1)) != -1:
            return "local (sliding window) attention is not supported"
        if int(attr(node, "kv_cache_bit_width", 0)) or any(
                (attr(node, q, "NONE") or "NONE") not in ("NONE", b"NONE")
                for q in ("k_quant_type", "v_quant_type")):
            return "quantized KV caches are not supported"
        heads, kv_heads = int(attr(node, "num_heads", 0)), int(attr(node, "kv_num_heads", 0))
        if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
            return f"{heads} query heads do not share {kv_heads} key/value heads evenly"
        h = self._head_size(node)
        if h is None:
            return "the query's width is unknown or does not split into heads"
        key, value = present(node, 1), present(node, 2)
        if (key is None) != (value is None):
            return "key and value must be given together"
        if key is not None and any(_width(t) != kv_heads * h for t in (key, value)):
            return f"key and value are not known to be [batch, sequence, {kv_heads * h}]"
        past_key, past_value = present(node, 3), present(node, 4)
        if (past_key is None) != (past_value is None):
            return "past_key and past_value must be given together"
        if past_key is not None and (len(node.outputs) < 3 or any(
                o is None or not o.name for o in node.outputs[1:3])):
            return ("a past cache without present_key/present_value outputs (onnxruntime's "
                    "kernel then reads no defined cache)")
        past = static_shape(past_key) if past_key is not None else (0, 0, 0, 0)
        if past is None or len(past) != 4:
            return "the past cache's shape is unknown"
        if past[3] != h or past[1] != kv_heads:
            return f"the past cache is not [batch, {kv_heads}, length, {h}]"
        steps = node.inputs[0].shape[1]
        total = const(present(node, 6))
        total = None if total is None else int(np.asarray(total).reshape(-1)[0])
        if total is not None and isinstance(steps, int) and total != past[2] + steps:
            return (f"total_sequence_length {total} is not past + new ({past[2]} + {steps}): "
                    "shared or windowed cache buffers are not supported")
        if attr(node, "do_rotary", 0):
            cos = static_shape(present(node, 7))
            if cos is None or present(node, 8) is None or len(cos) != 2:
                return "rotary embeddings need cos/sin caches of known shape"
            if 2 * cos[1] > h:
                return f"a rotated width of {2 * cos[1]} does not fit heads of {h}"
        return None

    def rewrite(self, node, tape, ctx):
        heads, kv_heads = int(attr(node, "num_heads")), int(attr(node, "kv_num_heads"))
        group = heads // kv_heads
        h = self._head_size(node)
        query, key, value = node.inputs[0], present(node, 1), present(node, 2)
        if key is None:  # packed: [q k v] along the features
            query, key, value = tape.op_multi_out(
                "Split", [query, ints(tape, [heads * h, kv_heads * h, kv_heads * h])],
                {"axis": -1}, num_outputs=3)
        i64 = ir.DataType.INT64
        steps = op(tape, "Shape", query, start=1, end=2)  # [1]: S
        total = op(tape, "Add", op(tape, "Cast", node.inputs[5], to=i64), ints(tape, 1))  # [B]
        past = op(tape, "Sub", total, op(tape, "Min", total, steps))  # [B]: P_b

        def split(x, n):  # [B, S, n·h] -> [B, S, n, h]
            return op(tape, "Reshape", x, ints(tape, [0, 0, n, h]))

        q, k = split(query, heads), split(key, kv_heads)
        if attr(node, "do_rotary", 0):
            s = op(tape, "Range", ints(tape, 0), op(tape, "Squeeze", steps, ints(tape, [0])),
                   ints(tape, 1))
            positions = op(tape, "Add", op(tape, "Unsqueeze", past, ints(tape, [1])),
                           op(tape, "Unsqueeze", s, ints(tape, [0])))  # [B, S]: P_b + s
            cos_cache, sin_cache = node.inputs[7], node.inputs[8]
            rotated = 2 * static_shape(cos_cache)[1]
            interleaved = bool(attr(node, "rotary_interleaved", 0))
            q = rotate(tape, q, positions, cos_cache, sin_cache, head_size=h, rotated=rotated,
                       interleaved=interleaved, head_axis=2)
            k = rotate(tape, k, positions, cos_cache, sin_cache, head_size=h, rotated=rotated,
                       interleaved=interleaved, head_axis=2)
        qh = op(tape, "Transpose", q, perm=[0, 2, 1, 3])  # [B, N, S, h]
        kh = op(tape, "Transpose", k, perm=[0, 2, 1, 3])  # [B, Nk, S, h]
        vh = op(tape, "Transpose", split(value, kv_heads), perm=[0, 2, 1, 3])
        past_key, past_value = present(node, 3), present(node, 4)
        past_length = 0 if past_key is None else static_shape(past_key)[2]
        keys, values = kh, vh
        if past_length:
            keys = self._grow(tape, past_key, kh, past, past_length)
            values = self._grow(tape, past_value, vh, past, past_length)
        # rows from T_b on are zeros (what onnxruntime's CPU kernel writes there)
        rows = op(tape, "Range", ints(tape, 0), op(tape, "Squeeze", op(
            tape, "Shape", keys, start=2, end=3), ints(tape, [0])), ints(tape, 1))  # [T]
        valid = op(tape, "Unsqueeze", op(tape, "Less", op(tape, "Unsqueeze", rows, ints(
            tape, [0])), op(tape, "Unsqueeze", total, ints(tape, [1]))), ints(tape, [1, 3]))
        zero = constant_like(tape, 0.0, node.inputs[0])
        keys, values = (op(tape, "Where", valid, keys, zero),
                        op(tape, "Where", valid, values, zero))
        # attention: query s (absolute position P_b + s) sees keys t <= P_b + s (causal) or t < T_b
        length = op(tape, "Shape", keys, start=2, end=3)
        t = op(tape, "Range", ints(tape, 0), op(tape, "Squeeze", length, ints(tape, [0])),
               ints(tape, 1))  # [T]
        t = op(tape, "Unsqueeze", t, ints(tape, [0, 1, 2]))  # [1, 1, 1, T]
        if int(attr(node, "causal", 1)):
            s = op(tape, "Range", ints(tape, 0), op(tape, "Squeeze", steps, ints(tape, [0])),
                   ints(tape, 1))
            last = op(tape, "Add", op(tape, "Unsqueeze", past, ints(tape, [1])),
                      op(tape, "Unsqueeze", s, ints(tape, [0])))  # [B, S]
            allowed = op(tape, "LessOrEqual", t, op(tape, "Unsqueeze", last, ints(tape, [1, 3])))
        else:
            allowed = op(tape, "Less", t, op(tape, "Unsqueeze", total, ints(tape, [1, 2, 3])))
        if group > 1:  # kv head n // group for query head n
            shared = [1, 1, group, 1, 1]
            keys_n = op(tape, "Reshape", op(tape, "Expand", op(
                tape, "Unsqueeze", keys, ints(tape, [2])), ints(tape, shared)),
                ints(tape, [0, heads, -1, h]))
            values_n = op(tape, "Reshape", op(tape, "Expand", op(
                tape, "Unsqueeze", values, ints(tape, [2])), ints(tape, shared)),
                ints(tape, [0, heads, -1, h]))
        else:
            keys_n, values_n = keys, values
        scale = float(attr(node, "scale", 0.0) or 0.0) or 1.0 / math.sqrt(h)
        scores = op(tape, "Mul", op(tape, "MatMul", qh, op(tape, "Transpose", keys_n,
                                                          perm=[0, 1, 3, 2])),
                    constant_like(tape, scale, node.inputs[0]))
        lowest = constant_like(tape, float(np.finfo(np.float32).min), node.inputs[0])
        probs = op(tape, "Softmax", op(tape, "Where", allowed, scores, lowest), axis=-1)
        context = op(tape, "Transpose", op(tape, "MatMul", probs, values_n), perm=[0, 2, 1, 3])
        out = op(tape, "Reshape", context, ints(tape, [0, 0, -1]))
        return [out, keys, values, None][:len(node.outputs)]

    @staticmethod
    def _grow(tape, cache: ir.Value, new: ir.Value, past: ir.Value, past_length: int
              ) -> ir.Value:
        """``[B, Nk, P + S, h]``: the cache's rows below ``past[b]``, then the new rows."""
        steps = op(tape, "Shape", new, start=2, end=3)
        length = op(tape, "Add", steps, ints(tape, [past_length]))
        t = op(tape, "Range", ints(tape, 0), op(tape, "Squeeze", length, ints(tape, [0])),
               ints(tape, 1))  # [T]
        old = op(tape, "Gather", cache, op(tape, "Min", t, ints(tape, past_length - 1)), axis=2)
        start = op(tape, "Unsqueeze", past, ints(tape, [1]))  # [B, 1]
        offset = op(tape, "Sub", op(tape, "Unsqueeze", t, ints(tape, [0])), start)  # [B, T]
        index = op(tape, "Clip", offset, ints(tape, 0), op(tape, "Sub", op(
            tape, "Squeeze", steps, ints(tape, [0])), ints(tape, 1)))
        index = op(tape, "Unsqueeze", index, ints(tape, [1, 3]))  # [B, 1, T, 1]
        shape = op(tape, "Concat", op(tape, "Shape", new, start=0, end=2), op(
            tape, "Shape", index, start=2, end=3), op(tape, "Shape", new, start=3, end=4), axis=0)
        added = op(tape, "GatherElements", new, op(tape, "Expand", index, shape), axis=2)
        from_cache = op(tape, "Unsqueeze", op(tape, "Less", op(
            tape, "Unsqueeze", t, ints(tape, [0])), start), ints(tape, [1, 3]))  # [B, 1, T, 1]
        return op(tape, "Where", from_cache, old, added)


extend.register(DecomposeGroupQueryAttention())
