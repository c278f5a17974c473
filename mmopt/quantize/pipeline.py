"""``mmopt.quantize.quantize``: the quantization pipeline, read top to bottom.

int8 (static QDQ), the default:

1. prepare: opset >= 13 (normalized to mmopt's MIN_OPSET), BN folded into Conv, shapes, node names
   (:mod:`mmopt.quantize.qdq`);
2. calibrate: stream the calibration samples through the float model, one fixed-size summary per
   activation (:mod:`mmopt.quantize.calibrate`), then ranges by ``method``;
3. write QDQ: int8 symmetric per-channel weights, int8/uint8 activations, int32 bias; a
   concatenation and its inputs share one range where that costs little resolution
   (:mod:`mmopt.quantize.shared_scales`);
4. with ``eval_data``: score int8 against float on ``eval_engine`` (``reference`` by default: the
   QDQ definition, identical on every CPU; ``onnxruntime``: its optimized, CPU-dependent int8
   kernels; :mod:`mmopt.runtime.ort`); with ``max_drop`` too, and a drop over it, keep the fewest
   layers in float until it fits (:mod:`mmopt.quantize.accuracy_aware`);
5. with ``per_layer``: every intermediate tensor of the float and the quantized model compared
   (:func:`mmopt.check.per_layer.compare_layers`, as ``mmopt check --per-layer`` does) on the first
   samples of the evaluation data (else of the calibration data): where along the network the
   error jumps.

``dtype="fp16"``: prepare, then fp16 with fp32 islands (:mod:`mmopt.quantize.fp16`); calibration
data, when given, only guards against fp16 overflow. ``weight_only=True``: int8 MatMul/Gemm weights
with float activations (:mod:`mmopt.quantize.weight_only`); no calibration.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from mmopt import ir as mir
from mmopt.check.per_layer import PerLayerReport
from mmopt.errors import MmoptError
from mmopt.quantize import accuracy_aware, calibrate as cal, data as qdata, qdq
from mmopt.quantize.evaluate import Evaluator, Score
from mmopt.quantize.latency_aware import LatencyReport
from mmopt.runtime import ort

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "percentile"
#: uint8 asymmetric: one more bit for the (mostly non-negative) activations than int8 symmetric
DEFAULT_ACTIVATIONS = "uint8"
DTYPES = ("int8", "fp16")
#: ``--prefer``: keep every quantizable layer int8 (accuracy budget permitting), or measure and
#: keep float the layers int8 makes slower (:mod:`mmopt.quantize.latency_aware`)
PREFER = ("accuracy", "speed")
#: bytes of intermediate activations one calibration batch may hold (sets the batch size)
BATCH_BYTES = 64 << 20
MAX_BATCH = 32

#: ``progress(stage, done, total or None)``; stages: calibrate, evaluate, sensitivity, fallback
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class QuantizeReport:
    dtype: str
    method: str | None = None
    per_channel: bool | None = None
    activations: str | None = None
    #: weight grid of static int8 (8: [-127, 127]; 7: [-64, 64], onnxruntime's reduce_range)
    weight_bits: int | None = None
    weight_only: bool = False
    samples: int = 0
    batches: int = 0
    tensors_calibrated: int = 0
    #: bytes of all calibration summaries together (independent of the number of samples)
    calibration_bytes: int = 0
    excluded: list[str] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    evaluation: Score | None = None
    #: how the evaluation ran the models (``--eval-engine``); None without evaluation
    eval_engine: str | None = None
    #: the target the ``artifact`` eval engine compiled for
    eval_target: str | None = None
    accuracy_aware: accuracy_aware.AccuracyAwareReport | None = None
    #: per calibrated tensor (graph order): ``{"tensor", "min", "max", "lo", "hi"}``, the values
    #: seen over the calibration data and the range ``method`` chose from them
    calibration_ranges: list[dict] = field(default_factory=list)
    #: float vs quantized model tensor by tensor (``per_layer=True``)
    per_layer: PerLayerReport | None = None
    #: ``prefer="speed"``: per-layer float/int8 kernel times and the choice made from them
    latency: LatencyReport | None = None
    #: concatenations given one range with their inputs (:mod:`mmopt.quantize.shared_scales`);
    #: None when ``share_concat_scales=False`` or not static int8
    shared_scales: dict | None = None
    details: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe (non-finite numbers as the strings "inf", "-inf", "nan", as ``mmopt check``
        writes them); ``kind`` says it is a quantize report (``mmopt report`` reads it)."""
        from mmopt.report.data import finite

        out = {"kind": "quantize", **{k: v for k, v in self.__dict__.items()
                                      if k not in ("evaluation", "accuracy_aware", "per_layer",
                                                   "latency")}}
        out["evaluation"] = self.evaluation.to_dict() if self.evaluation else None
        out["accuracy_aware"] = self.accuracy_aware.to_dict() if self.accuracy_aware else None
        out["per_layer"] = self.per_layer.to_dict() if self.per_layer else None
        out["latency"] = self.latency.to_dict() if self.latency else None
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return finite(out)


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _batch_size(model: onnx.ModelProto, tensors: Sequence[str],
                inputs: Sequence[qdata.InputSpec]) -> int:
    """As many samples as fit :data:`BATCH_BYTES` of calibrated activations (1 without a batch dim)."""
    if not all(s.batchable for s in inputs):
        return 1
    wanted = set(tensors)
    per_sample = 0
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if value.name in wanted:
            dims = mir.dims_of(value)
            per_sample += 4 * int(np.prod([d if isinstance(d, int) else 1 for d in dims]))
            wanted.discard(value.name)
    return int(max(1, min(MAX_BATCH, BATCH_BYTES // max(per_sample, 1))))


def quantize(
    model,
    calib_data=None,
    *,
    method: str = DEFAULT_METHOD,
    per_channel: bool = True,
    activations: str = DEFAULT_ACTIVATIONS,
    weight_bits: int = 8,
    exclude: Iterable[str] = (),
    samples: int | None = None,
    percentile: float = cal.DEFAULT_PERCENTILE,
    dtype: str = "int8",
    weight_only: bool = False,
    preprocess: qdata.Preprocess | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    eval_data=None,
    eval_samples: int | None = None,
    metric: str | None = None,
    max_drop: float | str | None = None,
    eval_engine: str = ort.DEFAULT_ENGINE,
    target: str = "x86",
    batch_size: int | None = None,
    per_layer: bool | int = False,
    prefer: str = "accuracy",
    share_concat_scales: bool = True,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Quantize ``model`` (path or ModelProto); returns the new model and a report.

    ``calib_data``: see :mod:`mmopt.quantize.data` (files, directories, arrays, iterables).
    ``exclude``: node names or op types kept in float. ``weight_bits``: 8 (weights on
    ``[-127, 127]``) or 7 (``[-64, 64]``, onnxruntime's ``reduce_range``: exact and about twice as
    fast int8 convolutions on x86 CPUs without VNNI, for about one bit of weight precision). ``samples``: use at most this many
    calibration samples. ``eval_data`` + ``metric`` score the result against the float model, both
    run on ``eval_engine`` (``"reference"``, ``"onnxruntime"`` or ``"artifact"``: compiled for
    ``target`` and run here; see :mod:`mmopt.quantize.evaluate`);
    ``max_drop`` turns on accuracy-aware mode. It is read as ``mmopt check --max-drop`` reads it
    (:func:`mmopt.check.thresholds.parse_max_drop`): ``"0.5%"`` is half a percentage point of the
    metric's drop (see :mod:`mmopt.quantize.evaluate`), a bare number below 1 a fraction
    (``0.005`` = ``"0.5%"``), a bare number >= 1 an error. ``per_layer``: compare the float and
    the quantized model tensor by tensor on the first samples (``True``: as many as
    ``mmopt check --per-layer`` takes; a number: that many) of ``eval_data``, else of
    ``calib_data`` (``report.per_layer``). ``prefer="speed"`` (static int8): the float and the
    int8 model are compiled for ``target`` and profiled here, and the contractions whose int8
    kernel measured slower than their float one stay float when that makes the whole model faster
    (:mod:`mmopt.quantize.latency_aware`; ``report.latency``); ``"accuracy"`` (default) keeps every
    quantizable layer int8 unless ``max_drop`` needs it float. ``share_concat_scales`` (static
    int8): a concatenation and its inputs get one range where no tensor's quantization step grows
    more than 4x, so the compiled concatenation copies bytes instead of requantizing
    (:mod:`mmopt.quantize.shared_scales`; ``report.shared_scales``).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise MmoptError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    if method not in cal.METHODS:
        raise MmoptError(f"--method {method}: use one of {', '.join(cal.METHODS)}")
    if activations not in qdq.ACTIVATION_TYPES:
        raise MmoptError(f"--activations {activations}: use one of "
                         f"{', '.join(qdq.ACTIVATION_TYPES)}")
    if weight_bits not in qdq.WEIGHT_LIMITS:
        raise MmoptError(f"--weight-bits {weight_bits}: use one of "
                         f"{', '.join(str(b) for b in qdq.WEIGHT_LIMITS)}")
    if not 0 < percentile <= 100:
        raise MmoptError(f"--percentile {percentile}: must be in (0, 100]")
    from mmopt.quantize.evaluate import check_engine

    eval_engine = check_engine(eval_engine)
    if max_drop is not None:
        from mmopt.check.thresholds import parse_max_drop

        max_drop = parse_max_drop(max_drop)
    if max_drop is not None and eval_data is None:
        raise MmoptError("--max-drop needs --eval DATA (the samples to measure the drop on)")
    if max_drop is not None and (dtype != "int8" or weight_only):
        raise MmoptError("--max-drop applies to static int8 quantization only")
    if samples is not None and samples <= 0:
        raise MmoptError(f"--samples {samples}: must be positive")
    if prefer not in PREFER:
        raise MmoptError(f"--prefer {prefer}: use one of {', '.join(PREFER)}")
    if prefer == "speed" and (dtype != "int8" or weight_only):
        raise MmoptError("--prefer speed applies to static int8 quantization only")

    from mmopt import frontends

    # any supported framework (ONNX, PyTorch, TensorFlow/Keras/TFLite, Caffe)
    source = mir.load(frontends.to_onnx(model, input_shapes=input_shapes))
    prepared = qdq.prepare(source, input_shapes)
    inputs = qdata.input_specs(prepared)
    excluded = qdq.resolve_exclude(prepared, exclude)
    report = QuantizeReport(dtype=dtype, excluded=excluded, ops_before=_ops(source),
                            weight_only=weight_only)
    timings["prepare"] = time.perf_counter() - t0

    def stage(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    if dtype == "fp16":
        from mmopt.quantize.fp16 import convert_fp16

        magnitudes = None
        if calib_data is not None:
            t0 = time.perf_counter()
            inits = {t.name for t in prepared.graph.initializer}
            floats = sorted(qdq.float_tensors(prepared) - inits)
            src = qdata.open_data(calib_data, inputs, preprocess=preprocess)
            result = cal.calibrate(prepared, floats, qdata.batches(
                src, inputs, batch_size or _batch_size(prepared, floats, inputs), limit=samples),
                histogram=False, total=src.count(samples), progress=stage("calibrate"))
            magnitudes = {k: max(abs(h.min), abs(h.max)) for k, h in result.stats.items()
                          if h.count}
            report.samples, report.batches = result.samples, result.batches
            timings["calibrate"] = time.perf_counter() - t0
        out, fp16_report = convert_fp16(prepared, keep_nodes=excluded, magnitudes=magnitudes)
        report.kept_float = fp16_report.kept_fp32
        report.details["fp16"] = fp16_report.to_dict()
    elif weight_only:
        from mmopt.quantize.weight_only import quantize_weights

        out, wo = quantize_weights(prepared, exclude=excluded)
        report.details["weight_only"] = wo.to_dict()
        report.per_channel = True
    else:
        if calib_data is None:
            raise MmoptError("static int8 quantization needs calibration data (--calib DATA); "
                             "--weight-only or --dtype fp16 need none")
        report.method, report.per_channel, report.activations = method, per_channel, activations
        report.weight_bits = weight_bits
        t0 = time.perf_counter()
        tensors = qdq.calibration_tensors(prepared, excluded)
        src = qdata.open_data(calib_data, inputs, preprocess=preprocess)
        size = batch_size or _batch_size(prepared, tensors, inputs)
        result = cal.calibrate(prepared, tensors, qdata.batches(src, inputs, size, limit=samples),
                               histogram=method != "minmax", total=src.count(samples),
                               progress=stage("calibrate"))
        ranges = result.ranges(method, unsigned=activations == "uint8", percentile=percentile)
        from mmopt.quantize import shared_scales

        # concatenations whose output would lose their narrow inputs' precision, read by float
        # nodes only (a detector's output): float, so that precision reaches the output
        wide = shared_scales.float_output_concats(prepared, ranges,
                                                  qdq.quantized_nodes(prepared, excluded))
        if wide:
            logger.info("concatenation(s) kept float (inputs' ranges differ by over %gx, output "
                        "read by float nodes only): %s", shared_scales.DEFAULT_LIMIT,
                        ", ".join(wide))
            report.kept_float = [*wide]
            report.details["float_concats"] = [*wide]
        if share_concat_scales:
            ranges, shared = shared_scales.share_concat_ranges(
                ranges, qdq.quantized_nodes(prepared, [*excluded, *wide]))
            report.shared_scales = shared.to_dict()
        report.calibration_ranges = [
            {"tensor": name, "min": float(result.stats[name].min),
             "max": float(result.stats[name].max),
             "lo": float(ranges[name][0]), "hi": float(ranges[name][1])}
            for name in tensors if name in ranges and result.stats[name].count]
        report.samples, report.batches = result.samples, result.batches
        report.tensors_calibrated = len(tensors)
        report.calibration_bytes = result.summary_bytes
        timings["calibrate"] = time.perf_counter() - t0

        def build(kept: Sequence[str]) -> onnx.ModelProto:
            return qdq.write_qdq(prepared, ranges, per_channel=per_channel,
                                 activations=activations, exclude=[*excluded, *wide, *kept],
                                 weight_bits=weight_bits)

        t0 = time.perf_counter()
        out = build([])
        timings["write_qdq"] = time.perf_counter() - t0
        if eval_data is not None:
            t0 = time.perf_counter()
            evaluator = _evaluator(prepared, eval_data, inputs, preprocess, eval_samples, metric,
                                   eval_engine, target)
            score = evaluator.score(out)
            report.evaluation = score
            timings["evaluate"] = time.perf_counter() - t0
            if max_drop is not None and score.drop > max_drop:
                t0 = time.perf_counter()
                candidates = qdq.quantized_nodes(prepared, [*excluded, *wide])
                out, aa = accuracy_aware.recover(build, evaluator, candidates, max_drop,
                                                 initial=(out, score), progress=progress)
                report.accuracy_aware = aa
                report.kept_float = [*wide, *aa.kept_float]
                report.evaluation = aa.final
                timings["accuracy_aware"] = time.perf_counter() - t0
            elif max_drop is not None:
                report.accuracy_aware = accuracy_aware.AccuracyAwareReport(
                    evaluator.metric, max_drop, met=True, final=score,
                    steps=[accuracy_aware.Step("all int8", [], score, True)])
        if prefer == "speed":
            from mmopt.quantize import latency_aware

            t0 = time.perf_counter()
            out, report.latency = latency_aware.choose(
                build, prepared, out, [*excluded, *report.kept_float], target=target,
                input_shapes=input_shapes, progress=progress)
            if report.latency.kept_float:
                report.kept_float = [*report.kept_float, *report.latency.kept_float]
                if eval_data is not None:  # the score of the model written, not of its all-int8 twin
                    report.evaluation = _evaluator(prepared, eval_data, inputs, preprocess,
                                                   eval_samples, metric, eval_engine,
                                                   target).score(out)
            timings["latency_aware"] = time.perf_counter() - t0
    if eval_data is not None and report.evaluation is None:
        evaluator = _evaluator(prepared, eval_data, inputs, preprocess, eval_samples, metric,
                               eval_engine, target)
        report.evaluation = evaluator.score(out)
    if eval_data is not None:
        report.eval_engine = eval_engine
        report.eval_target = target if eval_engine == "artifact" else None
    if per_layer:
        t0 = time.perf_counter()
        report.per_layer = _per_layer(prepared, out, eval_data, calib_data, inputs, preprocess,
                                      per_layer)
        timings["per_layer"] = time.perf_counter() - t0
    report.ops_after = _ops(out)
    report.timings = timings
    return out, report


def _per_layer(prepared, out, eval_data, calib_data, inputs, preprocess,
               samples: bool | int) -> PerLayerReport:
    from mmopt.check.api import DEFAULT_PER_LAYER_SAMPLES
    from mmopt.check.per_layer import compare_layers

    data = eval_data if eval_data is not None else calib_data
    if data is None:
        raise MmoptError("--per-layer needs samples to compare on: --eval DATA or --calib DATA")
    count = DEFAULT_PER_LAYER_SAMPLES if samples is True else int(samples)
    src = qdata.open_data(data, inputs, preprocess=preprocess,
                          what="--eval" if eval_data is not None else "--calib")
    feeds, _labels = qdata.materialize(src, count)
    return compare_layers(prepared, out, feeds, labels=("float model", "quantized model"))


def _evaluator(prepared, eval_data, inputs, preprocess, limit, metric, engine,
               target="x86") -> Evaluator:
    src = qdata.open_data(eval_data, inputs, preprocess=preprocess, what="--eval")
    feeds, labels = qdata.materialize(src, limit)
    if metric == "top1" and labels is None:
        logger.info("--eval data has no labels: top1 is measured as agreement with the float model")
    return Evaluator(prepared, feeds, labels, metric,
                     batchable=all(s.batchable for s in inputs), engine=engine, target=target)
