"""``mmopt profile``: a row per kernel call, percentages that add up, a JSON that says what the
table says, ONNX node names that exist in the compiled graph, FLOPs that agree with the ONNX
shapes where a kernel computes a convolution directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

import models_zoo
from mmopt.api import front_end


def mmopt_cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "mmopt.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=900)


def _node_names(model: onnx.ModelProto) -> set[str]:
    return {node.name for node in model.graph.node}


def _check_consistent(result: dict, optimized: onnx.ModelProto) -> None:
    kernels = result["kernels"]
    assert kernels, result
    # one row per kernel call, in execution order 0..n-1; sorted by time
    assert sorted(k["index"] for k in kernels) == list(range(len(kernels)))
    assert [k["median_ms"] for k in kernels] == sorted((k["median_ms"] for k in kernels),
                                                       reverse=True)
    # the kernels (one run's sum) and the time between them make up the total; each kernel's
    # share is of the total
    total = result["total_median_ms"]
    assert result["kernel_sum_ms"] + result["between_ms"] == pytest.approx(total)
    assert result["between_percent"] == pytest.approx(100 * result["between_ms"] / total)
    for k in kernels:
        assert k["percent"] == pytest.approx(100 * k["median_ms"] / total)
        assert k["min_ms"] <= k["median_ms"] + 1e-9 and k["percent"] >= 0
        assert k["output_shapes"] and all(all(d > 0 for d in s) for s in k["output_shapes"])
    # the ONNX nodes named are nodes of the compiled (optimized) graph, each in one matched kernel
    names = _node_names(optimized)
    matched = [n for k in kernels if k["mapping"] == "value" for n in k["onnx_nodes"]]
    assert matched and set(matched) <= names
    assert len(matched) == len(set(matched))
    assert sum(k["mapping"] == "value" for k in kernels) >= len(kernels) // 2
    convs = {n.name for n in optimized.graph.node if n.op_type == "Conv"}
    assert convs <= {n for k in kernels for n in k["onnx_nodes"]}  # every conv is in a kernel
    # FLOPs: a kernel computing a convolution directly executes exactly its multiply-adds
    direct = [k for k in kernels if "conv2d" in k["name"] and k["mapping"] == "value"]
    assert direct
    for k in direct:
        assert k["flops"] >= k["onnx_flops"] > 0, k
        assert k["gflops_per_s"] > 0 and k["peak_percent"] > 0
    # by op type: every kernel call counted once, under the op that carries its work; the convs
    # (with their fused batch norms and activations, and any Winograd transforms) under Conv
    from mmopt.runtime.profile_ops import kernel_op

    ops = {op["op_type"]: op for op in result["ops"]}
    assert sum(op["calls"] for op in ops.values()) == len(kernels)
    for op_type, op in ops.items():
        assert op["calls"] == sum(kernel_op(k["mapping"], k["onnx_ops"]) == op_type
                                  for k in kernels)
        assert 0 <= op["median_ms"] <= total * 2 and op["percent"] == pytest.approx(
            100 * op["median_ms"] / total)
    assert ops["Conv"]["calls"] >= len(convs)
    # one run's conv time is at least its slowest conv kernel's median (a sum of every run is)
    assert ops["Conv"]["median_ms"] >= max(k["median_ms"] for k in kernels
                                           if kernel_op(k["mapping"], k["onnx_ops"]) == "Conv")
    peak = result["peak"]
    assert peak["gflops"] > 0 and peak["threads"] == result["threads"]
    assert result["machine"]["cpu_count"] and result["machine"]["isa_flags"] is not None


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """conv_bn_relu compiled from a file (its source stays available, with the same hash)."""
    import mmopt

    tmp = tmp_path_factory.mktemp("profile")
    source = tmp / "conv_bn_relu.onnx"
    onnx.save(models_zoo.build("conv_bn_relu"), source)
    result = mmopt.compile(source, "x86", tmp / "cbr", verify=False)
    return result


def test_cli_profiles_an_artifact_and_the_json_matches_the_table(artifact, tmp_path):
    json_path = tmp_path / "profile.json"
    proc = mmopt_cli("profile", artifact.library, "--threads", "1", "--runs", "3", "--vs",
                     "onnxruntime", "--json", json_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(json_path.read_text())
    reference, optimized, _ = front_end(artifact.meta.source_model,
                                        {s.name: s.shape for s in artifact.meta.inputs})
    _check_consistent(result, optimized)
    assert result["target"] == "x86" and result["threads"] == 1 and result["runs"] == 3
    # the table: one line per kernel, with the JSON's numbers, then between kernels and total
    rows = [line.split() for line in proc.stdout.splitlines()]
    kernel_rows = [r for r in rows if len(r) > 2 and r[0].isdigit() and not r[1].isdigit()]
    assert len(kernel_rows) == len(result["kernels"])
    for row, k in zip(kernel_rows, result["kernels"]):
        assert row[:2] == [str(k["index"]), k["name"]]
        assert f"{k['median_ms']:.3f}" in row and f"{k['min_ms']:.3f}" in row
        assert f"{k['percent']:.1f}" in row
    between = next(r for r in rows if r[:2] == ["(between", "kernels)"])
    assert f"{result['between_ms']:.3f}" in between
    total = next(r for r in rows if r and r[0] == "total")
    assert f"{result['total_median_ms']:.3f}" in total
    # onnxruntime's side, by op type
    ort = result["onnxruntime"]
    assert ort["threads"] == 1 and ort["runs"] == 3
    # an x86 artifact runs the CPU's own ISA: onnxruntime is shown the CPU as this process sees it
    # (masked only when the whole run is, scripts/avx2-emulated.sh --cpuid), and says so
    from mmopt.runtime.cpu_mask import seen_isa

    assert (ort["cpu_isa"], ort["cpu_mask"]) == (seen_isa(), os.environ.get("MMOPT_CPU_MASK"))
    assert f"onnxruntime ({seen_isa()} kernels" in proc.stdout
    assert "Conv" in {op["op_type"] for op in ort["ops"]}
    # ... beside mmopt's, op type by op type, in the table and the JSON
    paired = {r["op_type"]: r for r in result["ops_vs_onnxruntime"]}
    conv = paired["Conv"]
    assert conv["mmopt_ops"] == ["Conv"] and conv["mmopt_ms"] == next(
        op["median_ms"] for op in result["ops"] if op["op_type"] == "Conv")
    assert conv["onnxruntime_ms"] == pytest.approx(sum(
        op["median_ms"] for op in ort["ops"] if op["op_type"] in conv["onnxruntime_ops"]))
    assert conv["ratio"] == pytest.approx(conv["mmopt_ms"] / conv["onnxruntime_ms"])
    assert sorted(o for r in result["ops_vs_onnxruntime"] for o in r["mmopt_ops"]) == sorted(
        op["op_type"] for op in result["ops"])
    assert sorted(o for r in result["ops_vs_onnxruntime"] for o in r["onnxruntime_ops"]) == sorted(
        op["op_type"] for op in ort["ops"])
    header = next(line for line in proc.stdout.splitlines() if "onnxruntime nodes" in line)
    assert header.split()[-1] == "mmopt/onnxruntime"
    conv_row = next(r for r in rows if r and r[0] == "Conv")
    assert conv_row[1:3] == [str(conv["mmopt_calls"]), f"{conv['mmopt_ms']:.3f}"]
    assert ort["op_sum_ms"] + ort["between_ms"] == pytest.approx(ort["total_median_ms"])
    # one run's op time is at least its slowest op type's median (the sum of every run is)
    assert ort["op_sum_ms"] >= max(op["median_ms"] for op in ort["ops"])


def test_a_source_given_by_a_relative_path_is_found_from_elsewhere(tmp_path, monkeypatch):
    """The artifact records its source by absolute path: profiled from another directory it still
    maps kernels to ONNX nodes and counts their FLOPs."""
    import mmopt

    (tmp_path / "src").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    onnx.save(models_zoo.build("conv_bn_relu"), "cbr.onnx")
    result = mmopt.compile("cbr.onnx", "x86", "out/cbr", verify=False)
    assert result.meta.source_model == str(tmp_path / "src" / "cbr.onnx")
    monkeypatch.chdir(tmp_path / "elsewhere")
    profile = mmopt.profile(tmp_path / "src" / "out" / "cbr.so", threads=1, runs=2, warmup=1)
    assert not [n for n in profile.notes if "not available" in n], profile.notes
    assert any(k.onnx_flops for k in profile.kernels)


def test_api_compiles_and_profiles_a_model():
    import mmopt

    model = models_zoo.build("mobilenet_v3_style")
    result = mmopt.profile(model, "x86", threads=1, runs=2, warmup=1)
    _reference, optimized, _ = front_end(model)
    _check_consistent(result.to_dict(), optimized)
    assert result.workspace_bytes > 0
    assert 0 <= result.instrument_overhead_us < 1000
    # helpers (no ONNX value of their own) carry the nodes of the kernel they work for
    for k in result.kernels:
        if k.mapping == "helper":
            assert k.onnx_nodes, k


def test_the_profile_is_not_written_over_the_artifact_or_the_model(artifact):
    meta = artifact.library.with_suffix(".json")
    before = meta.read_bytes()
    for path in (meta, artifact.library, artifact.meta.source_model):
        proc = mmopt_cli("profile", artifact.library, "--runs", "1", "--json", path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"mmopt: error: {path}: is the model or a file of the "
                                       "artifact being profiled; write the profile to another "
                                       "file")
    # --html takes .html files only (every verb: tests/test_cli.py)
    proc = mmopt_cli("profile", artifact.library, "--runs", "1", "--html", artifact.library)
    assert proc.returncode == 2 and "give a name ending in .html" in proc.stderr
    assert meta.read_bytes() == before


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, fragment in (
        (["profile", tmp_path / "nope.onnx"], "no such file"),
        (["profile", "zoo:conv_bn_relu", "--target", "arm"], "cannot run here"),
        (["profile", "zoo:conv_bn_relu", "--target", "vax"], "unknown target"),
    ):
        proc = mmopt_cli(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmopt: error: "), proc.stderr
        assert fragment in lines[0]
