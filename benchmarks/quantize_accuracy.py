"""Accuracy of mmopt's int8 quantization: the numbers issue 4 asks for, reproducibly.

1. the trained digits CNN: fp32 top-1 on its 500 held-out samples, int8 top-1 per method and
   activation type (per-channel weights);
2. zoo CNNs: int8 vs fp32 output cosine similarity per method (seeded Gaussian inputs, the data
   the zoo's BatchNorm statistics were computed on);
3. accuracy-aware mode on two models whose plain int8 breaks the budget: the digits CNN made
   hostile to int8 by an exact float rescaling between conv1 and conv2 (minmax, top-1 budget
   ``"0.5%"``: half a point), and MobileNetV2-style with per-tensor weights (cosine budget ``"1%"``:
   one point, i.e. mean cosine >= 0.99). Budgets are spelled as ``--max-drop`` reads them
   (:func:`mmopt.check.thresholds.parse_max_drop`).

    python benchmarks/quantize_accuracy.py [--zoo mobilenet_v2_style resnet18_style] [--skip-aa]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
from onnx import numpy_helper

METHODS = ("minmax", "percentile", "entropy", "mse")


def digits(results: dict) -> None:
    from models_zoo.digits import train_digits_cnn
    from mmopt.quantize import quantize
    from mmopt.runtime.verify import run_onnxruntime

    model, s = train_digits_cnn()
    fp32 = 100 * float((run_onnxruntime(model, {"input": s.test_x})["logits"].argmax(1)
                        == s.test_y).mean())
    print(f"digits CNN: fp32 top-1 {fp32:.2f}% on {len(s.test_y)} held-out samples")
    rows = {}
    for activations in ("uint8", "int8"):
        for method in METHODS:
            _, r = quantize(model, {"input": s.calib_x}, method=method, activations=activations,
                            eval_data=({"input": s.test_x}, s.test_y), metric="top1")
            rows[f"{method}/{activations}"] = r.evaluation.top1
            print(f"  int8 {method:<10} {activations:<5} top-1 {r.evaluation.top1:.2f}% "
                  f"(drop {r.evaluation.drop:+.2f}), cosine {r.evaluation.cosine:.5f}")
    results["digits"] = {"fp32": fp32, "int8": rows}


def zoo(names, results: dict, n_calib: int = 32, n_eval: int = 16) -> None:
    import models_zoo
    from mmopt.quantize import quantize

    results["zoo"] = {}
    for name in names:
        shape = models_zoo.MODELS[name].input_shapes["input"][1:]
        rng = np.random.default_rng(0)
        calib = {"input": rng.standard_normal((n_calib, *shape)).astype(np.float32)}
        evaluation = {"input": rng.standard_normal((n_eval, *shape)).astype(np.float32)}
        model = models_zoo.build(name)
        rows = {}
        for activations in ("uint8", "int8"):
            for method in METHODS:
                start = time.perf_counter()
                _, r = quantize(model, calib, method=method, activations=activations,
                                eval_data=evaluation, metric="cosine")
                rows[f"{method}/{activations}"] = r.evaluation.cosine
                print(f"{name}: {method:<10} {activations:<5} cosine {r.evaluation.cosine:.5f} "
                      f"SNR {r.evaluation.snr_db:5.1f} dB ({time.perf_counter() - start:.1f}s)",
                      flush=True)
        results["zoo"][name] = rows


def hostile_digits(model: onnx.ModelProto, channel: int = 0, factor: float = 1000.0):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for name, index, by in (("conv1.weight", channel, factor), ("conv1.bias", channel, factor),
                            ("conv2.weight", (slice(None), channel), 1 / factor)):
        array = numpy_helper.to_array(inits[name]).copy()
        array[index] *= by
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    return out


def _print_aa(title, report) -> dict:
    aa = report.accuracy_aware
    print(f"{title}: met={aa.met}, kept in float: {aa.kept_float} ({aa.seconds:.1f}s)")
    for s in aa.sensitivities[:5]:
        print(f"  sensitivity {s.node:<32} {s.op_type:<8} noise {s.noise:8.3f}%  drop {s.drop:.3f}")
    for st in aa.steps:
        top = "" if st.score.top1 is None else f" top-1 {st.score.top1:.2f}%"
        print(f"  step {st.action:<40} float={len(st.kept_float)} drop {st.score.drop:7.3f} "
              f"cosine {st.score.cosine:.5f}{top} {'ok' if st.within_budget else ''}")
    return aa.to_dict()


def accuracy_aware(results: dict) -> None:
    import models_zoo
    from models_zoo.digits import train_digits_cnn
    from mmopt.quantize import quantize

    model, s = train_digits_cnn()
    _, r = quantize(hostile_digits(model), {"input": s.calib_x}, method="minmax",
                    eval_data=({"input": s.test_x}, s.test_y), metric="top1", max_drop="0.5%")
    results["aa_digits"] = _print_aa(
        "accuracy-aware, hostile digits CNN (minmax, top-1 drop <= 0.5%)", r)

    rng = np.random.default_rng(0)
    calib = {"input": rng.standard_normal((32, 3, 224, 224)).astype(np.float32)}
    evaluation = {"input": rng.standard_normal((16, 3, 224, 224)).astype(np.float32)}
    _, r = quantize(models_zoo.build("mobilenet_v2_style"), calib, method="percentile",
                    per_channel=False, eval_data=evaluation, metric="cosine", max_drop="1%")
    results["aa_mobilenet_v2_per_tensor"] = _print_aa(
        "accuracy-aware, mobilenet_v2_style per-tensor (cosine drop <= 1%: cosine >= 0.99)", r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", nargs="*", default=["mobilenet_v2_style", "resnet18_style"])
    parser.add_argument("--skip-aa", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results: dict = {}
    digits(results)
    zoo(args.zoo, results)
    if not args.skip_aa:
        accuracy_aware(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
