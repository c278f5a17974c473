"""End to end on real models: every zoo model and third-party OCR CNNs (with dynamic input dims)
compile for x86 and match onnxruntime to 1e-4."""

from __future__ import annotations

import pytest

import mmopt
from models_zoo import MODELS, build


#: full-size recipes of published architectures (1-2 min each to compile on 2 cores): the speed
#: suite compiles them at full size, tests/test_zoo_models.py compiles reduced versions
FULL_SIZE_ONLY_IN_SUITE = {"yolov8n_style", "yolox_style", "mobilenet_v3_large",
                           "efficientnet_b0_style", "vit_tiny_style"}
#: the dynamic-axes exports of zoo models: compiled with symbolic dims in
#: tests/test_dynamic_shapes.py (statically they are the models above)
DYNAMIC_VARIANTS = {"yolov8n_dynamic", "transformer_block_dynamic"}


@pytest.mark.parametrize("name", sorted(set(MODELS) - FULL_SIZE_ONLY_IN_SUITE - DYNAMIC_VARIANTS))
def test_zoo_model_compiles_and_verifies(tmp_path, name):
    model = build(name)
    result = mmopt.compile(model, "x86", tmp_path / name, input_shapes=MODELS[name].input_shapes)
    v = result.verification
    assert v is not None and v.passed, v.to_dict()
    assert v.max_abs <= 1e-4, v.to_dict()


def test_ocr_model_compiles_and_verifies(tmp_path, ocr_model):
    path, shape = ocr_model
    result = mmopt.compile(path, "x86", tmp_path / path.stem, input_shapes={"x": shape})
    v = result.verification
    assert v is not None and v.passed, v.to_dict()
    assert v.max_abs <= 1e-4, v.to_dict()
    assert result.meta.inputs[0].shape == list(shape)
    assert result.passes.nodes_after < result.passes.nodes_before  # simplify folded something
