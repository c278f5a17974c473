"""decompose_deform_conv: bilinear sampling + MatMul computes what onnxruntime's DeformConv does,
with groups, offset groups, stride, dilation, padding, mask and bias."""

from __future__ import annotations

import numpy as np

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)


def test_deform_conv_matches_onnxruntime():
    rng = np.random.default_rng(0)
    model = parse("""
    <ir_version: 10, opset_import: ["" : 22]>
    g (float[2,4,7,6] x, float[2,36,4,2] offset, float[2,18,4,2] mask) => (float[2,6,4,2] y) {
      y = DeformConv <group = 2, offset_group = 2, strides = [2, 2], dilations = [1, 2],
                      pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, offset, b, mask)
    }""", w=rng.standard_normal((6, 2, 3, 3)).astype(np.float32),
        b=rng.standard_normal(6).astype(np.float32))
    feeds = {"x": rng.standard_normal((2, 4, 7, 6)).astype(np.float32),
             # offsets up to ±3 pixels: some samples fall outside the image
             "offset": rng.uniform(-3, 3, (2, 36, 4, 2)).astype(np.float32),
             "mask": rng.uniform(0, 1, (2, 18, 4, 2)).astype(np.float32)}
    decomposed, report = run_decompose(model)
    assert report.counts["decompose_deform_conv"] == 1
    assert "DeformConv" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, feeds, atol=1e-4, rtol=1e-4)
    assert not rerun_modified(decomposed)
