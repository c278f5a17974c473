"""decompose_tfidf: n-gram counting by comparisons matches onnxruntime's TfIdfVectorizer."""

from __future__ import annotations

import numpy as np
import pytest

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    op_types,
    parse,
    rerun_modified,
    run_decompose,
)

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[2,9] x) => (float[2,7] y) {{
  y = TfIdfVectorizer <mode = "{mode}", min_gram_length = {lo}, max_gram_length = 2,
                       max_skip_count = {skip}, ngram_counts = [0, 4],
                       ngram_indexes = [0, 1, 2, 3, 4, 5, 6],
                       pool_int64s = [2, 3, 5, 4, 5, 6, 7, 8, 6, 7], weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]> (x)
}}"""


@pytest.mark.parametrize("mode,lo,skip", [("TF", 1, 0), ("TF", 2, 3), ("IDF", 1, 2), ("TFIDF", 1, 5)])
def test_tfidf_matches_onnxruntime(mode, lo, skip):
    model = parse(TEXT.format(mode=mode, lo=lo, skip=skip))
    x = np.array([[1, 1, 3, 3, 3, 7, 8, 6, 7], [5, 6, 7, 8, 6, 7, 5, 4, 2]], np.int64)
    decomposed, report = run_decompose(model)
    assert report.counts["decompose_tfidf"] == 1
    assert "TfIdfVectorizer" not in op_types(decomposed)
    assert_same_on_onnxruntime(model, decomposed, {"x": x})
    assert not rerun_modified(decomposed)


def test_string_pool_is_left_with_the_reason():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (string[5] x) => (float[2] y) {
      y = TfIdfVectorizer <mode = "TF", min_gram_length = 1, max_gram_length = 1, max_skip_count = 0,
                           ngram_counts = [0], ngram_indexes = [0, 1], pool_strings = ["a", "b"]> (x)
    }""")
    _, report = run_decompose(model)
    assert [r.reason for r in report.rejections] == ["string tokens are not compiled"]
