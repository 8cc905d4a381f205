"""Secrets at rest: read from files (Docker/Kubernetes secrets), sealed when written.

Two jobs, both small:

- ``read_secret_file``: a secret kept in a file (``/run/secrets/x``, a mounted
  Kubernetes Secret), bounded in size, without its final line break — what the
  ``VOXSWITCH_<NAME>_FILE`` settings and a trunk's ``password_file`` read.
- ``SecretBox``: seals a short secret (a trunk's password) with AES-256-GCM so the
  files and tables the node writes never hold it in the clear (as Grafana seals
  data-source passwords with its ``secret_key``). The key is the ``secrets_key``
  setting (the same on every node of a cluster) or, on a node without one, a random
  key the node keeps in a 0600 file beside ``trunks_file``. A sealed value names its
  key (``v1:<key id>:<nonce+ciphertext>``), so a wrong key is a clear message, and a
  box can open with older keys while it seals with the first (rotation).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_SECRET_FILE_BYTES = 64 * 1024
VERSION = "v1"
NONCE_BYTES = 12
# scrypt turns any key text (an operator's passphrase too) into 32 bytes; the salt is
# fixed because every node must derive the same key from the same text. n=2**14 costs
# ~16 MB and ~50 ms once per process, and makes guessing a weak passphrase slow.
SCRYPT_SALT = b"voxswitch secrets v1"
SCRYPT_N = 2**14


class SecretError(ValueError):
    """A secret cannot be read or opened; the message says which and why."""


def read_secret_file(path: str | Path, what: str, max_bytes: int = MAX_SECRET_FILE_BYTES) -> str:
    """The text of a secret file without its trailing line breaks (``echo x > file``
    adds one). ``what`` names the setting in the error."""
    try:
        # O_NONBLOCK: a FIFO named by mistake must not hang the node at its open.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SecretError(f"{what}: {path} is not a regular file")
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise SecretError(f"{what}: {path} is larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise SecretError(f"{what}: {path} is not UTF-8 text") from exc
    if not text:
        raise SecretError(f"{what}: {path} is empty")
    return text


@functools.lru_cache(maxsize=8)  # scrypt is slow on purpose: once per key text
def derive_key(text: str) -> bytes:
    """The 32-byte AES key of a key text (``secrets_key`` or a key file's content)."""
    if not text:
        raise SecretError("secrets_key: empty")
    return hashlib.scrypt(text.encode(), salt=SCRYPT_SALT, n=SCRYPT_N, r=8, p=1, dklen=32)


def key_id(key: bytes) -> str:
    """A short public name of a key: which key sealed a value, without revealing it."""
    return hashlib.sha256(b"voxswitch key id\0" + key).hexdigest()[:8]


def load_key_file(path: Path, create: bool) -> str | None:
    """The key text kept in ``path``; made (random, mode 0600) when missing and
    ``create``; None when missing and not ``create``."""
    if path.exists():
        return read_secret_file(path, "secrets key file", max_bytes=4096)
    if not create:
        return None
    text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    # O_EXCL: two processes racing to make it do not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret_file(path, "secrets key file", max_bytes=4096)
    except OSError as exc:
        raise SecretError(f"secrets key file: cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return text


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(VERSION + ":")


class SecretBox:
    """Seals with the first key, opens with any of them."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretError("a secret box needs a key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.key_id = key_id(keys[0])
        self._sealer = self._keys[self.key_id]

    @classmethod
    def from_texts(cls, *texts: str) -> SecretBox:
        """A box of the key texts given (empty ones skipped, the first seals)."""
        return cls([derive_key(t) for t in dict.fromkeys(t for t in texts if t)])

    def seal(self, secret: str, context: str) -> str:
        """``secret`` sealed; ``context`` (e.g. the trunk and field) is bound to it, so
        a sealed value copied to another trunk or field does not open there."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._sealer.encrypt(nonce, secret.encode(), context.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}:{self.key_id}:{token}"

    def open(self, sealed: str, context: str) -> str:
        version, _, rest = sealed.partition(":")
        kid, _, token = rest.partition(":")
        if version != VERSION or not kid or not token:
            raise SecretError("not a sealed secret (expected v1:<key id>:<data>)")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretError(
                f"sealed with key {kid}, and this node's key is {self.key_id}: set "
                "secrets_key to the key that sealed it"
            )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            opened = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
            return opened.decode()
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SecretError("sealed secret damaged or moved from another field") from exc
