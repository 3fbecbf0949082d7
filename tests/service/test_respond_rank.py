"""The respond job (candidates from teachers) and the rank_candidates job (an LLM judge's aspect scores and
pairwise verdicts) on real prompts (InstructionWild, Code Alpaca) against the fake teacher over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.imports.service import parse_file, write_records
from app.jobs.models import Job
from app.preferences import service as prefs
from app.preferences.models import ASPECTS, Candidate, PreferenceJudgment
from app.records import service as records
from app.records.models import Record
from app.records.schemas import RecordUpdate
from tests.factories import (
    job_row,
    make_dataset,
    make_project,
    make_records,
    make_user,
    run_job_now,
    token_for,
)
from workers.runner import run_job


def _dataset(engine: Any, tmp_path: Path, rows: list[dict[str, Any]], fmt: str = "alpaca") -> tuple[int, Any]:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with Session(engine) as db:
        curator = make_user(db, "curator")
        dataset = make_dataset(db, make_project(db, (curator, "curator")))
        parsed, _, fmt = parse_file(path, fmt=fmt, filename=None, skip_bad=False)
        write_records(
            sessions=[db],
            dataset_id=dataset.id,
            records=parsed,
            fmt=fmt,
            key_prefix="imp",
            job_id=None,
            batch_size=1000,
        )
        db.commit()
        db.expunge(curator)
        return dataset.id, curator


def _wild_prompts(shared_data: Path, n: int) -> list[dict[str, Any]]:
    """InstructionWild's prompts (no answers) in the prompt-set shape the importer takes without answers
    (mt_bench: `turns`); the alpaca reader refuses a record without `output`."""
    lines = (shared_data / "instructionwild" / "user_2.jsonl").read_text(encoding="utf-8").splitlines()
    return [{"turns": [json.loads(line)["instruction"]]} for line in lines[:n]]


def _records(engine: Any, dataset_id: int) -> dict[int, Record]:
    with Session(engine) as db:
        rows = list(db.scalars(select(Record).where(Record.dataset_id == dataset_id).order_by(Record.id)))
        db.expunge_all()
        return {r.id: r for r in rows}


def _candidates(engine: Any, dataset_id: int) -> dict[int, list[Candidate]]:
    with Session(engine) as db:
        ids = list(db.scalars(select(Record.id).where(Record.dataset_id == dataset_id)))
        out = prefs.candidates_of(db=db, record_ids=ids)
        db.expunge_all()
        return out


def _accept(engine: Any, user: Any, record_id: int) -> None:
    with Session(engine) as db:
        record = db.get(Record, record_id)
        assert record is not None
        records.update_record(
            db=db,
            user=db.merge(user),
            record_id=record_id,
            change=RecordUpdate(version=record.version, status="accepted"),
        )
        db.commit()


def test_respond_answers_prompt_only_records_with_n_candidates_each_and_fills_only_undecided_outputs(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _wild_prompts(shared_data, 4), "mt_bench")
    before = _records(committed_pg, dataset_id)
    assert all(r.output == "" for r in before.values())  # imported as prompts without answers
    decided = sorted(before)[1]
    _accept(committed_pg, curator, decided)
    params = {
        "teacher": "fake",
        "n": 2,
        "seed": 0,
        "samplers": [{"teacher": "fake", "n": 1, "temperature": 0.2, "seed": 100}],
    }

    job = run_job_now(committed_pg, curator, dataset_id, "respond", params)

    cands = _candidates(committed_pg, dataset_id)
    rows = _records(committed_pg, dataset_id)
    assert sorted(cands) == sorted(before)
    for rid, cs in cands.items():
        assert len(cs) == 3 and len({c.content for c in cs}) == 3, rid  # each seed its own sample
        assert {c.params["seed"] for c in cs} == {0, 1, 100}
        assert {(c.source, c.model, c.job_id) for c in cs} == {("teacher", "fake-model", job.id)}
        assert {c.params["temperature"] for c in cs} == {0.8, 0.2}
        first = next(c for c in cs if c.params["sampler"] == 0 and c.params["sample_index"] == 0)
        if rid == decided:
            assert rows[rid].output == "" and "responses" not in rows[rid].meta  # a person decided it
        else:
            assert rows[rid].output == first.content
            assert rows[rid].meta["responses"][0]["candidate_id"] == first.id
    assert job.result["answered"] + job.result["truncated"] == 12 and job.result["outputs_filled"] == 3
    assert job.result["cost_usd"] > 0

    # The job redelivered after a worker died having stored everything: it skips every key it wrote.
    completions = teacher.stats()["completions"]
    with Session(committed_pg) as db:
        db.execute(update(Job).where(Job.id == job.id).values(status="queued", lease_until=None))
        db.commit()
    assert run_job(job.id) == "succeeded"
    assert job_row(committed_pg, job.id).result["already_answered"] == 12
    assert teacher.stats()["completions"] == completions
    # Another job with the same samplers pays for nothing (every request is cached) and stores no copy.
    again = run_job_now(committed_pg, curator, dataset_id, "respond", params)
    assert teacher.stats()["completions"] == completions
    assert again.result["duplicate"] == 12 and again.result["answered"] == 0
    assert again.result["cost_usd"] == 0
    assert sum(len(cs) for cs in _candidates(committed_pg, dataset_id).values()) == 12


def _code_alpaca(shared_data: Path, n: int) -> list[dict[str, Any]]:
    rows = json.loads((shared_data / "codealpaca" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    return [r for r in rows if r["output"].strip()][:n]


def test_a_persons_pairwise_choice_survives_a_later_judge_job_and_the_judges_verdict_is_recorded_beside_it(
    committed_pg, shared_data, teacher, tmp_path
):
    dataset_id, curator = _dataset(committed_pg, tmp_path, _code_alpaca(shared_data, 3))
    run_job_now(committed_pg, curator, dataset_id, "respond", {"teacher": "fake", "n": 2})
    cands = _candidates(committed_pg, dataset_id)
    rid = sorted(cands)[0]
    short, long = sorted(cands[rid], key=lambda c: len(c.content))
    # The person prefers the shorter answer; the fake judge (mode "longer") prefers the longer one.
    with Session(committed_pg) as db:
        record = db.get(Record, rid)
        assert record is not None
        mine = prefs.record_pairwise(
            db=db, user=db.merge(curator), record=record, a_id=short.id, b_id=long.id, choice="a"
        )
        db.commit()
        mine_id = mine.id

    job = run_job_now(
        committed_pg, curator, dataset_id, "rank_candidates", {"teacher": "fake", "include_original": False}
    )

    with Session(committed_pg) as db:
        person = db.get(PreferenceJudgment, mine_id)
        assert person is not None and person.choice == "a" and person.superseded_by_id is None
        assert person.candidate_ids == [short.id, long.id] and person.source == "person"
        machine = [
            j
            for j in prefs.judgments_of(db=db, record_ids=[rid])[rid]
            if j.source == "judge" and j.kind == "pairwise"
        ]
        (verdict,) = machine
        assert verdict.job_id == job.id and verdict.judge_model == "fake-model"
        winner = verdict.candidate_ids[0 if verdict.choice == "a" else 1]
        assert winner == long.id and verdict.rationale  # the judge disagrees, with its reasons
        assert {v["swapped"] for v in (verdict.meta["verdict"]["ab"], verdict.meta["verdict"]["ba"])} == {
            False,
            True,
        }
        # "The" decision on the record is still the person's; the judge's is advice beside it.
        assert [j.id for j in prefs.current_judgments(db=db, record_id=rid)] == [mine_id]
        scores = db.scalars(
            select(PreferenceJudgment).where(
                PreferenceJudgment.job_id == job.id, PreferenceJudgment.kind == "scores"
            )
        ).all()
        assert len(scores) == 6
        assert all(set(s.scores or {}) == set(ASPECTS) and s.rationale for s in scores)
    assert job.result["beside_person"] == 1 and job.result["compared"] == 3 and job.result["scored"] == 6

    # A second judge job supersedes the first one's verdicts (history kept), never the person's.
    again = run_job_now(
        committed_pg, curator, dataset_id, "rank_candidates", {"teacher": "fake", "include_original": False}
    )
    assert again.result["cost_usd"] == 0  # every verdict came from the cache
    with Session(committed_pg) as db:
        first_job = db.scalars(select(PreferenceJudgment).where(PreferenceJudgment.job_id == job.id)).all()
        assert len(first_job) == 9 and all(j.superseded_by_id is not None for j in first_job)
        person = db.get(PreferenceJudgment, mine_id)
        assert person is not None and person.superseded_by_id is None


def test_estimates_price_every_sample_of_every_sampler_and_every_rating_and_both_orders_of_each_pair(
    client, db, teacher
):
    curator = make_user(db, "curator")
    dataset = make_dataset(db, make_project(db, (curator, "curator")))
    rows = make_records(db, dataset, 4)
    for r in rows[:2]:  # two records with two teacher candidates each; with the original, three each
        for text in ("One answer.", "Another, longer answer."):
            prefs.add_candidate(db=db, record=r, content=f"{text} ({r.id})", source="teacher")
    h = token_for(db, curator)
    respond = {
        "dataset_id": dataset.id,
        "kind": "respond",
        "params": {"teacher": "fake", "n": 2, "samplers": [{"teacher": "fake", "n": 3}]},
        "sample_prompts": 2,
    }
    est = client.post("/api/v1/generation/estimate", json=respond, headers=h)
    assert est.status_code == 200, est.text
    assert est.json()["sampled_calls"] == 2 and est.json()["total_calls"] == 4 * (2 + 3)
    assert teacher.stats()["completions"] == 2

    rank = {"dataset_id": dataset.id, "kind": "rank_candidates", "params": {"teacher": "fake"}}
    est = client.post("/api/v1/generation/estimate", json=rank, headers=h)
    assert est.status_code == 200, est.text
    assert est.json()["total_calls"] == 2 * (3 + 2 * 3)  # 3 ratings and 3 pairs in both orders per record
    bad = client.post(
        "/api/v1/generation/estimate", json={**respond, "params": {"teacher": "fake", "n": 0}}, headers=h
    )
    assert bad.status_code == 422 and "params.n" in bad.text


def test_respond_local_answers_prompt_only_records_through_the_evaluation_generator(
    committed_pg, shared_data, tmp_path, monkeypatch
):
    pytest.importorskip("torch")
    from app.config import get_settings
    from tests.trainer.conftest import _save_model, _tokenizer

    models = tmp_path / "models"
    _save_model(models / "tiny-llama", _tokenizer(None))
    monkeypatch.setattr(get_settings(), "models_dir", models)
    dataset_id, curator = _dataset(committed_pg, tmp_path, _wild_prompts(shared_data, 3), "mt_bench")
    params = {"systems": [{"base_model": "tiny-llama", "n": 2, "temperature": 1.0, "max_new_tokens": 8}]}

    job = run_job_now(committed_pg, curator, dataset_id, "respond_local", params)

    cands = _candidates(committed_pg, dataset_id)
    stored = [c for cs in cands.values() for c in cs]
    assert job.result["answered"] == len(stored) > 0
    assert job.result["answered"] + job.result["empty"] + job.result["duplicate"] == 6
    assert {(c.source, c.model, c.training_run_id, c.job_id) for c in stored} == {
        ("run", "tiny-llama", None, job.id)
    }
    assert {c.params["sample_index"] for c in stored} <= {0, 1} and all(c.params["seed"] == 0 for c in stored)
    rows = _records(committed_pg, dataset_id)
    for rid, cs in cands.items():  # every answered prompt-only record got its first answer as output
        assert (
            rows[rid].output in {c.content for c in cs} and rows[rid].meta["responses"][0]["job_id"] == job.id
        )
