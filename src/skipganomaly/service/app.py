"""The application assembled from the table of endpoints (its routes and its OpenAPI document both
come from :func:`.endpoints.endpoints`), and running it: :func:`serve` on uvicorn, bound to 127.0.0.1
unless another address is asked for."""

from __future__ import annotations

from typing import Any

from ..deploy.detector import Detector
from .access import AccessLog
from .endpoints import endpoints
from .openapi import openapi_document
from .uploads import BodyLimit, ServiceLimits

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def openapi_spec(limits: ServiceLimits) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (``GET /openapi.json``)."""
    return openapi_document(endpoints(limits))


def create_app(detector: Detector, limits: ServiceLimits | None = None):
    """The ASGI application scoring with ``detector``."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from .routes import EXCEPTION_HANDLERS, Handlers

    limits = limits or ServiceLimits()
    table = endpoints(limits)
    handlers = Handlers(detector, limits, openapi_document(table))
    app = Starlette(
        routes=[
            Route(
                endpoint.path,
                getattr(handlers, endpoint.handler),
                methods=[endpoint.method],
                include_in_schema=endpoint.include_in_schema,
            )
            for endpoint in table
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=handlers.lifespan,
    )
    app.state.batcher = handlers.batcher
    return AccessLog(BodyLimit(app, limits.max_upload_bytes))


# --------------------------------------------------------------------------- running it
def _show_access_log(log_level: str) -> None:
    """The access log (and the service's warnings) on stderr, one line each, unless the log level
    is above info or the embedding application has configured these loggers itself."""
    import logging

    for name in ("skipganomaly.access", "skipganomaly.service"):
        log = logging.getLogger(name)
        if log.handlers:
            continue
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO if log_level in ("debug", "trace", "info") else logging.WARNING)
        log.propagate = False


def serve(
    detector: Detector,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServiceLimits | None = None,
    log_level: str = "info",
    ready=None,
) -> None:
    """Run the service until interrupted. ``port=0`` takes a free port; ``ready(url)`` is called
    once it listens."""
    import socket

    import uvicorn

    app = create_app(detector, limits)
    _show_access_log(log_level)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    # they are TCP; with it on, a response sent in two writes waits for the client's delayed ACK
    # (about 40 ms a request, measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from ..specs.errors import UserError

        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host"
        ) from None
    sock.listen(2048)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=5,
        limit_concurrency=256,  # connections; more get 503 from uvicorn
        server_header=False,
    )
    server = uvicorn.Server(config)
    if ready is not None:
        ready(f"http://{shown}:{actual}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")
