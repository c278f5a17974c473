"""PyTorch frontend: .pt2 and TorchScript archives and live modules -> ONNX, checked against torch.

Also: pickled files are refused without being unpickled, unsupported operators fail in one line.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

from mmopt import frontends
from mmopt.errors import MmoptError, ModelLoadError, UnsupportedModelError
from mmopt.frontends import torch as torch_frontend
from mmopt.runtime.verify import compare, run_onnxruntime

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'mmopt[torch]')")

from models_zoo import torch_models  # noqa: E402 - needs torch


def _reference(name: str):
    module, inputs = torch_models.build(name)
    with torch.no_grad():
        out = module(*inputs)
    return inputs, out.numpy()


def _ort(model: onnx.ModelProto, inputs) -> np.ndarray:
    names = [i.name for i in model.graph.input]
    outs = run_onnxruntime(model, {n: x.numpy() for n, x in zip(names, inputs)})
    assert len(outs) == 1
    return next(iter(outs.values()))


def _assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    report = compare({"y": ref}, {"y": got}, atol=1e-4, rtol=1e-4)
    assert report.passed, report.to_dict()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return tmp_path_factory.mktemp("torch_zoo")


def _archive(directory, name: str, fmt: str = "pt2"):
    """A zoo archive, written once per test module."""
    path = directory / (f"{name}.pt2" if fmt == "pt2" else f"{name}.torchscript.pt")
    return path if path.exists() else torch_models.write(name, directory, fmt=fmt)


# --------------------------------------------------------------------------------------------------
# the zoo: .pt2 files through `mmopt import`'s code path, compared with eager PyTorch


@pytest.mark.parametrize("name", torch_models.names())
def test_zoo_pt2_matches_torch(archives, name):
    path = _archive(archives, name)
    assert frontends.detect(path) == "torch"
    model = frontends.to_onnx(path)
    onnx.checker.check_model(model)
    inputs, ref = _reference(name)
    _assert_close(ref, _ort(model, inputs))


@pytest.mark.parametrize("name", ["resnet18", "lstm_tagger"])
def test_zoo_torchscript_matches_torch(archives, name):
    path = _archive(archives, name, "torchscript")
    assert torch_frontend.sniff(path) == "torchscript"
    model = frontends.to_onnx(path, dynamic_batch=True)
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    inputs, ref = _reference(name)
    _assert_close(ref, _ort(model, inputs))
    # the dynamic batch really is dynamic
    module, _ = torch_models.build(name)
    batch3 = torch_models.example_inputs(name, seed=5)[0].repeat(3, *[1] * (inputs[0].dim() - 1))
    with torch.no_grad():
        _assert_close(module(batch3).numpy(), _ort(model, (batch3,)))


def test_from_torch_dynamic_batch_and_verify(tmp_path):
    module, inputs = torch_models.build("transformer_encoder")
    model = frontends.from_torch(module, inputs, dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ids = torch.randint(0, 1000, (3, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_close(module(ids).numpy(), _ort(model, (ids,)))


def test_verify_runs_the_archive(archives):
    path = _archive(archives, "lstm_tagger")
    model = frontends.to_onnx(path)
    report = frontends.verify(path, model)
    assert report is not None and report.passed
    assert report.outputs[0].shape == [1, 32, 12]


# --------------------------------------------------------------------------------------------------
# TorchScript without recorded shapes, multiple outputs


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(6, 4)

    def forward(self, x, y):
        h = torch.relu(self.body(x))
        return h * 2, h.sum(-1) + y


def test_scripted_archive_needs_input_shapes(tmp_path):
    path = tmp_path / "two_heads.pt"
    torch.jit.save(torch.jit.script(_TwoHeads().eval()), path)
    with pytest.raises(MmoptError, match=r"does not record the shape of input x; give it"):
        frontends.to_onnx(path)
    model = frontends.to_onnx(path, input_shapes={"x": (2, 6), "y": (2,)})
    assert [i.name for i in model.graph.input] == ["x", "y"]
    assert [o.name for o in model.graph.output] == ["output_0", "output_1"]
    x, y = torch.randn(2, 6), torch.randn(2)
    with torch.no_grad():
        want = torch.jit.load(path)(x, y)
    got = run_onnxruntime(model, {"x": x.numpy(), "y": y.numpy()})
    for ref, name in zip(want, ["output_0", "output_1"]):
        _assert_close(ref.numpy(), got[name])


# --------------------------------------------------------------------------------------------------
# never unpickle


class _Trap:
    """Unpickling this creates a file: proof that something ran pickle.load on it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["state_dict", "module", "raw_pickle"])
