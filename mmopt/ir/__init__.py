"""Graph-level IR: ONNX models, loaded, normalized and saved (see :mod:`mmopt.ir.model`)."""

from mmopt.ir.model import (
    MIN_OPSET,
    dims_of,
    dtype_of,
    fix_input_shapes,
    graph_inputs,
    infer_shapes,
    input_specs,
    is_static,
    load,
    normalize_opset,
    opset_of,
    parse_shape_option,
    prepare,
    save,
    sha256_of,
)

# the one random-input maker is mmopt.runtime.inputs; its model form stays importable from here
from mmopt.runtime.inputs import random_inputs  # noqa: E402

__all__ = [
    "MIN_OPSET",
    "dims_of",
    "dtype_of",
    "fix_input_shapes",
    "graph_inputs",
    "infer_shapes",
    "input_specs",
    "is_static",
    "load",
    "normalize_opset",
    "opset_of",
    "parse_shape_option",
    "prepare",
    "random_inputs",
    "save",
    "sha256_of",
]
