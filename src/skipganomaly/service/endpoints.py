"""The service's one table of endpoints: each endpoint's path, method, handler (by name: a method
of :class:`.routes.Handlers`) and OpenAPI operation side by side. :func:`.app.create_app` builds the
routes from it and :func:`.openapi.openapi_document` the document's ``paths``, so a route cannot be
served undescribed. No Starlette is imported here: the document needs none."""

from __future__ import annotations

from typing import Any

from .openapi import Endpoint, error_response
from .uploads import FIELD, ServiceLimits


def endpoints(limits: ServiceLimits) -> tuple[Endpoint, ...]:
    """Every endpoint of the service, in the order of the document: path, method, handler (the name of
    a method of :class:`.routes.Handlers`) and OpenAPI operation. The routes and the document's ``paths`` are both
    built from this table."""
    return (
        Endpoint("/v1/score", "POST", "score", _score_operation(limits)),
        Endpoint(
            "/v1/model",
            "GET",
            "model_info",
            {
                "summary": "What is loaded",
                "description": "model, image size, channels, preprocessing, normalisation and threshold, protocol, checkpoint, package version, content hash, limits",
                "responses": {
                    "200": {
                        "description": "model description",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        ),
        Endpoint(
            "/healthz",
            "GET",
            "healthz",
            {
                "summary": "Liveness",
                "responses": {
                    "200": {
                        "description": "the service is up",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    }
                },
            },
        ),
        Endpoint(
            "/openapi.json",
            "GET",
            "openapi",
            {
                "summary": "This description",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        ),
        Endpoint(
            "/docs",
            "GET",
            "docs",
            {
                "summary": "This description as a page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            },
        ),
        Endpoint(
            "/",
            "GET",
            "index",
            {
                "summary": "The inspection page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            },
        ),
        Endpoint(
            "/favicon.ico",
            "GET",
            "favicon",
            {
                "summary": "The page's icon",
                "responses": {"200": {"description": "PNG", "content": {"image/png": {}}}},
            },
        ),
        # The page's script and style sheet: served, not described.
        Endpoint("/static/{name}", "GET", "static", include_in_schema=False),
    )


def _score_operation(limits: ServiceLimits) -> dict[str, Any]:
    flag = {"type": "boolean", "default": False}
    return {
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
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"}}},
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
