"""Adjustments to how TVM's Relax ONNX importer translates a few operators.

* ``Clip`` with constant bounds is imported as ``R.maximum``/``R.minimum`` (plain binary Relax ops)
  instead of the importer's direct lowering to TIR (``emit_te``). Relax's ConvertLayout cannot see
  through TIR calls, so with the stock converter every ReLU6 of a MobileNet ends up wrapped in a
  pair of NHWC<->NCHW transposes; the binary ops propagate the layout and fuse into the conv
  epilogue. (ONNX ``Max``/``Min`` are no alternative: the importer stacks their inputs into a
  5-D tensor and reduces.) Non-constant bounds keep the stock converter, including its NaN-bound
  handling.

* Symbolic shapes (dynamic models): ``Cast`` of a symbolic shape to an integer type stays a shape
  expression (:func:`_cast_converter`), so shape computations reach ``Reshape`` as shapes;
  ``Resize`` by integer scales computes its output size in integers (:func:`_resize_converter`);
  ``Range`` up to a symbolic dim is ``R.arange`` over that dim (:func:`_range_converter`). Each
  keeps sizes provably equal where the model relies on it (a concatenation of an up-sampled map
  with a finer one; anchors added to a flattened map).

The overrides are installed only for the duration of one import (:func:`importer_overrides`).

ONNX-level rewrites run on a copy of the model just before import (:func:`legalize_for_import`);
both are exact and keep the model runnable on onnxruntime:

* ``ConvTranspose`` whose kernel equals its stride (no padding, dilation or groups; the 2x
  up-sampling of FPN/DBNet heads) -> a 1x1 ``Conv`` to ``C_out * k * k`` channels followed by
  ``DepthToSpace(k, "DCR")``: ``y[co, h*k+i, w*k+j] = sum_ci x[ci, h, w] * W[ci, co, i, j] + b[co]``,
  so ``W'[(i*k + j)*C_out + co, ci] = W[ci, co, i, j]`` and ``b'`` is ``b`` tiled ``k*k`` times. (DCR
  keeps each output pixel's channels contiguous in the NHWC conv output, so the depth-to-space
  copies whole channel vectors; see :mod:`mmopt.codegen.layout_cleanup`.) TVM
  computes a transposed conv over a zero-dilated input (k*k times the work, and no NHWC form).
  Weights of a quantized model (``DequantizeLinear`` of int8 constants, symmetric) stay quantized,
  re-laid out the same way (per-channel scales tiled ``k*k`` times), so the conv becomes an integer
  one like any other; an output quantized per tensor is quantized before the depth-to-space,
  which then moves bytes (a PP-OCR detector's 2x up-sampling, int8, x86-avx2: float 1x1 conv
  0.70 ms + float depth-to-space and requantization 0.94 ms before). Other weights are taken
  dequantized: the conv then runs in float on the dequantized input.
* Constant operands of Add/Sub/Mul/Div with a lower rank than the other operand are reshaped to
  the full rank (leading 1s; ONNX broadcasting aligns right, so this changes nothing). Relax's
  ConvertLayout only lays out same-rank operands: a ``[C,1,1]`` scale would otherwise pin its
  element-wise op to NCHW between two transposes.
* ``Gather`` of one constant index along a static dim (``q = qkv[0]`` of a ViT's attention) ->
  ``Slice`` of that index and ``Squeeze`` of the axis. The importer's ``take`` would read through
  the index tensor and, in TVM's "fast" mode, print a warning about out-of-bounds indices once per
  Gather at compile time (37 lines for ViT-Tiny); a slice is a plain strided copy that fuses with
  its neighbours.
* The constant operand of a commutative ``Add``/``Mul`` is put second. ConvertLayout takes a binary
  op's layout from its first operand, so ``scale * x`` after an NHWC conv went back to NCHW between
  two full-tensor transposes (the learnable affine blocks of PP-LCNet: 20 transpose pairs, about a
  quarter of the PP-OCR detector's time).
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


def _cast_converter(stock):
    """``Cast`` of a symbolic shape (a ``relax.ShapeExpr``: ``Shape`` of a tensor with symbolic
    dims) to int32 or int64 keeps the shape expression. The stock converter turns it into a
    tensor, after which the ``Shape -> Cast(int32) -> Slice -> Cast(int64) -> Concat -> Reshape``
    chains of Paddle exports reach ``Reshape`` as a tensor, which it refuses ("Reshape requires
    the input new shape to be Shape"). Dims are below 2**31, so the casts are exact."""
    from tvm import relax

    class Cast(stock):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            from tvm.relax.frontend.onnx.onnx_frontend import get_type

            if (isinstance(inputs[0], relax.ShapeExpr)
                    and str(get_type(attr["to"])) in ("int32", "int64")
                    and not all(hasattr(d, "value") for d in inputs[0].values)):
                return inputs[0]
            return super()._impl_v13(bb, inputs, attr, params)

    return Cast


def _normalizing_converter(stock):
    """``stock`` with its first input normalized (its type inferred) before conversion. With
    symbolic input dims some converters (SiLU's ``Mul``) return calls the importer has not
    normalized yet, and ``Resize`` reads its input's type (``x.ty.shape``): None there."""
    from tvm import relax

    def wrap(impl):
        def converter(cls, bb, inputs, attr, params):
            inputs = list(inputs)
            if inputs and isinstance(inputs[0], relax.Call) and inputs[0].ty is None:
                inputs[0] = bb.normalize(inputs[0])
            return impl(bb, inputs, attr, params)

        return classmethod(converter)

    methods = {name: wrap(getattr(stock, name)) for name in dir(stock)
               if name.startswith("_impl_v")}
    return type(stock.__name__, (stock,), methods)


def _resize_converter(stock):
    """``Resize`` of a 4-D input with symbolic spatial dims by constant integer scales (the 2x
    nearest up-sampling of FPN necks): the output size is ``dim * scale`` in integers. The stock
    converter computes ``int64(float32(scale) * float32(dim))``, which TVM cannot prove equal to
    the size of the map the result is concatenated with, so the concatenation loses its shape."""
    from tvm import relax
    from tvm.sym import Analyzer  # TVM 0.27's arith analyzer

    normalized = _normalizing_converter(stock)

    class Resize(normalized):
        @classmethod
        def _impl_v18(cls, bb, inputs, attr, params):
            from tvm.relax.frontend.onnx.onnx_frontend import get_constant

            x = inputs[0]
            if isinstance(x, relax.Call) and x.ty is None:
                x = bb.normalize(x)
            shape = getattr(x.ty, "shape", None)
            roi = inputs[1] if len(inputs) > 1 else None
            roi = get_constant(roi, params) if roi is not None else None
            scales = get_constant(inputs[2], params) if len(inputs) > 2 else None
            sizes = inputs[3] if len(inputs) > 3 else None
            if (shape is None or len(shape) != 4 or all(hasattr(d, "value") for d in shape)
                    or sizes is not None or scales is None
                    or not hasattr(scales, "value") or not hasattr(scales.value, "numpy")
                    or (roi is not None and (not hasattr(roi, "value")
                                             or roi.value.numpy().size not in (0,)))):
                return super()._impl_v18(bb, [x, *inputs[1:]], attr, params)
            factors = scales.value.numpy().tolist()
            if (len(factors) != 4 or factors[:2] != [1.0, 1.0]
                    or any(f < 1 or f != int(f) for f in factors[2:])):
                return super()._impl_v18(bb, [x, *inputs[1:]], attr, params)
            mode = attr.get("mode", b"nearest").decode("ascii")
            # simplified: ``(2 * h_blocks) * 2`` as ``h_blocks * 4``, the form every other
            # producer of that size has (FuseTIR matches parameter shapes structurally and
            # refused ``4`` against ``2`` when a packed convolution fused with the concatenation)
            simplify = Analyzer().simplify
            size = [simplify(shape[2] * int(factors[2])), simplify(shape[3] * int(factors[3]))]
            return relax.op.image.resize2d(
                x, size=relax.ShapeExpr(size),
                roi=[0.0, 0.0, 0.0, 0.0], layout="NCHW",
                method="nearest_neighbor" if mode == "nearest" else mode,
                coordinate_transformation_mode=attr.get(
                    "coordinate_transformation_mode", b"half_pixel").decode("ascii"),
                rounding_method=attr.get("nearest_mode", b"round_prefer_floor").decode("ascii"),
                cubic_alpha=attr.get("cubic_coeff_a", -0.75),
                cubic_exclude=attr.get("exclude_outside", 0),
                extrapolation_value=attr.get("extrapolation_value", 0.0))

    return Resize


def _range_converter(stock):
    """``Range(start, limit, delta)`` with constant integer ``start``/``delta`` and a symbolic
    ``limit`` (``Gather(Shape(x), axis)``: a dim of a tensor with symbolic dims) is
    ``R.arange(start, limit, delta)``, whose length TVM derives from ``limit`` itself. The stock
    converter computes the length with tensor ops and binds it to a fresh symbolic variable, which
    loses its relation to the input's dims (a detector's anchor grid then no longer provably
    matches the feature maps it is added to)."""
    from tvm import relax

    class Range(stock):
        @classmethod
        def _impl_v12(cls, bb, inputs, attr, params):
            from tvm.relax.frontend.onnx.onnx_frontend import get_constant

            start, limit, delta = (get_constant(i, params) for i in inputs[:3])

            def integer(x):
                value = getattr(x, "value", None)
                if value is None or not hasattr(value, "numpy"):
                    return None
                array = value.numpy()
                return int(array.item()) if array.size == 1 and array.dtype.kind in "iu" else None

            import tvm

            bound = limit if tvm.ir.is_prim_expr(limit) else None
            lo, step = integer(start), integer(delta)
            if (bound is None or lo is None or step is None or step <= 0
                    or hasattr(bound, "value") or str(getattr(bound, "ty", "")) != "int64"):
                return super()._impl_v12(bb, inputs, attr, params)
            dtype = str(start.value.numpy().dtype)
            return relax.op.arange(lo, bound, step, dtype)

    return Range


@contextlib.contextmanager
def importer_overrides():
    """Install mmopt's converter overrides into TVM's ONNX importer for one import."""
    from tvm.relax.frontend.onnx import onnx_frontend

    from mmopt.codegen.decompose import converters as decompose_converters

    original = onnx_frontend._get_convert_map  # noqa: SLF001 - no public registration hook

    def patched():
        table = dict(original())
        table["Clip"] = _clip_converter(table["Clip"])
        table["Cast"] = _cast_converter(table["Cast"])
        table["Resize"] = _resize_converter(table["Resize"])
        table["Range"] = _range_converter(table["Range"])
        decompose_converters.install(table)  # see mmopt/codegen/decompose/converters.py
        return table

    onnx_frontend._get_convert_map = patched  # noqa: SLF001
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original  # noqa: SLF001


# --------------------------------------------------------------------------------------------------
# ONNX-level rewrites


def _const_array(value):
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


def _const_or_dequantized(value):
    """A constant's value, or the float value of ``DequantizeLinear`` over constants (a quantized
    model's weights); ``None`` for anything else."""
    array = _const_array(value)
    if array is not None or value is None:
        return array
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    parts = [_const_array(v) if v is not None else None for v in node.inputs]
    x, scale = parts[0], parts[1]
    zero = parts[2] if len(parts) > 2 else None
    if x is None or scale is None or (len(parts) > 2 and node.inputs[2] is not None and zero is None):
        return None
    attr = node.attributes.get("axis")
    axis = attr.value if attr is not None else 1
    shape = [1] * x.ndim
    if scale.size > 1:
        shape[axis % x.ndim] = scale.size
    zero = np.zeros(1, np.int64) if zero is None else zero.astype(np.int64)
    return ((x.astype(np.int64) - zero.reshape(shape if zero.size > 1 else [1] * x.ndim))
            * scale.astype(np.float32).reshape(shape)).astype(np.float32)


def _initializer(graph, name: str, array: np.ndarray):
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype
    graph.register_initializer(value)
    return value


def conv_transpose_to_conv_depth_to_space(model) -> int:
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {k: a.value for k, a in node.attributes.items()}
        weight = _const_or_dequantized(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight is None or weight.ndim != 4:
            continue
        c_in, c_out, kh, kw = weight.shape
        kernel = list(attrs.get("kernel_shape", [kh, kw]))
        if (kh != kw or kernel != [kh, kw] or list(attrs.get("strides", [1, 1])) != [kh, kw]
                or any(attrs.get("pads", [0, 0, 0, 0])) or list(attrs.get("dilations", [1, 1])) != [1, 1]
                or attrs.get("group", 1) != 1 or any(attrs.get("output_padding", [0, 0]))
                or "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            continue
        bias = (_const_or_dequantized(node.inputs[2])
                if len(node.inputs) > 2 and node.inputs[2] is not None else None)
        if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
            continue
        k = kh

        def as_conv(w):  # [C_in, C_out, k, k] -> [k*k*C_out, C_in, 1, 1]
            return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * c_out, c_in, 1, 1))

        added = []
        quantized = _quantized_constant(node.inputs[1])
        if quantized is not None and quantized[3] in (1, -3):
            # a quantized model's weights stay quantized (per output channel: the scales tiled
            # k*k times), so the QDQ lowering makes the 1x1 conv an integer one
            wq, scale, zero, _axis = quantized
            tiled = (lambda a: np.tile(a.reshape(-1), k * k)) if scale.size > 1 else (lambda a: a)
            dq_inputs = [_initializer(graph, f"{node.name}.as_conv.weight_q", as_conv(wq)),
                         _initializer(graph, f"{node.name}.as_conv.weight_scale", tiled(scale))]
            if zero is not None:
                dq_inputs.append(_initializer(graph, f"{node.name}.as_conv.weight_zero",
                                              tiled(zero)))
            dequantize = ir.node("DequantizeLinear", dq_inputs, attributes={"axis": 0},
                                 name=f"{node.name}.as_conv.weight_dq")
            added.append(dequantize)
            weight_value = dequantize.outputs[0]
        else:
            weight_value = _initializer(graph, f"{node.name}.as_conv.weight", as_conv(weight))
        inputs = [node.inputs[0], weight_value]
        if bias is not None:
            inputs.append(_initializer(graph, f"{node.name}.as_conv.bias", np.tile(bias, k * k)))
        conv = ir.node("Conv", inputs, attributes={"kernel_shape": [1, 1]}, name=f"{node.name}.as_conv")
        if node.outputs[0].dtype is not None:  # None: the model's shapes were not inferred
            conv.outputs[0].dtype = node.outputs[0].dtype
        added.append(conv)
        # the output quantized per tensor: quantize before the depth-to-space, which then moves
        # bytes (a permutation commutes with an element-wise map), and the conv's write-back
        # requantizes
        quantize = _sole_per_tensor_quantize(node.outputs[0])
        moved = conv.outputs[0]
        if quantize is not None:
            early = ir.node("QuantizeLinear", [moved, *quantize.inputs[1:]],
                            attributes={k_: a.value for k_, a in quantize.attributes.items()},
                            name=f"{quantize.name}.before_depth_to_space")
            early.outputs[0].dtype = quantize.outputs[0].dtype
            added.append(early)
            moved = early.outputs[0]
        d2s = ir.node("DepthToSpace", [moved], attributes={"blocksize": k, "mode": "DCR"},
                      name=f"{node.name}.depth_to_space")
        added.append(d2s)
        graph.insert_before(node, added)
        if quantize is not None:
            _replace_output(graph, quantize, d2s.outputs[0])
            graph.remove(node, safe=True)
        else:
            _replace_output(graph, node, d2s.outputs[0])
        count += 1
    return count


def _quantized_constant(value):
    """``(integer array, scale, zero point or None, axis)`` of ``DequantizeLinear`` over 8-bit
    constants with zero points all 0 (symmetric weights), else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    x = _const_array(node.inputs[0])
    scale = _const_array(node.inputs[1])
    zero = (_const_array(node.inputs[2])
            if len(node.inputs) > 2 and node.inputs[2] is not None else None)
    if (x is None or scale is None or x.dtype != np.int8
            or (len(node.inputs) > 2 and node.inputs[2] is not None
                and (zero is None or np.any(zero != 0)))):
        return None
    attr = node.attributes.get("axis")
    axis = attr.value if attr is not None else 1
    return x, scale, zero, axis if scale.size > 1 else 1


def _sole_per_tensor_quantize(value):
    """The ``QuantizeLinear`` node that is ``value``'s only use, when its scale and zero point are
    scalars and the value is no graph output; else None."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0].node if hasattr(uses[0], "node") else uses[0][0]
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    scale = _const_array(node.inputs[1])
    zero = (_const_array(node.inputs[2])
            if len(node.inputs) > 2 and node.inputs[2] is not None else None)
    if scale is None or scale.size != 1 or (zero is not None and zero.size != 1):
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and zero is None:
        return None
    return node


def broadcast_constants_full_rank(model) -> int:
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type not in ("Add", "Sub", "Mul", "Div") or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.inputs) != 2 or any(v is None or v.shape is None for v in node.inputs):
            continue
        ranks = [len(v.shape) for v in node.inputs]
        for i, value in enumerate(node.inputs):
            other = ranks[1 - i]
            array = _const_array(value)
            if array is None or array.ndim >= other or array.ndim == 0 or array.size == 1 and other < 2:
                continue
            full = array.reshape((1,) * (other - array.ndim) + array.shape)
            node.replace_input_with(i, _initializer(graph, f"{node.name}.in{i}.full_rank", full))
            count += 1
    return count


