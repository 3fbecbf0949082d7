"""The import's validated records on disk, as cells of PostgreSQL's binary COPY format.

Why a spool: an import checks the whole file before it writes anything (one bad line and nothing is
written), and holding a million parsed records for that took ~2 GB. Pass 1 parses and checks each record
once and appends its cells to an unnamed temporary file beside the uploads; pass 2 streams them into the
database. Memory stays bounded by one batch whatever the file's size, and nothing is parsed twice.

Why these bytes: the cells are exactly what ``COPY records FROM STDIN (FORMAT BINARY)`` reads for the
columns that differ per record (https://www.postgresql.org/docs/current/sql-copy.html, "Binary Format"):
a big-endian int32 length (-1 for NULL) and the value in the type's binary form. Text and varchar are
UTF-8; jsonb is a version byte 1 and the JSON text; boolean one byte. Pass 2 on PostgreSQL only puts the
per-import constant columns and the key in front (:func:`copy_tuples`), so the server parses no text
format and the client formats nothing twice. SQLite reads the same cells back (:meth:`Spool.records`).

Each spooled record is ``[int32 line][int32 size][cells]``.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from app.pipeline.formats import ParsedRecord

# The columns each spooled record carries, in COPY order, after CONSTANT_COLUMNS and gen_key.
CELL_COLUMNS: Final = (
    "instruction",
    "input",
    "output",
    "system",
    "messages",
    "label",
    "is_classification",
    "meta",
)
# The same for every row of one import: encoded once per batch, not once per row.
CONSTANT_COLUMNS: Final = (
    "dataset_id",
    "status",
    "source",
    "job_id",
    "tags",
    "version",
    "flagged",
    "created_at",
    "updated_at",
)
COPY_COLUMNS: Final = (*CONSTANT_COLUMNS, "gen_key", *CELL_COLUMNS)
# records' column types in COPY_COLUMNS order: a binary COPY must match them exactly (a staging table too).
COPY_TYPES: Final = (
    "bigint",
    "varchar(16)",
    "varchar(64)",
    "bigint",
    "jsonb",
    "integer",
    "boolean",
    "timestamptz",
    "timestamptz",
    "varchar(200)",
    "text",
    "text",
    "text",
    "text",
    "jsonb",
    "varchar(200)",
    "boolean",
    "jsonb",
)
SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"

_I2 = struct.Struct(">h").pack
_I4 = struct.Struct(">i").pack
_I8 = struct.Struct(">q").pack
_HEAD = struct.Struct(">ii")
_NULL: Final = b"\xff\xff\xff\xff"
_TRUE, _FALSE = _I4(1) + b"\x01", _I4(1) + b"\x00"
_EMPTY_OBJECT: Final = _I4(3) + b"\x01{}"
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
# The longest label records.label (varchar(200)) holds: a longer one is bad input, not a failed write.
MAX_LABEL_CHARS: Final = 200


class Unstorable(ValueError):
    """A record that parsed but that PostgreSQL cannot store as it is; `field` names what."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def _text(value: str) -> bytes:
    data = value.encode()
    return _I4(len(data)) + data


def _jsonb(value: Any, field: str) -> bytes:
    try:
        data = json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:  # 1e400 decodes to inf, which no JSON column can hold
        raise Unstorable(field, "a number too large to store (JSON has no Infinity)") from exc
    return _I4(len(data) + 1) + b"\x01" + data


def encode_cells(rec: ParsedRecord) -> bytes:
    """The record's CELL_COLUMNS as binary COPY cells; Unstorable for NUL, an over-long label, or inf."""
    for field in ("instruction", "input", "output", "system"):
        value = getattr(rec, field)
        if value is not None and "\x00" in value:
            raise Unstorable(field, "contains a NUL character (\\u0000)")
    if rec.messages and any("\x00" in m["content"] for m in rec.messages):
        raise Unstorable("messages", "contains a NUL character (\\u0000)")
    if rec.label is not None and len(rec.label) > MAX_LABEL_CHARS:
        raise Unstorable("label", f"{len(rec.label):,} characters exceeds the limit of {MAX_LABEL_CHARS}")
    return b"".join(
        (
            _text(rec.instruction),
            _text(rec.input),
            _text(rec.output),
            _NULL if rec.system is None else _text(rec.system),
            _NULL if rec.messages is None else _jsonb(rec.messages, "messages"),
            _NULL if rec.label is None else _text(rec.label),
            _NULL if rec.is_classification is None else (_TRUE if rec.is_classification else _FALSE),
            _jsonb(import_meta(rec), "meta") if rec.extra or rec.preference else _EMPTY_OBJECT,
        )
    )


