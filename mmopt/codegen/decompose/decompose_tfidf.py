"""decompose_tfidf: TfIdfVectorizer over integer tokens as comparisons and sums.

The operator counts, for every pool n-gram ``g`` (length ``n`` within
``[min_gram_length, max_gram_length]``), the start positions ``i`` with ``x[i + j·d] = g[j]`` for
all ``j``, for every skip distance ``d = 1 .. max_skip_count + 1``; unigrams are counted once (they
do not depend on ``d``). With a static row length ``C`` each ``(n, d)`` pair is a fixed set of
``C − (n−1)·d`` windows, so the count is

    count[g] = Σ_d Σ_i Π_j [x[i + j·d] = g[j]]

written as ``n`` shifted ``Slice``s compared (``Equal``) against the pool's n-grams, ``And``-ed,
summed over the windows. Counts reach their output column through a one-hot matrix
(``ngram_indexes``); ``mode`` then gives ``TF`` = counts, ``IDF`` = ``weights`` where the count is
positive, ``TFIDF`` = ``weights · counts`` (weights default to 1). String pools are not compiled.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    op as _op,
    Context,
    Decomposition,
    attr,
    constant,
    dtype_of,
    ints,
    reduce,
    static_shape,
)

_INTEGER_TOKENS = {ir.DataType.INT32, ir.DataType.INT64}


def _pool(node: ir.Node) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``[(n, grams [P, n], ids [P])]`` for the pool's n-gram sizes within the length range; ``ids``
    number the pool's n-grams in order (over all sizes), as ``ngram_indexes`` does."""
    pool = np.asarray(attr(node, "pool_int64s", []), dtype=np.int64)
    starts = list(attr(node, "ngram_counts", []))
    lo, hi = attr(node, "min_gram_length"), attr(node, "max_gram_length")
    groups, next_id = [], 0
    for size, start in enumerate(starts, start=1):
        end = starts[size] if size < len(starts) else len(pool)
        count = (end - start) // size
        if count > 0 and lo <= size <= hi:
            groups.append((size, pool[start:end].reshape(count, size),
                           np.arange(next_id, next_id + count)))
        next_id += max(count, 0)
    return groups


class DecomposeTfIdf(Decomposition):
    name = "decompose_tfidf"
    op_types = ("TfIdfVectorizer",)

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if attr(node, "pool_strings", None):
            return "string tokens are not compiled"
        if dtype_of(node.inputs[0]) not in _INTEGER_TOKENS:
            return "the tokens are not int32/int64"
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) not in (1, 2):
            return "the input is not a static 1-D or 2-D tensor"
        return None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        x = node.inputs[0]
        length = static_shape(x)[-1]
        token_type = dtype_of(x).numpy()
        indexes = np.asarray(attr(node, "ngram_indexes"), dtype=np.int64)
        outputs = int(indexes.max()) + 1 if indexes.size else 0
        max_skip = attr(node, "max_skip_count", 0)
        partial = []  # (counts [.., P_n] float32, ids)
        for n, grams, ids in _pool(node):
            total = None
            for distance in (range(1, max_skip + 2) if n > 1 else [1]):
                windows = length - (n - 1) * distance
                if windows <= 0:
                    continue
                hit = None
                for j in range(n):
                    part = _op(tape, "Slice", x, ints(tape, [j * distance]),
                               ints(tape, [j * distance + windows]), ints(tape, [-1]))
                    same = _op(tape, "Equal", _op(tape, "Unsqueeze", part, ints(tape, [-1])),
                               constant(tape, grams[:, j].astype(token_type)))  # [.., W, P]
                    hit = same if hit is None else _op(tape, "And", hit, same)
                count = reduce(tape, "ReduceSum", _op(tape, "Cast", hit, to=ir.DataType.FLOAT),
                               [-2], ctx.opset, keepdims=0)
                total = count if total is None else _op(tape, "Add", total, count)
            if total is not None:
                partial.append((total, ids))
        batch = static_shape(x)[:-1]
        if not partial:
            return [constant(tape, np.zeros([*batch, outputs], np.float32))]
        counts = _op(tape, "Concat", *[t for t, _ in partial], axis=-1) if len(partial) > 1 \
            else partial[0][0]
        onehot = np.zeros((sum(len(i) for _, i in partial), outputs), np.float32)
        for row, pool_id in enumerate(np.concatenate([i for _, i in partial])):
            onehot[row, indexes[pool_id]] = 1.0
        y = _op(tape, "MatMul", counts, constant(tape, onehot))  # [.., outputs]
        mode = attr(node, "mode", "TF")
        weights = np.asarray(attr(node, "weights", None) or np.ones(outputs), np.float32)
        if mode == "IDF":
            zero = constant(tape, np.zeros((), np.float32))
            y = _op(tape, "Where", _op(tape, "Greater", y, zero), constant(tape, weights), zero)
        elif mode == "TFIDF":
            y = _op(tape, "Mul", y, constant(tape, weights))
        return [y]


RULES = (DecomposeTfIdf(),)
