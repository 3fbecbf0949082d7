"""The values the readers produce and the errors they report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# The last three are preference datasets (app.pipeline.formats.preference): their records carry `preference`.
FORMATS = (
    "alpaca",
    "sharegpt",
    "openai",
    "dolly",
    "self_instruct",
    "mt_bench",
    "belle_eval",
    "prompts",
    "preference",
    "hh_rlhf",
    "ultrafeedback",
)

# "line" for JSON Lines (1-based line number), "item" for JSON arrays (1-based index of the array item).
Unit = Literal["line", "item"]


def describe(unit: Unit, line: int | None, field: str | None, message: str) -> str:
    """The one wording shared by FormatError and BadLine: `line 3: field "output": expected ...`."""
    parts = []
    if line is not None:
        parts.append(f"{unit} {line}")
    if field is not None:
        parts.append(f'field "{field}"')
    parts.append(message)
    return ": ".join(parts)


class FormatError(ValueError):
    """A file (or, with skip_bad=False, a record) that cannot be imported; str() names the line and field."""

    def __init__(
        self, message: str, *, line: int | None = None, field: str | None = None, unit: Unit = "line"
    ) -> None:
        self.line = line
        self.field = field
        self.message = message
        self.unit: Unit = unit
        super().__init__(describe(unit, line, field, message))


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one hostile record from costing memory, recursion or the database's patience."""

    max_field_chars: int = 1_000_000
    max_depth: int = 64
    max_turns: int = 1000
    # PostgreSQL's text and jsonb cannot hold NUL: the service's import refuses it (naming the line and
    # field, unknown fields included); a file-to-file conversion keeps it, as any byte of the text.
    allow_nul: bool = True


@dataclass(slots=True)
class ParsedRecord:
    """One imported record, normalised to the service's shape whatever the source format."""

    instruction: str
    input: str
    output: str
    # Only for real conversations (more than one user/assistant exchange); the leading system
    # message is never in here but in `system`.
    messages: list[dict[str, str]] | None
    system: str | None
    label: str | None
    is_classification: bool | None
    extra: dict[str, Any]
    line: int
    # Preference datasets only: the candidates and the dataset's verdict (app.pipeline.formats.preference).
    preference: dict[str, Any] | None = None


@dataclass(slots=True)
class BadLine:
    """A record that was refused, and why."""

    line: int
    field: str | None
    message: str
    unit: Unit = "line"

    def __str__(self) -> str:
        return describe(self.unit, self.line, self.field, self.message)

    def to_error(self) -> FormatError:
        return FormatError(self.message, line=self.line, field=self.field, unit=self.unit)
