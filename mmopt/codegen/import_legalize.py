"""Adjustments to how TVM's Relax ONNX importer translates a few operators.

* ``Clip`` with constant bounds is imported as ``R.maximum``/``R.minimum`` (plain binary Relax ops)
  instead of the importer's direct lowering to TIR (``emit_te``). Relax's ConvertLayout cannot see
  through TIR calls, so with the stock converter every ReLU6 of a MobileNet ends up wrapped in a
  pair of NHWC<->NCHW transposes; the binary ops propagate the layout and fuse into the conv
  epilogue. (ONNX ``Max``/``Min`` are no alternative: the importer stacks their inputs into a
  5-D tensor and reduces.) Non-constant bounds keep the stock converter, including its NaN-bound
  handling.

The override is installed only for the duration of one import (:func:`importer_overrides`).
"""

from __future__ import annotations

import contextlib

import numpy as np


def _clip_converter(stock):
    from tvm import relax

    def constant(expr):
        """The bound as a numpy array, None when absent, False when not a constant."""
        if expr is None:
            return None
        tensor = getattr(expr, "value", None) if type(expr).__name__ == "GenericConst" else None
        tensor = tensor if tensor is not None else getattr(expr, "data", None)
        return np.asarray(tensor.numpy()) if tensor is not None else False

    class Clip(stock):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            x = inputs[0]
            lo = inputs[1] if len(inputs) > 1 else None
            hi = inputs[2] if len(inputs) > 2 else None
            bounds = [constant(lo), constant(hi)]
            if any(b is False for b in bounds):
                return stock._impl_v13(bb, inputs, attr, params)
            for value in bounds:
                if value is not None and (value.size != 1 or np.isnan(value).any()):
                    return stock._impl_v13(bb, inputs, attr, params)
            dtype = x.ty.dtype
            out = x
            if bounds[0] is not None:
                out = bb.normalize(relax.op.maximum(out, relax.const(bounds[0].reshape(()), dtype)))
            if bounds[1] is not None:
                out = bb.normalize(relax.op.minimum(out, relax.const(bounds[1].reshape(()), dtype)))
            return out

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return cls._impl_v13(bb, inputs, attr, params)

    return Clip


@contextlib.contextmanager
def importer_overrides():
    """Install mmopt's converter overrides into TVM's ONNX importer for one import."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map  # noqa: SLF001 - no public registration hook

    def patched():
        table = dict(original())
        table["Clip"] = _clip_converter(table["Clip"])
        return table

    onnx_frontend._get_convert_map = patched  # noqa: SLF001
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original  # noqa: SLF001
