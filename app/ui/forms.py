"""Job-start forms generated from a job kind's JSON schema (the one GET /api/v1/jobs/kinds returns), with
the defaults filled in, and the posted form turned back into params."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import Invalid

SCALARS = {"string", "integer", "number", "boolean"}


@dataclass(frozen=True)
class Choice:
    """One option of a select or of a list of checkboxes: what is posted, what a person reads, and why."""

    value: str
    label: str
    help: str = ""


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # text | integer | number | checkbox | select | multi (checkboxes) | json
    value: str
    required: bool
    help: str
    nullable: bool = False
    options: list[Choice] = field(default_factory=list)
    checked: bool = False
    selected: list[str] = field(default_factory=list)  # the ticked choices of a `multi` field

    def as_select(self, choices: list[Choice]) -> None:
        """A free-text field offered as a choice among known values (the configured teachers)."""
        self.kind, self.options = "select", choices
        if choices and self.value not in {c.value for c in choices}:
            self.value = choices[0].value

    def as_multi(self, choices: list[Choice], selected: list[str]) -> None:
        """A list field offered as checkboxes with their descriptions (rule codes), not as JSON."""
        self.kind, self.options, self.selected, self.value = "multi", choices, selected, ""


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
        options = [
            Choice(str(o), str(o)) for o in prop.get("enum", [prop["const"]] if "const" in prop else [])
        ]
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


def _posted_list(form: Mapping[str, Any], name: str) -> list[str]:
    """Every value posted under `name` (a form's ticked checkboxes), or a mapping's list."""
    getlist = getattr(form, "getlist", None)
    values = getlist(name) if getlist is not None else form.get(name, [])
    return [str(v) for v in ([values] if isinstance(values, str) else values)]


def _parse_multi(f: FormField, form: Mapping[str, Any]) -> list[str] | None:
    """Ticked choices; nothing ticked is None (the parameter's default). A JSON list posted as one value
    is taken too, so a form posted by a script can send what the API would."""
    values = [v for v in _posted_list(form, f.name) if v.strip()]
    if len(values) == 1 and values[0].lstrip().startswith("["):
        try:
            values = [str(v) for v in json.loads(values[0])]
        except ValueError as exc:
            raise Invalid(f"{f.name}: {exc}", field=f.name) from exc
    known = {c.value for c in f.options}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise Invalid(
            f"{f.name}: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}", field=f.name
        )
    return values or None


def parse_form(fields: list[FormField], form: Mapping[str, Any]) -> dict[str, Any]:
    """Posted strings back to typed params. A blank optional field is left out (its default applies) or,
    if the parameter accepts null, sent as null."""
    params: dict[str, Any] = {}
    for f in fields:
        if f.kind == "checkbox":
            params[f.name] = form.get(f.name) in ("on", "true", "1")
            continue
        if f.kind == "multi":
            params[f.name] = _parse_multi(f, form)
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
