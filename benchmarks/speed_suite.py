"""Speed suite: mmopt-compiled models against onnxruntime, same machine, same run, same threads.

    python benchmarks/speed_suite.py                      # fp32 untuned, all models and ISAs
    python benchmarks/speed_suite.py --models yolov8n_style --isa x86-avx2     # one model, one ISA
    python benchmarks/speed_suite.py --models ocr_det@960,yolov8n_style@320 --repeat 50
    python benchmarks/speed_suite.py --db tuning_db       # + fp32 with tuning records applied
    python benchmarks/speed_suite.py --tune-trials 64     # + fp32 tuned here first (64 trials/task)
    python benchmarks/speed_suite.py --tune-trials 64 --db tuning_db   # ... kept in tuning_db
    python benchmarks/speed_suite.py --int8               # + int8 (QDQ) models (and int8/fp32)
    python benchmarks/speed_suite.py --int8 --weight-bits 8   # int8 with full-range weights
    python benchmarks/speed_suite.py --nbits --models transformer_block   # + 4-bit MatMulNBits

Models: the zoo's (``mmopt zoo list``) and, when the rapidocr-onnxruntime wheel is installed, its
PP-OCR models (``ocr_det``, ``ocr_rec``, ``ocr_cls``). ``NAME@SIZE`` runs a detector at SIZExSIZE:
``ocr_det@960``, or a zoo model whose builder takes ``imgsz`` (``yolov8n_style@320``).

ISAs: each model is compiled for the host target ``x86`` (this CPU's own ``-mcpu``) and for every
one of ``x86-avx2`` / ``x86-avx512`` this CPU runs (``--isa`` picks some). All of a model's
artifacts and onnxruntime are timed in one run, their calls interleaved in blocks (see
mmopt.runtime.bench.time_engines), so a model's rows compare with each other and with onnxruntime.
onnxruntime picks its kernels by CPUID: next to an ``x86-avx2`` artifact on an AVX-512 CPU it runs
with AVX-512 hidden from its process (mmopt.runtime.cpu_mask, CPUID faulting), so that row compares
AVX2 code with onnxruntime's AVX2 kernels; each row records the ISA onnxruntime saw
(``onnxruntime_isa``) and, where the mask was needed but unavailable, a note saying so.

Writes ``benchmarks/results/speed.json`` and a bar chart of the ratios ``speed.png`` (ratio =
mmopt median latency / onnxruntime median latency; below 1 mmopt is faster). The JSON records the
CPU, its ISA flags, the thread count and the load average before and after the run (a warning is
printed while the 1-minute load average is above half the cores), min and median latency of both
engines, and achieved GFLOP/s (model FLOPs = ``mmopt inspect`` MACs x 2, over the median latency)
with, once ``mmopt.runtime.peak`` exists, the percentage of the FMA peak. This is a benchmark, not a
test: numbers depend on the machine and on what else runs on it; compare ratios, which are
measured side by side.

``--int8`` quantizes each model once (random calibration data, percentile ranges) with 7-bit
weights by default (``--weight-bits``; ``mmopt quantize --weight-bits 7``), the setting for x86
CPUs without VNNI, where they run on ``vpmaddubsw``; VNNI and ``sdot`` kernels run any weights at
the same speed. onnxruntime runs the same QDQ file. Int8 rows carry ``int8_vs_fp32`` (the mmopt
int8 artifact's median latency over the mmopt fp32 one's, same ISA) and ``weight_bits``.

``--nbits`` adds a ``q4`` variant of models with MatMul weights: onnxruntime's
``MatMulNBitsQuantizer`` (4-bit blocks of 32, asymmetric) replaces them by com.microsoft
``MatMulNBits``, which mmopt compiles as a kernel reading the packed weights; onnxruntime runs the
same q4 file. Its rows carry ``q4_vs_fp32`` (the mmopt q4 artifact's median latency over the mmopt
fp32 one's). Every row records its artifact's size (``artifact_bytes``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: ISA-specific x86 targets timed beside the host ``x86`` target when this CPU runs them
ISA_TARGETS = ("x86-avx2", "x86-avx512")
#: /proc/cpuinfo flags recorded with the results
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni")
#: each model's tuning search stops after this long (the in-model check of its records follows)
TUNE_BUDGET = "8m"
#: the PP-OCR text detector's suite resolutions (the other OCR models run at their one shape)
OCR_DET_SIZES = (320, 640, 960)


def _ocr_models() -> dict[str, tuple[str, dict]]:
    # located without importing the package: setup.sh installs the wheel without its dependencies
    # (pyclipper, ...), which its __init__ imports
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return {}
    root = Path(list(spec.submodule_search_locations)[0]) / "models"
    if not root.is_dir():
        return {}
    return {
        "ocr_det": (str(root / "ch_PP-OCRv4_det_infer.onnx"), {"x": (1, 3, 640, 640)}),
        "ocr_rec": (str(root / "ch_PP-OCRv4_rec_infer.onnx"), {"x": (1, 3, 48, 320)}),
        "ocr_cls": (str(root / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), {"x": (1, 3, 48, 192)}),
    }


#: CNNs, detectors, transformers, an LSTM and an MLP (the OCR models follow when installed)
ZOO = ["mobilenet_v2_style", "resnet50_style", "resnet18_style", "mobilenet_v3_style",
       "mobilenet_v3_large", "efficientnet_b0_style", "yolov8n_style", "yolox_style",
       "vit_tiny_style", "transformer_block", "lstm_classifier", "mlp_gelu"]


def default_models() -> list[str]:
    ocr = _ocr_models()
    extra = [f"ocr_det@{s}" for s in OCR_DET_SIZES] if "ocr_det" in ocr else []
    return ZOO + extra + [n for n in ocr if n != "ocr_det"]


def _resolve(name: str):
    """``(kind, base, size)`` for a suite model name; raises ValueError for an unknown one."""
    base, _, size = name.partition("@")
    if size and not size.isdigit():
        raise ValueError(f"{name}: SIZE in NAME@SIZE must be a number of pixels")
    side = int(size) if size else None
    if base in _ocr_models():
        if side is not None and base != "ocr_det":
            raise ValueError(f"{name}: only ocr_det takes @SIZE")
        return "ocr", base, side
    from models_zoo import MODELS

    if base not in MODELS:
        known = ", ".join(sorted(MODELS) + sorted(_ocr_models()))
        raise ValueError(f"unknown suite model {name!r}; known: {known}")
    if side is not None and "imgsz" not in inspect.signature(MODELS[base].builder).parameters:
        raise ValueError(f"{name}: zoo model {base} has a fixed resolution (no imgsz)")
    return "zoo", base, side


def _source(name: str):
    """``(onnx path or ModelProto, input shapes)`` for a suite model name."""
    kind, base, side = _resolve(name)
    if kind == "ocr":
        path, shapes = _ocr_models()[base]
        if side is not None:
            shapes = {"x": (1, 3, side, side)}
        return path, shapes
    from models_zoo import MODELS, build

    shapes = dict(MODELS[base].input_shapes)
    if side is None:
        return build(base), shapes
    (input_name, shape), = shapes.items()
    return build(base, imgsz=side), {input_name: (*shape[:2], side, side)}


# --------------------------------------------------------------------------------------------------
# the machine


def default_isas() -> list[str]:
    """``x86`` plus every target of :data:`ISA_TARGETS` this CPU can run."""
    from mmopt import targets

    return ["x86"] + [t for t in ISA_TARGETS if targets.get(t).runs_here()]


def _check_isas(isas: list[str]) -> None:
    from mmopt import targets

    for isa in isas:
        target = targets.get(isa)  # unknown names: one-line TargetError listing the known ones
        if target.device != "cpu" or target.arch != "x86_64":
            raise ValueError(f"--isa {isa}: the suite times x86 CPU targets only")
        if not target.runs_here():
            raise ValueError(f"--isa {isa}: cannot run here ({target.why_not_here()})")


def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = "unknown", frozenset()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, flags


def _cpu_name() -> str:
    return _cpuinfo()[0]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _check_load(when: str, warnings: list[str]) -> list[float]:
    """The load averages now; warns (stderr, and into ``warnings``) when the 1-minute one is above
    half the cores: other work is then competing with the timed engines."""
    load = _load()
    cores = _cores()
    if load and load[0] > cores / 2:
        message = (f"warning: 1-minute load average {load[0]:.2f} {when} is above half of the "
                   f"{cores} cores: other work competes with the timed engines")
        print(message, file=sys.stderr, flush=True)
        warnings.append(message)
    return load


def _peak_gflops(target: str, threads: int) -> float | None:
    """The measured FMA peak GFLOP/s of ``target``'s ISA on ``threads`` threads of this CPU
    (``mmopt.runtime.peak.fma_peak_gflops``); None when that module is missing or fails."""
    try:
        from mmopt.runtime.peak import fma_peak_gflops
    except ImportError:
        return None
    try:
        return round(float(fma_peak_gflops(target, threads)), 1)
    except Exception as exc:  # noqa: BLE001 - no peak: GFLOP/s without the percentage
        print(f"FMA peak of {target} not measured: {exc}", file=sys.stderr, flush=True)
        return None


def _model_flops(model) -> int | None:
    """FLOPs of one inference: ``mmopt inspect``'s MACs (Conv/Gemm/MatMul) x 2."""
    import mmopt

    try:
        return mmopt.inspect(model).flops
    except Exception:  # noqa: BLE001 - a benchmark without FLOPs is still a benchmark
        return None