def import_meta(rec: ParsedRecord) -> dict[str, Any]:
    """The record's meta: the format's unused keys, and a preference dataset's candidates and verdict until
    app.preferences.imports turns them into rows (and drops them from meta)."""
    meta: dict[str, Any] = {"import_extra": rec.extra} if rec.extra else {}
    if rec.preference is not None:
        meta["import_preference"] = rec.preference
    return meta


def decode_cells(line: int, cells: bytes) -> ParsedRecord:
    """The record encode_cells encoded (its `extra` back from meta)."""
    values: list[Any] = []
    pos = 0
    for column in CELL_COLUMNS:
        (size,) = struct.unpack_from(">i", cells, pos)
        pos += 4
        if size < 0:
            values.append(None)
            continue
        raw = cells[pos : pos + size]
        pos += size
        if column in ("messages", "meta"):
            values.append(json.loads(raw[1:]))
        elif column == "is_classification":
            values.append(raw == b"\x01")
        else:
            values.append(raw.decode())
    instruction, input_, output, system, messages, label, is_cls, meta = values
    return ParsedRecord(
        instruction=instruction,
        input=input_,
        output=output,
        messages=messages,
        system=system,
        label=label,
        is_classification=is_cls,
        extra=meta.get("import_extra", {}),
        line=line,
        preference=meta.get("import_preference"),
    )


def constant_cells(*, dataset_id: int, source: str, job_id: int | None, now: datetime) -> bytes:
    """The tuple header and CONSTANT_COLUMNS of every row of one import."""
    micros = (now - _PG_EPOCH) // timedelta(microseconds=1)
    stamp = _I4(8) + _I8(micros)
    return b"".join(
        (
            _I2(len(COPY_COLUMNS)),
            _I4(8) + _I8(dataset_id),
            _text("pending"),
            _text(source),
            _NULL if job_id is None else _I4(8) + _I8(job_id),
            _I4(3) + b"\x01[]",
            _I4(4) + _I4(1),
            _FALSE,
            stamp,
            stamp,
        )
    )


def copy_tuples(batch: list[tuple[int, bytes]], *, constant: bytes, key_prefix: str) -> bytes:
    """A whole binary COPY stream (signature, tuples, trailer) for a batch of spooled records."""
    parts = [SIGNATURE]
    append = parts.append
    for line, cells in batch:
        append(constant)
        append(_text(f"{key_prefix}:{line}"))
        append(cells)
    append(TRAILER)
    return b"".join(parts)


class Spool:
    """Append-only, then read once: records' cells in an unnamed file (nothing left behind by a crash)."""

    def __init__(self, directory: Path) -> None:
        # Closed by close(), or when the spool is collected; unnamed, so a crash leaves nothing behind.
        self._file = tempfile.TemporaryFile(dir=directory, prefix="import-spool-", buffering=1 << 20)  # noqa: SIM115
        self.count = 0

    def add(self, line: int, cells: bytes) -> None:
        self._file.write(_HEAD.pack(line, len(cells)) + cells)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def batches(self, size: int) -> Iterator[list[tuple[int, bytes]]]:
        """The spooled (line, cells) in order, `size` at a time."""
        self._file.seek(0)
        read, unpack = self._file.read, _HEAD.unpack
        batch: list[tuple[int, bytes]] = []
        for _ in range(self.count):
            line, n = unpack(read(8))
            batch.append((line, read(n)))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def records(self) -> Iterator[ParsedRecord]:
        for batch in self.batches(1000):
            for line, cells in batch:
                yield decode_cells(line, cells)

    def close(self) -> None:
        self._file.close()
