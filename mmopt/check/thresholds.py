"""Thresholds: what makes ``mmopt check`` pass, and their evaluation against the metrics.

=================  ==========================================================  ==================
threshold          passes when, per output                                     applies to
=================  ==========================================================  ==================
``max_drop``       top-1 accuracy drop (reference − candidate) <= X             class scores + LABELS
``min_top1``       top-1 agreement >= X                                        class scores
``min_top5``       top-5 agreement >= X                                        class scores
``min_cosine``     mean cosine similarity >= X                                 float outputs
``min_snr``        SNR (dB, over the whole data set) >= X                      float outputs
``atol``/``rtol``  every element: ``|c − r| <= atol + rtol |r|``              all outputs
=================  ==========================================================  ==================

Fractions (``min_top1``, ``min_top5``) may be written as ``0.01`` or ``"1%"``. ``max_drop`` is read
by :func:`parse_max_drop`, the parser ``mmopt quantize --max-drop`` uses too: ``"1%"`` is one
percentage point, a bare number below 1 is a fraction (``0.01`` = one point), a bare number >= 1 is
refused (write ``"1%"``). It is kept here as a fraction, like the accuracy drop it is compared with.
A threshold that no output can be measured by (``max_drop`` without labels, ``min_top1`` with no
class-score output) is a usage error, not a silent pass.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from mmopt.check.metrics import OutputMetrics
from mmopt.errors import MmoptError

logger = logging.getLogger(__name__)

_FRACTIONS = ("min_top1", "min_top5")
#: a bare --max-drop fraction this large (10 percentage points) or larger draws a warning: it is
#: most likely meant as percentage points (``--max-drop 0.5`` for half a point)
LARGE_DROP_FRACTION = 0.1


def parse_max_drop(value, where: str | None = None) -> float:
    """``--max-drop`` in **percentage points**: the one reading ``mmopt quantize`` and ``mmopt
    check`` (and their Python APIs) share.

    - ``"0.5%"``: 0.5 percentage points (0 to 100%);
    - a bare number in [0, 1): a fraction, ``0.005`` = 0.5 points (from 0.1 on a warning says how
      many points that is: ``0.5`` allows a 50-point drop);
    - a bare number >= 1 (``1``, ``2``): refused, since some read it as points and others as a
      fraction; the error suggests ``1%``. Negative drops are refused too.

    The drop is in the points of the verb's metric: top-1 accuracy for ``mmopt check``, and for
    ``mmopt quantize`` whatever ``--metric`` measures (see :mod:`mmopt.quantize.evaluate`).
    """
    prefix = f"{where}: " if where else ""
    usage = "give percentage points as 0.5% or a fraction as 0.005"
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise MmoptError(f"{prefix}--max-drop needs a number, got {value!r}; {usage}")
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1].strip() if percent else text)
    except ValueError:
        raise MmoptError(f"{prefix}--max-drop {text!r}: not a number; {usage}") from None
    if not math.isfinite(number) or number < 0:
        raise MmoptError(f"{prefix}--max-drop {text}: must be a finite drop >= 0; {usage}")
    if percent:
        if number > 100:
            raise MmoptError(f"{prefix}--max-drop {text}: a drop is at most 100%")
        return number
    if number >= 1:
        raise MmoptError(f"{prefix}--max-drop {text}: a bare number is a fraction (0.01 = 1 "
                         f"percentage point) and must be below 1; write {text}% for {text} "
                         "percentage point(s)")
    points = float(f"{number * 100:.12g}")
    if number >= LARGE_DROP_FRACTION:
        logger.warning("--max-drop %s is a fraction: it allows a drop of %g percentage points. For "
                       "%s points write %s%%; write %g%% to keep this budget without this warning",
                       text, points, text, text, points)
    return points


@dataclass(frozen=True)
class Thresholds:
    max_drop: float | None = None
    min_top1: float | None = None
    min_top5: float | None = None
    min_cosine: float | None = None
    min_snr: float | None = None
    atol: float | None = None
    rtol: float | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], where: str) -> Thresholds:
        """From ``{"min-cosine": 0.99, "max_drop": "1%", ...}``; unknown keys are errors."""
        parsed = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in cls.names():
                raise MmoptError(f"{where}: unknown threshold {key!r}; known: "
                                 + ", ".join(n.replace("_", "-") for n in cls.names()))
            parsed[name] = parse_value(name, value, where)
        return cls(**parsed)

    def merged(self, other: Thresholds | None) -> Thresholds:
        """These thresholds with ``other``'s set values taking precedence."""
        if other is None:
            return self
        return replace(self, **{k: v for k, v in asdict(other).items() if v is not None})

    def is_empty(self) -> bool:
        return all(v is None for v in asdict(self).values())

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_value(name: str, value, where: str) -> float:
    """A threshold value; fractions accept ``"1%"``; ``max_drop`` as :func:`parse_max_drop` reads
    it, returned as a fraction."""
    option = "--" + name.replace("_", "-")
    if name == "max_drop":
        return float(f"{parse_max_drop(value, where) / 100:.12g}")
    if isinstance(value, bool):
        raise MmoptError(f"{where}: {option} needs a number, got {value!r}")
    text = str(value).strip()
    percent = text.endswith("%")
    try:
        number = float(text[:-1] if percent else text)
    except ValueError:
        raise MmoptError(f"{where}: {option} needs a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MmoptError(f"{where}: {option} must be finite, got {value!r}")
    if name in _FRACTIONS:
        if percent:
            number /= 100.0
        if not 0.0 <= number <= 1.0:
            raise MmoptError(f"{where}: {option} is a fraction: give 0.01 or 1%, got {value!r}")
    elif percent:
        raise MmoptError(f"{where}: {option} takes a plain number, not a percentage")
    if name in ("atol", "rtol") and number < 0:
        raise MmoptError(f"{where}: {option} must be >= 0")
    if name == "min_cosine" and not -1.0 <= number <= 1.0:
        raise MmoptError(f"{where}: --min-cosine must lie in [-1, 1], got {value!r}")
    return number


@dataclass
class CheckResult:
    """One threshold on one output."""

    output: str
    metric: str
    #: "<=" or ">="
    op: str
    limit: float
    value: float | None
    passed: bool
    #: how the check reads, when ``metric op limit`` does not say it well
    label: str | None = None

    @property
    def title(self) -> str:
        return self.label or f"{self.metric} {self.op} {format_limit(self.metric, self.limit)}"

    def to_dict(self) -> dict:
        return {**asdict(self), "title": self.title}


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric in ("top-1 agreement", "top-5 agreement", "top-1 accuracy drop"):
        return f"{value * 100:.2f}%"
    if metric == "SNR dB":
        return f"{value:.2f}"
    if metric == "cosine":
        return f"{value:.6f}"
    if metric == "tolerance":
        return f"worst {value:.3g}x"
    return f"{value:.6g}"


def format_value(metric: str, value: float | None) -> str:
    """A measured value as reports show it."""
    return _fmt(metric, value)


def format_limit(metric: str, limit: float) -> str:
    """A threshold as the user wrote it (no padding zeros)."""
    if metric in ("top-1 agreement", "top-5 agreement", "top-1 accuracy drop"):
        return f"{limit * 100:g}%"
    return f"{limit:g}"


def _at_least(value: float | None, limit: float) -> bool:
    return value is not None and not math.isnan(value) and value >= limit


def _at_most(value: float | None, limit: float) -> bool:
    return value is not None and not math.isnan(value) and value <= limit


def evaluate(outputs: list[OutputMetrics], thresholds: Mapping[str, Thresholds], *,
             has_labels: bool) -> list[CheckResult]:
    """Check every output against its thresholds (``thresholds[output name]``)."""
    results: list[CheckResult] = []
    used: dict[str, int] = {}
    for m in outputs:
        t = thresholds.get(m.name, Thresholds())
        checks = []
        if t.max_drop is not None and m.accuracy_drop is not None:
            checks.append(("max_drop", "top-1 accuracy drop", "<=", t.max_drop, m.accuracy_drop))
        if t.min_top1 is not None and m.top1_agreement is not None:
            checks.append(("min_top1", "top-1 agreement", ">=", t.min_top1, m.top1_agreement))
        if t.min_top5 is not None and m.top5_agreement is not None:
            checks.append(("min_top5", "top-5 agreement", ">=", t.min_top5, m.top5_agreement))
        if t.min_cosine is not None and m.cosine is not None:
            checks.append(("min_cosine", "cosine", ">=", t.min_cosine, m.cosine))
        if t.min_snr is not None and m.snr_db is not None:
            checks.append(("min_snr", "SNR dB", ">=", t.min_snr, m.snr_db))
        if m.worst_ratio is not None:
            checks.append(("atol", "tolerance", "<=", 1.0, m.worst_ratio))
        for key, metric, op, limit, value in checks:
            used[key] = used.get(key, 0) + 1
            passed = _at_least(value, limit) if op == ">=" else _at_most(value, limit)
            label = f"|c - r| <= {m.atol:g} + {m.rtol:g} |r|" if metric == "tolerance" else None
            results.append(CheckResult(m.name, metric, op, limit, value, passed, label))
    _require_applicable(outputs, thresholds, used, has_labels)
    return results


def _require_applicable(outputs, thresholds, used, has_labels) -> None:
    asked = {k for t in thresholds.values() for k, v in asdict(t).items() if v is not None}
    if "rtol" in asked:  # atol and rtol make one check
        asked.discard("rtol")
        asked.add("atol")
    for key in sorted(asked - set(used)):
        option = "--" + key.replace("_", "-")
        if key == "max_drop" and not has_labels:
            raise MmoptError("--max-drop needs --labels (the true class of each sample); without "
                             "labels gate on --min-top1 (agreement with the reference)")
        if key in ("max_drop", "min_top1", "min_top5"):
            raise MmoptError(f"{option}: no output holds class scores (one score vector per "
                             f"sample); outputs: {_describe(outputs)}. Use --metric top1 to treat "
                             "the last axis as classes")
        raise MmoptError(f"{option}: no output can be measured by it (outputs: "
                         f"{_describe(outputs)})")


def _describe(outputs: list[OutputMetrics]) -> str:
    return ", ".join(f"{m.name} {m.dtype}{m.shape}" for m in outputs)
