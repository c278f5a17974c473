"""Per-output metrics of a candidate against a reference, accumulated sample by sample.

For every output, over the N samples of the data set (``r`` = reference, ``c`` = candidate, one
sample flattened):

- **cosine**: ``r·c / (|r| |c|)`` per sample; reported as the mean over samples (what
  ``--min-cosine`` gates) and the minimum. Two all-zero arrays count as 1, one all-zero as 0.
- **SNR (dB)**: ``10 log10(Σ r² / Σ (c − r)²)`` with the sums taken over the whole data set (what
  ``--min-snr`` gates), and the worst per-sample value. An exact match is +inf.
- **max / mean abs error**: ``max |c − r|`` and ``mean |c − r|`` over all elements of all samples.
- **tolerance** (with ``--atol``/``--rtol``): the largest ``|c − r| / (atol + rtol |r|)``; at most 1
  means every element is within tolerance (as :func:`mmopt.runtime.verify.compare`).
- for outputs that hold class scores (float, one vector of at least 2 values per sample once
  leading 1-dims are dropped; with ``--metric top1/top5/accuracy`` also any float output, the last
  axis taken as classes):

  - **top-1 agreement**: the fraction of samples where both models pick the same class;
  - **top-5 agreement**: the fraction where the reference's top-1 class is among the candidate's
    five highest scores;
  - **top-1 accuracy** of each model against LABELS, and the **drop** (reference − candidate) that
    ``--max-drop`` gates.

Non-float outputs get the abs errors and **exact** (the fraction of samples that match exactly).
The worst samples (lowest SNR; for non-float outputs largest abs error) are named in the report.
Non-finite values equal in both models count as a match; any other NaN counts as an infinite error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

#: metric names for --metric
METRICS = ("accuracy", "top1", "top5", "cosine", "snr", "abs")
#: naming one of these with --metric makes every float output a class-score output
_CLASS_METRICS = {"accuracy", "top1", "top5"}


@dataclass
class SampleScore:
    index: int
    id: str
    snr_db: float | None
    cosine: float | None
    max_abs: float
    top1_agrees: bool | None = None


@dataclass
class OutputMetrics:
    name: str
    #: reference shape of one sample's output
    shape: list[int]
    dtype: str
    samples: int
    cosine: float | None = None
    cosine_min: float | None = None
    snr_db: float | None = None
    snr_db_min: float | None = None
    max_abs: float = 0.0
    mean_abs: float = 0.0
    exact: float = 0.0
    #: number of classes when the output holds class scores
    classes: int | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    accuracy_reference: float | None = None
    accuracy_candidate: float | None = None
    accuracy_drop: float | None = None
    atol: float | None = None
    rtol: float | None = None
    #: largest |c - r| / (atol + rtol |r|); <= 1: within tolerance everywhere
    worst_ratio: float | None = None
    samples_outside_tolerance: int | None = None
    worst_samples: list[SampleScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def snr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)`` for sums of squares; +inf for a perfect match."""
    if math.isnan(noise) or math.isnan(signal):
        return float("nan")
    if noise == 0.0:
        return float("inf")
    if signal == 0.0 or math.isinf(noise):
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def cosine(dot: float, ref_sq: float, cand_sq: float) -> float:
    if ref_sq == 0.0 and cand_sq == 0.0:
        return 1.0
    if ref_sq == 0.0 or cand_sq == 0.0:
        return 0.0
    return float(dot / math.sqrt(ref_sq * cand_sq))


