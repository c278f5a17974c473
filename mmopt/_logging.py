"""Logging set-up shared by the CLI: diagnostics go through ``logging``, never ``print``."""

from __future__ import annotations

import logging
import warnings

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
