"""Speed suite: mmopt-compiled models against onnxruntime, same machine, same run, same threads.

    python benchmarks/speed_suite.py                      # fp32 untuned, all models, 2 threads
    python benchmarks/speed_suite.py --models resnet50_style,ocr_det --repeat 50
    python benchmarks/speed_suite.py --db tuning_db       # + fp32 with tuning records applied
    python benchmarks/speed_suite.py --int8               # + int8 (QDQ) models

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


ZOO = ["mobilenet_v2_style", "resnet50_style", "resnet18_style", "mobilenet_v3_style",
       "transformer_block", "mlp_gelu"]


def _source(name: str):
    """``(onnx path or ModelProto, input shapes)`` for a suite model name."""
    ocr = _ocr_models()
    if name in ocr:
        return ocr[name]
    from models_zoo import MODELS, build

    return build(name), dict(MODELS[name].input_shapes)


def run(names, *, threads: int, repeat: int, warmup: int, db: str | None, int8: bool,
        out_dir: Path) -> list[dict]:
    import mmopt
    from mmopt import ir as mir
    from mmopt.runtime.bench import bench

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmopt-suite-") as tmp:
        tmp = Path(tmp)
        for name in names:
            model, shapes = _source(name)
            reference = mir.prepare(model, shapes)
            ref_path = tmp / f"{name}.onnx"
            mir.save(reference, ref_path)
            variants = [("fp32", reference, None)]
            if db:
                variants.append(("fp32-tuned", reference, db))
            if int8:
                variants.append(("int8", _quantized(reference), None))
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
                res = bench(result.library, ref, threads=threads, warmup=warmup, repeat=repeat)
                row = {**res.to_dict(), "model": name, "variant": variant,
                       "compile_s": round(compile_s, 1)}
                rows.append(row)
                print(f"{name:<22} {variant:<11} mmopt {res.mmopt.median_ms:9.3f} ms  "
                      f"onnxruntime {res.onnxruntime.median_ms:9.3f} ms  ratio {res.ratio:5.2f}  "
                      f"(min {res.mmopt.min_ms:.3f} / {res.onnxruntime.min_ms:.3f})  "
                      f"compile {compile_s:5.1f}s", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"threads": threads, "repeat": repeat, "machine": os.uname().machine,
               "cpu": _cpu_name(), "rows": rows}
    (out_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    _chart(rows, out_dir / "speed.png", threads)
    return rows


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
    parser.add_argument("--int8", action="store_true", help="add an int8 (QDQ) variant")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    run([n for n in args.models.split(",") if n], threads=args.threads, repeat=args.repeat,
        warmup=args.warmup, db=args.db, int8=args.int8, out_dir=Path(args.out))


if __name__ == "__main__":
    main()
