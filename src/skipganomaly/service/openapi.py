"""The OpenAPI 3.1 document of the service and the page that shows it (``GET /docs``).

The document's ``paths`` come from the service's table of endpoints (:func:`.endpoints.endpoints`), the
same table the application's routes are built from: an :class:`Endpoint` carries its handler and its
OpenAPI operation together, and one that would be served without an operation is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import __version__

DESCRIPTION = (
    "Anomaly scores of images from a trained Skip-GANomaly model. Scores are scaled so "
    "that normal validation images span 0 to 1; an image is anomalous when its score is at or above "
    'the threshold fixed at training time. Every error is one line of JSON: {"error": "..."}.'
)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the service: where it is, its handler, and its OpenAPI operation (summary,
    description, parameters, request body, responses). ``include_in_schema=False`` serves it without
    describing it (the page's assets); every other endpoint must be described."""

    path: str
    method: str  # "GET", "POST", ...
    handler: str  # the name of a method of routes.Handlers
    operation: dict[str, Any] | None = None
    include_in_schema: bool = True

    def __post_init__(self) -> None:
        if self.method != self.method.upper():
            raise ValueError(f"{self.method} {self.path}: write the method in capitals")
        if self.include_in_schema and not (
            isinstance(self.operation, dict)
            and self.operation.get("summary")
            and self.operation.get("responses")
        ):
            raise ValueError(
                f"{self.method} {self.path} has no OpenAPI operation (a summary and its responses); "
                "describe it, or serve it with include_in_schema=False"
            )
        if not self.include_in_schema and self.operation is not None:
            raise ValueError(f"{self.method} {self.path} is described but left out of the document")


def error_response(text: str) -> dict[str, Any]:
    """An error response of an operation: its description, and the one-line JSON error body."""
    error = {"$ref": "#/components/schemas/Error"}
    return {"description": text, "content": {"application/json": {"schema": error}}}


def openapi_document(endpoints: tuple[Endpoint, ...] | list[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (``GET /openapi.json``): its ``paths`` are the
    operations of ``endpoints`` that are in the schema, in their order."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        if not endpoint.include_in_schema:
            continue
        methods = paths.setdefault(endpoint.path, {})
        if endpoint.method.lower() in methods:
            raise ValueError(f"{endpoint.method} {endpoint.path} is in the table twice")
        methods[endpoint.method.lower()] = endpoint.operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "skipganomaly scoring service", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": _components(),
    }


def _components() -> dict[str, Any]:
    return {
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
                        "description": "the score's terms by name: reconstruction R, latent L, and any other "
                        "term the score sums (knn, rotation, ...); only the export's documented outputs",
                    },
                    "shares": {
                        "type": "object",
                        "additionalProperties": {"type": "number"},
                        "description": "each term's share of the score (|weight * (term - mean) / std| over "
                        "the sum of those; the shares add to 1)",
                    },
                    "leading_term": {"type": "string", "description": "the term with the largest share"},
                    "heatmap_term": {
                        "type": "string",
                        "description": "whose map heatmap_png shows: the leading term's when it has one, else R's",
                    },
                    "out_of_domain": {
                        "type": "boolean",
                        "description": "the image is unlike the training images (a warning; the score and "
                        "the verdict are as computed)",
                    },
                    "domain_reason": {"type": "string", "description": "why it is out of domain"},
                    "error": {
                        "type": "string",
                        "description": "why this image could not be scored (then only filename and error); "
                        "the other images of the request are scored",
                    },
                    "width": {"type": "integer"},
                    "height": {"type": "integer"},
                    "heatmap_png": {"type": "string", "contentEncoding": "base64"},
                    "input_png": {"type": "string", "contentEncoding": "base64"},
                    "reconstruction_png": {"type": "string", "contentEncoding": "base64"},
                },
                "required": ["filename"],
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
    }


def docs_html(spec: dict[str, Any], base_url: str = "http://127.0.0.1:8000") -> str:
    """The OpenAPI description as a plain page (no scripts, nothing loaded from elsewhere); its
    example addresses the service at ``base_url`` (the address the page was asked for)."""
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
        f"curl -s -F images=@part1.png -F images=@part2.jpg '{base_url.rstrip('/')}/v1/score?heatmap=true'"
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
