"""Latency-aware mixed precision (``mmopt quantize --prefer speed``).

int8 is not faster everywhere: a layer whose integer kernel has little work per byte (a 1x1
convolution over few channels followed by a hard-swish table read, a transposing head) or no fast
instruction on the CPU (a depthwise convolution on x86 without VNNI) can measure slower than its
float kernel. Which layers these are depends on the target, so they are measured, not guessed:

1. the float model and the all-int8 QDQ model are compiled for the target and profiled here
   kernel by kernel (:func:`mmopt.runtime.profile.profile`, minimum over the runs, which a busy
   machine inflates least);
2. each kernel's time is attributed to the quantizable contractions (Conv, ConvTranspose, MatMul,
   Gemm) it computes (the profiler maps kernels to the ONNX nodes they came from; a kernel that
   computes several of them is split evenly);
3. a layer whose int8 time exceeds its float time by more than :data:`MARGIN` (and
   :data:`MIN_DIFFERENCE_MS`) is a candidate for float;
4. the mixed model (the candidates float) is compiled and profiled too: a float layer between
   int8 ones adds a dequantize and a quantize, which can cost more than the layer saved, so a
   candidate whose time in the mixed model (its kernels with the conversions fused into them)
   is not below its int8 time goes back to int8, and that refined model is compiled as well;
5. the all-int8 model and the mixed one(s) are timed interleaved, and the fastest mixed model is
   kept only when it beats the all-int8 one by :data:`WHOLE_MARGIN`.

The report lists every layer's two times and the decision, and the three whole-model minimums.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx

#: contractions whose kernels dominate a model's time: the layers the decision is made for
CONTRACTIONS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: an int8 layer must be this much slower than its float kernel (relative) to stay float: below
#: it, run-to-run noise of per-kernel minimums decides
MARGIN = 0.10
#: ... and by at least this much in absolute terms (ms): a few microseconds are within what a
#: kernel's minimum moves between profiles
MIN_DIFFERENCE_MS = 0.005
#: the mixed model must beat the all-int8 one by this much (relative), in minimum and median, to
#: be chosen
WHOLE_MARGIN = 0.02


@dataclass
class LayerTiming:
    node: str
    op_type: str
    float_ms: float | None
    int8_ms: float | None
    #: the int8 time exceeds the float one by more than the margin
    int8_slower: bool = False

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type,
                "float_ms": None if self.float_ms is None else round(self.float_ms, 4),
                "int8_ms": None if self.int8_ms is None else round(self.int8_ms, 4),
                "int8_slower": self.int8_slower}


@dataclass
class LatencyReport:
    target: str
    threads: int
    runs: int
    margin: float = MARGIN
    layers: list[LayerTiming] = field(default_factory=list)
    #: whole-model minimums (ms) of the float and all-int8 models, from their profiles
    float_ms: float | None = None
    int8_ms: float | None = None
    #: the all-int8 and the mixed model timed interleaved, whole calls (ms): ``{"int8": {"min",
    #: "median"}, "mixed": {...}, "refined": {...}}`` ("refined" only when a layer went back to
    #: int8); None when no layer measured slower in int8
    interleaved: dict | None = None
    #: "all int8", "mixed" or "refined"
    chosen: str = "all int8"
    #: the layers the chosen model keeps in float for speed
    kept_float: list[str] = field(default_factory=list)
    #: candidates whose time in the mixed model was not below their int8 time (step 4): int8
    #: again in the refined model, ``{node: mixed ms}``
    reverted: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "layers"}
        for key in ("float_ms", "int8_ms"):
            out[key] = None if out[key] is None else round(out[key], 4)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out

    def summary(self) -> str:
        slower = [layer for layer in self.layers if layer.int8_slower]

        def ms(value):
            return "-" if value is None else f"{value:.3f} ms"

        text = (f"profiles ({self.target}, {self.threads} threads, min of {self.runs} runs): "
                f"float {ms(self.float_ms)}, int8 {ms(self.int8_ms)}")
        if self.interleaved:
            names = [n for n in ("int8", "mixed", "refined") if n in self.interleaved]
            mins = " vs ".join(ms(self.interleaved[n]["min"]) for n in names)
            medians = " vs ".join(ms(self.interleaved[n]["median"]) for n in names)
            text += f"; {' vs '.join(names)} interleaved: min {mins}, median {medians}"
        if self.reverted:
            text += f"; {len(self.reverted)} back to int8 after the mixed model's profile"
        text += (f"; {len(slower)} of {len(self.layers)} layers slower in int8; "
                 f"chosen: {self.chosen}")
        return text


def layer_times(kernels: Sequence, nodes: Mapping[str, str]) -> dict[str, float]:
    """Per node of ``nodes`` (name -> op type), the summed minimum time (ms) of the kernels that
    compute it; a kernel computing several of them is split evenly among them."""
    times: dict[str, float] = {}
    for kernel in kernels:
        mine = [n for n in dict.fromkeys(kernel.onnx_nodes) if n in nodes]
        for name in mine:
            times[name] = times.get(name, 0.0) + kernel.min_ms / len(mine)
    return times


def slower_layers(float_times: Mapping[str, float], int8_times: Mapping[str, float],
                  nodes: Mapping[str, str], margin: float = MARGIN) -> list[LayerTiming]:
    """Every node of ``nodes`` (graph order) with its two times, ``int8_slower`` where the int8
    time exceeds the float one by more than ``margin`` (a node missing from either profile is
    left int8: nothing measured says otherwise)."""
    rows = []
    for name, op_type in nodes.items():
        f, q = float_times.get(name), int8_times.get(name)
        slow = (f is not None and q is not None and q > f * (1 + margin)
                and q - f >= MIN_DIFFERENCE_MS)
        rows.append(LayerTiming(name, op_type, f, q, int8_slower=slow))
    return rows


def reverted_layers(candidates: Sequence[str], mixed_times: Mapping[str, float],
                    int8_times: Mapping[str, float]) -> dict[str, float]:
    """The candidates whose time in the mixed model (``mixed_times``: their float kernels with
    the quantize/dequantize kernels the profiler maps to them) is not below their all-int8 time,
    with that time: float does not pay for them in place. A candidate either profile does not map
    stays float (nothing measured says otherwise)."""
    out = {}
    for name in candidates:
        mixed, int8 = mixed_times.get(name), int8_times.get(name)
        if mixed is not None and int8 is not None and mixed >= int8:
            out[name] = round(mixed, 4)
    return out


def choose(build: Callable[[Sequence[str]], onnx.ModelProto], prepared: onnx.ModelProto,
           quantized: onnx.ModelProto, kept: Sequence[str], *, target: str,
           input_shapes: Mapping[str, Sequence[int]] | None = None, threads: int = 2,
           runs: int = 10, rounds: int = 2,
           progress: Callable[[str, int, int], None] | None = None,
           ) -> tuple[onnx.ModelProto, LatencyReport]:
    """The module docstring's steps. ``build(kept)`` writes the QDQ model with the nodes ``kept``
    in float; ``quantized`` is ``build(kept)``, the model chosen so far (``kept``: layers already
    float: asked for, or for accuracy; they are not measured). Returns the faster of it and the
    mixed model, and the report.

    A shared machine runs whole processes slower for minutes at a time, so nothing is compared
    across one such phase: the float and int8 profiles alternate ``rounds`` times (each kernel's
    minimum over all of them), and the int8 and mixed models are timed interleaved
    (:func:`mmopt.runtime.bench.time_engines`); the mixed model is chosen only when both its
    minimum and its median are :data:`WHOLE_MARGIN` lower."""
    import tempfile
    from pathlib import Path

    import mmopt
    from mmopt import ir as mir
    from mmopt import targets
    from mmopt.errors import MmoptError
    from mmopt.runtime.bench import time_engines
    from mmopt.runtime.inputs import random_feeds
    from mmopt.runtime.profile import profile

    tgt = targets.get(target)
    if not tgt.runs_here():
        raise MmoptError(f"--prefer speed measures the layers on this machine, and target "
                         f"{tgt.name} cannot run here ({tgt.why_not_here()})")
    report = LatencyReport(target=tgt.name, threads=threads, runs=runs * rounds)
    nodes = {n.name: n.op_type for n in prepared.graph.node
             if n.op_type in CONTRACTIONS and n.name and n.name not in set(kept)}
    steps = 2 + 2 * rounds + 4
    done = 0

    def step(finished: bool = False):
        nonlocal done
        done = steps if finished else done + 1
        if progress:
            progress("latency", done, steps)

    with tempfile.TemporaryDirectory(prefix="mmopt-latency-") as tmp:
        def compiled(model, name):
            step()
            path = Path(tmp) / f"{name}.onnx"  # a file: the profiler maps kernels to its nodes
            mir.save(model, path)
            return mmopt.compile(str(path), tgt.name, Path(tmp) / name, input_shapes=input_shapes,
                                 verify=False)

        float_art, int8_art = compiled(prepared, "float"), compiled(quantized, "int8")
        float_times: dict[str, float] = {}
        int8_times: dict[str, float] = {}
        for _ in range(rounds):
            for art, times, total in ((float_art, float_times, "float_ms"),
                                      (int8_art, int8_times, "int8_ms")):
                step()
                result = profile(str(art.library), threads=threads, runs=runs)
                for name, ms in layer_times(result.kernels, nodes).items():
                    times[name] = min(ms, times.get(name, ms))
                best = getattr(report, total)
                setattr(report, total, result.total_min_ms if best is None
                        else min(best, result.total_min_ms))
        report.margin = MARGIN
        report.layers = slower_layers(float_times, int8_times, nodes, MARGIN)
        unmapped = sum(1 for layer in report.layers
                       if layer.int8_ms is None or layer.float_ms is None)
        if unmapped:
            report.notes.append(f"{unmapped} layer(s) not found in both profiles (no kernel "
                                "mapped to them): left int8")
        slow = [layer.node for layer in report.layers if layer.int8_slower]
        if not slow:
            step(finished=True)
            return quantized, report
        candidates = {"mixed": (build([*kept, *slow]), slow)}
        mixed_art = compiled(candidates["mixed"][0], "mixed")
        step()
        mixed_profile = profile(str(mixed_art.library), threads=threads, runs=runs)
        report.reverted = reverted_layers(slow, layer_times(mixed_profile.kernels, nodes),
                                          int8_times)
        refined = [name for name in slow if name not in report.reverted]
        engines = [("int8", int8_art), ("mixed", mixed_art)]
        if report.reverted and refined:
            candidates["refined"] = (build([*kept, *refined]), refined)
            engines.append(("refined", compiled(candidates["refined"][0], "refined")))
        else:
            step()
        feeds = random_feeds(mixed_art.meta.inputs)
        timings = time_engines([("mmopt", str(art.library)) for _, art in engines], feeds,
                               threads=threads, warmup=3, repeat=max(10, runs), rounds=10)
        step(finished=True)
    timed = {name: t for (name, _), t in zip(engines, timings)}
    report.interleaved = {name: {"min": round(t.min_ms, 4), "median": round(t.median_ms, 4)}
                          for name, t in timed.items()}
    faster = 1 - WHOLE_MARGIN
    int8_timing = timed["int8"]
    winners = [name for name in candidates
               if timed[name].min_ms < int8_timing.min_ms * faster
               and timed[name].median_ms < int8_timing.median_ms * faster]
    if winners:
        best = min(winners, key=lambda name: timed[name].min_ms)
        report.chosen, report.kept_float = best, candidates[best][1]
        return candidates[best][0], report
    report.notes.append(f"no mixed model was {100 * WHOLE_MARGIN:.0f}% faster as a whole "
                        "(the dequantize/quantize around its float layers cost about what they "
                        "saved, or more): all int8 kept")
    return quantized, report
