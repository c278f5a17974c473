"""The result of ``mmopt check`` and its three renderings: a table, JSON, and JUnit XML.

JSON has no infinity or NaN: such numbers are written as the strings ``"inf"``, ``"-inf"`` and
``"nan"`` (an exact match has SNR ``"inf"``; a candidate that produced NaN has cosine ``"nan"``,
and its check fails).
The JUnit file has one ``<testcase>`` per threshold and output, so CI systems list each gate.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from mmopt.check.metrics import OutputMetrics
from mmopt.check.per_layer import PerLayerReport
from mmopt.check.thresholds import CheckResult, format_limit, format_value
from mmopt.report.data import finite, write_text
from mmopt.runtime.ort import ENGINE_DESCRIPTIONS


@dataclass
class CheckReport:
    reference: str
    candidate: str
    data: str
    samples: int
    labels: bool
    thresholds: dict
    outputs: list[OutputMetrics]
    checks: list[CheckResult]
    per_layer: PerLayerReport | None = None
    #: how the ONNX models among the two ran (``--eval-engine``); None when neither is ONNX
    eval_engine: str | None = None
    #: the metrics to show (all by default)
    metrics: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def output(self, name: str) -> OutputMetrics:
        return next(m for m in self.outputs if m.name == name)

    def to_dict(self) -> dict:
        return finite({
            "kind": "check", "passed": self.passed, "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data, "samples": self.samples, "labels": self.labels,
            "eval_engine": self.eval_engine, "thresholds": self.thresholds,
            "checks": [c.to_dict() for c in self.checks],
            "outputs": [m.to_dict() for m in self.outputs],
            "per_layer": self.per_layer.to_dict() if self.per_layer else None,
            "metrics": self.metrics, "seconds": self.seconds, "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def write_json(self, path) -> Path:
        return write_text(path, self.to_json())

    def to_junit(self) -> str:
        return junit_xml(self)

    def write_junit(self, path) -> Path:
        return write_text(path, self.to_junit())


# --------------------------------------------------------------------------------------------------
# JUnit XML


def write_junit_error(path, message: str) -> Path:
    """A JUnit file with one errored test case: CI shows why the check could not run (exit 2)."""
    return write_text(path, junit_xml(None, error=message))


def junit_xml(report: CheckReport | None, *, error: str | None = None, seconds: float = 0.0) -> str:
    """JUnit XML for ``report``; with ``error`` (and no report) one errored test case instead."""
    suite = ET.Element("testsuite", name="mmopt check")
    props = ET.SubElement(suite, "properties")
    if report is not None:
        for key in ("reference", "candidate", "data"):
            ET.SubElement(props, "property", name=key, value=str(getattr(report, key)))
        ET.SubElement(props, "property", name="samples", value=str(report.samples))
        if report.eval_engine:
            ET.SubElement(props, "property", name="eval_engine", value=report.eval_engine)
        seconds = sum(report.seconds.values())
        cases = report.checks
        for c in cases:
            case = ET.SubElement(suite, "testcase", classname=f"mmopt.check.{c.output}",
                                 name=c.title, time="0")
            value = format_value(c.metric, c.value)
            if not c.passed:
                ET.SubElement(case, "failure", message=f"{c.output}: {c.metric} = {value}, "
                              f"required {c.op} {format_limit(c.metric, c.limit)}",
                              type="ThresholdFailed").text = _failure_text(report, c)
            else:
                ET.SubElement(case, "system-out").text = f"{c.metric} = {value}"
        if not cases:
            case = ET.SubElement(suite, "testcase", classname="mmopt.check", name="compared",
                                 time="0")
            ET.SubElement(case, "system-out").text = "no thresholds given: metrics only"
        failures = len(report.failures)
        tests = max(len(cases), 1)
        errors = 0
        summary = render_text(report)
        ET.SubElement(suite, "system-out").text = summary
    else:
        case = ET.SubElement(suite, "testcase", classname="mmopt.check", name="check", time="0")
        ET.SubElement(case, "error", message=error or "error", type="MmoptError")
        failures, tests, errors = 0, 1, 1
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    root = ET.Element("testsuites", name="mmopt", tests=str(tests), failures=str(failures),
                      errors=str(errors), time=f"{seconds:.3f}")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _failure_text(report: CheckReport, check: CheckResult) -> str:
    lines = []
    m = next((m for m in report.outputs if m.name == check.output), None)
    if m and m.worst_samples:
        lines.append("worst samples: " + "; ".join(_sample_text(s) for s in m.worst_samples))
    if report.per_layer and report.per_layer.culprit:
        c = report.per_layer.culprit
        lines.append(f"first layer where the error jumps: {c.node} ({c.op_type}, tensor {c.tensor}): "
                     f"SNR {_db(c.input_snr_db)} -> {_db(c.snr_db)} dB")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# text and tables


def _db(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _sample_text(s) -> str:
    parts = [f"#{s.index} {s.id}"]
    if s.snr_db is not None:
        parts.append(f"SNR {_db(s.snr_db)} dB")
    if s.cosine is not None:
        parts.append(f"cos {s.cosine:.4f}")
    parts.append(f"max abs {s.max_abs:.3g}")
    if s.top1_agrees is False:
        parts.append("top-1 differs")
    return " ".join(parts)


#: (column title, metric name for --metric, value getter)
_COLUMNS = [
    ("acc ref -> cand", "accuracy", lambda m: "-" if m.accuracy_reference is None else
     f"{m.accuracy_reference * 100:.1f}% -> {m.accuracy_candidate * 100:.1f}%"),
    ("top-1 agree", "top1", lambda m: _pct(m.top1_agreement)),
    ("top-5 agree", "top5", lambda m: _pct(m.top5_agreement)),
    ("cosine (min)", "cosine", lambda m: "-" if m.cosine is None else
     f"{m.cosine:.5f} ({m.cosine_min:.5f})"),
    ("SNR dB (min)", "snr", lambda m: "-" if m.snr_db is None else
     f"{_db(m.snr_db)} ({_db(m.snr_db_min)})"),
    ("max abs", "abs", lambda m: _num(m.max_abs, ".3g")),
    ("mean abs", "abs", lambda m: _num(m.mean_abs, ".3g")),
]


def render(report: CheckReport, console) -> None:
    """Print ``report`` as tables on a rich console (the metric columns of ``report.metrics``)."""
    from rich.table import Table

    console.print(f"[bold]mmopt check[/]: candidate {report.candidate} vs reference "
                  f"{report.reference} on {report.data}")
    if report.eval_engine:
        console.print(f"eval engine: {report.eval_engine} "
                      f"({ENGINE_DESCRIPTIONS[report.eval_engine]})", markup=False)
    table = Table(box=None, padding=(0, 2))
    columns = [c for c in _COLUMNS if not report.metrics or c[1] in report.metrics]
    table.add_column("output")
    for title, *_ in columns:
        table.add_column(title, justify="right")
    for m in report.outputs:
        table.add_row(m.name, *(get(m) for _, _, get in columns))
    console.print(table)
    for m in report.outputs:
        if m.worst_samples and report.samples > 1:
            console.print(f"  worst samples of {m.name}: "
                          + "; ".join(_sample_text(s) for s in m.worst_samples), markup=False)
    if report.per_layer is not None:
        render_per_layer(report.per_layer, console)
    for note in report.notes:
        console.print(f"[yellow]note[/]: {note}")
    if report.checks:
        checks = Table(box=None, padding=(0, 2))
        for col in ("output", "threshold", "value", "status"):
            checks.add_column(col)
        for c in report.checks:
            checks.add_row(c.output, c.title, format_value(c.metric, c.value),
                           "[green]PASS[/]" if c.passed else "[red]FAIL[/]")
        console.print(checks)
    console.print(verdict(report))


def verdict(report: CheckReport) -> str:
    if not report.checks:
        return "[yellow]NO THRESHOLDS[/]: metrics only (give --min-cosine, --min-snr, ... to gate)"
    failed = len(report.failures)
    if failed:
        return f"[red]FAIL[/]: {failed} of {len(report.checks)} checks failed"
    return f"[green]PASS[/]: {len(report.checks)} checks passed"


#: show every layer up to this many; beyond, the largest drops and the culprit
_MAX_LAYER_ROWS = 30


def render_per_layer(per_layer: PerLayerReport, console) -> None:
    from rich.table import Table

    console.print(f"[bold]per layer[/] ({len(per_layer.layers)} tensors matched by name, "
                  f"{per_layer.samples} samples; a jump is a drop >= {per_layer.jump_db:g} dB)")
    layers = per_layer.layers
    shown = layers
    if len(layers) > _MAX_LAYER_ROWS:
        keep = sorted(layers, key=lambda layer: -_finite_or(layer.drop_db))[:_MAX_LAYER_ROWS - 1]
        if per_layer.culprit is not None:
            keep.append(per_layer.culprit)
        shown = sorted({id(layer): layer for layer in keep}.values(), key=lambda x: x.index)
    table = Table(box=None, padding=(0, 2))
    for col in ("#", "layer", "op", "SNR dB", "drop dB", "cosine", "max abs", ""):
        table.add_column(col, justify="right" if col in ("#", "SNR dB", "drop dB", "cosine",
                                                         "max abs") else "left")
    for layer in shown:
        mark = ""
        if layer is per_layer.culprit:
            mark = "[red]<- first jump[/]"
        row_style = "red" if layer is per_layer.culprit else None
        name = layer.node + (f" (via {_names(layer.via)})" if layer.via else "")
        table.add_row(str(layer.index), name, layer.op_type, _db(layer.snr_db),
                      _db(layer.drop_db), f"{layer.cosine:.5f}", f"{layer.max_abs:.3g}", mark,
                      style=row_style)
    console.print(table)
    if len(shown) < len(layers):
        console.print(f"  ({len(layers) - len(shown)} more layers in the JSON report)")
    console.print(culprit_line(per_layer))


def _names(names: list[str], most: int = 3) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[-most:]) + f" and {len(names) - most} more"


def culprit_line(per_layer: PerLayerReport) -> str:
    c = per_layer.culprit
    if c is not None:
        return (f"first layer where the error jumps: [bold]{c.node}[/] ({c.op_type}, tensor "
                f"{c.tensor}): SNR {_db(c.input_snr_db)} dB in -> {_db(c.snr_db)} dB out "
                f"(drop {_db(c.drop_db)} dB); exclude it from quantization or recalibrate it")
    w = per_layer.worst
    if w is None:
        return "no tensors matched by name: per-layer comparison needs shared tensor names"
    return (f"no layer's error jumps by {per_layer.jump_db:g} dB; largest drop: {w.node} "
            f"({_db(w.drop_db)} dB)")


def _finite_or(value: float, default: float = -math.inf) -> float:
    return value if not math.isnan(value) else default


def render_text(report: CheckReport) -> str:
    """The table rendering as plain text (for logs and the JUnit file)."""
    from rich.console import Console

    console = Console(width=140, no_color=True, highlight=False, record=True, file=_Null())
    render(report, console)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


class _Null:
    def write(self, _text):
        return 0

    def flush(self):
        pass
