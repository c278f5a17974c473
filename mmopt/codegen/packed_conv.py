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
Output channels no full vector divides (24 on AVX-512) are packed with zero weights up to whole
vectors and cropped after the convolution
(:func:`mmopt.codegen.register_tiles.padded_channels`); a per-channel gate in front of the
convolution (squeeze-and-excitation) scales the packed weights instead of the map
(:func:`channel_scaled`).
Depthwise and grouped convolutions keep their HWIO weights (already one contiguous row per tap).
"""

from __future__ import annotations

import contextvars

import numpy as np

from mmopt.codegen import prefetch
from mmopt.codegen.cpu_contraction import symbolic_tile
from mmopt.codegen.register_tiles import (known_multiple, padded_channels, pick_lanes,
                                          register_tile, rounded_rows)
from mmopt.codegen.relax_util import (conv_output_size, op_name, rewrite_nhwc_convs, static_shape,
                                      tensor_dtype)
from mmopt.codegen.tir_util import static_extent

#: block name of the packed float convolution
PACKED_BLOCK = "mmopt_conv2d_nhwc_packed"

#: whether convolutions with symbolic shapes are packed too (see :func:`mmopt.codegen.build.build`:
#: off for a second attempt when TVM's FuseTIR fails on a dynamic model's packed convolutions)
PACK_SYMBOLIC: contextvars.ContextVar[bool] = contextvars.ContextVar("mmopt_pack_symbolic",
                                                                      default=True)


def output_tile(out_channels: int, rows: int | None, lanes: int, registers: int,
                full_rate_lanes: int | None = None) -> int:
    """The output-channel tile (floats) of the default contraction schedule for an output with
    ``out_channels`` contiguous channels and ``rows`` rows along the next axis:
    ``nv`` vectors of ``vec`` lanes (:func:`mmopt.codegen.register_tiles.register_tile`, which
    ``full_rate_lanes`` steers as the schedule's target does; 1 when the channels do not
    vectorize)."""
    vec = pick_lanes(out_channels, lanes)
    if vec == 1:
        return 1
    return register_tile(out_channels, rows, vec, registers,
                         full_rate_lanes=full_rate_lanes)[1] * vec


def _packed_conv_te(data, packed, strides, padding, dilation, out_channels, rows=None):
    """The NHWC convolution of ``data`` with ``packed`` weights. ``rows``: for an output of
    symbolic width, or a static one without a good divisor
    (:func:`mmopt.codegen.register_tiles.rounded_rows`), the row count of the schedule's register
    tile: the convolution is computed on the width rounded up to a multiple of ``rows`` (the
    columns beyond the input read zeros or its last column, their results are dropped when the
    output is cropped), so that every register tile is whole. A
    predicated last tile would keep the accumulators out of registers: TVM cannot bound the
    accumulator buffer by the tile under the predicate and allocates it for the whole row (the
    symbolic-rows case of :func:`mmopt.codegen.cpu_contraction._pad_contraction`)."""
    from tvm import te, tirx

    n, h, w = data.shape[:3]  # batch, height, width may be symbolic
    ic = int(data.shape[3])
    blocks, kh, kw, _, tile = (int(d) for d in packed.shape)
    # the packed weights may hold more output channels than the result (zeros: see
    # :func:`mmopt.codegen.register_tiles.padded_channels`); the extra ones are cropped
    computed_channels = blocks * tile
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    hp, wp = h + top + bottom, w + left + right
    oh, ow = conv_output_size(hp, kh, sh, dh), conv_output_size(wp, kw, sw, dw)
    symbolic_rows = rows is not None and rows > 1
    ow_padded = (ow + rows - 1) // rows * rows if symbolic_rows else ow
    if any(padding):
        source = data

        def pad(b, y, x, c):
            inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
            return tirx.if_then_else(inside, source[b, y - top, x - left, c],
                                     tirx.const(0.0, data.dtype))

        # for a rounded-up width: the columns its last tile reads, zeros beyond the padding
        # (written in terms of that width, so that TVM sees the copy covers what the
        # convolution reads)
        width = (ow_padded - 1) * sw + (kw - 1) * dw + 1 if symbolic_rows else wp
        data = te.compute((n, hp, width, ic), pad, name="pad_temp")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, ic), "rc")
    if not symbolic_rows and computed_channels == out_channels:
        return te.compute(
            (n, oh, ow, out_channels),
            lambda b, y, x, c: te.sum(
                data[b, y * sh + rh * dh, x * sw + rw * dw, rc]
                * packed[c // tile, rh, rw, rc, c % tile], axis=[rh, rw, rc]),
            name=PACKED_BLOCK)

    def column(x):
        # the input itself (no pad_temp): the extra columns read its last one. (A clamped read of
        # a pad_temp would break TVM's region cover check between the two blocks.)
        return x if any(padding) or not symbolic_rows else tirx.min(x, wp - 1)

    conv = te.compute(
        (n, oh, ow_padded, computed_channels),
        lambda b, y, x, c: te.sum(
            data[b, y * sh + rh * dh, column(x * sw + rw * dw), rc]
            * packed[c // tile, rh, rw, rc, c % tile], axis=[rh, rw, rc]),
        name=PACKED_BLOCK)
    return te.compute((n, oh, ow, out_channels), lambda b, y, x, c: conv[b, y, x, c],
                      name=f"{PACKED_BLOCK}_crop")


def _padding_schedulable(call, w, *, tile: int, rows: int) -> bool:
    """Whether the convolution of ``call`` computed on its width rounded up to ``rows`` can be
    scheduled: TVM must prove that the rounded-up result covers the cropped one, which it does for
    a plain symbolic width and not for every expression of one. Tried on the TE itself."""
    from tvm import s_tir, te

    attrs = call.attrs
    kh, kw, ic, oc = w.shape
    data = te.placeholder(list(call.args[0].ty.shape), "float32", "data")
    packed = te.placeholder((oc // tile, kh, kw, ic, tile), "float32", "packed")
    out = _packed_conv_te(data, packed, [int(v) for v in attrs.strides],
                          [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], oc,
                          rows)
    try:
        sch = s_tir.Schedule(te.create_prim_func([data, packed, out]))
        loops = sch.get_loops(sch.get_sblock(PACKED_BLOCK))
        sch.reverse_compute_at(sch.get_sblock(f"{PACKED_BLOCK}_crop"), loops[0])
    except Exception:  # noqa: BLE001 - TVM's ScheduleError: not a stage pipeline
        return False
    return True


def channel_scaled(data, lookup, channels: int, weights_per_channel: int):
    """``(x, s)`` when the NHWC tensor ``data`` is bound to ``x * s`` with ``s`` one value per
    channel (``[1, 1, 1, C]``): a squeeze-and-excitation block's gate (EfficientNet,
    MobileNetV3), and the convolution's weights per input channel (``weights_per_channel``:
    ``kh * kw * OC``) are fewer than the map's positions per channel (``H * W``); None
    otherwise.

    A convolution of such a product is computed as the convolution of ``x`` with weights scaled
    per input channel, ``conv(x * s, W)[o] = sum_c x_c s_c W_oc = conv(x, W * s)[o]`` (zero
    padding stays zero). The weights (``kh * kw * C * OC`` values) are scaled at run time in a
    kernel of their own, instead of the whole map ``x`` (``H * W * C``) being multiplied and
    written once more: EfficientNet-B0's gated maps are up to 56 x 56 x 144, against 144 x 24
    projection weights (on its 7 x 7 maps, 1152 x 320 weights, the map is scaled instead)."""
    from tvm import relax

    if not isinstance(data, relax.Var):
        return None
    bound = lookup(data)
    if bound is None or op_name(bound) != "relax.multiply":
        return None
    shape = static_shape(data)
    if shape is None or len(shape) != 4 or shape[1] * shape[2] <= weights_per_channel:
        return None
    for x, s in (bound.args, bound.args[::-1]):
        if static_shape(x) == shape and static_shape(s) == [1, 1, 1, channels] \
                and tensor_dtype(s) == "float32":
            return x, s
    return None


def pack_float_convs(lanes: int, registers: int, winograd: bool = True,
                     full_rate_lanes: int | None = None):
    """The Relax pass described in the module docstring (``lanes``: float32 lanes per vector,
    ``registers``: vector registers, ``full_rate_lanes``: the narrowest vector at the FMA units'
    full rate, as in :mod:`mmopt.targets.cpu`; ``winograd``: 3x3 convolutions where
    :mod:`mmopt.codegen.winograd` applies use it instead)."""
    import tvm
    from tvm import relax

    bounds = {}
    # the register tile's rule for vectors wider than the FMA units
    # (:func:`mmopt.codegen.register_tiles.register_tile`) applies where the weights stream from
    # memory; the schedules decide that on the packed module
    # (:func:`mmopt.codegen.cpu_contraction._tile_rate_lanes`), so the weights are packed, that
    # module measured, and, where they stream, packed again for those tiles (None: full rate)
    tile_rate = None

    def pack(call, w, builder, lookup):
        if winograd:
            from mmopt.codegen import winograd as wino

            new = wino.rewrite(call, w, builder, lanes, registers, bounds, tile_rate)
            if new is not None:
                return new
        attrs = call.attrs
        if (tensor_dtype(call.args[0]) != "float32" or w.dtype != np.float32
                or (attrs.out_dtype is not None and str(attrs.out_dtype) not in ("", "float32"))):
            return None
        kh, kw, ic, oc = w.shape
        computed = oc  # the output channels the kernel computes (padded: cropped to ``oc``)
        if not PACK_SYMBOLIC.get() and not all(hasattr(d, "value") for d in call.ty.shape):
            from mmopt.codegen.schedule_fallbacks import note_skip

            note_skip(f"conv2d {'x'.join(str(d) for d in w.shape)} (HWIO)", "pack_weights",
                      "symbolic shape: weights not packed (HWIO)")
            return None
        # NHWC: the rows of the schedule's register tile (symbolic: tiled as the schedule does,
        # and padded to whole tiles unless the rows divide the width's known multiple)
        out_width = static_extent(call.ty.shape[2])
        rows = None
        if out_width is None:
            multiple = known_multiple(call.ty.shape[2])
            vec, rows, nv = symbolic_tile(oc, None, lanes, registers, multiple)
            if multiple % rows == 0:
                rows = None
            elif not _padding_schedulable(call, w, tile=nv * vec, rows=rows):
                # TVM cannot prove the rounded-up width covers the cropped one (a width of
                # ``2 * w_blocks``): the schedule takes rows that divide the width instead
                vec, rows, nv = symbolic_tile(oc, None, lanes, registers, multiple, exact=True)
                rows = None
            tile = nv * vec if vec > 1 else 1
        else:
            # a width without a good divisor (YOLOX's 13 columns at 416 x 416: 1-row register
            # tiles) is computed rounded up to whole tiles of rows and cropped, as a matmul's
            # rows are padded (:func:`mmopt.codegen.register_tiles.pad_multiples`)
            # channels no full vector divides (24 on AVX-512) are computed padded to whole
            # vectors and cropped
            height = static_extent(call.ty.shape[1])
            computed = padded_channels(oc, out_width * (height if height is not None else 64),
                                       lanes, full_rate_lanes)
            rows = rounded_rows(computed, out_width, lanes, registers)
            if rows is not None:
                out_width = -(-out_width // rows) * rows
            tile = output_tile(computed, out_width, lanes, registers, tile_rate)
            if computed != oc:
                w = np.concatenate([w, np.zeros((kh, kw, ic, computed - oc), w.dtype)], axis=3)
        if tile == 1 or computed % tile:
            return None
        packed = np.ascontiguousarray(
            w.reshape(kh, kw, ic, computed // tile, tile).transpose(3, 0, 1, 2, 4))
        data, weights = call.args[0], relax.const(packed)
        scaled = channel_scaled(data, lookup, ic, kh * kw * computed)
        if scaled is not None:
            # conv(x * s, W) = conv(x, W * s): the per-channel scale moves onto the weights
            data, scale = scaled
            weights = builder.emit(relax.op.multiply(
                weights, builder.emit(relax.op.reshape(scale, (1, 1, 1, ic, 1)))))
        return builder.call_te(
            _packed_conv_te, data, weights, [int(v) for v in attrs.strides],
            [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation], int(oc), rows,
            primfunc_name_hint=PACKED_BLOCK)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_pack_float_convs")
    def _pass(mod, _ctx):
        from mmopt.codegen.symbolic_dims import symbolic_bounds

        nonlocal tile_rate
        bounds.clear()
        bounds.update(symbolic_bounds(mod))
        tile_rate = None
        packed = rewrite_nhwc_convs(mod, pack, grouped=False, with_lookup=True)
        target = tvm.target.Target.current(allow_none=True)
        if (full_rate_lanes and full_rate_lanes < lanes and target is not None
                and prefetch.weights_from_memory(relax.transform.DeadCodeElimination()(packed),
                                                 target)):
            tile_rate = full_rate_lanes
            packed = rewrite_nhwc_convs(mod, pack, grouped=False, with_lookup=True)
        return packed

    return _pass
