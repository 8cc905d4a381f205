"""Inbound routes' dialed-number patterns, matched in time linear in the number.

A route's ``pattern`` is a regular expression, and anyone who can make a call picks
the number it is matched against. Python's ``re`` backtracks: ``(\\d+)+#`` against 24
digits stalled the event loop 0.6 s, doubling per digit. RE2 (Google's engine, the
``google-re2`` wheel) runs an automaton instead: time linear in the input whatever
the pattern, memory bounded per pattern. It takes Python's syntax except what needs
backtracking (backreferences, look-around), which is refused when the route is
given, so every route that is stored can be matched safely. Its ``\\d`` is ASCII
digits only (Python's also takes other scripts' digits): right for phone numbers.
"""

from __future__ import annotations

import functools
from typing import Any

import re2  # type: ignore[import-untyped]

MAX_PROGRAM_BYTES = 1 << 20  # what one compiled pattern may take (its compile ~5 ms worst)
CACHED_PATTERNS = 1024


class PatternError(ValueError):
    """Not a pattern RE2 takes; the message says why."""


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False  # the refusal is the API's 422, not a line on stderr
    return options


_OPTIONS = _options()


@functools.lru_cache(maxsize=CACHED_PATTERNS)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern (cached: a route's is compiled once, not per call)."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry one)
        raise PatternError("not a pattern this node takes: not valid UTF-8") from None
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(f"not a pattern this node takes: {reason}") from None


def fullmatch(pattern: str, number: str) -> bool:
    """Does all of ``number`` match ``pattern`` (in time linear in ``number``)?
    A number that is not valid UTF-8 (a mangled SIP header) matches nothing."""
    try:
        return compile_pattern(pattern).fullmatch(number) is not None
    except UnicodeEncodeError:
        return False
