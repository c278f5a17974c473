"""The Silero-VAD-like zoo model (LSTM state in and out, If on the sample rate; issue #17).

It used to end in ``mmopt: internal error: ValueError: Value '...' is already an output of a
different graph``: its anti-aliasing ``If`` passes the clamped chunk through in two branches, and
identity elimination made that outer value an output of both. Now it compiles, and the artifact
agrees with onnxruntime on both sample-rate branches, not only the one random inputs pick.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import mmopt.passes.simplify as simplify
from mmopt import ir as mir
from mmopt.passes.pipeline import optimize
from mmopt.runtime.verify import run_onnxruntime
from models_zoo import MODELS, build

SHAPES = MODELS["vad_lstm_if"].input_shapes
BATCH = SHAPES["input"][0]


@functools.cache
def _prepared() -> onnx.ModelProto:
    return mir.prepare(build("vad_lstm_if"), SHAPES)


def _feeds(sr: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.uniform(-1, 1, SHAPES["input"]).astype(np.float32),
            "sr": np.array(sr, np.int64),
            "h": rng.standard_normal(SHAPES["h"]).astype(np.float32),
            "c": rng.standard_normal(SHAPES["c"]).astype(np.float32)}


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk(attr.g)


def test_branches_differ_and_state_flows():
    model = _prepared()
    a, b = run_onnxruntime(model, _feeds(16000)), run_onnxruntime(model, _feeds(8000))
    assert a["output"].shape == (BATCH, 1) and a["hn"].shape == SHAPES["h"]
    assert not np.allclose(a["output"], b["output"])  # two networks, chosen by sr
    c = run_onnxruntime(model, _feeds(16000, seed=1))
    assert not np.allclose(a["hn"], c["hn"])


@pytest.mark.parametrize("onnxsim_fails", [False, True])
def test_optimize_keeps_the_model_valid_and_equal(monkeypatch, onnxsim_fails):
    if onnxsim_fails:  # the fallback folding the log shows
        def fail(_model):
            raise RuntimeError("Field 'shape' of 'type' is required but missing.")

        monkeypatch.setattr(simplify, "_onnxsim", fail)
    model = _prepared()
    optimized, report = optimize(model, 2)
    onnx.checker.check_model(optimized, full_check=True)
    names = {n.name for n in _walk(optimized.graph)}
    assert "rank.if" not in names  # the constant rank check is inlined ...
    assert {"sr.if", "antialias.if"} <= names  # ... the ones on the input sr stay
    # the pass-through Identity nodes stay, in both branches that need them
    assert {"antialias.at_16k", "antialias.not_multiple"} <= names
    for sr in (16000, 8000, 32000):
        feeds = _feeds(sr)
        expected, got = run_onnxruntime(model, feeds), run_onnxruntime(optimized, feeds)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-5)


def test_cli_compile_verifies_and_artifact_matches_both_branches(tmp_path):
    path = tmp_path / "vad.onnx"
    mir.save(build("vad_lstm_if"), path)
    prefix = tmp_path / "vad"
    from mmopt.cli.main import cli

    args = ["compile", str(path), "--target", "x86", "-o", str(prefix)]
    for name in ("input", "h", "c"):
        args += ["--input-shape", f"{name}:{','.join(map(str, SHAPES[name]))}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    meta = json.loads(prefix.with_suffix(".json").read_text())
    assert meta["verification"]["passed"]
    from mmopt.runtime import load

    artifact = load(prefix)
    for sr in (16000, 8000, 32000):
        feeds = _feeds(sr, seed=3)
        expected = run_onnxruntime(_prepared(), feeds)
        got = artifact(**feeds)
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name], ref, atol=1e-4, rtol=1e-4, err_msg=f"{name} sr={sr}")
