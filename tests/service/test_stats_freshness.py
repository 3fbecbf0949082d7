"""The dataset page's cached stats are never older than the last change, whatever wrote it.

Each test opens the figures (which caches them), then *poisons* the cache: the stored figures get a total of
-1 under the current stamp, so a view that still served them would show -1. After each kind of committed
write the figures must be fresh, computed again and showing the change. The first test shows the poison is
served while nothing changed, so a pass below is the invalidation's doing, not a cache that is never read.
Committed data on PostgreSQL and SQLite (the `committed` fixture), through the services and the job runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from app.auth.models import User
from app.datasets.models import Dataset, DatasetStatsCache
from app.jobs.models import Job
from app.projects.models import Project
from app.records.models import Record
from app.records.schemas import RecordFilter, RecordUpdate
from app.review import insights
from tests.factories import make_dataset, make_project, make_user, run_job_now

TEXTS = [
    ("Write a haiku about rain.", "Rain on the roof."),
    ("Write a limerick about a cat.", "A cat from Peru..."),
    ("Explain why the sky appears blue during the day.", "Rayleigh scattering: blue light scatters more."),
    ("Give three tips for staying healthy in winter.", "As an AI language model, I cannot give advice."),
]


@pytest.fixture
def world(committed: Engine) -> dict[str, Any]:
    with Session(committed) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        db.add_all(
            Record(dataset_id=dataset.id, instruction=i, output=o, source="import:alpaca") for i, o in TEXTS
        )
        db.commit()
        ids = list(db.scalars(select(Record.id).where(Record.dataset_id == dataset.id).order_by(Record.id)))
        db.expunge(curator)
        return {"engine": committed, "curator": curator, "ds": dataset.id, "ids": ids}


def view(world: dict[str, Any], include_filtered: bool = True) -> dict[str, Any]:
    """What the dataset page shows, in a request-like unit of work (committed, so the cache is stored)."""
    with Session(world["engine"]) as db:
        stats = insights.dataset_stats(
            db=db, user=db.merge(world["curator"]), dataset_id=world["ds"], include_filtered=include_filtered
        )
        db.commit()
        return stats


def poison(world: dict[str, Any]) -> None:
    with Session(world["engine"]) as db:
        rows = db.scalars(select(DatasetStatsCache).where(DatasetStatsCache.dataset_id == world["ds"])).all()
        assert rows, "the view stored nothing to poison"
        for row in rows:
            row.stats = json.dumps({**json.loads(row.stats), "total": -1})
        db.commit()


def as_curator(world: dict[str, Any], change: Callable[[Session, User], Any]) -> None:
    with Session(world["engine"]) as db:
        change(db, db.merge(world["curator"]))
        db.commit()


def test_unchanged_records_are_served_from_the_cache(world: dict[str, Any]) -> None:
    assert view(world)["total"] == 4
    poison(world)
    assert view(world)["total"] == -1


def test_opening_the_review_queue_keeps_the_cache(world: dict[str, Any]) -> None:
    """Taking review locks writes records but no figure: the cache stays (no recomputation per page)."""
    from app.review import service as review

    view(world)
    poison(world)
    as_curator(world, lambda db, u: review.queue_records(db=db, user=u, dataset_id=world["ds"], limit=5))
    with Session(world["engine"]) as db:
        assert db.scalar(select(func_count_locked(world["ds"]))) == 4
    assert view(world)["total"] == -1


def func_count_locked(dataset_id: int) -> Any:
    from sqlalchemy import func

    return (
        select(func.count())
        .select_from(Record)
        .where(Record.dataset_id == dataset_id, Record.locked_by.is_not(None))
        .scalar_subquery()
    )


def test_a_review_decision_shows_at_once(world: dict[str, Any]) -> None:
    from app.review import service as review

    assert view(world)["by_status"] == {"pending": 4}
    poison(world)
    as_curator(
        world,
        lambda db, u: review.decide(db=db, user=u, record_id=world["ids"][0], action="reject", version=1),
    )
    stats = view(world)
    assert stats["total"] == 4 and stats["by_status"] == {"pending": 3, "rejected": 1}


def test_undoing_a_decision_shows_at_once(world: dict[str, Any]) -> None:
    from app.review import service as review

    as_curator(
        world,
        lambda db, u: review.decide(db=db, user=u, record_id=world["ids"][0], action="accept", version=1),
    )
    assert view(world)["by_status"] == {"pending": 3, "accepted": 1}
    poison(world)
    as_curator(world, lambda db, u: review.undo_last(db=db, user=u, dataset_id=world["ds"]))
    assert view(world)["by_status"] == {"pending": 4}


def test_an_edit_shows_at_once(world: dict[str, Any]) -> None:
    from app.records import service as records

    assert view(world)["leading_words"] == {"write": 2, "explain": 1, "give": 1}
    poison(world)
    change = RecordUpdate(version=1, instruction="Describe a haiku about rain.")
    as_curator(
        world, lambda db, u: records.update_record(db=db, user=u, record_id=world["ids"][0], change=change)
    )
    words = view(world)["leading_words"]
    assert words["write"] == 1 and words["describe"] == 1


def test_a_label_set_through_the_api_path_shows_at_once(world: dict[str, Any]) -> None:
    from app.records import service as records

    assert view(world)["by_label"] == {}
    poison(world)
    change = RecordUpdate(version=1, label="poetry")
    as_curator(
        world, lambda db, u: records.update_record(db=db, user=u, record_id=world["ids"][1], change=change)
    )
    assert view(world)["by_label"] == {"poetry": 1}


def test_a_bulk_action_shows_at_once(world: dict[str, Any]) -> None:
    from app.records import service as records

    view(world)
    poison(world)
    flt = RecordFilter(q="Write")
    as_curator(
        world,
        lambda db, u: records.bulk_set_status(
            db=db, user=u, dataset_id=world["ds"], flt=flt, status="accepted", reason=None
        ),
    )
    assert view(world)["by_status"] == {"accepted": 2, "pending": 2}


def test_a_curation_verdict_shows_at_once(world: dict[str, Any]) -> None:
    view(world, include_filtered=False)
    poison(world)
    run_job_now(world["engine"], world["curator"], world["ds"], "rules", {})
    stats = view(world, include_filtered=False)
    assert stats["by_status"] == {"pending": 3, "filtered": 1}
    assert stats["leading_words"] == {"write": 2, "explain": 1}  # the filtered "Give ..." is left out


def test_a_dedup_job_shows_at_once(world: dict[str, Any]) -> None:
    assert view(world)["nn_rouge_not_compared"] == 4
    poison(world)
    run_job_now(world["engine"], world["curator"], world["ds"], "dedup", {"threshold": 0.7})
    stats = view(world)
    assert stats["total"] == 4 and stats["nn_rouge_not_compared"] < 4


def test_an_inline_import_shows_at_once(world: dict[str, Any], tmp_path: Path) -> None:
    from app.imports import service as imports

    view(world)
    poison(world)
    upload = imports.new_upload_path(".jsonl")
    upload.write_text(
        "".join(
            json.dumps({"instruction": f"Translate sentence {i}.", "output": "ok"}) + "\n" for i in range(3)
        )
    )
    as_curator(
        world,
        lambda db, u: imports.import_upload(
            db=db, user=u, dataset_id=world["ds"], path=upload, fmt="alpaca", filename=None, skip_bad=False
        ),
    )
    stats = view(world)
    assert stats["total"] == 7 and stats["leading_words"]["translate"] == 3


def test_an_import_job_shows_at_once(world: dict[str, Any]) -> None:
    """On PostgreSQL the job writes with COPY, which SQLAlchemy never sees: the record count moves the stamp."""
    from app.imports import service as imports

    view(world)
    poison(world)
    upload = imports.new_upload_path(".jsonl")
    upload.write_text(
        "".join(
            json.dumps({"instruction": f"Classify review {i}.", "output": "positive"}) + "\n"
            for i in range(5)
        )
    )
    run_job_now(
        world["engine"], world["curator"], world["ds"], "import", {"upload": upload.name, "format": "alpaca"}
    )
    stats = view(world)
    assert stats["total"] == 9 and stats["by_source"]["import:alpaca"] == 9


def test_generated_records_show_at_once(world: dict[str, Any]) -> None:
    from app.generation.jobs import upsert_generated
    from app.pipeline.self_instruct import GenRecord
    from tests.review.inline_dedup import InlineJob

    view(world)
    poison(world)
    made = [
        GenRecord(
            key="g1",
            instruction="List three rivers.",
            input="",
            output="Nile, Amazon, Danube.",
            status="kept",
            reason=None,
            source="self_instruct",
            teacher_model="fake",
            round=1,
        )
    ]

    def generate(db: Session, user: User) -> None:
        dataset = db.get_one(Dataset, world["ds"])
        job = Job(
            project_id=dataset.project_id,
            dataset_id=dataset.id,
            kind="self_instruct",
            queue="default",
            params={},
            created_by=user.id,
        )
        db.add(job)
        db.flush()
        ctx = InlineJob(db, dataset.id, {}, job_id=job.id)
        upsert_generated(ctx, made, dataset_id=dataset.id, key_prefix=f"si{job.id}")

    as_curator(world, generate)
    stats = view(world)
    assert stats["total"] == 5 and stats["by_source"]["self_instruct"] == 1


def test_a_change_in_another_dataset_keeps_this_ones_cache(world: dict[str, Any]) -> None:
    view(world)
    poison(world)
    with Session(world["engine"]) as db:
        project = db.get(Project, db.get_one(Dataset, world["ds"]).project_id)
        assert project is not None
        other = make_dataset(db, project)
        db.add(Record(dataset_id=other.id, instruction="Elsewhere.", output="x"))
        db.flush()
        db.execute(update(Record).where(Record.dataset_id == other.id).values(status="accepted"))
        db.commit()
    assert view(world)["total"] == -1


def test_an_update_on_a_bare_connection_shows_at_once(world: dict[str, Any]) -> None:
    """No session: the connection's own commit moves the stamp."""
    view(world)
    poison(world)
    with world["engine"].begin() as conn:
        conn.execute(update(Record).where(Record.id == world["ids"][0]).values(status="accepted"))
    assert view(world)["by_status"] == {"pending": 3, "accepted": 1}


