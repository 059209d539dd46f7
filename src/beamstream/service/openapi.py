"""The request service's OpenAPI document: the routes' own, with a request's ``spec`` described by the stream
spec's JSON Schema (the installed plugins'), the errors any route may answer, and how callers prove who they are."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from beamstream.protocol.models import Problem
from beamstream.spec import spec_json_schema

COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body could not be parsed"},
    401: {"model": Problem, "description": "no identity: no client certificate naming one and no valid bearer token "
                                           "(header WWW-Authenticate: Bearer)"},
    422: {"model": Problem, "description": "a parameter or the body is not valid: one line per problem, "
                                           "LOCATION: what is wrong"},
}
"""Answers any route may give, described once for the whole document."""


def problem_as_json(status: int) -> dict[str, Any]:
    """The OpenAPI answer of a :class:`Problem` as JSON, for a route whose own answers are of another type."""
    described = COMMON_ERRORS.get(status, {}).get("description", "not found")
    return {"description": described,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, made once: a request's ``spec`` described by the stream spec's own JSON
    Schema (its sinks may be left out), and how callers prove who they are: a client certificate (mutual TLS) or a
    bearer token (``POST /v1/tokens``); a service without TLS settings asks for neither."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        spec = spec_json_schema()
        for name, definition in spec.pop("$defs", {}).items():
            schemas[f"Spec.{name}"] = _spec_refs(definition)
        spec["required"] = [name for name in spec.get("required", []) if name != "sinks"]
        schemas["StreamSpec"] = _spec_refs(spec)
        described = schemas["StreamRequest"]["properties"]["spec"].get("description", "")
        schemas["StreamRequest"]["properties"]["spec"] = {"$ref": "#/components/schemas/StreamSpec",
                                                          "description": described}
        document["components"]["securitySchemes"] = {
            "clientCertificate": {"type": "mutualTLS", "description": "a certificate of the facility's CA; its "
                                                                      "subject common name is the identity"},
            "bearerToken": {"type": "http", "scheme": "bearer", "description": "a token from POST /v1/tokens"},
        }
        document["security"] = [{"clientCertificate": []}, {"bearerToken": []}, {}]
        app.openapi_schema = document
    return app.openapi_schema


def _spec_refs(node: Any) -> Any:
    """``node`` (part of the spec's JSON Schema) with its ``#/$defs/NAME`` references made ``Spec.NAME`` components."""
    if isinstance(node, dict):
        return {key: (f"#/components/schemas/Spec.{value.removeprefix('#/$defs/')}" if key == "$ref"
                      and isinstance(value, str) and value.startswith("#/$defs/") else _spec_refs(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_spec_refs(item) for item in node]
    return node
