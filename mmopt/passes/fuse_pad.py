"""fuse_pad: a constant-mode Pad of the spatial axes folded into the Conv, AveragePool or MaxPool after it.

Conv and the pools pad their input themselves (``pads`` = begins of each spatial axis, then ends).
An explicit ``Pad`` of ``p`` before an op that pads by ``q`` is the same as padding by ``p + q``:

* Conv pads with zeros: exact when the Pad's value is 0.
* AveragePool with ``count_include_pad=1`` averages the padded zeros too: exact when the Pad's value
  is 0 and the pool either had no padding of its own or already counted it (the fused pool gets
  ``count_include_pad=1``).
* MaxPool ignores its padding (acts as −∞). A Pad value ``v`` is equivalent when no real element is
  smaller than ``v``, i.e. ``v = −∞``, or ``v = 0`` and the input is non-negative (it comes from Relu,
  Sigmoid, HardSigmoid, Softplus, or Clip with ``min ≥ 0``), provided every window still holds a real
  element (``p + q`` below the dilated kernel size).

Only the spatial axes may be padded (begin/end of N and C are 0), pads must be non-negative
constants, ``mode="constant"``, ``auto_pad`` unset, and pools must use ``ceil_mode=0``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from onnxscript.rewriter import MatchResult

from mmopt.passes._rules import Rule, RulePass, attr, constant, fail, rank, scalar

_NON_NEGATIVE = {"Relu", "Sigmoid", "HardSigmoid", "Softplus"}


def _full_pads(pad_node) -> np.ndarray | None:
    """The Pad's pads over every axis ([begins..., ends...]), or None when not constant/known."""
    pads = constant(pad_node.inputs[1]) if len(pad_node.inputs) > 1 else None
    if pads is None:
        return None
    pads = pads.astype(np.int64).reshape(-1)
    axes_value = pad_node.inputs[3] if len(pad_node.inputs) > 3 else None
    if axes_value is None:
        return pads
    axes = constant(axes_value)
    r = rank(pad_node.inputs[0])
    if axes is None or r is None:
        return None
    full = np.zeros(2 * r, np.int64)
    n = len(axes)
    for i, a in enumerate(axes.astype(np.int64).reshape(-1)):
        a = int(a) % r
        full[a], full[a + r] = pads[i], pads[i + n]
    return full


def _pad_value(pad_node) -> float | None:
    value = pad_node.inputs[2] if len(pad_node.inputs) > 2 else None
    return 0.0 if value is None else scalar(value)


def _non_negative(value) -> bool:
    producer = value.producer()
    if producer is None:
        return False
    if producer.op_type in _NON_NEGATIVE:
        return True
    if producer.op_type == "Clip" and len(producer.inputs) > 1:
        low = scalar(producer.inputs[1])
        return low is not None and low >= 0
    return False


class _FusePad(Rule):
    target: ClassVar[str]

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _outputs=["padded"])
        return getattr(op, self.target)(padded, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context, x, padded, out, **_) -> MatchResult:
        pad_node, node = padded.producer(), out.producer()
        if attr(pad_node, "mode", "constant") != "constant":
            return fail("Pad mode is not constant")
        pads = _full_pads(pad_node)
        if pads is None:
            return fail("pads are not constant")
        r = len(pads) // 2
        if r < 3 or pads[0] or pads[1] or pads[r] or pads[r + 1] or np.any(pads < 0):
            return fail("Pad touches batch/channel axes or crops")
        if attr(node, "auto_pad", "NOTSET") != "NOTSET":
            return fail("auto_pad is set")
        value = _pad_value(pad_node)
        if value is None:
            return fail("pad value is not a constant")
        return self.check_target(node, pads, value, x)

    def check_target(self, node, pads, value, x) -> MatchResult:
        raise NotImplementedError

    def rewrite(self, op, x, padded, out, **_):
        pad_node, node = padded.producer(), out.producer()
        pads = _full_pads(pad_node)
        r = len(pads) // 2
        spatial = r - 2
        own = attr(node, "pads", [0] * (2 * spatial))
        new_pads = [int(own[i] + pads[2 + i]) for i in range(spatial)] + \
                   [int(own[spatial + i] + pads[r + 2 + i]) for i in range(spatial)]
        attributes = dict(node.attributes)
        attributes.pop("pads", None)
        attributes.pop("auto_pad", None)
        if self.target == "AveragePool":
            attributes.pop("count_include_pad", None)
            attributes["count_include_pad"] = 1
        return op.op(self.target, x, *node.inputs[1:], _name=node.name, pads=new_pads, **attributes)


class FusePadIntoConv(_FusePad):
    name, target = "fuse_pad_into_conv", "Conv"

    def check_target(self, node, pads, value, x):
        return MatchResult() if value == 0.0 else fail("Conv pads with zeros; Pad value is not 0")


class FusePadIntoAveragePool(_FusePad):
    name, target = "fuse_pad_into_average_pool", "AveragePool"

    def check_target(self, node, pads, value, x):
        if value != 0.0:
            return fail("pad value is not 0")
        if attr(node, "ceil_mode", 0):
            return fail("ceil_mode=1")
        if any(attr(node, "pads", [0])) and not attr(node, "count_include_pad", 0):
            return fail("pool has its own padding that it does not count")
        return MatchResult()


class FusePadIntoMaxPool(_FusePad):
    name, target = "fuse_pad_into_max_pool", "MaxPool"

    def check_target(self, node, pads, value, x):
        if len(node.outputs) > 1:
            return fail("MaxPool Indices output is used")
        if attr(node, "ceil_mode", 0):
            return fail("ceil_mode=1")
        if not (value == -np.inf or (value == 0.0 and _non_negative(x))):
            return fail("pad value could exceed a real element")
        r = len(pads) // 2
        kernel = attr(node, "kernel_shape")
        dilations = attr(node, "dilations", [1] * len(kernel))
        own = attr(node, "pads", [0] * (2 * len(kernel)))
        for i, (k, d) in enumerate(zip(kernel, dilations)):
            span = (k - 1) * d + 1
            if pads[2 + i] + own[i] >= span or pads[r + 2 + i] + own[len(kernel) + i] >= span:
                return fail("a window would hold padding only")
        return MatchResult()


class FusePadPass(RulePass):
    """Spatial zero Pad folded into Conv / AveragePool / MaxPool padding."""

    rules = (FusePadIntoConv, FusePadIntoAveragePool, FusePadIntoMaxPool)
    anchor_ops = frozenset({"Pad"})
    needs_shapes = True
