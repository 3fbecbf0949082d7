"""Turn an existing NLP dataset into instruction records by applying instruction templates.

Rows are dicts of named columns, read by :func:`read_table` from CSV/TSV, JSON Lines, a JSON array,
Parquet, or a Natural Instructions task file (one row per instance, with the task's definition as the
``definition`` column). Each row gets one of several templates, drawn with a seeded RNG, so a run is
reproducible and the dataset does not teach a single phrasing.
"""

from __future__ import annotations

import csv
import json
import random
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "NATURAL_INSTRUCTIONS_TEMPLATE",
    "ConvertError",
    "Template",
    "convert_rows",
    "natural_instructions_rows",
    "read_table",
]


class ConvertError(ValueError):
    """A row or template that cannot be converted; the message names the row and column."""


@dataclass(frozen=True)
class Template:
    """One way to phrase a task. Fields are ``str.format`` strings over the row's columns.

    ``inverse_instruction`` phrases the task backwards ("write a question for this answer"): with
    ``invert=True`` the rendered output becomes the input, and the rendered input (or, when the
    template has none, the rendered instruction) becomes the output.
    """

    instruction: str
    output: str
    input: str = ""
    inverse_instruction: str | None = None
    name: str = ""

    def columns(self) -> set[str]:
        """The column names the template refers to."""
        names: set[str] = set()
        for text in (self.instruction, self.input, self.output, self.inverse_instruction or ""):
            for _, field, _, _ in string.Formatter().parse(text):
                if field:
                    names.add(field.split(".")[0].split("[")[0])
        return names


NATURAL_INSTRUCTIONS_TEMPLATE = Template(
    name="natural_instructions",
    instruction="{definition}",
    input="{input}",
    output="{output}",
    inverse_instruction="Write an input for the following task that has the given output.\n\n{definition}",
)


def _render(text: str, row: Mapping[str, Any], where: str) -> str:
    try:
        return text.format_map(_Row(row))
    except KeyError as err:
        raise ConvertError(
            f"{where}: no column {err.args[0]!r} (columns: {', '.join(map(str, row))})"
        ) from err


class _Row(dict[str, Any]):
    """Missing or null cells render as an empty string only when the column exists."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        super().__init__({k: ("" if v is None else v) for k, v in row.items()})


def convert_rows(
    rows: Iterable[Mapping[str, Any]], *, templates: list[Template], seed: int, invert: bool = False
) -> list[dict[str, Any]]:
    """Alpaca-style records ``{instruction, input, output, meta}``, one per row.

    ``meta`` records the template name (or index), the row number and whether the pair was inverted,
    so the provenance of every generated record is known. Rows whose output renders empty are skipped
    (a record without an answer is not a training example).
    """
    if not templates:
        raise ConvertError("at least one template is needed")
    if invert and not any(t.inverse_instruction for t in templates):
        raise ConvertError("invert=True needs templates with an inverse_instruction")
    usable = [t for t in templates if t.inverse_instruction] if invert else templates
    rnd = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        index = rnd.randrange(len(usable))
        template = usable[index]
        where = f"row {i + 1}, template {template.name or index}"
        source_input = _render(template.input, row, where).strip()
        source_output = _render(template.output, row, where).strip()
        forward = _render(template.instruction, row, where).strip()
        if invert:
            instruction = _render(template.inverse_instruction or "", row, where).strip()
            # The question is the input when the template has one, else the instruction itself.
            record_input, record_output = source_output, source_input or forward
        else:
            instruction = forward
            record_input, record_output = source_input, source_output
        if not record_output or not instruction:
            continue
        records.append(
            {
                "instruction": instruction,
                "input": record_input,
                "output": record_output,
                "meta": {"template": template.name or str(index), "row": i, "inverted": invert},
            }
        )
    return records


def natural_instructions_rows(task: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Rows ``{definition, input, output, id}`` of a Natural Instructions task (first listed output)."""
    definition = task.get("Definition")
    if isinstance(definition, list):
        definition = "\n".join(str(d) for d in definition)
    if not isinstance(definition, str) or not isinstance(task.get("Instances"), list):
        raise ConvertError("not a Natural Instructions task: needs 'Definition' and 'Instances'")
    for instance in task["Instances"]:
        outputs = instance.get("output")
        output = outputs[0] if isinstance(outputs, list) and outputs else outputs
        yield {
            "definition": definition,
            "input": instance.get("input", ""),
            "output": "" if output is None else str(output),
            "id": instance.get("id", ""),
        }


def read_table(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV, JSON Lines, JSON array, Parquet or Natural Instructions task file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        with path.open(encoding="utf-8-sig", newline="") as fp:
            yield from csv.DictReader(fp, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # only needed for Parquet input

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    elif suffix in {".json", ".jsonl"}:
        yield from _json_rows(path)
    else:
        raise ConvertError(
            f"{path.name}: unsupported table format {suffix!r} (csv, tsv, json, jsonl, parquet)"
        )


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        # Not one JSON document: JSON Lines (several datasets name those ".json").
        yield from _json_lines(path.name, text)
        return
    if isinstance(data, dict) and "Instances" in data:
        yield from natural_instructions_rows(data)
    elif isinstance(data, list):
        for number, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise ConvertError(f"{path.name}: item {number}: expected an object")
            yield row
    elif isinstance(data, dict):
        yield data
    else:
        raise ConvertError(f"{path.name}: expected objects, a list of objects or a task")


def _json_lines(name: str, text: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConvertError(f"{name}: line {number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise ConvertError(f"{name}: line {number}: expected an object")
        yield row
