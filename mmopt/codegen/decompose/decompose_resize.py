"""decompose_resize: the Resize features TVM's converter lacks, as per-axis interpolation matrices.

Resize is separable: ONNX defines it as a 1-D resize along each resized axis in turn, and each 1-D
resize is linear in the data. With a static input shape and constant scales/sizes/roi, the 1-D
resize of axis ``a`` (``n`` values to ``m``) is a fixed ``[m, n]`` matrix ``W`` (plus, for
``tf_crop_and_resize``, a constant for the rows that fall outside the input), computed here from
the operator's definition:

* the output length: ``floor(scale·n)`` for given scales, the given size otherwise, and for
  ``keep_aspect_ratio_policy`` ``not_larger``/``not_smaller`` one scale (the min/max over the
  axes) with ``round_half_up(scale·n)``;
* the source coordinate ``x(y)`` of each output index by ``coordinate_transformation_mode``
  (with the given scale, not ``m/n``);
* the taps around ``x`` (an integral ``x`` counts as ``x−1`` with ratio 1) and their weights:
  nearest (by ``nearest_mode``), linear, cubic (``cubic_coeff_a``), and their antialiased forms,
  whose filter widens by ``1/scale`` when downsampling; ``exclude_outside`` drops the taps outside
  the input and renormalizes; other taps are clamped to the edge.

Each axis then becomes a ``MatMul`` with ``Wᵀ`` (a ``Gather`` for nearest, exact), between
transposes that bring the axis last. TVM's own Resize stays for the cases it handles: the rule
only takes nodes that use ``antialias``, ``axes``, a ``keep_aspect_ratio_policy``, the
``half_pixel_symmetric`` mode, or scales whose output length is not ``scale·n`` exactly (TVM maps
coordinates with ``m/n`` instead of the given scale).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mmopt.extend.rules import (
    Context,
    Decomposition,
    attr,
    const,
    constant,
    dtype_of,
    ints,
    present,
    static_shape,
)

_FLOATS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16}


def _source_coordinates(mode: str, m: int, n: int, scale: float, roi: tuple[float, float] | None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """``x(y)`` for every output index ``y`` and, for tf_crop_and_resize, which are outside."""
    y = np.arange(m, dtype=np.float64)
    length = scale * n  # the (fractional) resized length the modes are defined with
    outside = None
    if mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "pytorch_half_pixel":
        x = (y + 0.5) / scale - 0.5 if length != 1 else np.full(m, -0.5)
    elif mode == "half_pixel_symmetric":
        offset = n / 2 * (1 - m / length)
        x = offset + (y + 0.5) / scale - 0.5
    elif mode == "align_corners":
        x = y * (n - 1) / (length - 1) if length != 1 else np.zeros(m)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_half_pixel_for_nearest":
        x = (y + 0.5) / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if length != 1:
            x = start * (n - 1) + y * (end - start) * (n - 1) / (length - 1)
        else:
            x = np.full(m, start * (n - 1) + (end - start) * (n - 1) / 2)
        outside = (x < 0) | (x > n - 1)
    else:
        raise ValueError(f"coordinate_transformation_mode {mode!r}")
    return x, outside


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _taps(mode: str, antialias: bool, scale: float, ratio: np.ndarray, cubic_a: float,
          nearest_mode: str) -> tuple[int, np.ndarray]:
    """(first tap offset from floor(x), weights [m, k]) for the given ratios ``x − floor(x)``."""
    if mode == "nearest":
        pick_right = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
                      "floor": np.zeros_like(ratio, bool), "ceil": np.ones_like(ratio, bool)}
        right = np.where(ratio == 1.0, True, pick_right[nearest_mode])
        return 0, np.stack([~right, right], axis=1).astype(np.float64)
    if not antialias or scale >= 1.0:
        if mode == "linear":
            return 0, np.stack([1 - ratio, ratio], axis=1)
        distances = np.stack([ratio + 1, ratio, 1 - ratio, 2 - ratio], axis=1)
        return -1, _cubic(distances, cubic_a)
    # antialiased downsampling: the filter is stretched by 1/scale
    support = 1.0 if mode == "linear" else 2.0
    first = int(math.floor(-support / scale) + 1)
    offsets = np.arange(first, 2 - first)
    distances = (offsets[None, :] - ratio[:, None]) * scale
    weights = np.clip(1 - np.abs(distances), 0, 1) if mode == "linear" else _cubic(distances, cubic_a)
    return first, weights / weights.sum(axis=1, keepdims=True)


def interpolation_matrix(n: int, m: int, scale: float, *, mode: str = "nearest",
                         coordinate_mode: str = "half_pixel", nearest_mode: str = "round_prefer_floor",
                         cubic_a: float = -0.75, exclude_outside: bool = False,
                         antialias: bool = False, roi: tuple[float, float] | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W [m, n], outside [m] or None)``: the 1-D resize of ``n`` values to ``m`` as a matrix."""
    x, outside = _source_coordinates(coordinate_mode, m, n, scale, roi)
    base = np.floor(x)
    ratio = x - base
    integral = ratio == 0
    base = np.where(integral, base - 1, base).astype(np.int64)  # integral x: left tap, ratio 1
    ratio = np.where(integral, 1.0, ratio)
    first, weights = _taps(mode, antialias, scale, ratio, cubic_a, nearest_mode)
    # taps floor(x) + first + j (2-tap kernels: floor(x), floor(x) + 1)
    taps = base[:, None] + first + np.arange(weights.shape[1])[None, :]
    if exclude_outside:
        inside = (taps >= 0) & (taps < n)
        weights = np.where(inside, weights, 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    matrix = np.zeros((m, n), dtype=np.float64)
    rows = np.repeat(np.arange(m), weights.shape[1])
    np.add.at(matrix, (rows, np.clip(taps, 0, n - 1).reshape(-1)), weights.reshape(-1))
    if outside is not None:
        matrix[outside] = 0.0
        if not outside.any():
            outside = None
    return matrix, outside


def _text(value, default: str) -> str:
    return value.decode() if isinstance(value, bytes) else (value or default)


class _Plan:
    """Per-axis (scale, output length, roi) of a Resize node, as the operator defines them."""

    def __init__(self, node: ir.Node):
        shape = list(static_shape(node.inputs[0]))
        rank = len(shape)
        roi, scales, sizes = (const(present(node, i)) for i in (1, 2, 3))
        axes = [a % rank for a in attr(node, "axes", None) or range(rank)]
        policy = _text(attr(node, "keep_aspect_ratio_policy", "stretch"), "stretch")
        roi_full = [0.0] * rank + [1.0] * rank
        if roi is not None and roi.size:
            for i, a in enumerate(axes):
                roi_full[a], roi_full[rank + a] = float(roi[i]), float(roi[len(axes) + i])
        scale = [1.0] * rank
        out = list(shape)
        if sizes is not None and sizes.size:
            for i, a in enumerate(axes):
                out[a] = int(sizes[i])
                scale[a] = out[a] / shape[a]
            if policy != "stretch":
                pick = min if policy == "not_larger" else max
                common = pick(scale[a] for a in axes)
                for a in axes:
                    scale[a] = common
                    out[a] = int(common * shape[a] + 0.5)
        else:
            for i, a in enumerate(axes):
                scale[a] = float(scales[i])
                out[a] = int(scale[a] * shape[a])
        self.shape, self.scale, self.out, self.axes = shape, scale, out, axes
        self.roi = [(roi_full[a], roi_full[rank + a]) for a in range(rank)]

    def resized_axes(self) -> list[int]:
        return [a for a in self.axes if not (math.isclose(self.scale[a], 1.0)
                                             and self.out[a] == self.shape[a]
                                             and math.isclose(self.roi[a][0], 0.0)
                                             and math.isclose(self.roi[a][1], 1.0))]


class DecomposeResize(Decomposition):
    name = "decompose_resize"
    op_types = ("Resize",)
    always = True

    def wanted(self, node: ir.Node, ctx: Context) -> bool:
        if ctx.opset < 11 or static_shape(node.inputs[0]) is None:
            return False
        if attr(node, "antialias", 0) or attr(node, "axes", None) is not None:
            return True
        if _text(attr(node, "keep_aspect_ratio_policy", "stretch"), "stretch") != "stretch":
            return True
        if _text(attr(node, "coordinate_transformation_mode", "half_pixel"), "") == \
                "half_pixel_symmetric":
            return True
        scales = const(present(node, 2))
        if scales is None or not scales.size:
            return False
        shape = static_shape(node.inputs[0])
        # TVM maps coordinates with out/in; that is the given scale only when scale·n is whole
        return any(abs(float(s) * d - round(float(s) * d)) > 1e-6 for s, d in
                   zip(scales.reshape(-1), shape))

    def check(self, node: ir.Node, ctx: Context) -> str | None:
        if dtype_of(node.inputs[0]) not in _FLOATS:
            return "only floating-point inputs are decomposed"
        for i in (1, 2, 3):
            value = present(node, i)
            if value is not None and const(value) is None:
                return "roi, scales and sizes must be constants"
        return None

    def rewrite(self, node: ir.Node, tape, ctx: Context):
        plan = _Plan(node)
        np_dtype = dtype_of(node.inputs[0]).numpy()
        mode = _text(attr(node, "mode", "nearest"), "nearest")
        options = dict(
            mode=mode,
            coordinate_mode=_text(attr(node, "coordinate_transformation_mode", "half_pixel"),
                                  "half_pixel"),
            nearest_mode=_text(attr(node, "nearest_mode", "round_prefer_floor"),
                               "round_prefer_floor"),
            cubic_a=float(attr(node, "cubic_coeff_a", -0.75)),
            exclude_outside=bool(attr(node, "exclude_outside", 0)),
            antialias=bool(attr(node, "antialias", 0)))
        extrapolation = float(attr(node, "extrapolation_value", 0.0))
        x = node.inputs[0]
        rank = len(plan.shape)
        for a in plan.resized_axes():
            matrix, outside = interpolation_matrix(plan.shape[a], plan.out[a], plan.scale[a],
                                                   roi=plan.roi[a], **options)
            if mode == "nearest" and outside is None:
                x = tape.op("Gather", [x, ints(tape, matrix.argmax(axis=1))], {"axis": a})
                continue
            last = list(range(rank))
            last.append(last.pop(a))
            moved = x if a == rank - 1 else tape.op("Transpose", [x], {"perm": last})
            y = tape.op("MatMul", [moved, constant(tape, matrix.T.astype(np_dtype))])
            if outside is not None:
                y = tape.op("Add", [y, constant(tape, (outside * extrapolation).astype(np_dtype))])
            back = list(np.argsort(last))
            x = y if a == rank - 1 else tape.op("Transpose", [y], {"perm": [int(p) for p in back]})
        if x is node.inputs[0]:
            x = tape.op("Identity", [x])
        return [x]


RULES = (DecomposeResize(),)
