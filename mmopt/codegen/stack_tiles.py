"""Register tiles on the stack, not in heap workspace.

A CPU contraction's accumulators live in a ``local`` buffer (the schedules' ``cache_write``):
a ``rows x nv``-vector tile, which LLVM keeps in vector registers once the tile loops are
unrolled -- if the buffer is a stack ``alloca``. TVM 0.27's ``LowerTVMBuiltin`` turns the
kernels' ``local`` allocations into a ``TVMBackendAllocWorkspace`` call per parallel task instead
(a 256-byte tile as well as a 1344-byte one; TVM's own rule keeps only allocations under 1 KiB
on the stack, and even those not here): heap memory, which LLVM cannot promote to registers.
Where the loops branch (a depthwise convolution's padding predicates) it stored every
accumulator back after each multiply-add.

:func:`stack_tiles` marks ``local`` allocations of a static size up to
:data:`STACK_TILE_BYTES` with TVM's ``disable_lower_builtin`` annotation, which leaves them to
LLVM as stack allocations. Measured on Zen 4 (2 threads, ``mmopt profile`` minimum, alternating
A/B): MobileNetV2's 7x7x960 depthwise convolution 0.026 -> 0.012 ms; whole models, ``x86``
(AVX-512): MobileNetV2 fp32 3.81 -> 3.38 ms, int8 1.64 -> 1.38 ms, ResNet-50 fp32 34.6 -> 33.4
ms, the PP-OCR-style detector int8 12.1 -> 11.7 ms; ``x86-avx2``: the detector int8 22.1-22.3 ->
21.1-21.4 ms (its int8 dot-product kernels 5-10% faster), MobileNetV2 int8 2.89 -> 2.60 ms.

With the tile in registers, a kernel whose tile plus temporaries exceeds the register file
spills inside its loop instead of reading the tile from memory: the integer depthwise tiles
leave registers for their temporaries
(:data:`mmopt.codegen.cpu_contraction.INTEGER_DEPTHWISE_TEMPS`).
"""

from __future__ import annotations

from mmopt.codegen.tir_util import static_bytes

#: the largest ``local`` allocation kept on the stack: a register tile is at most the register
#: file (AVX-512: 32 registers of 64 bytes). Larger ``local`` buffers are not register tiles and
#: keep TVM's heap workspace (the threads' stacks are finite).
STACK_TILE_BYTES = 2048

#: TVM's allocation annotation (``tvm::tirx::transform::kDisableLowerTVMBuiltin``)
_ON_STACK = "disable_lower_builtin"


def _register_tile(node) -> bool:
    buffer = node.buffer
    if str(buffer.scope()) != "local":
        return False
    size = static_bytes(buffer)
    return size is not None and size <= STACK_TILE_BYTES


def stack_tiles():
    """A TIR pass (after lowering, before ``LowerTVMBuiltin``) annotating every register-tile
    ``local`` allocation to stay a stack allocation (module docstring)."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def annotate(node):
        if not _register_tile(node):
            return node
        annotations = dict(node.annotations) if node.annotations is not None else {}
        annotations[_ON_STACK] = tirx.IntImm("bool", 1)
        return tirx.AllocBuffer(node.buffer, annotations=annotations, span=node.span)

    @tvm.tirx.transform.prim_func_pass(opt_level=0, name="mmopt_stack_tiles")
    def _pass(func, _mod, _ctx):
        return tvm_ffi.structural_map(func, [(tirx.AllocBuffer, annotate)])

    return _pass
