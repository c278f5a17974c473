"""collecting: a fresh list per block; an enclosing collection receives the inner entries too."""

from __future__ import annotations

import contextvars

from mmopt._collect import collecting

_VAR: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmopt_test_collect",
                                                                  default=None)


def test_nested_collections_and_nothing_outside():
    assert _VAR.get() is None  # nobody collects here
    with collecting(_VAR) as outer:
        _VAR.get().append("a")
        with collecting(_VAR) as inner:
            _VAR.get().append("b")
        assert inner == ["b"] and outer == ["a", "b"]
    assert _VAR.get() is None and outer == ["a", "b"]
