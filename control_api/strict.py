"""What every API request and answer goes through: JSON numbers must be finite, every
error is JSON (a 500 too), and a header built from a caller's data is encoded.

Python's JSON reader takes ``NaN``, ``Infinity`` and ``1e309`` (an overflow to
infinity); a field's bounds then reject the value, and rendering that rejection (it
quotes the input) failed, a plain-text 500. ``finite_numbers`` runs for every route (an
app-wide dependency, after FastAPI has read the body and before the body is
validated) and answers a 422 naming the field instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from email.message import Message
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_ERRORS = 20  # a body with 10,000 NaNs names the first few


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def spelled(number: float) -> str:
    """How a non-finite number is written in (non-standard) JSON."""
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def non_finite(document: Any) -> Iterator[tuple[tuple[str | int, ...], float]]:
    """Where a decoded JSON document holds NaN or ±Infinity (iterative: no recursion
    limit to hit on a deep document)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float):
            if not math.isfinite(value):
                yield where, value
        elif isinstance(value, dict):
            stack.extend(((*where, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*where, i), v) for i, v in reversed(list(enumerate(value))))


async def finite_numbers(request: Request) -> None:
    """An app-wide dependency: a JSON body with a non-finite number is a 422 naming
    the field (``["body", "ring_timeout_s"]``)."""
    if request.method in ("GET", "HEAD", "OPTIONS") or not _is_json(
        request.headers.get("content-type")
    ):
        return
    try:
        document = await request.json()  # read and decoded already when the route has a body
    except Exception:
        return  # not JSON, or gone: the route's own parsing answers that
    errors = []
    for where, number in non_finite(document):
        msg = "Input should be a finite number"  # pydantic's words for its own check
        errors.append(
            {"type": "finite_number", "loc": ("body", *where), "msg": msg, "input": spelled(number)}
        )
        if len(errors) == MAX_ERRORS:
            break
    if errors:
        raise RequestValidationError(errors)


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float spelled as a string (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return spelled(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


# A 422 quotes the value it refused; never one of these (a password sent by mistake
# in the wrong shape would come back in the answer, and in any log of it).
SECRET_FIELDS = frozenset({"password", "inbound_password", "secret", "api_key", "key", "token"})


def _without_secrets(error: dict[str, Any]) -> dict[str, Any]:
    names = {str(part).lower() for part in error.get("loc", ())}
    if names & SECRET_FIELDS or "password" in str(error.get("loc", "")).lower():
        error = {k: v for k, v in error.items() if k not in ("input", "ctx")}
    return error


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, safe to render whatever input it quotes (never a secret's)."""
    assert isinstance(exc, RequestValidationError)
    errors = [_without_secrets(e) for e in jsonable_encoder(exc.errors())]
    return JSONResponse({"detail": finite_json(errors)}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any unhandled exception: a JSON 500 without internals (the log has the traceback)."""
    return JSONResponse(
        {"detail": "internal server error"}, status_code=500, headers={"Connection": "close"}
    )


def install(app: FastAPI) -> None:
    """The error answers above, on ``app``; add ``finite_numbers`` as an app dependency."""
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(Exception, internal_error)  # Starlette's outermost handler


def attachment(filename: str) -> str:
    """``Content-Disposition`` for a download named ``filename`` (RFC 6266): an ASCII
    fallback in ``filename``, the exact name UTF-8 percent-encoded in ``filename*``
    (RFC 8187), so any name encodes in a Latin-1 header."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    exact = quote(filename, safe="", errors="replace")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"
