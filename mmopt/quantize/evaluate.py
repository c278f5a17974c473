"""Scoring a quantized model against its float original on an evaluation set.

Every metric is reported as a *drop* in percentage points, so one ``--max-drop`` reads the same
way for all of them (``r`` = float output of one sample, ``c`` = quantized output, first model
output):

- ``top1``: with labels, top-1 accuracy (%) of the float model minus that of the quantized one;
  without labels, 100 minus the top-1 agreement (%) with the float model.
- ``cosine``: ``100 * (1 - mean cos(r, c))``: 0.5 means a mean cosine similarity of 0.995.
- ``snr``: noise energy as a percentage of signal energy, ``100 * sum (c - r)^2 / sum r^2`` over the
  whole set: 1 means an SNR of 20 dB, 0.1 of 30 dB.

``--max-drop 0.5%`` (or the fraction ``0.005``) is half a point of these, spelled and read as
``mmopt check --max-drop`` (:func:`mmopt.check.thresholds.parse_max_drop`).

The float outputs are computed once; samples are stacked into batches along a symbolic batch dim.

Models run on ``engine`` (:data:`ENGINES`): ``reference`` (the default) executes a QDQ model by
its ONNX definition, dequantize -> float op -> quantize, the same on every CPU and what mmopt's
compiled int8 kernels compute; ``onnxruntime`` runs onnxruntime's optimized execution, whose fused
int8 kernels differ from CPU to CPU (for models shipped on onnxruntime); ``artifact`` compiles
each candidate with ``mmopt.compile`` for ``target`` and runs the artifact here, sample by sample
(what is deployed; a compile per candidate, so the accuracy-aware search is slower). The float
model is always scored on ``reference`` (with ``onnxruntime``: on onnxruntime).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from mmopt.errors import MmoptError
from mmopt.runtime import ort

METRICS = ("top1", "cosine", "snr")
EVAL_BATCH = 64
#: ``--eval-engine`` values of ``quantize``: onnxruntime's (:data:`mmopt.runtime.ort.ENGINES`) and
#: the compiled artifact
ARTIFACT = "artifact"
ENGINES = (*ort.ENGINES, ARTIFACT)


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a usage error."""
    if engine not in ENGINES:
        raise MmoptError(f"--eval-engine {engine}: use one of {', '.join(ENGINES)}")
    return engine


def describe_engine(engine: str, target: str | None = None) -> str:
    """What ``engine`` executes, for reports."""
    if engine == ARTIFACT:
        return f"the compiled mmopt artifact for target {target}, run on this machine"
    return ort.ENGINE_DESCRIPTIONS[engine]


@dataclass
class Score:
    metric: str
    #: drop in percent points against the float model (the quantity --max-drop bounds)
    drop: float
    #: top-1 accuracy or agreement in %, for every metric when the output holds class scores
    top1: float | None
    #: float model's top-1 accuracy in % (labels only)
    top1_float: float | None
    cosine: float
    snr_db: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