def _throughput(flops: int | None, median_ms: float, peak: float | None) -> dict:
    if not flops or median_ms <= 0:
        return {"gflops": None, "pct_of_peak": None}
    gflops = flops / (median_ms * 1e-3) / 1e9
    return {"gflops": round(gflops, 2),
            "pct_of_peak": round(100 * gflops / peak, 1) if peak else None}


# --------------------------------------------------------------------------------------------------
# the run


def run(names, *, threads: int, repeat: int, warmup: int, db: str | None, int8: bool,
        out_dir: Path, tune_trials: int | None = None, search: str = "knobs",
        rounds: int = 1, isas: list[str] | None = None, nbits: bool = False,
        weight_bits: int = 7, tune_budget: str | None = TUNE_BUDGET) -> list[dict]:
    """Compile every model for every ISA (and variant), time them with onnxruntime; write
    speed.json and speed.png to ``out_dir``.

    ``rounds``: time all engines that many times (fresh processes each time) and keep, per row,
    the round with the median ratio. ``tune_budget``: each model's tuning search stops after
    this long (``mmopt tune --time-budget``; its in-model check of the records follows).
    """
    import mmopt
    from mmopt import ir as mir
    from mmopt.runtime.bench import ort_mask, time_engines

    isas = list(isas or default_isas())
    _check_isas(isas)
    for name in names:  # fail before any compile
        _resolve(name)
    cpu, flags = _cpuinfo()
    warnings: list[str] = []
    load_before = _check_load("before the run", warnings)
    peaks = {isa: _peak_gflops(isa, threads) for isa in isas}
    host_peak = _peak_gflops("x86", threads)  # onnxruntime picks the best ISA at run time
    print(f"CPU {cpu}; {', '.join(f for f in ISA_FLAGS if f in flags) or 'no AVX2/AVX-512'}; "
          f"{threads} threads; ISAs {', '.join(isas)}; load {load_before}", flush=True)
    if all(p is None for p in peaks.values()):
        print("(no FMA peak from mmopt.runtime.peak: GFLOP/s without % of peak)", flush=True)
    else:
        print("FMA peak GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in peaks.items()), flush=True)

    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="mmopt-suite-") as tmp:
        tmp = Path(tmp)
        if tune_trials and not db:
            db = str(tmp / "tuning_db")
        for name in names:
            model, shapes = _source(name)
            reference = mir.prepare(model, shapes)
            label = name.replace("@", "_")
            ref_path = tmp / f"{label}.onnx"
            mir.save(reference, ref_path)
            flops = _model_flops(reference)
            variants = [("fp32", reference, None, ref_path)]
            if db:
                variants.append(("fp32-tuned", reference, db, ref_path))
            if int8:
                quantized = _quantized(reference, weight_bits)
                int8_path = tmp / f"{label}-int8.onnx"  # onnxruntime runs the same QDQ model
                mir.save(quantized, int8_path)
                variants.append(("int8", quantized, None, int8_path))
            if nbits:
                q4 = _nbits(reference)
                if q4 is None:
                    print(f"{name:<22} q4         no MatMul with constant weights: no q4 variant",
                          flush=True)
                else:
                    q4_path = tmp / f"{label}-q4.onnx"  # onnxruntime runs the same q4 model
                    mir.save(q4, q4_path)
                    variants.append(("q4", q4, None, q4_path))
            compiled = []  # (variant, isa, database, result, reference path, compile seconds)
            for isa in isas:
                tune_s = (_tune(reference, name, isa, db, tune_trials, search, tune_budget)
                          if tune_trials else None)
                for variant, source, database, ref in variants:
                    start = time.perf_counter()
                    kwargs = {"db": database} if database else {}
                    try:
                        result = mmopt.compile(source, isa, tmp / f"{label}-{variant}-{isa}",
                                               verify=False, **kwargs)
                    except Exception as exc:  # noqa: BLE001 - report it, time the rest
                        message = f"{type(exc).__name__}: {exc}"
                        print(f"{name:<22} {variant:<10} {isa:<10} FAILED to compile: {message}",
                              flush=True)
                        failures.append({"model": name, "variant": variant, "isa": isa,
                                         "error": message})
                        continue
                    compiled.append((variant, isa, database, result, ref,
                                     round(time.perf_counter() - start, 1), tune_s))
            if not compiled:
                continue
            feeds = mir.random_inputs(reference, 0)
            # onnxruntime runs each reference once per ISA it is compared at: an x86-avx2 row
            # against onnxruntime's AVX2 kernels (AVX-512 hidden from its process), the others
            # against what the CPU has
            masks = {isa: ort_mask(isa) for isa in isas}
            refs = sorted({(c[4], masks[c[1]][0]) for c in compiled}, key=str)
            engines = ([("mmopt", str(c[3].library)) for c in compiled]
                       + [("onnxruntime", str(r), mask) for r, mask in refs])
            load_model = _check_load(f"before timing {name}", warnings)
            per_round = []
            for _ in range(max(rounds, 1)):
                timings = time_engines(engines, feeds, threads=threads, warmup=warmup,
                                       repeat=repeat)
                per_round.append((timings[:len(compiled)],
                                  dict(zip(refs, timings[len(compiled):]))))
            for i, (variant, isa, database, result, ref, compile_s, tune_s) in enumerate(compiled):
                pairs = [(mm[i], ort[(ref, masks[isa][0])]) for mm, ort in per_round]
                ratios = [m.median_ms / o.median_ms for m, o in pairs]
                order = sorted(range(len(pairs)), key=ratios.__getitem__)
                mm_t, ort_t = pairs[order[(len(order) - 1) // 2]]
                row = {"model": name, "variant": variant, "isa": isa,
                       "mcpu": result.meta.target.get("tvm", {}).get("mcpu"),
                       "mmopt": mm_t.to_dict(), "onnxruntime": ort_t.to_dict(),
                       "ratio": mm_t.median_ms / ort_t.median_ms,
                       "min_ratio": mm_t.min_ms / ort_t.min_ms,
                       "round_ratios": [round(r, 3) for r in ratios],
                       "compile_s": compile_s, "flops": flops,
                       "artifact_bytes": result.library.stat().st_size,
                       "throughput": {
                           "mmopt": _throughput(flops, mm_t.median_ms, peaks[isa]),
                           "onnxruntime": _throughput(flops, ort_t.median_ms, host_peak)},
                       "load_before_timing": load_model,
                       "onnxruntime_isa": ort_t.cpu_isa, "notes": masks[isa][1]}
                if database:
                    row["tuning"] = {"database": str(database), "trials_per_task": tune_trials,
                                     "search": search if tune_trials else None,
                                     "budget": tune_budget if tune_trials else None,
                                     "tune_s": tune_s,
                                     **{k: v for k, v in (result.meta.extra or {})
                                        .get("tuning", {}).items() if k.startswith("kernels")}}
                if variant == "int8":
                    row["weight_bits"] = weight_bits
                if variant in ("int8", "q4"):  # the compiled artifact against the fp32 one
                    fp32 = next((j for j, c in enumerate(compiled)
                                 if c[0] == "fp32" and c[1] == isa), None)
                    if fp32 is not None:
                        speedups = sorted(mm[i].median_ms / mm[fp32].median_ms
                                          for mm, _ in per_round)
                        row[f"{variant}_vs_fp32"] = round(speedups[(len(speedups) - 1) // 2], 3)
                rows.append(row)
                print(_line(row, rounds), flush=True)
    load_after = _check_load("after the run", warnings)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"threads": threads, "repeat": repeat, "warmup": warmup, "rounds": rounds,
               "machine": os.uname().machine, "cpu": cpu,
               "isa_flags": {f: f in flags for f in ISA_FLAGS}, "cores": _cores(),
               "isas": isas, "peak_gflops": {**peaks, "onnxruntime (x86)": host_peak},
               "load_average": {"before": load_before, "after": load_after},
               "load_warnings": warnings,
               "tune_trials_per_task": tune_trials, "rows": rows, "failures": failures}
    (out_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    _chart(rows, out_dir / "speed.png", threads)
    return rows


def _line(row: dict, rounds: int) -> str:
    mm, ort = row["mmopt"], row["onnxruntime"]
    text = (f"{row['model']:<22} {row['variant']:<10} {row['isa']:<10} "
            f"mmopt med {mm['median_ms']:9.3f} min {mm['min_ms']:9.3f} ms | "
            f"onnxruntime ({row.get('onnxruntime_isa') or '?'}) med {ort['median_ms']:9.3f} "
            f"min {ort['min_ms']:9.3f} ms | "
            f"ratio {row['ratio']:5.2f} (min {row['min_ratio']:5.2f})")
    t_mm, t_ort = row["throughput"]["mmopt"], row["throughput"]["onnxruntime"]
    if t_mm["gflops"] is not None:
        text += f" | GFLOP/s {t_mm['gflops']:7.1f} / {t_ort['gflops']:7.1f}"
        if t_mm["pct_of_peak"] is not None and t_ort["pct_of_peak"] is not None:
            text += f" ({t_mm['pct_of_peak']:.0f}% / {t_ort['pct_of_peak']:.0f}% of peak)"
    text += f" | compile {row['compile_s']:5.1f}s"
    text += f" | {row['artifact_bytes'] / 1e6:.2f} MB"
    for variant in ("int8", "q4"):
        if f"{variant}_vs_fp32" in row:
            text += f" | {variant}/fp32 {row[f'{variant}_vs_fp32']:.2f}"
    if rounds > 1:
        text += f" | rounds {row['round_ratios']}"
    return text


def _tune(model, name: str, target: str, db: str, trials_per_task: int, search: str,
          budget: str | None = None) -> float:
    """Tune ``model`` for ``target`` into ``db`` (``trials_per_task`` records per task, counting
    those already there, so a kept database makes a second run quick; the search stops after
    ``budget``); returns the seconds, the in-model check included."""
    from mmopt.tuning.tune import tune

    start = time.perf_counter()
    report = tune(model, target, db, trials_per_task=trials_per_task, search=search,
                  time_budget=budget)
    seconds = time.perf_counter() - start
    kept = [t.in_model["kept"] for t in report.tasks if t.in_model]
    print(f"{name:<22} {target:<10} tuned: {report.trials} trial(s) over {len(report.tasks)} "
          f"tasks in {seconds:.0f}s ({search}, {trials_per_task}/task"
          + (f", budget {budget}" if budget else "") + "); in the model: "
          f"{kept.count('tuned')} record(s) kept, {kept.count('default')} default schedule(s)"
          + (f"; stopped: {report.stopped}" if report.stopped else "")
          + "".join(f"; {n}" for n in report.notes), flush=True)
    return round(seconds, 1)


def _quantized(model, weight_bits: int = 7):
    import numpy as np

    from mmopt import ir as mir
    from mmopt.quantize import quantize

    feeds = mir.random_inputs(model, 0)
    rng = np.random.default_rng(0)
    calib = [{k: rng.random(v.shape, dtype=np.float32).astype(v.dtype) for k, v in feeds.items()}
             for _ in range(16)]
    quantized, _report = quantize(model, calib, method="percentile", weight_bits=weight_bits)
    return quantized


def _nbits(model):
    """``model`` with its MatMuls of constant 2-D weights as 4-bit ``MatMulNBits`` (onnxruntime's
    quantizer, blocks of 32, asymmetric), or None when it has none."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the quantizer rewrites the model it is given
    quantizer = MatMulNBitsQuantizer(copy, block_size=32, is_symmetric=False)
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        return None
    return quantized


def _chart(rows, path: Path, threads: int) -> None:
    if not rows:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written", file=sys.stderr)
        return
    labels = [f"{r['model']} ({r['variant']}, {r['isa']})" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    colors = ["tab:green" if x <= 1.0 else "tab:orange" if x <= 1.5 else "tab:red" for x in ratios]
    ax.bar(range(len(rows)), ratios, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("latency ratio mmopt / onnxruntime")
    ax.set_title(f"mmopt vs onnxruntime, {threads} threads (lower is better)")
    for i, x in enumerate(ratios):
        ax.text(i, x, f"{x:.2f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(default_models()),
                        help="comma-separated suite model names (NAME@SIZE: a detector at "
                             "SIZExSIZE)")
    parser.add_argument("--isa", help="comma-separated x86 targets to compile for (default: x86 "
                                      f"and those of {', '.join(ISA_TARGETS)} this CPU runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--db", help="tuning database directory: adds a fp32-tuned variant")
    parser.add_argument("--tune-trials", type=int, metavar="N",
                        help="tune each model first (N trials per task) into --db (default: a "
                             "temporary database): adds the fp32-tuned variant")
    parser.add_argument("--tune-budget", default=TUNE_BUDGET, metavar="DURATION",
                        help="stop each model's tuning search after this long (mmopt tune "
                             f"--time-budget; default {TUNE_BUDGET}: with the in-model check, "
                             "about 10 minutes a model on 2 cores)")
    parser.add_argument("--search", default="knobs", choices=["knobs", "metaschedule", "both"],
                        help="tuning search for --tune-trials (see mmopt tune --search)")
    parser.add_argument("--int8", action="store_true", help="add an int8 (QDQ) variant")
    parser.add_argument("--weight-bits", type=int, choices=[7, 8], default=7,
                        help="int8 weight grid (mmopt quantize --weight-bits; default 7: "
                             "vpmaddubsw kernels on x86 without VNNI)")
    parser.add_argument("--nbits", action="store_true",
                        help="add a q4 variant (4-bit MatMulNBits weights, onnxruntime's "
                             "quantizer) of models with MatMul weights")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="time every engine N times (fresh processes) and keep, per row, the "
                             "round with the median ratio: steadier numbers on a shared machine")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    isas = [t for t in args.isa.split(",") if t] if args.isa else None
    try:
        for name in names:
            _resolve(name)
        if isas:
            _check_isas(isas)
    except Exception as exc:  # noqa: BLE001 - bad arguments: one line, exit 2
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    run(names, threads=args.threads, repeat=args.repeat, warmup=args.warmup, db=args.db,
        int8=args.int8, weight_bits=args.weight_bits, out_dir=Path(args.out), tune_trials=args.tune_trials, search=args.search,
        tune_budget=args.tune_budget,
        rounds=args.rounds, isas=isas, nbits=args.nbits)


if __name__ == "__main__":
    main()
