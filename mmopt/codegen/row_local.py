"""A softmax scheduled row by row: every stage of a row in one pass, the rows in one parallel loop.

:func:`mmopt.codegen.fast_math._softmax` writes a softmax along the last axis as stages over the
same rows: the row maximum (vector partials, their fold, the row's tail past the last whole
vector, the two combined), the exponentials, their sum (the same four stages), its reciprocal,
and the normalized output. Each stage only needs its own row of the stages before it. Scheduled
one block at a time (:func:`mmopt.codegen.cpu_schedules.schedule_prim_func`'s general path), each
stage is a loop nest of its own over every row: nine parallel launches, every intermediate a
tensor as large as the input written and read back from L2, and the stages that combine two
per-row values left serial (one scalar loop over all rows on one core).

Here the output's row loops are fused into one parallel loop and every other stage is computed
at it (``compute_at``), in reverse order of the blocks: a task computes one row from start to
end, its intermediates one row long (L1), and the threads take rows. Under the row loop, the
partials (``lanes`` side by side, ``k`` whole vectors) keep their lanes innermost and vectorized;
the fold of the partials and the tail (at most ``_UNROLL_MAX`` steps) are unrolled, which lets
LLVM interleave them with the next stage instead of one dependent scalar chain; the exponentials
and the output run in vectors, a row's last ``width % lanes`` elements as a scalar loop of their
own.

Measured on an AMD EPYC Zen 4 (``x86``, 2 threads, one ViT-Tiny attention softmax of 3 x 197
rows of 197 scores, min of 300 calls, inputs in cache): 50 us one block at a time; 38 with the
division by the row's sum replaced by a product with its reciprocal
(:func:`mmopt.codegen.fast_math._softmax`); 31 row by row; 27.5 with the fold and the tail
unrolled.
"""

from __future__ import annotations

#: a per-row reduction loop (the fold of the partials, a row's tail) of at most this many steps
#: is unrolled
_UNROLL_MAX = 32


def applies(sch) -> bool:
    """Whether the function is a softmax of :func:`mmopt.codegen.fast_math._softmax` (its output
    block, possibly with element-wise work inlined around it) over rows (at least one axis
    before the softmax's) of static shapes."""
    from mmopt.codegen.fast_math import SOFTMAX_OUTPUT
    from mmopt.codegen.tir_util import static_extent

    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if (not blocks or sch.get(blocks[-1]).name_hint != SOFTMAX_OUTPUT
            or len(sch.get_loops(blocks[-1])) < 2):
        return False
    for block_rv in blocks:
        for lp in sch.get_loops(block_rv):
            if static_extent(sch.get(lp).extent) is None:
                return False
    return True


def schedule_rows(sch, lanes: int) -> None:
    """Schedule ``sch`` (where :func:`applies`) row by row (module docstring); raises TVM's
    schedule errors where a stage cannot be computed at the row."""
    from tvm import tirx

    from mmopt.codegen.tir_util import static_extent, vectorize_head

    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    *rows, _ = sch.get_loops(blocks[-1])
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    for block_rv in reversed(blocks[:-1]):
        sch.compute_at(block_rv, row, preserve_unit_loops=False)
    sch.parallel(row)

    for name in names:
        block_rv = sch.get_sblock(name)
        loops = sch.get_loops(block_rv)[1:]  # below the row
        reduces = [iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block_rv).iter_vars]
        extents = [static_extent(sch.get(lp).extent) for lp in loops]
        one_reduction = sum(reduces) == 1 and reduces[-1]
        if one_reduction and len(loops) == 2:
            # the partials: (lane, k) -> k outside, the lanes in a vector
            lane, k = loops
            sch.reorder(k, lane)
            sch.vectorize(lane)
            init = sch.decompose_reduction(block_rv, k)
            sch.vectorize(sch.get_loops(init)[-1])
        elif one_reduction and len(loops) == 1 and extents[0] <= _UNROLL_MAX:
            sch.unroll(loops[0])  # the fold of the partials, a row's tail
        elif not any(reduces) and len(loops) == 1:
            vectorize_head(sch, loops[0], extents[0], lanes)
