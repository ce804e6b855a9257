"""``skipganomaly serve``: an HTTP scoring service and its inspection page, on Starlette and uvicorn.

Endpoints (``GET /openapi.json`` describes them; ``GET /docs`` renders that description):

* ``POST /v1/score``: one or several images as ``multipart/form-data`` in the field ``images``;
  per image ``score``, ``is_anomalous``, ``threshold``, ``raw_score`` and its ``parts``, and with
  ``?heatmap=true`` the anomaly map as a PNG (base64), with ``?reconstruction=true`` the model's
  input and its reconstruction as PNGs.
* ``GET /healthz``: liveness and what has been scored; ``GET /v1/model``: what is loaded.
* ``GET /``: the inspection page (``resources/web/``), every asset served from here.

Why Starlette and not FastAPI: the service has four endpoints whose inputs are files, not JSON
models, so FastAPI's main gift (pydantic validation of JSON bodies) does little here, while it
would add pydantic to a scoring-only install and answer validation errors with multi-line 422
bodies and a documentation page that loads its scripts from a CDN. Starlette gives the same ASGI
server, routing and streaming multipart parser, with errors and documentation fully in our hands.

Bad input never reaches the model: the body is counted as it arrives (413 past
``max_upload_bytes``), an image's pixel count is read from its header before it is decoded (413
past ``max_image_pixels``: decompression bombs), and anything Pillow cannot fully decode is a 400
naming the file. Every error is one line of JSON, ``{"error": "..."}``.

Concurrency: images are decoded in a thread pool, and a batcher gathers the images of all
requests in flight into batches of up to ``max_batch`` for one ONNX Runtime call at a time (which
itself uses every core), so concurrent requests share the model instead of queueing behind one
another; past ``max_queue`` waiting images a request gets 503 with ``Retry-After`` (memory stays
bounded). The service binds to 127.0.0.1 unless another address is asked for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .. import __version__
from ..deploy.detector import Detector
from ..deploy.prediction import Prediction
from ..scoring.heatmaps import colorize

logger = logging.getLogger("skipganomaly.service")

FIELD = "images"  # the multipart field that carries the images
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may send and how much the service holds at once."""

    max_upload_bytes: int = 32 * 2**20  # a whole request body
    max_images: int = 64  # images per request
    max_image_pixels: int = 40_000_000  # width x height of one image, read before decoding
    max_batch: int = 64  # images per model call
    batch_wait_ms: float = 2.0  # how long the batcher waits for more images to join a batch
    max_queue: int = 512  # images decoded and waiting for the model; past it: 503
    decode_threads: int = 2


class ServiceError(Exception):
    """A request the service refuses: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())  # one line
        self.headers = headers or {}


class BodyTooLarge(Exception):
    pass


# --------------------------------------------------------------------------- images in, PNGs out
def decode_upload(
    data: bytes | BinaryIO, filename: str, detector: Detector, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """An uploaded file (bytes, or a binary file object read from its start) as the model's uint8
    input and its own (width, height), or a ServiceError: 413 for too many pixels (checked from
    the header, before decoding), 400 for anything else Pillow cannot fully decode (not an
    image, truncated, corrupt). At most one decoded image per decoding thread is in memory."""
    name = filename or "upload"
    handle = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    handle.seek(0, os.SEEK_END)
    if handle.tell() == 0:
        raise ServiceError(400, f"{name} is empty")
    handle.seek(0)
    try:
        with Image.open(handle) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ServiceError(
                    413,
                    f"{name} is {width}x{height} pixels, over the limit of {max_pixels:,} pixels per image",
                )
            image.load()
            prepared = detector.preprocessing.prepare(image)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise ServiceError(413, f"{name} is too large to decode safely ({exc})") from None
    except MemoryError:
        raise ServiceError(413, f"{name} is too large to decode") from None
    except Exception as exc:  # noqa: BLE001  (any failure to decode is the upload's fault)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if type(exc).__name__ == "UnidentifiedImageError":
            raise ServiceError(
                400, f"{name} is not an image this service can read (PNG, JPEG, BMP, TIFF, ...)"
            ) from None
        raise ServiceError(
            400, f"{name} cannot be decoded ({reason}); it may be truncated or corrupt"
        ) from None
    return prepared, (width, height)


def png_base64(array: np.ndarray) -> str:
    """An (H, W), (H, W, 1) or (H, W, 3) uint8 array as a base64 PNG."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- batching
