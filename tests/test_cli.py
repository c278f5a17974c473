"""The CLI as a user meets it: exit codes, one-line errors, no partial output, run/targets/inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from mmopt import ir as mir
from mmopt.runtime.verify import run_onnxruntime


def mmopt_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mmopt.cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def model_file(tmp_path, conv_relu_model):
    path = tmp_path / "net.onnx"
    onnx.save(conv_relu_model, path)
    return path


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mmopt: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _bad_inputs(tmp_path, model_file):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(model_file.read_bytes()[:300])
    custom = tmp_path / "custom.onnx"
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "vendor.ops" : 1]>
    g (float[1,2,4] x) => (float[1,2,4] y) { y = vendor.ops.FancyNorm(x) }""")
    model.graph.node[0].name = "norm0"
    onnx.save(model, custom)
    return {
        "missing file": (["compile", tmp_path / "nope.onnx"], ["nope.onnx", "no such file"]),
        "not onnx": (["compile", text], ["notes.onnx", "not a valid ONNX file"]),
        "truncated": (["compile", truncated], ["cut.onnx", "truncated"]),
        "unknown target": (["compile", model_file, "--target", "vax"], ["unknown target 'vax'", "x86"]),
        "unsupported op": (["compile", custom], ["norm0 (vendor.ops::FancyNorm"]),
        "bad shape option": (["compile", model_file, "--input-shape", "x:1,a"], ["--input-shape"]),
        "unknown input": (["compile", model_file, "--input-shape", "q:1,3,8,8"], ["unknown input", "q"]),
    }


BAD_CASES = ["missing file", "not onnx", "truncated", "unknown target", "unsupported op",
             "bad shape option", "unknown input"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path, model_file, case):
    args, fragments = _bad_inputs(tmp_path, model_file)[case]
    out_dir = tmp_path / "out"
    proc = mmopt_cli(*args, "-o", out_dir / "m")
    _assert_one_line_error(proc, *fragments)
    assert not out_dir.exists()


def test_a_page_is_written_only_to_an_html_file(tmp_path, model_file):
    """--html (every verb) and report's -o replace the file they name: a name that is not an
    .html file -- the model itself, an artifact's JSON -- is bad input, before anything runs."""
    before = model_file.read_bytes()
    report = tmp_path / "run.json"
    report.write_text("{}")
    for args in (["compile", model_file, "-o", tmp_path / "out" / "m", "--html", model_file],
                 ["bench", model_file, "--html", tmp_path / "m.json"],
                 ["report", report, "-o", report]):
        proc = mmopt_cli(*args)
        _assert_one_line_error(proc, "give a name ending in .html")
    assert model_file.read_bytes() == before and report.read_text() == "{}"
    assert not (tmp_path / "out").exists()


