"""Small helpers that inspect TIR schedules: loop extents, a block's iter kinds and which of its
iters index an output dimension, the buffer of a read/write region, a static buffer's size.

Shared by the default CPU schedules (:mod:`mmopt.codegen.cpu_schedules`,
:mod:`mmopt.codegen.cpu_contraction`, :mod:`mmopt.codegen.cpu_inline`) and the kernels that
schedule their own blocks (:mod:`mmopt.codegen.winograd`, :mod:`mmopt.codegen.int8_dot`,
:mod:`mmopt.codegen.byte_lookup`); they import nothing of those, so any of them can import this.
"""

from __future__ import annotations


def _extent(sch, loop) -> int | None:
    """A loop's extent, None when it is symbolic (a dynamic-shape kernel)."""
    return static_extent(sch.get(loop).extent)


def static_extent(expr) -> int | None:
    """The integer value of a TIR/Relax extent, None when it is symbolic."""
    if isinstance(expr, int):
        return expr
    return int(expr.value) if hasattr(expr, "value") else None


def _kind(expr) -> str:
    """Node kind of a TIR expression ("Add", "Mul", "Var", ...); stable across TVM's module moves."""
    return type(expr).__name__


def region_buffer(region):
    """The buffer of a block read/write region (``TensorRegion.source`` in TVM 0.27)."""
    return region.source if hasattr(region, "source") else region.buffer


def _iter_kinds(block) -> list[str]:
    from tvm import tirx

    return ["R" if iv.iter_type == tirx.IterVar.CommReduce else "S" for iv in block.iter_vars]


def _index_iter(block, region_index) -> int | None:
    """Which block iter var indexes a buffer dimension directly (``buf[..., v, ...]``)."""
    expr = region_index.min
    if _kind(expr) == "Var":
        for i, iv in enumerate(block.iter_vars):
            if iv.var.same_as(expr):
                return i
    return None


def _loops_match_iters(sch, block_rv) -> bool:
    block = sch.get(block_rv)
    return len(sch.get_loops(block_rv)) == len(block.iter_vars)


def _block_axes(sch, block_rv):
    """``(loops, iter kinds, v_axis)`` of a block whose loops match its iters one to one;
    ``v_axis`` indexes the iter of the output's innermost dim (None: not a plain iter)."""
    block = sch.get(block_rv)
    if not _loops_match_iters(sch, block_rv):
        raise ValueError("loop nest does not match block iters")
    region = block.writes[0].region
    return (sch.get_loops(block_rv), _iter_kinds(block),
            _index_iter(block, region[-1]) if region else None)


def static_bytes(buffer) -> int | None:
    """The size in bytes of ``buffer`` when its shape is static, else None."""
    import tvm
    from tvm import tirx

    count = 1
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        count *= int(extent)
    dtype = tvm.DataType(str(buffer.dtype))
    return count * dtype.bits * dtype.lanes // 8


def vectorize_head(sch, loop, extent: int, lanes: int) -> None:
    """Vectorize a static loop of ``extent`` iterations in vectors of ``lanes``: the first
    ``extent // lanes`` whole vectors, and where ``lanes`` does not divide it the rest as a scalar
    loop of its own (a split with a remainder would put a per-lane predicate in the vector loop,
    which TVM then runs one element at a time). A loop shorter than one vector is left alone."""
    if extent % lanes == 0:
        _, inner = sch.split(loop, factors=[None, lanes])
        sch.vectorize(inner)
    elif extent > lanes:
        head, _tail = sch.loop_partition(loop, [extent // lanes * lanes, None])
        _, inner = sch.split(head, factors=[None, lanes])
        sch.vectorize(inner)
