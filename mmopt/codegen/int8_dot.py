"""Integer dot-product instructions: quantized convolutions on pre-packed weights, tensorized.

After :func:`mmopt.codegen.quantized.lower_qdq` an integer convolution is ``conv2d`` of 8-bit
activations and int8 weights into int32. :func:`pack_dot_convs` gives it weights packed at compile
time for the target's instruction (:class:`DotProduct`: x86 AVX-512 VNNI ``vpdpbusd``, AArch64
``sdot``, and on x86 without VNNI the exact int16 ``vpmaddwd`` / ``vpmaddubsw`` products of
:mod:`mmopt.codegen.int8_x86`), and :func:`dot_schedule_pass` schedules the fused kernels that hold
one (:func:`schedule_dot_conv`: register tiles over output pixels and channel blocks, the
instruction loop tensorized). A kernel whose schedule or tensorization fails runs the default
schedule's integer loop, reported as degraded; :mod:`mmopt.codegen.int8_paths` records the path of
every kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmopt.codegen.int8_paths import log_int8_kernels
from mmopt.codegen.register_tiles import largest_divisor
from mmopt.codegen.relax_util import conv_output_size, rewrite_nhwc_convs, tensor_dtype

@dataclass(frozen=True)
class DotProduct:
    """One integer dot-product instruction: ``acc[lanes] (s32) += sum_k a[k] * b[lane, k]`` for
    ``k < block``, with the ``block`` activation values broadcast to every lane.

    ``data_dtype`` is what the integer convolutions read (what
    :func:`mmopt.codegen.quantized.lower_qdq` produces);
    ``operand_dtype`` what the instruction multiplies: when they differ, the kernel widens its
    input once (:data:`WIDEN_BLOCK`) before the register-tiled loops. Weights are packed at compile
    time as ``weight_dtype``."""

    name: str
    lanes: int  #: int32 lanes = output channels per instruction
    data_dtype: str  #: activation type the integer convolutions read
    llvm_intrinsic: str
    accumulators: int  #: at most this many accumulators in a register tile
    block: int = 4  #: activation values one lane sums per instruction (the reduction block k)
    operand_dtype: str = ""  #: activation type the instruction reads ("": ``data_dtype``)
    weight_dtype: str = "int8"
    registers: int = 32  #: architectural vector registers
    #: registers one reduction step needs besides the accumulators and the weight vectors (the
    #: broadcast activations; a product that is added separately)
    temporaries: int = 1
    mnemonic: str = ""  #: the instruction's assembly name (``objdump`` shows it)
    tiles: str = "rows"  #: register tile policy (:meth:`register_tile`)
    #: largest weight magnitude the instruction multiplies exactly (None: any int8)
    weight_limit: int | None = None

    def accepts(self, weights: np.ndarray) -> bool:
        """Whether the instruction computes a convolution with these int8 ``weights`` exactly."""
        return self.weight_limit is None or (
            weights.size == 0 or int(np.abs(weights.astype(np.int16)).max()) <= self.weight_limit)

    def packs(self, lanes: int, block: int, weight_dtype: str) -> bool:
        """Whether packed weights ``[..., lanes, block]`` of ``weight_dtype`` are this
        instruction's layout."""
        return (self.lanes, self.block, self.weight_dtype) == (lanes, block, weight_dtype)

    @property
    def operand(self) -> str:
        return self.operand_dtype or self.data_dtype

    @property
    def intrinsic(self) -> str:
        return f"mmopt_{self.name}_{self.lanes}x{self.block}_local"

    def register_tile(self, blocks: int, width: int, rows_limit: int = 8, window: int = 1,
                      steps: int = 0) -> tuple[int, int]:
        """``(rows, nv)``: ``rows`` output pixels along the width (dividing ``width``, at most
        ``rows_limit``) x ``nv`` vectors of output channels (dividing ``blocks``), at most
        :attr:`accumulators` of them, and fitting the registers with the weight vectors and
        :attr:`temporaries`. ``window``: the kernel's taps (KH * KW); ``steps``: the reduction
        steps (instructions) per output vector, ``window * IC / block``.

        ``tiles == "rows"`` (the byte dot products): ``nv`` up to ``accumulators // rows_limit``,
        then as many rows as fit. ``tiles == "square"`` (``vpmaddwd``; measured on AVX2, Zen 4):
        a 1x1 convolution whose weights for 4..8 vectors fit :data:`ONE_ROW_WEIGHT_BYTES` takes
        one output pixel x those vectors (the weights stay in L1 and are read as memory
        operands: 1x8 and 1x6 tiles beat 8x1 by 1.2-1.45x; with larger weights 2x4 wins);
        otherwise the most accumulators, then the fewest loads per reduction step (``rows``
        broadcasts + ``nv`` weight vectors), then the most vectors across (2x4 beats 8x1 on 3x3
        layers)."""
        if self.tiles == "rows":
            nv = largest_divisor(blocks, max(1, self.accumulators // rows_limit))
            limit = min(rows_limit, self.accumulators // nv,
                        (self.registers - self.temporaries) // nv - 1)
            return largest_divisor(width, max(1, limit)), nv
        if window == 1:
            nv = largest_divisor(blocks, min(8, self.accumulators))
            vector_bytes = steps * self.lanes * self.block * np.dtype(self.weight_dtype).itemsize
            if nv >= 4 and nv * vector_bytes <= ONE_ROW_WEIGHT_BYTES:
                return 1, nv
        best, best_key = (1, 1), None
        for nv in range(1, min(blocks, self.accumulators) + 1):
            if blocks % nv:
                continue
            for rows in range(1, min(width, rows_limit) + 1):
                acc = rows * nv
                if (width % rows or acc > self.accumulators
                        or acc + nv + self.temporaries > self.registers):
                    continue
                key = (acc, -(rows + nv), nv)
                if best_key is None or key > best_key:
                    best, best_key = (rows, nv), key
        return best

    def implementation(self):
        """The TIR implementation of one instruction over ``a[block]``, ``b[lanes, block]`` and
        the ``local`` accumulator ``acc[lanes]`` (byte operands, one instruction)."""
        from tvm.script import tirx as T
        from tvm.target import codegen

        lanes, data_dtype, nbytes = self.lanes, self.data_dtype, self.block * self.lanes
        # LLVM 22 (TVM 0.27's) types the byte operands as <N x i8>; x86 VNNI took <16 x i32> in
        # LLVM releases before 20
        byte_type = (f"int8x{nbytes}" if self is not VNNI or int(codegen.llvm_version_major()) >= 20
                     else f"int32x{lanes}")
        acc_type = f"int32x{lanes}"
        intrinsic = self.llvm_intrinsic

        @T.prim_func(s_tir=True)
        def impl(a: T.Buffer((4,), data_dtype, offset_factor=1),
                 b: T.Buffer((lanes, 4), "int8", offset_factor=1),
                 acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
            with T.sblock("root"):
                T.reads(acc[0:lanes], a[0:4], b[0:lanes, 0:4])
                T.writes(acc[0:lanes])
                # the 4 activation bytes as one int32, broadcast to every lane
                quad = T.reinterpret(a.vload([0], f"{data_dtype}x4"), dtype="int32")
                acc[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(intrinsic),
                    acc.vload([0], dtype=acc_type),
                    T.reinterpret(T.broadcast(quad, lanes), dtype=byte_type),
                    T.reinterpret(b.vload([0, 0], dtype=f"int8x{nbytes}"), dtype=byte_type),
                    dtype=acc_type)

        return impl


#: x86 AVX-512 VNNI: vpdpbusd, u8 x s8, 16 lanes
VNNI = DotProduct("vnni", 16, "uint8", "llvm.x86.avx512.vpdpbusd.512", 16, mnemonic="vpdpbusd")
#: the same on 256-bit registers (AVX-512VL), for output channel counts such as 24 or 40
VNNI_256 = DotProduct("vnni256", 8, "uint8", "llvm.x86.avx512.vpdpbusd.256", 16,
                      mnemonic="vpdpbusd")
#: and on 128-bit registers, for output channel counts that are multiples of 4 only (12, 20, 44)
VNNI_128 = DotProduct("vnni128", 4, "uint8", "llvm.x86.avx512.vpdpbusd.128", 16,
                      mnemonic="vpdpbusd")
#: AArch64 dot product (ARMv8.2 +dotprod): sdot, s8 x s8, 4 lanes
SDOT = DotProduct("sdot", 4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8", 24, mnemonic="sdot")

#: weights a one-row register tile streams per output pixel at most (a third of the smallest L1
#: data cache of the targeted CPUs, 32 KiB): measured on 1x1 layers, 1x8 tiles over 20 KiB of
#: weights beat 2x4 ones by 1.2x, over 32 KiB they lose
ONE_ROW_WEIGHT_BYTES = 24 << 10

#: block name of the packed integer convolution (the schedule rule looks for it)
DOT_BLOCK = "mmopt_qconv_dot"
#: block name of the kernel's widening of its input to the instruction's operand type
WIDEN_BLOCK = "mmopt_qconv_widen"


def dot_products_for(tvm_target) -> list[DotProduct]:
    """The integer dot-product instructions ``tvm_target`` has, widest first (all read the same
    activation type): a byte dot product where the CPU has one (x86 VNNI, AArch64 ``dotprod``),
    else on x86 the int16 multiply-add ``vpmaddwd`` (:mod:`mmopt.codegen.int8_x86`)."""
    from tvm.target import codegen

    from mmopt.codegen.int8_x86 import pmaddwd_products

    triple = str(tvm_target.attrs.get("mtriple", ""))
    try:
        if "x86_64" in triple and codegen.target_has_features(["avx512vnni"], tvm_target):
            narrow = codegen.target_has_features(["avx512vl"], tvm_target)
            return [VNNI, VNNI_256, VNNI_128] if narrow else [VNNI]
        if "aarch64" in triple and codegen.target_has_features(["dotprod"], tvm_target):
            return [SDOT]
        if "x86_64" in triple:
            return pmaddwd_products(tvm_target)
    except Exception:  # noqa: BLE001 - LLVM without that backend: no instruction
        return []
    return []


def dot_product_for(tvm_target) -> DotProduct | None:
    """The widest integer dot-product instruction ``tvm_target`` has, if any."""
    found = dot_products_for(tvm_target)
    return found[0] if found else None


def _dot_conv_te(data, packed, strides, dilation, out_channels, lanes, operand_dtype):
    """NHWC int8/uint8 data x packed weights ``[OC/lanes, KH, KW, IC/k, lanes, k]`` -> NHWC int32.
    Data of another type than ``operand_dtype`` is widened first (:data:`WIDEN_BLOCK`)."""
    from tvm import te

    n, h, w = data.shape[:3]  # batch, height, width may be symbolic (a dynamic model)
    _, kh, kw, icb, _, k = (int(d) for d in packed.shape)
    if str(data.dtype) != operand_dtype:
        source = data
        data = te.compute(source.shape, lambda *i: source(*i).astype(operand_dtype),
                          name=WIDEN_BLOCK)
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = conv_output_size(h, kh, sh, dh), conv_output_size(w, kw, sw, dw)
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    rc = te.reduce_axis((0, icb), "rc")
    ri = te.reduce_axis((0, k), "ri")
    return te.compute(
        (n, oh, ow, out_channels),
        lambda b, y, x, c: te.sum(
            data[b, y * sh + rh * dh, x * sw + rw * dw, rc * k + ri].astype("int32")
            * packed[c // lanes, rh, rw, rc, c % lanes, ri].astype("int32"),
            axis=[rh, rw, rc, ri]),
        name=DOT_BLOCK)


def pack_dot_convs(winograd: bool = True):
    """Integer NHWC conv2d (data of the instruction's type, constant s8 HWIO weights, int32 out,
    groups 1, IC % k == 0, OC % lanes == 0) -> a packed-weight convolution that
    :func:`schedule_dot_conv` tensorizes. Runs only for targets with a :class:`DotProduct`.
    ``winograd``: 3x3 convolutions where :mod:`mmopt.codegen.int8_winograd` applies (targets
    without a byte dot product) run as integer Winograd instead.

    Weights are re-laid out here, at compile time, to ``[OC/lanes, KH, KW, IC/k, lanes, k]`` of
    the instruction's weight type: the values one instruction multiplies are contiguous."""
    import tvm
    from tvm import relax

    def pack(call, w, builder, dots, lookup):
        attrs = call.attrs
        if (str(attrs.out_dtype) != "int32" or tensor_dtype(call.args[0]) != dots[0].data_dtype
                or any(int(p) for p in attrs.padding) or w.dtype != np.int8):
            return None
        if winograd:
            from mmopt.codegen import int8_winograd

            new = int8_winograd.rewrite(call, w, builder, dots, lookup)
            if new is not None:
                return new
        kh, kw, ic, oc = w.shape
        fitting = [d for d in dots if oc % d.lanes == 0 and ic % d.block == 0 and d.accepts(w)]
        if not fitting:
            return None
        dot = fitting[0]
        lanes, k = dot.lanes, dot.block
        packed = (w.reshape(kh, kw, ic // k, k, oc // lanes, lanes)
                  .transpose(4, 0, 1, 2, 5, 3).astype(dot.weight_dtype))
        return builder.call_te(_dot_conv_te, call.args[0], relax.const(packed),
                               [int(v) for v in attrs.strides], [int(v) for v in attrs.dilation],
                               oc, lanes, dot.operand, primfunc_name_hint=DOT_BLOCK)

    @tvm.transform.module_pass(opt_level=0, name="mmopt_pack_dot_convs")
    def _pass(mod, _ctx):
        target = tvm.target.Target.current(allow_none=True)
        dots = dot_products_for(target) if target is not None else []
        if not dots:
            return mod
        return rewrite_nhwc_convs(mod, lambda call, w, bb, lookup: pack(call, w, bb, dots, lookup),
                                  grouped=False, with_lookup=True)

    return _pass


def register_intrinsic(dot: DotProduct) -> str:
    """Register ``dot.intrinsic`` once. (TVM ships VNNI's dot product with a global-scope
    accumulator; the accumulators here live in a ``local`` register tile.)"""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    try:
        TensorIntrin.get(dot.intrinsic)
        return dot.intrinsic
    except Exception:  # noqa: BLE001 - not registered yet
        pass
    lanes, k, operand, weight = dot.lanes, dot.block, dot.operand, dot.weight_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((k,), operand, offset_factor=1),
             b: T.Buffer((lanes, k), weight, offset_factor=1),
             acc: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(acc[0:lanes], a[0:k], b[0:lanes, 0:k])
            T.writes(acc[0:lanes])
            for i in T.serial(0, lanes):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        acc[vi] = acc[vi] + T.cast(a[vj], "int32") * T.cast(b[vi, vj], "int32")

    TensorIntrin.register(dot.intrinsic, desc, dot.implementation())
    return dot.intrinsic


def accumulate_in_registers(sch, block_rv, tile_loop, reduction_loop, unrolled):
    """The register tile of a dot-product contraction ``block_rv`` whose loops are already
    ordered ``... tile_loop . reduction loops (from reduction_loop) . unrolled tile loops .
    [instruction]``: the accumulators are a ``local`` buffer written back after each tile
    (returned: the write-back block, for its epilogue), the ``unrolled`` loops unrolled, and the
    zeroing split out of the reduction (vectorized). Shared by the direct convolution
    (:func:`schedule_dot_conv`) and the integer Winograd GEMM
    (:func:`mmopt.codegen.int8_winograd.schedule_gemm`)."""
    writeback = sch.cache_write(block_rv, 0, "local")
    sch.reverse_compute_at(writeback, tile_loop, preserve_unit_loops=True)
    for loop in unrolled:
        sch.unroll(loop)
    init = sch.decompose_reduction(block_rv, reduction_loop)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])
    for loop in init_loops[-3:-1]:
        sch.unroll(loop)
    return writeback


def schedule_dot_conv(sch, block_rv, dot: DotProduct, rows_limit: int = 8,
                      tensorize: bool = True, target=None):
    """Register-tiled, tensorized schedule of a :data:`DOT_BLOCK` block (inside a fused PrimFunc).

    Tile: ``rows`` output pixels along the width x ``nv`` blocks of ``lanes`` output channels,
    accumulated in registers (:meth:`DotProduct.register_tile`); loop order
    ``parallel(oc block, n, h) . w_o . kh . kw . ic/k . w_i . oc_v . [lanes x k instruction]``, so
    a block of weights stays in cache while the image streams by. The element-wise epilogue
    (zero-point correction, scale, bias, requantization) is inlined into the write-back. An input
    widening stage (:data:`WIDEN_BLOCK`) runs once per call, with the zero-point padding inlined
    into it.

    ``tensorize=False`` leaves the instruction loop untensorized and returns it, for
    ``sch.tensorize(loop, dot.intrinsic)`` after the other blocks of the function are scheduled
    (TVM 0.27 cannot copy some tensorized schedules: ``Schedule.copy`` fails on them).
    """
    from mmopt.codegen.byte_lookup import table_read_lanes
    from mmopt.codegen.cpu_inline import (_inline_injective_chains, _inline_plain_copies,
                                          inline_epilogue)
    from mmopt.codegen.cpu_schedules import schedule_injective
    from mmopt.codegen.tir_util import _extent

    n, h, w, c, rh, rw, rc, ri = sch.get_loops(block_rv)
    window = _extent(sch, rh) * _extent(sch, rw)
    rows, nv = dot.register_tile(_extent(sch, c) // dot.lanes, _extent(sch, w), rows_limit,
                                 window, window * _extent(sch, rc))
    co, cv, ci = sch.split(c, factors=[None, nv, dot.lanes])
    wo, wi = sch.split(w, factors=[None, rows])
    sch.reorder(co, n, h, wo, rh, rw, rc, wi, cv, ci, ri)
    outer = sch.fuse(co, n, h)
    widen = [p for p in sch.get_producers(block_rv)
             if sch.get(p).name_hint.startswith(WIDEN_BLOCK)]
    if widen:
        _inline_plain_copies(sch, widen[0], padding=True)
    else:
        _inline_plain_copies(sch, block_rv)
    sch.parallel(outer)
    writeback = accumulate_in_registers(sch, block_rv, wo, rh, [wi, cv])
    # element-wise producers of the epilogue's other inputs (a residual's dequantization) inline
    # into it first: materialized, they cost full passes over memory and keep the epilogue from
    # fusing into the write-back (the int32 result then makes a round trip through memory too)
    _inline_injective_chains(sch, [DOT_BLOCK])
    inline_epilogue(sch, writeback)
    try:
        loops = sch.get_loops(writeback)
        # a byte-table read in the epilogue pays in wider vectors on some CPUs (AVX2 shuffles)
        width = table_read_lanes(sch.get(writeback), target) or dot.lanes
        if (_extent(sch, loops[-1]) or 1) % width:
            width = dot.lanes
        across, vec = sch.split(loops[-1], factors=[None, width])
        sch.vectorize(vec)
        # straight-line vector code for the whole tile: left as loops, LLVM re-vectorizes the
        # write-back across the vectors (element gathers instead of vector loads on AVX2)
        sch.unroll(across)
        sch.unroll(loops[-2])
    except Exception:  # noqa: BLE001 - an unusual epilogue: leave the write-back as is
        pass
    if widen:
        schedule_injective(sch, sch.get(widen[0]).name_hint, 2 * dot.lanes)
    if not tensorize:
        return ci
    sch.tensorize(ci, register_intrinsic(dot))
    return None


def _packed_layout(block) -> tuple[int, int, str] | None:
    """``(lanes, block, weight dtype)`` of a packed convolution block's weights
    ``[OC/lanes, KH, KW, IC/block, lanes, block]``: which :class:`DotProduct` packed them."""
    from mmopt.codegen.tir_util import region_buffer

    for region in block.reads:
        buf = region_buffer(region)
        if len(buf.shape) == 6:
            return int(buf.shape[4]), int(buf.shape[5]), str(buf.dtype)
    return None


def _has_dot_block(func) -> bool:
    # cheap filter first (a 6-D integer parameter: the packed weights), then the block names
    params = [p for p in func.params if hasattr(p, "shape")]  # TVM 0.27: parameters are buffers
    if not any(len(p.shape) == 6 and str(p.dtype) in ("int8", "int16") for p in params):
        return False
    return DOT_BLOCK in func.script(show_meta=False)


def dot_schedule_pass():
    """Schedules the fused PrimFuncs that contain a :data:`DOT_BLOCK` (others are left to the
    default CPU schedules, which run after this pass), then notes which path every quantized
    kernel takes (:func:`mmopt.codegen.int8_paths.record_int8_kernels`)."""
    import tvm
    from tvm.s_tir import dlight as dl

    from mmopt.codegen import cpu_schedules as cs
    from mmopt.codegen.tir_util import _iter_kinds

    class _Rule(dl.ScheduleRule):
        def apply(self, func, target, tunable):  # noqa: ARG002 - dlight's signature
            from tvm import s_tir

            dots = dot_products_for(target)
            if not dots or not _has_dot_block(func):
                return None
            sch = s_tir.Schedule(func)
            what = "dot-product schedule"
            try:
                root = sch.get_sblock("root")
                blocks = [b for b in sch.get_child_blocks(root)
                          if sch.get(b).name_hint.startswith(DOT_BLOCK)]
                if len(blocks) != 1:
                    return None
                block_name = sch.get(blocks[0]).name_hint
                layout = _packed_layout(sch.get(blocks[0]))
                dot = next(d for d in dots if layout is not None and d.packs(*layout))
                what = f"{dot.name} dot-product schedule"
                instruction_loop = schedule_dot_conv(sch, blocks[0], dot, tensorize=False,
                                                     target=target)
            except Exception as exc:  # noqa: BLE001 - leave it to the default schedules
                _note_integer_loop(func, what, exc)
                return None
            lanes = max(4, cs._vector_bits(target) // 32)  # noqa: SLF001
            for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
                block = sch.get(block_rv)
                if block.name_hint == block_name or block.name_hint.startswith(block_name + "_"):
                    continue
                kind = (cs.schedule_reduction if "R" in _iter_kinds(block)
                        else cs.schedule_injective)
                extra = () if kind is cs.schedule_reduction else (target,)
                sch = cs._try(sch, kind, block.name_hint, lanes, *extra)  # noqa: SLF001
            try:
                sch.tensorize(instruction_loop, register_intrinsic(dot))
            except Exception as exc:  # noqa: BLE001 - leave it to the default schedules
                _note_integer_loop(func, f"{dot.name} tensorization", exc)
                return None
            return sch

    return tvm.transform.Sequential([dl.ApplyDefaultSchedule(_Rule()), log_int8_kernels()],
                                    name="mmopt_dot_schedule")


def _note_integer_loop(func, what: str, exc: BaseException) -> None:
    """The packed integer convolution ``func``, whose instruction schedule failed, runs the default
    schedule's integer loop instead (correct, several times slower): reported as degraded, with
    the reason, and named by its packed weights' shape."""
    from mmopt.codegen.schedule_fallbacks import exception_reason, note_skip

    weights = next(("x".join(str(d) for d in p.shape) for p in func.params
                    if hasattr(p, "shape") and len(p.shape) == 6), "?")
    note_skip(f"{DOT_BLOCK} (weights {weights})", what,
              exception_reason(exc)[:200] + "; the integer loop runs instead",
              kind="degraded")
