"""app.records.bulk: the one insert of new records, skipping keys the dataset holds, on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.records.bulk import DEFAULTS, NewRecord, insert_new
from app.records.models import Record
from tests.factories import make_dataset, make_project


def _dataset_id(db: Session) -> int:
    return make_dataset(db, make_project(db)).id


def _new(dataset_id: int, key: str, **fields: Any) -> NewRecord:
    return NewRecord(dataset_id=dataset_id, gen_key=key, source="test", **fields)


def test_defaults_are_the_record_models_column_defaults():
    for name, value in DEFAULTS.items():
        column = Record.__table__.c[name]
        expected = column.default.arg if column.default is not None else None
        assert column.default is None or not callable(expected), name
        assert value == expected, name
        assert value is not None or column.nullable, name
    # Required (dataset_id, gen_key, source) or defaulted (meta: a fresh {} per row), never forgotten.
    assert set(DEFAULTS) | {"dataset_id", "gen_key", "source", "meta"} == set(NewRecord.__annotations__)


def test_insert_new_skips_existing_keys_and_counts_what_it_inserted(db: Session, backend: str):
    dataset_id = _dataset_id(db)
    assert insert_new(db, [_new(dataset_id, f"k:{n}", instruction=f"first {n}") for n in range(3)]) == 3
    again = [_new(dataset_id, f"k:{n}", instruction=f"second {n}") for n in range(2, 5)]
    assert insert_new(db.connection(), again) == 2
    assert insert_new(db, []) == 0
    rows = db.execute(
        select(Record.gen_key, Record.instruction).where(Record.dataset_id == dataset_id).order_by(Record.id)
    ).all()
    assert [tuple(r) for r in rows] == [
        ("k:0", "first 0"),
        ("k:1", "first 1"),
        ("k:2", "first 2"),
        ("k:3", "second 3"),
        ("k:4", "second 4"),
    ]


def test_a_key_is_unique_per_dataset_only(db: Session, backend: str):
    first, second = _dataset_id(db), _dataset_id(db)
    assert insert_new(db, [_new(first, "same"), _new(second, "same")]) == 2


def test_omitted_fields_take_the_defaults_and_missing_messages_are_sql_null(db: Session, backend: str):
    dataset_id = _dataset_id(db)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    insert_new(db, [_new(dataset_id, "plain"), _new(dataset_id, "chat", messages=messages, meta={"x": 1})])
    plain, chat = db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)).all()
    assert (plain.instruction, plain.input, plain.output, plain.status, plain.source) == (
        "",
        "",
        "",
        "pending",
        "test",
    )
    assert (plain.meta, plain.tags, plain.version, plain.flagged, plain.human_decided) == (
        {},
        [],
        1,
        False,
        False,
    )
    assert plain.created_at is not None and plain.parent_id is None
    assert (chat.messages, chat.meta) == (messages, {"x": 1})
    # SQL NULL, as the import's COPY writes it, not the JSON value null.
    nulls = db.execute(
        text("SELECT gen_key, messages IS NULL FROM records WHERE dataset_id = :d ORDER BY id"),
        {"d": dataset_id},
    ).all()
    assert [(k, bool(n)) for k, n in nulls] == [("plain", True), ("chat", False)]


def test_a_session_flushes_what_it_holds_before_the_insert(db: Session, backend: str):
    dataset_id = _dataset_id(db)
    parent = Record(dataset_id=dataset_id, instruction="parent", source="human")
    db.add(parent)
    insert_new(db, [_new(dataset_id, "child", instruction="child")])
    ids = db.scalars(select(Record.id).where(Record.dataset_id == dataset_id).order_by(Record.id)).all()
    assert ids[0] == parent.id and len(ids) == 2
