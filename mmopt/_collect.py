"""Lists that code deep inside a compile appends to, collected around it (a context variable per
kind: the blocks a default schedule could not handle, the path each int8 kernel took)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


@contextlib.contextmanager
def collecting(var: contextvars.ContextVar[list | None]) -> Iterator[list]:
    """A fresh list that ``var`` holds while the block runs (code inside appends to
    ``var.get()`` when it is not None). A collection already open around this one (a caller
    recording around ``mmopt.compile``) receives the same entries when the block ends."""
    outer = var.get()
    found: list = []
    token = var.set(found)
    try:
        yield found
    finally:
        var.reset(token)
        if outer is not None:
            outer.extend(found)
