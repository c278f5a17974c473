"""Helpers for the com.microsoft ops' tests: one-node models checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx

from mmopt.codegen.decompose._testing import (
    assert_same_on_onnxruntime,
    parse,
    rerun_modified,
    run_decompose,
)


def ms_model(body: str, inputs: str, outputs: str, **initializers) -> onnx.ModelProto:
    """A model in ONNX text syntax importing com.microsoft (version 1) and opset 17."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g ({inputs}) => ({outputs}) {{ {body} }}""", **initializers)


def check_decomposition(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rule: str,
                        count: int = 1, *, atol: float = 1e-5, rtol: float = 1e-5
                        ) -> onnx.ModelProto:
    """``rule`` rewrote ``count`` nodes; the result has no com.microsoft op left, passes the
    checker, computes what onnxruntime computes on the original; a second run changes nothing."""
    out, report = run_decompose(model)
    assert report.counts.get(rule) == count, report.counts
    assert not [n.op_type for n in out.graph.node if n.domain == "com.microsoft"]
    assert_same_on_onnxruntime(model, out, feeds, atol=atol, rtol=rtol)
    assert not rerun_modified(out)
    return out


def declined(model: onnx.ModelProto, rule: str) -> str:
    """The reason ``rule`` gave for leaving the model's node alone."""
    out, report = run_decompose(model)
    assert rule not in report.counts
    reasons = [r.reason for r in report.rejections if r.rule == rule]
    assert reasons, report.rejections
    return reasons[0]


def rand(*shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
