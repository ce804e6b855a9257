"""The service's endpoints: their handlers (methods of :class:`Handlers`, which holds what they share:
the detector, the limits, the batcher, the decoding threads, the page's files), named by the table
of endpoints (:mod:`.endpoints`) from which both the application's routes and the OpenAPI
document's ``paths`` are built, and the error handlers.

Starlette is imported here and not by the package: ``skipganomaly.service`` itself imports without
the ``serve`` extra (the command line checks its options, and the detector says what to install,
before any of this is needed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..deploy.detector import Detector
from ..deploy.prediction import Prediction
from ..scoring.heatmaps import colorize
from .batching import Batcher
from .openapi import docs_html
from .uploads import FIELD, BodyTooLarge, ServiceError, ServiceLimits, decode_upload, png_base64

logger = logging.getLogger("skipganomaly.service")


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


class Handlers:
    """The route handlers of one application and the state they share."""

    def __init__(self, detector: Detector, limits: ServiceLimits, spec: dict[str, Any]):
        self.detector = detector
        self.limits = limits
        self.batcher = Batcher(detector, limits)
        self.decoder = ThreadPoolExecutor(
            max_workers=max(1, limits.decode_threads), thread_name_prefix="skipganomaly-decode"
        )
        self.spec = spec
        self.started = time.time()
        self.web = {name: _web_file(name) for name in ("index.html", *STATIC_FILES)}
        self.model_name = str(detector.info.get("model", "model"))
        self.icon = favicon_png()

    @asynccontextmanager
    async def lifespan(self, app):
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()
            self.decoder.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------------- POST /v1/score
    async def score(self, request: Request) -> Response:
        t0 = time.perf_counter()
        self._check_headers(request)
        want_heatmap = _flag(request, "heatmap")
        want_reconstruction = _flag(request, "reconstruction")
        form = await self._read_form(request)
        names, decoded = await self._decode_form(form)
        request.state.images = len(decoded)
        good = [item for item in decoded if not isinstance(item, ServiceError)]
        scored = iter(await self.batcher.score([array for array, _, _ in good]) if good else [])
        predictions = [None if isinstance(item, ServiceError) else next(scored) for item in decoded]
        args = (names, decoded, predictions, want_heatmap, want_reconstruction)
        results = (
            await asyncio.get_running_loop().run_in_executor(self.decoder, self._results, *args)
            if (want_heatmap or want_reconstruction)
            else self._results(*args)
        )
        errors = sum(1 for item in results if "error" in item)
        request.state.image_errors = errors
        if errors:
            logger.warning(
                "%d of %d images could not be scored: %s",
                errors,
                len(results),
                "; ".join(item["error"] for item in results if "error" in item)[:1000],
            )
        return JSONResponse(
            {
                "model": self.model_name,
                "threshold": self.detector.threshold,
                "results": results,
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
            }
        )

    def _check_headers(self, request: Request) -> None:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ServiceError(
                415,
                f"send the images as multipart/form-data in the field '{FIELD}' (got {content_type or 'no content type'})",
            )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_upload_bytes:
            raise ServiceError(
                413,
                f"the upload is {int(length):,} bytes, over the limit of {self.limits.max_upload_bytes:,}",
            )

    async def _read_form(self, request: Request):
        limits = self.limits
        try:
            return await request.form(
                max_files=limits.max_images * 4 + 16, max_fields=64, max_part_size=64 * 1024
            )
        except BodyTooLarge:
            raise ServiceError(
                413, f"the upload is over the limit of {limits.max_upload_bytes:,} bytes"
            ) from None
        except ClientDisconnect:
            # A client hanging up mid-upload is normal traffic, not a fault: one line at INFO,
            # and an answer nobody reads instead of a traceback at ERROR.
            client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            logger.info("%s disconnected during its upload to %s", client, request.url.path)
            raise ServiceError(400, "the client disconnected during the upload") from None
        except (HTTPException, ValueError, KeyError, AssertionError) as exc:
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ServiceError(400, f"malformed multipart body ({detail})") from None

    async def _decode_form(self, form) -> tuple[list[str], list[tuple[np.ndarray, tuple[int, int]]]]:
        """The names of the uploaded images and each one decoded (its model input and its size);
        the form is closed whatever happens."""
        limits = self.limits
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
                        self.decoder, decode_upload, upload.file, name, self.detector, limits.max_image_pixels
                    )
                    for upload, name in zip(uploads, names, strict=True)
                ],
                return_exceptions=True,
            )
        finally:
            await form.close()
        # One bad image is that image's error and the others are scored; a request none of whose
        # images can be scored is refused as a whole (its first image's status and message).
        for outcome in decoded:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ServiceError):
                raise outcome
        if all(isinstance(outcome, ServiceError) for outcome in decoded):
            raise decoded[0]
        return names, decoded

    def _results(
        self,
        names: list[str],
        decoded: list,
        predictions: list[Prediction | None],
        want_heatmap: bool,
        want_reconstruction: bool,
    ) -> list[dict[str, Any]]:
        detector = self.detector
        out = []
        for name, outcome, p in zip(names, decoded, predictions, strict=True):
            if p is None:
                out.append({"filename": name, "error": outcome.message})
                continue
            array, (width, height), facts = outcome
            reason = detector.domain.check(array, facts) if detector.domain is not None else ""
            leading = detector.leading_term(p)
            item: dict[str, Any] = {
                "filename": name,
                "score": p.score,
                "is_anomalous": p.is_anomalous,
                "threshold": detector.threshold,
                "raw_score": p.raw_score,
                "parts": p.parts,
                "shares": p.shares,
                "leading_term": leading,
                "out_of_domain": bool(reason),
                "domain_reason": reason,
                "width": width,
                "height": height,
            }
            if want_heatmap:
                term, heatmap = shown_map(p, leading)
                item["heatmap_term"] = term
                item["heatmap_png"] = png_base64(colorize(heatmap, map_scale(detector, term, heatmap)))
            if want_reconstruction:
                item["input_png"] = png_base64(array)
                item["reconstruction_png"] = png_base64(p.reconstructed)
            out.append(item)
        return out

    # ----------------------------------------------------------------------- the other endpoints
    async def model_info(self, request: Request) -> Response:
        return JSONResponse(
            self.detector.info | {"limits": asdict(self.limits), "service_version": __version__}
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "uptime_s": round(time.time() - self.started, 1),
                "images_scored": self.batcher.images,
                "batches": self.batcher.batches,
                "waiting": self.batcher.waiting,
            }
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.spec)

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(docs_html(self.spec, str(request.base_url)), headers=SECURITY_HEADERS)

    async def favicon(self, request: Request) -> Response:
        return Response(self.icon, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    async def index(self, request: Request) -> Response:
        return Response(
            self.web["index.html"], media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
        )

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise ServiceError(404, f"no such file: /static/{name}")
        return Response(
            self.web[name],
            media_type=STATIC_FILES[name],
            headers=SECURITY_HEADERS | {"Cache-Control": "no-cache"},
        )


def shown_map(p: Prediction, leading: str | None) -> tuple[str, np.ndarray]:
    """The map the heatmap shows: the leading term's own map when it has one, else R's."""
    if leading is not None and leading in p.term_maps:
        return leading, p.term_maps[leading]
    return "reconstruction", p.anomaly_map


def map_scale(detector: Detector, term: str, heatmap: np.ndarray) -> float:
    """The colour scale's top: the run's fixed one for R's map; a term's own map is scaled by its
    largest value (no stored scale for it)."""
    if term == "reconstruction":
        return detector.normalization.map_high
    return 0.5 * float(max(np.max(heatmap), 1e-12))


def favicon_png() -> bytes:
    """A 32 x 32 icon drawn here (the page loads nothing from elsewhere): a heatmap-like square."""
    import io

    from PIL import Image

    ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)
    levels = np.clip(np.add.outer(ramp, ramp) / 2, 0, 1)
    image = colorize(levels, 0.5)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _flag(request, name: str) -> bool:
    value = request.query_params.get(name, "false").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ServiceError(400, f"query parameter {name}={value!r}: use true or false")


# --------------------------------------------------------------------------- errors
def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


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


EXCEPTION_HANDLERS = {ServiceError: on_service_error, HTTPException: on_http_error, Exception: on_bug}