def test_missing_cross_compiler_is_a_one_line_error(tmp_path, model_file):
    env_path = tmp_path / "bin"
    env_path.mkdir()
    # a PATH without the cross compiler (keep python itself reachable through sys.executable)
    proc = subprocess.run([sys.executable, "-m", "mmopt.cli.main", "compile", str(model_file),
                           "--target", "arm", "-o", str(tmp_path / "out" / "m")],
                          capture_output=True, text=True, env=dict(os.environ, PATH=str(env_path)))
    _assert_one_line_error(proc, "aarch64-linux-gnu-g++", "apt-get install g++-aarch64-linux-gnu")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = mmopt_cli("--debug", "compile", tmp_path / "nope.onnx")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_compile_then_run_reproduces_onnxruntime(tmp_path, model_file, conv_relu_model):
    proc = mmopt_cli("compile", model_file, "--target", "x86", "-o", tmp_path / "art" / "net",
                     "--input-shape", "x:1,3,8,8")
    assert proc.returncode == 0, proc.stderr
    assert "PASS" in proc.stdout
    x = np.random.default_rng(11).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = mmopt_cli("run", tmp_path / "art" / "net", "--input", f"x={tmp_path / 'x.npy'}",
                     "-o", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npz")["y"]
    expected = run_onnxruntime(mir.fix_input_shapes(conv_relu_model), {"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_run_errors(tmp_path, model_file):
    proc = mmopt_cli("compile", model_file, "-o", tmp_path / "net", "--no-verify")
    assert proc.returncode == 0
    # the report gives the reason verification did not run: the user's flag, not the machine
    assert "skipped (--no-verify)" in proc.stdout, proc.stdout
    _assert_one_line_error(mmopt_cli("run", tmp_path / "nothing"), "no such file")
    _assert_one_line_error(mmopt_cli("run", tmp_path / "net", "--input", "x"), "NAME=FILE")
    np.save(tmp_path / "bad.npy", np.zeros((5,), np.float32))
    _assert_one_line_error(mmopt_cli("run", tmp_path / "net", "--input", f"x={tmp_path / 'bad.npy'}"),
                           "shape")
    (tmp_path / "pickled.npy").write_bytes(b"\x80\x04K\x01.")  # a pickle, not an array
    _assert_one_line_error(mmopt_cli("run", tmp_path / "net", "--input",
                                     f"x={tmp_path / 'pickled.npy'}"), "not a .npy")


def test_verification_failure_exits_1(tmp_path, model_file):
    # an impossible tolerance makes verification fail: exit code 1 and the artifact is kept
    proc = mmopt_cli("compile", model_file, "-o", tmp_path / "net", "--atol", "0", "--rtol", "0")
    if proc.returncode == 0:
        pytest.skip("outputs matched bit for bit; nothing to fail")
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout
    assert json.loads((tmp_path / "net.json").read_text())["verification"]["passed"] is False


def test_targets_and_inspect(tmp_path, model_file):
    proc = mmopt_cli("targets", "--json")
    assert proc.returncode == 0
    listed = {t["name"]: t for t in json.loads(proc.stdout)}
    assert listed["x86"]["runs_here"] in (True, False) and "cuda-sm90" in listed
    proc = mmopt_cli("inspect", model_file, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["op_histogram"]["Conv"] == 1
    assert report["macs"] == 2 * 8 * 8 * 3 * 9  # batch fixed to 1: C_out*H*W*C_in*k*k
    assert report["parameter_count"] == 2 * 3 * 9 + 2 + 1 + 1 + 1


def test_help_lists_the_verbs():
    proc = mmopt_cli("--help")
    for verb in ("compile", "run", "targets", "inspect", "optimize", "zoo"):
        assert verb in proc.stdout
    assert "--target" in mmopt_cli("compile", "--help").stdout


def test_bench_an_artifact_against_onnxruntime(tmp_path, model_file):
    assert mmopt_cli("compile", model_file, "-o", tmp_path / "net", "--no-verify").returncode == 0
    proc = mmopt_cli("bench", tmp_path / "net", "--repeat", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["mmopt"]["runs"] == 3 and result["onnxruntime"]["runs"] == 3
    assert result["ratio"] > 0


def test_bench_a_model_prints_the_table(model_file):
    """A model (not an artifact) is compiled into a temporary directory; the table names the
    artifact's target after the timing (it read the artifact's JSON after the directory was gone:
    'model.json: no such file')."""
    proc = mmopt_cli("bench", model_file, "--repeat", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["mmopt"][1] == "x86" and "onnxruntime" in rows
    assert "ratio mmopt/onnxruntime" in proc.stdout


def test_an_importer_failure_is_one_line_without_tvm_output(tmp_path):
    """Fuzzing (conv_bn_relu/byte_flip_header/169: a Conv's group 0, which onnxruntime accepts):
    TVM's ONNX importer printed "Error converting operator Conv, with inputs: ..." (a Relax dump)
    on stdout, and its abandoned BlockBuilder, destroyed later, wrote "Warning: BlockBuilder
    destroyed with remaining blocks!" from C++ after the error line (in the fuzz worker: into the
    next command's output)."""
    from models_zoo import build

    model = build("conv_bn_relu")
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    (group,) = [a for a in conv.attribute if a.name == "group"] or [conv.attribute.add()]
    group.CopyFrom(onnx.helper.make_attribute("group", 0))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    proc = mmopt_cli("compile", path, "--target", "x86", "-o", tmp_path / "out" / "m")
    _assert_one_line_error(proc, "TVM's ONNX importer failed", "groups")
    assert proc.stdout == ""
