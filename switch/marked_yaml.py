"""YAML read with the line of every value: typed getters whose errors name line and field.

``yaml.safe_load`` forgets where a value stood; a file a person wrote needs the answer
"line 42, ``cases[3].expect.action``". Here the text is *composed* to nodes (each
carries its start mark) and read through :class:`Value`: ``value.mapping(KEYS)`` checks
the keys (unknown keys and duplicates are errors, at the key's line), ``fields.get(key)``
or ``fields.require(key)`` step into a field, and the typed getters (``string``,
``integer``, ``number``, ``boolean``, ``choice``, ``items``) raise :class:`FieldError`
at the value's line. Merge keys (``<<: *anchor``) work as in ``safe_load``.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["FieldError", "Fields", "Value", "compose"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# What PyYAML's constructors raise besides its own errors (``!!timestamp x`` hits a None).
_CONSTRUCT_ERRORS = (ValueError, TypeError, AttributeError, LookupError, OverflowError)


class FieldError(ValueError):
    """A value is missing or wrong: ``line`` (1-based), ``field`` (``cases[3].say``)."""

    def __init__(self, line: int, field: str, problem: str) -> None:
        super().__init__(f"{line}: {field or 'top level'}: {problem}")
        self.line, self.field, self.problem = line, field, problem


def compose(text: str) -> Value:
    """The document in ``text`` as a :class:`Value` (an empty file: null at line 1)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "cannot parse"
        raise FieldError(line, "", f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise FieldError(1, "", f"invalid YAML: {exc}") from None
    if node is None:
        node = ScalarNode("tag:yaml.org,2002:null", "", yaml.Mark("", 0, 0, 0, "", 0))
    return Value(node, "")


def _describe(data: Any) -> str:
    """What a value is, for messages: ``got a list``."""
    if data is None:
        return "nothing (null)"
    if isinstance(data, bool):
        return "true/false"
    if isinstance(data, int | float):
        return f"the number {data!r}"
    if isinstance(data, str):
        return f"the text {data!r}"
    if isinstance(data, list):
        return "a list"
    if isinstance(data, dict):
        return "a mapping"
    return f"a {type(data).__name__}"


@dataclass(frozen=True)
class Value:
    """One YAML value and where it is: ``field`` names it from the top (``a.b[2].c``)."""

    node: Node
    field: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def fail(self, problem: str) -> NoReturn:
        raise FieldError(self.line, self.field, problem)

    def child(self, node: Node, key: str | int) -> Value:
        if isinstance(key, int):
            return Value(node, f"{self.field}[{key}]")
        return Value(node, f"{self.field}.{key}" if self.field else key)

    # what is there

    def data(self) -> Any:
        """The plain Python value (as ``safe_load`` would give it)."""
        try:
            return SafeConstructor().construct_document(self.node)
        except yaml.MarkedYAMLError as exc:
            self.fail(f"invalid YAML: {exc.problem}")
        except _CONSTRUCT_ERRORS as exc:  # an explicit tag on a wrong value: ``!!int text``
            self.fail(f"invalid YAML: {self.node.tag} value {self.node.value!r}: {exc}")

    @property
    def is_null(self) -> bool:
        return isinstance(self.node, ScalarNode) and self.data() is None

    def describe(self) -> str:
        if isinstance(self.node, SequenceNode):
            return "a list"
        if isinstance(self.node, MappingNode):
            return "a mapping"
        return _describe(self.data())

    def expected(self, what: str) -> NoReturn:
        self.fail(f"expected {what}, got {self.describe()}")

    # typed getters

    def string(self) -> str:
        """A non-empty string, stripped (a number or true/false is not a string)."""
        if not isinstance(self.node, ScalarNode) or not isinstance(self.data(), str):
            self.expected("text")
        text = " ".join(str(self.data()).split())
        if not text:
            self.fail("must not be empty")
        return text

    def raw(self) -> str:
        """A scalar as written (``0123`` stays ``0123``, not the octal number 83)."""
        if not isinstance(self.node, ScalarNode) or self.data() is None:
            self.expected("text")
        return str(self.node.value).strip()

    def boolean(self) -> bool:
        data = self.data() if isinstance(self.node, ScalarNode) else None
        if not isinstance(data, bool):
            self.expected("true or false")
        return data

    def integer(self, low: int, high: int | None = None) -> int:
        data = self.data() if isinstance(self.node, ScalarNode) else None
        if isinstance(data, bool) or not isinstance(data, int):
            self.expected("a whole number")
        self._check_range(data, low, high)
        return data

    def number(self, low: float, high: float | None = None, *, above: bool = False) -> float:
        """A number in ``[low, high]`` (``(low, high]`` with ``above``)."""
        data = self.data() if isinstance(self.node, ScalarNode) else None
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.expected("a number")
        if above and data <= low:
            self.fail(f"must be more than {low:g}, got {data:g}")
        self._check_range(data, low, high)
        return float(data)

    def _check_range(self, data: float, low: float, high: float | None) -> None:
        if data < low or (high is not None and data > high):
            span = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            self.fail(f"must be {span}, got {data:g}")

    def choice(self, options: Collection[str]) -> str:
        data = self.data() if isinstance(self.node, ScalarNode) else None
        if not isinstance(data, str) or data not in options:
            got = repr(data) if isinstance(data, str) else self.describe()
            self.fail(f"expected one of {', '.join(options)}, got {got}")
        return data

    def items(self) -> list[Value]:
        """The items of a list (``[]`` is allowed; the caller checks emptiness)."""
        if not isinstance(self.node, SequenceNode):
            self.expected("a list")
        return [self.child(node, i) for i, node in enumerate(self.node.value)]

    def strings(self) -> tuple[str, ...]:
        """A string or a list of strings, as a tuple."""
        if isinstance(self.node, ScalarNode):
            return (self.string(),)
        return tuple(item.string() for item in self.items())

    def mapping(self, allowed: Collection[str]) -> Fields:
        """The fields of a mapping; a key not in ``allowed`` or given twice is an error."""
        if not isinstance(self.node, MappingNode):
            self.expected("a mapping")
        own: dict[str, Node] = {}
        for key_node, _ in self.node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = Value(key_node, "").data()
            where = Value(key_node, self.child(key_node, str(key)).field)
            if not isinstance(key, str):
                where.fail("field names must be text")
            if key in own:
                where.fail(f"given twice (first on line {own[key].start_mark.line + 1})")
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                where.fail(f"unknown field (expected one of {', '.join(sorted(allowed))}){did}")
            own[key] = key_node
        try:
            SafeConstructor().flatten_mapping(self.node)  # resolves <<: merges in place
        except yaml.MarkedYAMLError as exc:
            self.fail(f"invalid merge: {exc.problem}")
        values: dict[str, Value] = {}
        for key_node, value_node in self.node.value:  # merged first, own keys last (win)
            key = Value(key_node, "").data()
            if key not in allowed:
                Value(key_node, self.child(key_node, str(key)).field).fail(
                    "unknown field (from a merge)"
                )
            values[key] = self.child(value_node, key)
        return Fields(self, values)


class Fields:
    """The fields of a mapping :class:`Value`, by name."""

    def __init__(self, owner: Value, values: dict[str, Value]) -> None:
        self.owner, self._values = owner, values

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def get(self, key: str) -> Value | None:
        """The field, or None when it is absent (a null value is returned as given)."""
        return self._values.get(key)

    def given(self, key: str) -> Value | None:
        """The field, or None when it is absent or null."""
        value = self._values.get(key)
        return None if value is None or value.is_null else value

    def require(self, key: str, hint: str = "") -> Value:
        """The field; absent or null is an error at the mapping's line."""
        value = self.given(key)
        if value is None:
            field = f"{self.owner.field}.{key}" if self.owner.field else key
            raise FieldError(self.owner.line, field, f"missing{f' ({hint})' if hint else ''}")
        return value
