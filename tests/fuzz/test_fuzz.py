"""A small fixed-seed fuzz run in CI (the long runs: ``python benchmarks/fuzz.py --count 1000``).

Mutated ONNX, Caffe and TFLite models through inspect / optimize / compile (and quantize / check on
a subset): every call must end in ``ok`` or a clean one-line error, never an internal error, a
crash, a hang, a verification failure or an error spread over several lines. The harness's own
classification is tested first, including a real crash and a real hang of its worker.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fuzz_harness as fh  # noqa: E402

#: the CI run: cheap seed models (one with If subgraphs and LSTM state), one Caffe net, TFLite
CI_COUNT = 36
CI_SEED = 0
CI_ONNX = ("conv_bn_relu", "mobilenet_v3_style", "mlp_gelu", "vad_lstm_if")
CI_CAFFE = ("lenet",)


@pytest.mark.parametrize("verb, code, stderr, native, outcome", [
    ("compile", 0, "", "", "ok"),
    ("inspect", 2, "mmopt: error: m.onnx: no such file\n", "", "clean-error"),
    ("inspect", 2, "mmopt: error: m.onnx: bad\nTraceback ...\n", "", "messy-error"),
    ("inspect", 2, "mmopt: error: m.onnx: bad\n", "[E:onnxruntime] boom\n", "messy-error"),
    ("inspect", 2, "Usage: mmopt inspect [OPTIONS] MODEL\n", "", "messy-error"),
    ("optimize", 3, "mmopt: internal error: ValueError: x\n", "", "internal-error"),
    ("compile", 1, "", "", "verify-failed"),
    ("check", 1, "", "", "ok"),
    ("optimize", 1, "", "", "messy-error"),
])
def test_classify(verb, code, stderr, native, outcome):
    assert fh.classify(verb, code, stderr, native)[0] == outcome


def test_worker_reports_crash_and_hang(tmp_path):
    worker = fh.Worker()
    try:
        assert worker.call(["__crash__"], tmp_path, timeout=60) == ("crash", "SIGSEGV")
        assert worker.call(["__hang__"], tmp_path, timeout=2) == ("hang", None)
    finally:
        worker.stop(kill=True)


def test_generation_is_deterministic_and_covers_the_mutations():
    a = fh.generate(60, 3, tflite=False, onnx_models=CI_ONNX, caffe_nets=CI_CAFFE, unmutated=())
    b = fh.generate(60, 3, tflite=False, onnx_models=CI_ONNX, caffe_nets=CI_CAFFE, unmutated=())
    assert [(c.id, c.files) for c in a] == [(c.id, c.files) for c in b]
    assert len(a) == 60 and len({c.id for c in a}) == 60
    mutations = Counter(c.mutation for c in a)
    assert len(mutations) >= 15, mutations


def test_fuzz_fixed_seed_has_no_findings():
    skip = fh.tflite_available()
    cases = fh.generate(CI_COUNT, CI_SEED, onnx_models=CI_ONNX, caffe_nets=CI_CAFFE,
                        unmutated=("conv_bn_relu", "lenet", "tiny"))
    results = fh.run(cases, compile_limit=2, subset=6,
                     timeouts={"inspect": 90, "optimize": 90, "compile": 240, "quantize": 90,
                               "check": 90})
    table = fh.render(results)
    print(table + (f"\n(no TFLite cases: {skip})" if skip else ""))
    counts = Counter(r.outcome for r in results)
    assert not [r for r in results if r.outcome in fh.FINDINGS], table
    # the run exercised both sides: models that load and compile, and models refused cleanly
    assert counts["ok"] and counts["clean-error"], table
    assert any(r.verb == "compile" and r.outcome == "ok" for r in results), table
    families = {r.family for r in results}
    assert {"onnx", "caffe"} <= families and (skip or "tflite" in families), table
