"""Converters mmopt installs into TVM's ONNX importer (through ``import_legalize.importer_overrides``)
where a graph-level decomposition is not the right fix.

* ``Sum``/``Max``/``Min``/``Mean`` are folded pairwise with the binary Relax ops
  (``add``/``maximum``/``minimum``). The stock converters stack their (broadcast) inputs into one
  tensor and reduce it: a copy, and Relax's ConvertLayout cannot infer a layout for ``stack``, so
  the x86 pipeline aborts ("Invalid SLayout") even on models with no convolution.
* ``OneHot``: the stock converter passes the on/off values as Python numbers, so the result is
  int64 or float64 whatever the ``values`` type; it is cast back to that type (ONNX's output type).
* ``ReduceMax``/``ReduceMin`` of elements that are all ``-inf``/``+inf`` give that infinity: TVM's
  reductions start from the lowest/highest finite value (one extra reduction of a mask and a
  select). ONNX's ``Attention`` body relies on it to zero fully masked rows.
* ``Softmax`` of half precision is computed in float32, as onnxruntime does.
* ``MatMul`` of float16/bfloat16 accumulates in float32 (then rounds once), as onnxruntime does.
* ``IsInf`` honours ``detect_negative``/``detect_positive``; ``BitShift`` by the element width or
  more (or a negative amount) shifts everything out (0, or -1 for a right shift of a negative
  value); ``EyeLike`` takes its type from ``dtype`` (a constant for static shapes);
  ``Elu``/``Selu`` build their constants in the input's type (float16 failed);
  ``SpaceToDepth`` implements ``mode="CRD"`` (opset 26); floating ``Mod`` (floor mod) by ``±inf``
  gives numpy's result instead of NaN; ``NonMaxSuppression`` keeps a box whose IoU equals the
  threshold (TVM's kernel compares with ``>=``, ONNX with ``>``).
* ``mmopt::FusedLSTM`` (written by :mod:`mmopt.codegen.decompose.decompose_rnn` for the plain
  LSTM): one recurrence kernel, see :mod:`mmopt.codegen.fused_lstm`.
* Kernel-level extensions (:mod:`mmopt.extend.kernels`): one converter per registered kernel,
  under the op type of the ``mmopt.kernel`` node its rule writes.
* ``BitCast`` (opset 26; TVM has no converter): reinterpret the bits as another type of the same
  width (``topi.reinterpret``). Width-changing casts are refused with a message.

:func:`install` adds them to a converter table; :data:`ADDED_OPS` are the op types TVM's own table
lacks (they count as supported in :func:`mmopt.codegen.relax_import.supported_ops`).
"""

from __future__ import annotations

import numpy as np

#: op types these converters add to TVM's table
ADDED_OPS = frozenset({"BitCast", "FusedLSTM"})


def _pairwise(stock):
    class Pairwise(stock):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            present = [x for x in inputs if x is not None]
            if len(present) == 1:
                return present[0]
            return cls._impl_dynamic(bb, present)

    Pairwise.__name__ = stock.__name__
    return Pairwise


def _fused_lstm():
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    from mmopt.codegen import fused_lstm

    class FusedLSTM(OnnxOpConverter):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return fused_lstm.convert(bb, inputs, attr)

    return FusedLSTM


def _bitcast():
    import onnx
    import tvm
    from tvm import topi
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    class BitCast(OnnxOpConverter):
        @classmethod
        def _impl_v26(cls, bb, inputs, attr, params):
            x = inputs[0]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attr["to"]))
            if dtype.itemsize * 8 != tvm.runtime.DataType(str(x.ty.dtype)).bits:
                raise ValueError(f"BitCast from {x.ty.dtype} to {dtype} changes the element width")
            return bb.emit_te(topi.reinterpret, x, str(dtype))

    return BitCast


def _onehot(stock):
    from tvm import relax

    class OneHot(stock):
        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            out = bb.normalize(stock._impl_v11(bb, inputs, attr, params))
            dtype = inputs[2].ty.dtype
            if str(out.ty.dtype) != str(dtype):
                out = relax.op.astype(out, dtype)
            return out

    return OneHot


def _softmax(stock):
    from tvm import relax

    class Softmax(stock):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            x = inputs[0]
            dtype = str(x.ty.dtype)
            if dtype not in ("float16", "bfloat16"):
                return stock._impl_v13(bb, inputs, attr, params)
            # half precision computed in float32, as onnxruntime does
            axis = attr.get("axis", -1)
            out = relax.op.nn.softmax(relax.op.astype(x, "float32"), axis=axis)
            return relax.op.astype(out, dtype)

    return Softmax