def difference(ref: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(r, c, |c - r|)`` as flat float64; equal non-finite values give 0, other NaN give inf."""
    r = np.asarray(ref).astype(np.float64, copy=False).ravel()
    c = np.asarray(cand).astype(np.float64, copy=False).ravel()
    with np.errstate(invalid="ignore"):
        diff = np.abs(c - r)
    same = ~np.isfinite(r) & (r == c)
    if same.any():
        diff[same] = 0.0
    return r, c, np.nan_to_num(diff, nan=np.inf, posinf=np.inf)


class OutputAccumulator:
    """Collects one output's comparison over the samples; :meth:`result` gives the metrics."""

    def __init__(self, name: str, *, class_scores: bool = False, atol: float | None = None,
                 rtol: float | None = None):
        self.name = name
        self.force_classes = class_scores
        self.atol = atol
        self.rtol = rtol
        self.shape: list[int] | None = None
        self.dtype = ""
        self.is_float = True
        self.classes: int | None = None
        self.scores: list[SampleScore] = []
        self.signal = self.noise = self.abs_sum = 0.0
        self.elements = 0
        self.max_abs = 0.0
        self.exact = 0
        self.top1 = self.top5 = self.rows = 0
        self.correct_ref = self.correct_cand = 0
        self.labelled = False
        self.worst_ratio = 0.0
        self.outside = 0

    def _class_rows(self, array: np.ndarray) -> np.ndarray | None:
        if not self.is_float:
            return None
        a = array
        while a.ndim > 1 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 1 and a.size >= 2:
            return a[np.newaxis]
        if self.force_classes and array.ndim >= 1 and array.shape[-1] >= 2:
            return array.reshape(-1, array.shape[-1])
        return None

    def add(self, index: int, sample_id: str, ref: np.ndarray, cand: np.ndarray,
            label: np.ndarray | int | None = None) -> None:
        ref = np.asarray(ref)
        cand = np.asarray(cand)
        if self.shape is None:
            self.shape = list(ref.shape)
            self.dtype = str(ref.dtype)
            self.is_float = ref.dtype.kind == "f" or cand.dtype.kind == "f"
            rows = self._class_rows(ref)
            self.classes = None if rows is None else int(rows.shape[-1])
        r, c, diff = difference(ref, cand)
        max_abs = float(diff.max()) if diff.size else 0.0
        self.max_abs = max(self.max_abs, max_abs)
        self.abs_sum += float(diff.sum())
        self.elements += diff.size
        self.exact += bool(max_abs == 0.0)
        if self.atol is not None or self.rtol is not None:
            bound = (self.atol or 0.0) + (self.rtol or 0.0) * np.abs(np.nan_to_num(r))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(diff == 0.0, 0.0, diff / bound)
            worst = float(np.nan_to_num(ratio, nan=np.inf).max()) if ratio.size else 0.0
            self.worst_ratio = max(self.worst_ratio, worst)
            self.outside += bool(worst > 1.0)
        score = SampleScore(index, sample_id, None, None, max_abs)
        if self.is_float:
            finite = np.isfinite(r) & np.isfinite(c)
            signal = float(np.dot(r[finite], r[finite]))
            noise = float(np.dot(diff, diff)) if np.isfinite(max_abs) else float("inf")
            self.signal += signal
            self.noise += noise
            score.snr_db = snr_db(signal, noise)
            if finite.all():
                score.cosine = cosine(float(np.dot(r, c)), signal, float(np.dot(c, c)))
            else:
                score.cosine = 1.0 if max_abs == 0.0 else float("nan")
        if self.classes is not None:
            ref_rows = self._class_rows(ref)
            cand_rows = self._class_rows(cand)
            if ref_rows is not None and cand_rows is not None and ref_rows.shape == cand_rows.shape:
                ref_top = ref_rows.argmax(axis=-1)
                agree = ref_top == cand_rows.argmax(axis=-1)
                k = min(5, cand_rows.shape[-1])
                top5 = np.argpartition(-cand_rows, k - 1, axis=-1)[:, :k]
                self.top1 += int(agree.sum())
                self.top5 += int((top5 == ref_top[:, None]).any(axis=-1).sum())
                self.rows += len(ref_top)
                score.top1_agrees = bool(agree.all())
                if label is not None:
                    want = np.asarray(label).reshape(-1)
                    if want.size == len(ref_top):
                        self.labelled = True
                        self.correct_ref += int((ref_top == want).sum())
                        self.correct_cand += int((cand_rows.argmax(axis=-1) == want).sum())
        self.scores.append(score)

    def result(self, worst: int = 3) -> OutputMetrics:
        n = len(self.scores)
        m = OutputMetrics(self.name, self.shape or [], self.dtype, n, max_abs=self.max_abs,
                          mean_abs=self.abs_sum / self.elements if self.elements else 0.0,
                          exact=self.exact / n if n else 0.0)
        if self.is_float and n:
            cosines = np.array([s.cosine for s in self.scores], dtype=np.float64)
            snrs = np.array([s.snr_db for s in self.scores], dtype=np.float64)
            m.cosine = float(cosines.mean())
            m.cosine_min = float(np.nan if np.isnan(cosines).any() else cosines.min())
            m.snr_db = snr_db(self.signal, self.noise)
            m.snr_db_min = float(np.nan if np.isnan(snrs).any() else snrs.min())
        if self.classes is not None and self.rows:
            m.classes = self.classes
            m.top1_agreement = self.top1 / self.rows
            m.top5_agreement = self.top5 / self.rows
            if self.labelled:
                m.accuracy_reference = self.correct_ref / self.rows
                m.accuracy_candidate = self.correct_cand / self.rows
                m.accuracy_drop = m.accuracy_reference - m.accuracy_candidate
        if self.atol is not None or self.rtol is not None:
            m.atol, m.rtol = self.atol or 0.0, self.rtol or 0.0
            m.worst_ratio = self.worst_ratio
            m.samples_outside_tolerance = self.outside
        m.worst_samples = sorted(self.scores, key=self._badness)[:worst]
        return m

    def _badness(self, s: SampleScore):
        if self.is_float:
            snr = s.snr_db if s.snr_db is not None and not math.isnan(s.snr_db) else -math.inf
            return (snr, s.index)
        return (-s.max_abs, s.index)


def wants_class_scores(metrics) -> bool:
    """Whether the user's --metric choice asks to treat every float output as class scores."""
    return bool(metrics) and bool(_CLASS_METRICS & set(metrics))
