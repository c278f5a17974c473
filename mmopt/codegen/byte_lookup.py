"""256-entry byte-table reads as register permutes (x86 AVX-512 VBMI ``vpermi2b``).

:mod:`mmopt.codegen.quantized_lut` turns the element-wise chains of a QDQ model (hard-swish,
sigmoid, ... between their quantize/dequantize pairs) into ``table[q]`` on an 8-bit tensor ``q``.
Vectorized, that read is a gather: on AMD Zen 4 a 16-lane ``vpgatherdd`` costs ~27 cycles
(measured in PP-OCRv4's first hard-swish layer, 1x1 conv 16 -> 32 channels on 320x320, 2 threads:
1.15 ms with the gather, 0.40 ms with the read removed), which made the table-reading kernels half
of the int8 detector's time.

A table of 256 *bytes* fits in four 64-byte registers, and AVX-512 VBMI permutes bytes across two
registers by an index vector: ``vpermi2b(t0, i, t1)`` returns, in each of 64 lanes,
``concat(t0, t1)[i & 127]``. So for up to 64 lanes at once::

    lo  = vpermi2b(table[0:64],    i, table[64:128])      # the entry when i < 128
    hi  = vpermi2b(table[128:192], i, table[192:256])     # the entry when i >= 128
    out = select(i >= 128, hi, lo)                         # the index's top bit (a mask register)

five instructions instead of a gather, exact (it reads the same bytes). :func:`byte_table_reads` is a
TIR pass that runs after TVM's lowering (vectorization included) and rewrites every vector read of
a 256-entry 8-bit buffer at a computed index into that sequence; narrower vectors (8, 16, 32
lanes) are widened to 64 by repeating them and narrowed back after. A read TVM left in a scalar
loop is not rewritten (LLVM then vectorizes it with scalar byte loads: correct, slower); for the
requantizing write-backs that read tables, :func:`register_pipeline` makes sure TVM vectorizes. Targets without VBMI keep the gather, and the lookup
tables keep 32-bit entries there (:func:`byte_tables_pay`); ``quantized_lut`` stores 8-bit
tables only where this pass will read them.
"""

from __future__ import annotations

import contextlib

#: name under which :func:`register_pipeline` registers the TIR pipeline with this pass
PIPELINE = "mmopt_byte_lookup"
#: lanes of one ``vpermi2b`` (512-bit registers, bytes)
PERMUTE_LANES = 64
TABLE_SIZE = 256
_INTRINSIC = "llvm.x86.avx512.vpermi2var.qi.512"


def byte_tables_pay(tvm_target) -> bool:
    """Whether ``tvm_target`` reads 8-bit tables with register permutes (x86-64 with AVX-512
    VBMI: Ice Lake, Sapphire Rapids, Zen 4 and newer) rather than gathers."""
    from tvm.target import codegen

    if "x86_64" not in str(tvm_target.attrs.get("mtriple", "")):
        return False
    try:
        return bool(codegen.target_has_features(["avx512vbmi", "avx512bw"], tvm_target))
    except Exception:  # noqa: BLE001 - LLVM without the x86 backend: keep the gathers
        return False


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


def byte_table_reads():
    """The TIR pass of the module docstring (runs after TVM's lowering pipeline)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def rewrite_load(load):
        if (not isinstance(load.source, tirx.Buffer) or not _is_table(load.source)
                or len(load.indices) != 1 or isinstance(load.indices[0], tirx.Ramp)):
            return load
        lanes = int(load.indices[0].ty.dtype.lanes)
        if lanes <= 1 or PERMUTE_LANES % lanes:
            return load
        picked = _permute(tirx.Cast(f"int8x{lanes}", load.indices[0]), load.source, lanes)
        dtype = str(load.source.dtype)
        return picked if dtype == "int8" else tirx.Cast(f"{dtype}x{lanes}", picked)

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mmopt_byte_table_reads")
    def _pass(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(tvm.ir.TensorLoad, rewrite_load)])

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


def register_pipeline() -> str:
    """Register (once) TVM's default TIR pipeline, with ``nearbyint`` vectorizable, followed by
    :func:`byte_table_reads` under :data:`PIPELINE`; returns the name for
    ``tvm.compile(..., tir_pipeline=...)``."""
    import tvm
    from tvm.tirx import compilation_pipeline

    if PIPELINE not in compilation_pipeline.PIPELINE_MAP:
        def factory():
            lower, host, device = compilation_pipeline.get_tir_pipeline("default")

            @tvm.transform.module_pass(opt_level=0, name="mmopt_lower_vectorized_rounding")
            def _lower(mod, _ctx):
                with _vectorizable_rounding():
                    return lower(mod)

            return tvm.transform.Sequential([_lower, byte_table_reads()]), host, device

        compilation_pipeline.register_tir_pipeline(PIPELINE, factory)
    return PIPELINE


def tir_pipeline_for(tvm_target) -> str:
    """The TIR pipeline name for ``tvm.compile`` / ``tvm.tirx.build`` on ``tvm_target``: this
    module's where the target reads byte tables by permutes (only those targets get byte
    tables), else TVM's default. Compile and tuning's candidate builds both take it, so tuning
    measures the code that ships."""
    if str(tvm_target.kind.name) == "llvm" and byte_tables_pay(tvm_target):
        return register_pipeline()
    return "default"
