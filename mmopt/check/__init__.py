"""Accuracy gate: a candidate model against a reference, per output and per layer (``mmopt check``).

    from mmopt.check import check
    report = check("model.onnx", "model.int8.onnx", "val.npz", labels="val_labels.npy",
                   max_drop="1%", min_cosine=0.99)
    report.passed, report.write_json("check.json"), report.write_junit("check.xml")

Modules: :mod:`~mmopt.check.runners` (what can be run: ONNX on onnxruntime, compiled artifacts, and
the hook for source-framework frontends), :mod:`~mmopt.check.data` (the data and labels formats),
:mod:`~mmopt.check.metrics`, :mod:`~mmopt.check.thresholds`, :mod:`~mmopt.check.per_layer`
(localizing the first layer that goes wrong), :mod:`~mmopt.check.report` (table, JSON, JUnit XML),
:mod:`~mmopt.check.config` (``mmopt-check.toml``).
"""

from mmopt.check.api import check
from mmopt.check.config import CONFIG_NAME, CheckConfig, find_config, load_config
from mmopt.check.data import Dataset, load_data, load_labels
from mmopt.check.metrics import METRICS, OutputMetrics
from mmopt.check.per_layer import LayerStat, PerLayerReport, compare_layers
from mmopt.check.report import CheckReport
from mmopt.check.runners import ArtifactRunner, OnnxRunner, Runner, open_runner, register_runner
from mmopt.check.thresholds import CheckResult, Thresholds

__all__ = [
    "CONFIG_NAME",
    "METRICS",
    "ArtifactRunner",
    "CheckConfig",
    "CheckReport",
    "CheckResult",
    "Dataset",
    "LayerStat",
    "OnnxRunner",
    "OutputMetrics",
    "PerLayerReport",
    "Runner",
    "Thresholds",
    "check",
    "compare_layers",
    "find_config",
    "load_config",
    "load_data",
    "load_labels",
    "open_runner",
    "register_runner",
]


def _make_callable() -> None:
    """Let ``mmopt.check(...)`` call :func:`check` while ``mmopt.check`` stays this package.

    The API's verbs are ``mmopt.compile``, ``mmopt.check``, ...; exporting the function under the
    package's own name from ``mmopt/__init__.py`` would hide the package (``mmopt.check.Thresholds``
    would break). A callable module keeps both working.
    """
    import sys
    import types

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return check(*args, **kwargs)

    sys.modules[__name__].__class__ = _CallablePackage


_make_callable()
