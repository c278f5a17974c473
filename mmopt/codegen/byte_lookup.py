"""256-entry byte-table reads as register permutes (AVX-512 VBMI) or shuffles (AVX2).

:mod:`mmopt.codegen.quantized_lut` turns the element-wise chains of a QDQ model (hard-swish,
sigmoid, ... between their quantize/dequantize pairs) into ``table[q]`` on an 8-bit tensor ``q``.
Vectorized, that read is a gather: on AMD Zen 4 a 16-lane ``vpgatherdd`` costs ~27 cycles
(measured in PP-OCRv4's first hard-swish layer, 1x1 conv 16 -> 32 channels on 320x320, 2 threads:
1.15 ms with the gather, 0.40 ms with the read removed), which made the table-reading kernels half
of the int8 detector's time. Without a gather, TVM reads lane by lane (a byte extract, a load and
an insert per lane).

A table of 256 *bytes* fits in four 64-byte registers, and AVX-512 VBMI permutes bytes across two
registers by an index vector: ``vpermi2b(t0, i, t1)`` returns, in each of 64 lanes,
``concat(t0, t1)[i & 127]``. So for up to 64 lanes at once::

    lo  = vpermi2b(table[0:64],    i, table[64:128])      # the entry when i < 128
    hi  = vpermi2b(table[128:192], i, table[192:256])     # the entry when i >= 128
    out = select(i >= 128, hi, lo)                         # the index's top bit (a mask register)

five instructions instead of a gather, exact (it reads the same bytes). AVX2 has only a 16-entry
byte shuffle (``vpshufb``, per 128-bit half), so there the table is read as 16 shuffles of its
16-byte chunks, each selecting only the lanes whose index falls in that chunk (:func:`_shuffle`):
64 operations per 32 lanes, 2.6x faster than lane by lane in a plain loop (Zen 4), and only worth
it for 32 lanes or more, which the schedules give table-reading write-backs on such CPUs
(:func:`table_read_lanes`).

:func:`byte_table_reads` is a TIR pass that runs after TVM's lowering (vectorization included) and
rewrites every vector read of a 256-entry 8-bit buffer at a computed index into that sequence
(VBMI: vectors of 8 to 64 lanes, widened to 64 by repeating them; AVX2: multiples of 32). A read
TVM left in a scalar loop is not rewritten (LLVM then vectorizes it with scalar byte loads:
correct, slower); for the requantizing write-backs that read tables,
:func:`lower_with_vector_rounding` makes sure TVM vectorizes (:mod:`mmopt.codegen.tir_pipeline`
runs both). Other targets keep 32-bit tables (:func:`byte_tables_pay`);
``quantized_lut`` stores 8-bit tables only where this pass will read them.
"""

from __future__ import annotations

import contextlib

import numpy as np

#: lanes of one ``vpermi2b`` (512-bit registers, bytes)
PERMUTE_LANES = 64
#: lanes of one AVX2 ``vpshufb`` (256-bit registers, bytes)
SHUFFLE_LANES = 32
TABLE_SIZE = 256
_INTRINSIC = "llvm.x86.avx512.vpermi2var.qi.512"
_SHUFFLE = "llvm.x86.avx2.pshuf.b"


def table_reader(tvm_target) -> str | None:
    """How ``tvm_target`` reads 8-bit tables: ``"permute"`` (x86-64 with AVX-512 VBMI: Ice Lake,
    Sapphire Rapids, Zen 4 and newer), ``"shuffle"`` (other x86-64 CPUs with AVX2), or None
    (32-bit tables and gathers)."""
    from tvm.target import codegen

    if tvm_target is None or "x86_64" not in str(tvm_target.attrs.get("mtriple", "")):
        return None
    try:
        if codegen.target_has_features(["avx512vbmi", "avx512bw"], tvm_target):
            return "permute"
        if codegen.target_has_features(["avx2"], tvm_target):
            return "shuffle"
    except Exception:  # noqa: BLE001 - LLVM without the x86 backend: keep the gathers
        return None
    return None


def byte_tables_pay(tvm_target) -> bool:
    """Whether ``tvm_target`` reads 8-bit tables with register permutes or shuffles rather than
    gathers (:func:`table_reader`)."""
    return table_reader(tvm_target) is not None


def reads_byte_table(block) -> bool:
    """Whether a TIR block reads a byte table (a 256-entry 8-bit buffer)."""
    from mmopt.codegen.tir_util import region_buffer

    return any(_is_table(region_buffer(r)) for r in block.reads)