def page_figures(world: dict[str, Any]) -> dict[str, Any]:
    with Session(world["engine"]) as db:
        figures = insights.dataset_page_figures(
            db=db,
            user=db.merge(world["curator"]),
            dataset_id=world["ds"],
            include_filtered=False,
            flagged_cap=1000,
        )
        db.commit()
        return figures


def test_flagging_a_record_shows_on_the_page_at_once(world: dict[str, Any]) -> None:
    from app.review import service as review

    assert page_figures(world)["flagged"] == 0
    as_curator(
        world, lambda db, u: review.decide(db=db, user=u, record_id=world["ids"][2], action="flag", version=1)
    )
    assert page_figures(world)["flagged"] == 1


def test_near_duplicate_groups_follow_a_dedup_and_a_group_decision(world: dict[str, Any]) -> None:
    assert page_figures(world)["groups"] == []
    with Session(world["engine"]) as db:
        db.execute(
            update(Record)
            .where(Record.id.in_(world["ids"][1:3]))
            .values(nn_record_id=world["ids"][0], nn_score=0.9)
        )
        db.commit()
    groups = page_figures(world)["groups"]
    assert [(g["anchor_id"], g["members"], g["anchor_status"]) for g in groups] == [
        (world["ids"][0], 2, "pending")
    ]
    as_curator(
        world,
        lambda db, u: insights.decide_group(
            db=db,
            user=u,
            dataset_id=world["ds"],
            anchor_id=world["ids"][0],
            status="accepted",
            include_anchor=True,
        ),
    )
    assert page_figures(world)["groups"][0]["anchor_status"] == "accepted"


def test_an_update_with_ordered_values_shows_at_once(world: dict[str, Any]) -> None:
    view(world)
    poison(world)
    with Session(world["engine"]) as db:
        db.execute(
            update(Record).where(Record.id == world["ids"][1]).ordered_values((Record.status, "rejected"))
        )
        db.commit()
    assert view(world)["by_status"] == {"pending": 3, "rejected": 1}
