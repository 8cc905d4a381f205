"""Call recordings past the call: where they are written, and their archive in
S3-compatible storage (``archive``). The writer itself is ``media.recording``."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def recording_path(root: str, call_id: str, now: float | None = None) -> str:
    """``root/YYYY-MM-DD/<call-id>-<digest>.wav``: a day's recordings share a folder;
    the name is the Call-ID made safe for a file system, with a digest of the original
    so two Call-IDs never share a file."""
    safe = _UNSAFE_FILE_CHARS.sub("_", call_id)[:80]
    # surrogateescape: a peer's non-UTF-8 byte kept by the parser is its own byte here.
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return str(Path(root) / day / f"{safe}-{digest}.wav")
