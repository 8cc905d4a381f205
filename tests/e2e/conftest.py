"""End-to-end fixtures: SIPp runs against real ``voxswitch serve`` nodes.

Every test here is marked ``e2e``. A test fails (at teardown) when a node it used
wrote a Python traceback to stderr while it ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from loadtest.baresip import Baresip
from loadtest.node import NodeFactory, NodeProcess
from loadtest.services import ServicesError, services_env
from loadtest.sipp import (
    SippNotFound,
    SippResult,
    SippRunner,
    SippServer,
    run_sipp,
    sipp_binary,
    sipp_version,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def sipp_path() -> str:
    """The SIPp binary; fails (not skips) when missing: CI must run these tests."""
    try:
        path = sipp_binary()
    except SippNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    version = sipp_version()
    if "v3." not in version:
        pytest.fail(f"SIPp 3.x needed, found {version!r} at {path}", pytrace=False)
    return path


@pytest.fixture(autouse=True)
def _no_node_tracebacks(voxswitch_nodes: NodeFactory) -> Iterator[None]:
    """Fail the test whose run made a node write a traceback."""
    offsets = {id(n): len(n.stderr_text()) for n in voxswitch_nodes.nodes}
    yield
    found = []
    for node in voxswitch_nodes.nodes:
        for tb in node.tracebacks(since=offsets.get(id(node), 0)):
            found.append(f"{node.name} ({node.stderr_path}):\n{tb}")
    if found:
        pytest.fail("node wrote a traceback during this test:\n" + "\n\n".join(found), False)


@pytest.fixture
def sipp(sipp_path: str, tmp_path: Path) -> SippRunner:
    """``sipp(node, scenario, **run_sipp_options)``: run SIPp against a node.

    Each run gets its own directory under the test's tmp_path (SIPp's cwd, logs,
    stats); see loadtest/sipp.py for the options.
    """
    runs = 0

    def run(node: NodeProcess, scenario: str | Path, **kwargs: Any) -> SippResult:
        nonlocal runs
        runs += 1
        name = Path(str(scenario)).stem
        workdir = tmp_path / f"sipp-{runs}-{name}"
        return run_sipp(node.sip_address, scenario, workdir=workdir, **kwargs)

    return run


SippServerFactory = Callable[..., SippServer]


@pytest.fixture
def sipp_server(sipp_path: str, tmp_path: Path) -> Iterator[SippServerFactory]:
    """``sipp_server(scenario, calls=1, **options)``: SIPp as a UAS in the background
    (the node dials its ``address``); any still running are stopped at teardown."""
    made: list[SippServer] = []

    def make(scenario: str, **kwargs: Any) -> SippServer:
        workdir = tmp_path / f"sipp-uas-{len(made)}-{Path(scenario).stem}"
        made.append(SippServer(scenario, workdir=workdir, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture(scope="session")
def baresip_path() -> str:
    """The baresip binary; fails (not skips) when missing, like SIPp."""
    path = shutil.which("baresip")
    if not path:
        pytest.fail(
            "baresip not found; install it with deploy/local/install-test-deps.sh",
            pytrace=False,
        )
    return path


PhoneFactory = Callable[..., Baresip]


@pytest.fixture
def phones(baresip_path: str, tmp_path: Path) -> Iterator[PhoneFactory]:
    """``phones(codec="PCMU", microphone=pcm)``: a new baresip phone (the microphone
    plays ``pcm``, 8 kHz int16; default a quiet tone; more keywords go to ``Baresip``:
    TLS, SRTP, auto-answer); every one quits at teardown."""
    made: list[Baresip] = []

    def make(
        codec: str = "PCMU", microphone: npt.NDArray[np.int16] | None = None, **more: Any
    ) -> Baresip:
        workdir = tmp_path / f"baresip-{len(made)}"
        made.append(Baresip(baresip_path, workdir, codec=codec, microphone=microphone, **more))
        return made[-1]

    yield make
    for phone in made:
        phone.quit()


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """Redis, PostgreSQL and Kafka started by the repo's script (idempotent: fast when
    ``make test`` already did it); the ``VOXSWITCH_…`` settings that reach them."""
    try:
        return services_env()
    except ServicesError as exc:
        pytest.fail(str(exc), pytrace=False)
