"""The one random-input maker: the same tensors for every caller, seeded, per dtype."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mmopt import ir as mir
from mmopt.errors import MmoptError
from mmopt.runtime.artifact import TensorSpec
from mmopt.runtime.inputs import random_array, random_feeds, random_inputs


def _model(dims=(1, 3)) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims)),
              helper.make_tensor_value_info("i", TensorProto.INT64, [4]),
              helper.make_tensor_value_info("b", TensorProto.BOOL, [5])]
    nodes = [helper.make_node("Identity", [n], [n + "_out"]) for n in ("x", "i", "b")]
    outputs = [helper.make_tensor_value_info("x_out", TensorProto.FLOAT, list(dims)),
               helper.make_tensor_value_info("i_out", TensorProto.INT64, [4]),
               helper.make_tensor_value_info("b_out", TensorProto.BOOL, [5])]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ranges_and_dtypes():
    rng = np.random.default_rng(0)
    f = random_array(rng, (64,), "float16")
    i = random_array(rng, (64,), np.int32)
    b = random_array(rng, (64,), "bool")
    assert f.dtype == np.float16 and 0 <= f.min() and f.max() < 1
    assert i.dtype == np.int32 and set(np.unique(i)) <= {0, 1, 2, 3}
    assert b.dtype == np.bool_ and b.any() and not b.all()
    with pytest.raises(TypeError):
        random_array(rng, (2,), "<U3")


def test_model_and_artifact_specs_draw_the_same_tensors():
    model = _model()
    from_model = random_inputs(model, 3)
    specs = [TensorSpec("x", [1, 3], "float32"), TensorSpec("i", [4], "int64"),
             TensorSpec("b", [5], "bool")]
    from_specs = random_feeds(specs, 3)
    assert list(from_model) == ["x", "i", "b"]
    for name in from_model:
        np.testing.assert_array_equal(from_model[name], from_specs[name])
    np.testing.assert_array_equal(mir.random_inputs(model, 3)["x"], from_model["x"])
    assert not np.array_equal(random_inputs(model, 4)["x"], from_model["x"])


def test_refusals_name_the_input():
    with pytest.raises(MmoptError, match="input x has dynamic shape"):
        random_inputs(_model(("N", 3)), 0)
    with pytest.raises(MmoptError, match=r"^--data random:1: input s: cannot generate"):
        random_feeds([("s", (2,), np.dtype("<U3"))], 0, where="--data random:1: ")


def test_an_input_too_large_to_allocate_is_a_one_line_error():
    """Fuzzing (mlp_gelu/wrong_dims/726): an input dim of 2^40 compiled, then drawing its random
    verification input raised MemoryError: an internal error (exit 3)."""
    with pytest.raises(MmoptError, match=r"^input x: no memory for random data of shape "
                                         r"\[1099511627776, 64\] \(256 TiB; MemoryError\)"):
        random_feeds([("x", [1 << 40, 64], "float32")])
