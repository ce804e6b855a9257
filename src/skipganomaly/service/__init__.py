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

Modules: :mod:`.uploads` (limits, refusals, the body limit, decoding uploads), :mod:`.batching`
(the batcher), :mod:`.endpoints` (the one table of endpoints: path, method, handler, OpenAPI
operation), :mod:`.routes` (the handlers), :mod:`.openapi` (the document built from that table,
and ``/docs``), :mod:`.app` (the application and :func:`serve`).
Importing this package imports no Starlette (the ``serve`` extra) and no PyTorch.
"""

# The names of the service's API, and (with "as") the rest of what the module held before it became
# a package, still importable from here.
from .app import LOOPBACK as LOOPBACK
from .app import create_app, is_loopback, openapi_spec, serve
from .batching import Batcher as Batcher
from .openapi import docs_html as docs_html
from .uploads import FIELD as FIELD
from .uploads import BodyLimit as BodyLimit
from .uploads import BodyTooLarge as BodyTooLarge
from .uploads import ServiceError as ServiceError
from .uploads import ServiceLimits, decode_upload
from .uploads import png_base64 as png_base64

__all__ = ["ServiceLimits", "create_app", "serve", "openapi_spec", "decode_upload", "is_loopback"]
