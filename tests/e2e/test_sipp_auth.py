"""Digest authentication against SIPp's own digest client (RFC 3261 §22.2).

SIPp 3.6 answers MD5 challenges only, so this node offers MD5; SHA-256 is covered
by the unit tests against the RFC 7616 vectors.
"""

from __future__ import annotations

import pytest

from loadtest.node import NodeFactory, NodeOptions, NodeProcess
from loadtest.sipp import SippRunner

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "wonder land"


@pytest.fixture(scope="module")
def auth_node(voxswitch_nodes: NodeFactory) -> NodeProcess:
    env = {
        "VOXSWITCH_SIP_AUTH_REALM": "voxswitch.test",
        "VOXSWITCH_SIP_AUTH_USERS": f"{USER}:{PASSWORD},bob:other",
        "VOXSWITCH_SIP_AUTH_ALGORITHMS": "MD5",
    }
    return voxswitch_nodes.start("auth", NodeOptions(media_timeout_s=0, env=env))


def test_challenged_call_with_right_password_is_answered(
    auth_node: NodeProcess, sipp: SippRunner
) -> None:
    calls = 20
    result = sipp(
        auth_node,
        "auth_call.xml",
        calls=calls,
        rate=20,
        timeout_s=30,
        extra_args=["-au", USER, "-ap", PASSWORD],
    )
    assert result.returncode == 0, result.describe()
    assert result.successful_calls == calls, result.describe()
    assert result.count("1_401_Recv") == calls, result.describe()
    assert result.count("6_200_Recv") == calls, result.describe()


def test_wrong_password_is_challenged_again_not_answered(
    auth_node: NodeProcess, sipp: SippRunner
) -> None:
    result = sipp(
        auth_node,
        "auth_call.xml",
        calls=2,
        rate=10,
        timeout_s=20,
        extra_args=["-au", USER, "-ap", "not the password"],
    )
    assert result.returncode != 0, result.describe()
    assert result.successful_calls == 0, result.describe()
    assert result.count("1_401_Recv") == 2, result.describe()
    assert result.count("6_200_Recv") == 0, result.describe()


def test_unauthenticated_invite_is_never_answered(
    auth_node: NodeProcess, sipp: SippRunner
) -> None:
    result = sipp(auth_node, "uac", calls=3, rate=10, timeout_s=20)
    assert result.successful_calls == 0, result.describe()
    assert result.failed_calls == 3, result.describe()
    assert result.count("4_200_Recv") == 0, result.describe()
