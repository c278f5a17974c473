"""The -O2 pipeline on every zoo model and on the OCR models; the NHWC layout on conv nets; the CLI.

For each model: the optimized model passes onnx.checker, onnxruntime agrees before and after
(abs 1e-4 / rel 1e-3), output names and shapes are unchanged, the node count drops (every model here
has patterns), TVM's importer supports every node, and a second run changes nothing.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models_zoo import MODELS, build, names
from mmopt import ir as mir
from mmopt.codegen.relax_import import unsupported_nodes
from mmopt.codegen.relax_import import decompose_for_import
from mmopt.passes.pipeline import optimize
from mmopt.runtime.verify import run_onnxruntime

ATOL, RTOL = 1e-4, 1e-3


@functools.cache
def _zoo(name: str) -> onnx.ModelProto:
    return mir.prepare(build(name), MODELS[name].input_shapes)


@functools.cache
def _optimized(name: str, level: int = 2, layout: str | None = None):
    return optimize(_zoo(name), level, layout=layout)


def _outputs(model: onnx.ModelProto) -> list[tuple[str, list]]:
    return [(o.name, mir.dims_of(o)) for o in model.graph.output]


def _same_dims(after: list, before: list) -> bool:
    """Same rank; a dim known before is the same after (folding may make unknown dims known)."""
    return len(after) == len(before) and all(
        a == b for a, b in zip(after, before) if isinstance(b, int))


def _assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    onnx.checker.check_model(after)
    assert [n for n, _ in _outputs(after)] == [n for n, _ in _outputs(before)]
    assert all(_same_dims(a, b) for (_, a), (_, b) in zip(_outputs(after), _outputs(before))), \
        (_outputs(after), _outputs(before))
    assert [i.name for i in mir.graph_inputs(after)] == [i.name for i in mir.graph_inputs(before)]
    feeds = mir.random_inputs(before, seed=0)
    expected, got = run_onnxruntime(before, feeds), run_onnxruntime(after, feeds)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape
        np.testing.assert_allclose(got[name], ref, atol=ATOL, rtol=RTOL, err_msg=name)
    # what the compiler sees: after the import-time decompositions (RNNs are unrolled there)
    assert unsupported_nodes(decompose_for_import(after)[0]) == []


#: zoo models with nothing to fuse (the trained digits CNN is exported as Conv/Relu/MaxPool/Gemm;
#: the recurrent models are single RNN ops, unrolled only at import)
ALREADY_OPTIMAL = {"digits_cnn", "gru_tagger", "lstm_classifier"}


@pytest.mark.parametrize("name", names())
def test_zoo_model_optimized(name):
    model = _zoo(name)
    optimized, report = _optimized(name)
    _assert_equivalent(model, optimized)
    if name in ALREADY_OPTIMAL:
        assert report.nodes_after == report.nodes_before
    else:
        assert report.nodes_after < report.nodes_before, report.to_dict()
        assert report.rules_fired
    _, again = optimize(optimized, 2)
    assert again.applied == [], [(p.name, p.rules) for p in again.passes if p.modified]


def test_mobilenet_v3_loses_every_batchnorm_and_decomposed_hardswish():
    model = _zoo("mobilenet_v3_style")
    optimized, report = _optimized("mobilenet_v3_style")
    ops = report.ops_after
    assert "BatchNormalization" not in ops
    # decomposed hardswish/hardsigmoid = Add(x,3) -> Clip(0,6) [-> Mul x] -> Div 6
    assert "Clip" not in ops and "Div" not in ops
    bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert report.rules_fired["fuse_batchnorm_into_conv"] == bn
    assert ops["HardSwish"] == report.rules_fired["fuse_hardswish"] == 10
    assert ops["HardSigmoid"] == 5


def test_transformer_and_mlp_get_layernorm_and_gelu():
    ops = _optimized("transformer_block")[1].ops_after
    assert ops["LayerNormalization"] == 2 and "ReduceMean" not in ops and "Erf" not in ops
    ops = _optimized("mlp_gelu")[1].ops_after
    assert ops == {"Gemm": 4, "com.microsoft::Gelu": 2, "com.microsoft::FastGelu": 1}


def test_ocr_model_optimized(ocr_model):
    path, shape = ocr_model
    model = mir.prepare(path, {"x": shape})
    optimized, report = optimize(model, 2)
    _assert_equivalent(model, optimized)
    assert report.nodes_after < report.nodes_before
    assert "BatchNormalization" not in report.ops_after
    assert report.rules_fired.get("fuse_hardswish", 0) >= 18
    _, again = optimize(optimized, 2)
    assert again.applied == []


@pytest.mark.parametrize("name", ["conv_bn_relu", "mobilenet_v3_style"])
def test_layout_nhwc_on_conv_nets(name):
    model = _zoo(name)
    optimized, report = _optimized(name, 3, "nhwc")
    onnx.checker.check_model(optimized)
    transposes = [n for n in optimized.graph.node if n.op_type == "Transpose"]
    inputs = {i.name for i in optimized.graph.input}
    outputs = {o.name for o in optimized.graph.output}
    # one Transpose, reading the (now NHWC) image input; the logits are 2-D and stay as they were
    assert len(transposes) == 1 and transposes[0].input[0] in inputs | outputs
    assert mir.dims_of(optimized.graph.input[0]) == [1, *MODELS[name].input_shapes["input"][2:], 3]
    assert _outputs(optimized) == _outputs(model)
    feeds = mir.random_inputs(model, seed=1)
    expected = run_onnxruntime(model, feeds)
    got = run_onnxruntime(optimized, {"input": feeds["input"].transpose(0, 2, 3, 1)})
    for key, ref in expected.items():
        np.testing.assert_allclose(got[key], ref, atol=ATOL, rtol=RTOL)
    assert unsupported_nodes(optimized) == []


def test_cli_optimize_writes_model_and_report(tmp_path):
    from mmopt.cli.main import cli

    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["optimize", "zoo:conv_bn_relu", "-o", str(out), "--report", str(report),
                                      "--disable", "fuse_gemm"])
    assert result.exit_code == 0, result.output
    assert "fuse_batchnorm_into_conv x4" in result.output
    data = json.loads(report.read_text())
    assert data["rules_fired"] == {"fuse_batchnorm_into_conv": 4}
    assert "fuse_gemm" not in [p["name"] for p in data["passes"]]
    assert data["ops_before"]["BatchNormalization"] == 4 and "BatchNormalization" not in data["ops_after"]
    onnx.checker.check_model(onnx.load(str(out)))

    bad = CliRunner().invoke(cli, ["optimize", "zoo:conv_bn_relu", "-o", str(out), "--passes", "nope"])
    assert bad.exit_code == 2 and "unknown pass(es) nope" in bad.output