def test_pickled_files_are_refused_without_unpickling(tmp_path, monkeypatch, kind):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pth"
    if kind == "state_dict":
        torch.save({"weight": torch.zeros(2), "trap": _Trap(marker)}, path)
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(pickle.dumps(_Trap(marker)))
    def no_load(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_load)
    assert torch_frontend.sniff(path) == "pickle"
    with pytest.raises(UnsupportedModelError) as info:
        frontends.to_onnx(path)
    message = info.value.message
    assert "\n" not in message
    assert "never unpickles" in message and "torch.export.save" in message
    assert "torch.jit.save" in message
    assert not marker.exists()


def test_cli_refuses_a_state_dict_in_one_line(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    proc = subprocess.run([sys.executable, "-m", "mmopt.cli.main", "import", str(path)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COLUMNS="200"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmopt: error: {path}: a pickled file")
    assert not list(tmp_path.glob("*.onnx"))


def test_pt2_with_pickled_constant_is_refused(tmp_path, archives):
    source = _archive(archives, "lstm_tagger")
    path = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_constants_config.json"):
                config = json.loads(data)
                config["config"]["evil"] = {"path_name": "opaque_obj_0", "use_pickle": True}
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(UnsupportedModelError, match="constant evil is a pickled Python object"):
        frontends.to_onnx(path)


# --------------------------------------------------------------------------------------------------
# unsupported operators


@torch.library.custom_op("mmopt_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class _CustomOp(torch.nn.Module):
    def forward(self, x):
        return _twice(x) + 1


def test_unsupported_operator_is_named(tmp_path):
    x = torch.randn(2, 3)
    with pytest.raises(UnsupportedModelError,
                       match=r"operator mmopt_test\.twice\.default has no ONNX conversion"):
        frontends.from_torch(_CustomOp(), (x,))
    path = tmp_path / "custom.pt2"
    torch.export.save(torch.export.export(_CustomOp(), (x,)), path)
    with pytest.raises(UnsupportedModelError) as info:
        frontends.to_onnx(path)
    assert str(path) in info.value.message and "mmopt_test.twice" in info.value.message
    assert "\n" not in info.value.message
    traced = tmp_path / "custom.pt"
    torch.jit.save(torch.jit.trace(_CustomOp(), (x,)), traced)
    with pytest.raises(UnsupportedModelError, match=r"operator mmopt_test::twice has no ONNX "):
        frontends.to_onnx(traced)


# --------------------------------------------------------------------------------------------------
# detection and packaging


def test_detection(tmp_path, archives):
    pt2 = _archive(archives, "lstm_tagger")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(pt2.read_bytes())
    assert frontends.detect(renamed) == "torch"        # by content
    assert torch_frontend.sniff(pt2) == "pt2"
    not_torch = tmp_path / "notes.pt"
    not_torch.write_text("hello")
    with pytest.raises(ModelLoadError, match="cannot tell which framework"):
        frontends.detect(not_torch)


def test_missing_extra_is_named(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    path = tmp_path / "m.pt2"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(MmoptError, match=r"pip install 'mmopt\[torch\]'"):
        frontends.to_onnx(path, framework="torch")
