"""Bulk writes of new records: one insert that skips the rows whose (dataset_id, gen_key) exist already.

Every job that creates records (import, convert, mix, Self-Instruct, Evol-Instruct) writes them under a
stable `gen_key`, so a job redelivered after a crash re-inserts the same keys and the unique index
uq_records_dataset_gen_key turns the replay into a no-op. PostgreSQL and SQLite both say "insert, ignoring
conflicts" as ON CONFLICT DO NOTHING, but SQLAlchemy builds it with a different construct for each: the
choice is made here, once. The only other writer of new records is the import's PostgreSQL binary COPY
(app.imports.service, app.imports.spool), which streams rows around SQLAlchemy for speed: straight into
records on a job's first attempt, otherwise through a staging table and the same ON CONFLICT.
tests/service/test_import_copy.py holds the two writers to storing the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Required, TypedDict

from sqlalchemy import JSON, Connection, bindparam
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from app.db import insert_ignoring
from app.records.models import Record, RecordStatus


class NewRecord(TypedDict, total=False):
    """A record to insert. The key and the source are required; the other fields default as DEFAULTS says.

    No `tags`: a tag is also a RecordTag row, which needs the record's id; new records start untagged.
    """

    dataset_id: Required[int]
    gen_key: Required[str]
    source: Required[str]
    instruction: str
    input: str
    output: str
    system: str | None
    messages: list[Any] | None
    status: str
    reason: str | None
    label: str | None
    is_classification: bool | None
    parent_id: int | None
    job_id: int | None
    teacher_model: str | None
    prompt_hash: str | None
    nn_score: float | None
    meta: dict[str, Any]


# The model's own column defaults (tests/service/test_bulk_records.py holds them equal). Every row gets
# every column: one executemany needs the same keys in each row.
DEFAULTS: Final[dict[str, Any]] = {
    "instruction": "",
    "input": "",
    "output": "",
    "system": None,
    "messages": None,
    "status": RecordStatus.pending.value,
    "reason": None,
    "label": None,
    "is_classification": None,
    "parent_id": None,
    "job_id": None,
    "teacher_model": None,
    "prompt_hash": None,
    "nn_score": None,
}

# A bound None is JSON 'null' for a JSON column; a record without messages has SQL NULL (as COPY writes).
_MESSAGES = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def _insert_ignoring_duplicates(db: Connection | Session) -> Any:
    return (
        insert_ignoring(db, Record, index_elements=["dataset_id", "gen_key"])
        .values(messages=bindparam("messages", type_=_MESSAGES))
        # executemany reports no row count unless asked to: the count is what was actually inserted.
        .execution_options(preserve_rowcount=True)
    )


def insert_new(db: Connection | Session, rows: Iterable[NewRecord]) -> int:
    """Insert the rows whose (dataset_id, gen_key) is new, in order; return how many were inserted.

    On a session, what it holds is flushed first, as a query would; the rows go through its connection.
    """
    values = [{**DEFAULTS, "meta": {}, **row, "tags": []} for row in rows]
    if not values:
        return 0
    if isinstance(db, Session):
        db.flush()
        db = db.connection()
    return int(db.execute(_insert_ignoring_duplicates(db), values).rowcount)
