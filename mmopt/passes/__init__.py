"""Graph-level passes on the ONNX IR; :mod:`mmopt.passes.pipeline` composes them into levels."""

from mmopt.passes.pipeline import DEFAULT_LEVEL, LEVELS, PASSES, PipelineReport, optimize

__all__ = ["DEFAULT_LEVEL", "LEVELS", "PASSES", "PipelineReport", "optimize"]
