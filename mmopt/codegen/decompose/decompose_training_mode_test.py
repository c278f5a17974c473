"""decompose_training_mode: BatchNormalization and Dropout with a constant training_mode compute what
onnxruntime computes in training mode."""

from __future__ import annotations

import numpy as np

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)

RNG = np.random.default_rng(0)


def test_batchnorm_in_training_mode_uses_batch_statistics():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4,3,5,5] x) => (float[4,3,5,5] y, float[3] running_mean, float[3] running_var) {
      y, running_mean, running_var = BatchNormalization <training_mode = 1, momentum = 0.8>
                                       (x, scale, bias, mean, var)
    }""", scale=RNG.uniform(0.5, 2, 3).astype(np.float32), bias=RNG.standard_normal(3).astype(np.float32),
        mean=RNG.standard_normal(3).astype(np.float32), var=RNG.uniform(0.5, 2, 3).astype(np.float32))
    feeds = {"x": (RNG.standard_normal((4, 3, 5, 5)) * 3 + 1).astype(np.float32)}
    decomposed, report = run_decompose(model)
    assert report.counts["decompose_batchnorm_training"] == 1
    assert "BatchNormalization" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, feeds, atol=1e-4)
    assert not rerun_modified(decomposed)


def test_inference_batchnorm_and_random_dropout_are_left_alone():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,4] x) => (float[2,3,4] y, float[2,3,4] z) {
      y = BatchNormalization (x, scale, bias, mean, var)
      z = Dropout (x, ratio, training)
    }""", scale=np.ones(3, np.float32), bias=np.zeros(3, np.float32), mean=np.zeros(3, np.float32),
        var=np.ones(3, np.float32), ratio=np.array(0.5, np.float32), training=np.array(True))
    decomposed, report = run_decompose(model)
    assert "decompose_batchnorm_training" not in report.counts
    assert [r.reason for r in report.rejections] == [
        "training-mode dropout with a non-zero ratio is random"]
