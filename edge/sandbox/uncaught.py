"""The SDKs' report of an uncaught exception, carried over the existing log import.

When a handler lets an exception out, the Python and JavaScript SDKs call `log.write(error,
REPORT_MARK + type + NUL + message + NUL + traceback)` and then trap. The host logs the
traceback as one error line and remembers the report on the request's invocation; the sandbox
calls the trap that follows a `function_exception` (edge.errors.FunctionException) instead of a
`trap`. A report counts only when the trap comes right after it: a later call of the
contract's imports (log, config) withdraws it, so a line a function logged earlier (its own
text, or a client's it logs) never turns a later trap into an exception. A function can claim
an exception on purpose by writing the mark and trapping; it could as well raise one, so that
tells nothing it could not.

No new import, so the WIT contract (edge:function@0.1.0) is unchanged: a component built with
an older SDK writes an ordinary traceback and its exceptions stay 500 `trap`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# NUL first: no log line a function writes by accident starts with it.
REPORT_MARK = "\0edge:uncaught-exception\0"
# Identifier-like (Python's `module.Qual<locals>.Name`, JavaScript's `$`): it reaches the
# client in the production answer, so nothing else from the function may.
_TYPE_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$.<>]{0,127}$")
UNNAMED_TYPE = "(unnamed)"
# The whole traceback is one log line; the control plane keeps up to 8192 characters of one.
MAX_REPORT_CHARS = 8000
KEEP_HEAD_CHARS = 2000  # of a longer one: the start (JavaScript's message and innermost frame)
MAX_MESSAGE_CHARS = 1000  # the exception's message, kept for `edge dev`'s answer only


@dataclass(frozen=True)
class Uncaught:
    """What a report says: the exception's type (safe to show clients), its message and the
    traceback (for the function's log and `edge dev` only)."""

    type_name: str
    message: str
    traceback: str


def is_report(message: str) -> bool:
    return message.startswith(REPORT_MARK)


def parse(message: str) -> Uncaught:
    """The report in a log message that `is_report`. Never raises: a malformed one names no
    type the function chose and keeps its text as the traceback."""
    parts = message[len(REPORT_MARK) :].split("\0", 2)
    if len(parts) < 3:
        return Uncaught(UNNAMED_TYPE, "", shorten("\n".join(parts)))
    type_name, text, traceback = parts
    if not _TYPE_RE.match(type_name):
        type_name = UNNAMED_TYPE
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "…(truncated)"
    return Uncaught(type_name, text, shorten(traceback))


def shorten(text: str, limit: int = MAX_REPORT_CHARS, head: int = KEEP_HEAD_CHARS) -> str:
    """`text` if it fits, else its first `head` and last characters around a note of the cut:
    a Python traceback names the exception at its end, a JavaScript stack at its start."""
    if len(text) <= limit:
        return text
    tail = limit - head - 40  # room for the note
    cut = len(text) - head - tail
    return f"{text[:head]}\n…({cut} characters cut)…\n{text[len(text) - tail :]}"
