"""``check()``: run a reference and a candidate on the same data and gate the candidate's accuracy."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from mmopt.check.data import load_data, load_labels
from mmopt.check.metrics import METRICS, OutputAccumulator, wants_class_scores
from mmopt.check.per_layer import DEFAULT_JUMP_DB, compare_layers
from mmopt.check.report import CheckReport
from mmopt.check.runners import ArtifactRunner, OnnxRunner, Runner, open_runner
from mmopt.check.thresholds import Thresholds, evaluate
from mmopt.errors import MmoptError
from mmopt.runtime import ort

logger = logging.getLogger(__name__)

DEFAULT_PER_LAYER_SAMPLES = 8
DEFAULT_WORST = 3


def check(
    reference,
    candidate,
    data,
    *,
    labels=None,
    thresholds: Thresholds | None = None,
    per_output: Mapping[str, Thresholds] | None = None,
    metrics: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    per_layer: bool = False,
    per_layer_samples: int = DEFAULT_PER_LAYER_SAMPLES,
    jump_db: float = DEFAULT_JUMP_DB,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    worst: int = DEFAULT_WORST,
    eval_engine: str = ort.DEFAULT_ENGINE,
    progress: Callable[[str], None] | None = None,
    **threshold_values,
) -> CheckReport:
    """Compare ``candidate`` against ``reference`` on ``data``; the report says whether it passes.

    ``reference``/``candidate``: an ``.onnx`` path or ``onnx.ModelProto`` (onnxruntime), a compiled
    artifact (``NAME``/``NAME.so``/``NAME.json`` or a loaded ``CompiledModel``), ``zoo:NAME``, or a
    :class:`~mmopt.check.runners.Runner`. ``data``: see :mod:`mmopt.check.data` (``random:N``, an
    ``.npz``/``.npy`` file, a directory, or ``{input: array with a leading sample axis}``).
    ``labels``: a file or an integer array, one class per sample. ``eval_engine``: how ONNX models
    run (:data:`mmopt.runtime.ort.ENGINES`): ``"reference"`` (default; onnxruntime with graph
    optimizations off, so QDQ models compute dequantize -> float op -> quantize, the same on every
    CPU) or ``"onnxruntime"`` (onnxruntime's default optimizations: fused int8 kernels whose results
    depend on the CPU; for models shipped on onnxruntime).

    Thresholds come as keywords (``min_cosine=0.99, max_drop="1%", min_snr=20, min_top1=...,
    min_top5=..., atol=..., rtol=...``; fractions also as ``"1%"``; ``max_drop`` as
    :func:`~mmopt.check.thresholds.parse_max_drop` reads it: ``"1%"`` or the fraction ``0.01``,
    never a bare number >= 1) and/or ``thresholds=``;
    ``per_output={name: Thresholds(...)}`` overrides them for single outputs. Bad input raises
    :class:`MmoptError`; a failed threshold does not raise: see ``report.passed``.
    """
    step = progress or (lambda _msg: None)
    eval_engine = ort.check_engine(eval_engine)
    unknown = [k for k in threshold_values if k not in Thresholds.names()]
    if unknown:
        raise TypeError(f"check() got unexpected keyword argument(s): {', '.join(unknown)}")
    base = (thresholds or Thresholds()).merged(Thresholds.from_mapping(threshold_values, "check()"))
    if per_layer and per_layer_samples < 1:
        raise MmoptError(f"--per-layer-samples must be at least 1, got {per_layer_samples}")
    force = wants_class_scores(metrics)
    metrics = _metric_names(metrics)
    per_output = dict(per_output or {})

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    step("loading the reference")
    ref = open_runner(reference, "reference", engine=eval_engine)
    step("loading the candidate")
    cand = open_runner(candidate, "candidate", engine=eval_engine)
    _check_inputs(ref, cand)
    artifact_layers = isinstance(ref, OnnxRunner) and isinstance(cand, ArtifactRunner)
    if per_layer and not (isinstance(ref, OnnxRunner)
                          and (isinstance(cand, OnnxRunner) or artifact_layers)):
        raise MmoptError("--per-layer compares an ONNX reference with an ONNX candidate (e.g. fp32 "
                         "vs its QDQ version) or with the artifact compiled from it; got "
                         f"{ref.describe()} and {cand.describe()}")
    dataset = load_data(data, ref.inputs, seed=seed, input_shapes=input_shapes)
    label_array = load_labels(labels, len(dataset)) if labels is not None else None
    pairs, notes = _pair_outputs(ref, cand, output_names)
    unknown_outputs = [n for n in per_output if n not in {r for r, _ in pairs}]
    if unknown_outputs:
        raise MmoptError(f"thresholds for unknown output(s) {', '.join(unknown_outputs)}; compared "
                         f"outputs: {', '.join(r for r, _ in pairs)}")
    resolved = {r: base.merged(per_output.get(r)) for r, _ in pairs}
    timings["load"] = time.perf_counter() - t0

    accumulators = {r: OutputAccumulator(r, class_scores=force, atol=resolved[r].atol,
                                         rtol=resolved[r].rtol) for r, _ in pairs}
    timings["reference"] = timings["candidate"] = 0.0
    for i in range(len(dataset)):
        step(f"sample {i + 1}/{len(dataset)}")
        feeds = dataset[i]
        t0 = time.perf_counter()
        expected = ref(feeds)
        t1 = time.perf_counter()
        got = cand(feeds)
        t2 = time.perf_counter()
        timings["reference"] += t1 - t0
        timings["candidate"] += t2 - t1
        label = label_array[i] if label_array is not None else None
        for r_name, c_name in pairs:
            r_value, c_value = expected[r_name], got[c_name]
            if r_value.shape != c_value.shape:
                raise MmoptError(f"output {r_name}: the reference gives shape {list(r_value.shape)}, "
                                 f"the candidate {list(c_value.shape)} (sample {dataset.ids[i]}); "
                                 "the models are not comparable")
            accumulators[r_name].add(i, dataset.ids[i], r_value, c_value, label)
    outputs = [accumulators[r].result(worst) for r, _ in pairs]
    if label_array is not None and not any(m.accuracy_reference is not None for m in outputs):
        notes.append("--labels given, but no output holds one class-score vector per sample "
                     "matching them: no accuracy computed")
    checks = evaluate(outputs, resolved, has_labels=label_array is not None)
    if not checks:
        notes.append("no thresholds given: metrics only, the check always passes")

    layers = None
    if per_layer:
        step("comparing layer by layer")
        t0 = time.perf_counter()
        count = min(per_layer_samples, len(dataset))
        if artifact_layers:
            from mmopt.check.artifact_layers import compare_artifact_layers

            layers = compare_artifact_layers(ref.model, cand.compiled,
                                             (dataset[i] for i in range(count)), jump_db=jump_db,
                                             progress=step)
        else:
            layers = compare_layers(ref.model, cand.model, (dataset[i] for i in range(count)),
                                    jump_db=jump_db, labels=(ref.label, cand.label))
        timings["per_layer"] = time.perf_counter() - t0

    thresholds_dict = {"all outputs": base.to_dict(),
                       **{k: v.to_dict() for k, v in per_output.items()}}
    return CheckReport(
        reference=ref.describe(), candidate=cand.describe(), data=dataset.description,
        samples=len(dataset), labels=label_array is not None, thresholds=thresholds_dict,
        eval_engine=eval_engine if any(isinstance(r, OnnxRunner) for r in (ref, cand)) else None,
        outputs=outputs, checks=checks, per_layer=layers, metrics=metrics,
        seconds={k: round(v, 4) for k, v in timings.items()}, notes=notes)


def _metric_names(metrics: Sequence[str] | None) -> list[str]:
    if not metrics:
        return list(METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise MmoptError(f"--metric {', '.join(unknown)}: unknown; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def _check_inputs(ref: Runner, cand: Runner) -> None:
    r_names = [s.name for s in ref.inputs]
    c_names = [s.name for s in cand.inputs]
    if sorted(r_names) != sorted(c_names):
        raise MmoptError(f"the models take different inputs: reference {', '.join(r_names)}; "
                         f"candidate {', '.join(c_names)}")
    c_specs = {s.name: s for s in cand.inputs}
    for spec in ref.inputs:
        other = c_specs[spec.name]
        fixed = [(a, b) for a, b in zip(spec.dims, other.dims) if isinstance(a, int)
                 and isinstance(b, int)]
        if (len(spec.dims) and len(other.dims) and len(spec.dims) != len(other.dims)) or any(
                a != b for a, b in fixed):
            raise MmoptError(f"input {spec.name}: the reference expects {list(spec.dims)}, the "
                             f"candidate {list(other.dims)}")


def _pair_outputs(ref: Runner, cand: Runner, wanted: Sequence[str] | None
                  ) -> tuple[list[tuple[str, str]], list[str]]:
    """``[(reference output, candidate output)]`` by name, or by position when no name matches."""
    notes: list[str] = []
    r_names, c_names = ref.output_names, cand.output_names
    if set(r_names) <= set(c_names):
        pairs = [(n, n) for n in r_names]
    elif not set(r_names) & set(c_names) and len(r_names) == len(c_names):
        pairs = list(zip(r_names, c_names))
        notes.append("output names differ; matched by position: "
                     + ", ".join(f"{r} ~ {c}" for r, c in pairs))
    else:
        missing = [n for n in r_names if n not in c_names]
        raise MmoptError(f"the candidate has no output(s) {', '.join(missing)} (it has "
                         f"{', '.join(c_names)}); compare models with the same outputs")
    if wanted:
        unknown = [w for w in wanted if w not in r_names]
        if unknown:
            raise MmoptError(f"--output-name {', '.join(unknown)}: no such output; the reference "
                             f"has {', '.join(r_names)}")
        pairs = [p for p in pairs if p[0] in wanted]
    return pairs, notes