def _extreme_reduction(table: dict, name: str):
    """ReduceMax/ReduceMin whose result is -inf/+inf when every reduced element is: TVM's reductions
    start from the lowest/highest *finite* value, so an all -inf row's max comes out as -3.4e38 (an
    attention row whose keys are all masked then escapes ONNX's own "fully masked" test)."""
    from tvm import relax

    stock = table[name]
    reduce_min = table["ReduceMin"]
    infinity = float("-inf") if name == "ReduceMax" else float("inf")

    def converter(version):
        def impl(cls, bb, inputs, attr, params):
            original = dict(attr)  # converters may pop what they read
            out = bb.normalize(getattr(stock, f"_impl_v{version}")(bb, inputs, dict(original),
                                                                   params))
            x = inputs[0]
            dtype = str(x.ty.dtype)
            if dtype not in ("float16", "bfloat16", "float32", "float64"):
                return out
            # 1.0 where every reduced element is the infinity (same axes: the stock ReduceMin)
            is_inf = bb.normalize(relax.op.astype(relax.op.equal(x, relax.const(infinity, dtype)),
                                                  "float32"))
            all_inf = bb.normalize(reduce_min.get_converter(version)(
                bb, [is_inf, *inputs[1:]], dict(original), params))
            return relax.op.where(relax.op.equal(all_inf, relax.const(1.0, "float32")),
                                  relax.const(infinity, dtype), out)

        return classmethod(impl)

    versions = sorted(int(d.replace("_impl_v", "")) for d in dir(stock) if d.startswith("_impl_v"))
    return type(name, (stock,), {f"_impl_v{v}": converter(v) for v in versions})


def _isinf(stock):
    from tvm import relax

    class IsInf(stock):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            x = inputs[0]
            out = relax.op.isinf(x)
            zero = relax.const(0, str(x.ty.dtype))
            false = relax.const(False, "bool")
            if not attr.get("detect_negative", 1):
                out = relax.op.where(relax.op.greater(x, zero), out, false)
            if not attr.get("detect_positive", 1):
                out = relax.op.where(relax.op.less(x, zero), out, false)
            return out

    return IsInf


def _bitshift(stock):
    from tvm import relax

    class BitShift(stock):
        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            import tvm

            out = bb.normalize(stock._impl_v11(bb, inputs, attr, params))
            x, shift = inputs[0], inputs[1]
            dtype = str(x.ty.dtype)
            bits = tvm.runtime.DataType(dtype).bits
            # shifting by the width or more (or by a negative amount) shifts everything out: 0,
            # or -1 for a right shift of a negative signed value (sign fill)
            in_range = relax.op.logical_and(
                relax.op.less(shift, relax.const(bits, str(shift.ty.dtype))),
                relax.op.greater_equal(shift, relax.const(0, str(shift.ty.dtype))))
            direction = attr.get("direction", b"LEFT")
            direction = direction.decode() if isinstance(direction, bytes) else direction
            shifted_out = relax.const(0, dtype)
            if direction == "RIGHT" and not dtype.startswith("uint"):
                shifted_out = relax.op.where(relax.op.less(x, relax.const(0, dtype)),
                                             relax.const(-1, dtype), relax.const(0, dtype))
            return relax.op.where(in_range, out, shifted_out)

    return BitShift


def _eyelike(stock):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import get_type

    class EyeLike(stock):
        @classmethod
        def _impl_v9(cls, bb, inputs, attr, params):
            dtype = get_type(attr["dtype"]) if "dtype" in attr else str(inputs[0].ty.dtype)
            k = attr.get("k", 0)
            # the input gives the shape only; ``dtype`` (default: the input's) gives the type.
            # With a static shape the matrix is a constant (TVM's eye_like lowering keeps the
            # input's type when k != 0)
            shape = inputs[0].ty.shape
            dims = [int(d) for d in shape.values] if hasattr(shape, "values") and all(
                isinstance(d, tvm.tirx.IntImm) for d in shape.values) else None
            if dims is not None and len(dims) == 2:
                return relax.const(np.eye(dims[0], dims[1], k, dtype=dtype), dtype)
            return relax.op.astype(relax.op.eye_like(inputs[0], k, dtype), dtype)

    return EyeLike


