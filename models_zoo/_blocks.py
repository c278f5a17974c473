"""Layer helpers shared by the detector and vision recipes (SiLU, Split/Concat, upsampling, ...).

Same conventions as :mod:`models_zoo._graph`: nodes are named after their role, a node's output
tensor carries the node's name (``<name>.0``, ``<name>.1``, ... for multi-output nodes), and every
helper that can sit in front of a BatchNormalization also records its calibration value so the BN
statistics stay realistic at any depth.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._graph import GraphBuilder, batchnorm, conv

__all__ = [
    "concat",
    "conv_bn_silu",
    "focus",
    "sigmoid",
    "silu",
    "split",
    "upsample2x",
]

_INT64_MAX = int(np.iinfo(np.int64).max)


def _np_sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def sigmoid(g: GraphBuilder, x: str, name: str) -> str:
    return g.evaluate(g.node("Sigmoid", [x], name), _np_sigmoid, x)


def silu(g: GraphBuilder, x: str, name: str) -> str:
    """SiLU / swish as exporters write it: x * Sigmoid(x) (nodes ``<name>.sigmoid``, ``<name>.mul``)."""
    gate = g.node("Sigmoid", [x], f"{name}.sigmoid")
    y = g.node("Mul", [x, gate], f"{name}.mul")
    return g.evaluate(y, lambda v: v * _np_sigmoid(v), x)


def conv_bn_silu(
    g: GraphBuilder,
    x: str,
    prefix: str,
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    group: int = 1,
    eps: float = 1e-3,
    act: bool = True,
) -> str:
    """Conv (no bias, pad kernel//2) -> BatchNormalization -> SiLU: Ultralytics/YOLOX ``Conv``.

    Nodes: ``<prefix>.conv``, ``<prefix>.bn``, ``<prefix>.silu.{sigmoid,mul}``.
    """
    y = conv(g, x, f"{prefix}.conv", cin, cout, kernel, stride, group)
    y = batchnorm(g, y, f"{prefix}.bn", cout, eps=eps)
    return silu(g, y, f"{prefix}.silu") if act else y


def concat(g: GraphBuilder, xs: Sequence[str], name: str, axis: int = 1) -> str:
    y = g.node("Concat", list(xs), name, axis=axis)
    return g.evaluate(y, lambda *vs: np.concatenate(vs, axis=axis), *xs)


def split(g: GraphBuilder, x: str, name: str, sizes: Sequence[int], axis: int = 1) -> list[str]:
    """Split (opset 13+: sizes as an int64 input) into ``<name>.0``, ``<name>.1``, ..."""
    outs = g.multi_node("Split", [x, g.const(list(sizes), "int64")], name, len(sizes), axis=axis)
    bounds = np.cumsum([0, *sizes])
    for out, lo, hi in zip(outs, bounds[:-1], bounds[1:]):
        g.evaluate(out, lambda v, lo=lo, hi=hi: np.take(v, np.arange(lo, hi), axis=axis), x)
    return outs


def upsample2x(g: GraphBuilder, x: str, name: str) -> str:
    """``nn.Upsample(scale_factor=2, mode="nearest")`` as torch exports it: Resize with scales
    [1,1,2,2], asymmetric coordinates, floor rounding, no roi."""
    y = g.node(
        "Resize",
        [x, "", g.const([1.0, 1.0, 2.0, 2.0])],
        name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    return g.evaluate(y, lambda v: v.repeat(2, axis=2).repeat(2, axis=3), x)


def focus(g: GraphBuilder, x: str, name: str) -> str:
    """YOLOX ``Focus`` space-to-depth: four strided Slices (steps 2 on H and W) concatenated in the
    order top-left, bottom-left, top-right, bottom-right: [N,C,H,W] -> [N,4C,H/2,W/2]."""
    patches = []
    for label, (h0, w0) in (("tl", (0, 0)), ("bl", (1, 0)), ("tr", (0, 1)), ("br", (1, 1))):
        y = g.node(
            "Slice",
            [
                x,
                g.const([h0, w0], "int64"),
                g.const([_INT64_MAX, _INT64_MAX], "int64"),  # "to the end", as torch exports it
                g.const([2, 3], "int64"),
                g.const([2, 2], "int64"),
            ],
            f"{name}.slice_{label}",
        )
        patches.append(g.evaluate(y, lambda v, h0=h0, w0=w0: v[:, :, h0::2, w0::2], x))
    return concat(g, patches, f"{name}.concat")
