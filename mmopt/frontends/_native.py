"""Helpers shared by frontends whose frameworks write from C++ straight to the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Silence file descriptors 1 and 2 for the block.

    TensorFlow, TFLite and torch's TorchScript exporter log from C++ (e.g. ``Torch IR graph at
    exception: ...``), past Python's ``sys.stdout``/``sys.stderr``; mmopt's errors must stay one line.
    If the descriptors cannot be duplicated (no real fds), the block runs unsilenced.
    """
    saved: dict[int, int] = {}
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        for dup in saved.values():
            os.close(dup)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            for fd in saved:
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)
