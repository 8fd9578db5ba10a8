"""The OpenAPI document (``/openapi.json``, shown at ``/docs``): the parts routes share,
and the app class that publishes it.

Each route declares the answers it gives besides its success: its error statuses with
the body its API answers them with (``errors.error_responses``), and when it reads its
body raw, the body it takes (:func:`json_body` over ``bodies.py``'s models). An app
adds, for all of its routes, the refusals its API-key middleware answers
(:func:`key_refusals`). ``tests/fuzz/test_openapi.py`` holds the server to the document.

FastAPI lists a 422 "validation error" for every route with a parameter. These apps
answer a parameter they cannot read with 400 (``app.py``), and the compat APIs that do
answer 422 declare it with their own body, so :class:`DocumentedApp` drops FastAPI's.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from modelport.api.http.bodies import BODY_MODELS
from modelport.api.http.errors import ERROR_SCHEMA, error_responses

Responses = dict[int | str, dict[str, Any]]

SCHEMAS = "#/components/schemas/"
_FRAMEWORK_422 = {"$ref": SCHEMAS + "HTTPValidationError"}
_FRAMEWORK_SCHEMAS = ("HTTPValidationError", "ValidationError")


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to one of ``bodies.py``'s models (a component of the document)."""
    return {"$ref": SCHEMAS + model.__name__}


def json_body(
    *models: type[BaseModel], required: bool = True, also: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A route's ``openapi_extra``: it takes a JSON body of one of ``models`` (``also``:
    other media types, by name, with their schemas)."""
    refs = [schema_ref(m) for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    content = {"application/json": {"schema": schema}, **(also or {})}
    return {"requestBody": {"required": required, "content": content}}


def answers(media_type: str | None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A success answer of ``media_type`` (None: no body)."""
    if media_type is None:
        return {}
    return {"content": {media_type: {"schema": schema or {}}}}


def key_refusals(body: dict[str, Any] = ERROR_SCHEMA, scheme: str = "Bearer") -> Responses:
    """What the API-key middleware answers, with ``body``, before any route runs (when
    the server has keys, or refuses a kind of call without them): 401 asking for a key
    (``scheme``: how), 403 a key without the scope (or a call refused), 429 a key's
    limit of calls in progress."""
    refusals = error_responses(401, 403, 429, body=body)
    refusals[401]["headers"] = {
        "WWW-Authenticate": {"schema": {"type": "string"}, "description": f"{scheme} realm"}
    }
    refusals[429]["headers"] = {
        "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
    }
    return refusals


def body_models_schemas() -> dict[str, Any]:
    """``bodies.py``'s models as JSON schemas, by name, for the document's components."""
    _, document = models_json_schema(
        [(model, "validation") for model in BODY_MODELS], ref_template=SCHEMAS + "{model}"
    )
    schemas: dict[str, Any] = document.get("$defs", {})
    return schemas


class DocumentedApp(FastAPI):
    """A FastAPI app whose document has ``bodies.py``'s models among its components and
    no 422 that FastAPI listed on its own (see the module docstring)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()
        for path in document.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                framework = responses.get("422", {}).get("content", {}).get("application/json")
                if framework == {"schema": _FRAMEWORK_422}:
                    del responses["422"]
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in _FRAMEWORK_SCHEMAS:
            schemas.pop(name, None)
        schemas.update(body_models_schemas())
        self.openapi_schema = document
        return document
