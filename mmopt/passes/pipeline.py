"""The graph-level optimization pipeline, read top to bottom.

Levels (each includes the one before):

* ``-O0``: import only (opset normalization and shape fixing happen in :func:`mmopt.ir.prepare`).
* ``-O1``: ``simplify`` (constant and shape-subgraph folding), then clean-ups. Ordering: identity and
  dead-node elimination run after folding, because folding is what leaves nodes dead.
* ``-O2`` (default): ``-O1`` + common-subexpression elimination, then dead nodes again (CSE leaves
  duplicates unused).
* ``-O3``: ``-O2`` (+ layout transforms for targets that prefer them, once they exist).

Every pass is an ``onnx_ir`` pass; each one's ``modified`` flag is reported as the pass gave it.
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
from mmopt.passes.simplify import SimplifyPass

logger = logging.getLogger(__name__)

#: name -> factory of a fresh pass instance. Names say the action (fold_, eliminate_, fuse_, ...).
PASSES: dict[str, Callable[[], ir.passes.PassBase]] = {
    "simplify": SimplifyPass,
    "eliminate_identity": ir_common.IdentityEliminationPass,
    "eliminate_dead_nodes": ir_common.RemoveUnusedNodesPass,
    "eliminate_common_subexpressions": ir_common.CommonSubexpressionEliminationPass,
}

LEVELS: dict[int, list[str]] = {0: []}
LEVELS[1] = [*LEVELS[0], "simplify", "eliminate_identity", "eliminate_dead_nodes"]
LEVELS[2] = [*LEVELS[1], "eliminate_common_subexpressions", "eliminate_dead_nodes"]
LEVELS[3] = [*LEVELS[2]]

DEFAULT_LEVEL = 2


@dataclass
class PassRecord:
    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class PipelineReport:
    level: int | None
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

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "passes": [asdict(p) for p in self.passes],
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
        }


def resolve(level: int = DEFAULT_LEVEL, passes: Sequence[str] | None = None,
            disable: Iterable[str] = ()) -> list[str]:
    """The ordered pass names for a level, or an explicit list; minus ``disable``."""
    if level not in LEVELS:
        raise MmoptError(f"optimization level -O{level} does not exist; use one of "
                         + ", ".join(f"-O{k}" for k in LEVELS))
    names = list(passes) if passes is not None else list(LEVELS[level])
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
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run the pipeline on ``model`` and return the optimized model with a per-pass report."""
    names = resolve(level, passes, disable)
    work = ir.serde.deserialize_model(model)
    report = PipelineReport(level=None if passes is not None else level, ops_before=op_histogram(work))
    for name in names:
        before = sum(1 for _ in ir.traversal.RecursiveGraphIterator(work.graph))
        start = time.perf_counter()
        result = PASSES[name]()(work)
        work = result.model
        after = sum(1 for _ in ir.traversal.RecursiveGraphIterator(work.graph))
        report.passes.append(PassRecord(name, bool(result.modified), before, after,
                                        round(time.perf_counter() - start, 4)))
        logger.debug("pass %s: modified=%s nodes %d -> %d", name, result.modified, before, after)
    report.ops_after = op_histogram(work)
    return ir.serde.serialize_model(work), report
