"""Logging set-up shared by the CLI: diagnostics go through ``logging``, never ``print``."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from rich.logging import RichHandler

logger = logging.getLogger("mmopt")


def configure(verbose: int = 0, debug: bool = False) -> None:
    level = logging.DEBUG if (debug or verbose > 1) else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(show_time=False, show_path=debug, markup=False, rich_tracebacks=debug)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logger.setLevel(level)
    if not debug:
        # TVM's ONNX importer and onnx's converters warn freely about benign things (missing
        # optional shape fields, ...). Keep the terminal for mmopt's own messages.
        warnings.filterwarnings("ignore", module=r"tvm\..*")
        warnings.filterwarnings("ignore", module=r"onnx\..*")
        warnings.filterwarnings("ignore", category=UserWarning)


@contextlib.contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Within this block, every warning (or worse) that mmopt logs is also appended, as its message,
    to the list this yields (reports keep them; the log shows them as before)."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
