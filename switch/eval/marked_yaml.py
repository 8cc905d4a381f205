"""Moved to :mod:`switch.marked_yaml` (agent files use it too); re-exported here."""

from switch.marked_yaml import FieldError, Fields, Value, compose

__all__ = ["FieldError", "Fields", "Value", "compose"]
