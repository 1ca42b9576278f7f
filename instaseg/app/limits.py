"""Request size limits, refused before the body is read (413 naming the field ``body``)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instaseg.app.settings import AppSettings


class BodyLimit:
    """Refuse a body over ``max_bytes``: by its Content-Length at once, and by counting when it is chunked."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if _is_upload(scope) else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # The 413 goes out the moment the count passes the limit; the application then sees the client
            # gone, and whatever it makes of that (a parse error, an exception) is not sent.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                refused = True
                await _too_large(send, limit)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise


def _is_upload(scope: Scope) -> bool:
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/") in ("/api/images/upload", "/api/predict")


async def _too_large(send: Send, limit: int) -> None:
    body = b'{"detail":"the request is larger than %d bytes","field":"body"}' % limit
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, settings: AppSettings) -> None:
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, upload_bytes=settings.max_upload_bytes)
