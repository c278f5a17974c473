"""Code-generation settings are compile options: recorded in the artifact and the tuning database,
and a compile whose settings differ from the records' says so."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])], [w])
    path = tmp_path_factory.mktemp("model") / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_artifact_records_settings_and_cpu_facts(conv_model, tmp_path):
    from mmopt.cli.main import cli

    result = CliRunner().invoke(cli, ["compile", str(conv_model), "--target", "x86-avx2",
                                      "--no-winograd", "--layout", "NHWC", "--no-fast-math",
                                      "--no-lookup-tables", "--no-verify", "-o",
                                      str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["codegen"] == {"winograd": False, "pack_weights": True, "layout": "NHWC",
                               "fast_math": False, "lookup_tables": False}
    assert meta["target"]["cpu"]["isa"] == "avx2"
    assert meta["target"]["cpu"]["vector_bits"] == 256
    assert meta["target"]["cpu"]["vector_registers"] == 16
    assert "codegen   winograd False" in result.output


def test_compile_reports_settings_that_differ_from_the_tuning_run(conv_model, tmp_path):
    from mmopt.cli.main import cli
    from mmopt.codegen.options import CodegenOptions
    from mmopt.targets import get
    from mmopt.tuning.database import TuningDatabase

    target = get("x86")
    db = TuningDatabase(tmp_path / "db", create=True)
    assert db.record_codegen(target, CodegenOptions(winograd=False).resolved(target)) is None
    result = CliRunner().invoke(cli, ["compile", str(conv_model), "--no-verify", "--db",
                                      str(tmp_path / "db"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "tuned with other code-generation settings (winograd: tuned with False, compiled " \
           "with True)" in " ".join(result.output.split())
    tuning = json.loads((tmp_path / "b.json").read_text())["extra"]["tuning"]
    assert tuning["codegen_differences"] == ["winograd: tuned with False, compiled with True"]
    # the same settings: nothing to report
    result = CliRunner().invoke(cli, ["compile", str(conv_model), "--no-verify", "--no-winograd",
                                      "--db", str(tmp_path / "db"), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0 and "other code-generation settings" not in result.output
    assert json.loads((tmp_path / "c.json").read_text())["extra"]["tuning"][
        "codegen_differences"] == []


def test_bad_layout_is_one_line():
    from mmopt.codegen.options import CodegenOptions
    from mmopt.errors import MmoptError

    with pytest.raises(MmoptError, match="layout 'NWHC'"):
        CodegenOptions(layout="NWHC")


def test_unscheduled_blocks_are_reported(conv_model, tmp_path, monkeypatch):
    """A block the default schedules cannot handle runs as generated: the compile report and the
    artifact JSON say so (a test hook makes the contraction schedule fail)."""
    from mmopt.cli.main import cli
    from mmopt.codegen import cpu_schedules

    def broken(*_args, **_kwargs):
        raise ValueError("test hook: no schedule")

    monkeypatch.setattr(cpu_schedules, "schedule_contraction", broken)
    result = CliRunner().invoke(cli, ["compile", str(conv_model), "--no-winograd",
                                      "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output  # still correct: verified against onnxruntime
    assert "block(s) left unscheduled" in result.output
    fallbacks = json.loads((tmp_path / "d.json").read_text())["extra"]["schedule_fallbacks"]
    assert fallbacks and fallbacks[0]["reason"] == "test hook: no schedule"
