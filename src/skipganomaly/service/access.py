"""The service's access log: one line per request on the ``skipganomaly.access`` logger, with the
request's id (the client's ``X-Request-ID`` when it sends a short one, else a new one, echoed in
the response's ``X-Request-ID``), method, path, status, latency and, for scoring, how many images
came and how many could not be scored. Never image data, file names or query values."""

from __future__ import annotations

import logging
import re
import time
import uuid

logger = logging.getLogger("skipganomaly.access")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # what a client's id may be to be logged as is


class AccessLog:
    """ASGI middleware writing the access log (see the module docstring)."""

    def __init__(self, app):
        self.app = app

    def __getattr__(self, name: str):  # app.state and friends
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _CLIENT_ID.match(sent) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        status = 500
        logged = False

        def log() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            images = state.get("images")
            logger.info(
                "id=%s %s %s status=%d latency_ms=%.1f%s",
                request_id,
                scope.get("method", "?"),
                scope.get("path", "?"),
                status,
                (time.perf_counter() - t0) * 1000,
                "" if images is None else f" images={images} image_errors={state.get('image_errors', 0)}",
            )

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())],
                }
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                log()  # before the last bytes go out: the line is there when the client has its answer
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log()
