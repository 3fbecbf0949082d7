"""Export bundles: the data files of each split (JSON/JSONL or Parquet), LLaMA-Factory's `dataset_info.json`
and a Hub-style dataset card, as {path in the bundle: bytes}. The same files go into a zip download and a
Hub commit, so what a person downloads is what the Hub shows.

Parquet rows are the chosen format's row (`writers.ROWS`) with every optional column present (an absent
`system` is null, an absent `history` is empty: one schema for the whole file, whatever the first record
has), plus the record's id and provenance. See docs/formats.md.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from app.pipeline.formats.card import CardInfo, dataset_card
from app.pipeline.formats.writers import ALL_EXPORTERS, ROWS

if TYPE_CHECKING:
    import pyarrow as pa

# Where a row came from (docs/architecture.md, rule 2), so a trained model's data can be traced back.
PROVENANCE = ("id", "source", "parent_id", "job_id", "teacher_model", "prompt_hash")


@lru_cache
def parquet_schema(fmt: str) -> pa.Schema:
    # pyarrow is imported here, not at module level: the web process imports this package for every
    # export and validation, and only a Parquet export needs pyarrow (~0.8 s to import).
    import pyarrow as pa

    message = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
    sharegpt_turn = pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())])
    alpaca = [
        pa.field("instruction", pa.string()),
        pa.field("input", pa.string()),
        pa.field("output", pa.string()),
        pa.field("system", pa.string()),
        pa.field("history", pa.list_(pa.list_(pa.string()))),
    ]
    columns = {
        "alpaca": alpaca,
        "alpaca_jsonl": alpaca,
        "sharegpt": [pa.field("conversations", pa.list_(sharegpt_turn))],
        "openai": [pa.field("messages", pa.list_(message))],
        "axolotl": [pa.field("conversations", pa.list_(message))],
        "dpo": [pa.field(name, pa.list_(message)) for name in ("prompt", "chosen", "rejected")],
        "dpo_plain": [
            *(pa.field(name, pa.string()) for name in ("prompt", "chosen", "rejected")),
            pa.field("system", pa.string()),
        ],
    }
    provenance = [
        pa.field("id", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("parent_id", pa.int64()),
        pa.field("job_id", pa.int64()),
        pa.field("teacher_model", pa.string()),
        pa.field("prompt_hash", pa.string()),
    ]
    return pa.schema([*columns[fmt], *provenance])


# LLaMA-Factory's dataset_info.json entry per format (its data/README.md): how its loader reads our rows.
_ROLE_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
_LLAMAFACTORY: dict[str, dict[str, Any]] = {
    "alpaca": {
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    },
    "sharegpt": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "system_tag": "system",
        },
    },
    "openai": {
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {**_ROLE_TAGS, "system_tag": "system"},
    },
    "axolotl": {
        "formatting": "sharegpt",
        "columns": {"messages": "conversations"},
        "tags": {**_ROLE_TAGS, "system_tag": "system"},
    },
}
_LLAMAFACTORY["alpaca_jsonl"] = _LLAMAFACTORY["alpaca"]


def parquet_row(fmt: str, rec: Mapping[str, Any]) -> dict[str, Any]:
    """One Parquet row: the format's row with its optional columns filled, then id and provenance."""
    row = ROWS[fmt](rec)
    if fmt in ("alpaca", "alpaca_jsonl"):
        row.setdefault("system", None)
        row.setdefault("history", [])
    if fmt == "dpo_plain":
        row.setdefault("system", None)
    row["id"] = rec["record_id"]
    for key in PROVENANCE[1:]:
        row[key] = rec.get(key)
    return row


def parquet_bytes(fmt: str, records: Sequence[Mapping[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([parquet_row(fmt, r) for r in records], schema=parquet_schema(fmt))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def dataset_info(
    fmt: str, name: str, files: Mapping[str, str], columns: set[str] | None = None
) -> dict[str, Any] | None:
    """LLaMA-Factory's `dataset_info.json`: one entry per split, `name` for train, `name_<split>` else.

    `columns` are the optional alpaca columns the files hold (`system`, `history`): LLaMA-Factory fails on
    a declared column a JSON file lacks. None for formats it cannot read as they are (dpo: its ranking
    layout wants one message object per reply, TRL's wants a list).
    """
    base = _LLAMAFACTORY.get(fmt)
    if base is None:
        return None
    entry = json.loads(json.dumps(base))
    if entry["formatting"] == "alpaca":
        for col in sorted(columns or set()):
            entry["columns"][col] = col
    return {
        (name if split == "train" else f"{name}_{split}"): {"file_name": path, **entry}
        for split, path in files.items()
    }


def _alpaca_columns(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    present: set[str] = set()
    for rec in rows:
        row = ROWS["alpaca"](rec)
        present.update(k for k in ("system", "history") if k in row)
        if len(present) == 2:
            break
    return present


def build_bundle(
    *, fmt: str, splits: Mapping[str, Sequence[Mapping[str, Any]]], parquet: bool, card: CardInfo, name: str
) -> dict[str, bytes]:
    """{path: content}: `data/<split>.<ext>` for each non-empty split, `dataset_info.json` where
    LLaMA-Factory reads the format, and `README.md`, the dataset card."""
    writer, ext = ALL_EXPORTERS[fmt]
    ext = "parquet" if parquet else ext
    files: dict[str, bytes] = {}
    paths: dict[str, str] = {}
    counts: dict[str, int] = {}
    for split, rows in splits.items():
        if not rows and split != "train":
            continue
        path = f"data/{split}.{ext}"
        if parquet:
            files[path] = parquet_bytes(fmt, rows)
        else:
            buf = io.StringIO()
            writer(rows, buf)
            files[path] = buf.getvalue().encode("utf-8")
        paths[split] = path
        counts[split] = len(rows)
    columns = (
        {"system", "history"} if parquet else _alpaca_columns([r for rows in splits.values() for r in rows])
    )
    info = dataset_info(fmt, name, paths, columns)
    if info is not None:
        files["dataset_info.json"] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    files["README.md"] = dataset_card(
        card, files=paths, counts=counts, parquet=parquet, llamafactory_name=name if info else None
    ).encode("utf-8")
    return files
