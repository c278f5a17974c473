"""decompose_tree_ensemble: ai.onnx.ml TreeEnsemble (opset 5) as comparisons, gathers and a MatMul.

A sample reaches exactly one leaf of each tree: the leaf whose root-to-leaf path agrees with every
test on it. With ``c[b, v]`` the outcome of node ``v``'s test on sample ``b`` (``x[feature] ≤ split``,
``<``, ``≥``, ``>``, ``=``, ``≠``, or membership in a set; NaN counts as true where
``nodes_missing_value_tracks_true`` says so), the indicator of path ``p`` is
``Π_{(v, taken) ∈ p} (c[b, v] if taken else 1 − c[b, v])``, computed for all paths at once with one
``Gather`` over a padded path table and a ``ReduceProd``. The ensemble's output is then
``indicators · L`` with ``L[p, t]`` the weight of path ``p``'s leaf for target ``t`` (``SUM``), divided by
the number of trees for ``AVERAGE``. ``MIN``/``MAX`` aggregation and post transforms other than
``NONE`` are not decomposed.
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

_SUM, _AVERAGE = 1, 0


def _array(node: ir.Node, name: str):
    a = node.attributes.get(name)
    if a is None:
        return None
    value = a.value
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _paths(node: ir.Node) -> list[tuple[list[tuple[int, bool]], int]]:
    """``[(path, leaf)]``: the (node, branch taken) pairs from each root to each leaf."""
    true_ids, false_ids = _array(node, "nodes_truenodeids"), _array(node, "nodes_falsenodeids")
    true_leaf, false_leaf = _array(node, "nodes_trueleafs"), _array(node, "nodes_falseleafs")
    paths = []

    def walk(index: int, path: list[tuple[int, bool]]) -> None:
        for taken, child, is_leaf in ((True, true_ids[index], true_leaf[index]),
                                      (False, false_ids[index], false_leaf[index])):
            if is_leaf:
                paths.append((path + [(index, taken)], int(child)))
            else:
                walk(int(child), path + [(index, taken)])

    for root in _array(node, "tree_roots"):
        root = int(root)
        if true_leaf[root] and false_leaf[root] and true_ids[root] == false_ids[root]:
            paths.append(([], int(true_ids[root])))  # the tree is a single leaf
        else:
            walk(root, [])
    return paths


class DecomposeTreeEnsemble(Decomposition):
    name = "decompose_tree_ensemble"
    op_types = ("TreeEnsemble",)
    domain = "ai.onnx.ml"

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if attr(node, "aggregate_function", _SUM) not in (_SUM, _AVERAGE):
            return "only SUM and AVERAGE aggregation are decomposed"
        if attr(node, "post_transform", 0) != 0:
            return "only post_transform NONE is decomposed"
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) != 2:
            return "the input is not a static [N, features] tensor"
        if dtype_of(node.inputs[0]) not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
            return "only float32/float64 inputs are decomposed"
        return None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        x = node.inputs[0]
        np_dtype = dtype_of(x).numpy()
        features = _array(node, "nodes_featureids").astype(np.int64)
        splits = _array(node, "nodes_splits").astype(np_dtype)
        modes = _array(node, "nodes_modes").astype(np.int64)
        tracks = _array(node, "nodes_missing_value_tracks_true")
        members = _array(node, "membership_values")
        count = len(features)
        value = _op(tape, "Gather", x, ints(tape, features), axis=1)  # [N, nodes]
        split = constant(tape, splits)
        tests = {0: "LessOrEqual", 1: "Less", 2: "GreaterOrEqual", 3: "Greater", 4: "Equal"}
        outcome = constant(tape, np.zeros(count, bool))
        for mode in sorted(set(modes.tolist())):
            if mode in tests:
                result = _op(tape, tests[mode], value, split)
            elif mode == 5:
                result = _op(tape, "Not", _op(tape, "Equal", value, split))
            else:  # 6: membership; the sets are NaN-separated, one per MEMBER node in order
                sets = np.split(members, np.flatnonzero(np.isnan(members)))
                sets = [s[~np.isnan(s)] for s in sets]
                table = np.full((count, max(len(s) for s in sets) or 1), np.nan, np_dtype)
                for i, v in zip(np.flatnonzero(modes == 6), sets):
                    table[i, :len(v)] = v
                hits = _op(tape, "Cast", _op(tape, "Equal", _op(tape, "Unsqueeze", value, ints(
                    tape, [-1])), constant(tape, table)), to=ir.DataType.UINT8)
                result = _op(tape, "Cast", reduce(tape, "ReduceMax", hits, [-1], ctx.opset,
                                                  keepdims=0), to=ir.DataType.BOOL)
            # the modes partition the nodes: or-in this mode's outcomes on its nodes
            outcome = _op(tape, "Or", outcome, _op(tape, "And", result,
                                                   constant(tape, modes == mode)))
        if tracks is not None and np.any(tracks):
            outcome = _op(tape, "Or", outcome, _op(tape, "And", _op(tape, "IsNaN", value),
                                                   constant(tape, tracks.astype(bool))))
        paths = _paths(node)
        longest = max((len(p) for p, _ in paths), default=0) or 1
        # a padded column of ones: padding entries point at it and are "taken"
        outcome = _op(tape, "Concat", _op(tape, "Cast", outcome, to=dtype_of(x)),
                      constant(tape, np.ones((static_shape(x)[0], 1), np_dtype)), axis=1)
        index = np.full((len(paths), longest), count, np.int64)
        taken = np.ones((len(paths), longest), np_dtype)
        for i, (path, _) in enumerate(paths):
            for j, (v, branch) in enumerate(path):
                index[i, j], taken[i, j] = v, 1.0 if branch else 0.0
        picked = _op(tape, "Gather", outcome, constant(tape, index), axis=1)  # [N, paths, longest]
        # c when the branch is taken, 1 - c otherwise: taken·c + (1 − taken)·(1 − c)
        agree = _op(tape, "Add", _op(tape, "Mul", picked, constant(tape, taken)),
                    _op(tape, "Mul", _op(tape, "Sub", constant(tape, np.ones((), np_dtype)), picked),
                        constant(tape, 1 - taken)))
        indicator = reduce(tape, "ReduceProd", agree, [2], ctx.opset, keepdims=0)
        targets = int(attr(node, "n_targets"))
        leaf_weights = _array(node, "leaf_weights").astype(np_dtype)
        leaf_targets = _array(node, "leaf_targetids").astype(np.int64)
        table = np.zeros((len(paths), targets), np_dtype)
        for i, (_, leaf) in enumerate(paths):
            table[i, leaf_targets[leaf]] += leaf_weights[leaf]
        if attr(node, "aggregate_function", _SUM) == _AVERAGE:
            table /= len(_array(node, "tree_roots"))
        return [_op(tape, "MatMul", indicator, constant(tape, table))]


RULES = (DecomposeTreeEnsemble(),)
