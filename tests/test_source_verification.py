"""compile verifies a PyTorch/TF/TFLite/Caffe model against its own framework, not only against
onnxruntime on the converted ONNX (which would faithfully run a wrong conversion)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 4, 1)).eval()
    path = tmp_path_factory.mktemp("torch") / "net.torchscript.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 16, 16)), path)
    return path


def _invoke(*args):
    from mmopt.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_faithful_conversion_passes_against_torch(torchscript, tmp_path):
    result = _invoke("compile", torchscript, "--input-shape", "input:1,3,16,16", "-o", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "PASS vs the source framework (torch" in result.output
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["extra"]["source_verification"]["passed"] is True


def test_a_wrong_conversion_that_onnxruntime_agrees_with_fails(torchscript, tmp_path, monkeypatch):
    """An exporter bug: one weight of the ONNX export flipped. onnxruntime runs the wrong model
    exactly as the artifact does, so only the comparison with PyTorch can catch it."""
    from onnx import numpy_helper

    from mmopt.frontends import torch as torch_frontend

    convert = torch_frontend.to_onnx

    def broken(*args, **kwargs):
        model = convert(*args, **kwargs)
        weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        array = numpy_helper.to_array(weight).copy()
        array.flat[0] = -array.flat[0] + 1.0
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))
        return model

    monkeypatch.setattr(torch_frontend, "to_onnx", broken)
    result = _invoke("compile", torchscript, "--input-shape", "input:1,3,16,16", "-o", tmp_path / "b")
    assert result.exit_code == 1, result.output
    assert "PASS vs onnxruntime" in result.output
    assert "FAIL vs the source framework (torch" in result.output
    meta = json.loads((tmp_path / "b.json").read_text())
    assert meta["verification"]["passed"] is True
    assert meta["extra"]["source_verification"]["passed"] is False
