"""Curation that respects the data's structure: a task's instances are not duplicates of each other, the
labels that output-first generation balanced stay balanced, generation-time neighbours are fields, and a
rerun adds no copies."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.records.models import Record
from tests.factories import make_dataset, make_project, make_user, run_job_now, seeded_dataset


def _labels_by_task(engine: Engine, dataset_id: int) -> dict[str, Counter[str]]:
    """Labels of each classification task's instances that are still in the dataset (not filtered)."""
    with Session(engine) as db:
        rows = db.execute(
            select(Record.instruction, Record.label, Record.output).where(
                Record.dataset_id == dataset_id,
                Record.is_classification.is_(True),
                Record.source != "seed",
                Record.status.in_(("pending", "accepted")),
            )
        ).all()
    tasks: dict[str, Counter[str]] = defaultdict(Counter)
    for instruction, label, output in rows:
        tasks[instruction][label or output] += 1
    return dict(tasks)


def test_label_balance_of_generated_classification_tasks_survives_dedup_rules_and_judge(
    committed: Engine, shared_data: Any, teacher: Any
):
    dataset_id, curator = seeded_dataset(committed, shared_data)
    run_job_now(
        committed,
        curator,
        dataset_id,
        "self_instruct",
        {"teacher": "fake", "target": 40, "batch_size": 8, "max_instances_per_task": 4},
    )
    before = _labels_by_task(committed, dataset_id)
    balanced = {t: c for t, c in before.items() if len(c) > 1}
    assert len(balanced) >= 3, f"the fake teacher must give several multi-label tasks: {before}"
    # The forms' defaults, as a new user would run them.
    run_job_now(committed, curator, dataset_id, "dedup", {})
    run_job_now(committed, curator, dataset_id, "rules", {})
    after_rules = _labels_by_task(committed, dataset_id)
    assert {t: after_rules[t] for t in balanced if t in after_rules} == {
        t: c for t, c in balanced.items() if t in after_rules
    }
    assert len(after_rules.keys() & balanced.keys()) >= 3, "dedup and rules must keep most tasks"
    run_job_now(committed, curator, dataset_id, "judge", {"teacher": "fake"})
    after = _labels_by_task(committed, dataset_id)
    for task, labels in balanced.items():
        # A task is kept or filtered whole: never some of its labels.
        assert task not in after or after[task] == labels, (task, labels, after[task])


def test_default_dedup_keeps_every_instance_of_a_task(committed: Engine):
    with Session(committed) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        task = "Classify the sentiment of the sentence as positive or negative."
        rows = [
            Record(dataset_id=dataset.id, instruction=task, input="I loved it.", output="positive"),
            Record(dataset_id=dataset.id, instruction=task, input="I hated it.", output="negative"),
            Record(dataset_id=dataset.id, instruction=task, input="Best day ever.", output="positive"),
            # A true exact copy of the first instance, and a near-duplicate task.
            Record(dataset_id=dataset.id, instruction=task, input="I loved it.", output="positive"),
            Record(
                dataset_id=dataset.id,
                instruction="Classify the sentiment of this sentence as positive or negative.",
                input="Meh.",
                output="negative",
            ),
        ]
        db.add_all(rows)
        db.commit()
        ids = [r.id for r in rows]
        dataset_id = dataset.id
        db.expunge(curator)
    job = run_job_now(committed, curator, dataset_id, "dedup", {})
    with Session(committed) as db:
        got = {r.id: r for r in db.scalars(select(Record).where(Record.dataset_id == dataset_id))}
    assert [got[i].status for i in ids[:3]] == ["pending"] * 3
    assert (got[ids[3]].status, got[ids[3]].reason, got[ids[3]].nn_record_id) == (
        "filtered",
        "exact_dup",
        ids[0],
    )
    assert (got[ids[4]].status, got[ids[4]].reason, got[ids[4]].nn_record_id) == (
        "filtered",
        "rouge_dup",
        ids[0],
    )
    assert got[ids[1]].meta["dedup"]["method"] == "same_task"
    assert job.result["kept"] == 3
    # The strict instruction key still treats a task's 2nd instance as a copy of its 1st, when asked.
    with Session(committed) as db:
        for r in db.scalars(select(Record).where(Record.dataset_id == dataset_id)):
            r.status, r.reason = "pending", None
        db.commit()
    run_job_now(committed, curator, dataset_id, "dedup", {"field": "instruction"})
    with Session(committed) as db:
        statuses = [db.get(Record, i).status for i in ids[:3]]  # type: ignore[union-attr]
    assert statuses == ["pending", "filtered", "filtered"]


def test_generation_time_duplicates_store_their_neighbour_as_fields(
    committed: Engine, shared_data: Any, teacher: Any
):
    dataset_id, curator = seeded_dataset(committed, shared_data)
    # The teacher repeats itself: one answer lists the same task three times (the first is kept, the
    # other two are near-duplicates of it), rather than relying on its random answers to repeat.
    repeated = "Write a limerick about a cat who learns to play the violin at night."
    teacher.script_response(
        "Come up with a series of tasks", "\n".join(f"{n}. {repeated}" for n in (9, 10, 11)), times=1
    )
    job = run_job_now(
        committed, curator, dataset_id, "self_instruct", {"teacher": "fake", "target": 30, "batch_size": 8}
    )
    with Session(committed) as db:
        written = db.scalars(select(Record).where(Record.job_id == job.id)).all()
    # A teacher repeating itself within one job: each repeat is a record of its own, none skipped as a copy.
    assert len(written) == job.result["records_kept"] + job.result["records_rejected"]
    assert job.result["copies_skipped"] == 0
    same = Counter((r.instruction, r.input, r.output) for r in written if r.status == "filtered")
    assert same[(repeated, "", "")] == 2, same  # the scripted repeat: two copies filtered, each a record
    with Session(committed) as db:
        dups = db.scalars(
            select(Record).where(Record.dataset_id == dataset_id, Record.reason == "rouge_dup")
        ).all()
        ids = set(db.scalars(select(Record.id).where(Record.dataset_id == dataset_id)))
        kept_scored = db.scalar(
            select(func.count()).where(
                Record.dataset_id == dataset_id, Record.status == "pending", Record.nn_score.is_not(None)
            )
        )
    assert dups, "the fake teacher repeats itself: some instructions must be rejected as duplicates"
    for r in dups:
        assert r.nn_record_id in ids and r.nn_record_id != r.id
        assert r.nn_score is not None and r.nn_score > 0.7
    assert kept_scored


def test_running_the_same_evol_job_twice_adds_no_copies(committed: Engine, shared_data: Any, teacher: Any):
    dataset_id, curator = seeded_dataset(committed, shared_data)
    params = {"teacher": "fake", "rounds": 1, "max_items": 10, "scope": {"source": "seed"}}
    first = run_job_now(committed, curator, dataset_id, "evol", params)
    with Session(committed) as db:
        count = db.scalar(select(func.count()).where(Record.dataset_id == dataset_id))
    assert first.result["records_kept"] > 0
    second = run_job_now(committed, curator, dataset_id, "evol", params)
    with Session(committed) as db:
        again = db.scalar(select(func.count()).where(Record.dataset_id == dataset_id))
    assert again == count
    assert second.result["copies_skipped"] == first.result["records_kept"] + first.result["records_rejected"]
