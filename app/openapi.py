"""The OpenAPI document says what the service returns: its error bodies, not FastAPI's defaults."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

# What app.main's handlers answer for a refused request: a message a person can read, the field it names
# when it names one, and for request validation the itemised errors.
ERROR_BODY: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "title": "Detail", "description": "What is wrong, in words."},
        "field": {"type": "string", "title": "Field", "description": "The field it names, if any."},
        "errors": {
            "type": "array",
            "title": "Errors",
            "description": "Request validation only: one entry per problem.",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def install(app: FastAPI) -> None:
    """Generate the document once, with the 422 body the service really sends."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {**ERROR_BODY, "title": "HTTPValidationError"}
                schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
