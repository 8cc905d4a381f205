"""Trunks in PostgreSQL: shared by the nodes of a cluster; an outage changes nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

from loadtest.node import NodeFactory, NodeOptions
from tests.e2e.api_client import ADMIN, api
from tests.e2e.polling import wait_for
from tests.e2e.tcp_proxy import TcpProxy


def test_a_trunk_made_on_one_node_reaches_the_other_and_survives_a_restart(
    services: dict[str, str], voxswitch_nodes: NodeFactory, tmp_path: Path
) -> None:
    dsn = services["VOXSWITCH_POSTGRES_DSN"]
    port = int(dsn.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = TcpProxy(port).up()
    name = f"shared-{uuid.uuid4().hex[:8]}"

    def options(node: str, via_proxy: bool = False) -> NodeOptions:
        env = {"VOXSWITCH_API_KEY": ADMIN, "VOXSWITCH_AGENT": "none",
               "VOXSWITCH_POSTGRES_DSN": dsn.replace(f":{port}/", f":{proxy.port}/")
               if via_proxy else dsn,
               "VOXSWITCH_TRUNKS_RELOAD_S": "0.5",
               "VOXSWITCH_TRUNKS_FILE": str(tmp_path / f"{node}-trunks.json"),
               "VOXSWITCH_SPOOL_DIR": str(tmp_path / f"{node}-spool")}  # fmt: skip
        return NodeOptions(media_timeout_s=0, env=env)

    a = voxswitch_nodes.start("store-a", options("a", via_proxy=True))
    b = voxswitch_nodes.start("store-b", options("b"))
    try:
        trunk = {"host": "127.0.0.1", "port": 5999, "options_interval_s": 0, "password": "pw"}
        assert api(a, "PUT", f"/v1/trunks/{name}", body=trunk)[0] == 200
        wait_for("the trunk on node b", lambda: api(b, "GET", f"/v1/trunks/{name}")[0] == 200, 10)
        # PostgreSQL unreachable from a: its change is refused (503), nothing changes.
        proxy.down()
        status, body = api(a, "PUT", f"/v1/trunks/{name}", body={**trunk, "port": 6000})
        assert status == 503 and "not saved" in body["detail"]
        assert api(a, "GET", f"/v1/trunks/{name}")[1]["port"] == 5999
        proxy.up()
        # b deletes it; a (its database back) follows.
        assert api(b, "DELETE", f"/v1/trunks/{name}")[0] == 204
        wait_for("the trunk gone on a", lambda: api(a, "GET", f"/v1/trunks/{name}")[0] == 404, 15)
        # Made again on b; a node started later with an empty file loads it.
        assert api(b, "PUT", f"/v1/trunks/{name}", body=trunk)[0] == 200
        c = voxswitch_nodes.start("store-c", options("c"))
        status, shown = api(c, "GET", f"/v1/trunks/{name}")
        assert status == 200 and shown["password"] == "********"
    finally:
        proxy.up()
        api(b, "DELETE", f"/v1/trunks/{name}")
        proxy.down()
