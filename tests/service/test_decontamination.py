"""The decontaminate job on real data: AlpacaEval and BELLE evaluation prompts, Self-Instruct seed tasks
as the training set, with copies of evaluation prompts injected (verbatim, inside a longer instruction,
lightly edited, in Chinese). It finds exactly the copies, names the prompt each copies, leaves people's
decisions as advice, and finds nothing on a clean split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.curation.decontam import REASON
from app.datasets.models import Dataset
from app.records.models import Record
from tests.factories import (
    create_job,
    job_row,
    make_dataset,
    make_project,
    make_user,
    run_job_now,
    seeded_dataset,
)
from workers.runner import run_job


def _eval_prompts(shared_data: Path) -> tuple[list[str], list[str]]:
    alpaca = json.loads((shared_data / "alpaca_eval" / "text_davinci_003.model_outputs.json").read_text())
    lines = (shared_data / "belle" / "eval_set.json").read_text(encoding="utf-8").splitlines()
    belle = [json.loads(line) for line in lines if line.strip()]  # JSON Lines, despite the name
    return [r["instruction"] for r in alpaca[:300]], [r["question"] for r in belle[:200]]


def _eval_dataset(engine, project_id: int, prompts: list[str]) -> tuple[int, list[int]]:
    with Session(engine) as db:
        dataset = Dataset(project_id=project_id, name="eval prompts", language="en")
        db.add(dataset)
        db.flush()
        rows = [
            Record(dataset_id=dataset.id, instruction=p, input="", output="", source="eval") for p in prompts
        ]
        db.add_all(rows)
        db.commit()
        return dataset.id, [r.id for r in rows]


def _add(engine, dataset_id: int, instruction: str, **fields) -> int:
    with Session(engine) as db:
        row = Record(
            dataset_id=dataset_id,
            instruction=instruction,
            input="",
            output="an answer",
            source="generated",
            **fields,
        )
        db.add(row)
        db.commit()
        return row.id


def _statuses(engine, dataset_id: int) -> dict[int, tuple[str, str | None, dict]]:
    with Session(engine) as db:
        return {
            rid: (status, reason, meta)
            for rid, status, reason, meta in db.execute(
                select(Record.id, Record.status, Record.reason, Record.meta).where(
                    Record.dataset_id == dataset_id
                )
            )
        }


def _long(prompts: list[str], n: int = 16) -> list[int]:
    return [i for i, p in enumerate(prompts) if len(p.split()) >= n]


def test_copies_of_evaluation_prompts_are_filtered_naming_the_prompt_and_a_persons_decision_stands(
    committed, shared_data
):
    english, chinese = _eval_prompts(shared_data)
    train_id, curator = seeded_dataset(committed, shared_data)
    with Session(committed) as db:
        project_id = db.get(Dataset, train_id).project_id
    eval_id, eval_ids = _eval_dataset(committed, project_id, english + chinese)
    long_en = _long(english)
    short_en = next(i for i, p in enumerate(english) if 6 <= len(p.split()) <= 9)
    zh = next(i for i, p in enumerate(chinese) if len(p) >= 25)

    expected = {
        _add(committed, train_id, english[long_en[0]]): (eval_ids[long_en[0]], "ngram"),
        _add(
            committed,
            train_id,
            f"Please answer this carefully. {english[long_en[1]]} Keep it under 100 words.",
        ): (
            eval_ids[long_en[1]],
            "ngram",
        ),
        # A short prompt with one word added: no 13-gram, but ROUGE-L well over 0.7.
        _add(committed, train_id, english[short_en].replace(" ", " really ", 1)): (
            eval_ids[short_en],
            "rouge_l",
        ),
        _add(committed, train_id, f"请回答：{chinese[zh]}"): (eval_ids[len(english) + zh], "ngram"),
    }
    human = _add(committed, train_id, english[long_en[2]], status="accepted", human_decided=True)

    job = run_job_now(committed, curator, train_id, "decontaminate", {"eval_dataset_id": eval_id})

    after = _statuses(committed, train_id)
    contaminated = {rid for rid, (status, reason, _) in after.items() if reason == REASON}
    assert contaminated == set(expected), "exactly the injected copies; none of the 175 real seed tasks"
    for rid, (eval_record, method) in expected.items():
        status, _, meta = after[rid]
        assert status == "filtered"
        assert meta["decontaminate"]["eval"] == f"record {eval_record}"
        assert meta["decontaminate"]["method"] == method
    status, reason, meta = after[human]
    assert (status, reason) == ("accepted", None)
    assert meta["advice"]["decontaminate"]["reason"] == REASON
    assert f"record {eval_ids[long_en[2]]}" in meta["advice"]["decontaminate"]["detail"]

    result = job.result
    assert result["contaminated"] == len(expected) + 1 and result["human_advised"] == 1
    assert result["scanned"] == 175 + len(expected) + 1 and result["eval_prompts"] == len(eval_ids)
    assert result["eval_prompts_leaked"] == len(expected) + 1 == len(result["leaks"])
    assert {c["record_id"] for leak in result["leaks"] for c in leak["copies"]} == {*expected, human}


def test_a_clean_split_has_no_contamination_against_a_snapshot_of_the_eval_set(committed, shared_data):
    from app.records.schemas import RecordFilter
    from app.snapshots.service import create_snapshot

    english, chinese = _eval_prompts(shared_data)
    train_id, curator = seeded_dataset(committed, shared_data)
    with Session(committed) as db:
        project_id = db.get(Dataset, train_id).project_id
    eval_id, _ = _eval_dataset(committed, project_id, english + chinese)
    with Session(committed) as db:
        snapshot = create_snapshot(
            db=db,
            user=db.merge(curator),
            dataset_id=eval_id,
            name="eval",
            description="",
            flt=RecordFilter(status=["pending"]),
        )
        db.commit()
        snapshot_id = snapshot.id

    job = run_job_now(committed, curator, train_id, "decontaminate", {"eval_snapshot_id": snapshot_id})

    assert job.result["contaminated"] == 0 and job.result["leaks"] == []
    assert job.result["eval_prompts"] == len(english) + len(chinese)
    assert {reason for _, reason, _ in _statuses(committed, train_id).values()} == {None}


def test_an_evaluation_set_of_another_project_is_refused_and_nothing_changes(committed, shared_data):
    train_id, curator = seeded_dataset(committed, shared_data)
    with Session(committed) as db:
        other = make_dataset(db, make_project(db, (make_user(db, "curator"), "curator")))
        db.commit()
        other_id = other.id
    _add(committed, other_id, "Write a haiku about the sea.")

    job_id = create_job(committed, curator, train_id, "decontaminate", {"eval_dataset_id": other_id})
    assert run_job(job_id) == "failed"

    assert "not in this project" in (job_row(committed, job_id).error or "")
    assert {status for status, _, _ in _statuses(committed, train_id).values()} == {"pending"}


@pytest.mark.parametrize(
    "params", [{}, {"eval_dataset_id": 1, "eval_snapshot_id": 2}, {"eval_dataset_id": 1, "ngram": 2}]
)
def test_params_need_exactly_one_evaluation_source_and_a_sensible_ngram(params):
    from pydantic import ValidationError

    from app.curation.schemas import DecontaminateParams

    with pytest.raises(ValidationError):
        DecontaminateParams.model_validate(params)
