"""Speed of dynamic kernels and of buckets against static artifacts of the same model and size.

For each model and ISA: a static artifact compiled for one size (``--input-shape``), a dynamic
artifact (``--dim``) and a dynamic artifact with that size as a bucket (``--buckets``); all three
are called on the same input in one process, interleaved in rounds, and the min and median latency
of each are printed with the ratios dynamic/static (target <= 1.3) and bucket/static (target
<= 1.05). The load average is printed with the results: ratios measured on a loaded machine say
little (the rounds are interleaved so drift hits all three alike, not so a busy core does).

    python benchmarks/dynamic_shapes.py --models transformer,rec --isa x86-avx2 --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmopt  # noqa: E402
from mmopt.ir.dims import parse_dim_option  # noqa: E402


def _rec_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        raise SystemExit("rapidocr-onnxruntime is not installed (scripts/setup.sh installs it)")
    return str(Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx")


def _cases():
    from mmopt.zoo import zoo_model

    return {
        "transformer": (lambda: zoo_model("transformer_block_dynamic"), "input",
                        ("batch", "seq", 64), ["seq=8..512", "batch=1..4"], (1, 256, 64)),
        "rec": (_rec_path, "x", (1, 3, 48, "width"), ["width=80..1600"], (1, 3, 48, 320)),
        "yolo": (lambda: zoo_model("yolov8n_dynamic"), "images", ("batch", 3, "height", "width"),
                 ["batch=1..4", "height=320..1280:32", "width=320..1280:32"], (1, 3, 640, 640)),
    }


def _time(models: dict, x: np.ndarray, name: str, rounds: int, warmup: int) -> dict:
    calls = {}
    for label, model in models.items():
        args = model._arguments((), {name: x})  # noqa: SLF001 - convert once, time the call
        calls[label] = (model._function, args)  # noqa: SLF001
    for _ in range(warmup):
        for fn, args in calls.values():
            fn(*args)
    samples = {label: [] for label in calls}
    for _ in range(rounds):
        for label, (fn, args) in calls.items():
            t0 = time.perf_counter()
            fn(*args)
            samples[label].append(time.perf_counter() - t0)
    return {label: {"min_ms": min(s) * 1e3, "median_ms": statistics.median(s) * 1e3}
            for label, s in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="transformer,rec,yolo")
    parser.add_argument("--isa", action="append", default=None,
                        help="target(s), default x86-avx2 and x86-avx512 where this CPU runs it")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from mmopt import targets

    isas = args.isa or [t for t in ("x86-avx2", "x86-avx512") if targets.get(t).runs_here()]
    results = []
    with tempfile.TemporaryDirectory(prefix="mmopt-dyn-bench-") as tmp:
        for key in args.models.split(","):
            path_fn, name, named, dims, size = _cases()[key]
            path = path_fn()
            ranges = [parse_dim_option(d) for d in dims]
            for isa in isas:
                out = Path(tmp) / f"{key}-{isa}"
                common = dict(verify=False)
                static = mmopt.compile(path, isa, f"{out}-static", input_shapes={name: size},
                                       **common)
                dynamic = mmopt.compile(path, isa, f"{out}-dynamic", dims=ranges,
                                        input_shapes={name: named}, **common)
                bucket = mmopt.compile(path, isa, f"{out}-bucket", dims=ranges,
                                       input_shapes={name: named}, buckets=[{name: size}],
                                       **common)
                models = {"static": mmopt.load(static.library), "dynamic": mmopt.load(
                    dynamic.library), "bucket": mmopt.load(bucket.library)}
                x = np.random.default_rng(0).random(size, dtype=np.float32)
                assert models["bucket"].function_for({name: size}) == "main_bucket0"
                timing = _time(models, x, name, args.rounds, args.warmup)
                load = os.getloadavg()[0]
                row = {"model": key, "isa": isa, "size": list(size), "load": load, **timing,
                       "dynamic_vs_static": timing["dynamic"]["median_ms"]
                       / timing["static"]["median_ms"],
                       "bucket_vs_static": timing["bucket"]["median_ms"]
                       / timing["static"]["median_ms"]}
                results.append(row)
                print(f"{key:12s} {isa:11s} {size}  static {timing['static']['median_ms']:.2f} ms "
                      f"(min {timing['static']['min_ms']:.2f})  dynamic "
                      f"{timing['dynamic']['median_ms']:.2f} ms ({row['dynamic_vs_static']:.2f}x)"
                      f"  bucket {timing['bucket']['median_ms']:.2f} ms "
                      f"({row['bucket_vs_static']:.2f}x)  load {load:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
