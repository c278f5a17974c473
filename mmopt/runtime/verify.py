"""Numeric verification: compiled artifact (or any candidate) against onnxruntime on the same inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4
#: quantized (QDQ) models: tolerance in output quantization steps. Integer kernels requantize with
#: their own float rounding, and a one-step flip in an early layer can move later ones: onnxruntime's
#: own fused int8 execution differs from its plain QDQ execution by up to 4 steps on MobileNetV2.
QDQ_TOLERANCE_STEPS = 8
#: quantized models: a rounding flip amplified by the float arithmetic after it can exceed the
#: step tolerance at a few elements (a YOLOv8 head turns its distance bins into pixels by
#: multiplying by its stride, 32 at the coarsest level: 1 element of 705,600 at 12 steps), so
#: up to this fraction of an output's elements (at least one) may lie beyond the tolerance, by at
#: most :data:`QDQ_OUTLIER_FACTOR` times it; the report counts them. A wrong kernel moves whole
#: rows, columns or channels: far more elements than this.
QDQ_OUTLIER_FRACTION = 1e-5
QDQ_OUTLIER_FACTOR = 4.0


#: float ops that only move or select elements: an output they make of dequantized tensors is
#: as precise as those (the quantizer leaves a detector's output concatenation float)
_COPIES = frozenset({"Concat", "Flatten", "Gather", "Identity", "Reshape", "Slice", "Split",
                     "Squeeze", "Transpose", "Unsqueeze"})


def quantized_output_step(model: onnx.ModelProto) -> float | None:
    """Largest per-tensor scale of a DequantizeLinear producing a graph output, directly or through
    element copies (:data:`_COPIES`) of dequantized tensors and constants (None: not a QDQ model
    or no output is dequantized)."""
    from onnx import numpy_helper

    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return None
    consts = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            consts.setdefault(node.output[0], node.attribute[0].t)
    producer = {o: n for n in model.graph.node for o in n.output}

    def step(name: str, depth: int = 0) -> float | None:
        """The largest dequantization step ``name`` is copied from; None if it is computed."""
        node = producer.get(name)
        if name in consts:
            return 0.0
        if node is None or depth > 64:
            return None
        if node.op_type == "DequantizeLinear":
            if node.input[1] not in consts:
                return None
            return float(np.max(np.abs(numpy_helper.to_array(consts[node.input[1]]))))
        if node.op_type not in _COPIES:
            return None
        data = node.input[:1] if node.op_type in ("Gather", "Reshape", "Slice", "Split") else [
            i for i in node.input if i]
        found = [step(i, depth + 1) for i in data]
        return None if any(f is None for f in found) else max(found)

    steps = [s for s in (step(o.name) for o in model.graph.output) if s]
    return max(steps) if steps else None


def run_onnxruntime(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                    threads: int | None = None, *, label: str = "onnxruntime reference"
                    ) -> dict[str, np.ndarray]:
    """Run ``model`` on onnxruntime's CPU provider with all graph optimizations off (the reference
    semantics of :mod:`mmopt.runtime.ort`: a QDQ model runs as dequantize -> float op -> quantize)."""
    from mmopt.runtime import ort

    session = ort.session(model, label=label, threads=threads)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, ort.run(session, feeds, label=label, names=names)))


@dataclass
class OutputComparison:
    name: str
    shape: list[int]
    max_abs: float
    #: largest |cand - ref| / max(|ref|, atol): relative error, floored so near-zero refs don't blow up
    max_rel: float
    #: largest |cand - ref| / (atol + rtol * |ref|); <= 1 means within tolerance everywhere
    worst_ratio: float
    passed: bool
    #: elements beyond the tolerance (a quantized model passes with a few, see
    #: :data:`QDQ_OUTLIER_FRACTION`)
    beyond: int = 0


@dataclass
class VerifyReport:
    atol: float
    rtol: float
    outputs: list[OutputComparison] = field(default_factory=list)
    seed: int | None = None
    #: why the tolerance is what it is, when it is not the one asked for
    note: str = ""
    #: what computed the reference outputs (onnxruntime unless a plugin op made it run elsewhere,
    #: see mmopt.extend.reference)
    engine: str = "onnxruntime"
    #: a dynamic artifact, verified at several sizes: one entry per call (``sizes``: the symbolic
    #: dims' sizes, ``function``: what ran, ``passed``, ``max_abs``, ``max_rel``); ``outputs`` then
    #: holds each output's worst comparison over the calls
    runs: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=0.0)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "atol": self.atol, "rtol": self.rtol, "seed": self.seed,
                "max_abs": self.max_abs, "max_rel": self.max_rel,
                "engine": self.engine, "outputs": [asdict(o) for o in self.outputs],
                **({"note": self.note} if self.note else {}),
                **({"runs": self.runs} if self.runs else {})}

    @classmethod
    def merged(cls, runs: list[tuple[dict, str, VerifyReport]]) -> VerifyReport:
        """One report over several calls (``(sizes, function, report)`` each): every output's
        worst comparison, and the calls listed in ``runs``."""
        first = runs[0][2]
        out = cls(first.atol, first.rtol, seed=first.seed, note=first.note, engine=first.engine)
        worst: dict[str, OutputComparison] = {}
        for _sizes, _function, rep in runs:
            out.atol, out.rtol = max(out.atol, rep.atol), max(out.rtol, rep.rtol)
            for o in rep.outputs:
                if o.name not in worst or (not o.passed, o.worst_ratio) > (
                        not worst[o.name].passed, worst[o.name].worst_ratio):
                    worst[o.name] = o
        out.outputs = list(worst.values())
        out.runs = [{"sizes": dict(sizes), "function": function, "passed": rep.passed,
                     "max_abs": rep.max_abs, "max_rel": rep.max_rel,
                     "shapes": {o.name: o.shape for o in rep.outputs}}
                    for sizes, function, rep in runs]
        return out


def allowed_outliers(size: int, fraction: float) -> int:
    """Elements of an output of ``size`` that may lie beyond the tolerance: ``fraction`` of them,
    at least one (none when ``fraction`` is 0)."""
    return max(1, int(size * fraction)) if fraction > 0 else 0


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], *,
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, outliers: float = 0.0,
            outlier_factor: float = 1.0) -> VerifyReport:
    """Compare outputs by name: pass where ``|cand - ref| <= atol + rtol * |ref|`` everywhere, or
    (``outliers`` > 0) everywhere but at :func:`allowed_outliers` elements, which stay within
    ``outlier_factor`` times the tolerance."""
    report = VerifyReport(atol=atol, rtol=rtol)
    for name, ref in reference.items():
        ref = np.asarray(ref)
        cand = np.asarray(candidate[name]) if name in candidate else None
        if cand is None or cand.shape != ref.shape:
            report.outputs.append(OutputComparison(name, list(ref.shape), float("inf"),
                                                   float("inf"), float("inf"), False))
            continue
        if ref.dtype.kind in "fc" or cand.dtype.kind in "fc":
            r = ref.astype(np.float64)
            c = cand.astype(np.float64)
        else:
            r = ref.astype(np.int64) if ref.dtype.kind != "b" else ref.astype(np.int8)
            c = cand.astype(np.int64) if cand.dtype.kind != "b" else cand.astype(np.int8)
        if r.size == 0:
            report.outputs.append(OutputComparison(name, list(ref.shape), 0.0, 0.0, 0.0, True))
            continue
        same_nonfinite = (~np.isfinite(r) & (r == c)) if r.dtype.kind == "f" else np.zeros(r.shape, bool)
        diff = np.where(same_nonfinite, 0.0, np.abs(c - r).astype(np.float64))
        diff = np.nan_to_num(diff, nan=np.inf)
        mag = np.abs(np.where(same_nonfinite, 0.0, r)).astype(np.float64)
        max_abs = float(diff.max())
        max_rel = float((diff / np.maximum(mag, atol)).max())
        ratio = diff / (atol + rtol * mag)
        worst = float(ratio.max())
        beyond = int(np.count_nonzero(ratio > 1.0))
        passed = worst <= 1.0 or (beyond <= allowed_outliers(r.size, outliers)
                                  and worst <= outlier_factor)
        report.outputs.append(OutputComparison(name, list(ref.shape), max_abs, max_rel, worst,
                                               passed, beyond))
    return report
