"""The HTTP API, served by the node on its own event loop (FastAPI + uvicorn).

This milestone: health and readiness. Calls, trunks and campaigns come later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse


class NodeStatus(Protocol):
    def health(self) -> dict[str, Any]: ...

    @property
    def draining(self) -> bool: ...


def create_app(node: NodeStatus) -> FastAPI:
    app = FastAPI(title="voxswitch", version="0.1.0")

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
