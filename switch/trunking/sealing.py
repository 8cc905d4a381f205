"""A trunk's passwords: where they come from, and how they are written down.

A password is given one of three ways:

- ``password_env: NAME``: the node's environment variable NAME (a Kubernetes
  ``secretKeyRef``, a compose ``environment:``); read when the trunk is loaded;
- ``password_file: /run/secrets/x``: a file on the node (a mounted secret), likewise;
- ``password: "..."`` in the clear through the API.

Only the first two are written as given (the reference, never the value). A clear
password is *sealed* (``switch/secret_box.py``) before it reaches ``trunks_file``
or PostgreSQL: ``password_sealed: "v1:<key id>:..."``. A file from before sealing
(clear ``password``) still loads, with a warning, and is sealed on its next save.
The same holds for ``inbound_password``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switch.secret_box import SecretBox, SecretError, load_key_file, read_secret_file

log = logging.getLogger("voxswitch.trunks")

SECRET_FIELDS = ("password", "inbound_password")
MASK = "********"  # how the API shows a password; sent back, it means "keep it"
MAX_PASSWORD_CHARS = 128
ENV_NAME = r"^$|^[A-Za-z_][A-Za-z0-9_]{0,127}$"
PROBLEMS = "trunk_secret_problems"  # validation context key: report, do not refuse


def check_reference(field: str, value: str, data: dict[str, Any], context: Any) -> str:
    """A ``*_env``/``*_file`` field (the Trunk model's field validator: an error names
    the field and quotes only the name or path, never a password). Refuses one given
    with the clear password or with the other reference, and, from the API, one that
    cannot be read now."""
    if not value:
        return value
    name = field.removesuffix("_env").removesuffix("_file")
    if field.endswith("_file") and data.get(name + "_env"):
        raise ValueError(f"give {name}_env or {name}_file, not both")
    if data.get(name) not in (None, "", MASK):
        raise ValueError(f"give {name} in the clear or by {field}, not both")
    if not _lenient(context):
        env, path = (value, "") if field.endswith("_env") else ("", value)
        try:
            _read_reference(name, env, path)
        except SecretError as exc:
            raise ValueError(str(exc)) from None
    return value


def resolve_references(trunk: Any, context: Any) -> None:
    """Fill ``password``/``inbound_password`` from ``*_env``/``*_file`` (the Trunk
    model's validator, after ``check_reference``). Loading a file or a table
    (``context[PROBLEMS]``), a reference that cannot be read is a problem noted there,
    and the trunk goes on without that password."""
    for name in SECRET_FIELDS:
        env, path = getattr(trunk, name + "_env"), getattr(trunk, name + "_file")
        if not env and not path:
            continue
        try:
            value = _read_reference(name, env, path)
        except SecretError as exc:
            if not _lenient(context):  # it was readable a moment ago, in check_reference
                raise ValueError(str(exc)) from None
            context[PROBLEMS].append(f"trunk {trunk.name!r}: {exc}; it has no {name} until fixed")
            value = ""
        setattr(trunk, name, value)


def _lenient(context: Any) -> bool:
    return isinstance(context, dict) and isinstance(context.get(PROBLEMS), list)


def _read_reference(name: str, env: str, path: str) -> str:
    if env:
        if _is_node_setting(env):
            raise SecretError(f"{name}_env: {env} is one of the node's own settings")
        value = os.environ.get(env, "")
        if not value:
            raise SecretError(f"{name}_env: {env} is not set on this node")
    else:
        value = read_secret_file(path, f"{name}_file", max_bytes=4096)
    if len(value) > MAX_PASSWORD_CHARS:
        raise SecretError(f"{name}: longer than {MAX_PASSWORD_CHARS} characters")
    return value


def _is_node_setting(env: str) -> bool:
    """``VOXSWITCH_API_KEY`` and the like are the node's secrets: a trunk (an admin
    with the API) must not be able to send them to a carrier it names."""
    from switch.config import ENV_PREFIX, settings_fields  # lazy: only for names like ours

    if not env.upper().startswith(ENV_PREFIX):
        return False
    rest = env.upper()[len(ENV_PREFIX) :].lower()
    names = {f.name for f in settings_fields()}
    return rest in names or rest.removesuffix("_file") in names


def _context(trunk: str, name: str) -> str:
    return f"voxswitch trunk {trunk} {name}"


@dataclass
class TrunkKeys:
    """The keys trunk passwords are sealed with.

    ``secrets_key`` (a setting) seals both the file and PostgreSQL: it is the same on
    every node. Without it the node makes its own key in ``key_file`` (0600, beside
    ``trunks_file``) for its file, and PostgreSQL, which other nodes read, gets the
    password in the clear (with a warning; ``voxswitch doctor`` flags it).
    """

    secrets_key: str = ""
    key_file: Path | None = None
    _file_box: SecretBox | None = field(default=None, repr=False)
    _shared_box: SecretBox | None = field(default=None, repr=False)
    _warned_clear_store: bool = False

    @classmethod
    def beside(cls, trunks_file: Path | None, secrets_key: str = "") -> TrunkKeys:
        return cls(secrets_key, trunks_file.with_suffix(".key") if trunks_file else None)

    def file_box(self, create: bool) -> SecretBox | None:
        """Seals the local file and opens anything (both keys when both exist)."""
        if self._file_box is None:
            local = None
            if self.key_file is not None:  # made only when there is no secrets_key to use
                local = load_key_file(self.key_file, create=create and not self.secrets_key)
            if self.secrets_key or local:
                self._file_box = SecretBox.from_texts(self.secrets_key, local or "")
        return self._file_box

    def shared_box(self) -> SecretBox | None:
        """Seals what goes to PostgreSQL: only a key every node has."""
        if self._shared_box is None and self.secrets_key:
            self._shared_box = SecretBox.from_texts(self.secrets_key)
        return self._shared_box

    def sealed(self, trunk: dict[str, Any], box: SecretBox | None) -> dict[str, Any]:
        """A trunk's ``model_dump()`` as it is written: references kept, values dropped,
        clear passwords sealed (left clear only without a box: PostgreSQL, no key)."""
        data = dict(trunk)
        for name in SECRET_FIELDS:
            value = data.pop(name, "")
            if data.get(name + "_env") or data.get(name + "_file") or not value:
                continue
            if box is not None:
                data[name + "_sealed"] = box.seal(value, _context(data["name"], name))
                continue
            if not self._warned_clear_store:
                self._warned_clear_store = True
                log.warning("trunk passwords go to PostgreSQL in the clear: set secrets_key "
                            "(the same on every node) to seal them")  # fmt: skip
            data[name] = value
        return data

    def opened(self, stored: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any], int]:
        """A stored trunk with its sealed passwords opened (for ``Trunk(**...)``), and
        how many passwords it held in the clear. A password that does not open is a
        problem noted, and the trunk goes on without it."""
        data = dict(stored)
        clear = 0
        for name in SECRET_FIELDS:
            sealed = data.pop(name + "_sealed", None)
            if sealed is None:
                referenced = data.get(name + "_env") or data.get(name + "_file")
                if data.get(name) and not referenced:
                    clear += 1
                continue
            try:
                box = self.file_box(create=False)
                if box is None:
                    raise SecretError("no secrets_key and no key file to open it with")
                if not isinstance(sealed, str):
                    raise SecretError("not a sealed secret")
                data[name] = box.open(sealed, _context(str(data.get("name")), name))
            except SecretError as exc:
                problems.append(f"trunk {data.get('name')!r}: {name} not opened: {exc}")
                data[name] = ""
        return data, clear
