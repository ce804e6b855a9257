"""``skipganomaly serve``: scoring over HTTP, its limits, its errors (4xx, one line of JSON, never a
500 for bad input), concurrent requests batched, the OpenAPI description, the command line."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest
from deploy_helpers import running_service, split_images
from PIL import Image

from skipganomaly.deploy.detector import Detector
from skipganomaly.service import ServiceLimits


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(url: str, body: bytes | None = None, content_type: str | None = None, method: str | None = None):
    """(status, parsed JSON or text, headers) of one request."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, got = error.code, error.read(), error.headers
    text = raw.decode("utf-8", errors="replace")  # binary answers (the icon) as text, for status checks
    return (
        status,
        (json.loads(text) if got.get("content-type", "").startswith("application/json") else text),
        got,
    )


def score(url: str, files, query: str = ""):
    body, content_type = multipart(files)
    return request(f"{url}/v1/score{query}", body, content_type)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few bytes (one compressed row, then EOF):
    whoever decodes it before checking its size allocates the whole image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def detector(digits_onnx):
    return Detector.from_onnx(digits_onnx, threads=2)


@pytest.fixture(scope="module")
def service(detector):
    limits = ServiceLimits(
        max_upload_bytes=200_000, max_images=8, max_image_pixels=1_000_000, batch_wait_ms=20
    )
    with running_service(detector, limits) as url:
        yield url


def test_scores_over_http_equal_the_detector(service, detector, digits_run):
    images, labels = split_images(digits_run)
    picked = [int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 1)[0]), 5]
    files = [("images", f"digit{i}.png", png_bytes(images[i])) for i in picked]
    status, body, headers = score(service, files, "?heatmap=true&reconstruction=true")
    assert status == 200, body
    expected = detector.score([images[i] for i in picked])
    assert [r["filename"] for r in body["results"]] == [f"digit{i}.png" for i in picked]
    for got, want in zip(body["results"], expected, strict=True):
        assert got["score"] == pytest.approx(want.score, rel=1e-5)
        assert got["is_anomalous"] == want.is_anomalous and got["threshold"] == detector.threshold
        assert got["raw_score"] == pytest.approx(want.raw_score, rel=1e-5)
        assert set(got["parts"]) == {"reconstruction", "latent"} and (got["width"], got["height"]) == (16, 16)
        heatmap = Image.open(io.BytesIO(base64.b64decode(got["heatmap_png"])))
        recon = Image.open(io.BytesIO(base64.b64decode(got["reconstruction_png"])))
        assert heatmap.size == recon.size == (16, 16) and heatmap.mode == "RGB" and recon.mode == "L"
    plain_status, plain, _ = score(service, files[:1])
    assert plain_status == 200 and "heatmap_png" not in plain["results"][0]
    assert body["model"] == "skipganomaly" and body["threshold"] == detector.threshold


