"""Accuracy-aware quantization: keep the fewest layers in float until the drop fits the budget.

1. **Sensitivity.** For every candidate node (each node the QDQ writer would quantize), build the
   model with *only that node* quantized and measure its output error against the float model
   (noise energy in % of signal, continuous, so layers rank even where top-1 would tie). Quantizing
   one node alone isolates what it adds: its weights, and the Q/DQ pairs on the tensors it reads
   and writes.
2. **Greedy fallback.** Starting from the fully quantized model, move nodes to float in order of
   decreasing sensitivity, scoring the model with the user's metric after each step, until the
   drop is within ``max_drop``.
3. **Pruning.** Try putting each float node back into int8, least sensitive first; keep it
   quantized when the budget still holds. What remains is a set where no single node can return
   to int8 without breaking the budget.

Every model scored is recorded as a step (what changed, the float set, the drop) for the report.
Calibration is not repeated: the float model's activation ranges hold for every subset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import onnx

from mmopt.quantize.evaluate import Evaluator, Score

logger = logging.getLogger(__name__)

#: ``build(nodes kept in float) -> QDQ model``
Build = Callable[[Sequence[str]], onnx.ModelProto]
#: ``progress(stage, done, total)``
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class Sensitivity:
    node: str
    op_type: str
    #: output noise in % of signal energy with only this node quantized
    noise: float
    #: the metric's drop with only this node quantized
    drop: float


@dataclass
class Step:
    action: str
    kept_float: list[str]
    score: Score
    within_budget: bool

    def to_dict(self) -> dict:
        return {"action": self.action, "kept_float": self.kept_float,
                "within_budget": self.within_budget, **self.score.to_dict()}


@dataclass
class AccuracyAwareReport:
    metric: str
    max_drop: float
    met: bool = False
    kept_float: list[str] = field(default_factory=list)
    #: the score of the model returned (within budget when ``met``, else the best one seen)
    final: Score | None = None
    sensitivities: list[Sensitivity] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"metric": self.metric, "max_drop": self.max_drop, "met": self.met,
                "kept_float": self.kept_float, "seconds": round(self.seconds, 2),
                "final": self.final.to_dict() if self.final else None,
                "sensitivities": [asdict(s) for s in self.sensitivities],
                "steps": [s.to_dict() for s in self.steps]}


def recover(
    build: Build,
    evaluator: Evaluator,
    candidates: Sequence[onnx.NodeProto],
    max_drop: float,
    *,
    initial: tuple[onnx.ModelProto, Score] | None = None,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, AccuracyAwareReport]:
    """Keep the fewest ``candidates`` in float so that the drop is ``<= max_drop`` (module docs)."""
    start = time.perf_counter()
    report = AccuracyAwareReport(evaluator.metric, max_drop)
    names = [n.name for n in candidates]

    def attempt(kept: list[str], action: str) -> tuple[onnx.ModelProto, Score]:
        model = build(kept)
        score = evaluator.score(model)
        step = Step(action, list(kept), score, score.drop <= max_drop)
        report.steps.append(step)
        logger.info("%s: float %d node(s), drop %.3f", action, len(kept), score.drop)
        return model, score

    if initial is None:
        initial = attempt([], "all int8")
    else:
        report.steps.append(Step("all int8", [], initial[1], initial[1].drop <= max_drop))
    best_model, best = initial
    best_kept: list[str] = []
    if best.drop <= max_drop:
        report.met, report.final = True, best
        report.seconds = time.perf_counter() - start
        return best_model, report

    for i, node in enumerate(candidates):
        if progress:
            progress("sensitivity", i, len(candidates))
        only = build([n for n in names if n != node.name])
        got = evaluator.run(only)
        report.sensitivities.append(Sensitivity(node.name, node.op_type, evaluator.noise(got),
                                                evaluator.compare(got).drop))
    if progress:
        progress("sensitivity", len(candidates), len(candidates))
    report.sensitivities.sort(key=lambda s: (-s.noise, -s.drop))
    ranked = [s.node for s in report.sensitivities]

    kept: list[str] = []
    model, score = best_model, best
    for i, node in enumerate(ranked):
        if progress:
            progress("fallback", i, len(ranked))
        kept.append(node)
        model, score = attempt(kept, f"keep {node} in float")
        if score.drop < best.drop:
            best_model, best, best_kept = model, score, list(kept)
        if score.drop <= max_drop:
            break
    if score.drop > max_drop:
        report.kept_float, report.final = best_kept, best
        report.seconds = time.perf_counter() - start
        return best_model, report

    for node in reversed(list(kept)):
        if len(kept) == 1:
            break
        trial = [n for n in kept if n != node]
        trial_model, trial_score = attempt(trial, f"requantize {node}")
        if trial_score.drop <= max_drop:
            kept, model, score = trial, trial_model, trial_score
    report.met, report.kept_float, report.final = True, kept, score
    report.seconds = time.perf_counter() - start
    return model, report
