"""What a request may send and how an upload becomes the model's input: the service's limits
(:class:`ServiceLimits`), its refusals (:class:`ServiceError`, one line of JSON with an HTTP status),
the request body counted as it arrives (:class:`BodyLimit`), an uploaded file decoded with its pixel
count checked before decoding (:func:`decode_upload`), and arrays back out as PNGs (:func:`png_base64`)."""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..data.images import BadImageError, check_pixel_values
from ..deploy.detector import Detector
from ..scoring.domain import SourceFacts, source_facts

FIELD = "images"  # the multipart field that carries the images


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
) -> tuple[np.ndarray, tuple[int, int], SourceFacts]:
    """An uploaded file (bytes, or a binary file object read from its start) as the model's uint8
    input, its own (width, height) and its facts for the out-of-domain check, or a ServiceError: 413 for too many pixels (checked from
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
            # The same values rule as files and arrays (data/arrays.py): a float TIFF with NaN is refused.
            check_pixel_values(image, name)
            prepared = detector.preprocessing.prepare(image)
            facts = source_facts(image)
    except ServiceError:
        raise
    except BadImageError as exc:
        raise ServiceError(400, str(exc)) from None
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
    return prepared, (width, height), facts


def png_base64(array: np.ndarray) -> str:
    """An (H, W), (H, W, 1) or (H, W, 3) uint8 array as a base64 PNG."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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
