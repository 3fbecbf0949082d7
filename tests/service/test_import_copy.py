"""The import's binary COPY writer (app.imports.spool + service._copy_binary) against the insert path."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.imports.service import write_records
from app.imports.spool import Spool, Unstorable, decode_cells, encode_cells
from app.pipeline.formats import ParsedRecord
from app.records.bulk import NewRecord, insert_new
from app.records.models import Record
from tests.factories import make_dataset, make_project

CHAT = [
    {"role": "user", "content": "写一首关于秋天的诗 🍂"},
    {"role": "assistant", "content": "秋风起，落叶飞。"},
    {"role": "user", "content": 'Ещё одну, s\'il vous plaît — "quoted"\\ and \t tabs'},
    {"role": "assistant", "content": "🙂👍🏽 ok"},
]


def _rec(line: int, instruction: str = "", output: str = "", **fields: Any) -> ParsedRecord:
    values: dict[str, Any] = {"input": "", "messages": None, "system": None, "label": None}
    values |= {"is_classification": None, "extra": {}} | fields
    return ParsedRecord(instruction=instruction, output=output, line=line, **values)


RECORDS = [
    _rec(1, "plain", "answer"),
    _rec(2, "Übersetze: «naïve café» ✓", "한국어 출력 😀🎉", input="日本語の入力テキスト", system="be brief"),
    _rec(3, messages=CHAT, system="Be kind. 你好"),
    _rec(4, "classify", "positive", input="text", label="positive 👍", is_classification=True),
    _rec(5, "classify", input="text", is_classification=False),
    _rec(
        6,
        "extra fields",
        "out",
        extra={
            "big": 2**70,
            "negative": -(2**63) - 1,
            "float": 0.1,
            "tiny": 5e-324,
            "nested": {"list": [1, "二", None, True, {"emoji": "🦄"}], "empty": {}},
            'quote"key': "back\\slash\nnewline",
        },
    ),
    _rec(7, "x" * 100_000, input="長い" * 20_000),
]
COLUMNS = (
    "instruction",
    "input",
    "output",
    "system",
    "messages",
    "status",
    "source",
    "label",
    "is_classification",
    "job_id",
    "meta",
    "tags",
    "version",
    "flagged",
    "human_decided",
    "parent_id",
    "reason",
)


def _spool(records: list[ParsedRecord], tmp_path: Any) -> Spool:
    spool = Spool(tmp_path)
    for rec in records:
        spool.add(rec.line, encode_cells(rec))
    return spool


def _stored(db: Session, dataset_id: int) -> list[tuple[Any, ...]]:
    cols = ", ".join(COLUMNS)
    rows = db.execute(
        text(f"SELECT gen_key, {cols} FROM records WHERE dataset_id = :d ORDER BY id"), {"d": dataset_id}
    ).all()
    return [(r[0].rsplit(":", 1)[1], *r[1:]) for r in rows]


def test_spooled_cells_decode_to_the_record_they_encode(tmp_path):
    spool = _spool(RECORDS, tmp_path)
    assert list(spool.records()) == RECORDS
    assert [len(b) for b in spool.batches(3)] == [3, 3, 1]
    spool.close()


@pytest.mark.parametrize("fresh", [True, False], ids=["copy-into-records", "staged-on-conflict"])
def test_binary_copy_writes_exactly_what_the_insert_path_writes(db: Session, tmp_path, fresh: bool):
    project = make_project(db)
    copied, inserted = make_dataset(db, project).id, make_dataset(db, project).id
    write_records(
        sessions=[db],
        dataset_id=copied,
        records=_spool(RECORDS, tmp_path),
        fmt="alpaca",
        key_prefix="k",
        job_id=None,
        batch_size=3,
        fresh=fresh,
    )
    insert_new(
        db,
        [
            NewRecord(
                dataset_id=inserted,
                gen_key=f"k:{r.line}",
                source="import:alpaca",
                instruction=r.instruction,
                input=r.input,
                output=r.output,
                system=r.system,
                messages=r.messages,
                label=r.label,
                is_classification=r.is_classification,
                meta={"import_extra": r.extra} if r.extra else {},
            )
            for r in RECORDS
        ],
    )
    assert _stored(db, copied) == _stored(db, inserted)
    assert len(_stored(db, copied)) == len(RECORDS)
    big = db.scalar(select(Record.meta).where(Record.dataset_id == copied, Record.gen_key == "k:6"))
    assert big is not None and big["import_extra"]["big"] == 2**70
    # The foreign keys' per-row triggers are back on for whatever the transaction does next.
    assert db.execute(text("SHOW session_replication_role")).scalar_one() == "origin"


def test_a_rerun_of_the_staged_path_skips_the_keys_already_written(db: Session, tmp_path):
    dataset_id = make_dataset(db, make_project(db)).id
    for fresh in (True, False):
        write_records(
            sessions=[db],
            dataset_id=dataset_id,
            records=_spool(RECORDS[:4], tmp_path),
            fmt="alpaca",
            key_prefix="k",
            job_id=None,
            batch_size=2,
            fresh=fresh,
        )
    write_records(
        sessions=[db],
        dataset_id=dataset_id,
        records=_spool(RECORDS, tmp_path),
        fmt="alpaca",
        key_prefix="k",
        job_id=None,
        batch_size=2,
    )
    assert [row[0] for row in _stored(db, dataset_id)] == [str(r.line) for r in RECORDS]


def test_a_batch_for_a_dataset_that_is_gone_writes_nothing(db: Session, tmp_path):
    with pytest.raises(NotFound, match="dataset 987654321"):
        write_records(
            sessions=[db],
            dataset_id=987654321,
            records=_spool(RECORDS, tmp_path),
            fmt="alpaca",
            key_prefix="k",
            job_id=None,
            batch_size=3,
            fresh=True,
        )
    db.rollback()
    assert db.scalar(text("SELECT count(*) FROM records WHERE dataset_id = 987654321")) == 0


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (_rec(1, "a", "nul \x00 here"), "output"),
        (_rec(1, "a", messages=[{"role": "user", "content": "\x00"}]), "messages"),
        (_rec(1, "a", "b", label="x" * 201), "label"),
        (_rec(1, "a", "b", extra={"n": float("inf")}), "meta"),
    ],
)
def test_what_postgresql_cannot_store_is_refused_before_writing(record: ParsedRecord, field: str):
    with pytest.raises(Unstorable) as refused:
        encode_cells(record)
    assert refused.value.field == field


def test_decode_is_the_inverse_of_encode_for_every_record():
    for rec in RECORDS:
        assert decode_cells(rec.line, encode_cells(rec)) == rec


def test_a_role_that_may_not_turn_triggers_off_still_imports_with_per_row_checks(db: Session, tmp_path):
    dataset_id = make_dataset(db, make_project(db)).id
    # Roles are transactional in PostgreSQL: this one goes with the test's rollback.
    db.execute(text("CREATE ROLE if_test_import_plain NOLOGIN"))
    db.execute(text("GRANT SELECT, INSERT, UPDATE ON records, datasets, jobs TO if_test_import_plain"))
    db.execute(text("GRANT USAGE ON SEQUENCE records_id_seq TO if_test_import_plain"))
    db.execute(text("SET LOCAL ROLE if_test_import_plain"))
    write_records(
        sessions=[db],
        dataset_id=dataset_id,
        records=_spool(RECORDS, tmp_path),
        fmt="alpaca",
        key_prefix="k",
        job_id=None,
        batch_size=3,
        fresh=True,
    )
    assert len(_stored(db, dataset_id)) == len(RECORDS)
    assert db.execute(text("SHOW session_replication_role")).scalar_one() == "origin"
    db.execute(text("RESET ROLE"))


def test_a_trigger_of_its_own_on_records_still_fires_for_imported_rows(db: Session, tmp_path):
    dataset_id = make_dataset(db, make_project(db)).id
    # DDL is transactional in PostgreSQL: the function and trigger go with the test's rollback.
    db.execute(
        text(
            "CREATE FUNCTION if_test_mark() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN NEW.label := 'triggered'; RETURN NEW; END $$"
        )
    )
    db.execute(
        text(
            "CREATE TRIGGER if_test_mark BEFORE INSERT ON records FOR EACH ROW EXECUTE FUNCTION if_test_mark()"
        )
    )
    write_records(
        sessions=[db],
        dataset_id=dataset_id,
        records=_spool(RECORDS, tmp_path),
        fmt="alpaca",
        key_prefix="k",
        job_id=None,
        batch_size=3,
        fresh=True,
    )
    labels = db.scalars(select(Record.label).where(Record.dataset_id == dataset_id)).all()
    assert labels == ["triggered"] * len(RECORDS)
