"""The HTTP API, served by the node on its own event loop (FastAPI + uvicorn).

This milestone: health, readiness and Prometheus metrics. Calls, trunks and campaigns
come later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from control_api.metrics import CONTENT_TYPE, NodeMetrics


class NodeStatus(Protocol):
    def health(self) -> dict[str, Any]: ...

    @property
    def draining(self) -> bool: ...


def create_app(node: NodeStatus, metrics: NodeMetrics | None = None) -> FastAPI:
    app = FastAPI(title="voxswitch", version="0.1.0")

    if metrics is not None:

        @app.get("/metrics")
        def prometheus() -> Response:
            """The node's counters, gauges and histograms in Prometheus' text format."""
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health")
    def health() -> JSONResponse:
        """200 while the node takes calls; 503 while it drains (so a balancer moves on)."""
        body = node.health()
        return JSONResponse(body, status_code=503 if node.draining else 200)

    return app


class EmbeddedServer(uvicorn.Server):
    """uvicorn on the node's loop; the node, not uvicorn, owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: FastAPI, host: str, port: int) -> EmbeddedServer:
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
    )
    return EmbeddedServer(config)
