"""The backing services (Redis, PostgreSQL, Kafka) for tests and benchmarks.

``services_env()`` runs ``deploy/local/services.sh up`` (idempotent: about a second
when they already run) and returns the ``VOXSWITCH_…`` settings its ``env`` prints.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "local" / "services.sh"


class ServicesError(RuntimeError):
    pass


def services_env(timeout_s: float = 900.0) -> dict[str, str]:
    up = subprocess.run(
        [str(SCRIPT), "up"], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if up.returncode:
        raise ServicesError(f"{SCRIPT.name} up failed:\n{up.stderr[-3000:]}")
    out = subprocess.run(
        [str(SCRIPT), "env"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        found[name.strip()] = value.strip().strip("'\"")
    return found
