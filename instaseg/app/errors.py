"""Every refusal of the API as a 4xx whose body names the field at fault, and nothing written.

The body is always ``{"detail": "<what>", "field": "<where>"}`` (``field`` a dotted path into the
request, such as ``instances.2.polygon``), plus ``current`` on a 409: the record as it is now, so
the client can show it and merge.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from instaseg.core.errors import InstasegError


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, detail: str, *, current: Any = None):
        super().__init__(detail)
        self.status = status
        self.field = field
        self.detail = detail
        self.current = current


def bad_request(field: str, detail: str) -> ApiError:
    return ApiError(422, field, detail)


def not_found(field: str, detail: str = "not found") -> ApiError:
    return ApiError(404, field, detail)


def conflict(field: str, detail: str, current: Any) -> ApiError:
    return ApiError(409, field, detail, current=current)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InstasegError, _instaseg_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


def _body(status: int, field: str | None, detail: str, current: Any = None) -> JSONResponse:
    content: dict[str, Any] = {"detail": detail, "field": field}
    if current is not None:
        content["current"] = current
    return JSONResponse(content, status_code=status)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _body(exc.status, exc.field, exc.detail, exc.current)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    # ("body", "instances", 2, "polygon") -> "instances.2.polygon"; "body" alone is the JSON itself.
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] in ("body", "query", "path", "header"):
        location = location[1:] or [location[0]]
    return _body(422, ".".join(location), str(first.get("msg", "invalid")))


async def _instaseg_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InstasegError)
    return _body(422, exc.record, str(exc))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _body(exc.status_code, None, str(exc.detail))
