"""Speed suite: mmopt-compiled models against onnxruntime, same machine, same run, same threads.

    python benchmarks/speed_suite.py                      # fp32 untuned, all models, 2 threads
    python benchmarks/speed_suite.py --models resnet50_style,ocr_det --repeat 50
    python benchmarks/speed_suite.py --db tuning_db       # + fp32 with tuning records applied
    python benchmarks/speed_suite.py --tune-trials 64     # + fp32 tuned here first (64 trials/task)
    python benchmarks/speed_suite.py --tune-trials 64 --db tuning_db   # ... kept in tuning_db
    python benchmarks/speed_suite.py --int8               # + int8 (QDQ) models (and int8/fp32)

Writes ``benchmarks/results/speed.json`` and a bar chart of the ratios ``speed.png`` (ratio =
mmopt median latency / onnxruntime median latency; below 1 mmopt is faster). Each engine runs in
its own process (see mmopt.runtime.bench). This is a benchmark, not a test: numbers depend on the
machine and on what else runs on it; compare ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _ocr_models() -> dict[str, tuple[str, dict]]:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return {}
    root = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return {
        "ocr_det": (str(root / "ch_PP-OCRv4_det_infer.onnx"), {"x": (1, 3, 640, 640)}),
        "ocr_rec": (str(root / "ch_PP-OCRv4_rec_infer.onnx"), {"x": (1, 3, 48, 320)}),
        "ocr_cls": (str(root / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), {"x": (1, 3, 48, 192)}),
    }


#: CNNs, a transformer block, an LSTM and an MLP (the OCR models follow when installed)
ZOO = ["mobilenet_v2_style", "resnet50_style", "resnet18_style", "mobilenet_v3_style",
       "transformer_block", "lstm_classifier", "mlp_gelu"]


def _source(name: str):
    """``(onnx path or ModelProto, input shapes)`` for a suite model name."""
    ocr = _ocr_models()
    if name in ocr:
        return ocr[name]
    from models_zoo import MODELS, build

    return build(name), dict(MODELS[name].input_shapes)


def run(names, *, threads: int, repeat: int, warmup: int, db: str | None, int8: bool,
        out_dir: Path, tune_trials: int | None = None, search: str = "knobs",
        rounds: int = 1) -> list[dict]:
    """Compile and time every model and variant; write speed.json and speed.png to ``out_dir``.

    ``rounds``: time each variant and onnxruntime that many times (mmopt.runtime.bench, fresh
    processes each time) and keep the round with the median ratio.
    """
    import mmopt
    from mmopt import ir as mir
    from mmopt.runtime.bench import bench

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmopt-suite-") as tmp:
        tmp = Path(tmp)
        if tune_trials and not db:
            db = str(tmp / "tuning_db")
        for name in names:
            model, shapes = _source(name)
            reference = mir.prepare(model, shapes)
            ref_path = tmp / f"{name}.onnx"
            mir.save(reference, ref_path)
            tune_s = None
            if tune_trials:
                tune_s = _tune(reference, name, db, tune_trials, search)
            variants = [("fp32", reference, None)]
            if db:
                variants.append(("fp32-tuned", reference, db))
            if int8:
                variants.append(("int8", _quantized(reference), None))
            compiled = []
            for variant, source, database in variants:
                start = time.perf_counter()
                kwargs = {"db": database} if database else {}
                result = mmopt.compile(source, "x86", tmp / f"{name}-{variant}", verify=False,
                                       **kwargs)
                compile_s = time.perf_counter() - start
                if variant == "int8":  # compare against onnxruntime running the same QDQ model
                    mir.save(source, tmp / f"{name}-int8.onnx")
                    ref = tmp / f"{name}-int8.onnx"
                else:
                    ref = ref_path
                compiled.append((variant, database, result, ref, compile_s))
            # rounds: every engine timed once per round (each run in a fresh process, one after
            # the other); a variant's row is its round with the median ratio, so a burst of
            # other work on a shared machine during one round does not decide the result
            per_round = [{c[0]: bench(c[2].library, c[3], threads=threads, warmup=warmup,
                                      repeat=repeat) for c in compiled}
                         for _ in range(max(rounds, 1))]
            results, all_ratios = {}, {}
            for c in compiled:
                ordered = sorted((r[c[0]] for r in per_round), key=lambda res: res.ratio)
                results[c[0]] = ordered[(len(ordered) - 1) // 2]
                all_ratios[c[0]] = [round(r[c[0]].ratio, 3) for r in per_round]
            for variant, database, result, _ref, compile_s in compiled:
                res = results[variant]
                row = {**res.to_dict(), "model": name, "variant": variant,
                       "compile_s": round(compile_s, 1), "round_ratios": all_ratios[variant]}
                if database:
                    row["tuning"] = {"database": str(database), "trials_per_task": tune_trials,
                                     "search": search if tune_trials else None,
                                     "tune_s": tune_s,
                                     **{k: v for k, v in (result.meta.extra or {})
                                        .get("tuning", {}).items() if k.startswith("kernels")}}
                vs_fp32 = ""
                if variant == "int8":  # the compiled int8 artifact against the compiled fp32 one
                    speedups = sorted(r["int8"].mmopt.median_ms / r["fp32"].mmopt.median_ms
                                      for r in per_round)
                    row["int8_vs_fp32"] = round(speedups[(len(speedups) - 1) // 2], 3)
                    vs_fp32 = f"  int8/fp32 {row['int8_vs_fp32']:.2f}"
                rows.append(row)
                print(f"{name:<22} {variant:<11} mmopt {res.mmopt.median_ms:9.3f} ms  "
                      f"onnxruntime {res.onnxruntime.median_ms:9.3f} ms  ratio {res.ratio:5.2f}  "
                      f"(min {res.mmopt.min_ms:.3f} / {res.onnxruntime.min_ms:.3f} = "
                      f"{res.mmopt.min_ms / res.onnxruntime.min_ms:.2f})  "
                      f"compile {compile_s:5.1f}s" + vs_fp32
                      + (f"  rounds {all_ratios[variant]}" if rounds > 1 else ""), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"threads": threads, "repeat": repeat, "rounds": rounds,
               "machine": os.uname().machine, "cpu": _cpu_name(),
               "tune_trials_per_task": tune_trials, "rows": rows}
    (out_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    _chart(rows, out_dir / "speed.png", threads)
    return rows


def _tune(model, name: str, db: str, trials_per_task: int, search: str) -> float:
    """Tune ``model`` into ``db`` (``trials_per_task`` records per task, counting those already
    there, so a kept database makes a second run quick); returns the seconds it took."""
    from mmopt.tuning.tune import tune

    start = time.perf_counter()
    report = tune(model, "x86", db, trials_per_task=trials_per_task, search=search)
    seconds = time.perf_counter() - start
    print(f"{name:<22} tuned: {report.trials} trial(s) over {len(report.tasks)} tasks in "
          f"{seconds:.0f}s ({search}, {trials_per_task}/task)"
          + (f"; stopped: {report.stopped}" if report.stopped else ""), flush=True)
    return round(seconds, 1)


def _quantized(model):
    import numpy as np

    from mmopt import ir as mir
    from mmopt.quantize import quantize

    feeds = mir.random_inputs(model, 0)
    rng = np.random.default_rng(0)
    calib = [{k: rng.random(v.shape, dtype=np.float32).astype(v.dtype) for k, v in feeds.items()}
             for _ in range(16)]
    quantized, _report = quantize(model, calib, method="percentile")
    return quantized


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _chart(rows, path: Path, threads: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart written", file=sys.stderr)
        return
    labels = [f"{r['model']} ({r['variant']})" for r in rows]
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
    parser.add_argument("--models", default=",".join(ZOO + list(_ocr_models())),
                        help="comma-separated suite model names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--db", help="tuning database directory: adds a fp32-tuned variant")
    parser.add_argument("--tune-trials", type=int, metavar="N",
                        help="tune each model first (N trials per task) into --db (default: a "
                             "temporary database): adds the fp32-tuned variant")
    parser.add_argument("--search", default="knobs", choices=["knobs", "metaschedule", "both"],
                        help="tuning search for --tune-trials (see mmopt tune --search)")
    parser.add_argument("--int8", action="store_true", help="add an int8 (QDQ) variant")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="time every variant N times (fresh processes) and keep the round "
                             "with the median ratio: steadier numbers on a shared machine")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    run([n for n in args.models.split(",") if n], threads=args.threads, repeat=args.repeat,
        warmup=args.warmup, db=args.db, int8=args.int8, out_dir=Path(args.out),
        tune_trials=args.tune_trials, search=args.search, rounds=args.rounds)


if __name__ == "__main__":
    main()
