"""Validation at the edge, once for every route: what no field of ours can hold is refused before a handler
runs, with a 422 that names the field.

Three things get past per-field validation and then fail deep down (a 500, or a database refusal that
names nothing): a NUL character (PostgreSQL's text and jsonb cannot store one), a lone UTF-16 surrogate
(`"\\ud800"` in JSON decodes to a str no database driver can encode), and a number beyond 64 bits (ids are
BIGINT; `1e20` is an integer to pydantic). None is meaningful in any field, known or not: an import's
unknown keys and a filter's ids included. So one check walks every path parameter, query parameter and JSON
body (keys included), instead of each schema remembering to: a field added tomorrow is covered too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import Request

from app.errors import Invalid

MAX_ID = 2**63 - 1  # BIGINT
_BAD_CHAR = re.compile(r"[\x00\ud800-\udfff]")
# A JSON body may spell them as escapes: only then is it parsed to find where (the fast path is a search).
_BAD_ESCAPE = re.compile(rb"\\u0000|\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\x00")
_BIG_NUMBER = re.compile(rb"\d{19,}|\d[eE]\+?\d")


def _problem(value: str) -> str | None:
    match = _BAD_CHAR.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "must not contain a NUL character (\\u0000)"
    return "must not contain a lone UTF-16 surrogate (invalid Unicode)"


def _number_problem(value: float | int) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if abs(value) > MAX_ID:
        return f"is out of range (at most {MAX_ID})"
    return None


def _walk(value: Any, loc: str) -> tuple[str, str] | None:
    """The first (location, problem) in a decoded JSON value, keys included."""
    if isinstance(value, str):
        bad = _problem(value)
        return (loc, bad) if bad else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        bad = _number_problem(value)
        return (loc, bad) if bad else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{loc}.{key}" if loc else str(key)
            bad = _problem(str(key))
            if bad:
                return (where, f"key {bad}")
            found = _walk(item, where)
            if found:
                return found
    if isinstance(value, list):
        for n, item in enumerate(value):
            found = _walk(item, f"{loc}[{n}]" if loc else f"[{n}]")
            if found:
                return found
    return None


def _field_name(where: str) -> str:
    return where.split(".")[-1].split("[")[0] or where


async def check_request(request: Request) -> None:
    """Router dependency: path and query values, then a JSON body, before any handler or database sees them."""
    route = request.scope.get("route")
    int_params = getattr(route, "if_int_params", None)
    if int_params is None and route is not None:
        int_params = _int_params(route)
        route.if_int_params = int_params
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        text = str(value)
        if bad := _problem(text):
            raise Invalid(f"{name}: {bad}", field=name)
        is_int = name in (int_params or ()) or name == "id" or name.endswith("_id")
        if is_int and text.lstrip("-").isdigit() and abs(int(text)) > MAX_ID:
            raise Invalid(f"{name}: is out of range (at most {MAX_ID})", field=name)
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and "json" in request.headers.get(
        "content-type", ""
    ):
        body = await request.body()
        if not (_BAD_ESCAPE.search(body) or _BIG_NUMBER.search(body)):
            return
        try:
            decoded = json.loads(body, parse_constant=lambda c: float(c))
        except ValueError:
            return  # not JSON: FastAPI's own validation answers 422 for it
        found = _walk(decoded, "")
        if found:
            where, problem = found
            raise Invalid(f"{where or 'body'}: {problem}", field=_field_name(where) or "body")


def _int_params(route: Any) -> frozenset[str]:
    """Names of the route's path and query parameters declared as integers (an id, a limit...)."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return frozenset()
    names: set[str] = set()
    stack = [dependant]
    while stack:
        dep = stack.pop()
        stack.extend(dep.dependencies)
        for param in (*dep.path_params, *dep.query_params):
            if _is_int(param.field_info.annotation):
                names.add(param.alias or param.name)
    return frozenset(names)


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    return any(_is_int(a) for a in getattr(annotation, "__args__", ()) if a is not type(None))