class Batcher:
    """Gathers prepared images from concurrent requests into batches for the model; one model
    call at a time, on its own thread, so the event loop keeps accepting and decoding."""

    def __init__(self, detector: Detector, limits: ServiceLimits):
        self.detector = detector
        self.limits = limits
        self.queue: asyncio.Queue | None = None
        self.waiting = 0
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skipganomaly-model")
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def score(self, images: list[np.ndarray]) -> list[Prediction]:
        if self.waiting + len(images) > self.limits.max_queue:
            raise ServiceError(
                503,
                f"busy: {self.waiting} images are waiting for the model; retry shortly",
                {"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        futures = []
        self.waiting += len(images)
        for image in images:
            future = loop.create_future()
            futures.append(future)
            self.queue.put_nowait((image, future))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.waiting -= len(images)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000.0
            while len(items) < self.limits.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(image, future) for image, future in items if not future.done()]
            if not live:
                continue
            batch = np.stack([image for image, _ in live])
            try:
                results = await loop.run_in_executor(self.executor, self.detector.score_prepared, batch, True)
            except Exception as exc:  # noqa: BLE001  (a model failure fails these requests, not the service)
                logger.exception("scoring a batch failed")
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)


# --------------------------------------------------------------------------- the application
def openapi_spec(limits: ServiceLimits) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (``GET /openapi.json``)."""
    error = {"$ref": "#/components/schemas/Error"}

    def error_response(text: str) -> dict:
        return {"description": text, "content": {"application/json": {"schema": error}}}

    flag = {"type": "boolean", "default": False}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "skipganomaly scoring service",
            "version": __version__,
            "description": "Anomaly scores of images from a trained Skip-GANomaly model. Scores are scaled so "
            "that normal validation images span 0 to 1; an image is anomalous when its score is at or above "
            'the threshold fixed at training time. Every error is one line of JSON: {"error": "..."}.',
        },
        "paths": {
            "/v1/score": {
                "post": {
                    "summary": "Score one or several images",
                    "description": f"multipart/form-data with the images in the field '{FIELD}' (repeat it for "
                    f"several). Limits: {limits.max_images} images and {limits.max_upload_bytes // 2**20} MiB per "
                    f"request, {limits.max_image_pixels:,} pixels per image.",
                    "parameters": [
                        {
                            "name": "heatmap",
                            "in": "query",
                            "schema": flag,
                            "description": "add each image's anomaly map as a PNG (base64), on the run's fixed colour scale",
                        },
                        {
                            "name": "reconstruction",
                            "in": "query",
                            "schema": flag,
                            "description": "add the model's input and its reconstruction G(x) as PNGs (base64)",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        FIELD: {
                                            "type": "array",
                                            "items": {"type": "string", "format": "binary"},
                                        }
                                    },
                                    "required": [FIELD],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "one result per image, in the order sent",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"}}
                            },
                        },
                        "400": error_response(
                            "not an image, truncated or corrupt, empty, wrong field name, malformed multipart"
                        ),
                        "413": error_response("upload, image count or image pixels over the limits"),
                        "415": error_response("the body is not multipart/form-data"),
                        "503": error_response(
                            "too many images waiting for the model; retry after the Retry-After seconds"
                        ),
                    },
                }
            },
            "/v1/model": {
                "get": {
                    "summary": "What is loaded",
                    "description": "model, image size, channels, preprocessing, normalisation and threshold, protocol, checkpoint, package version, content hash, limits",
                    "responses": {
                        "200": {
                            "description": "model description",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": {
                            "description": "the service is up",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
                            },
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/docs": {
                "get": {
                    "summary": "This description as a page",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
            "/": {
                "get": {
                    "summary": "The inspection page",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string"},
                        "model": {"type": "string"},
                        "uptime_s": {"type": "number"},
                        "images_scored": {"type": "integer"},
                    },
                },
                "ImageResult": {
                    "type": "object",
                    "properties": {
                        "filename": {"type": "string"},
                        "score": {
                            "type": "number",
                            "description": "scaled score; normal validation images span 0 to 1",
                        },
                        "is_anomalous": {"type": "boolean", "description": "score >= threshold"},
                        "threshold": {"type": "number"},
                        "raw_score": {
                            "type": "number",
                            "description": "the model's score before scaling (Eq. 5)",
                        },
                        "parts": {
                            "type": "object",
                            "additionalProperties": {"type": "number"},
                            "description": "the score's terms: reconstruction R, latent L, ...",
                        },
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "heatmap_png": {"type": "string", "contentEncoding": "base64"},
                        "input_png": {"type": "string", "contentEncoding": "base64"},
                        "reconstruction_png": {"type": "string", "contentEncoding": "base64"},
                    },
                    "required": ["filename", "score", "is_anomalous", "threshold", "raw_score", "parts"],
                },
                "ScoreResponse": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "threshold": {"type": "number"},
                        "results": {"type": "array", "items": {"$ref": "#/components/schemas/ImageResult"}},
                        "elapsed_ms": {"type": "number"},
                    },
                    "required": ["model", "threshold", "results"],
                },
            }
        },
    }


def docs_html(spec: dict[str, Any]) -> str:
    """The OpenAPI description as a plain page (no scripts, nothing loaded from elsewhere)."""
    from html import escape

    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = "".join(
                f"<li><code>{escape(p['name'])}</code> ({p['in']}): {escape(p.get('description', ''))}</li>"
                for p in op.get("parameters", [])
            )
            responses = "".join(
                f"<li><code>{code}</code> {escape(r['description'])}</li>"
                for code, r in op["responses"].items()
            )
            rows.append(
                f"<section><h2><span class=m>{method.upper()}</span> <code>{escape(path)}</code></h2>"
                f"<p>{escape(op.get('summary', ''))}. {escape(op.get('description', ''))}</p>"
                + (f"<h3>Parameters</h3><ul>{params}</ul>" if params else "")
                + f"<h3>Responses</h3><ul>{responses}</ul></section>"
            )
    example = (
        "curl -s -F images=@part1.png -F images=@part2.jpg 'http://127.0.0.1:8000/v1/score?heatmap=true'"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>skipganomaly API</title>"
        "<link rel=stylesheet href=/static/app.css></head><body class=docs><main>"
        f"<h1>{escape(spec['info']['title'])} <small>{escape(spec['info']['version'])}</small></h1>"
        f"<p>{escape(spec['info']['description'])}</p><p>Example: <code>{escape(example)}</code></p>"
        f"<p>Machine-readable: <a href=/openapi.json>/openapi.json</a>. Inspection page: <a href=/>/</a>.</p>"
        + "".join(rows)
        + "</main></body></html>"
    )


def _web_file(name: str) -> bytes:
    return resources.files("skipganomaly").joinpath("resources", "web", name).read_bytes()


STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Everything the page uses comes from this service: no other address is contacted.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}


def create_app(detector: Detector, limits: ServiceLimits | None = None):
    """The ASGI application scoring with ``detector``."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    limits = limits or ServiceLimits()
    batcher = Batcher(detector, limits)
    decoder = ThreadPoolExecutor(
        max_workers=max(1, limits.decode_threads), thread_name_prefix="skipganomaly-decode"
    )
    spec = openapi_spec(limits)
    started = time.time()
    web = {name: _web_file(name) for name in ("index.html", *STATIC_FILES)}
    model_name = str(detector.info.get("model", "model"))

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)

    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ServiceError(
                415,
                f"send the images as multipart/form-data in the field '{FIELD}' (got {content_type or 'no content type'})",
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes:
            raise ServiceError(
                413, f"the upload is {int(length):,} bytes, over the limit of {limits.max_upload_bytes:,}"
            )
        want_heatmap = _flag(request, "heatmap")
        want_reconstruction = _flag(request, "reconstruction")
        try:
            form = await request.form(
                max_files=limits.max_images * 4 + 16, max_fields=64, max_part_size=64 * 1024
            )
        except BodyTooLarge:
            raise ServiceError(
                413, f"the upload is over the limit of {limits.max_upload_bytes:,} bytes"
            ) from None
        except (HTTPException, ValueError, KeyError, AssertionError) as exc:
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ServiceError(400, f"malformed multipart body ({detail})") from None
        try:
            uploads = [item for key, item in form.multi_items() if key == FIELD and hasattr(item, "read")]
            if not uploads:
                fields = sorted({key for key, _ in form.multi_items()})
                found = f"fields received: {', '.join(fields)}" if fields else "no fields received"
                raise ServiceError(
                    400, f"no images in the field '{FIELD}' ({found}); send -F {FIELD}=@file.png"
                )
            if len(uploads) > limits.max_images:
                raise ServiceError(
                    413, f"{len(uploads)} images in one request, over the limit of {limits.max_images}"
                )
            loop = asyncio.get_running_loop()
            names = [upload.filename or f"image {i + 1}" for i, upload in enumerate(uploads)]
            # Decoded from the parser's spooled files (on disk past 1 MiB), by the decoding threads.
            decoded = await asyncio.gather(
                *[
                    loop.run_in_executor(
                        decoder, decode_upload, upload.file, name, detector, limits.max_image_pixels
                    )
                    for upload, name in zip(uploads, names, strict=True)
                ],
                return_exceptions=True,
            )
        finally:
            await form.close()
        for outcome in decoded:
            if isinstance(outcome, BaseException):
                raise outcome
        predictions = await batcher.score([array for array, _ in decoded])

        def payload() -> list[dict[str, Any]]:
            out = []
            for name, (array, (width, height)), p in zip(names, decoded, predictions, strict=True):
                item: dict[str, Any] = {
                    "filename": name,
                    "score": p.score,
                    "is_anomalous": p.is_anomalous,
                    "threshold": detector.threshold,
                    "raw_score": p.raw_score,
                    "parts": p.parts,
                    "width": width,
                    "height": height,
                }
                if want_heatmap:
                    item["heatmap_png"] = png_base64(colorize(p.anomaly_map, detector.normalization.map_high))
                if want_reconstruction:
                    item["input_png"] = png_base64(array)
                    item["reconstruction_png"] = png_base64(p.reconstructed)
                out.append(item)
            return out

        results = (
            await loop.run_in_executor(decoder, payload)
            if (want_heatmap or want_reconstruction)
            else payload()
        )
        return JSONResponse(
            {
                "model": model_name,
                "threshold": detector.threshold,
                "results": results,
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
            }
        )

    async def model_info(request: Request) -> Response:
        return JSONResponse(detector.info | {"limits": asdict(limits), "service_version": __version__})

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": model_name,
                "uptime_s": round(time.time() - started, 1),
                "images_scored": batcher.images,
                "batches": batcher.batches,
                "waiting": batcher.waiting,
            }
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_html(spec), headers=SECURITY_HEADERS)

    async def index(request: Request) -> Response:
        return Response(web["index.html"], media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise ServiceError(404, f"no such file: /static/{name}")
        return Response(
            web[name], media_type=STATIC_FILES[name], headers=SECURITY_HEADERS | {"Cache-Control": "no-cache"}
        )

    async def on_service_error(request: Request, exc: ServiceError) -> Response:
        return error(exc.status, exc.message, exc.headers)

    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        messages = {
            404: f"no such endpoint: {request.url.path} (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        return error(
            exc.status_code, messages.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None)
        )

    async def on_bug(request: Request, exc: Exception) -> Response:
        logger.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the service keeps running")

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoder.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        routes=[
            Route("/v1/score", score, methods=["POST"]),
            Route("/v1/model", model_info, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/", index, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
        ],
        exception_handlers={ServiceError: on_service_error, HTTPException: on_http_error, Exception: on_bug},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return BodyLimit(app, limits.max_upload_bytes)


def _flag(request, name: str) -> bool:
    value = request.query_params.get(name, "false").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ServiceError(400, f"query parameter {name}={value!r}: use true or false")


class BodyLimit:
    """ASGI middleware: a request body may not exceed ``max_bytes``, whether or not the client
    declared its length; the application sees :class:`BodyTooLarge` when it reads past it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def __getattr__(self, name: str):  # app.state and friends
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, limited_receive, send)


# --------------------------------------------------------------------------- running it
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


__all__ = ["ServiceLimits", "create_app", "serve", "openapi_spec", "decode_upload", "is_loopback"]
