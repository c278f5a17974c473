"""The trivial frontend: an ONNX file is loaded and checked as it is (see :func:`mmopt.ir.load`)."""

from __future__ import annotations

import onnx


def to_onnx(path) -> onnx.ModelProto:
    from mmopt import ir as mir

    return mir.load(path)
