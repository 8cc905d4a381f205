"""A node that cannot start says why in one line (no traceback) and exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.node import NodeError, NodeFactory, NodeOptions, NodeProcess


def _one_line_refusal(node: NodeProcess) -> str:
    with pytest.raises(NodeError):
        node.start(timeout_s=20)
    assert node.returncode == 1
    lines = [line for line in node.stderr_text().splitlines() if line.strip()]
    assert "Traceback" not in node.stderr_text()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_second_node_in_the_same_folder_gets_a_one_line_error(
    voxswitch_nodes: NodeFactory,
) -> None:
    first = voxswitch_nodes.start("first", NodeOptions(media_timeout_s=0))
    second = NodeProcess(first.workdir, NodeOptions(media_timeout_s=0), name="second")
    line = _one_line_refusal(second)
    assert line.startswith("voxswitch: spool voxswitch-spool is in use by another process")
    second.stop()
    assert first.health()["status"] == "ok"  # the first one is untouched


def test_a_port_in_use_is_a_one_line_error(voxswitch_nodes: NodeFactory, tmp_path: Path) -> None:
    first = voxswitch_nodes.start("holder", NodeOptions(media_timeout_s=0))
    clash = NodeProcess(tmp_path / "clash", NodeOptions(media_timeout_s=0), name="clash")
    clash.sip_port = first.sip_port
    line = _one_line_refusal(clash)
    assert line.startswith("voxswitch: cannot listen for SIP (UDP) on 127.0.0.1:")
    assert line.endswith("Address already in use (another node on this port?)")
    clash.stop()


def test_an_unreadable_tls_certificate_is_a_one_line_error(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    key.write_text("not a key\n")
    args = ["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)]
    node = NodeProcess(tmp_path / "tls", NodeOptions(media_timeout_s=0, extra_args=args))
    line = _one_line_refusal(node)
    assert line.startswith(f"voxswitch: TLS: cannot load {tmp_path / 'missing.crt'}: "), line
    node.stop()