def constants_on_the_right(model) -> int:
    """Commutative Add/Mul with a constant first operand get it second (see the module docstring)."""
    count = 0
    for node in model.graph:
        if (node.op_type in ("Add", "Mul") and node.domain in ("", "ai.onnx") and len(node.inputs) == 2
                and all(v is not None for v in node.inputs)
                and _const_array(node.inputs[0]) is not None
                and _const_array(node.inputs[1]) is None):
            first, second = node.inputs
            node.replace_input_with(0, second)
            node.replace_input_with(1, first)
            count += 1
    return count


def gather_scalar_to_slice(model) -> int:
    """``Gather(x, i, axis)`` with a constant scalar index inside a static dim (see the module
    docstring) -> ``Squeeze(Slice(x, [i], [i + 1], [axis]), [axis])``."""
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, indices = node.inputs
        index = _const_array(indices)
        if (index is None or index.ndim != 0 or index.dtype.kind not in "iu" or data is None
                or data.shape is None):
            continue
        attr = node.attributes.get("axis")
        axis = (attr.value if attr is not None else 0) % len(data.shape)
        dim = data.shape[axis]
        if not isinstance(dim, int) or not -dim <= int(index) < dim:
            continue
        start = int(index) % dim
        bounds = [_initializer(graph, f"{node.name}.as_slice.{what}", np.array([v], np.int64))
                  for what, v in (("starts", start), ("ends", start + 1), ("axes", axis))]
        piece = ir.node("Slice", [data, *bounds], name=f"{node.name}.as_slice")
        squeeze = ir.node("Squeeze", [piece.outputs[0], bounds[2]], name=f"{node.name}.squeeze")
        if node.outputs[0].dtype is not None:
            piece.outputs[0].dtype = node.outputs[0].dtype
        graph.insert_before(node, [piece, squeeze])
        _replace_output(graph, node, squeeze.outputs[0])
        count += 1
    return count


def _replace_output(graph, node, new_value) -> None:
    import onnx_ir as ir

    old = node.outputs[0]
    if old.dtype is not None:
        new_value.dtype = old.dtype
    new_value.shape = old.shape
    ir.convenience.replace_all_uses_with(old, new_value, replace_graph_outputs=True)
    name = old.name
    old.name = f"{name}.replaced"
    new_value.name = name  # graph outputs keep their names
    graph.remove(node, safe=True)


def legalize_for_import(model):
    """The ONNX-level rewrites above, on a copy of ``model`` (returned unchanged if none applies)."""
    import onnx_ir as ir
    import onnx_ir.passes.common

    work = ir.serde.deserialize_model(model)
    changed = (conv_transpose_to_conv_depth_to_space(work) + constants_on_the_right(work)
               + broadcast_constants_full_rank(work) + gather_scalar_to_slice(work))
    if not changed:
        return model
    if work.ir_version < 4:  # IR 3 and older list every initializer among the graph's inputs
        listed = {v.name for v in work.graph.inputs}
        for name, value in work.graph.initializers.items():
            if name not in listed:
                work.graph.inputs.append(value)
    ir.passes.common.RemoveUnusedNodesPass()(work)
    return ir.serde.serialize_model(work)
