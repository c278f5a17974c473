"""``mmopt inspect --support``: every op with how it compiles, and why not when it does not; the
import error when a dynamic Loop cannot be compiled names the node."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import mmopt
from mmopt.codegen.decompose._testing import parse
from mmopt.codegen.relax_import import support_report
from mmopt.errors import UnsupportedModelError

MIXED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4,2,3] x, int64 n) => (float[1,2,5] h, float[2,3] total) {
  y, h = RNN <hidden_size = 5> (x, w, r)
  first = ReduceSum <keepdims = 0> (x, zero)
  total = Loop (n, keep_going, first) <body = step (int64 i, bool c, float[2,3] acc) =>
                                                   (bool c_out, float[2,3] acc_out) {
      c_out = Identity (c)
      acc_out = Add (acc, acc)
  }>
}"""


def _mixed_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model = parse(MIXED, w=rng.standard_normal((1, 5, 3)).astype(np.float32),
                  r=rng.standard_normal((1, 5, 5)).astype(np.float32),
                  keep_going=np.array(True), zero=np.array([0], np.int64))
    model.graph.node[2].name = "accumulate"
    return model


def test_report_lists_native_decomposed_and_unsupported_ops():
    report = support_report(_mixed_model(), "x86")
    status = {o.op: (o.status, o.detail) for o in report.ops}
    assert status["RNN"][0] == "decomposed"
    assert status["RNN"][1].startswith("unroll_recurrence (mmopt): ")
    assert status["ReduceSum"] == ("native", "")
    assert status["Loop"][0] == "unsupported"
    assert "accumulate" in status["Loop"][1] and "trip count is not a constant" in status["Loop"][1]
    assert not report.supported and report.to_dict()["supported"] is False


def test_compile_error_names_the_dynamic_loop(tmp_path):
    with pytest.raises(UnsupportedModelError) as info:
        mmopt.compile(_mixed_model(), "x86", tmp_path / "m")
    assert "accumulate (Loop: the trip count is not a constant (dynamic control flow))" in \
        info.value.message


def test_cli_support_table_and_exit_codes(tmp_path):
    path = tmp_path / "mixed.onnx"
    onnx.save(_mixed_model(), path)
    proc = subprocess.run([sys.executable, "-m", "mmopt.cli.main", "inspect", "--support", str(path),
                           "--target", "x86", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["target"] == "x86" and not data["supported"]
    assert {o["op"]: o["status"] for o in data["ops"]}["RNN"] == "decomposed"

    supported = tmp_path / "rnn.onnx"
    model = _mixed_model()
    keep = [n for n in model.graph.node if n.op_type == "RNN"]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.output[1:]
    del model.graph.input[1:]
    onnx.save(model, supported)
    proc = subprocess.run([sys.executable, "-m", "mmopt.cli.main", "inspect", "--support",
                           str(supported)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RNN" in proc.stdout and "unroll_recurrence" in proc.stdout
    assert "every op is supported" in proc.stdout
