"""The TIR lowering of mmopt's CPU kernels: TVM's default pipeline plus mmopt's passes.

``tvm.compile`` (and tuning's candidate builds) take a TIR pipeline by name. For LLVM (CPU)
targets mmopt registers its own, in this order:

1. TVM's default lowering -- where byte tables pay
   (:func:`mmopt.codegen.byte_lookup.byte_tables_pay`) with ``nearbyint`` vectorizable in the
   kernels that requantize
   (:func:`mmopt.codegen.byte_lookup.lower_with_vector_rounding`);
2. there, the byte-table reads as register permutes or shuffles
   (:func:`mmopt.codegen.byte_lookup.byte_table_reads`);
3. register tiles kept on the stack, not in heap workspace (:mod:`mmopt.codegen.stack_tiles`).

TVM's host finalization (``LowerTVMBuiltin``, which honours step 3's annotation) follows. Other
targets (CUDA) take TVM's default pipeline.
"""

from __future__ import annotations

#: the CPU pipeline with byte-table reads (x86 with AVX2 or AVX-512 VBMI)
BYTE_TABLES = "mmopt_cpu_byte_tables"
#: the CPU pipeline without them (AArch64, x86 without AVX2)
CPU = "mmopt_cpu"


def register(name: str) -> str:
    """Register (once) the pipeline ``name`` (:data:`BYTE_TABLES` or :data:`CPU`); returns it."""
    from tvm.tirx import compilation_pipeline

    if name not in (BYTE_TABLES, CPU):
        raise ValueError(f"unknown mmopt TIR pipeline {name!r}")
    if name in compilation_pipeline.PIPELINE_MAP:
        return name

    def factory():
        import tvm

        from mmopt.codegen.byte_lookup import byte_table_reads, lower_with_vector_rounding
        from mmopt.codegen.prefetch import expand_prefetches
        from mmopt.codegen.stack_tiles import stack_tiles

        lower, host, device = compilation_pipeline.get_tir_pipeline("default")
        if name == BYTE_TABLES:
            passes = [expand_prefetches(), lower_with_vector_rounding(lower), byte_table_reads()]
        else:
            passes = [expand_prefetches(), lower]
        return tvm.transform.Sequential([*passes, stack_tiles()]), host, device

    compilation_pipeline.register_tir_pipeline(name, factory)
    return name


def tir_pipeline_for(tvm_target) -> str:
    """The TIR pipeline name for ``tvm.compile`` / ``tvm.tirx.build`` on ``tvm_target``. Compile
    and tuning's candidate builds both take it, so tuning measures the code that ships."""
    from mmopt.codegen.byte_lookup import byte_tables_pay

    if str(tvm_target.kind.name) != "llvm":
        return "default"
    return register(BYTE_TABLES if byte_tables_pay(tvm_target) else CPU)