def _elu_like(stock, name: str):
    from tvm import relax

    class EluLike(stock):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            x = inputs[0]
            dtype = str(x.ty.dtype)
            if name == "Elu":
                alpha, gamma = float(attr.get("alpha", 1.0)), 1.0
            else:
                alpha = float(attr.get("alpha", 1.67326319217681884765625))
                gamma = float(attr.get("gamma", 1.05070102214813232421875))
            # constants in the input's type (the stock converter's are float32 only)
            negative = relax.op.multiply(relax.const(-alpha, dtype), relax.op.nn.relu(
                relax.op.subtract(relax.const(1.0, dtype), relax.op.exp(x))))
            out = relax.op.add(negative, relax.op.nn.relu(x))
            return out if name == "Elu" else relax.op.multiply(relax.const(gamma, dtype), out)

    EluLike.__name__ = name
    return EluLike


def _space_to_depth(stock):
    from tvm import relax

    class SpaceToDepth(stock):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            mode = attr.get("mode", b"DCR")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode != "CRD":
                return stock._impl_v1(bb, inputs, attr, params)
            k = int(attr["blocksize"])
            b, c, h, w = inputs[0].ty.shape
            x = relax.op.reshape(inputs[0], (b, c, h // k, k, w // k, k))
            x = relax.op.permute_dims(x, [0, 1, 3, 5, 2, 4])  # channel-major: c, then block
            return relax.op.reshape(x, (b, c * k * k, h // k, w // k))

    return SpaceToDepth


def _matmul(stock):
    from tvm import relax

    class MatMul(stock):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            a, b = inputs[0], inputs[1]
            dtype = str(a.ty.dtype)
            if dtype not in ("float16", "bfloat16") or str(b.ty.dtype) != dtype:
                return stock._impl_v13(bb, inputs, attr, params)
            # accumulate half-precision products in float32, as onnxruntime's kernels do
            out = relax.op.matmul(a, b, out_dtype="float32")
            return relax.op.astype(out, dtype)

    return MatMul


def _mod(stock):
    from tvm import relax

    class Mod(stock):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            out = bb.normalize(stock._impl_v10(bb, inputs, attr, params))
            x, y = inputs[0], inputs[1]
            dtype = str(x.ty.dtype)
            if attr.get("fmod", 0) or not dtype.startswith(("float", "bfloat")):
                return out
            # floor-mod by ±inf: x when x has y's sign (or is 0), else y (numpy's and onnxruntime's
            # result); x - floor(x/y)·y gives NaN there
            zero = relax.const(0.0, dtype)
            same_sign = relax.op.greater_equal(relax.op.multiply(x, y), zero)
            by_infinity = relax.op.where(same_sign, relax.op.add(x, relax.op.multiply(y, zero)), y)
            return relax.op.where(relax.op.logical_and(relax.op.isinf(y),
                                                       relax.op.logical_not(relax.op.isinf(x))),
                                  by_infinity, out)

    return Mod


def _nms(stock):
    import tvm
    from tvm import relax

    class NonMaxSuppression(stock):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            inputs = list(inputs)
            iou = inputs[3] if len(inputs) > 3 else None
            if isinstance(iou, tvm.ir.GenericConst):
                # ONNX suppresses a box whose IoU is *greater* than the threshold; TVM's kernel
                # suppresses at >=. The next float32 up makes the two agree exactly.
                value = np.float32(iou.value.numpy().item())
                inputs[3] = relax.const(np.nextafter(value, np.float32(np.inf)), "float32")
            return stock._impl_v10(bb, inputs, attr, params)

    return NonMaxSuppression


def install(table: dict) -> None:
    """Replace/add mmopt's converters in ``table`` (a copy of TVM's converter map)."""
    for name in ("Sum", "Max", "Min", "Mean"):
        table[name] = _pairwise(table[name])
    table["OneHot"] = _onehot(table["OneHot"])
    table["Softmax"] = _softmax(table["Softmax"])
    table["ReduceMax"], table["ReduceMin"] = (_extreme_reduction(table, "ReduceMax"),
                                              _extreme_reduction(table, "ReduceMin"))
    table["MatMul"] = _matmul(table["MatMul"])
    table["IsInf"] = _isinf(table["IsInf"])
    table["Mod"] = _mod(table["Mod"])
    table["NonMaxSuppression"] = _nms(table["NonMaxSuppression"])
    table["BitShift"] = _bitshift(table["BitShift"])
    table["EyeLike"] = _eyelike(table["EyeLike"])
    table["Elu"] = _elu_like(table["Elu"], "Elu")
    table["Selu"] = _elu_like(table["Selu"], "Selu")
    table["SpaceToDepth"] = _space_to_depth(table["SpaceToDepth"])
    table["BitCast"] = _bitcast()
    table["FusedLSTM"] = _fused_lstm()
    from mmopt.extend import default_registry
    from mmopt.extend.kernels import converters as kernel_converters

    table.update(kernel_converters(default_registry()))