@pytest.mark.parametrize(
    ("files", "query", "status", "words"),
    [
        ([("images", "notes.png", b"this is text, not an image")], "", 400, "notes.png is not an image"),
        ([("images", "cut.png", None)], "", 400, "truncated"),
        ([("images", "bomb.png", bomb_png(30_000, 30_000))], "", 413, "pixels"),
        ([("images", "big.png", os.urandom(300_000))], "", 413, "limit"),
        ([("file", "a.png", None)], "", 400, "field 'images'"),
        ([("images", "empty.png", b"")], "", 400, "empty"),
        ([("images", f"{i}.png", None) for i in range(9)], "", 413, "9 images"),
        ([("images", "a.png", None)], "?heatmap=perhaps", 400, "heatmap"),
    ],
    ids=[
        "not-an-image",
        "truncated",
        "decompression-bomb",
        "oversized",
        "wrong-field",
        "empty",
        "too-many",
        "bad-flag",
    ],
)
def test_bad_input_gets_one_line_of_json_and_the_service_keeps_serving(
    service, digits_run, files, query, status, words
):
    good = png_bytes(split_images(digits_run)[0][0])
    files = [
        (field, name, good if data is None and name != "cut.png" else data) for field, name, data in files
    ]
    files = [(f, n, good[: len(good) // 2] if n == "cut.png" else d) for f, n, d in files]
    got, body, _ = score(service, files, query)
    assert got == status, body
    assert set(body) == {"error"} and words in body["error"] and "\n" not in body["error"], body
    health_status, health, _ = request(f"{service}/healthz")
    assert health_status == 200 and health["status"] == "ok"


def test_other_refusals_are_json_too(service):
    for url, body, content_type, method, status in [
        (f"{service}/v1/score", b"x=1", "application/x-www-form-urlencoded", "POST", 415),
        (f"{service}/v1/score", None, None, "GET", 405),
        (f"{service}/nowhere", None, None, "GET", 404),
        (f"{service}/v1/score", b"--nope\r\ngarbage", "multipart/form-data; boundary=nope", "POST", 400),
    ]:
        got, payload, _ = request(url, body, content_type, method)
        assert got == status and set(payload) == {"error"}, (url, got, payload)


def test_concurrent_requests_are_batched_and_all_answered(service, digits_run):
    images, _ = split_images(digits_run)
    before = request(f"{service}/healthz")[1]
    outcomes: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        status, body, _ = score(service, [("images", f"{k}.png", png_bytes(images[k]))])
        with lock:
            outcomes.append((status, body["results"][0]["score"] if status == 200 else body))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 16 and all(status == 200 for status, _ in outcomes), outcomes
    after = request(f"{service}/healthz")[1]
    scored, batches = after["images_scored"] - before["images_scored"], after["batches"] - before["batches"]
    assert scored == 16 and batches < 16, (scored, batches)  # images of different requests shared batches


def test_model_openapi_docs_and_page_come_from_the_service_alone(service, detector):
    status, model, _ = request(f"{service}/v1/model")
    assert status == 200 and model["threshold"] == detector.threshold and model["image_size"] == 16
    assert model["protocol"] == "val-split" and len(model["content_sha256"]) == 64
    assert model["limits"]["max_images"] == 8
    status, spec, _ = request(f"{service}/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {
        "/v1/score",
        "/v1/model",
        "/healthz",
        "/openapi.json",
        "/docs",
        "/",
        "/favicon.ico",
    }
    for path, methods in spec["paths"].items():
        for method in methods:
            if path != "/v1/score":
                assert request(f"{service}{path}", method=method.upper())[0] == 200, path
    page_status, page, headers = request(f"{service}/")
    assert page_status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/app.css", "/docs"):
        asset_status, text, _ = request(f"{service}{asset}")
        assert asset_status == 200
        page += text
    # No external address: every script, style, image and link target is the service's own.
    external = re.findall(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|fetch\(\s*["'`]https?:""", page
    )
    assert not external, external


def asgi_get(app, path: str) -> tuple[int, bytes]:
    """(status, body) of one GET sent straight to an ASGI application (no server, no lifespan)."""
    import asyncio

    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def test_every_route_is_documented_and_every_documented_path_is_a_route(detector):
    from starlette.routing import Route

    from skipganomaly.service import create_app, openapi_spec
    from skipganomaly.service.openapi import Endpoint, openapi_document

    def mismatches(routes, spec) -> tuple[set, set]:
        """(routes in the schema that the document lacks, documented operations that are no route)."""
        served = {
            (route.path, method.lower())
            for route in routes
            if route.include_in_schema
            for method in route.methods - {"HEAD"}
        }
        documented = {(path, method) for path, methods in spec["paths"].items() for method in methods}
        return served - documented, documented - served

    limits = ServiceLimits(max_images=7, max_upload_bytes=3 * 2**20, max_image_pixels=1234)
    app = create_app(detector, limits)
    status, body = asgi_get(app, "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec == openapi_spec(limits)
    routes = app.app.routes
    assert mismatches(routes, spec) == (set(), set())
    assert {route.path for route in routes if not route.include_in_schema} == {"/static/{name}"}

    # The check sees a route the document lacks, and a documented path that is no route...
    async def extra(request):
        raise AssertionError

    assert mismatches([*routes, Route("/v1/extra", extra, methods=["POST"])], spec) == (
        {("/v1/extra", "post")},
        set(),
    )
    assert mismatches([r for r in routes if r.path != "/healthz"], spec) == (set(), {("/healthz", "get")})
    # ...and the table the application is built from refuses an endpoint without its operation.
    with pytest.raises(ValueError, match="no OpenAPI operation"):
        Endpoint("/v1/extra", "POST", "extra")
    with pytest.raises(ValueError, match="no OpenAPI operation"):
        Endpoint("/v1/extra", "POST", "extra", {"summary": "Extra"})
    with pytest.raises(ValueError, match="twice"):
        openapi_document([Endpoint("/x", "GET", "extra", {"summary": "X", "responses": {"200": {}}})] * 2)


def test_serve_from_the_command_line_binds_to_loopback_by_default(digits_onnx):
    process = subprocess.Popen(
        [sys.executable, "-m", "skipganomaly", "serve", "--onnx", str(digits_onnx), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "serving skipganomaly" in line and "http://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].split(":", 2)
        base = f"{url[0]}:{url[1]}:{url[2].split(':')[0].split('/')[0]}"
        status, health, _ = request(f"{base}/healthz")
        assert status == 200 and health["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "skipganomaly", "serve", "--onnx", "missing.onnx"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing.onnx" in bad.stderr


def test_one_truncated_image_of_eight_is_its_own_error_and_logged(service, detector, digits_run, caplog):
    """8 images, one truncated: 7 scores equal to the detector's and 1 error on that item; the access
    log has the request's id, status, latency and image count (and no image data)."""
    import logging

    images = split_images(digits_run)[0][:8]
    files = [("images", f"{i}.png", png_bytes(image)) for i, image in enumerate(images)]
    files[5] = ("images", "cut.png", files[5][2][: len(files[5][2]) // 2])
    with caplog.at_level(logging.INFO, logger="skipganomaly.access"):
        status, body, headers = score(service, files)
    assert status == 200, body
    results = body["results"]
    assert [("error" in r) for r in results] == [i == 5 for i in range(8)]
    assert set(results[5]) == {"filename", "error"} and "cut.png" in results[5]["error"]
    expected = detector.score([images[i] for i in range(8) if i != 5], with_maps=False)
    got = [r["score"] for r in results if "score" in r]
    assert got == pytest.approx([p.score for p in expected], abs=1e-6)
    assert all(set(r["shares"]) == {"reconstruction", "latent"} for r in results if "score" in r)
    request_id = headers["x-request-id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "skipganomaly.access"]
    line = next(line for line in lines if request_id in line)
    assert "POST /v1/score status=200" in line and "images=8 image_errors=1" in line and "latency_ms=" in line
    assert "cut.png" not in line


def test_favicon_and_the_docs_example_use_this_service(service):
    with urllib.request.urlopen(f"{service}/favicon.ico", timeout=30) as response:
        assert response.status == 200 and response.read(8) == b"\x89PNG\r\n\x1a\n"
    status, page, _ = request(f"{service}/docs")
    assert status == 200 and f"{service}/v1/score" in page
