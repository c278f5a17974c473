"""patched_environ sets and removes variables for a block and restores them, also on errors."""

from __future__ import annotations

import os

import pytest

from mmopt._environ import patched_environ


def test_values_hold_inside_and_are_restored_after_an_error(monkeypatch):
    monkeypatch.setenv("MMOPT_T_KEPT", "old")
    monkeypatch.setenv("MMOPT_T_GONE", "here")
    monkeypatch.delenv("MMOPT_T_NEW", raising=False)
    with pytest.raises(RuntimeError), patched_environ(
            {"MMOPT_T_KEPT": "new", "MMOPT_T_GONE": None, "MMOPT_T_NEW": "1"}):
        assert os.environ["MMOPT_T_KEPT"] == "new" and os.environ["MMOPT_T_NEW"] == "1"
        assert "MMOPT_T_GONE" not in os.environ
        raise RuntimeError
    assert os.environ["MMOPT_T_KEPT"] == "old" and os.environ["MMOPT_T_GONE"] == "here"
    assert "MMOPT_T_NEW" not in os.environ