def table_read_lanes_for(tvm_target) -> int | None:
    """:data:`SHUFFLE_LANES` where byte tables pay only in vectors that wide (AVX2 shuffles),
    else None."""
    return SHUFFLE_LANES if table_reader(tvm_target) == "shuffle" else None


def table_read_lanes(block, tvm_target) -> int | None:
    """The vector width a loop writing ``block`` should have when the block reads a byte table
    on a CPU that reads them with ``vpshufb`` (:data:`SHUFFLE_LANES`: the sequence costs the same
    for 8 lanes as for 32), else None (no table, or any width serves)."""
    return table_read_lanes_for(tvm_target) if reads_byte_table(block) else None


def _is_table(buffer) -> bool:
    shape = list(buffer.shape)
    return (str(buffer.dtype) in ("uint8", "int8") and len(shape) == 1
            and int(getattr(shape[0], "value", -1)) == TABLE_SIZE)


def _permute(indices, buffer, lanes: int):
    """The permute sequence of the module docstring: ``buffer[indices]`` for an ``int8xlanes``
    index vector (bytes 0..255 wrapped to int8), as an ``int8xlanes`` vector."""
    from tvm import tirx

    wide = indices
    if lanes < PERMUTE_LANES:
        wide = tirx.Shuffle([indices] * (PERMUTE_LANES // lanes), list(range(PERMUTE_LANES)))
    byte_vector = f"int8x{PERMUTE_LANES}"

    def part(start):
        return tirx.Cast(byte_vector, tirx.BufferLoad(
            buffer, [tirx.Ramp(tirx.const(start, "int32"), tirx.const(1, "int32"),
                               PERMUTE_LANES)]))

    low = tirx.call_llvm_pure_intrin(byte_vector, _INTRINSIC, part(0), wide, part(64))
    high = tirx.call_llvm_pure_intrin(byte_vector, _INTRINSIC, part(128), wide, part(192))
    picked = tirx.Select(wide < tirx.Broadcast(tirx.const(0, "int8"), PERMUTE_LANES), high, low)
    return picked if lanes == PERMUTE_LANES else tirx.Shuffle([picked], list(range(lanes)))


def _shuffle(indices, buffer, lanes: int):
    """``buffer[indices]`` for an ``int8xlanes`` index vector (``lanes`` a multiple of 32) with
    AVX2 byte shuffles. ``vpshufb(t, s)`` returns, in each byte, ``t[s & 15]`` from the same
    16-byte half of ``t``, or 0 where ``s``'s top bit is set. For the table's 16-byte chunk ``k``
    (repeated in both halves of ``t``) the selector ``saturating_add(i ^ 16k, 0x70)`` is below
    0x80 exactly when ``i``'s high nibble is ``k`` (then ``i ^ 16k`` is ``i``'s low nibble), so
    the 16 shuffles, OR-ed, give ``table[i]``: 64 vector operations per 32 lanes, against three
    scalar instructions per lane for the gather TVM emits."""
    from tvm import tirx

    one = tirx.const(1, "int32")
    chunks = [tirx.Cast("int8x16", tirx.BufferLoad(
        buffer, [tirx.Ramp(tirx.const(16 * k, "int32"), one, 16)])) for k in range(16)]
    parts = []
    for start in range(0, lanes, SHUFFLE_LANES):
        part = (indices if lanes == SHUFFLE_LANES
                else tirx.Shuffle([indices], list(range(start, start + SHUFFLE_LANES))))
        found = None
        for k, chunk in enumerate(chunks):
            nibble = tirx.Broadcast(tirx.const(int(np.int8(np.uint8(16 * k).view(np.int8))),
                                               "int8"), SHUFFLE_LANES)
            select = tirx.call_llvm_pure_intrin(
                f"int8x{SHUFFLE_LANES}", "llvm.uadd.sat", tirx.bitwise_xor(part, nibble),
                tirx.Broadcast(tirx.const(0x70, "int8"), SHUFFLE_LANES))
            table = tirx.Shuffle([chunk, chunk], list(range(SHUFFLE_LANES)))
            got = tirx.call_llvm_pure_intrin(f"int8x{SHUFFLE_LANES}", _SHUFFLE, table, select)
            found = got if found is None else tirx.bitwise_or(found, got)
        parts.append(found)
    return parts[0] if len(parts) == 1 else tirx.Shuffle(parts, list(range(lanes)))


def byte_table_reads():
    """The TIR pass of the module docstring (runs after TVM's lowering pipeline): byte-table
    reads of 8..64 lanes as permutes on VBMI targets, of multiples of 32 lanes as shuffles on
    other AVX2 ones (narrower reads stay as TVM emits them)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def rewriter(reader):
        def rewrite_load(load):
            if (not isinstance(load.source, tirx.Buffer) or not _is_table(load.source)
                    or len(load.indices) != 1 or isinstance(load.indices[0], tirx.Ramp)):
                return load
            lanes = int(load.indices[0].ty.dtype.lanes)
            indices = tirx.Cast(f"int8x{lanes}", load.indices[0])
            if reader == "permute" and lanes > 1 and PERMUTE_LANES % lanes == 0:
                picked = _permute(indices, load.source, lanes)
            elif reader == "shuffle" and lanes % SHUFFLE_LANES == 0:
                picked = _shuffle(indices, load.source, lanes)
            else:
                return load
            dtype = str(load.source.dtype)
            return picked if dtype == "int8" else tirx.Cast(f"{dtype}x{lanes}", picked)

        return rewrite_load

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mmopt_byte_table_reads")
    def _pass(func, _mod, _ctx):
        target = func.attrs.get("target") if func.attrs is not None else None
        reader = table_reader(target or tvm.target.Target.current(allow_none=True))
        if reader is None:
            return func
        return tvm_ffi.structural_map(func, [(tvm.ir.TensorLoad, rewriter(reader))])

    return _pass


@contextlib.contextmanager
def _vectorizable_rounding():
    """TVM 0.27 does not mark ``nearbyint`` (round half to even, the rounding of every
    requantization) vectorizable, so its vectorizer leaves each requantizing write-back a scalar
    loop and LLVM's loop vectorizer re-vectorizes it later -- with a gather for a table read.
    Marked for the duration of a lowering, the write-back becomes vector TIR, whose table read
    this pass can see and rewrite. LLVM lowers the vector ``nearbyint`` to ``vrndscaleps``/
    ``vroundps`` (same rounding)."""
    import tvm

    op = tvm.ir.Op.get("tirx.nearbyint")
    if op.get_attr("TVectorizable"):
        yield
        return
    op.set_attr("TVectorizable", True)
    try:
        yield
    finally:
        op.reset_attr("TVectorizable")


def _integer_sum(node) -> bool:
    """A TIR block summing into int32 (an integer convolution or matmul, the dot-product kernels'
    and the depthwise ones' alike)."""
    from tvm import tirx

    from mmopt.codegen.tir_util import region_buffer

    iter_vars = getattr(node, "iter_vars", None)
    writes = getattr(node, "writes", None)
    if not iter_vars or not writes:
        return False
    return (any(iv.iter_type == tirx.IterVar.CommReduce for iv in iter_vars)
            and all(str(region_buffer(w).dtype) == "int32" for w in writes))


def _vector_rounding_pays(func) -> bool:
    """Whether a scheduled PrimFunc is lowered with ``nearbyint`` vectorizable
    (:func:`_vectorizable_rounding`): a byte-table read this pass rewrites must be vector TIR
    (on a permuting CPU any vector, on a shuffling one a loop of :data:`SHUFFLE_LANES` or more),
    and an integer convolution's requantizing write-back ran 2x faster so (0.72 -> 0.35 ms, a
    160x160x96 1x1 layer of the PP-OCR detector, AVX2) than re-vectorized by LLVM. Depthwise ones
    too: LLVM left MobileNetV2's first (112x112x32, 8x32 register tile) write-back scalar, 2.6x
    the kernel's time (0.21 -> 0.081 ms, Zen 4). And any function whose vectors read and write
    with unit stride (:func:`_unit_stride_vectors`)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    from mmopt.codegen.int8_dot import DOT_BLOCK

    if not isinstance(func, tirx.PrimFunc):
        return False
    types = [getattr(param, "ty", None) for param in func.params]
    table = any(hasattr(t, "shape") and hasattr(t, "dtype") and _is_table(t) for t in types)
    found = {"dot": False, "wide": False}

    def visit(node, visitor):
        if isinstance(node, tirx.For):
            if (node.kind == tirx.ForKind.VECTORIZED and isinstance(node.extent, tirx.IntImm)
                    and int(node.extent) % SHUFFLE_LANES == 0):
                found["wide"] = True
        elif str(getattr(node, "name_hint", "")).startswith(DOT_BLOCK) or _integer_sum(node):
            found["dot"] = True
        return visitor.default_visit(node)

    tvm_ffi.structural_visit(func.body, visit)
    if found["dot"] or _unit_stride_vectors(func):
        return True
    if not table:
        return False
    target = func.attrs.get("target") if func.attrs is not None else None
    reader = table_reader(target or tvm.target.Target.current(allow_none=True))
    return reader == "permute" or (reader == "shuffle" and found["wide"])


def _vector_steps(expr, variables, steps) -> int | None:
    """How far ``expr`` (an index over a block's iterators ``variables``) moves when the vectorized
    loop advances by one, the iterators moving by ``steps``; None where it is not linear in them
    (an index read from a tensor, a division)."""
    import tvm

    coefficients = tvm.sym.detect_linear_equation(expr, variables)
    if len(coefficients) != len(variables) + 1:
        return None
    # a moving iterator inside the constant part: under a load or a cast (a table read)
    moving = [v for v, step in zip(variables, steps) if step]
    if any(v.same_as(m) for v in tvm.tirx.analysis.undefined_vars(coefficients[-1])
           for m in moving):
        return None
    total = 0
    for coefficient, step in zip(coefficients, steps):
        if step:
            if not isinstance(coefficient, tvm.tirx.IntImm):
                return None
            total += int(coefficient) * step
    return total


def _unit_stride_vectors(func) -> bool:
    """Whether ``func`` has vectorized loops and every tensor access under them walks its
    innermost axis one element per lane (or does not move with the vector): an element-wise
    requantization, a concatenation. TVM's vector rounding pays there: LLVM re-vectorized such a
    scalar loop over the next loop outward when the vector covered half of a 16-channel row,
    reading and writing lane by lane (a 160x160x16 quantize 0.097 -> 0.029 ms, YOLOv8n's C2f
    concatenations 15-30% faster, AVX2 on Zen 4); where an access transposes or gathers (a
    depth-to-space's transpose: 0.254 -> 0.313 ms vector-rounded) LLVM's choice stays."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    state = {"vectors": 0, "strided": False}
    vector_loops: list = []
    scopes: list[tuple[list, list[int]]] = []  # (block iterators, their steps per lane)

    def contiguous(indices) -> bool:
        if not indices:
            return True
        # outside a block (lowered TIR), the indices use the loop variable itself
        variables, steps = scopes[-1] if scopes else ([vector_loops[-1]], [1])
        moves = [_vector_steps(index, variables, steps) for index in indices]
        if any(m is None for m in moves):
            return False
        return all(m == 0 for m in moves) or (moves[-1] == 1 and not any(moves[:-1]))

    def visit(node, visitor):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.VECTORIZED:
            state["vectors"] += 1
            vector_loops.append(node.loop_var)
            visitor.default_visit(node)
            vector_loops.pop()
            return None
        if vector_loops and type(node).__name__ == "SBlockRealize":
            variables = [iv.var for iv in node.block.iter_vars]
            steps = []
            for value in node.iter_values:
                step = _vector_steps(value, [vector_loops[-1]], [1])
                if step is None:
                    state["strided"] = True
                    return None
                steps.append(step)
            scopes.append((variables, steps))
            visitor.default_visit(node)
            scopes.pop()
            return None
        if vector_loops and isinstance(node, (tirx.BufferStore, tvm.ir.TensorLoad)):
            if not contiguous(list(node.indices)):
                state["strided"] = True
                return None
        return visitor.default_visit(node)

    tvm_ffi.structural_visit(func.body, visit)
    return state["vectors"] > 0 and not state["strided"]


def lower_with_vector_rounding(lower):
    """TVM's lowering ``lower`` (a module pass), run with ``nearbyint`` vectorizable
    (:func:`_vectorizable_rounding`) on the functions where that pays
    (:func:`_vector_rounding_pays`); :mod:`mmopt.codegen.tir_pipeline` runs it, then
    :func:`byte_table_reads`."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="mmopt_lower_vectorized_rounding")
    def _lower(mod, _ctx):
        # only where it pays (:func:`_vector_rounding_pays`): elsewhere TVM's own vector
        # rounding was slower than LLVM's loop vectorizer (a PP-OCR detector's depth-to-space
        # requantization by 23% on AVX2, its resizes by 20-35% once)
        tables = [gv for gv, func in mod.functions.items() if _vector_rounding_pays(func)]
        if not tables:
            return lower(mod)
        if len(tables) == len(mod.functions):
            with _vectorizable_rounding():
                return lower(mod)
        reading = tvm.IRModule({gv: mod[gv] for gv in tables}, attrs=mod.attrs)
        rest = tvm.IRModule({gv: func for gv, func in mod.functions.items()
                             if not any(gv.same_as(t) for t in tables)}, attrs=mod.attrs)
        with _vectorizable_rounding():
            reading = lower(reading)
        rest = lower(rest)
        rest.update(reading)
        return rest

    return _lower
