"""Errors that reach the user as one clear line.

Every error a user can cause (bad file, bad option, unsupported model, missing tool) is raised as an
:class:`MmoptError`. The CLI prints ``mmopt: error: <message>`` on stderr and exits with
``exit_code``; library users catch it like any exception.
"""

from __future__ import annotations


class MmoptError(Exception):
    """A user-facing error: the message names the file, node or option and says what to do.

    The message is kept to one printable line: names quoted in it come from model files, and a
    newline or terminal escape in a damaged one is shown escaped (``\\n``, ``\\x1b``)."""

    exit_code = 2

    def __init__(self, message: str):
        message = one_line(message)
        super().__init__(message)
        self.message = message


class ModelLoadError(MmoptError):
    """The model file is missing, unreadable, or not a valid model."""


class UnsupportedModelError(MmoptError):
    """The model uses operators or features that a stage cannot handle."""


class TargetError(MmoptError):
    """Unknown target, or a toolchain the target needs is missing."""


class VerificationError(MmoptError):
    """Compiled outputs disagree with the reference beyond tolerance."""

    exit_code = 1


def one_line(text: str) -> str:
    """``text`` with newlines and other unprintable characters escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def summarize(exc: BaseException) -> str:
    """One line from a third-party exception: the last non-empty line (where C++ errors put the cause).

    A TVM pass that fails on the module puts its cause first instead, then ``Error in pass: X`` and
    a dump of the module (ending ``(... 20 lines skipped ...)``): then the cause and the pass."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines[1:]:
        if line.startswith("Error in pass:"):
            return f"{lines[0]} ({line[len('Error in pass:'):].strip()} pass)"
    return lines[-1] if lines else type(exc).__name__
