"""Errors of ``voxswitch eval`` that end a run (a suite's own are ``SuiteError``)."""

from __future__ import annotations


class EvalError(RuntimeError):
    """The run cannot go on: its node did not start, a route could not be set..."""
