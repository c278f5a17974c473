"""What the default schedules could not do: blocks left as generated, and kernels scheduled in a
degraded form (a symbolic shape, a failed instruction schedule), collected while a module is
compiled (:func:`record_fallbacks`) for the compile report and the artifact's JSON.
"""

from __future__ import annotations

import contextvars
import logging

from mmopt._collect import collecting

logger = logging.getLogger(__name__)


#: where :func:`_try` reports blocks left as generated (see :func:`record_fallbacks`)
_FALLBACKS: contextvars.ContextVar[list | None] = contextvars.ContextVar("mmopt_fallbacks",
                                                                          default=None)


def record_fallbacks():
    """Collect, while the block runs, every block a default schedule could not handle: a list of
    ``{"block", "schedule", "reason"}``. Such a block runs as generated (correct, but a plain
    loop nest: not parallel, not vectorized), which a compile report must say."""
    return collecting(_FALLBACKS)


def note_skip(block: str, schedule: str, reason: str, kind: str = "skipped") -> None:
    """Record that ``schedule`` was not used on ``block`` (or used in a degraded form) for
    ``reason``: a symbolic shape (Winograd, a tile with a predicated tail), reported with the
    fallbacks."""
    logger.debug("%s on %s: %s", schedule, block, reason)
    found = _FALLBACKS.get()
    if found is not None:
        entry = {"block": block, "schedule": schedule, "reason": reason, "kind": kind}
        if entry not in found:
            found.append(entry)


def exception_reason(exc: BaseException) -> str:
    """The last non-empty line of an exception's message (TVM's end with the error itself), else
    its type's name."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def note_fallback(block: str, schedule: str, exc: BaseException) -> None:
    reason = exception_reason(exc)
    logger.debug("schedule %s on %s failed: %s", schedule, block, reason)
    found = _FALLBACKS.get()
    if found is not None:
        found.append({"block": block, "schedule": schedule, "reason": reason[:200]})
