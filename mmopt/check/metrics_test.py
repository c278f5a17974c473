"""Metrics and thresholds on hand-made arrays whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mmopt.check.metrics import OutputAccumulator, snr_db
from mmopt.check.report import CheckReport
from mmopt.check.thresholds import Thresholds, evaluate, parse_value
from mmopt.errors import MmoptError


def _metrics(pairs, **kwargs):
    acc = OutputAccumulator("y", **kwargs)
    for i, (ref, cand, *label) in enumerate(pairs):
        acc.add(i, f"s{i}", np.asarray(ref, np.float32), np.asarray(cand, np.float32),
                label[0] if label else None)
    return acc.result()


def test_snr_and_cosine_of_known_errors():
    assert snr_db(100.0, 1.0) == pytest.approx(20.0)
    assert snr_db(1.0, 0.0) == math.inf and snr_db(0.0, 1.0) == -math.inf
    ref = np.array([3.0, -4.0])
    m = _metrics([(ref, ref * 1.1), (ref, ref)])
    assert m.snr_db == pytest.approx(10 * math.log10(2 * 25 / (0.01 * 25)), abs=1e-4)  # over both
    assert m.snr_db_min == pytest.approx(20.0, abs=1e-4)
    assert m.cosine == pytest.approx(1.0) and m.exact == 0.5
    assert m.max_abs == pytest.approx(0.4) and m.mean_abs == pytest.approx(0.175)
    assert [s.index for s in m.worst_samples] == [0, 1]
    orthogonal = _metrics([([1.0, 0.0], [0.0, 1.0])])
    assert orthogonal.cosine == 0.0


def test_top_k_agreement_and_accuracy():
    ref = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    fifth = [0.1, 0.9, 0.8, 0.7, 0.6, 0.0]  # the reference's class 0 is 5th of 6
    sixth = [0.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    m = _metrics([([ref], [ref], 0), ([ref], [fifth], 0), ([ref], [sixth], 1)])
    assert m.classes == 6
    assert m.top1_agreement == pytest.approx(1 / 3) and m.top5_agreement == pytest.approx(2 / 3)
    assert m.accuracy_reference == pytest.approx(2 / 3)
    assert m.accuracy_candidate == pytest.approx(2 / 3)  # sample 2: candidate says 1, right
    assert m.accuracy_drop == pytest.approx(0.0)
    # a feature map is not class scores unless the user says so
    assert _metrics([(np.ones((1, 4, 3)), np.ones((1, 4, 3)))]).classes is None
    assert _metrics([(np.ones((1, 4, 3)), np.ones((1, 4, 3)))], class_scores=True).classes == 3


def test_nan_fails_every_threshold_and_json_stays_valid():
    m = _metrics([([1.0, 2.0], [np.nan, 2.0])], atol=1.0, rtol=0.0)
    assert math.isnan(m.cosine) and m.snr_db == -math.inf and m.max_abs == math.inf
    checks = evaluate([m], {"y": Thresholds(min_cosine=-1.0, min_snr=-100.0, atol=1.0)},
                      has_labels=False)
    assert [c.passed for c in checks] == [False, False, False]
    report = CheckReport("r", "c", "d", 1, False, {}, [m], checks)
    out = json.loads(report.to_json())["outputs"][0]  # strict JSON: no NaN or Infinity literals
    assert (out["cosine"], out["snr_db"], out["max_abs"]) == ("nan", "-inf", "inf")


def test_integer_outputs_compare_exactly():
    acc = OutputAccumulator("ids")
    acc.add(0, "s0", np.array([1, 2, 3]), np.array([1, 2, 3]))
    acc.add(1, "s1", np.array([1, 2, 3]), np.array([1, 5, 3]))
    m = acc.result()
    assert m.cosine is None and m.classes is None
    assert m.exact == 0.5 and m.max_abs == 3.0
    assert m.worst_samples[0].index == 1
    with pytest.raises(MmoptError, match="--min-cosine: no output"):
        evaluate([m], {"ids": Thresholds(min_cosine=0.9)}, has_labels=False)
    with pytest.raises(MmoptError, match="--max-drop needs --labels"):
        evaluate([m], {"ids": Thresholds(max_drop=0.01)}, has_labels=False)


def test_threshold_values():
    assert parse_value("max_drop", "1.5%", "x") == pytest.approx(0.015)
    assert parse_value("min_top1", 0.9, "x") == 0.9
    assert parse_value("min_snr", "30", "x") == 30.0
    for name, value in [("max_drop", 2), ("min_snr", "30%"), ("atol", -1), ("min_cosine", 1.5),
                        ("min_snr", "abc"), ("min_snr", True)]:
        with pytest.raises(MmoptError):
            parse_value(name, value, "x")
    merged = Thresholds(min_cosine=0.9, min_snr=20).merged(Thresholds(min_snr=30))
    assert merged == Thresholds(min_cosine=0.9, min_snr=30)
    with pytest.raises(MmoptError, match="unknown threshold 'min-cos'"):
        Thresholds.from_mapping({"min-cos": 1}, "x")
