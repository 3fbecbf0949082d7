"""Domain errors. Services raise these; one handler maps them to HTTP with a clear message."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Unauthorized(DomainError):
    status_code = 401


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    status_code = 422


class PayloadTooLarge(DomainError):
    status_code = 413


def validation_message(errors: Iterable[Mapping[str, Any]], prefix: str | None = None) -> str:
    """pydantic's or FastAPI's validation errors as one line a person reads: `params.threshold: Input
    should be less than or equal to 1; ...`. FastAPI's leading "body" is left out of each location."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        where = ".".join(p for p in (prefix, loc) if p)
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


def invalid(errors: Iterable[Mapping[str, Any]], prefix: str | None = None) -> Invalid:
    """pydantic's validation errors as an Invalid whose message reads as :func:`validation_message` and
    whose ``field`` names the first wrong field (``params.batch``), as the API's own 422s do."""
    errors = list(errors)
    loc = ".".join(str(p) for p in (errors[0].get("loc", ()) if errors else ()) if p != "body")
    field = ".".join(p for p in (prefix, loc) if p) or None
    return Invalid(validation_message(errors, prefix=prefix), field=field)


@contextmanager
def not_found_as(what: str) -> Iterator[None]:
    """Inside, a NotFound (the row's project or dataset is not the user's) reads as the row itself not
    found: ids of other projects' rows reveal nothing, not even which project they belong to."""
    try:
        yield
    except NotFound:
        raise NotFound(f"{what} not found") from None
