"""Shared fixtures: small models in ONNX text syntax, third-party models shipped in PyPI packages."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import parser


def parse(text: str) -> onnx.ModelProto:
    model = parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def conv_relu_model() -> onnx.ModelProto:
    """Conv + Relu with a symbolic batch dim and a few shape-computing nodes around a Reshape."""
    import numpy as np
    from onnx import numpy_helper

    model = parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 13]>
    net (float[N,3,8,8] x) => (float[N,128] y) {
        c = Conv <pads=[1,1,1,1]> (x, w, b)
        r = Relu(c)
        s = Shape(r)
        n = Gather <axis=0> (s, zero)
        nu = Unsqueeze(n, axes0)
        shape = Concat <axis=0> (nu, minus1)
        y = Reshape(r, shape)
    }""")
    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((2, 3, 3, 3)).astype("float32"),
        "b": rng.standard_normal(2).astype("float32"),
        "zero": np.array(0, dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "minus1": np.array([-1], dtype=np.int64),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inits.items())
    onnx.checker.check_model(model)
    return model


def _rapidocr_models() -> Path | None:
    """The wheel's model folder, found without importing the package (its own imports need
    pyclipper and more, which setup.sh does not install: only the .onnx files are used)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.origin:
        return None
    return Path(os.path.dirname(spec.origin)) / "models"


#: OCR models that ship inside the rapidocr-onnxruntime wheel: real third-party CNNs (PaddleOCR
#: exports) with dynamic input dims. name -> (file, input shape to compile for)
OCR_MODELS = {
    "ocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "ocr_det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
    "ocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
}


@pytest.fixture(params=sorted(OCR_MODELS))
def ocr_model(request) -> tuple[Path, tuple[int, ...]]:
    root = _rapidocr_models()
    if root is None:
        pytest.skip("rapidocr-onnxruntime is not installed (scripts/setup.sh installs it)")
    file, shape = OCR_MODELS[request.param]
    return root / file, shape
