"""Codegen + artifacts: compile for x86 (verified), ARM (aarch64 ELF) and CUDA (embedded kernels)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import pytest

import mmopt
from mmopt import ir as mir
from mmopt.codegen.relax_import import unsupported_nodes
from mmopt.errors import MmoptError, UnsupportedModelError
from mmopt.runtime.verify import run_onnxruntime


@pytest.fixture
def model_file(tmp_path, conv_relu_model):
    path = tmp_path / "net.onnx"
    onnx.save(conv_relu_model, path)
    return path


def test_compile_x86_writes_artifact_and_verifies(tmp_path, model_file):
    result = mmopt.compile(model_file, "x86", tmp_path / "out" / "net", input_shapes={"x": (2, 3, 8, 8)})
    assert result.library == tmp_path / "out" / "net.so"
    assert result.library.exists() and result.meta_path.exists()
    assert result.verification is not None and result.verification.passed
    assert result.verification.max_abs <= 1e-4
    meta = json.loads(result.meta_path.read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [2, 128], "dtype": "float32"}]
    assert meta["target"]["name"] == "x86" and meta["target"]["tvm"]["kind"] == "llvm"
    assert meta["source_sha256"] == mir.sha256_of(model_file)
    assert meta["passes_applied"] == ["simplify"]
    assert meta["verification"]["passed"] is True
    assert meta["tvm_version"].startswith("0.27")
    # nothing else left in the output directory (no temporary files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["net.json", "net.so"]


def test_loaded_artifact_matches_onnxruntime(tmp_path, model_file, conv_relu_model):
    mmopt.compile(model_file, "x86", tmp_path / "net", verify=False)
    compiled = mmopt.load(tmp_path / "net")
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = run_onnxruntime(mir.fix_input_shapes(conv_relu_model), {"x": x})["y"]
    np.testing.assert_allclose(compiled(x=x)["y"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled(x)["y"], expected, rtol=1e-5, atol=1e-5)  # positional
    with pytest.raises(MmoptError, match="shape"):
        compiled(x=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(MmoptError, match="missing x"):
        compiled(z=x)


def test_compile_arm_writes_aarch64_elf(tmp_path, model_file):
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64 cross compiler missing (scripts/setup.sh installs g++-aarch64-linux-gnu)")
    result = mmopt.compile(model_file, "arm", tmp_path / "arm" / "net")
    assert result.verification is None  # cannot run here
    header = result.library.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # e_machine = EM_AARCH64
    if shutil.which("file"):
        assert "aarch64" in subprocess.run(["file", result.library], capture_output=True,
                                           text=True).stdout
    assert json.loads(result.meta_path.read_text())["target"]["arch"] == "aarch64"
    with pytest.raises(MmoptError, match="built for target arm"):
        mmopt.load(result.library)


def test_compile_cuda_embeds_kernels(tmp_path, model_file):
    result = mmopt.compile(model_file, "cuda-sm80", tmp_path / "gpu" / "net")
    data = result.library.read_bytes()
    assert b"__global__" in data or b".entry" in data  # CUDA source or PTX kernels embedded
    meta = json.loads(result.meta_path.read_text())
    assert meta["target"]["device"] == "cuda" and meta["target"]["tvm"]["arch"] == "sm_80"


def test_verify_on_unrunnable_target_is_a_usage_error(tmp_path, model_file):
    with pytest.raises(MmoptError, match="cannot run here"):
        mmopt.compile(model_file, "cuda-sm90", tmp_path / "x", verify=True)
    assert not list(tmp_path.glob("x*"))


def test_unsupported_ops_are_all_listed_at_once(tmp_path):
    # operators no converter or decomposition handles: every one is listed, with its node name
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "vendor.ops" : 1]>
    g (float[1,2,4] x) => (float[1,2,4] y, float[1,2,4] z) {
      y = vendor.ops.FancyNorm(x)
      z = vendor.ops.Warp(x)
    }""")
    model.graph.node[0].name = "encoder.norm"
    model.graph.node[1].name = "encoder.warp"
    assert unsupported_nodes(model) == [("encoder.norm", "vendor.ops::FancyNorm"),
                                        ("encoder.warp", "vendor.ops::Warp")]
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedModelError) as info:
        mmopt.compile(path, "x86", tmp_path / "out" / "custom")
    message = info.value.message
    assert "encoder.norm (vendor.ops::FancyNorm" in message
    assert "encoder.warp (vendor.ops::Warp" in message
    assert str(path) in message
    assert not (tmp_path / "out").exists()  # no partial output, not even the directory


def test_custom_domain_ops_are_unsupported():
    model = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
    g (float[2] x) => (float[2] y) { y = my.ops.Frobnicate(x) }""")
    assert unsupported_nodes(model) == [("#0 (y)", "my.ops::Frobnicate")]
