"""Environment variables set for the length of a block (for the processes started inside it, and
for libraries that read them when they are called)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set each variable of ``values`` (a None value removes it) while the block runs; restore the
    previous values (or absence) afterwards, whatever the block raised."""
    previous = {k: os.environ.get(k) for k in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(previous)


def _apply(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