class Evaluator:
    """Runs models on a fixed evaluation set and scores them against the float ``reference``.

    ``engine``: how the models are executed (module docs), one of :data:`ENGINES`; ``target``: what
    the ``artifact`` engine compiles for (it must run here).
    """

    def __init__(self, reference: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]],
                 labels: np.ndarray | None, metric: str | None = None, *, batchable: bool = False,
                 engine: str = ort.DEFAULT_ENGINE, target: str = "x86"):
        if metric is None:
            metric = "top1" if labels is not None else "cosine"
        if metric not in METRICS:
            raise MmoptError(f"--metric {metric}: use one of {', '.join(METRICS)}")
        self.metric = metric
        self.engine = check_engine(engine)
        self.target = target
        if self.engine == ARTIFACT:
            from mmopt import targets

            tgt = targets.get(target)
            if not tgt.runs_here():
                raise MmoptError(f"--eval-engine artifact: target {tgt.name} cannot run on this "
                                 f"machine ({tgt.why_not_here()}); use --eval-engine reference")
        self.labels = labels
        self.samples = list(samples)
        size = EVAL_BATCH if batchable else 1
        self.batches = [
            ({k: np.concatenate([s[k] for s in samples[i:i + size]]) for k in samples[0]},
             len(samples[i:i + size]))
            for i in range(0, len(samples), size)]
        self.count = len(samples)
        self.reference = self.run(reference, "evaluation (float model)", float_model=True)
        if metric == "top1" and not self._class_scores(self.reference):
            raise MmoptError(f"--metric top1: the first output has shape "
                             f"{list(self.reference.shape)} over the set; top-1 needs class scores "
                             "[N, classes]")

    def run(self, model: onnx.ModelProto, label: str = "evaluation (quantized model)", *,
            float_model: bool = False) -> np.ndarray:
        """The first output over the whole set, samples along axis 0."""
        if self.engine == ARTIFACT and not float_model:
            return self._run_artifact(model, label)
        engine = ort.DEFAULT_ENGINE if self.engine == ARTIFACT else self.engine
        session = ort.engine_session(model, engine, label=label)
        name = session.get_outputs()[0].name
        outputs = []
        for feeds, n in self.batches:
            out = np.asarray(ort.run(session, feeds, label=label, names=[name])[0])
            outputs.append(out if out.ndim and out.shape[0] == n else out[np.newaxis])
        return np.concatenate(outputs).astype(np.float64)

    def _run_artifact(self, model: onnx.ModelProto, label: str) -> np.ndarray:
        """Compile ``model`` for :attr:`target` (input shapes: one sample's) and run each sample
        through the artifact."""
        import tempfile
        from pathlib import Path

        from mmopt import api

        shapes = {k: tuple(v.shape) for k, v in self.samples[0].items()}
        name = model.graph.output[0].name
        with tempfile.TemporaryDirectory(prefix="mmopt-eval-") as tmp:
            try:
                result = api.compile(model, self.target, Path(tmp) / "candidate",
                                     input_shapes=shapes, verify=False)
            except MmoptError as exc:
                raise MmoptError(f"{label}: compiling for --eval-engine artifact failed: "
                                 f"{exc}") from exc
            compiled = api.load(result.library)
            outputs = [np.asarray(compiled(**sample)[name]) for sample in self.samples]
        return np.concatenate([o if o.ndim and o.shape[0] == 1 else o[np.newaxis]
                               for o in outputs]).astype(np.float64)

    @staticmethod
    def _class_scores(out: np.ndarray) -> bool:
        return out.ndim >= 2 and int(np.prod(out.shape[1:])) >= 2

    def score(self, model: onnx.ModelProto) -> Score:
        return self.compare(self.run(model))

    def compare(self, got: np.ndarray) -> Score:
        ref = self.reference
        r = ref.reshape(ref.shape[0], -1)
        c = got.reshape(got.shape[0], -1)
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        dots = (r * c).sum(1)
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), 1.0)
        noise = float(((c - r) ** 2).sum())
        signal = float((r**2).sum())
        snr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
        top1 = top1_float = None
        if self._class_scores(ref):
            pred, pred_ref = c.argmax(1), r.argmax(1)
            if self.labels is not None:
                top1 = 100.0 * float((pred == self.labels).mean())
                top1_float = 100.0 * float((pred_ref == self.labels).mean())
            else:
                top1 = 100.0 * float((pred == pred_ref).mean())
        if self.metric == "top1":
            drop = (top1_float if top1_float is not None else 100.0) - top1
        elif self.metric == "cosine":
            drop = 100.0 * (1.0 - float(cos.mean()))
        else:
            drop = 100.0 * noise / max(signal, 1e-300)
        return Score(self.metric, float(drop), top1, top1_float, float(cos.mean()), snr)

    def noise(self, got: np.ndarray) -> float:
        """``100 * sum (c - r)^2 / sum r^2``: a continuous error, for ranking layers."""
        return 100.0 * float(((got - self.reference) ** 2).sum()) / max(
            float((self.reference**2).sum()), 1e-300)
