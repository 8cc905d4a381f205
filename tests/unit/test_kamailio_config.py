"""deploy/kamailio/kamailio.cfg: Kamailio itself accepts it (``kamailio -c``), with
the settings the cluster test and a deployment pass."""

from __future__ import annotations

from pathlib import Path

from loadtest.kamailio import Kamailio, dispatcher_list


def test_kamailio_accepts_the_balancer_config(tmp_path: Path) -> None:
    balancer = Kamailio(tmp_path, [("127.0.0.1", 5070, "node-a"), ("127.0.0.1", 5071, "node-b")])
    output = balancer.check()
    assert f"udp: 127.0.0.1 [127.0.0.1]:{balancer.port}" in output


def test_the_dispatcher_list_names_each_node_once_with_its_call_load_id() -> None:
    text = dispatcher_list([("10.0.0.1", 5060, "a"), ("10.0.0.2", 5062, "b")])
    assert text == "1 sip:10.0.0.1:5060 0 0 duid=a\n1 sip:10.0.0.2:5062 0 0 duid=b\n"
