"""Job-start forms generated from a job kind's JSON schema (the one GET /api/v1/jobs/kinds returns), with
the defaults filled in, and the posted form turned back into params."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import Invalid

SCALARS = {"string", "integer", "number", "boolean"}


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # text | integer | number | checkbox | select | json
    value: str
    required: bool
    help: str
    nullable: bool = False
    options: list[str] = field(default_factory=list)
    checked: bool = False


def _resolve(schema: dict[str, Any], prop: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The property's own schema and whether null is allowed (Optional[...] is anyOf [X, null])."""
    nullable = False
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        inner = options[0] if len(options) == 1 else {"type": "json"}
        prop = {**inner, **{k: v for k, v in prop.items() if k != "anyOf"}}
    if "$ref" in prop:
        ref = schema.get("$defs", {}).get(prop["$ref"].rsplit("/", 1)[-1], {})
        prop = {**ref, **{k: v for k, v in prop.items() if k != "$ref"}}
    return prop, nullable


def _kind(prop: dict[str, Any]) -> str:
    if "enum" in prop or "const" in prop:
        return "select"
    t = prop.get("type")
    if t == "boolean":
        return "checkbox"
    if t in ("integer", "number"):
        return str(t)
    if t == "string":
        return "text"
    return "json"


def form_fields(schema: dict[str, Any], defaults: Mapping[str, Any] | None = None) -> list[FormField]:
    """One input per top-level parameter; objects and lists are edited as JSON. `defaults` supplies the
    values of defaults made by factories, which a JSON schema does not carry."""
    defaults = defaults or {}
    required = set(schema.get("required", []))
    fields: list[FormField] = []
    for name, raw in schema.get("properties", {}).items():
        prop, nullable = _resolve(schema, raw)
        kind = _kind(prop)
        default = raw.get("default", prop.get("default", defaults.get(name)))
        if kind == "json":
            value = "" if default is None else json.dumps(default, indent=1, ensure_ascii=False)
        elif default is None:
            value = ""
        else:
            value = str(default).lower() if isinstance(default, bool) else str(default)
        options = [str(o) for o in prop.get("enum", [prop["const"]] if "const" in prop else [])]
        fields.append(
            FormField(
                name=name,
                label=raw.get("title", name.replace("_", " ")),
                kind=kind,
                value=value,
                required=name in required,
                help=str(raw.get("description", prop.get("description", ""))),
                nullable=nullable,
                options=options,
                checked=bool(default) if kind == "checkbox" else False,
            )
        )
    return fields


def parse_form(fields: list[FormField], form: Mapping[str, Any]) -> dict[str, Any]:
    """Posted strings back to typed params. A blank optional field is left out (its default applies) or,
    if the parameter accepts null, sent as null."""
    params: dict[str, Any] = {}
    for f in fields:
        if f.kind == "checkbox":
            params[f.name] = form.get(f.name) in ("on", "true", "1")
            continue
        raw = str(form.get(f.name, "")).strip()
        if raw == "":
            if f.nullable and not f.required:
                params[f.name] = None
            continue
        try:
            if f.kind == "integer":
                params[f.name] = int(raw)
            elif f.kind == "number":
                params[f.name] = float(raw)
            elif f.kind == "json":
                params[f.name] = json.loads(raw)
            else:
                params[f.name] = raw
        except ValueError as exc:
            raise Invalid(f"{f.name}: {exc}", field=f.name) from exc
    return params
