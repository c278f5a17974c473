"""Helpers shared by frontends whose frameworks write from C++ straight to the terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _std_fds_to(target_fd: int) -> Iterator[bool]:
    """Point file descriptors 1 and 2 at ``target_fd`` for the block, then restore them (Python's
    streams flushed on both sides). Yields False, and redirects nothing, where the descriptors
    cannot be duplicated (no real fds)."""
    saved: dict[int, int] = {}
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
    except (OSError, ValueError, AttributeError):
        for dup in saved.values():
            os.close(dup)
        yield False
        return
    try:
        for fd in saved:
            os.dup2(target_fd, fd)
        yield True
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for fd, dup in saved.items():
            os.dup2(dup, fd)
            os.close(dup)


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Silence file descriptors 1 and 2 for the block.

    TensorFlow, TFLite and torch's TorchScript exporter log from C++ (e.g. ``Torch IR graph at
    exception: ...``), past Python's ``sys.stdout``/``sys.stderr``; mmopt's errors must stay one line.
    If the descriptors cannot be duplicated (no real fds), the block runs unsilenced.
    """
    with open(os.devnull, "w") as devnull, _std_fds_to(devnull.fileno()):
        yield


def release_native_objects(exc: BaseException) -> None:
    """Let go of what a failed TVM call left alive, with its C++ output silenced: the locals of
    the exception's finished frames (the traceback itself stays, for ``--debug``), collected now.

    A Relax ``BlockBuilder`` abandoned mid-function stays alive in those frames; destroyed later (at
    exit, or by another command's garbage collection), it writes ``Warning: BlockBuilder destroyed
    with remaining blocks!`` straight to file descriptor 2, after mmopt's one-line error.
    """
    import gc
    import traceback

    seen: set[int] = set()
    with native_output_silenced():  # clearing a frame may destroy the BlockBuilder at once
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            traceback.clear_frames(exc.__traceback__)
            exc = exc.__cause__ or exc.__context__
        gc.collect()


@contextlib.contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Send file descriptors 1 and 2 to a temporary file for the block; the yielded list then
    holds its text, for the caller to pass on (:func:`replay`) or to log.

    A TVM pass that fails while its C++ ``BlockBuilder`` still has open blocks destroys it while
    unwinding, and the destructor writes ``Warning: BlockBuilder destroyed with remaining
    blocks!`` to file descriptor 2 before the exception reaches Python. If the descriptors cannot
    be duplicated (no real fds), the block runs uncaptured.
    """
    import tempfile

    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        try:
            with _std_fds_to(sink.fileno()):
                yield captured
        finally:
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def replay(captured: list[str]) -> None:
    """Pass output captured by :func:`native_output_captured` on to file descriptor 2, where it
    was going (not ``sys.stderr``, which a caller may have replaced)."""
    data = "".join(captured).encode()
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass
