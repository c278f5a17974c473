"""Float NHWC convolutions on weights pre-packed at compile time.

After ConvertLayout the weights of an NHWC convolution are HWIO: the default CPU schedule's
micro-kernel reads, for each input channel, one register tile's worth of output channels
(``tile`` floats), and consecutive input channels are ``OC`` floats apart. On the large layers of a
ResNet-50 that is a strided walk through megabytes of weights which the hardware prefetcher follows
badly (measured: 0.1-0.3 ms per large layer with weights out of cache).

:func:`pack_float_convs` re-lays the constant weights out as ``[OC/tile, KH, KW, IC, tile]``, where
``tile`` is the output-channel tile the default schedule picks (:func:`output_tile`), so the
micro-kernel streams them contiguously, and replaces the ``conv2d`` by an equivalent TE
convolution reading the packed weights (the schedule recognizes it as any other contraction).
Depthwise and grouped convolutions keep their HWIO weights (already one contiguous row per tap).
"""

from __future__ import annotations

import contextvars

import numpy as np

from mmopt.codegen.cpu_schedules import static_extent
from mmopt.codegen.relax_util import rewrite_dense_nhwc_convs, tensor_dtype

#: block name of the packed float convolution
PACKED_BLOCK = "mmopt_conv2d_nhwc_packed"

#: whether convolutions with symbolic shapes are packed too (see :func:`mmopt.codegen.build.build`:
#: off for a second attempt when TVM's FuseTIR fails on a dynamic model's packed convolutions)
PACK_SYMBOLIC: contextvars.ContextVar[bool] = contextvars.ContextVar("mmopt_pack_symbolic",
                                                                      default=True)


def output_tile(out_channels: int, rows: int | None, lanes: int, registers: int) -> int:
    """The output-channel tile (floats) of the default contraction schedule for an output with
    ``out_channels`` contiguous channels and ``rows`` rows along the next axis:
    ``nv`` vectors of ``vec`` lanes (:func:`mmopt.codegen.cpu_schedules.register_tile`; 1 when the
    channels do not vectorize)."""
    from mmopt.codegen.cpu_schedules import _pick_lanes, register_tile

    vec = _pick_lanes(out_channels, lanes)
    if vec == 1:
        return 1
    return register_tile(out_channels, rows, vec, registers)[1] * vec


def _packed_conv_te(data, packed, strides, padding, dilation, out_channels):
    from tvm import te, tirx

    n, h, w = data.shape[:3]  # batch, height, width may be symbolic
    ic = int(data.shape[3])
    _, kh, kw, _, tile = (int(d) for d in packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    if any(padding):
        source = data

        def pad(b, y, x, c):
            inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
            return tirx.if_then_else(inside, source[b, y - top, x - left, c],
                                     tirx.const(0.0, data.dtype))

        data = te.compute((n, h + top + bottom, w + left + right, ic), pad, name="pad_temp")
    hp, wp = h + top + bottom, w + left + right
    oh = (hp - (kh - 1) * dh - 1) // sh + 1
    ow = (wp - (kw - 1) * dw - 1) // sw + 1
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, ic), "rc")
    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, x, c: te.sum(
            data[b, y * sh + rh * dh, x * sw + rw * dw, rc] * packed[c // tile, rh, rw, rc, c % tile],
            axis=[rh, rw, rc]),
        name=PACKED_BLOCK)


def pack_float_convs(lanes: int, registers: int, winograd: bool = True):
    """The Relax pass described in the module docstring (``lanes``: float32 lanes per vector,
    ``registers``: vector registers, as in :mod:`mmopt.targets.cpu`; ``winograd``: 3x3
    convolutions where :mod:`mmopt.codegen.winograd` applies use it instead)."""
    import tvm
    from tvm import relax

    def pack(call, w, builder):
        if winograd:
            from mmopt.codegen import winograd as wino

            new = wino.rewrite(call, w, builder, lanes, registers)
            if new is not None:
                return new
        attrs = call.attrs
        if (tensor_dtype(call.args[0]) != "float32" or w.dtype != np.float32
                or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
            return None
        kh, kw, ic, oc = w.shape
        if not PACK_SYMBOLIC.get() and not all(hasattr(d, "value") for d in call.ty.shape):
            from mmopt.codegen.cpu_schedules import note_skip

            note_skip(f"conv2d {'x'.join(str(d) for d in w.shape)} (HWIO)", "pack_weights",
                      "symbolic shape: weights not packed (HWIO)")
            return None
        # NHWC: the rows of the schedule's register tile (symbolic: tiled as the schedule does)
        out_width = static_extent(call.ty.shape[2])
        tile = output_tile(oc, out_width, lanes, registers)
        if tile == 1 or oc % tile:
            return None
        packed = np.ascontiguousarray(w.reshape(kh, kw, ic, oc // tile, tile).transpose(3, 0, 1, 2, 4))
        return builder.call_te(
            _packed_conv_te, call.args[0], relax.const(packed), [int(v) for v in attrs.strides],
            [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], oc,
            primfunc_name_hint=PACKED_BLOCK)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_pack_float_convs")
    def _pass(mod, _ctx):
        return rewrite_dense_nhwc_convs(mod, pack)

    return _pass
