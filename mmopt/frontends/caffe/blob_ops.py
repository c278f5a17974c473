"""Caffe's layers that combine, split, crop and reshape blobs -> ONNX: Eltwise, Concat, Flatten,
Reshape, Permute, Slice, Split (copies), Silence and Crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmopt.frontends.caffe.context import _Context, _axis, converts


@converts("Eltwise")
def _eltwise(ctx: _Context, layer) -> None:
    p = layer.eltwise_param
    xs = ctx.bottoms()
    shape = ctx.shape(xs[0])
    if any(ctx.shape(t) != shape for t in xs):
        raise ctx.fail("all bottoms must have the same shape: "
                       + ", ".join(str(list(ctx.shape(t))) for t in xs))
    coeffs = list(p.coeff)
    if coeffs and p.operation != p.SUM:
        raise ctx.fail("coeff only applies to the SUM operation")
    if coeffs and len(coeffs) != len(xs):
        raise ctx.fail(f"{len(coeffs)} coeff values for {len(xs)} bottoms")
    y = ctx.top(0, shape)
    if p.operation == p.SUM and any(c != 1 for c in coeffs):
        terms = []
        for i, (t, c) in enumerate(zip(xs, coeffs)):
            if c == 1:
                terms.append(t)
                continue
            scaled = ctx.temp(f"coeff{i}", shape)
            ctx.node("Mul", [t, ctx.const(f"coeff{i}", c)], [scaled], role=f"coeff{i}")
            terms.append(scaled)
        xs = terms
    op = {p.SUM: "Sum", p.PROD: "Mul", p.MAX: "Max"}[p.operation]
    if op == "Mul":
        current = xs[0]
        for i, t in enumerate(xs[1:], start=1):
            out = y if i == len(xs) - 1 else ctx.temp(f"mul{i}", shape)
            ctx.node("Mul", [current, t], [out], role=None if out == y else f"mul{i}")
            current = out
        if len(xs) == 1:
            ctx.node("Identity", [current], [y])
        return
    if op == "Sum" and len(xs) == 2:
        op = "Add"
    ctx.node(op, xs, [y])


@converts("Concat")
def _concat(ctx: _Context, layer) -> None:
    p = layer.concat_param
    xs = ctx.bottoms()
    shapes = [ctx.shape(t) for t in xs]
    rank = len(shapes[0])
    axis = _axis(ctx, int(p.concat_dim) if p.HasField("concat_dim") else p.axis, rank)
    for s in shapes[1:]:
        if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            raise ctx.fail(f"bottom shapes {[list(s) for s in shapes]} differ outside axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    y = ctx.top(0, out)
    if len(xs) == 1:
        ctx.node("Identity", xs, [y])
    else:
        ctx.node("Concat", xs, [y], axis=axis)


@converts("Flatten")
def _flatten(ctx: _Context, layer) -> None:
    p = layer.flatten_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    start = _axis(ctx, p.axis, len(shape))
    end = _axis(ctx, p.end_axis, len(shape), "end_axis")
    if end < start:
        raise ctx.fail(f"end_axis {p.end_axis} comes before axis {p.axis}")
    out = (*shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
    _reshape_to(ctx, x, out)


def _reshape_to(ctx: _Context, x: str, out: Sequence[int]) -> None:
    ctx.node("Reshape", [x, ctx.const("shape", list(out), np.int64)], [ctx.top(0, out)])


@converts("Reshape")
def _reshape(ctx: _Context, layer) -> None:
    """Caffe's Reshape: ``shape`` replaces dims ``[axis, axis + num_axes)``; 0 copies, -1 infers."""
    p = layer.reshape_param
    x = ctx.bottom()
    shape = list(ctx.shape(x))
    rank = len(shape)
    axis = p.axis
    if not -rank - 1 <= axis <= rank:
        raise ctx.fail(f"axis {axis} is out of range for a {rank}-D blob")
    start = axis if axis >= 0 else rank + 1 + axis
    end = rank if p.num_axes == -1 else start + p.num_axes
    if p.num_axes < -1 or end > rank:
        raise ctx.fail(f"num_axes {p.num_axes} is out of range")
    spec = list(p.shape.dim)
    middle = []
    for i, d in enumerate(spec):
        if d == 0:
            if start + i >= rank:
                raise ctx.fail(f"dim {i} is 0 (copy) but the bottom has no dim {start + i}")
            middle.append(shape[start + i])
        else:
            middle.append(int(d))
    out = shape[:start] + middle + shape[end:]
    if out.count(-1) > 1:
        raise ctx.fail("at most one dim may be -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(shape))
        if known == 0 or total % known:
            raise ctx.fail(f"cannot infer the -1 dim of {out} from {total} elements")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != int(np.prod(shape)):
        raise ctx.fail(f"shape {out} does not hold the bottom's {int(np.prod(shape))} elements")
    _reshape_to(ctx, x, out)


@converts("Permute")
def _permute(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    order = [int(o) for o in layer.permute_param.order]
    if len(set(order)) != len(order) or any(o >= len(shape) for o in order):
        raise ctx.fail(f"order {order} is not a permutation of the blob's {len(shape)} axes")
    order += [a for a in range(len(shape)) if a not in order]
    ctx.node("Transpose", [x], [ctx.top(0, [shape[a] for a in order])], perm=order)


@converts("Slice")
def _slice(ctx: _Context, layer) -> None:
    p = layer.slice_param
    x = ctx.bottom()
    shape = ctx.shape(x)
    axis = _axis(ctx, int(p.slice_dim) if p.HasField("slice_dim") else p.axis, len(shape))
    n_tops = len(layer.top)
    points = [int(v) for v in p.slice_point]
    total = shape[axis]
    if points:
        if len(points) != n_tops - 1:
            raise ctx.fail(f"{len(points)} slice_point values for {n_tops} tops")
        bounds = [0, *points, total]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(s <= 0 for s in sizes):
            raise ctx.fail(f"slice_point {points} is not increasing within 0..{total}")
    else:
        if total % n_tops:
            raise ctx.fail(f"axis {axis} of size {total} does not split evenly into {n_tops} tops")
        sizes = [total // n_tops] * n_tops
    outs = []
    for i, s in enumerate(sizes):
        out = list(shape)
        out[axis] = s
        outs.append(ctx.top(i, out))
    if n_tops == 1:
        ctx.node("Identity", [x], outs)
    else:
        ctx.node("Split", [x, ctx.const("split", sizes, np.int64)], outs, axis=axis)


@converts("Split")
def _split(ctx: _Context, layer) -> None:
    x = ctx.bottom()
    shape = ctx.shape(x)
    for i in range(len(layer.top)):
        ctx.node("Identity", [x], [ctx.top(i, shape)], role=None if i == 0 else f"copy{i}")


@converts("Silence")
def _silence(ctx: _Context, layer) -> None:
    ctx.bottoms()  # consumes its bottoms; produces nothing


@converts("Crop")
def _crop(ctx: _Context, layer) -> None:
    """Crop bottom 0 to bottom 1's shape from ``axis`` on, starting at ``offset``."""
    p = layer.crop_param
    x, ref = ctx.bottom(0), ctx.bottom(1)
    shape, ref_shape = ctx.shape(x), ctx.shape(ref)
    axis = _axis(ctx, p.axis, len(shape))
    n = len(shape) - axis
    offsets = [int(v) for v in p.offset]
    if not offsets:
        offsets = [0] * n
    elif len(offsets) == 1:
        offsets = offsets * n
    elif len(offsets) != n:
        raise ctx.fail(f"{len(offsets)} offsets for {n} cropped axes")
    out = list(shape[:axis]) + list(ref_shape[axis:])
    for a, o in zip(range(axis, len(shape)), offsets):
        if o + out[a] > shape[a]:
            raise ctx.fail(f"crop of {out[a]} at offset {o} exceeds axis {a} of size {shape[a]}")
    axes = list(range(axis, len(shape)))
    ctx.node("Slice", [x, ctx.const("starts", offsets, np.int64),
                       ctx.const("ends", [o + out[a] for a, o in zip(axes, offsets)], np.int64),
                       ctx.const("axes", axes, np.int64)], [ctx.top(0, out)])
