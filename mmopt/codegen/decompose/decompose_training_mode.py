"""decompose_training_mode: the inference-time meaning of ops run with ``training_mode`` set.

TVM's importer converts these ops for inference only. When a model asks for training behaviour
with a constant flag, the rule writes that behaviour out:

* ``BatchNormalization(training_mode=1)``: normalize with the batch's own statistics
  ``μ = mean(x)``, ``σ² = var(x)`` over every axis but 1, ``y = (x − μ)/√(σ² + ε)·γ + β``, and
  return the updated running statistics ``running·momentum + batch·(1 − momentum)``.
* ``Dropout(training_mode=true)`` with a constant ``ratio`` of 0: nothing is dropped, ``y = x``
  and the mask is all true. (A non-zero ratio draws random numbers: not compiled.)
"""

from __future__ import annotations

import numpy as np

from mmopt.extend.rules import (
    op as _op,
    Decomposition,
    attr,
    const,
    constant,
    dtype_of,
    ints,
    present,
    reduce,
    static_shape,
)


class DecomposeBatchNormTraining(Decomposition):
    name = "decompose_batchnorm_training"
    op_types = ("BatchNormalization",)
    always = True

    def wanted(self, node, ctx):
        return bool(attr(node, "training_mode", 0))

    def check(self, node, ctx):
        if static_shape(node.inputs[0]) is None or dtype_of(node.inputs[0]) is None:
            return "the input shape is not static"
        return None

    def rewrite(self, node, tape, ctx):
        x, scale, bias, mean, var = node.inputs[:5]
        rank = len(static_shape(x))
        np_dtype = dtype_of(x).numpy()
        axes = [a for a in range(rank) if a != 1]
        per_channel = ints(tape, [-1] + [1] * (rank - 2))

        def mean_over_axes(v):
            return reduce(tape, "ReduceMean", v, axes, ctx.opset, keepdims=1)

        batch_mean = mean_over_axes(x)
        centered = _op(tape, "Sub", x, batch_mean)
        batch_var = mean_over_axes(_op(tape, "Mul", centered, centered))
        eps = constant(tape, np.asarray(attr(node, "epsilon", 1e-5), dtype=np_dtype))
        y = _op(tape, "Div", centered, _op(tape, "Sqrt", _op(tape, "Add", batch_var, eps)))
        y = _op(tape, "Add", _op(tape, "Mul", y, _op(tape, "Reshape", scale, per_channel)),
                _op(tape, "Reshape", bias, per_channel))
        momentum = float(attr(node, "momentum", 0.9))
        keep = constant(tape, np.asarray(momentum, dtype=np_dtype))
        take = constant(tape, np.asarray(1.0 - momentum, dtype=np_dtype))
        flat = ints(tape, [-1])

        def running(old, batch):
            return _op(tape, "Add", _op(tape, "Mul", old, keep),
                       _op(tape, "Mul", _op(tape, "Reshape", batch, flat), take))

        return [y, running(mean, batch_mean), running(var, batch_var)][:len(node.outputs)]


class DecomposeDropoutTraining(Decomposition):
    name = "decompose_dropout_training"
    op_types = ("Dropout",)
    always = True

    def wanted(self, node, ctx):
        mode = const(present(node, 2))
        return mode is not None and bool(mode.reshape(-1)[0])

    def check(self, node, ctx):
        ratio = const(present(node, 1))
        if present(node, 1) is not None and (ratio is None or float(ratio.reshape(-1)[0]) != 0.0):
            return "training-mode dropout with a non-zero ratio is random"
        if static_shape(node.inputs[0]) is None:
            return "the input shape is not static"
        return None

    def rewrite(self, node, tape, ctx):
        x = node.inputs[0]
        mask = constant(tape, np.ones(static_shape(x), dtype=bool))
        return [_op(tape, "Identity", x), mask][:len(node.outputs)]


RULES = (DecomposeBatchNormTraining(), DecomposeDropoutTraining())
