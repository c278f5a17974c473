"""The graph-level optimization pipeline, read top to bottom.

Levels (each includes the one before):

* ``-O0``: import only (opset normalization and shape fixing happen in :func:`mmopt.ir.prepare`).
* ``-O1``: ``simplify`` (constant and shape-subgraph folding), then clean-ups. Ordering: identity and
  dead-node elimination run after folding, because folding is what leaves nodes dead.
* ``-O2`` (default): ``-O1`` + eliminations and fusions written as rewrite rules (one family per
  module, listed in :data:`LEVELS` with the reason for its place), then common-subexpression
  elimination and dead nodes again (CSE leaves duplicates unused).
* ``-O3``: ``-O2`` + the layout transform asked for with ``layout=`` (``"nhwc"``:
  :mod:`mmopt.passes.convert_layout_nhwc`); without one, the same as ``-O2``.

Every pass is an ``onnx_ir`` pass; each one's ``modified`` flag is reported as the pass gave it, and
rule passes also report how often each of their rules fired.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from mmopt.errors import MmoptError
from mmopt.passes.collapse_reshapes import CollapseReshapesPass
from mmopt.passes.convert_layout_nhwc import ConvertLayoutNHWCPass
from mmopt.passes.eliminate_identity import EliminateIdentityPass
from mmopt.passes.eliminate_noops import EliminateNoopsPass
from mmopt.passes.fuse_activations import FuseActivationsPass
from mmopt.passes.fuse_batchnorm import FuseBatchNormPass
from mmopt.passes.fuse_conv_affine import FuseConvAffinePass
from mmopt.passes.fuse_gemm import FuseGemmPass
from mmopt.passes.fuse_layernorm import FuseLayerNormPass
from mmopt.passes.fuse_pad import FusePadPass
from mmopt.passes.simplify import SimplifyPass
from mmopt.passes.transposes import OptimizeTransposesPass

logger = logging.getLogger(__name__)

#: name -> factory of a fresh pass instance. Names say the action (fold_, eliminate_, fuse_, ...).
PASSES: dict[str, Callable[[], ir.passes.PassBase]] = {
    "simplify": SimplifyPass,
    "eliminate_identity": EliminateIdentityPass,
    "eliminate_dead_nodes": ir_common.RemoveUnusedNodesPass,
    "eliminate_common_subexpressions": ir_common.CommonSubexpressionEliminationPass,
    "eliminate_noops": EliminateNoopsPass,
    "collapse_reshapes": CollapseReshapesPass,
    "optimize_transposes": OptimizeTransposesPass,
    "fuse_activations": FuseActivationsPass,
    "fuse_layernorm": FuseLayerNormPass,
    "fuse_conv_affine": FuseConvAffinePass,
    "fuse_batchnorm": FuseBatchNormPass,
    "fuse_pad": FusePadPass,
    "fuse_gemm": FuseGemmPass,
    "convert_layout_nhwc": ConvertLayoutNHWCPass,
}

LEVELS: dict[int, list[str]] = {0: []}
LEVELS[1] = [*LEVELS[0], "simplify", "eliminate_identity", "eliminate_dead_nodes"]
LEVELS[2] = [
    *LEVELS[1],
    # First: x*1, inference Dropout and same-type Casts sit inside the patterns below (PaddleOCR
    # writes SiLU as x * Sigmoid(x * 1.0)).
    "eliminate_noops",
    "collapse_reshapes",
    "optimize_transposes",
    # Before fuse_conv_affine: the "+ 3" of a hardswish/hardsigmoid right after a conv would
    # otherwise be folded into the conv's bias and the activation no longer be recognizable.
    "fuse_activations",
    "fuse_layernorm",
    # Before fuse_batchnorm: a bias Add between ConvTranspose and BatchNormalization must go into
    # the ConvTranspose first. After it again: Mul/Add that followed a BatchNormalization now
    # follow the fused Conv.
    "fuse_conv_affine",
    "fuse_batchnorm",
    "fuse_conv_affine",
    "fuse_pad",
    "fuse_gemm",
    "eliminate_common_subexpressions",
    "eliminate_dead_nodes",
]
LEVELS[3] = [*LEVELS[2]]

DEFAULT_LEVEL = 2

#: layout name -> the pass that converts to it (-O3, or explicitly with ``passes=``)
LAYOUT_PASSES: dict[str, str | None] = {"nchw": None, "nhwc": "convert_layout_nhwc"}


@dataclass
class PassRecord:
    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float
    #: rule name -> times fired (rule passes only; other passes leave it empty)
    rules: dict[str, int] = field(default_factory=dict)


@dataclass
class PipelineReport:
    level: int | None
    layout: str | None = None
    passes: list[PassRecord] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)

    @property
    def applied(self) -> list[str]:
        """Names of passes that changed the model, in order."""
        return [p.name for p in self.passes if p.modified]

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    @property
    def rules_fired(self) -> dict[str, int]:
        """Every rule that fired, over all passes, with its total count."""
        total: Counter[str] = Counter()
        for p in self.passes:
            total.update(p.rules)
        return dict(total)

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "layout": self.layout,
            "passes": [asdict(p) for p in self.passes],
            "rules_fired": self.rules_fired,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
        }


def resolve(level: int = DEFAULT_LEVEL, passes: Sequence[str] | None = None,
            disable: Iterable[str] = (), layout: str | None = None) -> list[str]:
    """The ordered pass names for a level (and layout), or an explicit list; minus ``disable``."""
    if level not in LEVELS:
        raise MmoptError(f"optimization level -O{level} does not exist; use one of "
                         + ", ".join(f"-O{k}" for k in LEVELS))
    if layout is not None and layout.lower() not in LAYOUT_PASSES:
        raise MmoptError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUT_PASSES)}")
    layout_pass = LAYOUT_PASSES[layout.lower()] if layout else None
    if passes is not None:
        names = list(passes) + ([layout_pass] if layout_pass and layout_pass not in passes else [])
    else:
        if layout_pass and level < 3:
            raise MmoptError(f"layout {layout} is an -O3 transform; use -O3 (you asked for -O{level})")
        names = list(LEVELS[level]) + ([layout_pass] if layout_pass else [])
    disable = set(disable)
    unknown = [n for n in [*names, *disable] if n not in PASSES]
    if unknown:
        raise MmoptError(f"unknown pass(es) {', '.join(sorted(set(unknown)))}; known passes: "
                         + ", ".join(sorted(PASSES)))
    return [n for n in names if n not in disable]


def op_histogram(model: ir.Model) -> dict[str, int]:
    counts = Counter(
        (f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
        for n in ir.traversal.RecursiveGraphIterator(model.graph)
    )
    return dict(counts.most_common())


def optimize(
    model: onnx.ModelProto,
    level: int = DEFAULT_LEVEL,
    *,
    passes: Sequence[str] | None = None,
    disable: Iterable[str] = (),
    layout: str | None = None,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run the pipeline on ``model`` and return the optimized model with a per-pass report.

    ``layout="nhwc"`` (with ``level=3``, or added to an explicit ``passes`` list) converts the model's
    4-D image inputs and outputs to NHWC; see :mod:`mmopt.passes.convert_layout_nhwc`.
    """
    names = resolve(level, passes, disable, layout)
    work = ir.serde.deserialize_model(model)
    report = PipelineReport(level=None if passes is not None else level,
                            layout=layout.lower() if layout else None, ops_before=op_histogram(work))
    for name in names:
        before = sum(1 for _ in ir.traversal.RecursiveGraphIterator(work.graph))
        start = time.perf_counter()
        instance = PASSES[name]()
        result = instance(work)
        work = result.model
        after = sum(1 for _ in ir.traversal.RecursiveGraphIterator(work.graph))
        rules = {k: v for k, v in getattr(instance, "counts", {}).items() if v}
        report.passes.append(PassRecord(name, bool(result.modified), before, after,
                                        round(time.perf_counter() - start, 4), rules))
        logger.debug("pass %s: modified=%s nodes %d -> %d %s", name, result.modified, before, after,
                     rules or "")
    report.ops_after = op_histogram(work)
    return ir.serde.serialize_model(work), report
