"""Fixtures shared by every test folder: voxswitch nodes run as child processes.

``voxswitch_nodes`` (module scope) starts ``voxswitch serve`` on 127.0.0.1 with
free SIP/HTTP ports and an RTP port range of its own, waits for ``GET /health``,
and at the end of the module stops every node it started (SIGTERM, bounded wait,
then SIGKILL). A node whose stderr shows a Python traceback fails the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.node import NodeFactory

# Short drain so stopping a test node never takes long (not part of the CLI contract,
# so passed by environment).
TEST_NODE_ENV = {"VOXSWITCH_DRAIN_GRACE_S": "2"}
STOP_TIMEOUT_S = 15.0


@pytest.fixture(scope="module")
def voxswitch_nodes(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[NodeFactory]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    factory = NodeFactory(tmp_path_factory.mktemp(f"nodes-{module}"), env=TEST_NODE_ENV)
    yield factory
    problems = factory.stop_all(timeout_s=STOP_TIMEOUT_S)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
