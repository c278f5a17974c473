"""Calibration peak memory against the number of samples: mmopt's streaming calibrators are flat.

Each measurement runs in a fresh process: build a zoo model, prepare it, then calibrate on N samples
generated on the fly (seeded, so the data itself takes no memory), and report

- ``before``: resident memory once the model is prepared (before calibration);
- ``peak``: the process's peak resident memory (``ru_maxrss``) after calibration;
- ``growth``: ``peak - before``: what calibration itself needed.

With ``--compare-onnxruntime`` the same is measured for onnxruntime's own calibrator
(``create_calibrator`` + ``collect_data``), whose histogram methods keep every intermediate output of
every sample until ``compute_data``: the failure mmopt's calibrators avoid.

    python benchmarks/calibration_memory.py                       # 100 and 1000 samples, entropy
    python benchmarks/calibration_memory.py --samples 100 1000 --method percentile --compare-onnxruntime
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _samples(shape, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"input": rng.standard_normal(shape).astype(np.float32)}


def worker(tool: str, model_name: str, n: int, method: str) -> dict:
    import models_zoo
    from mmopt.quantize import calibrate as cal, data as qdata, qdq

    model = qdq.prepare(models_zoo.build(model_name))
    shape = (1, *models_zoo.MODELS[model_name].input_shapes["input"][1:])
    tensors = qdq.calibration_tensors(model)
    before = _rss_mb()
    start = time.perf_counter()
    if tool == "mmopt":
        inputs = qdata.input_specs(model)
        source = qdata.open_data(_samples(shape, n), inputs)
        result = cal.calibrate(model, tensors, qdata.batches(source, inputs, 1),
                               histogram=method != "minmax")
        ranges = result.ranges(method)
        extra = {"summary_bytes": result.summary_bytes}
    else:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                              create_calibrator)

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = _samples(shape, n)

            def get_next(self):
                return next(self.it, None)

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            onnx.save(model, path)
            calibrator = create_calibrator(path, qdq.quantizable_ops(),
                                           augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                           calibrate_method=methods[method])
            calibrator.collect_data(Reader())
            ranges = calibrator.compute_data()
        extra = {}
    seconds = time.perf_counter() - start
    assert len(list(ranges.keys())) > 0
    peak = _peak_mb()
    return {"tool": tool, "model": model_name, "samples": n, "method": method,
            "tensors": len(tensors), "before_mb": round(before, 1), "peak_mb": round(peak, 1),
            "growth_mb": round(peak - before, 1), "seconds": round(seconds, 1), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="conv_bn_relu")
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--method", default="entropy",
                        choices=["minmax", "percentile", "entropy", "mse"])
    parser.add_argument("--compare-onnxruntime", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.model, int(args.worker[1]), args.method)))
        return
    tools = ["mmopt"] + (["onnxruntime"] if args.compare_onnxruntime else [])
    rows = []
    for tool in tools:
        if tool == "onnxruntime" and args.method == "mse":
            continue
        for n in args.samples:
            proc = subprocess.run([sys.executable, __file__, "--model", args.model, "--method",
                                   args.method, "--worker", tool, str(n)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{tool} with {n} samples failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"calibration memory, {args.model}, method {args.method} (MB, resident)")
        print(f"{'tool':<12} {'samples':>8} {'before':>8} {'peak':>8} {'growth':>8} {'seconds':>8}")
        for r in rows:
            print(f"{r['tool']:<12} {r['samples']:>8} {r['before_mb']:>8.1f} {r['peak_mb']:>8.1f} "
                  f"{r['growth_mb']:>8.1f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
